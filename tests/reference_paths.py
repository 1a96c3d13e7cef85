"""The evaluation code the fast paths replaced, kept as the reference the tests and benchmarks/ compare against.

Each function is the package's code before issue #11, written plainly: padded batches, no cache.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

IGNORE = -100


@torch.no_grad()
def padded_token_metrics(model, batches, n_classes: int) -> dict[str, float]:
    """{"loss", "acc", "hits", "tokens"} of ``model(*inputs)`` on padded ``(inputs..., targets)`` batches,
    through the torchmetrics objects the module logged before: per-batch mean loss weighted by its tokens."""
    loss, acc = MeanMetric(), MulticlassAccuracy(n_classes, average="micro", ignore_index=IGNORE)
    hits = tokens = 0
    for *inputs, targets in batches:
        logits = model(*inputs).reshape(-1, n_classes)  # [B * T, C]
        flat = targets.reshape(-1)  # [B * T]
        labelled = flat != IGNORE
        loss.update(F.cross_entropy(logits.float(), flat, ignore_index=IGNORE), weight=labelled.sum())
        acc.update(logits, flat)
        hits += int((logits.argmax(-1) == flat)[labelled].sum())
        tokens += int(labelled.sum())
    return {"loss": float(loss.compute()), "acc": float(acc.compute()), "hits": hits, "tokens": tokens}


def dyck_eval_batches(dm, size: int | None = None) -> dict[str, list[tuple[Tensor, Tensor]]]:
    """{eval set: padded (x, y) batches in order}, as DyckDataModule's validation loaders held them."""
    size = size or dm.hparams.eval_batch_size
    sets = {"val": (dm.x_test, dm.y_test), "train_eval": (dm.x_train, dm.y_train)}
    return {name: list(zip(x.split(size), y.split(size))) for name, (x, y) in sets.items()}
