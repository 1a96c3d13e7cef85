"""Captured attention equals a hand-computed softmax; summaries match numpy; FourierAttentionCallback end to end."""
import math

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from callbacks import ConfigurationError, FourierAttentionCallback, GramSpectrum, UpdateRecorder
from callbacks.functional.fourier_attention import (
    head_entropy, is_causal_pattern, kl_to_uniform, local_score, mean_pattern, pattern_power, recent_score,
    uniform_causal_entropy,
)
from callbacks.utils.hidden_states import attention_modules, captured_attention
from callbacks.utils.param_selection import split_like
from probe_toy_model import ToyEncoder, trainer
from test_fourier import numpy_power


def manual_probs(layer: nn.TransformerEncoderLayer, x: torch.Tensor, causal: bool = True) -> np.ndarray:
    """softmax(Q Kᵀ/√d_head + causal mask) from the layer's weights, on LN₁(x) (pre-LN) -> [B, H, T, T]."""
    attn = layer.self_attn
    H, D = attn.num_heads, attn.embed_dim
    a = layer.norm1(x).detach().double().numpy()
    W, b = attn.in_proj_weight.detach().double().numpy(), attn.in_proj_bias.detach().double().numpy()
    q, k = a @ W[:D].T + b[:D], a @ W[D:2 * D].T + b[D:2 * D]
    B, T, _ = a.shape
    q = q.reshape(B, T, H, D // H).transpose(0, 2, 1, 3)
    k = k.reshape(B, T, H, D // H).transpose(0, 2, 1, 3)
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(D // H)
    if causal:
        scores = scores + np.triu(np.full((T, T), -np.inf), 1)
    e = np.exp(scores - scores.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def hooks_of(model):
    return {name: (dict(m._forward_hooks), dict(m._forward_pre_hooks)) for name, m in model.named_modules()}


@pytest.mark.parametrize("train_mode", [True, False])  # eval + no_grad is where the fused fast path would run
def test_captured_attention_equals_manual_softmax_and_output_is_unchanged(train_mode):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True, norm_first=True).train(train_mode)
    x = torch.randn(3, 7, 16)
    mask = nn.Transformer.generate_square_subsequent_mask(7)
    before = hooks_of(layer)
    with torch.set_grad_enabled(train_mode):
        plain = layer(x, src_mask=mask, is_causal=True)
        with captured_attention(layer) as store:
            captured_out = layer(x, src_mask=mask, is_causal=True)
    assert list(store) == ["self_attn"] and len(store["self_attn"]) == 1
    probs = store["self_attn"][0]
    assert probs.shape == (3, 4, 7, 7)
    np.testing.assert_allclose(probs.double().numpy(), manual_probs(layer, x), atol=1e-6)
    torch.testing.assert_close(captured_out, plain, rtol=0, atol=1e-6)
    assert hooks_of(layer) == before


def test_positional_need_weights_is_overridden_and_hooks_go_even_on_error():
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    x = torch.randn(2, 5, 8)
    model = nn.ModuleDict({"a": mha})
    user = mha.register_forward_hook(lambda *args: None)
    before = hooks_of(model)
    with captured_attention(model) as store:
        out, weights = mha(x, x, x, None, False)  # need_weights=False passed positionally
    assert weights is not None and store["a"][0].shape == (2, 2, 5, 5)
    torch.testing.assert_close(store["a"][0].sum(-1), torch.ones(2, 2, 5))
    with pytest.raises(RuntimeError, match="boom"):
        with captured_attention(model, ["a"]):
            raise RuntimeError("boom")
    assert hooks_of(model) == before
    user.remove()


def test_attention_module_lookup_errors():
    with pytest.raises(ConfigurationError, match="module 'lin' is a Linear, not an nn.MultiheadAttention"):
        attention_modules(nn.ModuleDict({"lin": nn.Linear(2, 2)}), ["lin"], "test")
    with pytest.raises(ValueError, match="has no nn.MultiheadAttention"):
        attention_modules(nn.Linear(2, 2), None, "test")


def test_uniform_causal_attention_has_entropy_ln_24_factorial_over_24_and_zero_kl():
    assert uniform_causal_entropy(24) == pytest.approx(2.2827, abs=5e-5)
    assert uniform_causal_entropy(24) == pytest.approx(sum(math.log(t) for t in range(1, 25)) / 24, rel=1e-12)
    T = 24
    probs = torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1)[:, None]
    probs = probs.expand(3, 2, T, T)
    assert head_entropy(probs).tolist() == pytest.approx([2.2827] * 2, abs=5e-5)
    assert kl_to_uniform(mean_pattern(probs), causal=True).abs().max() < 1e-7
    # the same from a real forward: zero query/key weights make every score equal
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True, norm_first=True)
    with torch.no_grad():
        layer.self_attn.in_proj_weight[:16] = 0
        layer.self_attn.in_proj_bias[:16] = 0
    with torch.no_grad(), captured_attention(layer) as store:
        layer(torch.randn(4, T, 8), src_mask=nn.Transformer.generate_square_subsequent_mask(T), is_causal=True)
    p = store["self_attn"][0]
    assert is_causal_pattern(p)
    assert head_entropy(p).tolist() == pytest.approx([uniform_causal_entropy(T)] * 2, abs=1e-5)
    assert kl_to_uniform(mean_pattern(p), causal=True).abs().max() < 1e-6


def test_summaries_match_numpy_brute_force():
    rng = np.random.default_rng(3)
    B, H, T = 5, 3, 8
    scores = rng.standard_normal((B, H, T, T)) * 2 + np.triu(np.full((T, T), -np.inf), 1)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    lengths = rng.integers(2, T + 1, B)
    qmask = np.arange(T)[None, :] < lengths[:, None]
    P, M = torch.from_numpy(p), torch.from_numpy(qmask)
    ent, pat, kl, pw, loc, rec = (np.zeros(H) for _ in range(6))
    for h in range(H):
        rows = [-(p[b, h, t][p[b, h, t] > 0] * np.log(p[b, h, t][p[b, h, t] > 0])).sum()
                for b in range(B) for t in range(T) if qmask[b, t]]
        ent[h] = np.mean(rows)
    mean = np.stack([[p[qmask[:, t], h, t].mean(0) for t in range(T)] for h in range(H)])  # [H, T, T]
    for h in range(H):
        kl[h] = np.mean([np.sum(mean[h, t, : t + 1] * np.log(mean[h, t, : t + 1] * (t + 1))) for t in range(1, T)])
        loc[h] = np.mean([mean[h, t, t] for t in range(T)])
        rec[h] = np.mean([mean[h, t, max(0, t - 2): t + 1].sum() for t in range(T)])
    power = (np.abs(np.fft.rfft(mean, axis=-1)) ** 2).mean(1)
    np.testing.assert_allclose(head_entropy(P, M).numpy(), ent, rtol=1e-12)
    np.testing.assert_allclose(mean_pattern(P, M).numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(kl_to_uniform(mean_pattern(P, M), causal=True).numpy(), kl, rtol=1e-10)
    np.testing.assert_allclose(local_score(mean_pattern(P, M)).numpy(), loc, rtol=1e-12)
    np.testing.assert_allclose(recent_score(mean_pattern(P, M)).numpy(), rec, rtol=1e-12)
    np.testing.assert_allclose(pattern_power(mean_pattern(P, M)).numpy(), power, rtol=1e-10)
    all_queries = [np.mean([-(p[b, h, t] * np.log(p[b, h, t] + (p[b, h, t] == 0))).sum() for b in range(B) for t in range(T)])
                   for h in range(H)]
    np.testing.assert_allclose(head_entropy(P).numpy(), all_queries, rtol=1e-12)
    full = torch.softmax(torch.from_numpy(rng.standard_normal((2, H, 4, 6))), -1)  # e.g. cross-attention
    assert not is_causal_pattern(full) and not is_causal_pattern(full[..., :4])
    want = (full.mean(0) * torch.log(full.mean(0) * 6)).sum(-1).mean(-1)
    torch.testing.assert_close(kl_to_uniform(mean_pattern(full), causal=False), want.double())


# --- FourierAttentionCallback -------------------------------------------------------------------------


def manual_run(model, n_seq):
    """Layer inputs/outputs, attention probabilities and mask of the first n_seq validation sequences, without hooks."""
    x, y = (t[:n_seq] for t in model.val_data)
    causal = model.causal_mask(x.shape[1])
    with torch.no_grad():
        h_in = model.embed(x)
        h0 = model.encoder.layers[0](h_in, src_mask=causal, is_causal=True)
        h1 = model.encoder.layers[1](h0, src_mask=causal, is_causal=True)
    probs = [manual_probs(model.encoder.layers[0], h_in), manual_probs(model.encoder.layers[1], h0)]
    return [h0.double().numpy(), h1.double().numpy()], probs, (y != -100).numpy(), y.numpy()


def test_fourier_attention_callback_logs_match_a_manual_forward(tmp_path):
    torch.manual_seed(0)
    model = ToyEncoder(n_val=40, val_batch=16)
    cb = FourierAttentionCallback({"l0": "encoder.layers.0", "l1": "encoder.layers.1"}, mask_target="count",
                                  steps=[2], max_sequences=20)
    seen = {}

    class Reference(Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            if trainer.global_step == 2:
                seen["run"] = manual_run(model.eval(), 20)
                model.train()

    tr = trainer(tmp_path, [Reference(), cb], max_steps=3)
    tr.fit(model)
    (reps, probs, qmask, _), logged = seen["run"], tr.logger.merged("")[2]
    for alias, r in zip(("l0", "l1"), reps):
        power = numpy_power(r, qmask, centre=True)
        assert logged[f"fourier/{alias}/omega_star"] == 1 + int(np.argmax(power[1:]))
        assert logged[f"fourier/{alias}/top1"] == pytest.approx(power[1:].max() / power[1:].sum(), abs=1e-5)
        assert logged[f"fourier/{alias}/dc_share"] == pytest.approx(power[0] / power.sum(), abs=1e-5)
        raw = numpy_power(r, qmask, centre=False)
        assert logged[f"fourier/{alias}/ref_top1"] == pytest.approx(raw.max() / raw.sum(), abs=1e-5)
    for layer, p in enumerate(probs):
        alias = f"encoder.layers.{layer}.self_attn"
        for h in range(p.shape[1]):
            rows = [-(p[b, h, t, : t + 1] * np.log(p[b, h, t, : t + 1])).sum()
                    for b in range(p.shape[0]) for t in range(p.shape[2]) if qmask[b, t]]
            assert logged[f"attention/{alias}/head{h}/entropy"] == pytest.approx(np.mean(rows), abs=1e-5)
        assert logged[f"attention/{alias}/entropy_mean"] == pytest.approx(
            np.mean([logged[f"attention/{alias}/head{h}/entropy"] for h in range(p.shape[1])]))
    assert cb.results[0]["attention"]["encoder.layers.0.self_attn"]["causal"] is True
    assert len(cb.results[0]["fourier"]["l0"]["power"]) == 4  # T = 6 -> 4 bins


def test_edge_response_matches_a_manual_perturbation_and_restores_weights(tmp_path):
    torch.manual_seed(0)
    model = ToyEncoder(n_val=30)
    cb = FourierAttentionCallback(attention=[], steps=[5], response_module="ln_f", response_target="count",
                                  directions=[1, 9], max_sequences=None)
    recorder, spectrum, seen = UpdateRecorder(interval=1, window=3), GramSpectrum(top_k=3), {}

    class Reference(Callback):  # runs before cb at step 5, with the same weights and Gram window
        def on_train_batch_end(self, trainer, pl_module, *args):
            if trainer.global_step != 5:
                return
            params = recorder.selection.params
            theta = recorder.flat_params().double()
            v = spectrum.directions([1])[0].double()
            eps = 0.005 * theta.norm()
            _, y = model.val_data
            h, h2, saved = model.manual_response(params, split_like(theta + eps * v, params))
            keep = (y != -100).numpy()
            f = ((h2 - h).double().numpy() ** 2).sum(-1)[keep]
            depth = y.numpy()[keep]
            s = np.array([f[depth == d].mean() for d in np.unique(depth)])
            power = np.abs(np.fft.rfft(s - s.mean())) ** 2
            seen.update(F=power.max() / power.sum(), omega=int(np.argmax(power)), bins=len(power), eps=float(eps),
                        params=saved)

    tr = trainer(tmp_path, [recorder, spectrum, Reference(), cb], max_steps=5)
    tr.fit(model)
    edge = cb.results[0]["edge"]
    assert edge["eps"] == pytest.approx(seen["eps"], rel=1e-12)
    assert edge["v1"]["F"] == pytest.approx(seen["F"], rel=1e-3)
    assert edge["v1"]["omega_star"] == seen["omega"] and edge["v1"]["n_bins"] == seen["bins"]
    assert edge["v1"]["elevation"] == pytest.approx(edge["v1"]["F"] * seen["bins"])
    assert edge["v9"]["status"] == "unavailable" and "fourier_edge/v9/F" not in tr.logger.merged("")[5]
    assert "fourier_edge/v1/func_r2" in tr.logger.merged("")[5]
    for p, s in zip(recorder.selection.params, seen["params"]):  # the callback put the weights back bit-exactly
        assert torch.equal(p.detach(), s)


def test_fourier_attention_callback_bad_input(tmp_path):
    with pytest.raises(ValueError, match="give both response_module and response_target"):
        FourierAttentionCallback(["ln_f"], response_module="ln_f", steps=[1])
    with pytest.raises(ValueError, match="nothing to do"):
        FourierAttentionCallback([], attention=[], steps=[1])
    with pytest.raises(ValueError, match="FourierAttentionCallback: no module named 'encoder.layers.5'"):
        trainer(tmp_path, [FourierAttentionCallback(["encoder.layers.5"], steps=[1])]).fit(ToyEncoder())
    with pytest.raises(ValueError, match="provides no probe target 'depth'"):
        trainer(tmp_path, [FourierAttentionCallback(["ln_f"], mask_target="depth", steps=[1])]).fit(ToyEncoder())


def test_probe_and_fourier_attention_callbacks_plug_into_the_dyck_model(tmp_path):
    from callbacks import ProbeCallback
    from lit_grok.data.dyck import DyckDataModule
    from lit_grok.models.dyck import DyckTransformer

    torch.manual_seed(0)
    model = DyckTransformer(d_model=16, n_heads=2, d_ff=32)
    data = DyckDataModule(n_total=150, n_train=30, batch_size=10, eval_batch_size=64)
    probe = ProbeCallback({"layer_1": "encoder.layers.1"}, "depth", probes=["linear"], steps=[1], max_sequences=100)
    spectral = FourierAttentionCallback({"layer_1": "encoder.layers.1"}, mask_target="depth", steps=[1], max_sequences=100)
    second = FourierAttentionCallback(attention={"l0_all": "encoder.layers.0.self_attn"}, steps=[1], max_sequences=20)
    tr = trainer(tmp_path, [probe, spectral, second], max_steps=1)
    tr.fit(model, data)
    assert sorted(p.name for p in tmp_path.rglob("*.json")) == [
        "fourier_attention.json", "fourier_attention_1.json", "probes_depth.json"]  # one file per callback
    logged = tr.logger.merged("")[1]
    assert -1 < logged["probe/layer_1/linear_r2"] <= 1
    assert 1 <= logged["fourier/layer_1/omega_star"] <= 12
    valid = (data.y_test[:100] != -100).numpy()
    bound = np.log(np.arange(1, 25))[None, :].repeat(100, 0)[valid].mean()  # max entropy: uniform on keys 0..t
    for layer in (0, 1):
        for h in (0, 1):
            assert 0 < logged[f"attention/encoder.layers.{layer}.self_attn/head{h}/entropy"] <= bound + 1e-9
    assert spectral.results[0]["attention"]["encoder.layers.0.self_attn"]["causal"] is True


def test_fourier_attention_run_works_on_a_checkpointed_model_without_a_trainer():
    torch.manual_seed(3)
    model = ToyEncoder(n_val=24).eval()
    cb = FourierAttentionCallback({"l1": "encoder.layers.1"}, attention=["encoder.layers.1.self_attn"], mask_target="count",
                                  steps=[1], max_sequences=None)
    cb.prepare(model)
    with torch.no_grad():
        result = cb.run(model, list(model.val_dataloader()))
    reps, probs, qmask, _ = manual_run(model, 24)
    power = numpy_power(reps[1], qmask, centre=True)
    np.testing.assert_allclose(result["fourier"]["l1"]["power"], power, rtol=1e-4)
    want = [np.mean([-(p[:t + 1] * np.log(p[:t + 1])).sum() for p_b, m in zip(probs[1][:, h], qmask)
                     for t, p in enumerate(p_b) if m[t]]) for h in range(2)]
    np.testing.assert_allclose(result["attention"]["encoder.layers.1.self_attn"]["entropy"], want, rtol=1e-5)


def test_head_entropy_counts_a_row_as_its_copies():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(5, 2, 6, 6), -1)  # [B, H, T, S]
    counts = torch.tensor([3, 1, 0, 2, 1])
    copies = probs.repeat_interleave(counts, 0)  # every row written out as often as it counts
    mask = torch.rand(5, 6) > 0.3
    for query_mask, copied_mask in ((None, None), (mask, mask.repeat_interleave(counts, 0))):
        torch.testing.assert_close(head_entropy(probs, query_mask, counts), head_entropy(copies, copied_mask),
                                   rtol=1e-12, atol=0)
