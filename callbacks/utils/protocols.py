"""The extension points: what the analysis callbacks ask of a LightningModule, and of each other.

A module that implements ``labelled_logits`` can be evaluated (ablation, perturbation, curvature);
one that also implements ``probe_targets`` can be probed. Neither knows any task. Between callbacks, a
scheduled analysis finds the grok step through ``GrokStepSource`` (``GrokDetector``) and the causal tests
find the Gram directions through ``DirectionSource`` (``GramSpectrum``): bases in this module, so no callback
imports another.
"""
from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Optional, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class EvaluableModule(Protocol):
    """``task_metric`` is "token_acc" or "seq_acc": the accuracy that defines grokking for the task."""

    task_metric: str

    def labelled_logits(self, batch: Any) -> tuple[Tensor, Tensor, Tensor]:
        """Forward ``batch``; return logits [N, C], targets [N] and sequence index in the batch [N]
        for every labelled token (padding and ignored positions removed)."""
        ...


@runtime_checkable
class DistinctRowsModule(Protocol):
    """Optional, for speed: the analyses evaluate each distinct row once, counted as often as it occurs."""

    def distinct_batches(self, batches: Sequence[Any]) -> list[tuple[Any, Tensor]]:
        """(batch, row counts [B] int64) pairs whose ``labelled_logits`` give the labelled tokens of ``batches``,
        each distinct row once with its number of copies (rows may be reordered or trimmed after their last label
        where that leaves their logits unchanged)."""
        ...


@dataclass
class QueryAttention:
    """One forward over every distinct query of some batches: each attention module's probabilities, how many of the
    batches' queries each stands for, and the labelled logits of that same forward (``labelled_logits``' outputs)."""

    probs: dict[str, Tensor]  # {name of every nn.MultiheadAttention: [Q, H, K]}, 0 where a query does not attend
    counts: Tensor  # [Q] int64: the batches' queries each query stands for
    labelled: tuple[Tensor, Tensor, Tensor]  # logits [L, C], targets [L], row [L] of every labelled token
    row_copies: Tensor | None  # [R] int64: the batches' rows each row of ``labelled`` stands for (None: one each)


@runtime_checkable
class QueryAttentionModule(Protocol):
    """Optional, for speed where every query counts (the perturbation's attention curves average over every padded
    query): each distinct query's attention once, counted as often as it occurs, and the evaluation of the same pass."""

    def query_batch(self, batches: Sequence[Any]) -> Any:
        """``batches`` laid out for ``query_attention``: built once, then evaluated at many weights."""
        ...

    def query_attention(self, batch: Any) -> QueryAttention:
        """The attention of Q queries over K keys that stand for every query of the forward of the batches
        ``query_batch`` laid out, as the counts say (each distinct query once, or any grouping with the same
        attention), with their labelled tokens (each distinct row once, counted by ``row_copies``, or every row once)."""
        ...


@dataclass
class ProbeTarget:
    """A per-token probe target aligned with a hidden state [B, T, D] of some module."""

    values: Tensor  # [B, T] regression values or class ids
    mask: Tensor  # [B, T] bool, True where the token is a probe sample
    categorical: bool  # True: classification probes; False: regression probes
    groups: Tensor  # [B] int64: sequences with equal content share a group (split by group)

    def first(self, n: int) -> "ProbeTarget":
        """The target of the first ``n`` sequences, on the CPU."""
        return ProbeTarget(self.values[:n].cpu(), self.mask[:n].cpu(), self.categorical, self.groups[:n].cpu())


@runtime_checkable
class ProbeableModule(Protocol):
    def probe_targets(self, batch: Any) -> dict[str, ProbeTarget]:
        """Targets by name for ``batch``; the probe callback pairs module names with these names."""
        ...


class GrokStepSource(ABC):
    """Base of a callback that knows the grok step (``GrokDetector``); ``grok_step`` is None until grokking is seen.
    Scheduled analyses with grok offsets find it with ``find(trainer, GrokStepSource, ...)``."""

    grok_step: Optional[int] = None


class DirectionSource(ABC):
    """Base of a callback that hands out the Gram directions of the latest window (``GramSpectrum``); the causal
    tests find it with ``find(trainer, DirectionSource, ...)``, the one whose ``bound_recorder`` is their recorder."""

    bound_recorder: Any = None  # the UpdateRecorder whose window it reads

    @property
    @abstractmethod
    def window_size(self) -> int:
        """Rows w in the latest window (0 before the first spectrum)."""

    @property
    @abstractmethod
    def sigma(self) -> Tensor:
        """σ [w] float64 of the latest window, descending."""

    @abstractmethod
    def directions(self, ks: Sequence[int]) -> Tensor:
        """v_k [len(ks), P] (1-indexed k); raises ``DirectionUnavailable`` for a k the window lacks."""


def sequence_keys(tokens: Tensor) -> Tensor:
    """Deterministic content key per row of ``tokens`` [B, T] -> [B] int64 (CRC32 of the row bytes)."""
    rows = tokens.detach().to("cpu", torch.int64).contiguous().numpy()
    return torch.tensor([zlib.crc32(row.tobytes()) for row in rows], dtype=torch.int64)
