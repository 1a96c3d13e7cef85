"""Depth geometry: a planted point cloud gives its known centroid PCA share and spacing; R² equals closed-form
Ridge in numpy; DepthGeometryCallback end to end on the toy encoder."""
import json
import math

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from callbacks import ConfigurationError
from callbacks.depth_geometry_callback import DepthGeometryCallback
from callbacks.functional.depth_geometry import depth_geometry
from callbacks.functional.probe import group_split, token_samples
from probe_toy_model import ToyEncoder, trainer

S, H, NOISE, D, PER_LEVEL = 1.0, 0.5, 0.3, 6, 4000


def planted_cloud(scale=1.0, seed=0):
    """4 levels: centroid c_d = d·S·e1 + b_d·e2 with b = H·(1, −1, −1, 1), orthogonal to the centred d, plus
    isotropic noise. Known: PCA₁ share (5/4 S²)/(5/4 S² + H²), distances √(S² + 4H²), S, √(S² + 4H²)."""
    rng = np.random.default_rng(seed)
    offset = rng.standard_normal(D)
    b = H * np.array([1.0, -1.0, -1.0, 1.0])
    levels = np.repeat(np.arange(4), PER_LEVEL)
    centroids = offset + np.outer(np.arange(4) * S, np.eye(D)[0]) + np.outer(b, np.eye(D)[1])  # [4, D]
    X = centroids[levels] + NOISE * rng.standard_normal((len(levels), D))
    groups = rng.permutation(len(levels)) // 8  # 8 tokens per sequence group
    return scale * X, levels.astype(float), groups


def ridge_r2_numpy(X, y, fit, score, alpha, standardize=False):
    """Closed-form Ridge with an unpenalised intercept: w = (XcᵀXc + αI)⁻¹ Xcᵀ yc on the fit tokens."""
    mu, sd = X[fit].mean(0), (X[fit].std(0) if standardize else np.ones(X.shape[1]))
    Z = (X - mu) / sd
    yc = y[fit] - y[fit].mean()
    w = np.linalg.solve(Z[fit].T @ Z[fit] + alpha * np.eye(X.shape[1]), Z[fit].T @ yc)
    pred = Z[score] @ w + y[fit].mean()
    return 1 - ((y[score] - pred) ** 2).sum() / ((y[score] - y[score].mean()) ** 2).sum()


def test_planted_cloud_gives_its_known_share_and_spacing():
    X, y, g = planted_cloud()
    out = depth_geometry(X, y, g)
    assert out["pca1_share"] == pytest.approx(1.25 * S**2 / (1.25 * S**2 + H**2), abs=6e-3)  # 0.8333; noise moves it ~2e-3
    assert out["pca_shares"][1] == pytest.approx(H**2 / (1.25 * S**2 + H**2), abs=6e-3)
    edge = math.sqrt(S**2 + 4 * H**2)
    np.testing.assert_allclose(out["distances"], [edge, S, edge], atol=0.02)
    assert out["mean_distance"] == pytest.approx((2 * edge + S) / 3, abs=0.01)
    assert out["within_spread"] == pytest.approx(NOISE * math.sqrt(D), rel=0.01)
    assert out["levels"] == [0.0, 1.0, 2.0, 3.0] and out["counts"] == [PER_LEVEL] * 4


def test_collinear_centroids_have_share_one_and_the_planted_spacing():
    rng = np.random.default_rng(5)
    levels = np.repeat(np.arange(6), 50)
    direction = rng.standard_normal(D)
    direction /= np.linalg.norm(direction)
    X = np.outer(levels * 0.7, direction)  # no noise: centroids exactly on a line, 0.7 apart
    out = depth_geometry(X, levels.astype(float), np.arange(len(levels)) // 5)
    assert out["pca1_share"] == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(out["distances"], 0.7, atol=1e-12)
    assert out["within_spread"] < 1e-12  # no noise: every token sits on its centroid


def test_scale_changes_distances_but_not_shares_or_the_scale_free_ratio():
    small, large = depth_geometry(*planted_cloud()), depth_geometry(*planted_cloud(scale=40.0))
    assert large["mean_distance"] == pytest.approx(40 * small["mean_distance"], rel=1e-9)
    assert large["pca1_share"] == pytest.approx(small["pca1_share"], rel=1e-9)
    assert large["distance_over_spread"] == pytest.approx(small["distance_over_spread"], rel=1e-9)


@pytest.mark.parametrize("standardize", [False, True])
def test_r2_equals_closed_form_ridge(standardize):
    X, y, g = planted_cloud()
    X, y, g = X[::10], y[::10], g[::10]
    X[:, 2] *= 0.01  # a small feature, where standardising matters
    out = depth_geometry(X, y, g, ridge_alpha=3.0, standardize=standardize, test_fraction=0.25, seed=4)
    everything = np.arange(len(y))
    train, test = group_split(g, 0.25, 4)
    assert out["r2_in_sample"] == pytest.approx(ridge_r2_numpy(X, y, everything, everything, 3.0, standardize), abs=1e-9)
    assert out["r2_heldout"] == pytest.approx(ridge_r2_numpy(X, y, train, test, 3.0, standardize), abs=1e-9)
    assert not set(g[train]) & set(g[test])


def test_one_group_has_no_heldout_r2_and_one_level_is_an_error():
    X, y, _ = planted_cloud()
    assert math.isnan(depth_geometry(X, y, np.zeros(len(y)))["r2_heldout"])
    with pytest.raises(ValueError, match="at least 2 target levels"):
        depth_geometry(X, np.zeros(len(y)), np.arange(len(y)))


def test_callback_logs_the_geometry_of_the_captured_states(tmp_path):
    torch.manual_seed(0)
    model = ToyEncoder(n_val=40, val_batch=16)
    cb = DepthGeometryCallback({"l1": "encoder.layers.1"}, "count", steps=[2], max_sequences=24, seed=3)
    expected = {}

    class Reference(Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            if trainer.global_step == 2:
                x, y = (t[:24] for t in model.val_data)  # 24 sequences span two validation batches
                mask = model.causal_mask(x.shape[1])
                model.eval()
                with torch.no_grad():
                    h1 = model.encoder.layers[1](model.encoder.layers[0](model.embed(x), src_mask=mask, is_causal=True),
                                                 src_mask=mask, is_causal=True)
                model.train()
                expected.update(depth_geometry(*token_samples(h1, model.probe_targets((x, y))["count"]), seed=3))

    tr = trainer(tmp_path, [Reference(), cb], max_steps=4)
    tr.fit(model)
    logged = tr.logger.merged("depth_geometry/")
    assert list(logged) == [2]
    for key in ("r2_in_sample", "r2_heldout", "pca1_share", "mean_distance", "distance_over_spread"):
        assert logged[2][f"depth_geometry/l1/{key}"] == pytest.approx(expected[key], rel=1e-4, abs=1e-6)
    assert cb.results[0]["module"] == "l1" and cb.results[0]["step"] == 2
    saved = json.loads(next(tmp_path.rglob("depth_geometry_count.json")).read_text())
    assert saved["results"][0]["counts"] == cb.results[0]["counts"]
    fresh = DepthGeometryCallback(["encoder.layers.1"], "count", steps=[2])
    fresh.load_state_dict(cb.state_dict())
    assert fresh.results == cb.results and fresh.schedule.done == {"step_2"}


def test_callback_rejects_bad_settings(tmp_path):
    with pytest.raises(ConfigurationError, match="categorical"):
        trainer(tmp_path, [DepthGeometryCallback(["encoder.layers.0"], "token", steps=[1])]).fit(ToyEncoder())
    with pytest.raises(ConfigurationError, match="no probe target"):
        trainer(tmp_path, [DepthGeometryCallback(["encoder.layers.0"], "depth", steps=[1])]).fit(ToyEncoder())
    with pytest.raises(ConfigurationError, match="test_fraction"):
        DepthGeometryCallback(["encoder.layers.0"], "count", steps=[1], test_fraction=1.0)
