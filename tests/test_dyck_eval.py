"""Dyck evaluation of distinct sequences, each counted once per copy, against the padded evaluation of every row."""
import lightning.pytorch as pl
import pytest
import torch
from reference_paths import dyck_eval_batches, padded_token_metrics

from lit_grok.data.dyck import DyckDataModule
from lit_grok.data.sampling import first_copy_counts
from lit_grok.models.common import TokenMetrics
from lit_grok.models.dyck import EVAL_SETS, DyckTransformer


def quiet_trainer(**kwargs) -> pl.Trainer:
    return pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      accelerator="cpu", devices=1, **kwargs)


def test_first_copy_counts_put_each_rows_copies_on_its_first_occurrence():
    x = torch.tensor([[1, 2], [3, 4], [1, 2], [1, 2], [3, 4], [5, 6]])
    y = torch.tensor([[0], [0], [0], [1], [0], [0]])  # row 3 differs from rows 0 and 2 by its label
    assert first_copy_counts(x).tolist() == [3, 2, 0, 0, 0, 1]
    assert first_copy_counts(x, y).tolist() == [2, 2, 0, 1, 0, 1]


def test_reference_data_copies_add_up_to_every_row():
    dm = DyckDataModule()
    assert int(dm.test_copies.sum()) == 5000 and int((dm.test_copies > 0).sum()) == 2234
    assert int(dm.train_copies.sum()) == 50 and int((dm.train_copies > 0).sum()) == 36


def test_distinct_rows_give_the_padded_counts_and_loss_on_the_real_data():
    torch.manual_seed(42)
    model, dm = DyckTransformer().eval(), DyckDataModule()
    reference = {name: padded_token_metrics(model, batches, dm.n_classes) for name, batches in dyck_eval_batches(dm).items()}
    for name, loader in zip(EVAL_SETS, dm.val_dataloader()):
        metrics = TokenMetrics()
        with torch.no_grad():
            for x, y, copies in loader:
                model.update_distinct(metrics, x, y, copies)
        assert int(metrics.acc.mean_value) == reference[name]["hits"]
        assert int(metrics.acc.weight) == reference[name]["tokens"]
        assert float(metrics.acc.compute()) == reference[name]["acc"]
        assert float(metrics.loss.compute()) == pytest.approx(reference[name]["loss"], rel=1e-6)

    logged = {k: v for per_loader in quiet_trainer().validate(model, dm, verbose=False) for k, v in per_loader.items()}
    for name in EVAL_SETS:
        assert logged[f"{name}/acc"] == reference[name]["acc"]
        assert logged[f"{name}/loss"] == pytest.approx(reference[name]["loss"], rel=1e-6)
    tested = quiet_trainer().test(model, dm, verbose=False)[0]
    assert tested["val/acc"] == reference["val"]["acc"]


def test_a_partial_pass_counts_every_row_it_sees_once():
    # first-copy counts need the whole loader; two batches of 512 must give the padded metrics of those two
    torch.manual_seed(0)
    model, dm = DyckTransformer(), DyckDataModule()
    logged = quiet_trainer(limit_val_batches=2).validate(model, dm, verbose=False)[0]
    reference = padded_token_metrics(model.eval(), dyck_eval_batches(dm)["val"][:2], dm.n_classes)
    assert logged["val/acc"] == reference["acc"]
    assert logged["val/loss"] == pytest.approx(reference["loss"], rel=1e-6)


def test_loaders_without_copies_count_every_row_once():
    torch.manual_seed(0)
    model, dm = DyckTransformer(), DyckDataModule()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(dm.x_test[:700], dm.y_test[:700]), batch_size=256)
    logged = quiet_trainer().validate(model, dataloaders=loader, verbose=False)[0]
    reference = padded_token_metrics(model.eval(), list(loader), dm.n_classes)
    assert logged["val/acc"] == reference["acc"]
    assert logged["val/loss"] == pytest.approx(reference["loss"], rel=1e-6)


class PaddedReference(pl.Callback):
    """After each validation: the padded metrics of the model as it is, beside what the module logged."""

    def __init__(self):
        self.pairs = []

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:  # its two batches are not logged
            return
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            for name, batches in dyck_eval_batches(trainer.datamodule).items():
                ref = padded_token_metrics(pl_module, batches, trainer.datamodule.n_classes)
                logged = trainer.callback_metrics
                self.pairs.append((trainer.global_step, name, float(logged[f"{name}/acc"]), ref["acc"],
                                   float(logged[f"{name}/loss"]), ref["loss"]))
        pl_module.train(was_training)


class TrainLosses(pl.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())


def test_a_run_with_fast_evaluation_trains_as_without_it_and_logs_the_padded_metrics():
    def fit(**validation):
        pl.seed_everything(42, verbose=False)
        losses, reference = TrainLosses(), PaddedReference()
        trainer = quiet_trainer(max_steps=100, gradient_clip_val=1.0, callbacks=[losses, reference], **validation)
        trainer.fit(DyckTransformer(), DyckDataModule())
        return losses.losses, reference.pairs

    evaluated, pairs = fit(val_check_interval=50, check_val_every_n_epoch=None)
    plain, _ = fit(limit_val_batches=0)
    assert evaluated == plain  # evaluation leaves the training trajectory bit for bit as it was
    assert [(step, name) for step, name, *_ in pairs] == [(s, n) for s in (50, 100) for n in EVAL_SETS]
    for step, name, acc, ref_acc, loss, ref_loss in pairs:
        assert acc == ref_acc, (step, name)
        assert loss == pytest.approx(ref_loss, rel=1e-6), (step, name)
    assert max(acc for _, name, acc, *_ in pairs if name == "val") > 0.5  # the model trained: a real comparison
