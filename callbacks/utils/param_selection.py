"""Choose which parameters form the flat vector θ whose updates the spectral-edge callbacks watch.

A selection is a preset or a list of glob patterns over parameter names; it keeps the block layout
(name, offset, numel, shape) so that per-block results can be cut out of any flat [P] vector.
"""
from __future__ import annotations

import fnmatch
import functools
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

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


@functools.lru_cache(maxsize=None)
def _wrapper_edges() -> tuple[tuple[type, str], ...]:
    """(wrapper class, attribute holding the wrapped module) of the wrappers torch and Lightning put around a module."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    edges: list[tuple[type, str]] = [
        (DistributedDataParallel, "module"), (DataParallel, "module"), (CheckpointWrapper, "_checkpoint_wrapped_module"),
    ]
    try:
        from torch._dynamo.eval_frame import OptimizedModule

        edges.append((OptimizedModule, "_orig_mod"))
    except ImportError:  # a torch without dynamo has no compiled modules
        pass
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel

        edges.append((FullyShardedDataParallel, "_fsdp_wrapped_module"))
    except ImportError:
        pass
    try:
        from lightning.fabric.wrappers import _FabricModule

        edges += [(_FabricModule, "_forward_module"), (_FabricModule, "_original_module")]
    except ImportError:
        pass
    return tuple(edges)


def is_wrapper_edge(parent: nn.Module, child_name: str) -> bool:
    """``parent.<child_name>`` is the module a wrapper (DDP, DataParallel, torch.compile's OptimizedModule, FSDP1,
    activation checkpointing, Lightning Fabric's module, DeepSpeed's engine) wraps: decided by the parent's type,
    never by the name alone (a user's submodule called ``module`` keeps its name)."""
    cls = type(parent)
    if cls.__name__ == "DeepSpeedEngine" and cls.__module__.startswith("deepspeed"):  # deepspeed is optional
        return child_name == "module"
    return any(isinstance(parent, wrapper) and child_name == attr for wrapper, attr in _wrapper_edges())


@dataclass(frozen=True)
class NamedParam:
    """A parameter under one of its names, with the modules that name passes through."""

    name: str  # wrapper components removed
    param: Tensor
    path: tuple[tuple[str, nn.Module], ...]  # (component, module) from the root's child down to the owning module


def named_parameters(module: nn.Module) -> list[NamedParam]:
    """Every (name, parameter) of ``module``, a tied parameter under each of its names, without the wrapper
    components (``is_wrapper_edge``)."""
    out = []
    for raw, param in module.named_parameters(remove_duplicate=False):
        *parts, leaf = raw.split(".")
        path, here = [], module
        for part in parts:
            child = here._modules[part]
            if not is_wrapper_edge(here, part):
                path.append((part, child))
            here = child
        out.append(NamedParam(".".join([c for c, _ in path] + [leaf]), param, tuple(path)))
    return out


MHA_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
PROJECTIONS = ("c_attn", "c_proj", "q_proj", "k_proj", "v_proj", "o_proj", "out_proj", "qkv", "proj", "query", "key", "value")
ATTENTION_WORDS = ("attn", "attention")  # also matches self_attn, CausalSelfAttention, BertSelfAttention...


def _is_attention(component: str, module: nn.Module) -> bool:
    """An attention module, by its name in its parent or its class name (case-insensitive)."""
    return any(w in component.lower() or w in type(module).__name__.lower() for w in ATTENTION_WORDS)


def is_attention_weight(named: NamedParam) -> bool:
    """The ``attn_weights`` rule (docs/methods.md §4.1): a projection matrix of an attention module, no bias.

    torch ``nn.MultiheadAttention``: ``in_proj_weight`` (``q/k/v_proj_weight`` when kdim != embed_dim) and
    ``out_proj.weight``; other layouts: the ``weight`` of a child named one of ``PROJECTIONS`` (nanoGPT
    ``c_attn``/``c_proj``, Hugging Face ``q/k/v/o_proj``, ``out_proj``, ``query/key/value``, timm ``qkv``/``proj``)
    whose parent is an attention module (its class or its name contains "attn"/"attention": ``attn``,
    ``self_attn``, ``attention``, ``CausalSelfAttention``, ``BertSelfAttention``), so nanoGPT's ``mlp.c_proj``
    is not one.
    """
    if not named.path:
        return False
    leaf = named.name.rsplit(".", 1)[-1]
    owner_name, owner = named.path[-1]
    if leaf in MHA_WEIGHTS:
        return isinstance(owner, nn.MultiheadAttention)
    if leaf != "weight" or owner_name not in PROJECTIONS or len(named.path) < 2:
        return False
    return _is_attention(*named.path[-2])  # the projection's own parent


def _wanted(named: NamedParam, spec: ParamSpec) -> bool:
    if spec == "attn_weights":
        return is_attention_weight(named)
    if spec == "all_matrices":
        return named.param.ndim >= 2
    if spec == "all":
        return True
    return any(fnmatch.fnmatchcase(named.name, pattern) for pattern in spec)


def matching_parameters(module: nn.Module, spec: ParamSpec) -> dict[str, Tensor]:
    """``{name: parameter}`` of ``module`` matching ``spec`` by any of its names, trainable or frozen; a tied
    parameter once, under its first name (the one ``module.named_parameters()`` gives)."""
    check_spec(spec)
    first: dict[int, tuple[str, Tensor]] = {}
    hit: set[int] = set()
    for named in named_parameters(module):
        first.setdefault(id(named.param), (named.name, named.param))
        if _wanted(named, spec):
            hit.add(id(named.param))
    return {name: p for key, (name, p) in first.items() if key in hit}


def select_parameters(
    module: nn.Module, spec: ParamSpec, include_frozen: bool = False, keep: Optional[Callable[[Tensor], bool]] = None
) -> Selection:
    """Parameters of ``module`` matching ``spec`` in sorted name order: trainable ones only unless
    ``include_frozen``, and only those ``keep`` accepts (e.g. the parameters of one optimizer)."""
    chosen = {
        name: p for name, p in matching_parameters(module, spec).items()
        if (include_frozen or p.requires_grad) and (keep is None or keep(p))
    }
    if not chosen:
        which = "parameter" if include_frozen else "trainable parameter"
        raise ConfigurationError(f"params={spec!r} matches no {which} of {type(module).__name__}")
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
