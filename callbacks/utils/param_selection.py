"""Choose which parameters form the flat vector θ whose updates the spectral-edge callbacks watch.

A selection is a preset or a list of glob patterns over parameter names; it keeps the block layout
(name, offset, numel, shape) so that per-block results can be cut out of any flat [P] vector.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Sequence, Union

import torch
from torch import Tensor, nn

from ..utils.errors import ConfigurationError

PRESETS = ("attn_weights", "all_matrices", "all")
ParamSpec = Union[str, Sequence[str]]


@dataclass(frozen=True)
class Block:
    """Where one parameter sits in the flat vector."""

    name: str
    offset: int
    numel: int
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Selection:
    """Selected parameters in order; the flat vector is their row-major flattenings concatenated."""

    names: tuple[str, ...]
    params: tuple[Tensor, ...]
    blocks: tuple[Block, ...]
    numel: int  # P

    @property
    def offsets(self) -> tuple[int, ...]:
        return tuple(b.offset for b in self.blocks)

    @property
    def dtype(self) -> torch.dtype:
        return self.params[0].dtype


def check_spec(spec: ParamSpec) -> None:
    """Validate a selection spec without a model (fails in ``__init__`` rather than at fit time)."""
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise ConfigurationError(f"unknown parameter preset {spec!r}: use one of {PRESETS} or a list of glob patterns")
        return
    if not isinstance(spec, Sequence) or not spec or not all(isinstance(p, str) for p in spec):
        raise ConfigurationError(f"params must be a preset name {PRESETS} or a non-empty list of glob patterns, got {spec!r}")


def normalize_name(name: str) -> str:
    """Drop the wrapper prefixes of torch.compile (``_orig_mod.``) and DDP (a leading ``module.``)."""
    parts = [p for p in name.split(".") if p != "_orig_mod"]
    while len(parts) > 1 and parts[0] == "module":
        parts = parts[1:]
    return ".".join(parts)


def _wanted(name: str, param: Tensor, spec: ParamSpec) -> bool:
    if spec == "attn_weights":
        return name.endswith("in_proj_weight") or name.endswith("out_proj.weight")
    if spec == "all_matrices":
        return param.ndim >= 2
    if spec == "all":
        return True
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in spec)


def select_parameters(module: nn.Module, spec: ParamSpec) -> Selection:
    """Trainable parameters of ``module`` matching ``spec``, in sorted (normalized) name order."""
    check_spec(spec)
    chosen = {}
    for raw_name, param in module.named_parameters():
        name = normalize_name(raw_name)
        if param.requires_grad and _wanted(name, param, spec):
            chosen[name] = param
    if not chosen:
        raise ConfigurationError(f"params={spec!r} matches no trainable parameter of {type(module).__name__}")
    names = tuple(sorted(chosen))
    blocks, offset = [], 0
    for name in names:
        local = local_tensor(chosen[name])
        blocks.append(Block(name, offset, local.numel(), tuple(local.shape)))
        offset += local.numel()
    return Selection(names, tuple(chosen[n] for n in names), tuple(blocks), offset)


def local_tensor(t: Tensor) -> Tensor:
    """The part of ``t`` this process holds: the local shard of a DTensor, else ``t`` itself (detached)."""
    t = t.detach()
    return t.to_local() if hasattr(t, "to_local") else t


def split_like(vector: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    """Cut a flat [P] vector into pieces shaped like ``params`` (row-major, in order), in their dtype."""
    sizes = [p.numel() for p in params]
    if vector.numel() != sum(sizes):
        raise ValueError(f"vector has {vector.numel()} entries but the parameters hold {sum(sizes)}")
    return [piece.view_as(p).to(p.dtype) for piece, p in zip(vector.split(sizes), params)]
