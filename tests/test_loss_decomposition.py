"""Loss decomposition (docs/methods.md §11.2): planted windows and losses, and a tiny model checked by brute force."""
import json
import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from callbacks import ConfigurationError, GramSpectrum, GrokDetector, LossDecompositionCallback, UpdateRecorder
from callbacks.functional.loss_decomposition import gradient_projections, importance, stability_alphas
from tiny_attention_model import MemoryLogger, Spy, TinyAttention, evaluate_at, flat, gram_directions, tiny_data


def unit(i, p=6):
    e = torch.zeros(p, dtype=torch.float64)
    e[i] = 1.0
    return e


def test_halves_sharing_v1_with_orthogonal_v2_give_alpha_1_and_0():
    first = torch.stack([3 * unit(0), 1 * unit(1)])  # v₁ = e₀, v₂ = e₁
    second = torch.stack([-3 * unit(0), 1 * unit(2), 0.5 * unit(3)])  # v₁ = ±e₀, v₂ = e₂ ⟂ e₁
    alpha = stability_alphas(torch.cat([first, second]), 3)
    assert alpha[0] == pytest.approx(1.0) and alpha[1] == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(alpha[2])  # the 2-row first half has no v₃


def test_alpha_equals_numpy_svd_of_the_halves():
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(5, 30)) * np.array([5, 4, 3, 2, 1.0])[:, None])
    _, _, v1 = np.linalg.svd(x[:2].numpy(), full_matrices=False)
    _, _, v2 = np.linalg.svd(x[2:].numpy(), full_matrices=False)
    expected = np.abs(np.sum(v1[:2] * v2[:2], axis=1))
    assert stability_alphas(x, 2).numpy() == pytest.approx(expected, rel=1e-10)


def test_short_window_is_nan_or_the_reference_one():
    x = torch.randn(3, 10, dtype=torch.float64)
    assert torch.isnan(stability_alphas(x, 3)).all()
    assert stability_alphas(x, 3, reference=True).tolist() == [1.0, 1.0, 1.0]


def test_planted_rank_one_loss_gives_its_alpha_and_g():
    """L(θ) = ½(⟨a, θ⟩ − c)²: ∇L = (⟨a, θ⟩ − c)·a, so G_j = (⟨a, θ⟩ − c)⟨v_j, a⟩; a window whose rows all move
    along â (± a smaller orthogonal wobble, e₂ in one half, e₃ in the other) has v₁ = â in both halves, α₁ = 1."""
    a = torch.tensor([3.0, 4.0, 0, 0, 0, 0], dtype=torch.float64)
    a_hat = a / a.norm()
    theta = torch.tensor([1.0, -2.0, 0.5, 0.3, 0.0, 1.0], dtype=torch.float64, requires_grad=True)
    loss = 0.5 * (a @ theta - 2.0) ** 2
    (grad,) = torch.autograd.grad(loss, theta)
    rows = torch.stack([2 * a_hat + 0.1 * unit(2), 2 * a_hat - 0.1 * unit(2),
                        1.5 * a_hat + 0.1 * unit(3), 1.5 * a_hat - 0.1 * unit(3)])
    alpha = stability_alphas(rows, 2)
    assert alpha[0] == pytest.approx(1.0, abs=1e-12) and alpha[1] == pytest.approx(0.0, abs=1e-12)
    directions = torch.stack([a_hat, unit(2)])
    g = gradient_projections(grad, directions)
    residual = float(a @ theta.detach() - 2.0)
    assert g.tolist() == pytest.approx([residual * 5.0, 0.0])
    out = importance(alpha, g, 2 * g, torch.tensor([1.0, 0.0]))
    assert out["predicted"] == pytest.approx([2 * float(g[0]) ** 2, 0.0])
    assert math.isnan(out["pearson"]) and out["few_points"]  # two points: no correlation


def test_correlations_against_scipy_free_formulas():
    alpha = torch.tensor([1.0, 0.5, 0.2, 0.1])
    gt, gv = torch.tensor([2.0, -1.0, 3.0, 0.5]), torch.tensor([1.0, 2.0, -1.0, 0.1])
    actual = torch.tensor([2.5, -0.8, 0.4, 0.001])
    out = importance(alpha, gt, gv, actual)
    p, a = (alpha * gt * gv).abs().numpy(), actual.abs().numpy()
    assert out["pearson"] == pytest.approx(np.corrcoef(p, a)[0, 1])
    rank = lambda v: np.argsort(np.argsort(v)).astype(float)  # noqa: E731 (no ties here)
    assert out["spearman"] == pytest.approx(np.corrcoef(rank(p), rank(a))[0, 1])
    assert out["n_points"] == 4 and out["few_points"]


# ---- the callback on the tiny model ----------------------------------------------------------------------
class TwoLoaders(TinyAttention):
    """TinyAttention whose validation dataloaders are [held-out set, training set]."""

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        if dataloader_idx == 0:
            logits, y, _ = self.labelled_logits(batch)
            self.log("val/acc", (logits.argmax(-1) == y).double().mean(), add_dataloader_idx=False)

    def val_dataloader(self):
        return [tiny_data(48, seed=1, batch_size=16), tiny_data(32, seed=0, batch_size=8)]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("loss_decomp")
    torch.manual_seed(0)
    cb = LossDecompositionCallback(steps=[3, 8], n_dirs=4)
    spy, logger = Spy(), MemoryLogger()
    trainer = pl.Trainer(
        max_steps=8, val_check_interval=4, check_val_every_n_epoch=None, num_sanity_val_steps=0,
        precision="64-true", default_root_dir=str(root), logger=logger, enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False,
        callbacks=[UpdateRecorder(window=4), GramSpectrum(top_k=4), GrokDetector(threshold=1e-9), cb, spy],
    )
    model = TwoLoaders()
    trainer.fit(model)
    return cb, model, spy, logger, root


def brute_gradient(state, names, data):
    """∇ of the mean CE over every labelled token of ``data``, in one batch, by plain autograd on a fresh model."""
    model = TinyAttention().double().eval()
    model.load_state_dict(state)
    x = torch.cat([b[0] for b in data])
    y = torch.cat([b[1] for b in data])
    keep = y != -100
    F.cross_entropy(model(x)[keep], y[keep]).backward()
    params = dict(model.named_parameters())
    return np.concatenate([params[n].grad.numpy().reshape(-1) for n in names])


def test_callback_equals_brute_force(fitted):
    cb, _, spy, _, _ = fitted
    assert [(r["step"], r["window_size"]) for r in cb.results] == [(3, 3), (8, 4)]
    short, full = cb.results
    assert all(math.isnan(d["alpha"]) for d in short["directions"])  # 3 rows: α is unavailable, not 1
    state, rows, names = spy.state[8], spy.rows[8], spy.names
    theta = flat(state, names)
    g_train = brute_gradient(state, names, tiny_data(32, seed=0, batch_size=8))
    g_val = brute_gradient(state, names, tiny_data(48, seed=1, batch_size=16))
    V = gram_directions(rows, [1, 2, 3, 4])
    _, _, va = np.linalg.svd(rows[:2], full_matrices=False)
    _, _, vb = np.linalg.svd(rows[2:], full_matrices=False)
    base_loss = evaluate_at(state, names, theta)[0]
    for d in full["directions"]:
        j = d["k"] - 1
        assert d["g_train"] == pytest.approx(V[j] @ g_train, rel=1e-8, abs=1e-12)
        assert d["g_val"] == pytest.approx(V[j] @ g_val, rel=1e-8, abs=1e-12)
        if j < 2:
            assert d["alpha"] == pytest.approx(abs(va[j] @ vb[j]), rel=1e-8)
        else:
            assert math.isnan(d["alpha"])  # halves of 2 rows have no v₃, v₄
        ablated = theta - V[j] * (V[j] @ theta)
        assert d["actual_dloss"] == pytest.approx(evaluate_at(state, names, ablated)[0] - base_loss, rel=1e-8, abs=1e-12)
        assert d["predicted"] == pytest.approx(d["alpha"] * d["g_train"] * d["g_val"], nan_ok=True)


def test_logged_tags_and_json(fitted):
    cb, _, _, logger, root = fitted
    logged = dict(logger.logged)
    assert logged[8]["loss_decomp/v1/alpha"] == cb.results[1]["directions"][0]["alpha"]
    for key in ("alpha", "g_train", "g_val", "predicted", "actual_dloss", "actual_dacc"):
        assert f"loss_decomp/v2/{key}" in logged[8]
    assert "loss_decomp/pearson" in logged[8]
    path = next(root.rglob("loss_decomposition.json"))
    saved = json.loads(path.read_text())
    assert saved["n_dirs"] == 4 and len(saved["results"]) == 2 and saved["results"][0]["directions"][0]["alpha"] is None


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": [1], "n_dirs": 0}, "n_dirs"),
    ({"steps": [1], "train_dataloader_idx": 0, "dataloader_idx": 0}, "differ"),
    ({"steps": [1], "train_dataloader_idx": -1}, "train_dataloader_idx"),
    ({}, "schedule is empty"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        LossDecompositionCallback(**kwargs)
