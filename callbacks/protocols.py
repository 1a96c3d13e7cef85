"""What the analysis callbacks ask of a LightningModule, and nothing more.

A module that implements ``labelled_logits`` can be evaluated (ablation, perturbation, curvature);
one that also implements ``probe_targets`` can be probed. Neither knows any task.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

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


@dataclass
class ProbeTarget:
    """A per-token probe target aligned with a hidden state [B, T, D] of some module."""

    values: Tensor  # [B, T] regression values or class ids
    mask: Tensor  # [B, T] bool, True where the token is a probe sample
    categorical: bool  # True: classification probes; False: regression probes
    groups: Tensor  # [B] int64: sequences with equal content share a group (split by group)


@runtime_checkable
class ProbeableModule(Protocol):
    def probe_targets(self, batch: Any) -> dict[str, ProbeTarget]:
        """Targets by name for ``batch``; the probe callback pairs module names with these names."""
        ...


def sequence_keys(tokens: Tensor) -> Tensor:
    """Deterministic content key per row of ``tokens`` [B, T] -> [B] int64 (CRC32 of the row bytes)."""
    rows = tokens.detach().to("cpu", torch.int64).contiguous().numpy()
    return torch.tensor([zlib.crc32(row.tobytes()) for row in rows], dtype=torch.int64)
