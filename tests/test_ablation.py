"""Ablation math against numpy, interval coverage by simulation, and AblationCallback end to end."""
import math

import numpy as np
import pytest
import torch

from callbacks.functional.ablation import (
    PairedCounts,
    norm_matched_removal,
    paired_counts,
    paired_interval,
    projection_removal,
    radial_removal,
    random_subspace,
    ratio_interval,
    resolvable,
)

P = 300


def orthonormal_rows(m, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((P, m)))
    return q.T


def test_projection_removal_equals_explicit_projector():
    rng = np.random.default_rng(1)
    theta = rng.standard_normal(P)
    V = orthonormal_rows(3, 2)  # [3, P]
    projector = sum(np.outer(v, v) for v in V)  # [P, P]
    expected = theta - projector @ theta
    got = torch.from_numpy(theta) - projection_removal(torch.from_numpy(theta), torch.from_numpy(V))
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-12)
    # the ablated vector has no component left in the subspace and is a projection (idempotent)
    np.testing.assert_allclose(V @ got.numpy(), 0, atol=1e-12)
    np.testing.assert_allclose(projector @ (projector @ theta), projector @ theta, atol=1e-12)


def test_random_subspace_is_orthonormal_seeded_and_uses_default_rng():
    a, b, c = random_subspace(2, P, 7), random_subspace(2, P, 7), random_subspace(2, P, 8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    np.testing.assert_allclose((a @ a.T).numpy(), np.eye(2), atol=1e-12)
    gauss = np.random.default_rng(7).standard_normal((P, 2))  # span must be that of the seeded Gaussian
    residual = gauss - a.numpy().T @ (a.numpy() @ gauss)
    np.testing.assert_allclose(residual, 0, atol=1e-10)


def test_controls_remove_the_norm_they_claim():
    rng = np.random.default_rng(3)
    theta = rng.standard_normal(P)
    t = torch.from_numpy(theta)
    edge = orthonormal_rows(2, 4)
    c = float(np.linalg.norm(edge.T @ (edge @ theta)))
    R = random_subspace(2, P, 11)
    matched = t - norm_matched_removal(t, R, c)
    radial = t - radial_removal(t, c)
    assert np.linalg.norm(theta - matched.numpy()) == pytest.approx(c, rel=1e-12)
    assert np.linalg.norm(theta - radial.numpy()) == pytest.approx(c, rel=1e-12)
    # the norm-matched removal stays inside the random subspace, along θ's component there
    Rn = R.numpy()
    removed = theta - matched.numpy()
    np.testing.assert_allclose(Rn.T @ (Rn @ removed), removed, atol=1e-12)
    assert removed @ (Rn.T @ (Rn @ theta)) > 0
    # the radial shrink keeps the direction: θ' = θ(1 − c/‖θ‖)
    np.testing.assert_allclose(radial.numpy(), theta * (1 - c / np.linalg.norm(theta)), atol=1e-12)
    # removing θ̂ zeroes θ (control d): the projection onto span{θ̂}
    hat = t / t.norm()
    np.testing.assert_allclose((t - projection_removal(t, hat[None])).numpy(), 0, atol=1e-12)


def test_paired_counts_and_delta():
    base = torch.tensor([1, 1, 1, 0, 0, 1], dtype=torch.bool)
    changed = torch.tensor([1, 0, 0, 1, 0, 1], dtype=torch.bool)
    counts = paired_counts(base, changed)
    assert (counts.lost, counts.gained, counts.n) == (2, 1, 6)
    assert counts.delta == pytest.approx(changed.float().mean() - base.float().mean())
    with pytest.raises(ValueError, match="equal shapes"):
        paired_counts(base, changed[:3])


def test_paired_interval_formula_and_coverage():
    # Agresti–Min: add 1/2 per cell, Wald on the paired difference
    lo, hi = paired_interval(PairedCounts(lost=30, gained=10, n=1000), 0.95)
    centre, sd = (10 - 30) / 1002, math.sqrt(41 - 400 / 1002) / 1002
    assert lo == pytest.approx(centre - 1.959964 * sd, rel=1e-6) and hi == pytest.approx(centre + 1.959964 * sd, rel=1e-6)
    lo0, hi0 = paired_interval(PairedCounts(0, 0, 4000), 0.95)
    assert lo0 < 0 < hi0  # no change observed: the interval still has width and contains 0
    # coverage by simulation: multinomial 2×2 tables with known difference
    rng = np.random.default_rng(0)
    cells = np.array([0.6, 0.08, 0.03, 0.29])  # both right, lost, gained, both wrong
    truth = cells[2] - cells[1]
    tables = rng.multinomial(400, cells, size=4000)
    hits = 0
    for _, lost, gained, _ in tables:
        lo, hi = paired_interval(PairedCounts(int(lost), int(gained), 400), 0.95)
        hits += lo <= truth <= hi
    assert 0.935 < hits / len(tables) < 0.965


def test_resolvable_and_ratio():
    assert not resolvable(0.0, (-1e-3, 1e-3), 4000)  # contains 0
    assert not resolvable(1e-4, (5e-5, 2e-4), 4000)  # below one trial (1/4000)
    assert resolvable(-0.01, (-0.02, -0.005), 4000)
    bad = ratio_interval(-0.4, (-0.42, -0.38), 0.0, (-1e-3, 1e-3), 4000)
    assert bad["status"] == "not_resolvable" and math.isnan(bad["ratio"])
    ok = ratio_interval(-0.4, (-0.42, -0.38), -0.2, (-0.25, -0.1), 4000)
    assert ok["status"] == "ok" and ok["ratio"] == pytest.approx(2.0)
    assert ok["interval"] == pytest.approx([0.38 / 0.25, 0.42 / 0.1])


# ---- AblationCallback end to end (TinyAttention, float64) ----------------------------------------
import json
import lightning.pytorch as pl

from callbacks.ablation_callback import AblationCallback
from callbacks.utils.evaluation import evaluation_batches
from tiny_attention_model import fail_evaluate_on_call, TinyAttention, evaluate_at, fit_tiny, flat, gram_directions

SETS = {"edge": [1, 2], "bulk": [3, 4], "v1": [1]}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablation")
    cb = AblationCallback(steps=[2, 4, 8], after_grok=[0], sets=SETS, n_trials=3, seed=5)
    trainer, model, spy, logger = fit_tiny([cb], max_steps=8, root=str(root))
    return cb, trainer, model, spy, logger, root


def test_runs_only_at_scheduled_steps(fitted):
    cb, _, _, _, logger, _ = fitted
    # grok (first validation, after step 4) is seen after step 4's batch end; grok+0 is due before step 5, on the
    # same step-4 weights that "step_4" measured: it joins that result instead of measuring again
    assert [(r["step"], r["labels"]) for r in cb.results] == [(2, ["step_2"]), (4, ["step_4", "grok+0"]), (8, ["step_8"])]
    assert [r["window_size"] for r in cb.results] == [2, 4, 4]
    assert cb.state_dict()["schedule"]["done"] == ["grok+0", "step_2", "step_4", "step_8"]
    assert [step for step, m in logger.logged if "ablation/edge/delta_acc" in m] == [2, 4, 8]


def test_sets_equal_numpy_projection_and_brute_force_evaluation(fitted):
    cb, _, _, spy, _, _ = fitted
    checked = 0
    for r in cb.results:
        state, rows, names = spy.state[r["step"]], spy.rows[r["step"]], spy.names
        theta = flat(state, names)
        base_loss, base_acc, base_hits, _ = evaluate_at(state, names, theta)
        assert r["base"]["loss"] == pytest.approx(base_loss, rel=1e-12) and r["base"]["accuracy"] == base_acc
        assert r["theta_norm"] == pytest.approx(np.linalg.norm(theta), rel=1e-12)
        for name, ks in SETS.items():
            entry = r["sets"][name]
            if max(ks) > rows.shape[0]:
                continue
            V = gram_directions(rows, ks)
            ablated = theta - V.T @ (V @ theta)
            assert entry["removed_norm"] == pytest.approx(np.linalg.norm(theta - ablated), rel=1e-8)
            loss, acc, hits, _ = evaluate_at(state, names, ablated)
            assert entry["loss"] == pytest.approx(loss, rel=1e-9) and entry["accuracy"] == acc
            assert entry["delta_acc"] == pytest.approx(acc - base_acc, abs=1e-15)
            assert (entry["lost"], entry["gained"]) == (int((base_hits & ~hits).sum()), int((~base_hits & hits).sum()))
            checked += 1
    assert checked == 8  # edge and v1 at all 3 runs; bulk at the 2 runs with a 4-row window


def test_controls_remove_claimed_norms_and_match_brute_force(fitted):
    cb, _, _, spy, _, _ = fitted
    for r in cb.results:
        state, names = spy.state[r["step"]], spy.names
        theta = flat(state, names)
        c = r["sets"]["edge"]["removed_norm"]
        ctl = r["controls"]
        # (a) random 2-dim subspace, trial t seeded with default_rng(seed + t)
        for t, trial in enumerate(ctl["random"]["trials"]):
            q, _ = np.linalg.qr(np.random.default_rng(5 + t).standard_normal((theta.size, 2)))
            ablated = theta - q @ (q.T @ theta)
            loss, acc, _, _ = evaluate_at(state, names, ablated)
            assert trial["removed_norm"] == pytest.approx(np.linalg.norm(theta - ablated), rel=1e-8)
            assert trial["loss"] == pytest.approx(loss, rel=1e-9) and trial["accuracy"] == acc
            # (b) same subspace, removing exactly the edge's norm along θ's component in it
            component = q @ (q.T @ theta)
            matched = theta - c * component / np.linalg.norm(component)
            loss, acc, _, _ = evaluate_at(state, names, matched)
            assert ctl["random_norm"]["trials"][t]["removed_norm"] == pytest.approx(c, rel=1e-10)
            assert ctl["random_norm"]["trials"][t]["loss"] == pytest.approx(loss, rel=1e-9)
        assert ctl["random"]["delta_acc"] == pytest.approx(np.mean([t["delta_acc"] for t in ctl["random"]["trials"]]))
        assert ctl["random"]["seeds"] == [5, 6, 7]
        # (c) radial shrink by c, (d) θ̂ removed: the selection is zero
        for kind, ablated, norm in (("radial", theta * (1 - c / np.linalg.norm(theta)), c),
                                    ("theta_hat", np.zeros_like(theta), np.linalg.norm(theta))):
            loss, acc, _, _ = evaluate_at(state, names, ablated)
            assert ctl[kind]["removed_norm"] == pytest.approx(norm, rel=1e-10)
            assert ctl[kind]["loss"] == pytest.approx(loss, rel=1e-9) and ctl[kind]["accuracy"] == acc


def test_unavailable_set_is_reported_not_zero(fitted):
    cb, _, _, _, logger, root = fitted
    first = cb.results[0]  # 2-row window: v3, v4 do not exist
    bulk = first["sets"]["bulk"]
    assert bulk["status"] == "unavailable" and "window has 2 rows" in bulk["reason"]
    assert np.isnan(bulk["delta_acc"]) and np.isnan(bulk["removed_norm"])
    logged = next(m for step, m in logger.logged if step == 2 and "ablation/bulk/delta_acc" in m)
    assert np.isnan(logged["ablation/bulk/delta_acc"]) and logged["ablation/edge/delta_acc"] == first["sets"]["edge"]["delta_acc"]
    saved = json.load(open(root / "ablation.json"))  # default path: the trainer's log dir
    assert saved["results"][0]["sets"]["bulk"]["status"] == "unavailable"
    assert saved["results"][0]["sets"]["bulk"]["delta_acc"] is None
    assert saved["results"][2]["sets"]["bulk"]["delta_acc"] == cb.results[2]["sets"]["bulk"]["delta_acc"]


def test_ratio_is_given_only_when_the_control_is_resolvable(fitted):
    cb = fitted[0]
    seen = set()
    for r in cb.results:
        edge = r["sets"]["edge"]
        for kind, ratio in r["ratios"].items():
            ctl = r["controls"][kind]
            lo, hi = ctl["ci_for_ratio"]
            ok = not (lo <= 0 <= hi) and abs(ctl["delta_acc"]) >= 1 / r["base"]["trials"]
            assert ratio["status"] == ("ok" if ok else "not_resolvable")
            seen.add(ratio["status"])
            if ok:
                assert ratio["ratio"] == pytest.approx(edge["delta_acc"] / ctl["delta_acc"])
                assert ratio["interval"][0] <= ratio["ratio"] <= ratio["interval"][1]
            else:
                assert np.isnan(ratio["ratio"])
    assert "not_resolvable" in seen


def test_rerun_is_reproducible_and_restores_bit_exactly(fitted, monkeypatch):
    cb, trainer, model, *_ = fitted
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = evaluation_batches(trainer, model)
    again = cb.run(model, batches)  # the last run was on the final weights (step 8)
    assert again["controls"] == cb.results[-1]["controls"] and again["sets"] == cb.results[-1]["sets"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    import callbacks.ablation_callback as module

    fail_evaluate_on_call(monkeypatch, module, 3)
    with pytest.raises(RuntimeError, match="boom"):
        cb.run(model, batches)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training  # eval mode was left


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sets={}), "must name at least one direction set"),
        (dict(sets={"edge": []}), "direction set 'edge' is empty"),
        (dict(sets={"edge": [0, 1]}), "must hold integers k >= 1"),
        (dict(sets={"edge": [1, 1]}), "repeats a direction"),
        (dict(n_trials=0), "n_trials must be an integer >= 1"),
        (dict(matched_set="bulk"), "matched_set 'bulk' is not one of the sets"),
        (dict(confidence=1.0), "confidence must lie in"),
        (dict(steps=[]), "the schedule is empty"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AblationCallback(**{"steps": [1], **kwargs})


def test_missing_recorder_or_evaluable_module_fails_before_training(tmp_path):
    class Plain(TinyAttention):
        labelled_logits = None

    def fit(model, callbacks):
        trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, default_root_dir=tmp_path, callbacks=callbacks)
        with pytest.raises((ValueError, TypeError)) as err:
            trainer.fit(model)
        assert trainer.global_step == 0
        return str(err.value)

    assert "UpdateRecorder" in fit(TinyAttention(), [AblationCallback(steps=[1])])
    from callbacks.update_recorder import UpdateRecorder

    assert "GramSpectrum" in fit(TinyAttention(), [UpdateRecorder(), AblationCallback(steps=[1])])
    assert "labelled_logits" in fit(Plain(), [AblationCallback(steps=[1])])


def test_state_dict_round_trip(fitted):
    cb = fitted[0]
    fresh = AblationCallback(steps=[2, 4, 8], after_grok=[0], sets=SETS)
    fresh.load_state_dict(cb.state_dict())
    assert fresh.results == cb.results and fresh.schedule.done == {"step_2", "step_4", "step_8", "grok+0"}
    assert fresh.state_key == cb.state_key != AblationCallback(steps=[1], sets={"bulk": [3, 4]}).state_key


def test_sequence_interval_is_the_cluster_robust_ratio_interval_and_copies_equal_repeated_sequences():
    from scipy.stats import norm as normal

    from callbacks.functional.ablation import sequence_interval

    rng = np.random.default_rng(3)
    n_tokens = rng.integers(1, 6, size=12)  # trials per sequence
    rows = np.repeat(np.arange(12), n_tokens)
    base = rng.random(len(rows)) < 0.8
    changed = np.where(rng.random(len(rows)) < 0.3, ~base, base)
    copies = rng.integers(1, 4, size=12)
    got = sequence_interval(torch.from_numpy(base), torch.from_numpy(changed), torch.from_numpy(rows),
                            torch.from_numpy(copies), 0.95)
    # brute force: every sequence written out as often as it occurs, then the textbook cluster-robust ratio variance
    keep = np.concatenate([np.flatnonzero(rows == i) for i in range(12) for _ in range(copies[i])])
    cluster = np.concatenate([[j] * n_tokens[i] for j, i in enumerate(i for i in range(12) for _ in range(copies[i]))])
    b, c = base[keep], changed[keep]
    d = np.bincount(cluster, weights=c.astype(float) - b.astype(float))
    n = np.bincount(cluster).astype(float)
    delta, m = d.sum() / n.sum(), len(d)
    sd = np.sqrt(m / (m - 1) * np.sum((d - delta * n) ** 2)) / n.sum()
    z = normal.ppf(0.975)
    assert got == pytest.approx((delta - z * sd, delta + z * sd), rel=1e-12)
    # sequences whose tokens all move together are less independent than tokens: a wider interval than Agresti-Min
    together = np.repeat(rng.random(12) < 0.3, n_tokens)
    flip = sequence_interval(torch.ones(len(rows), dtype=torch.bool), torch.from_numpy(~together),
                             torch.from_numpy(rows), torch.ones(12, dtype=torch.long), 0.95)
    counts = paired_counts(torch.ones(len(rows), dtype=torch.bool), torch.from_numpy(~together))
    token = paired_interval(counts, 0.95)
    assert flip[1] - flip[0] > token[1] - token[0]
