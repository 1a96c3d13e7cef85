"""Capture hidden states during the model's own forward pass: outputs of named submodules and the per-head
attention probabilities of ``nn.MultiheadAttention`` modules, with forward hooks.

The hooks live only inside the ``captured_outputs`` / ``captured_attention`` contexts: exactly the handles they
added are removed on exit, also when the forward raises.
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

from torch import Tensor, nn

from ..utils.errors import ConfigurationError
from ..utils.protocols import ProbeTarget


def module_aliases(modules: list[str] | dict[str, str], who: str, allow_empty: bool = False) -> dict[str, str]:
    """{alias: module name}; a list uses the module names as aliases."""
    aliases = dict(modules) if isinstance(modules, dict) else {name: name for name in modules}
    if not aliases and not allow_empty:
        raise ConfigurationError(f"{who}: give at least one module name in `modules`")
    return aliases


def run_once(states: dict[str, list[Tensor]], who: str) -> dict[str, Tensor]:
    """The single output of each captured module; a module called several times per forward is ambiguous."""
    for name, outs in states.items():
        if len(outs) != 1:
            raise ConfigurationError(
                f"{who}: module {name!r} ran {len(outs)} times in one forward; name a module that runs once"
            )
    return {name: outs[0] for name, outs in states.items()}


def require_target(targets: dict[str, ProbeTarget], name: str, who: str) -> ProbeTarget:
    """``targets[name]``, or a ConfigurationError listing the targets the module provides."""
    if name not in targets:
        raise ConfigurationError(
            f"{who}: the module provides no probe target {name!r}; its probe_targets(batch) has {sorted(targets)}"
        )
    return targets[name]


def resolve_modules(model: nn.Module, names: Sequence[str], who: str) -> dict[str, nn.Module]:
    """Map each dotted name (as in ``model.named_modules()``) to its module; one-line error if one is missing."""
    available = dict(model.named_modules())
    missing = [name for name in names if name not in available]
    if missing:
        sample = [name for name in available if name][:8]
        raise ConfigurationError(f"{who}: no module named {missing[0]!r} in {type(model).__name__}; valid names include {sample}")
    return {name: available[name] for name in names}


@contextmanager
def captured_outputs(model: nn.Module, names: Sequence[str], who: str = "captured_outputs") -> Iterator[dict[str, list[Tensor]]]:
    """Yield {name: [output of each call]}; a tuple output contributes its first element, detached."""
    modules = resolve_modules(model, names, who)
    store: dict[str, list[Tensor]] = {name: [] for name in names}

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple, output) -> None:
            out = output[0] if isinstance(output, (tuple, list)) else output
            if out.is_nested:
                raise ConfigurationError(f"{who}: {name!r} returned a nested tensor; build the encoder with enable_nested_tensor=False")
            store[name].append(out.detach())

        return hook

    handles = [module.register_forward_hook(hook_for(name)) for name, module in modules.items()]
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


def attention_modules(model: nn.Module, names: Sequence[str] | None, who: str) -> dict[str, nn.MultiheadAttention]:
    """The named attention modules, or every ``nn.MultiheadAttention`` in ``model`` when ``names`` is None."""
    if names is None:
        found = {name: m for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)}
        if not found:
            raise ConfigurationError(f"{who}: {type(model).__name__} has no nn.MultiheadAttention; name the attention modules")
        return found
    modules = resolve_modules(model, names, who)
    for name, m in modules.items():
        if not isinstance(m, nn.MultiheadAttention):
            raise ConfigurationError(f"{who}: module {name!r} is a {type(m).__name__}, not an nn.MultiheadAttention")
    return modules


@contextmanager
def captured_attention(
    model: nn.Module, names: Sequence[str] | None = None, who: str = "captured_attention"
) -> Iterator[dict[str, list[Tensor]]]:
    """Yield {name: [probabilities [B, H, T, S] of each call]}; removes exactly its own hooks on exit.

    The forced ``need_weights=True`` takes the explicit softmax path instead of fused attention, so outputs
    may differ from an uncaptured forward by float round-off (~1e-7).
    """
    modules = attention_modules(model, names, who)
    store: dict[str, list[Tensor]] = {name: [] for name in modules}

    def want_weights(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        bound = inspect.signature(module.forward).bind(*args, **kwargs)
        bound.arguments["need_weights"] = True
        bound.arguments["average_attn_weights"] = False
        return bound.args, bound.kwargs

    def keeper(name: str):
        def hook(module: nn.Module, args: tuple, output: tuple[Tensor, Tensor]) -> None:
            store[name].append(output[1].detach())

        return hook

    handles = []
    try:
        for name, m in modules.items():
            handles.append(m.register_forward_pre_hook(want_weights, with_kwargs=True))
            handles.append(m.register_forward_hook(keeper(name)))
        yield store
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class Capture:
    """What one batch's forward showed, cut to the sequences that count (the first ``keep`` of the batch)."""

    batch: Any
    keep: int
    outputs: dict[str, Tensor]  # module name -> output [keep, ...]
    attention: dict[str, Tensor] = field(default_factory=dict)  # module name -> probabilities [keep, H, T, S]
    targets: dict[str, ProbeTarget] = field(default_factory=dict)  # target name -> its first ``keep`` rows (CPU)


def captured_sequences(
    model: nn.Module, batches: Iterable[Any], names: Sequence[str], who: str, attention: Sequence[str] = (),
    max_sequences: int | None = None, with_targets: bool = False,
) -> Iterator[Capture]:
    """Run ``model.labelled_logits`` on each batch with hooks on ``names`` (outputs) and ``attention``
    (probabilities); yield a ``Capture`` per batch until ``max_sequences`` sequences (None: all) are seen.

    Each module must run once per forward. ``with_targets`` also cuts the module's ``probe_targets(batch)``.
    The caller chooses eval mode and gradients.
    """
    remaining = max_sequences
    for batch in batches:
        with captured_outputs(model, names, who) as out, captured_attention(model, list(attention), who) as att:
            model.labelled_logits(batch)
        out, att = run_once(out, who), run_once(att, who)
        rows = next(iter([*out.values(), *att.values()])).shape[0]
        keep = rows if remaining is None else min(rows, remaining)
        targets = {name: t.first(keep) for name, t in model.probe_targets(batch).items()} if with_targets else {}
        yield Capture(batch, keep, {n: o[:keep] for n, o in out.items()}, {n: a[:keep] for n, a in att.items()}, targets)
        if remaining is not None:
            remaining -= keep
            if remaining == 0:
                return
