"""Evaluate a module on fixed batches, and perturb its parameters with a bit-exact restore.

Shared by the analysis callbacks (ablation, perturbation, curvature, probes, Fourier/attention): they all evaluate
the model as it is at one step, change some parameters, evaluate again and put everything back.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterable, Iterator, Sequence

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils.errors import ConfigurationError
from ..utils.protocols import DistinctRowsModule, EvaluableModule

TASK_METRICS = ("token_acc", "seq_acc")


def require_evaluable(pl_module: pl.LightningModule, who: str) -> None:
    """Fail early, in one line, when the module lacks what the analysis callbacks need."""
    if not isinstance(pl_module, EvaluableModule):
        raise ConfigurationError(
            f"{who} needs the LightningModule to define `task_metric` and `labelled_logits(batch)` "
            "(see callbacks.EvaluableModule)"
        )
    if pl_module.task_metric not in TASK_METRICS:
        raise ConfigurationError(f"{who}: task_metric must be one of {TASK_METRICS}, got {pl_module.task_metric!r}")


def evaluation_batches(
    trainer: pl.Trainer, pl_module: pl.LightningModule, dataloader_idx: int = 0, max_batches: int | None = None
) -> list[Any]:
    """Materialise the validation batches (index ``dataloader_idx`` when there are several) on the module's device."""
    source = trainer.datamodule if trainer.datamodule is not None else pl_module
    loaders = source.val_dataloader()
    if isinstance(loaders, (list, tuple)):
        if not 0 <= dataloader_idx < len(loaders):
            raise ConfigurationError(f"dataloader_idx={dataloader_idx} but there are {len(loaders)} validation dataloaders")
        loaders = loaders[dataloader_idx]
    batches = []
    for i, batch in enumerate(loaders):
        if max_batches is not None and i >= max_batches:
            break
        batches.append(pl_module.transfer_batch_to_device(batch, pl_module.device, 0))
    if not batches:
        raise ConfigurationError("the validation dataloader yielded no batch to evaluate on")
    return batches


@contextmanager
def eval_mode(pl_module: pl.LightningModule) -> Iterator[None]:
    """Evaluate with dropout off; restore the module's training flag afterwards, even on error."""
    was_training = pl_module.training
    pl_module.eval()
    try:
        yield
    finally:
        pl_module.train(was_training)


@dataclass
class Evaluation:
    """Token- and sequence-level results of one evaluation pass."""

    loss: float  # token-weighted mean cross-entropy
    token_correct: int
    token_total: int
    seq_correct: int
    seq_total: int
    task_metric: str
    outcomes: Tensor | None = None  # [K] bool, hit of the task metric per kept trial (only with keep_outputs)
    logits: Tensor | None = None  # [N, C] of every kept labelled token (only with keep_outputs)
    outcome_counts: Tensor | None = None  # [K] int64: trials each kept outcome stands for (distinct rows); None: 1 each
    token_counts: Tensor | None = None  # [N] int64: the same for the rows of log_probs; None: 1 each
    outcome_rows: Tensor | None = None  # [K] int64: the evaluated row (sequence) of each kept outcome
    row_copies: Tensor | None = None  # [R] int64: how many sequences each evaluated row stands for

    @cached_property
    def log_probs(self) -> Tensor | None:
        """[N, C] float64 log-softmax of ``logits`` (KL), computed on first use."""
        return None if self.logits is None else F.log_softmax(self.logits.double(), dim=-1)

    @property
    def token_acc(self) -> float:
        return self.token_correct / self.token_total

    @property
    def seq_acc(self) -> float:
        return self.seq_correct / self.seq_total

    @property
    def accuracy(self) -> float:
        """The task metric's accuracy."""
        return self.token_acc if self.task_metric == "token_acc" else self.seq_acc

    @property
    def trials(self) -> int:
        """How many Bernoulli outcomes ``accuracy`` averages (for binomial intervals)."""
        return self.token_total if self.task_metric == "token_acc" else self.seq_total


@dataclass
class EvaluationSet:
    """Batches to evaluate and, when the module folds duplicate rows, each row's count (None: one each)."""

    batches: list[Any]
    row_counts: list[Tensor] | None = None  # per batch [B] int64


def evaluation_set(pl_module: pl.LightningModule, batches: list[Any]) -> EvaluationSet:
    """Each distinct row once, counted as often as it occurs, when the module can say which rows repeat
    (``DistinctRowsModule``); else the batches as they are. Both give the same counts and losses."""
    if not isinstance(pl_module, DistinctRowsModule):
        return EvaluationSet(list(batches))
    pairs = pl_module.distinct_batches(batches)
    return EvaluationSet([batch for batch, _ in pairs], [counts for _, counts in pairs])


@torch.no_grad()
def evaluate(pl_module: EvaluableModule, data: EvaluationSet | Sequence[Any], keep_outputs: bool = False) -> Evaluation:
    """Token and sequence counts and the token-mean loss, every row weighted by its count; ``keep_outputs`` also
    keeps per-trial outcomes (paired intervals) and logits (log-probabilities for KL) with their counts."""
    data = data if isinstance(data, EvaluationSet) else EvaluationSet(list(data))
    outputs = (pl_module.labelled_logits(batch) for batch in data.batches)  # one batch's forward at a time
    return evaluation_of(outputs, data.row_counts, pl_module.task_metric, keep_outputs)


def evaluation_of(outputs: Iterable[tuple[Tensor, Tensor, Tensor]], row_counts: Sequence[Tensor] | None,
                  task_metric: str, keep_outputs: bool = False) -> Evaluation:
    """``evaluate``'s counts and loss from each batch's labelled outputs (logits [N, C], targets [N], row [N]) and,
    when rows were folded, its row counts [B] (None: one each)."""
    loss_sum, tok_ok, tok_n, seq_ok, seq_n = 0.0, 0, 0, 0, 0
    outcomes, kept_logits, outcome_counts, token_counts, outcome_rows, row_copies = [], [], [], [], [], []
    seq_n_kept = 0  # evaluated rows so far: the offset of this batch's row indices
    for i, (logits, targets, seq) in enumerate(outputs):
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # half -> float32; float64 stays
        n_seq = int(seq.max()) + 1 if seq.numel() else 0
        rows = (torch.ones(n_seq, dtype=torch.long, device=seq.device) if row_counts is None
                else row_counts[i].to(seq.device)[:n_seq])  # [n_seq] copies of each row
        counts = rows[seq]  # [N] copies of each token
        if row_counts is None:
            loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        else:
            loss_sum += (F.cross_entropy(logits, targets, reduction="none").double() * counts).sum().item()
        hit = logits.argmax(-1) == targets
        tok_ok += int((hit * counts).sum())
        tok_n += int(counts.sum())
        misses = torch.zeros(n_seq, dtype=torch.long, device=hit.device).index_add_(0, seq, (~hit).long())
        labelled = torch.zeros(n_seq, dtype=torch.bool, device=seq.device).index_fill_(0, seq, True)  # a row without
        seq_ok += int(((misses == 0) * rows)[labelled].sum())  # a label is no sequence (nothing was predicted)
        seq_n += int(rows[labelled].sum())
        if keep_outputs:
            token_metric = task_metric == "token_acc"
            outcomes.append(hit if token_metric else (misses == 0)[labelled])
            outcome_counts.append(counts if token_metric else rows[labelled])
            kept_logits.append(logits)
            token_counts.append(counts)
            outcome_rows.append(seq_n_kept + (seq if token_metric else torch.arange(n_seq, device=seq.device)[labelled]))
            row_copies.append(rows)
            seq_n_kept += n_seq
    evaluation = Evaluation(loss_sum / tok_n, tok_ok, tok_n, seq_ok, seq_n, task_metric)
    if keep_outputs:
        evaluation.outcomes, evaluation.logits = torch.cat(outcomes), torch.cat(kept_logits)
        evaluation.outcome_rows, evaluation.row_copies = torch.cat(outcome_rows), torch.cat(row_copies)
        if row_counts is not None:
            evaluation.outcome_counts, evaluation.token_counts = torch.cat(outcome_counts), torch.cat(token_counts)
    return evaluation


@contextmanager
def perturbed(params: Sequence[Tensor], new_values: Sequence[Tensor]) -> Iterator[None]:
    """Temporarily set ``params`` to ``new_values``; restore the saved originals bit-exactly, even on error."""
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for p, v in zip(params, new_values):
                p.copy_(v)
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


def loss_gradient(pl_module: EvaluableModule, data: EvaluationSet | Sequence[Any], params: Sequence[Tensor]) -> Tensor:
    """∇ of the token-weighted mean cross-entropy over all batches (one full batch) w.r.t. ``params``, flat [P]
    float64 in their order, every row weighted by its count; raw (no clipping), through ``torch.autograd.grad`` so
    no ``.grad`` is touched."""
    data = data if isinstance(data, EvaluationSet) else EvaluationSet(list(data))
    total, count = None, 0
    with torch.enable_grad():
        for i, batch in enumerate(data.batches):
            logits, targets, seq = pl_module.labelled_logits(batch)  # [N, C], [N], [N]
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
            if data.row_counts is None:
                loss = F.cross_entropy(logits, targets, reduction="sum")
                count += targets.numel()
            else:
                copies = data.row_counts[i].to(seq.device)[seq]  # [N] copies of each token
                loss = (F.cross_entropy(logits, targets, reduction="none") * copies).sum()
                count += int(copies.sum())
            grads = torch.autograd.grad(loss, list(params), allow_unused=True)
            flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).double()
                              for g, p in zip(grads, params)])
            total = flat if total is None else total + flat
    if total is None or count == 0:
        raise ConfigurationError("loss_gradient got no labelled token to differentiate")
    return total / count
