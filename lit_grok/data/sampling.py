"""Reference-compatible training batches: B indices drawn with replacement from the global torch RNG.

The reference loop draws ``torch.randint(0, N, (B,))`` once per optimizer step and nothing else from
the global generator, so a seeded run follows the published trajectory step for step.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset


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
    # A private generator: the DataLoader iterator draws its base seed from it, not from the
    # global RNG, which would shift the reference trajectory by one draw per epoch.
    return DataLoader(RandomBatches(tensors, batch_size), batch_size=None, generator=torch.Generator())
