"""Modular addition (docs/methods.md §1.3): every pair (a, b) of residues mod p as the tokens [a, b, =], labelled a + b mod p.

All p² pairs exist; a seeded permutation puts a fraction of them in training and the rest is held out. Training
batches continue the global torch RNG (lit_grok.data.sampling), so a checkpoint resumes them exactly.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from callbacks import ConfigurationError
from lit_grok.data.sampling import RandomBatches, TrainBatchesDataModule, eval_loader


def all_pairs(p: int) -> tuple[Tensor, Tensor]:
    """Inputs [p², 3] = (a, b, p) with p the ``=`` token, row a·p + b; labels [p²] = (a + b) mod p."""
    a, b = torch.arange(p).repeat_interleave(p), torch.arange(p).repeat(p)  # [p²], [p²]
    x = torch.stack([a, b, torch.full_like(a, p)], dim=1)
    return x, (a + b) % p


def make_modular_split(
    p: int = 97, train_fraction: float = 0.4, data_seed: int = 0
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """((x_train, y_train), (x_test, y_test)): the first round(train_fraction · p²) pairs of ``randperm(p², seed data_seed)``
    train, the rest is held out."""
    x, y = all_pairs(p)
    n_train = round(train_fraction * p * p)
    perm = torch.randperm(p * p, generator=torch.Generator().manual_seed(data_seed))
    train, test = perm[:n_train], perm[n_train:]
    return (x[train], y[train]), (x[test], y[test])


class ModularAdditionDataModule(TrainBatchesDataModule):
    """a + b mod p: bootstrap training batches, validation on [held-out pairs, training pairs].

    Every batch is ``(x [B, 3], y [B])``: the tokens a, b, ``=`` (id p) and the answer; each pair occurs once,
    so the evaluation sets need no copy counts.

    Args:
        p: the modulus (a prime for the canonical task); the vocabulary is p residues and ``=``.
        train_fraction: share of the p² pairs used for training, in (0, 1).
        batch_size: training batch, drawn with replacement each step.
        eval_batch_size: batch size of the validation passes.
        data_seed: seed of the split (the data is the same for every run seed).
    """

    def __init__(
        self,
        p: int = 97,
        train_fraction: float = 0.4,
        batch_size: int = 512,
        eval_batch_size: int = 2048,
        data_seed: int = 0,
    ) -> None:
        super().__init__()
        if p < 2:
            raise ConfigurationError(f"data.p must be >= 2, got {p}")
        if not 0 < round(train_fraction * p * p) < p * p:
            raise ConfigurationError(f"data.train_fraction must leave pairs on both sides of the split of {p * p}, got {train_fraction}")
        if batch_size < 1 or eval_batch_size < 1:
            raise ConfigurationError(f"data.batch_size and data.eval_batch_size must be >= 1, got {batch_size}, {eval_batch_size}")
        self.save_hyperparameters()
        (self.x_train, self.y_train), (self.x_test, self.y_test) = make_modular_split(p, train_fraction, data_seed)
        self.train_batches = RandomBatches((self.x_train, self.y_train), batch_size)

    def val_dataloader(self) -> list[DataLoader]:
        size = self.hparams.eval_batch_size
        return [eval_loader((self.x_test, self.y_test), size), eval_loader((self.x_train, self.y_train), size)]

    def test_dataloader(self) -> DataLoader:
        return eval_loader((self.x_test, self.y_test), self.hparams.eval_batch_size)
