"""The two transformers: sizes, initialisation, masks, metrics and the reference training trajectory."""
import lightning.pytorch as pl
import pytest
import torch

from callbacks.grok_detector import GrokDetector
from lit_grok.data.dyck import DyckDataModule
from lit_grok.models.common import masked_cross_entropy
from lit_grok.models.dyck import DyckTransformer
from lit_grok.models.scan import EOS, ScanTransformer, greedy_exact_match


def attn_weight_count(model):
    return sum(p.numel() for n, p in model.named_parameters() if n.endswith(("in_proj_weight", "out_proj.weight")))


def test_parameter_counts():
    dyck, scan = DyckTransformer(), ScanTransformer()
    assert sum(p.numel() for p in dyck.parameters()) == 273_421
    assert attn_weight_count(dyck) == 131_072
    assert sum(p.numel() for p in scan.parameters()) == 3_979_529
    assert attn_weight_count(scan) == 2_359_296


def test_dyck_seed_42_initialisation_matches_the_reference():
    torch.manual_seed(42)
    model = DyckTransformer()
    w_q = model.encoder.layers[0].self_attn.in_proj_weight[:128]
    assert torch.allclose(torch.linalg.svdvals(w_q)[:3], torch.tensor([1.3892, 1.3627, 1.3369]), atol=1e-3)
    layers = model.encoder.layers
    assert all(torch.equal(a, b) for a, b in zip(layers[0].parameters(), layers[1].parameters()))


def test_dyck_is_causal():
    model = DyckTransformer()
    x = torch.randint(0, 2, (2, 24))
    y = x.clone()
    y[:, 10:] = 1 - y[:, 10:]
    assert torch.allclose(model(x)[:, :10], model(y)[:, :10], atol=1e-6)
    assert not torch.allclose(model(x)[:, 10:], model(y)[:, 10:])


def test_scan_decoder_is_causal_and_ignores_target_padding():
    model = ScanTransformer()
    src = torch.randint(3, 16, (2, 11))
    tgt = torch.randint(3, 9, (2, 50))
    changed = tgt.clone()
    changed[:, 20:] = 0  # later positions padded
    assert torch.allclose(model(src, tgt)[:, :20], model(src, changed)[:, :20], atol=1e-5)


def test_greedy_exact_match_requires_the_eos_at_the_right_place():
    gold = torch.tensor([[3, 4, EOS, -100], [5, EOS, -100, -100]])
    assert greedy_exact_match(torch.tensor([[3, 4, EOS, 7], [5, EOS, 3, 3]]), gold).tolist() == [True, True]
    assert greedy_exact_match(torch.tensor([[3, 4, 4, EOS], [5, 5, EOS, 3]]), gold).tolist() == [False, False]


def test_invalid_hyperparameters_fail_early():
    with pytest.raises(ValueError, match="model.lr must be > 0"):
        DyckTransformer(lr=-1e-3)
    with pytest.raises(ValueError, match="model.weight_decay must be >= 0"):
        ScanTransformer(weight_decay=-1)
    with pytest.raises(ValueError, match="divisible"):
        DyckTransformer(d_model=130)


@pytest.mark.parametrize("training", [True, False])
def test_dyck_autograd_forward_is_nn_transformer_encoder_bit_for_bit(training):
    torch.manual_seed(0)
    model, dm = DyckTransformer(), DyckDataModule()
    model.train(training)
    for x, y in ((dm.x_train, dm.y_train), (dm.x_test[:300, :17], dm.y_test[:300, :17])):
        grads = []
        for forward in (model, model.encoder_forward):
            logits = forward(x)
            masked_cross_entropy(logits, y).backward()
            grads.append([logits.detach(), *(p.grad for p in model.parameters())])
            model.zero_grad(set_to_none=True)
        assert all(torch.equal(a, b) for a, b in zip(*grads))
        assert len(grads[0]) == 1 + len(list(model.parameters()))


def test_dyck_training_steps_are_the_reference_loop_bit_for_bit():
    """The reference loop through lit-grok's forward against the same loop through nn.TransformerEncoder's."""
    (ours, our_losses), (theirs, their_losses) = reference_run(25, through_nn=False), reference_run(25)
    assert our_losses == their_losses
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters()))


def reference_run(steps, through_nn=True):
    """The reference loop of docs/methods.md §3.1, written plainly: (the trained model, its losses); ``through_nn``:
    the forward through nn.TransformerEncoder itself (the reference's), else ``DyckTransformer.forward``."""
    torch.manual_seed(42)
    model = DyckTransformer()
    dm = DyckDataModule()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-8, weight_decay=1.0)
    forward = model.encoder_forward if through_nn else model
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, 50, (50,))
        loss = masked_cross_entropy(forward(dm.x_train[idx]), dm.y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    return model, losses


class LossRecorder(pl.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())


def lightning_losses(steps):
    pl.seed_everything(42, verbose=False)
    rec = LossRecorder()
    trainer = pl.Trainer(max_steps=steps, gradient_clip_val=1.0, callbacks=[rec], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0)
    trainer.fit(DyckTransformer(), DyckDataModule())
    return rec.losses


def test_same_seed_gives_the_reference_trajectory_twice():
    first, second = lightning_losses(20), lightning_losses(20)
    assert first == second
    assert first == pytest.approx(reference_run(20)[1], rel=1e-6)


def test_grok_detector_logs_the_first_step_over_threshold():
    with pytest.raises(ValueError, match=r"threshold must lie in \(0, 1\]"):
        GrokDetector(threshold=1.5)
    with pytest.raises(ValueError, match=r"threshold must lie in \(0, 1\]"):
        GrokDetector(threshold=0.0)

    class FakeTrainer:
        sanity_checking, is_global_zero, loggers, global_step = False, True, [], 0
        callback_metrics = {}

    det, trainer = GrokDetector("val/acc", 0.9), FakeTrainer()
    for step, acc in [(100, 0.5), (200, 0.91), (300, 0.99)]:
        trainer.global_step, trainer.callback_metrics = step, {"val/acc": torch.tensor(acc)}
        det.on_validation_end(trainer, None)
    assert det.grok_step == 200
    restored = GrokDetector("val/acc", 0.9)
    restored.load_state_dict(det.state_dict())
    assert restored.grok_step == 200

    class Logger:
        def log_metrics(self, metrics, step):
            logged.append((metrics, step))

    logged, trainer.loggers = [], [Logger()]
    GrokDetector("val/acc", 0.9).on_train_start(trainer, None)  # a fresh run: nothing to say yet
    restored.on_train_start(trainer, None)  # a resumed run repeats the restored grok step in its own logs
    assert logged == [({"grok/step": 200.0}, 200)]
