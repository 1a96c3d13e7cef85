"""Dyck-1 depth prediction (docs/methods.md §1.1): balanced bracket strings labelled with the stack depth after each token.

The generator keeps the reference's exact RNG call pattern, so the 5050 sequences and the 50 / 5000
split are the published ones bit for bit; training batches continue the global torch RNG (lit_grok.data.sampling).
"""
from __future__ import annotations

import random

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from callbacks import ConfigurationError
from lit_grok.data.common import IGNORE
from lit_grok.data.sampling import RandomBatches, TrainBatchesDataModule, eval_loader, first_copy_counts

OPEN, CLOSE, PAD = 0, 1, 2
VOCAB_SIZE = 3


def generate_sequences(n: int, max_pairs: int, seed: int, p_open: float = 0.55) -> list[list[int]]:
    """n balanced sequences from one ``random.Random(seed)``; a draw only where both moves are legal."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        pairs = rng.randint(1, max_pairs)
        seq, opens, depth = [], 0, 0
        for _ in range(2 * pairs):
            can_open, can_close = opens < pairs, depth > 0
            if can_open and can_close:
                tok = OPEN if rng.random() < p_open else CLOSE
            else:
                tok = OPEN if can_open else CLOSE
            seq.append(tok)
            opens += tok == OPEN
            depth += 1 if tok == OPEN else -1
        out.append(seq)
    return out


def depths(seq: list[int]) -> list[int]:
    """Stack depth after each token."""
    d, out = 0, []
    for tok in seq:
        d += 1 if tok == OPEN else -1
        out.append(d)
    return out


def encode(seqs: list[list[int]], ctx_len: int) -> tuple[Tensor, Tensor]:
    """Inputs [N, ctx_len] padded with PAD, labels [N, ctx_len] padded with IGNORE."""
    x = torch.full((len(seqs), ctx_len), PAD, dtype=torch.long)
    y = torch.full((len(seqs), ctx_len), IGNORE, dtype=torch.long)
    for i, s in enumerate(seqs):
        s = s[:ctx_len]
        x[i, : len(s)] = torch.tensor(s)
        y[i, : len(s)] = torch.tensor(depths(s))
    return x, y


def make_dyck_split(
    n_total: int = 5050, n_train: int = 50, max_pairs: int = 12, ctx_len: int = 24, data_seed: int = 0
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """((x_train, y_train), (x_test, y_test)) after the reference permutation ``randperm(n_total, seed data_seed)``."""
    x, y = encode(generate_sequences(n_total, max_pairs, data_seed), ctx_len)
    perm = torch.randperm(n_total, generator=torch.Generator().manual_seed(data_seed))
    x, y = x[perm], y[perm]
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


class DyckDataModule(TrainBatchesDataModule):
    """Dyck-1 data: bootstrap training batches, validation on [full test set, full training set].

    Evaluation batches are ``(x [B, T], y [B, T], copies [B])``: the rows in order, padded, and each row's
    ``first_copy_counts`` in its set, so the model can evaluate distinct rows once and count every copy.

    Args:
        n_total: sequences generated (train + test).
        n_train: training sequences (the rest is the test set).
        max_pairs: maximum number of bracket pairs per sequence.
        ctx_len: sequence length after padding.
        batch_size: training batch, drawn with replacement each step.
        eval_batch_size: batch size of the validation passes.
        data_seed: seed of the generator and of the split (the data is the same for every run seed).
    """

    def __init__(
        self,
        n_total: int = 5050,
        n_train: int = 50,
        max_pairs: int = 12,
        ctx_len: int = 24,
        batch_size: int = 50,
        eval_batch_size: int = 512,
        data_seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0 < n_train < n_total:
            raise ConfigurationError(f"data.n_train must be in (0, n_total={n_total}), got {n_train}")
        if max_pairs < 1 or ctx_len < 2:
            raise ConfigurationError(f"data.max_pairs must be >= 1 and data.ctx_len >= 2, got {max_pairs}, {ctx_len}")
        if batch_size < 1 or eval_batch_size < 1:
            raise ConfigurationError(f"data.batch_size and data.eval_batch_size must be >= 1, got {batch_size}, {eval_batch_size}")
        self.save_hyperparameters()
        self.n_classes = max_pairs + 1
        (self.x_train, self.y_train), (self.x_test, self.y_test) = make_dyck_split(
            n_total, n_train, max_pairs, ctx_len, data_seed
        )
        self.train_batches = RandomBatches((self.x_train, self.y_train), batch_size)
        self.test_copies = first_copy_counts(self.x_test, self.y_test)  # [n_test]
        self.train_copies = first_copy_counts(self.x_train, self.y_train)  # [n_train]

    def val_dataloader(self) -> list[DataLoader]:
        size = self.hparams.eval_batch_size
        return [eval_loader((self.x_test, self.y_test, self.test_copies), size),
                eval_loader((self.x_train, self.y_train, self.train_copies), size)]

    def test_dataloader(self) -> DataLoader:
        return eval_loader((self.x_test, self.y_test, self.test_copies), self.hparams.eval_batch_size)
