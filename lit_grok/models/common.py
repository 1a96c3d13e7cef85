"""What the Dyck and SCAN modules share: AdamW as the reference builds it, and token-level metrics."""
from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric

from callbacks import ConfigurationError, NonFiniteError
from lit_grok.data.common import IGNORE


class GrokModule(pl.LightningModule):
    """A LightningModule trained with one-group AdamW (betas 0.9/0.98), the reference optimizer.

    Subclasses define the layers, ``forward``, ``labelled_logits`` and ``task_metric``.
    """

    task_metric = "token_acc"

    def __init__(self, lr: float, weight_decay: float, betas: tuple[float, float], eps: float) -> None:
        super().__init__()
        if not lr > 0:
            raise ConfigurationError(f"model.lr must be > 0, got {lr}")
        if weight_decay < 0:
            raise ConfigurationError(f"model.weight_decay must be >= 0, got {weight_decay}")
        if not all(0 <= b < 1 for b in betas):
            raise ConfigurationError(f"model.betas must lie in [0, 1), got {betas}")
        if not eps > 0:
            raise ConfigurationError(f"model.eps must be > 0, got {eps}")

    def setup(self, stage: str) -> None:
        """Refuse, before any step, a precision whose matmuls this CPU only emulates (``cpu_emulates``)."""
        precision = str(self.trainer.precision)
        if self.trainer.strategy.root_device.type == "cpu" and cpu_emulates(precision):
            raise ConfigurationError(
                f"trainer.precision={precision!r} on this CPU ({torch.backends.cpu.get_cpu_capability()}, no AVX-512 "
                f"or AMX) emulates every low-precision matmul (a SCAN step 17× slower than in fp32 on an AVX2 EPYC); use trainer.precision=32-true "
                f"(for SCAN: leave out configs/scan_bf16.yaml)"
            )

    def on_before_backward(self, loss: Tensor) -> None:
        """Stop at the first non-finite training loss, before it reaches the weights (one host sync per step)."""
        if not torch.isfinite(loss):
            raise NonFiniteError(
                f"the training loss is {float(loss)} at optimizer step {self.global_step + 1}: lower model.lr "
                f"(now {self.hparams.lr}) or keep trainer.gradient_clip_val set"
            )

    def on_validation_epoch_end(self) -> None:
        # ||theta|| over all parameters, beside the metrics (the WD intervention compares it across decays)
        norm = torch.sqrt(sum(p.detach().float().pow(2).sum() for p in self.parameters()))
        self.log("weights/norm_all", norm)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        return torch.optim.AdamW(self.parameters(), lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps, weight_decay=hp.weight_decay)


class TokenMetrics(nn.Module):
    """Token-weighted mean cross-entropy and token accuracy over labelled positions of one eval set.

    A row of weight w counts as w copies of its sequence: the same sums as w separate rows.
    """

    def __init__(self) -> None:
        super().__init__()
        self.loss = MeanMetric()
        self.acc = MeanMetric()  # hits / tokens: integer sums, exact in float32 like MulticlassAccuracy's

    def update(self, logits: Tensor, targets: Tensor, weight: Tensor | None = None) -> None:
        # logits [B, T, C], targets [B, T] with IGNORE at unlabelled positions, weight [B] copies per row
        labelled = targets != IGNORE  # [B, T]
        copies = torch.ones_like(targets) if weight is None else weight[:, None].expand_as(targets)
        token_weight = copies[labelled].float()  # [N]
        flat_logits, flat_targets = logits[labelled], targets[labelled]  # [N, C], [N]
        self.loss.update(F.cross_entropy(flat_logits.float(), flat_targets, reduction="none"), weight=token_weight)
        self.acc.update((flat_logits.argmax(-1) == flat_targets).float(), weight=token_weight)


def cpu_emulates(precision: str) -> bool:
    """Whether this CPU lacks oneDNN kernels for ``precision``'s matmul dtype (bf16 needs AVX-512 or AMX, fp16
    AVX-512-FP16 or AMX-FP16): ATen then falls back to its own loops: on an AVX2 EPYC core a bf16 matmul ran at 1 GFLOP/s, fp32 at 66-70."""
    if precision.startswith("bf16"):
        return not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if precision.startswith("16"):
        return not torch.ops.mkldnn._is_mkldnn_fp16_supported()
    return False


def masked_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over labelled tokens (the reference's training loss)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE)


def length_sorted_chunks(targets: Tensor, size: int, rows: Tensor | None = None) -> list[tuple[Tensor, int]]:
    """(row indices [<= size], length) of ``rows`` (default: all) of ``targets`` [B, T], longest first; length is one
    past the chunk's last labelled position: a causal model's logits there equal the padded batch's."""
    positions = torch.arange(1, targets.shape[1] + 1, device=targets.device)  # [T]
    length = ((targets != IGNORE) * positions).amax(1)  # [B]
    rows = torch.arange(len(targets), device=targets.device) if rows is None else rows
    rows = rows[length[rows] > 0]  # rows without labels add nothing
    order = rows[length[rows].argsort(descending=True, stable=True)]  # [K] longest first
    return list(zip(order.split(size), length[order[::size]].tolist()))  # one host sync for all chunks


def labelled_positions(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(logits [N, C], targets [N], sequence index [N]) of the labelled tokens of a [B, T] batch."""
    labelled = targets != IGNORE  # [B, T]
    seq = torch.arange(targets.shape[0], device=targets.device)[:, None].expand_as(targets)
    return logits[labelled], targets[labelled], seq[labelled]
