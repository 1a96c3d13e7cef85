"""Probes recover planted signals, never leak across sequence groups; hooks capture and clean up; ProbeCallback."""
import json

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from sklearn.metrics import r2_score
from torch import nn

from callbacks.utils.hidden_states import captured_outputs, resolve_modules
from callbacks.probe_callback import ProbeCallback
from callbacks.functional.probe import QuadraticRidge, group_split, make_probe, run_probes, token_samples
from callbacks.utils.protocols import ProbeTarget
from probe_toy_model import ToyEncoder, trainer


def planted(n=800, D=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, D))
    return X, rng, np.arange(n) // 4  # 4 tokens per sequence


def scores(results):
    return {r.kind: r.value for r in results}


def test_linear_probe_equals_closed_form_ridge_on_standardised_features():
    X, rng, groups = planted(n=400, D=5)
    y = X @ rng.standard_normal(5) + rng.standard_normal(400)
    train, test = group_split(groups, 0.3, seed=3)
    mu, sd = X[train].mean(0), X[train].std(0)
    Z = np.c_[np.ones(len(train)), (X[train] - mu) / sd]
    penalty = np.eye(6) * 2.5
    penalty[0, 0] = 0.0  # intercept not penalised
    w = np.linalg.solve(Z.T @ Z + penalty, Z.T @ y[train])
    pred = np.c_[np.ones(len(test)), (X[test] - mu) / sd] @ w
    expected = 1 - ((y[test] - pred) ** 2).sum() / ((y[test] - y[test].mean()) ** 2).sum()
    res = run_probes(X, y, groups, False, ("linear",), seed=3, ridge_alpha=2.5)[0]
    assert res.value == pytest.approx(expected, abs=1e-9)
    assert (res.metric, res.n_train, res.n_test) == ("r2", len(train), len(test))


@pytest.mark.parametrize("n_train", [20, 80])  # fewer samples than the 27 features (dual), more (primal)
def test_quadratic_ridge_equals_ridge_on_explicit_degree_2_features(n_train):
    # brute force: every x_i and x_i x_j (i <= j), centred, ridge normal equations with an unpenalised intercept
    rng = np.random.default_rng(n_train)
    X = rng.standard_normal((n_train + 20, 6)) * [1, 2, 0.5, 1, 3, 1]
    y = X[:, 0] * X[:, 1] + X[:, 2] + 0.1 * rng.standard_normal(len(X))
    i, j = np.triu_indices(6)
    features = np.c_[X, X[:, i] * X[:, j]]  # [n, 6 + 21]
    train, test = features[:n_train], features[n_train:]
    mu, y_mu = train.mean(0), y[:n_train].mean()
    w = np.linalg.solve((train - mu).T @ (train - mu) + 3.0 * np.eye(27), (train - mu).T @ (y[:n_train] - y_mu))
    expected = (test - mu) @ w + y_mu
    probe = QuadraticRidge(alpha=3.0).fit(X[:n_train], y[:n_train])
    assert (probe.primal_ is None) == (n_train < 27)
    np.testing.assert_allclose(probe.predict(X[n_train:]), expected, rtol=1e-10, atol=1e-10)


def test_raw_features_reproduce_the_reference_scale_artefact():
    # The same signal in a representation shrunk 50x: a fixed Ridge penalty on raw features loses it,
    # the standardised probe does not (why the paper's linear R² "falls" as weight decay compresses).
    X, rng, groups = planted(n=600, D=8)
    y = X @ rng.standard_normal(8) + 0.1 * rng.standard_normal(600)
    assert run_probes(X, y, groups, False, ("linear",), standardize=False)[0].value > 0.99
    raw = run_probes(X / 50, y, groups, False, ("linear",), standardize=False)[0].value
    scaled = run_probes(X / 50, y, groups, False, ("linear",))[0].value
    assert scaled > 0.99 and raw < 0.9


def test_planted_linear_and_square_signals():
    X, rng, groups = planted()
    linear_target = X @ np.array([1.0, -2.0, 0.5, 0, 0, 0]) + 0.05 * rng.standard_normal(len(X))
    square_target = X[:, 0] ** 2 + 0.05 * rng.standard_normal(len(X))
    lin = scores(run_probes(X, linear_target, groups, False, ("linear", "quadratic", "mlp")))
    sq = scores(run_probes(X, square_target, groups, False, ("linear", "quadratic", "mlp")))
    assert lin["linear"] > 0.99 and lin["quadratic"] > 0.98 and lin["mlp"] > 0.9
    assert sq["linear"] < 0.05  # x² is uncorrelated with every x_i
    assert sq["quadratic"] > 0.98 and sq["mlp"] > 0.8


def test_classification_probes_score_accuracy():
    X, rng, groups = planted()
    labels = (X[:, 0] + X[:, 1] > 0).astype(int) + 2 * (X[:, 2] > 1)  # 4 classes, linearly separable
    res = run_probes(X, labels, groups, True, ("linear", "quadratic", "mlp"))
    assert {r.metric for r in res} == {"acc"}
    got = scores(res)
    assert got["linear"] > 0.93 and got["quadratic"] > 0.85 and got["mlp"] > 0.85
    ring = (X[:, 0] ** 2 + X[:, 1] ** 2 > 1.4).astype(int)  # not linearly separable
    ring_scores = scores(run_probes(X, ring, groups, True, ("linear", "quadratic")))
    assert ring_scores["linear"] < 0.7 < 0.9 < ring_scores["quadratic"]


def test_split_by_group_does_not_leak_duplicated_sequences():
    rng = np.random.default_rng(0)
    n_seq, copies, tokens, D = 60, 3, 5, 80
    codes = rng.standard_normal((n_seq, D))  # one random representation per distinct sequence
    target = rng.standard_normal(n_seq)  # a per-sequence target unrelated to the representation
    seq = np.repeat(np.arange(n_seq), copies * tokens)  # every token of every copy
    X = codes[seq] + 1e-3 * rng.standard_normal((len(seq), D))
    y, groups = target[seq], seq  # copies share a group
    # a token-level split sees every test sequence in training and "recovers" the target
    perm = rng.permutation(len(y))
    tr, te = perm[: int(0.7 * len(y))], perm[int(0.7 * len(y)):]
    leaky = r2_score(y[te], make_probe("linear", False).fit(X[tr], y[tr]).predict(X[te]))
    assert leaky > 0.95
    train, test = group_split(groups, 0.3, seed=0)
    assert not set(groups[train]) & set(groups[test])
    assert len(train) + len(test) == len(y) and len(set(groups[test])) == 18  # round(0.3 · 60)
    honest = run_probes(X, y, groups, False, ("linear",))[0].value
    assert honest < 0.2


def test_group_split_is_seeded_and_keeps_both_sides():
    groups = np.repeat(np.arange(10), 3)
    a, b = group_split(groups, 0.3, 5), group_split(groups, 0.3, 5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert len(group_split(groups, 0.99, 0)[0]) == 3  # at least one group stays in train
    with pytest.raises(ValueError, match="at least 2 sequence groups"):
        group_split(np.zeros(5), 0.3, 0)


def test_max_tokens_caps_samples():
    X, rng, groups = planted(n=800)
    res = run_probes(X, X[:, 0], groups, False, ("linear",), max_tokens=100)[0]
    assert res.n_train + res.n_test == 100


def test_token_samples_select_masked_tokens_with_their_group():
    states = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)
    target = ProbeTarget(torch.tensor([[1.0, 2, 3], [4, 5, 6]]), torch.tensor([[True, True, False], [False, True, True]]),
                         False, torch.tensor([7, 9]))
    X, y, g = token_samples(states, target)
    assert X.tolist() == [[0, 1], [2, 3], [8, 9], [10, 11]]
    assert y.tolist() == [1, 2, 5, 6] and g.tolist() == [7, 7, 9, 9]
    with pytest.raises(ValueError, match="do not align"):
        token_samples(states[:, :2], target)


def test_unknown_probe_kind():
    with pytest.raises(ValueError, match="unknown probe kind 'cubic'"):
        make_probe("cubic", False)
    with pytest.raises(ValueError, match="unknown probe kind 'cubic'"):
        ProbeCallback(["encoder.layers.0"], "count", probes=["linear", "cubic"], steps=[1])


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5, -0.2])
def test_test_fraction_outside_unit_interval(fraction):
    with pytest.raises(ValueError, match=r"test_fraction must lie in \(0, 1\)"):
        ProbeCallback(["encoder.layers.0"], "count", test_fraction=fraction, steps=[1])


# --- hidden-state hooks -------------------------------------------------------------------------------


def test_captured_outputs_equal_a_manual_forward_and_hooks_are_removed_exactly():
    torch.manual_seed(0)
    model = ToyEncoder()
    x = model.val_data[0][:5]
    keep_me = model.encoder.layers[0].register_forward_hook(lambda *a: None)  # a user's hook must survive
    before = {name: (dict(m._forward_hooks), dict(m._forward_pre_hooks)) for name, m in model.named_modules()}
    with torch.no_grad(), captured_outputs(model, ["encoder.layers.0", "encoder.layers.1", "ln_f"]) as store:
        model(x)
    mask = model.causal_mask(x.shape[1])
    with torch.no_grad():
        h0 = model.encoder.layers[0](model.embed(x), src_mask=mask, is_causal=True)
        h1 = model.encoder.layers[1](h0, src_mask=mask, is_causal=True)
        ln = model.ln_f(h1)
    for name, want in (("encoder.layers.0", h0), ("encoder.layers.1", h1), ("ln_f", ln)):
        assert len(store[name]) == 1
        torch.testing.assert_close(store[name][0], want, rtol=0, atol=1e-6)
    after = {name: (dict(m._forward_hooks), dict(m._forward_pre_hooks)) for name, m in model.named_modules()}
    assert after == before
    with pytest.raises(RuntimeError, match="boom"):
        with captured_outputs(model, ["encoder.layers.0", "ln_f"]):
            raise RuntimeError("boom")
    assert {name: (dict(m._forward_hooks), dict(m._forward_pre_hooks)) for name, m in model.named_modules()} == before
    keep_me.remove()


def test_missing_module_name_lists_valid_names():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with pytest.raises(ValueError, match=r"no module named 'encoder' in Sequential; valid names include \['0', '1'\]"):
        resolve_modules(model, ["0", "encoder"], "test")


# --- ProbeCallback ------------------------------------------------------------------------------------


def manual_features(model, n_seq, target="count"):
    """Layer outputs and targets of the first n_seq validation sequences, computed without hooks."""
    x, y = (t[:n_seq] for t in model.val_data)
    mask = model.causal_mask(x.shape[1])
    with torch.no_grad():
        h0 = model.encoder.layers[0](model.embed(x), src_mask=mask, is_causal=True)
        h1 = model.encoder.layers[1](h0, src_mask=mask, is_causal=True)
    t = model.probe_targets((x, y))[target]
    return {"l0": token_samples(h0, t), "l1": token_samples(h1, t)}


def test_probe_callback_logs_held_out_scores_at_the_scheduled_step(tmp_path):
    torch.manual_seed(0)
    model = ToyEncoder(n_val=40, val_batch=16)
    cb = ProbeCallback({"l0": "encoder.layers.0", "l1": "encoder.layers.1"}, "count", probes=["linear", "quadratic"],
                       steps=[2], max_sequences=24, max_tokens=None, seed=1)  # 24 sequences span two val batches
    expected = {}

    class Reference(Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            if trainer.global_step == 2:
                model.eval()
                for alias, (X, y, g) in manual_features(model, 24).items():
                    for r in run_probes(X, y, g, False, ("linear", "quadratic"), seed=1, max_tokens=None):
                        expected[f"probe/{alias}/{r.kind}_r2"] = r.value
                model.train()

    tr = trainer(tmp_path, [Reference(), cb], max_steps=4)
    tr.fit(model)
    logged = tr.logger.merged("probe/")
    assert list(logged) == [2]
    assert logged[2] == pytest.approx(expected, abs=1e-5)  # float32 batching round-off only
    n_tokens = int((model.val_data[1][:24] != -100).sum())
    assert {r["n_train"] + r["n_test"] for r in cb.results} == {n_tokens}
    assert {(r["module"], r["probe"], r["step"]) for r in cb.results} == {
        (m, p, 2) for m in ("l0", "l1") for p in ("linear", "quadratic")}
    saved = json.loads(next(tmp_path.rglob("probes_count.json")).read_text())
    assert saved["results"] == cb.results
    fresh = ProbeCallback(["encoder.layers.0"], "count", steps=[2])
    fresh.load_state_dict(cb.state_dict())
    assert fresh.results == cb.results and fresh.schedule.done == {"step_2"}


def test_probe_callback_classification_target(tmp_path):
    torch.manual_seed(0)
    model = ToyEncoder()
    cb = ProbeCallback(["encoder.layers.1"], "token", probes=["linear"], steps=[1], max_sequences=None)
    tr = trainer(tmp_path, [cb], max_steps=1)
    tr.fit(model)
    (value,) = tr.logger.merged("probe/")[1].values()
    assert list(tr.logger.merged("probe/")[1]) == ["probe/encoder.layers.1/linear_acc"]
    X, y, g = manual_features(model, 40, "token")["l1"]
    assert value == pytest.approx(run_probes(X, y, g, True, ("linear",))[0].value, abs=1e-6)


def test_probe_callback_rejects_missing_module_and_target(tmp_path):
    with pytest.raises(ValueError, match="ProbeCallback: no module named 'encoder.layers.7'"):
        trainer(tmp_path, [ProbeCallback(["encoder.layers.7"], "count", steps=[1])]).fit(ToyEncoder())
    message = r"provides no probe target 'depth'; its probe_targets\(batch\) has \['count', 'token'\]"
    with pytest.raises(ValueError, match=message):
        trainer(tmp_path, [ProbeCallback(["encoder.layers.0"], "depth", steps=[1])]).fit(ToyEncoder())


def test_probe_callback_rejects_a_schedule_step_in_the_past(tmp_path):
    model = ToyEncoder()
    first = trainer(tmp_path, [], max_steps=3)
    first.fit(model)
    ckpt = tmp_path / "at3.ckpt"
    first.save_checkpoint(ckpt)
    with pytest.raises(ValueError, match="a schedule step in the past"):
        late = ProbeCallback(["encoder.layers.0"], "count", steps=[2])
        trainer(tmp_path, [late], max_steps=5).fit(ToyEncoder(), ckpt_path=ckpt)



def test_bad_data_for_the_math_is_a_configuration_error_of_the_callback():
    """callbacks.functional raises ValueError (no Lightning there); a callback reports it as its ConfigurationError."""
    from callbacks import ConfigurationError
    from callbacks.utils.errors import bad_input_is_configuration

    with pytest.raises(ConfigurationError, match="ProbeCallback: a probe needs samples from at least 2 sequence groups"):
        with bad_input_is_configuration("ProbeCallback"):
            group_split(np.zeros(5), 0.3, seed=0)
    with pytest.raises(KeyError):  # anything else passes through unchanged
        with bad_input_is_configuration("ProbeCallback"):
            raise KeyError("internal")
