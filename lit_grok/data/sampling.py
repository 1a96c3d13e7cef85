"""Reference-compatible training batches that a checkpoint can resume exactly.

The reference loop draws ``torch.randint(0, N, (B,))`` from the global torch RNG once per optimizer step
and nothing else during training. Here the draws come from a private generator that starts as a copy of
the global one at the first draw: the same batches, bit for bit, and a position a checkpoint can hold
(``TrainBatchesDataModule``). Every evaluation loader owns a generator too: a DataLoader iterator
otherwise draws its base seed from the global RNG each time it starts (each validation run).
"""
from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from callbacks import ConfigurationError

KEPT_STATES = 4  # generator states kept for the latest draws: the training loop fetches a batch ahead


class RandomBatches(IterableDataset):
    """An endless stream of batches ``tensors[i][idx]``, one ``idx`` of B indices drawn with replacement per batch.

    ``state_before(d)`` is the stream's position just before draw ``d`` (0-based); ``restore`` resumes there.
    """

    def __init__(self, tensors: Sequence[Tensor], batch_size: int) -> None:
        if batch_size < 1:
            raise ConfigurationError(f"batch_size must be >= 1, got {batch_size}")
        self.tensors = tuple(tensors)
        self.n = len(self.tensors[0])
        self.batch_size = batch_size
        self.generator: Optional[torch.Generator] = None  # made at the first draw, or by restore()
        self.draws = 0  # batches drawn so far
        self._states: dict[int, Tensor] = {}  # draw index -> generator state just before it

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        if self.generator is None:  # continue the global RNG where the reference's first draw would
            self.generator = torch.Generator()
            self.generator.set_state(torch.get_rng_state())
        while True:
            self._states[self.draws] = self.generator.get_state()
            self._states.pop(self.draws - KEPT_STATES, None)
            idx = torch.randint(0, self.n, (self.batch_size,), generator=self.generator)
            self.draws += 1
            yield tuple(t[idx] for t in self.tensors)

    def state_before(self, draw: int) -> dict[str, Any]:
        """{"draw", "generator"}: the position at which draw ``draw`` (already made, or the next one) happens."""
        if self.generator is None:
            return {}
        if draw == self.draws:
            return {"draw": draw, "generator": self.generator.get_state()}
        if draw not in self._states:
            raise RuntimeError(f"the training stream is at draw {self.draws} and no longer knows draw {draw}")
        return {"draw": draw, "generator": self._states[draw].clone()}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue at ``state`` (from ``state_before``); an empty state leaves the stream as it is."""
        if not state:
            return
        self.generator = torch.Generator()
        self.generator.set_state(state["generator"])
        self.draws, self._states = state["draw"], {}


class TrainBatchesDataModule(pl.LightningDataModule):
    """A DataModule whose training stream (``self.train_batches``) is saved in every checkpoint.

    A checkpoint written once b batches went through training holds the stream's position before draw b,
    so a resumed run gets exactly the batches the uninterrupted run got, whatever the loop fetched ahead.
    """

    train_batches: RandomBatches

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_batches, batch_size=None, generator=torch.Generator())

    def state_dict(self) -> dict[str, Any]:
        consumed = self.train_batches.draws
        if self.trainer is not None and self.trainer.state.fn == "fit":  # batches handed to training so far
            consumed = self.trainer.fit_loop.epoch_loop.batch_progress.total.processed
        return {"train_batches": self.train_batches.state_before(consumed)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train_batches.restore(state_dict.get("train_batches", {}))


class RowsDataset(TensorDataset):
    """A TensorDataset fetched a batch at a time: one indexing per tensor, not a row each and a stack."""

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, ...]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return tuple(t[index] for t in self.tensors)


def eval_loader(tensors: Sequence[Tensor], batch_size: int) -> DataLoader:
    """Fixed-order batches of ``tensors`` (as a tuple per batch) that leave the global RNG untouched."""
    return DataLoader(RowsDataset(*tensors), batch_size=batch_size, shuffle=False, collate_fn=fetched_batch,
                      generator=torch.Generator())


def first_copy_counts(*tensors: Tensor) -> Tensor:
    """[N] int64: how many rows of ``tensors`` (compared across all of them) equal row i if it is the first
    such row, else 0. Weighting row i by it evaluates each distinct row once and counts every copy."""
    rows = torch.cat([t.reshape(len(t), -1) for t in tensors], dim=1)  # [N, sum of row sizes]
    _, group, counts = torch.unique(rows, dim=0, return_inverse=True, return_counts=True)  # [N], [G]
    first = torch.full_like(counts, len(rows)).scatter_reduce_(0, group, torch.arange(len(rows)), "amin")  # [G]
    weights = torch.zeros(len(rows), dtype=torch.long)
    weights[first] = counts
    return weights


def fetched_batch(batch: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """The batch ``RowsDataset.__getitems__`` made (DataLoader's collate step, nothing left to do)."""
    return batch
