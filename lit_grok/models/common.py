"""What the Dyck and SCAN modules share: AdamW as the reference builds it, and token-level metrics."""
from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from callbacks import ConfigurationError, NonFiniteError

IGNORE = -100


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
    """Token-weighted mean cross-entropy and token accuracy over labelled positions of one eval set."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.loss = MeanMetric()
        self.acc = MulticlassAccuracy(n_classes, average="micro", ignore_index=IGNORE)

    def update(self, logits: Tensor, targets: Tensor) -> None:
        # logits [..., C], targets [...] with IGNORE at unlabelled positions
        flat_logits, flat_targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
        labelled = flat_targets != IGNORE
        n = labelled.sum()
        loss = F.cross_entropy(flat_logits.float(), flat_targets, ignore_index=IGNORE)
        self.loss.update(loss, weight=n)
        self.acc.update(flat_logits, flat_targets)


def masked_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over labelled tokens (the reference's training loss)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE)


def labelled_positions(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(logits [N, C], targets [N], sequence index [N]) of the labelled tokens of a [B, T] batch."""
    labelled = targets != IGNORE  # [B, T]
    seq = torch.arange(targets.shape[0], device=targets.device)[:, None].expand_as(targets)
    return logits[labelled], targets[labelled], seq[labelled]
