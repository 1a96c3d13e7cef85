"""Reference-compatible training batches: B indices drawn with replacement from the global torch RNG.

The reference loop draws ``torch.randint(0, N, (B,))`` once per optimizer step and nothing else from
the global generator, so a seeded run follows the published trajectory step for step. Every loader
here owns a private generator: a DataLoader iterator otherwise draws its base seed from the global
RNG each time it starts (each validation run), which would shift the trajectory.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, TensorDataset


class RandomBatches(IterableDataset):
    """An endless stream of batches: each one is ``tensors[i][idx]`` for one draw of ``idx``."""

    def __init__(self, tensors: Sequence[Tensor], batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.tensors = tuple(tensors)
        self.n = len(self.tensors[0])
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        while True:
            idx = torch.randint(0, self.n, (self.batch_size,))  # global RNG, one draw per step
            yield tuple(t[idx] for t in self.tensors)


def random_batch_loader(tensors: Sequence[Tensor], batch_size: int) -> DataLoader:
    return DataLoader(RandomBatches(tensors, batch_size), batch_size=None, generator=torch.Generator())


def eval_loader(tensors: Sequence[Tensor], batch_size: int) -> DataLoader:
    """Fixed-order batches of ``tensors`` (as a tuple per batch) that leave the global RNG untouched."""
    return DataLoader(TensorDataset(*tensors), batch_size=batch_size, shuffle=False, collate_fn=stack_batch,
                      generator=torch.Generator())


def stack_batch(items: list[tuple[Tensor, ...]]) -> tuple[Tensor, ...]:
    return tuple(torch.stack(column) for column in zip(*items))
