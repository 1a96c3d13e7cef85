"""SCAN's fast paths against the padded code they replaced: incremental greedy decoding, length-sorted loss."""
import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from reference_paths import padded_token_metrics, prefix_greedy_decode

from lit_grok.data.scan import ScanDataModule
from lit_grok.data.common import IGNORE
from lit_grok.models import common
from lit_grok.models.common import masked_cross_entropy
from lit_grok.models.scan import EOS, EVAL_SETS, PAD, TRAIN_CHUNK, ScanTransformer, attention, greedy_exact_match


SMALL = dict(d_model=64, n_heads=4, d_ff=128)  # the real layout, narrower: quick to train in a test


@pytest.fixture(scope="module")
def data():
    return ScanDataModule()


@pytest.fixture(scope="module")
def trained_small(data):
    """A narrow seed-2024 model after 60 quick AdamW steps: it emits EOS at many different positions."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the per-test single_thread fixture
    pl.seed_everything(2024, verbose=False)
    model = ScanTransformer(lr=3e-3, **SMALL)
    opt = model.configure_optimizers()
    for _ in range(60):
        idx = torch.randint(0, len(data.train_data[0]), (32,))
        loss = model.length_sorted_loss(*(t[idx] for t in data.train_data))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    return model.eval()


def up_to_first_eos(ids):
    """[B, L] bool: the positions up to and including each row's first EOS (all of a row without one)."""
    eos = (ids == EOS).int()
    return eos.cumsum(1) - eos == 0


def assert_same_decoding(model, src, max_len):
    """The prefix decoder's tokens and logits up to each row's first EOS; PAD ids and NaN logits after it."""
    ids, logits = model.greedy_steps(src, max_len)
    ref_ids, ref_logits = prefix_greedy_decode(model, src, max_len)  # every row decoded to the last step
    assert ids.shape == ref_ids.shape
    kept = up_to_first_eos(ref_ids)
    assert torch.equal(torch.where(kept, ref_ids, PAD), ids)
    torch.testing.assert_close(logits[kept], ref_logits[kept], rtol=1e-5, atol=1e-5)
    assert logits[~kept].isnan().all() and (~kept).any()
    assert torch.equal(model.greedy_decode(src, max_len), ids)
    return ids


def test_incremental_greedy_decoding_of_the_initial_model_gives_the_prefix_decoders_tokens(data):
    torch.manual_seed(2024)
    src, _, tgt_out = (t[:64] for t in data.test_eval_data)
    ids = assert_same_decoding(ScanTransformer().eval(), src, tgt_out.shape[1])
    assert (ids == EOS).any(1).all() and ids.shape[1] < tgt_out.shape[1]  # stopped once every row had its EOS


@pytest.mark.parametrize("memory_padding_mask", [False, True])
def test_incremental_greedy_decoding_of_a_trained_model_gives_the_prefix_decoders_tokens(data, trained_small, memory_padding_mask):
    model = ScanTransformer(**SMALL, memory_padding_mask=memory_padding_mask).eval()
    model.load_state_dict(trained_small.state_dict())
    src, _, tgt_out = (t[:48] for t in data.test_eval_data)
    ids = assert_same_decoding(model, src, tgt_out.shape[1])
    first_eos = (ids == EOS).float().argmax(1)[(ids == EOS).any(1)]
    assert len(first_eos.unique()) > 5  # rows finish at many different steps


def test_incremental_decoding_masks_generated_pad_tokens_as_the_prefix_decoder_does(data):
    torch.manual_seed(2024)
    model = ScanTransformer(**SMALL).eval()
    with torch.no_grad():
        model.head.bias[PAD] += 1.0  # some rows now emit PAD, a masked key for every later position
    ids = assert_same_decoding(model, data.test_eval_data[0][:64], 12)
    assert 0 < int((ids == PAD).sum()) < ids.numel() // 2


@pytest.mark.parametrize("memory_padding_mask", [False, True])
def test_length_sorted_loss_gives_the_padded_batchs_loss_and_gradient(data, memory_padding_mask):
    torch.manual_seed(2024)
    model = ScanTransformer(memory_padding_mask=memory_padding_mask)
    idx = torch.randint(0, len(data.train_data[0]), (3 * TRAIN_CHUNK,))
    batch = tuple(t[idx] for t in data.train_data)
    lengths = (batch[2] != -100).sum(1)
    assert int(lengths.max()) < batch[2].shape[1] and len(lengths.unique()) > 10  # chunks of different lengths

    def loss_and_grads(loss_fn):
        model.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    padded, padded_grads = loss_and_grads(lambda: masked_cross_entropy(model(batch[0], batch[1]), batch[2]))
    chunked, chunked_grads = loss_and_grads(lambda: model.length_sorted_loss(*batch))
    torch.testing.assert_close(chunked, padded, rtol=1e-6, atol=0)
    worst = max(float((g - r).abs().max() / r.abs().max()) for g, r in zip(chunked_grads, padded_grads))
    assert worst < 1e-5  # relative to each parameter's largest gradient entry
    for g, r in zip(chunked_grads, padded_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6 * float(r.abs().max()))


def test_teacher_forced_validation_logs_the_padded_metrics(trained_small):
    model, small = trained_small, ScanDataModule(n_train=256, n_test_eval=128, eval_batch_size=96)
    with torch.no_grad():  # every other row's labels become the model's predictions: sequences it gets right
        for src, tgt_in, tgt_out in (small.test_eval_data, small.train_data):
            predicted = torch.where(tgt_out != IGNORE, model(src, tgt_in).argmax(-1), tgt_out)
            tgt_out[::2] = predicted[::2]
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    logged = {k: v for per_loader in trainer.validate(model, small, verbose=False) for k, v in per_loader.items()}
    with torch.no_grad():
        for name, loader in zip(EVAL_SETS, small.val_dataloader()):
            ref = padded_token_metrics(model, loader, small.tgt_vocab_size)
            assert 0.5 <= ref["seq_acc"] < 1
            assert logged[f"{name}/acc"] == ref["acc"] and logged[f"{name}/seq_acc"] == ref["seq_acc"]
            assert logged[f"{name}/loss"] == pytest.approx(ref["loss"], rel=1e-6)
        src, _, tgt_out = small.test_eval_data
        ref_ids = prefix_greedy_decode(model, src, tgt_out.shape[1])[0]  # a generated sequence ends at its first EOS
        greedy = greedy_exact_match(torch.where(up_to_first_eos(ref_ids), ref_ids, PAD), tgt_out).float().mean()
    assert logged["val/greedy_acc"] == float(greedy)


def test_greedy_matches_read_off_where_the_teacher_forced_logits_lead_and_decode_the_rest(data, trained_small):
    import copy
    from lit_grok.models.scan import EVAL_CHUNK, GREEDY_MARGIN, SOS

    model = copy.deepcopy(trained_small)
    with torch.no_grad():  # logits 5x: many positions lead by the margin, some do not (argmax unchanged)
        model.head.weight.mul_(5), model.head.bias.mul_(5)
    src, tgt_in, tgt_out = (t[:128].clone() for t in data.test_eval_data)
    with torch.no_grad():
        ids, forced = model.greedy_decode(src, tgt_out.shape[1]), model(src, tgt_in).argmax(-1)
    ends = up_to_first_eos(ids) & (ids == EOS).any(1, keepdim=True)
    for r in range(0, 128, 2):  # every other row: the model's own decoding (when it ends) becomes the gold
        if ends[r].any():
            n = int(ends[r].sum())
            tgt_out[r], tgt_in[r] = IGNORE, PAD
            tgt_out[r, :n], tgt_in[r, 0], tgt_in[r, 1:n] = ids[r, :n], SOS, ids[r, : n - 1]
    for r in range(1, 32, 2):  # rows the teacher-forced pass gets right by construction, fed another prefix
        tgt_out[r] = torch.where(tgt_out[r] != IGNORE, forced[r], IGNORE)

    with torch.no_grad():  # the rule, brute force on the padded forward: which rows need decoding
        logits = model(src, tgt_in)  # [B, T, V]
        need = []
        for r in range(128):
            gold = [SOS] + [int(a) for a in tgt_out[r] if a != IGNORE][:-1]
            if tgt_in[r, : len(gold)].tolist() != gold:
                need.append(True)
                continue
            for t in range(len(gold)):
                top = logits[r, t].topk(2).values
                if top[0] - top[1] < GREEDY_MARGIN:
                    need.append(True)
                    break
                if logits[r, t].argmax() != tgt_out[r, t]:
                    need.append(False)
                    break
            else:
                need.append(False)
    decoded = []
    decode = model.greedy_decode
    model.greedy_decode = lambda rows_src, max_len: decoded.append(len(rows_src)) or decode(rows_src, max_len)
    with torch.no_grad():
        got = model.greedy_matches(src, tgt_in, tgt_out, *model.packed_logits(src, tgt_in, tgt_out, EVAL_CHUNK))
        ref = prefix_greedy_decode(model, src, tgt_out.shape[1])[0]
    assert torch.equal(got, greedy_exact_match(torch.where(up_to_first_eos(ref), ref, PAD), tgt_out))
    assert sum(decoded) == sum(need) and 0 < sum(need) < 96  # rows read off and rows decoded
    assert 0 < int(got.sum()) < 128  # right rows and wrong rows


def test_packed_encoder_gives_the_encoder_modules_memory(data):
    torch.manual_seed(2024)
    model = ScanTransformer()
    src = data.train_data[0][:64]
    assert torch.equal(model.packed_encode(src), model.encode(src))  # training mode: the modules' own kernels


@pytest.mark.parametrize("causal", [False, True])
def test_attention_under_cpu_autocast_is_bf16_products_around_an_fp32_softmax(causal):
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 7, 16).unbind(0)  # [B, H, L, dh] each
    keep = torch.rand(2, 1, 1, 7) > 0.3
    keep[..., 0] = True  # every query keeps a key
    mask = None if causal else keep
    assert torch.equal(attention(q, k, v, mask, causal), F.scaled_dot_product_attention(q, k, v, mask, is_causal=causal))
    bf = [x.bfloat16() for x in (q, k, v)]
    scores = ((bf[0] * 0.25) @ bf[1].transpose(-2, -1)).float()  # 0.25 = 1 / sqrt(dh)
    hidden = torch.ones(7, 7, dtype=torch.bool).triu(1) if causal else ~keep
    want = (scores.masked_fill(hidden, float("-inf")).softmax(-1).bfloat16() @ bf[2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = attention(*bf, mask, causal)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)
    torch.testing.assert_close(got.float(), F.scaled_dot_product_attention(q, k, v, mask, is_causal=causal), rtol=0, atol=0.05)


def test_bf16_mixed_training_on_cpu_trains(monkeypatch):
    monkeypatch.setattr(common, "cpu_emulates", lambda precision: False)  # trains even where bf16 is emulated
    model = ScanTransformer(**SMALL)
    small = ScanDataModule(n_train=64, n_test_eval=32, batch_size=16, eval_batch_size=32)
    trainer = pl.Trainer(max_steps=2, precision="bf16-mixed", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, small)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
