"""Perturbation math: KL against numpy, exact HVP against full Hessians, FD agreement; PerturbationCallback."""
import numpy as np
import pytest
import torch
from torch import nn

from callbacks.functional.perturbation import (
    hessian_quadratic_forms,
    kl_divergence,
    second_difference,
)
from callbacks.utils.param_selection import split_like


def test_eps_grid_must_contain_zero():
    assert check_eps_grid([-0.1, 0, 0.1]) == [-0.1, 0.0, 0.1]
    with pytest.raises(ValueError, match="must contain 0"):
        check_eps_grid([-0.1, 0.1])


def test_kl_matches_numpy_and_is_zero_on_equal_inputs():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((50, 7)), rng.standard_normal((50, 7))
    log_p = a - np.log(np.exp(a).sum(1, keepdims=True))
    log_q = b - np.log(np.exp(b).sum(1, keepdims=True))
    expected = np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=1))
    assert kl_divergence(torch.from_numpy(log_p), torch.from_numpy(log_q)) == pytest.approx(expected, rel=1e-12)
    assert kl_divergence(torch.from_numpy(log_p), torch.from_numpy(log_p)) == 0.0


def test_hvp_of_quadratic_is_vAv():
    torch.manual_seed(0)
    M = torch.randn(6, 6, dtype=torch.float64)
    A = M @ M.T
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, dtype=torch.float64, requires_grad=True)
    loss = 0.5 * x.reshape(-1) @ A @ x.reshape(-1) + 3.0 * y.sum()  # y enters linearly: its Hessian block is 0
    v = torch.randn(10, dtype=torch.float64)
    forms = hessian_quadratic_forms(loss, [x, y], [split_like(v, [x, y]), split_like(2 * v, [x, y])])
    assert forms[0] == pytest.approx(float(v[:6] @ A @ v[:6]), rel=1e-12)
    assert forms[1] == pytest.approx(4 * forms[0], rel=1e-12)
    # a loss linear in every parameter has H = 0
    assert hessian_quadratic_forms(3.0 * y.sum(), [y], [[torch.ones(4, dtype=torch.float64)]]) == [0.0]


def test_hvp_matches_full_hessian_of_a_tiny_network():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, target = torch.randn(8, 3, dtype=torch.float64), torch.tensor([0, 1] * 4)
    params = [net[0].weight, net[2].weight]  # a selection: the other parameters are constants
    sizes = [p.numel() for p in params]

    def loss_of(flat):
        w0, w2 = flat.split(sizes)
        h = torch.tanh(x @ w0.view(4, 3).T + net[0].bias)
        return nn.functional.cross_entropy(h @ w2.view(2, 4).T + net[2].bias, target)

    flat = torch.cat([p.detach().reshape(-1) for p in params])
    H = torch.autograd.functional.hessian(loss_of, flat)  # [P, P]
    v = torch.randn(flat.numel(), dtype=torch.float64)
    loss = nn.functional.cross_entropy(net(x), target)
    got = hessian_quadratic_forms(loss, params, [split_like(v, params)])[0]
    assert got == pytest.approx(float(v @ H @ v), rel=1e-10)


def test_finite_difference_agrees_with_hvp_to_second_order():
    torch.manual_seed(2)
    w = torch.randn(5, dtype=torch.float64, requires_grad=True)
    f = lambda p: torch.log1p(torch.exp(p)).pow(3).sum() + torch.sin(p).prod()
    v = torch.randn(5, dtype=torch.float64)
    v /= v.norm()
    exact = hessian_quadratic_forms(f(w), [w], [[v]])[0]
    with torch.no_grad():
        errors = [abs(second_difference(float(f(w + e * v)), float(f(w - e * v)), float(f(w)), e) - exact) for e in (1e-2, 5e-3)]
    assert errors[0] < 1e-3 * max(1.0, abs(exact))
    assert 3.0 < errors[0] / errors[1] < 5.0  # halving ε divides the error by ~4: O(ε²)


def test_split_like_checks_size():
    params = [torch.zeros(2, 3), torch.zeros(4)]
    pieces = split_like(torch.arange(10.0, dtype=torch.float64), params)
    assert pieces[0].dtype == torch.float32 and pieces[0].shape == (2, 3) and pieces[1].tolist() == [6, 7, 8, 9]
    with pytest.raises(ValueError, match="vector has 9 entries"):
        split_like(torch.zeros(9), params)


# ---- PerturbationCallback end to end (TinyAttention, float64) ------------------------------------
import json

from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from callbacks.utils.evaluation import evaluation_batches
from callbacks.perturbation_callback import PerturbationCallback, check_eps_grid
from tiny_attention_model import fail_evaluate_on_call, evaluate_at, fit_tiny, flat, gram_directions

EPS = [-0.02, 0.0, 0.01, 0.02]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("perturbation")
    cb = PerturbationCallback(steps=[3], after_grok=[4], directions=[1, 2, 4], n_random=2, seed=9, eps=EPS)
    trainer, model, spy, logger = fit_tiny([cb], max_steps=8, root=str(root))
    return cb, trainer, model, spy, logger, root


def brute_direction(spy, step, name, seed=9):
    if name.startswith("v"):
        return gram_directions(spy.rows[step], [int(name[1:])])[0]
    r = np.random.default_rng(seed + int(name[len("random"):])).standard_normal(spy.rows[step].shape[1])
    return r / np.linalg.norm(r)


def test_runs_only_at_scheduled_steps(fitted):
    cb = fitted[0]
    assert [(r["step"], r["labels"], r["window_size"]) for r in cb.results] == [(3, ["step_3"], 3), (8, ["grok+4"], 4)]


def test_curves_match_brute_force_and_kl_is_zero_at_zero(fitted):
    cb, _, _, spy, _, _ = fitted
    for r in cb.results:
        state, names = spy.state[r["step"]], spy.names
        theta = flat(state, names)
        base_loss, _, _, base_logp = evaluate_at(state, names, theta)
        for name, entry in r["directions"].items():
            if entry["status"] != "ok":
                continue
            d = brute_direction(spy, r["step"], name)
            for point in entry["curve"]:
                loss, acc, _, logp = evaluate_at(state, names, theta + point["eps"] * d)
                kl = np.mean(np.sum(np.exp(base_logp) * (base_logp - logp), axis=1))
                assert point["loss"] == pytest.approx(loss, rel=1e-9) and point["accuracy"] == acc
                assert point["kl"] == pytest.approx(kl, rel=1e-6, abs=1e-15)
                if point["eps"] == 0:
                    assert point["kl"] == 0.0 and point["loss"] == r["base"]["loss"]
            assert entry["max_kl"] == max(p["kl"] for p in entry["curve"]) > 0


def test_hvp_equals_full_hessian_and_fd_agrees(fitted):
    cb, trainer, model, spy, _, _ = fitted
    r = cb.results[-1]  # step 8 = the final weights, still in the model
    names = spy.names
    params = {n: p.detach() for n, p in model.named_parameters()}
    sizes = [params[n].numel() for n in names]
    batches = evaluation_batches(trainer, model)

    def loss_of(flat_theta):
        values = dict(params)
        values.update({n: piece.view_as(params[n]) for n, piece in zip(names, flat_theta.split(sizes))})
        total, count = 0.0, 0
        for x, y in batches:
            logits = functional_call(model, values, (x,))
            keep = y != -100
            total = total + torch.nn.functional.cross_entropy(logits[keep], y[keep], reduction="sum")
            count += int(keep.sum())
        return total / count

    with sdpa_kernel([SDPBackend.MATH]):  # the fused attention kernels have no double backward
        H = torch.autograd.functional.hessian(loss_of, torch.from_numpy(flat(spy.state[8], names)), vectorize=True)
    for name in ("v1", "v4", "random0"):
        v = torch.from_numpy(brute_direction(spy, 8, name))
        entry = r["directions"][name]
        assert entry["hvp"] == pytest.approx(float(v @ H @ v), rel=1e-8)
        assert entry["fd"] == pytest.approx(entry["hvp"], rel=1e-4, abs=1e-8)  # float64: FD error is O(ε²)
        assert entry["delta_loss"] == pytest.approx(abs(entry["loss_plus"] - r["base"]["loss"]))
    assert r["fd_eps"] == pytest.approx(1e-3 * r["theta_norm"])
    assert r["directions"]["v1"]["sigma"] == pytest.approx(np.linalg.svd(spy.rows[8], compute_uv=False)[0], rel=1e-8)


def test_unavailable_direction_and_logging(fitted):
    cb, _, _, _, logger, root = fitted
    v4 = cb.results[0]["directions"]["v4"]  # 3-row window
    assert v4["status"] == "unavailable" and np.isnan(v4["max_kl"]) and np.isnan(v4["hvp"]) and v4["curve"] == []
    logged = next(m for step, m in logger.logged if step == 3 and "perturb/v1/max_kl" in m)
    assert np.isnan(logged["perturb/v4/max_kl"]) and np.isnan(logged["curvature/v4/hvp"])
    assert logged["curvature/v1/hvp"] == cb.results[0]["directions"]["v1"]["hvp"]
    rand = [cb.results[0]["directions"][f"random{t}"]["hvp"] for t in range(2)]
    assert logged["curvature/random/hvp_mean"] == pytest.approx(np.mean(rand))
    saved = json.load(open(root / "perturbation.json"))
    assert saved["results"][0]["directions"]["v4"]["hvp"] is None and saved["eps"] == EPS


def test_relative_mode_and_bit_exact_restore(fitted, monkeypatch):
    cb, trainer, model, spy, _, _ = fitted
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = evaluation_batches(trainer, model)
    monkeypatch.setattr(cb, "eps_mode", "relative")
    monkeypatch.setattr(cb, "curvature", False)
    r = cb.run(model, batches)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    theta = flat(spy.state[8], spy.names)
    point = r["directions"]["v1"]["curve"][0]
    assert point["eps_abs"] == pytest.approx(EPS[0] * np.linalg.norm(theta))
    loss, _, _, _ = evaluate_at(spy.state[8], spy.names, theta + point["eps_abs"] * brute_direction(spy, 8, "v1"))
    assert point["loss"] == pytest.approx(loss, rel=1e-9)
    import callbacks.perturbation_callback as module

    fail_evaluate_on_call(monkeypatch, module, 4)
    with pytest.raises(RuntimeError, match="boom"):
        cb.run(model, batches)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(eps=[-0.1, 0.1]), "must contain 0"),
        (dict(directions=[]), "is empty"),
        (dict(directions=[0]), "k >= 1"),
        (dict(n_random=0), "n_random must be an integer >= 1"),
        (dict(eps_mode="log"), "eps_mode must be"),
        (dict(fd_scale=0), "fd_scale must be > 0"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PerturbationCallback(**{"steps": [1], **kwargs})


def test_missing_spectrum_fails_before_training(tmp_path):
    import lightning.pytorch as pl

    from callbacks.update_recorder import UpdateRecorder
    from tiny_attention_model import TinyAttention

    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[UpdateRecorder(), PerturbationCallback(steps=[1])])
    with pytest.raises(ValueError, match="no GramSpectrum"):
        trainer.fit(TinyAttention())
    assert trainer.global_step == 0


def brute_attention(state, names, theta, x):
    """(mean attention entropy over sequences, heads and every query; ‖W_Q W_K − W_K W_Q‖_F) of TinyAttention by
    numpy, with the selection set to ``theta``."""
    state = {k: v.numpy().copy() for k, v in state.items()}
    offset = 0
    for n in names:
        size = state[n].size
        state[n] = theta[offset : offset + size].reshape(state[n].shape)
        offset += size
    w, b = state["attn.in_proj_weight"], state["attn.in_proj_bias"]
    d = w.shape[1]
    heads, dh = 2, d // 2
    h = state["emb.weight"][x.numpy()]  # [B, T, d]
    q, k = h @ w[:d].T + b[:d], h @ w[d : 2 * d].T + b[d : 2 * d]
    T = x.shape[1]
    q, k = (z.reshape(len(x), T, heads, dh).transpose(0, 2, 1, 3) for z in (q, k))  # [B, H, T, dh]
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(dh) + np.triu(np.full((T, T), -np.inf), 1)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    entropy = -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0)).sum(-1).mean()
    wq, wk = w[:d], w[d : 2 * d]
    return entropy, np.linalg.norm(wq @ wk - wk @ wq)


def test_attention_curves_match_numpy(tmp_path):
    cb = PerturbationCallback(steps=[4], directions=[1], n_random=1, seed=9, eps=EPS, curvature=False,
                              attention_curves=True)
    trainer, model, spy, _ = fit_tiny([cb], max_steps=5, root=str(tmp_path))
    (r,) = cb.results
    state, names = spy.state[4], spy.names
    theta = flat(state, names)
    x = torch.cat([xb for xb, _ in model.val_dataloader()])
    assert cb.settings()["attention_curves"] is True
    for name, entry in r["directions"].items():
        d = brute_direction(spy, 4, name)
        for point in entry["curve"]:
            entropy, commutator = brute_attention(state, names, theta + point["eps"] * d, x)
            assert point["attention_entropy"] == pytest.approx(entropy, rel=1e-9)
            assert point["qk_commutator"] == pytest.approx(commutator, rel=1e-9)
    moved = [p["qk_commutator"] for p in r["directions"]["v1"]["curve"]]
    assert len(set(moved)) > 1  # the sweep moves W_Q / W_K


def test_attention_curves_without_attention_modules_fail_before_training(tmp_path):
    import lightning.pytorch as pl
    from torch import nn

    from callbacks.gram_spectrum import GramSpectrum
    from callbacks.update_recorder import UpdateRecorder
    from tiny_attention_model import TinyAttention

    class NoAttention(TinyAttention):
        def __init__(self):
            super().__init__()
            del self.attn
            self.mix = nn.Linear(8, 8)

        def forward(self, x):
            h = self.emb(x)
            return self.head(h + self.mix(h))

    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[UpdateRecorder(params="all"), GramSpectrum(),
                                    PerturbationCallback(steps=[1], attention_curves=True)])
    with pytest.raises(ValueError, match=r"NoAttention has no nn.MultiheadAttention to follow; set attention_curves=False"):
        trainer.fit(NoAttention())
    assert trainer.global_step == 0


def test_query_attention_with_every_row_once_equals_the_padded_path(monkeypatch):
    from lit_grok.callbacks import QueryAttention, perturbation_callback as perturbation_module
    from lit_grok.callbacks.perturbation_callback import attention_evaluation, query_batches
    from lit_grok.callbacks.utils.hidden_states import captured_attention
    from tiny_attention_model import TinyAttention

    class EveryQuery(TinyAttention):  # each padded query once (counts 1), every row once (row_copies None)
        def query_batch(self, batches):
            return batches

        def query_attention(self, batches):
            with captured_attention(self, None, "test") as store:
                labelled = self.labelled_logits(batches[0])
            probs = store["attn"][0]  # [B, H, T, T]
            B, H, T, _ = probs.shape
            return QueryAttention({"attn": probs.permute(0, 2, 1, 3).reshape(B * T, H, T)},
                                  torch.ones(B * T, dtype=torch.long), labelled, None)

    torch.manual_seed(0)
    model = EveryQuery().eval()
    batch = [next(iter(model.val_dataloader()))]
    fast, fast_state = attention_evaluation(model, query_batches(model, batch))
    monkeypatch.setattr(perturbation_module, "QueryAttentionModule", type("Nothing", (), {}))  # the padded path
    slow, slow_state = attention_evaluation(model, query_batches(model, batch))
    assert (fast.token_correct, fast.token_total, fast.seq_correct) == (slow.token_correct, slow.token_total, slow.seq_correct)
    assert fast.loss == pytest.approx(slow.loss, rel=1e-12) and fast.token_counts is None
    assert fast_state == pytest.approx(slow_state, rel=1e-12)


def test_attention_curves_name_the_modules_query_attention_left_out():
    from lit_grok.callbacks import QueryAttention
    from lit_grok.callbacks.perturbation_callback import attention_evaluation, query_batches
    from tiny_attention_model import TinyAttention

    class Forgetful(TinyAttention):  # offers each query's attention once, but for no module
        def query_batch(self, batches):
            return batches

        def query_attention(self, batches):
            return QueryAttention({}, torch.ones(1, dtype=torch.long), self.labelled_logits(batches[0]), None)

    batches = list(TinyAttention().val_dataloader())
    with pytest.raises(ValueError, match=r"Forgetful.query_attention gave no attention for \['attn'\]; return every "
                                         r"nn.MultiheadAttention's, or set attention_curves=False"):
        model = Forgetful().eval()
        attention_evaluation(model, query_batches(model, batches))
