"""Modular addition: the data is every pair once with its sum, the module speaks the analysis protocols, the
embedding spectrum finds planted frequencies, and the configs train, analyse and resume through the CLI."""
from pathlib import Path

import numpy as np
import pytest
import torch

from callbacks import ConfigurationError, EvaluableModule, ProbeableModule
from callbacks.functional.fourier_attention import summarize_spectrum, token_axis_power
from callbacks.utils.evaluation import evaluate
from lit_grok.cli import main
from lit_grok.data.modular import ModularAdditionDataModule, all_pairs, make_modular_split
from lit_grok.models.modular import ModularTransformer
from lit_grok.report import read_scalars
from test_resume import assert_same_scalars, signal_at

CONFIG_DIR = Path(__file__).parents[1] / "configs"
BASE = ["--config", str(CONFIG_DIR / "modadd.yaml")]
CAUSAL = [*BASE, "--config", str(CONFIG_DIR / "modadd_causal.yaml")]
# p = 13 (169 pairs) and a narrow model: the real configs, a few seconds per run
SMALL = ["--model.init_args.p=13", "--data.init_args.p=13", "--model.init_args.d_model=32", "--model.init_args.d_ff=64",
         "--data.init_args.batch_size=64", "--trainer.val_check_interval=20", "--callbacks.recorder.interval=10",
         "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def test_every_pair_once_with_its_sum_and_disjoint_seeded_splits():
    p = 11
    x, y = all_pairs(p)
    assert x.shape == (p * p, 3) and (x[:, 2] == p).all()
    assert len({tuple(r) for r in x[:, :2].tolist()}) == p * p
    for (a, b, _), label in zip(x.tolist(), y.tolist()):
        assert label == (a + b) % p
    (x_tr, y_tr), (x_te, y_te) = make_modular_split(p, 0.3, data_seed=5)
    assert len(x_tr) == round(0.3 * p * p) and len(x_tr) + len(x_te) == p * p
    train, test = {tuple(r) for r in x_tr.tolist()}, {tuple(r) for r in x_te.tolist()}
    assert not train & test and len(train | test) == p * p
    assert ((x_tr[:, 0] + x_tr[:, 1]) % p == y_tr).all() and ((x_te[:, 0] + x_te[:, 1]) % p == y_te).all()
    assert torch.equal(make_modular_split(p, 0.3, data_seed=5)[0][0], x_tr)
    assert not torch.equal(make_modular_split(p, 0.3, data_seed=6)[0][0], x_tr)


def test_validation_loaders_are_held_out_then_training_pairs():
    dm = ModularAdditionDataModule(p=7, train_fraction=0.5, eval_batch_size=10)
    held_out, train = (torch.cat([b[0] for b in loader]) for loader in dm.val_dataloader())
    assert torch.equal(held_out, dm.x_test) and torch.equal(train, dm.x_train)
    with pytest.raises(ConfigurationError, match="train_fraction"):
        ModularAdditionDataModule(p=7, train_fraction=1.0)


def test_module_protocol_shapes_and_evaluation_against_argmax():
    torch.manual_seed(0)
    p = 7
    model = ModularTransformer(p=p, d_model=16, n_heads=2, d_ff=32).eval()
    assert isinstance(model, EvaluableModule) and isinstance(model, ProbeableModule)
    x, y = all_pairs(p)
    logits, targets, seq = model.labelled_logits((x, y))
    assert logits.shape == (p * p, p) and torch.equal(targets, y) and torch.equal(seq, torch.arange(p * p))
    targets = model.probe_targets((x, y))
    assert set(targets) == {"a", "b", "answer"}
    for name, column in (("a", x[:, 0]), ("b", x[:, 1]), ("answer", y)):
        t = targets[name]
        assert t.values.shape == t.mask.shape == (p * p, 3) and t.categorical
        assert t.mask[:, 2].all() and not t.mask[:, :2].any()  # the `=` position only
        assert torch.equal(t.values[:, 2], column)
    with torch.no_grad():
        result = evaluate(model, [(x[:20], y[:20]), (x[20:], y[20:])])
        hits = int((model(x).argmax(-1) == y).sum())
    assert result.token_correct == hits and result.token_total == p * p and result.seq_correct == hits


def test_embedding_spectrum_finds_planted_frequencies_and_matches_a_brute_force_dft():
    rng = np.random.default_rng(0)
    n, D = 97, 6
    i = np.arange(n)
    planted = np.zeros((n, D))
    planted[:, 0] = 3 * np.cos(2 * np.pi * 5 * i / n)
    planted[:, 1] = 2 * np.sin(2 * np.pi * 17 * i / n + 0.4)
    planted += rng.standard_normal(D) * 4  # a mean embedding per feature: centring removes it
    power = token_axis_power(torch.from_numpy(planted))
    brute = np.array([sum(abs(sum((planted[j, d] - planted[:, d].mean()) * np.exp(-2j * np.pi * k * j / n)
                                  for j in range(n))) ** 2 for d in range(D)) for k in range(n // 2 + 1)])
    np.testing.assert_allclose(power.numpy(), brute, rtol=1e-9, atol=1e-9)
    assert power[0] < 1e-18
    s = summarize_spectrum(power)
    assert s.omega_star == 5 and s.top3 == pytest.approx(1.0, abs=1e-12)
    assert s.top1 == pytest.approx(9 / 13, rel=1e-9)  # |F|² ∝ amplitude²: 9 / (9 + 4)
    noise = summarize_spectrum(token_axis_power(torch.from_numpy(rng.standard_normal((n, 128)))))
    assert noise.top5 < 0.2  # no structure: about 5 / 48 of the power in the 5 strongest bins


def test_model_and_data_must_share_p(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["fit", *BASE, *SMALL, "--model.init_args.p=11", "--trainer.max_steps=1"])
    assert "model.p (11) must equal data.p (13)" in capsys.readouterr().err


def test_short_fit_logs_the_edge_and_the_embedding_spectrum(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["fit", *BASE, *SMALL, "--trainer.max_steps=100"])
    scalars = read_scalars(tmp_path / "logs" / "modadd" / "version_0")
    for tag in ("val/acc", "train_eval/acc", "edge/grad_frac_v1", "embed/fourier_top5", "weights/norm_all"):
        assert tag in scalars, tag
    steps, acc = scalars["val/acc"]
    assert list(steps) == [19, 39, 59, 79, 99] and ((0 <= acc) & (acc <= 1)).all()
    assert (tmp_path / "logs" / "modadd" / "version_0" / "checkpoints" / "last.ckpt").is_file()


def test_causal_config_runs_every_analysis_on_the_task(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    at_step_60 = [f"--callbacks.{name}.{arg}" for name in ("ablation", "perturbation", "probes", "probes_a", "fourier")
                  for arg in ("steps=[60]", "after_grok=[]")]
    main(["fit", *CAUSAL, *SMALL, "--trainer.max_steps=60", *at_step_60, "--callbacks.fourier.max_sequences=100"])
    scalars = read_scalars(tmp_path / "logs" / "modadd_causal" / "version_0")
    logged = {tag for tag, (steps, _) in scalars.items() if 59 in steps or 60 in steps}
    for tag in ("probe/ln_f/linear_acc", "probe/layer_0/mlp_acc", "fourier_edge/v1/F", "fourier_edge/v1/func_acc"):
        assert tag in logged, (tag, sorted(logged))
    for tag in ("ablation/edge/delta_acc", "ablation/control_random/ratio", "perturb/v1/max_kl", "curvature/v1/hvp",
                "attention/encoder.layers.0.self_attn/entropy_mean", "fourier/layer_0/top1"):
        assert tag in logged, (tag, sorted(logged))


def test_a_stopped_run_resumes_into_the_same_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = [*BASE, *SMALL, "--trainer.max_steps=100"]
    main(["fit", *common, "--trainer.logger.init_args.name=whole"])
    with pytest.raises(SystemExit):
        main(["fit", *common, "--trainer.logger.init_args.name=cut", signal_at(55, 15)])
    checkpoint = tmp_path / "logs" / "cut" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 55
    main(["fit", *common, "--trainer.logger.init_args.name=cut", "--ckpt_path=last"])
    assert_same_scalars(read_scalars(tmp_path / "logs" / "whole" / "version_0"), read_scalars(checkpoint.parents[1]), 55)
