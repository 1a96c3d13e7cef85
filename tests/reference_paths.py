"""The evaluation code the fast paths replaced, kept as the reference the tests and benchmarks/ compare against.

Each function is the package's code before issue #11, written plainly: padded batches, no cache.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from lit_grok.data.sampling import first_copy_counts
from lit_grok.models.common import length_sorted_chunks

IGNORE = -100


@torch.no_grad()
def padded_token_metrics(model, batches, n_classes: int) -> dict[str, float]:
    """{"loss", "acc", "hits", "tokens", "seq_acc"} of ``model(*inputs)`` on padded ``(inputs..., targets)``
    batches, through the torchmetrics objects the modules logged before: per-batch mean loss weighted by
    its tokens; seq_acc: rows whose labelled tokens are all right."""
    loss, acc, seq = MeanMetric(), MulticlassAccuracy(n_classes, average="micro", ignore_index=IGNORE), MeanMetric()
    hits = tokens = 0
    for *inputs, targets in batches:
        logits = model(*inputs)  # [B, T, C]
        seq.update(((logits.argmax(-1) == targets) | (targets == IGNORE)).all(1).float())
        logits, flat = logits.reshape(-1, n_classes), targets.reshape(-1)  # [B * T, C], [B * T]
        labelled = flat != IGNORE
        loss.update(F.cross_entropy(logits.float(), flat, ignore_index=IGNORE), weight=labelled.sum())
        acc.update(logits, flat)
        hits += int((logits.argmax(-1) == flat)[labelled].sum())
        tokens += int(labelled.sum())
    return {"loss": float(loss.compute()), "acc": float(acc.compute()), "hits": hits, "tokens": tokens,
            "seq_acc": float(seq.compute())}


def dyck_eval_batches(dm, size: int | None = None) -> dict[str, list[tuple[Tensor, Tensor]]]:
    """{eval set: padded (x, y) batches in order}, as DyckDataModule's validation loaders held them."""
    size = size or dm.hparams.eval_batch_size
    sets = {"val": (dm.x_test, dm.y_test), "train_eval": (dm.x_train, dm.y_train)}
    return {name: list(zip(x.split(size), y.split(size))) for name, (x, y) in sets.items()}


@torch.no_grad()
def prefix_greedy_decode(model, src: Tensor, max_len: int | None = None) -> tuple[Tensor, Tensor]:
    """(ids [B, L], logits [B, L, V]): ScanTransformer's greedy decoding before #11, the whole prefix
    re-run through ``model.decode`` at every step."""
    from lit_grok.models.scan import EOS, SOS

    max_len = max_len or model.hparams.max_tgt_len - 1
    memory = model.encode(src)
    ys = torch.full((src.shape[0], 1), SOS, dtype=torch.long, device=src.device)
    logits = []
    for _ in range(max_len):
        step = model.decode(ys, memory, src)[:, -1]  # [B, V]
        logits.append(step)
        ys = torch.cat([ys, step.argmax(-1, keepdim=True)], dim=1)
        if bool((ys == EOS).any(1).all()):
            break
    return ys[:, 1:], torch.stack(logits, 1)


def distinct_row_chunks(x: Tensor, y: Tensor, chunk: int = 128) -> list[tuple[tuple[Tensor, Tensor], Tensor]]:
    """(padded (x, y) chunk, copies [b]) of each distinct row of ``x`` / ``y`` [N, T], longest first, every chunk
    cut after its last label: how ``DyckTransformer.distinct_batches`` laid rows out before the prefix tree."""
    copies = first_copy_counts(x, y)  # [N]
    return [((x[rows, :T], y[rows, :T]), copies[rows])
            for rows, T in length_sorted_chunks(y, chunk, (copies > 0).nonzero().squeeze(1))]
