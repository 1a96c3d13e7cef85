"""W_Q / W_K singular directions: a planted low-rank W_Q returns its planted directions, a planted edge block its
overlaps; QKDirectionsCallback on the tiny attention model against numpy SVDs of the saved weights."""
import math

import numpy as np
import pytest
import torch

from callbacks import ConfigurationError
from callbacks.functional.qk_directions import direction_overlaps, head_forms, query_key, top_singular
from callbacks.qk_directions_callback import QKDirectionsCallback
from tiny_attention_model import fit_tiny, gram_directions

D = 12


def orthonormal(n, m, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, m)))
    return q


def test_planted_low_rank_query_returns_its_directions():
    a, b, s = orthonormal(D, 3, 0), orthonormal(D, 3, 1), np.array([5.0, 3.0, 1.0])
    w_q = a @ np.diag(s) @ b.T + 1e-6 * np.random.default_rng(2).standard_normal((D, D))
    in_proj = torch.from_numpy(np.vstack([w_q, np.eye(D), np.zeros((D, D))]))
    got_q, got_k = query_key(in_proj)
    u, sv, vt = top_singular(got_q, 5)
    np.testing.assert_allclose(sv[:3].numpy(), s, atol=1e-5)
    assert sv[3] < 1e-5  # rank 3
    np.testing.assert_allclose(np.abs(np.sum(u[:, :3].numpy() * a, axis=0)), 1, atol=1e-8)  # |⟨u_i, a_i⟩| = 1
    np.testing.assert_allclose(np.abs(np.sum(vt[:3].numpy().T * b, axis=0)), 1, atol=1e-8)
    assert torch.equal(got_k, torch.eye(D, dtype=torch.float64))
    # a block along the second planted pair overlaps it alone and lies inside the top-3 spaces
    block = torch.from_numpy(np.outer(a[:, 1], b[:, 1]) * 0.3)
    out = direction_overlaps(block, u[:, :3], vt[:3])
    assert out["block_norm"] == pytest.approx(0.3)
    np.testing.assert_allclose(out["overlaps"], [0, 1, 0], atol=1e-8)
    assert out["subspace_share"] == pytest.approx(1) and out["left_share"] == pytest.approx(1)
    # outside the spaces: a block along the last (null) singular pair has no share in them
    full_u, _, full_vt = np.linalg.svd(w_q)
    null = torch.from_numpy(np.outer(full_u[:, -1], full_vt[-1]))
    assert direction_overlaps(null, u[:, :3], vt[:3])["subspace_share"] == pytest.approx(0, abs=1e-12)
    assert math.isnan(direction_overlaps(torch.zeros(D, D, dtype=torch.float64), u, vt)["subspace_share"])


def test_head_forms_sum_to_the_whole_form():
    rng = np.random.default_rng(3)
    w_q, w_k = (torch.from_numpy(rng.standard_normal((D, D))) for _ in range(2))
    forms = head_forms(w_q, w_k, 3)
    assert forms.shape == (3, D, D)
    torch.testing.assert_close(forms.sum(0), w_q.T @ w_k)
    torch.testing.assert_close(forms[1], w_q[4:8].T @ w_k[4:8])
    with pytest.raises(ValueError, match="divide"):
        head_forms(w_q, w_k, 5)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    cb = QKDirectionsCallback(modules={"A": "attn"}, steps=[1, 3, 6], top=3, per_head=True, edge_directions=[1, 2])
    trainer, model, spy, logger = fit_tiny([cb], max_steps=6, root=str(tmp_path_factory.mktemp("qk")))
    return cb, spy, logger


def test_callback_equals_numpy_svd_and_edge_blocks(fitted):
    cb, spy, logger = fitted
    for r in cb.results[1:]:
        state, rows = spy.state[r["step"]], spy.rows[r["step"]]
        W = state["attn.in_proj_weight"].numpy()
        d = W.shape[1]
        wq, wk = W[:d], W[d : 2 * d]
        for name, M in (("q", wq), ("k", wk), ("qk", wq.T @ wk)):
            np.testing.assert_allclose(r[name]["singular_values"], np.linalg.svd(M, compute_uv=False)[:3], rtol=1e-10)
        heads = [np.linalg.svd(wq[h * 4:(h + 1) * 4].T @ wk[h * 4:(h + 1) * 4], compute_uv=False)[:3] for h in (0, 1)]
        np.testing.assert_allclose(r["head_singular_values"], heads, rtol=1e-9, atol=1e-12)
        offset = sum(state[n].numel() for n in spy.names[: spy.names.index("attn.in_proj_weight")])
        u, _, vt = np.linalg.svd(wq)
        for k in (1, 2):
            v = gram_directions(rows, [k])[0]
            B = v[offset : offset + W.size].reshape(W.shape)[:d]  # v_k's W_Q block
            e = r["edge"][f"v{k}"]["q"]
            assert e["block_norm"] == pytest.approx(np.linalg.norm(B), rel=1e-9)
            np.testing.assert_allclose(e["overlaps"], np.abs(np.diag(u[:, :3].T @ B @ vt[:3].T)) / np.linalg.norm(B),
                                       rtol=1e-8, atol=1e-12)
            assert e["right_share"] == pytest.approx(np.linalg.norm(B @ vt[:3].T) ** 2 / np.linalg.norm(B) ** 2, rel=1e-9)
    logged = {}
    for step, metrics in logger.logged:  # several log calls per step
        logged.setdefault(step, {}).update(metrics)
    assert logged[6]["qk_directions/A/q/sigma1"] == pytest.approx(cb.results[-1]["q"]["singular_values"][0])
    assert math.isnan(logged[1]["qk_directions/A/v1/q/overlap1"])  # one row: no v1, reported unavailable
    assert cb.results[0]["edge"]["v1"]["q"]["status"] == "unavailable"


def test_bad_settings(tmp_path):
    with pytest.raises(ConfigurationError, match="top"):
        QKDirectionsCallback(steps=[1], top=0)
    with pytest.raises(ConfigurationError, match="edge_directions"):
        QKDirectionsCallback(steps=[1], edge_directions=[1, 1])
    with pytest.raises(ConfigurationError, match="not an nn.MultiheadAttention"):
        fit_tiny([QKDirectionsCallback(modules=["head"], steps=[1])], max_steps=1, root=str(tmp_path))
