"""``lit-grok report`` over a population: 2 groups × 3 seeds of synthetic runs with planted grok / flip steps;
every aggregate is checked against an independent numpy / scipy computation."""
import csv
import json
import math

import numpy as np
import pytest
import yaml
from lightning.pytorch.loggers import TensorBoardLogger
from scipy import stats as sps
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_grok.cli import main
from lit_grok.paper_values import paper_value
from lit_grok.phases import flip_and_return, grok_crossing, phase_steps
from lit_grok.stats import bootstrap_ci, summarise

GROK = {42: 600, 137: 800, 2024: 1000}  # planted grok steps of the ω = 1 group
FLIP = {42: (600, 1500), 137: (500, 1200), 2024: (700, 1900)}  # planted flip and return windows
MAX_STEPS = 5000
STEPS = range(100, MAX_STEPS + 1, 100)


def acc_curve(seed, grok):
    """Validation accuracy per step: below 0.95 before the grok step, ≥ 0.95 from it on (never for grok=None)."""
    rng = np.random.default_rng(seed)
    return {s: (0.90 + 0.04 * rng.random()) if grok is None or s < grok else (0.955 + 0.04 * rng.random()) for s in STEPS}


def write_run(root, group, seed, weight_decay):
    grok = GROK[seed] if weight_decay else None
    save_dir = root / group
    logger = TensorBoardLogger(save_dir, name=f"seed={seed}", version=0)
    rng = np.random.default_rng(seed + 7)
    acc = acc_curve(seed, grok)
    flip, back = FLIP[seed] if weight_decay else (None, None)
    for s in STEPS:
        logger.log_metrics({"val/acc": acc[s]}, step=s - 1)  # Lightning's validation step
        low = flip is not None and flip <= s < back
        grad = 0.2 + 0.1 * rng.random() if low else 0.96 + 0.03 * rng.random()
        logger.log_metrics({"edge/grad_frac_v1": grad, "edge/g23": 1 + 5 * rng.random(),
                            "edge/sigma_1": 2 + rng.random(), "edge/rotation_v1_deg": 30 * rng.random(),
                            "weights/norm_all": 20 + 10 * rng.random() + (20 if not weight_decay else 0)}, step=s)
    centre = grok if grok else 600
    ablation_steps = [200, 500, centre, centre + 800]
    for s in ablation_steps:
        logger.log_metrics({"ablation/edge/delta_acc": -0.3 - 0.1 * rng.random(),
                            "ablation/control_radial/delta_acc": -0.2 * rng.random()}, step=s)
    perturbation = []
    for s in (500, centre + 3300):
        curv = {f"curvature/v{k}/hvp": (0.1 if weight_decay else 1.0) * k * (1 + rng.random()) for k in (1, 2)}
        logger.log_metrics(curv, step=s)
        eps = [-0.01, 0.0, 0.01]
        perturbation.append({"step": s, "labels": [f"step_{s}"], "directions": {
            f"v{k}": {"status": "ok", "curve": [{"eps": e, "loss": 0.1 + curv[f"curvature/v{k}/hvp"] * e * e, "kl": 0.0}
                                                for e in eps]} for k in (1, 2)}})
    for s in (200, centre, centre + 1400, centre + 3300, MAX_STEPS):
        logger.log_metrics({"probe/layer_1/linear_r2": 0.9 + 0.09 * rng.random()}, step=s)
    if grok:
        logger.log_metrics({"grok/step": float(grok)}, step=grok)
    logger.finalize("success")
    folder = save_dir / f"seed={seed}" / "version_0"
    config = {
        "seed_everything": seed,
        "trainer": {"max_steps": MAX_STEPS, "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                                                       "init_args": {"save_dir": str(save_dir), "name": f"seed={seed}"}}},
        "model": {"class_path": "lit_grok.models.dyck.DyckTransformer", "init_args": {"weight_decay": weight_decay}},
        "data": {"class_path": "lit_grok.data.dyck.DyckDataModule"},
        "callbacks": {"grok": {"class_path": "callbacks.GrokDetector", "init_args": {"monitor": "val/acc", "threshold": 0.95}}},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "perturbation.json").write_text(json.dumps({"results": perturbation}))
    return folder


@pytest.fixture(scope="module")
def population(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    for seed in GROK:
        write_run(root, "grok", seed, 1.0)
        write_run(root, "memo", seed, 0.0)
    out = root / "report"
    main(["report", str(root), "--out", str(out)])
    return root, out, json.loads((out / "report.json").read_text())


def row(report, metric, phase, group_prefix):
    found = [r for r in report["rows"] if r["metric"] == metric and r["phase"] == phase and r["group"].startswith(group_prefix)]
    assert len(found) == 1, (metric, phase, group_prefix, len(found))
    return found[0]


def t_interval(x):
    """Independent: mean ± t_{0.975, n-1} s / √n with s = √(Σ(x − mean)² / (n − 1))."""
    x = np.asarray(x, float)
    n, m = len(x), float(np.sum(x) / len(x))
    s = math.sqrt(float(np.sum((x - m) ** 2)) / (n - 1))
    half = sps.t.ppf(0.975, n - 1) * s / math.sqrt(n)
    return m, s, m - half, m + half


def check_stats(r, expected_values):
    np.testing.assert_allclose(r["values"], expected_values, rtol=1e-6)
    m, s, lo, hi = t_interval(expected_values)
    assert r["n"] == len(expected_values)
    np.testing.assert_allclose([r["mean"], r["std"], r["ci_low"], r["ci_high"]], [m, s, lo, hi], rtol=1e-6)


def test_groups_and_grok_steps(population):
    _, _, report = population
    groups = {g["label"]: g for g in report["groups"]}
    assert set(groups) == {"grok weight_decay=1.0", "memo weight_decay=0.0"}
    assert [g["regime"] for g in report["groups"]] == ["grok", "memo"]
    runs = {r["seed"]: r for r in groups["grok weight_decay=1.0"]["runs"]}
    for seed, grok in GROK.items():
        acc = acc_curve(seed, grok)
        crossing = grok - 100 + (0.95 - acc[grok - 100]) / (acc[grok] - acc[grok - 100]) * 100
        assert runs[seed]["grok_step"] == grok
        assert runs[seed]["grok_crossing"] == pytest.approx(crossing, rel=1e-5)
        assert (runs[seed]["flip_step"], runs[seed]["flip_return"]) == FLIP[seed]
    for r in groups["memo weight_decay=0.0"]["runs"]:
        assert r["grok_step"] is None and r["flip_step"] is None
    check_stats(row(report, "grok_step", "run", "grok"), [GROK[s] for s in GROK])
    lags = [FLIP[s][0] - GROK[s] for s in GROK]
    lag = row(report, "flip_minus_grok", "run", "grok")
    check_stats(lag, lags)
    rng = np.random.default_rng(0)  # the documented bootstrap: one generator, resample with replacement, 10000 times
    medians = [np.median(np.asarray(lags, float)[rng.integers(0, 3, 3)]) for _ in range(10000)]
    np.testing.assert_allclose([lag["median_ci_low"], lag["median_ci_high"]], np.percentile(medians, [2.5, 97.5]))


def test_phase_rows_match_an_independent_computation(population):
    root, _, report = population
    for seed, grok in GROK.items():  # windows: grok − 300, grok, grok + 900, grok + 3400
        for phase, offset in (("pre", -300), ("at", 0), ("post", 900), ("late", 3400)):
            r = row(report, "edge/grad_frac_v1", phase, "grok")
            assert r["steps"][list(GROK).index(seed)] == grok + offset
    from lit_grok.report import read_scalars, value_at

    runs = {(g, s): read_scalars(root / g / f"seed={s}" / "version_0") for g in ("grok", "memo") for s in GROK}
    for phase, offset in (("pre", -300), ("at", 0), ("post", 900), ("late", 3400)):
        expected = [100 * value_at(runs["grok", s], "edge/grad_frac_v1", GROK[s] + offset) for s in GROK]
        check_stats(row(report, "edge/grad_frac_v1", phase, "grok"), expected)
    for phase, step in (("pre", 300), ("at", 600), ("post", 1500), ("late", 4000)):  # memo: the reference's steps
        check_stats(row(report, "edge/g23", phase, "memo"), [value_at(runs["memo", s], "edge/g23", step) for s in GROK])
    # causal: early = first, pre = last before grok, at = grok, post = grok + 800
    for phase, step_of in (("early", lambda g: 200), ("pre", lambda g: 500), ("at", lambda g: g), ("post", lambda g: g + 800)):
        check_stats(row(report, "ablation/edge/delta_acc", phase, "grok"),
                    [value_at(runs["grok", s], "ablation/edge/delta_acc", step_of(GROK[s])) for s in GROK])
    check_stats(row(report, "probe/layer_1/linear_r2", "post", "grok"),
                [value_at(runs["grok", s], "probe/layer_1/linear_r2", GROK[s] + 1400) for s in GROK])
    check_stats(row(report, "probe/layer_1/linear_r2", "final", "memo"),
                [value_at(runs["memo", s], "probe/layer_1/linear_r2", MAX_STEPS) for s in GROK])
    # the paper's value and whether it lies inside our interval, recomputed
    r = row(report, "edge/grad_frac_v1", "pre", "grok")
    paper = paper_value("edge/grad_frac_v1", "pre", "dyck", "grok").value * 100
    half = 0.05  # 97.6 %: printed to a tenth of a percent
    assert r["paper"] == pytest.approx(paper) and r["inside_ci"] == (r["ci_low"] - half <= paper <= r["ci_high"] + half)
    assert paper_value("attention/encoder.layers.0.self_attn/entropy_all", "final", "dyck", "grok").rounding == 0.005
    assert paper_value("perturb/v1/max_kl", "late", "dyck", "grok").rounding == pytest.approx(5e-6)
    r = row(report, "edge/grad_frac_v1", "at", "grok")  # planted 20–30 %: the paper's 5.3 % lies outside
    assert r["paper"] == pytest.approx(5.3) and r["ci_low"] > 5.3 and r["inside_ci"] is False
    ratio = next(c for c in report["contrasts"] if c["metric"] == "curvature/v1/hvp")
    memo = row(report, "curvature/v1/hvp", "late", "memo")["values"]
    grok = row(report, "curvature/v1/hvp", "late", "grok")["values"]
    assert ratio["ratio"] == pytest.approx(np.mean(memo) / np.mean(grok))
    rng = np.random.default_rng(0)
    boots = []
    for _ in range(10000):
        a = np.asarray(memo)[rng.integers(0, 3, 3)]
        b = np.asarray(grok)[rng.integers(0, 3, 3)]
        boots.append(a.mean() / b.mean())
    np.testing.assert_allclose([ratio["ci_low"], ratio["ci_high"]], np.percentile(boots, [2.5, 97.5]))


def test_outputs_and_figures_are_written(population, capsys):
    root, out, report = population
    with open(out / "report.csv") as f:
        assert len(list(csv.DictReader(f))) == len(report["rows"])
    text = (out / "report.md").read_text()
    assert "## Grok and flip, per run" in text and "paper 97.6" in text
    for name in ("fig1a_weight_decay", "fig1b_grad_share_v1", "sigma_k", "fig1c_curvature", "perturbation_curves",
                 "probes_r2", "ablation"):
        assert (out / f"{name}.png").stat().st_size > 10_000, name
    images = EventAccumulator(str(out / "report_figures"), size_guidance={"images": 0})
    images.Reload()
    assert "report/fig1b_grad_share_v1" in images.Tags()["images"] and len(images.Tags()["images"]) == 7
    main(["report", str(root), "--out", str(out), "--no-figures", "--phases", "reference"])  # its figures: no run
    text = capsys.readouterr().out
    assert "(reference phases)" in text and "| grok weight_decay=1.0 | dyck | grok | 3 (42, 137, 2024) | 3 of 3 |" in text


def test_pure_phase_functions():
    steps, acc = np.array([100, 200, 300]), np.array([0.9, 0.94, 0.96])
    assert grok_crossing(steps, acc, 0.95) == (300, pytest.approx(250))
    assert grok_crossing(steps, np.array([0.96, 0.9, 0.9]), 0.95) == (100, 100)
    assert all(math.isnan(v) for v in grok_crossing(steps, acc * 0.5, 0.95))
    assert flip_and_return(steps, np.array([0.9, 0.4, 0.6])) == (200, 300)
    f, r = flip_and_return(steps, np.array([0.9, 0.4, 0.3]))
    assert f == 200 and math.isnan(r)
    got = phase_steps({"early": "first", "pre": "before", "at": 0, "late": 3400}, 600, np.array([200, 500, 600]), 5000)
    assert got == {"early": 200, "pre": 500, "at": 600, "late": 4000, "final": 5000}
    got = phase_steps({"early": "first", "pre": "before"}, 600, np.array([500, 600]), 5000)
    assert math.isnan(got["early"]) and got["pre"] == 500  # one measurement is not read under two names


def test_summaries_of_small_samples():
    s = summarise([1.0, math.nan])
    assert s["n"] == 1 and s["mean"] == 1.0 and math.isnan(s["std"]) and math.isnan(s["ci_low"])
    assert all(math.isnan(v) for v in bootstrap_ci([[1.0]], np.median))


def test_a_resumed_run_keeps_the_detectors_grok_step(tmp_path):
    """A run resumed from step 1000 logs evaluations from 1100 on; its GrokDetector re-logs the restored 600."""
    from lit_grok.population import load_run

    logger = TensorBoardLogger(tmp_path, name="resumed", version=0)
    logger.log_metrics({"grok/step": 600.0}, step=600)
    for s in (1100, 1200):
        logger.log_metrics({"val/acc": 0.97}, step=s - 1)
    logger.finalize("success")
    folder = tmp_path / "resumed" / "version_0"
    (folder / "config.yaml").write_text(yaml.safe_dump({"callbacks": {"grok": {
        "class_path": "callbacks.GrokDetector", "init_args": {"monitor": "val/acc", "threshold": 0.95}}}}))
    run = load_run(folder)
    assert run.grok == 600 and math.isnan(run.grok_crossing) and run.regime == "unknown"
