"""Capture the outputs of named submodules during a forward pass, with forward hooks.

The hooks live only inside the ``captured_outputs`` context: exactly the handles it added are removed
on exit, also when the forward raises.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

from torch import Tensor, nn


def resolve_modules(model: nn.Module, names: Sequence[str], who: str) -> dict[str, nn.Module]:
    """Map each dotted name (as in ``model.named_modules()``) to its module; one-line error if one is missing."""
    available = dict(model.named_modules())
    missing = [name for name in names if name not in available]
    if missing:
        sample = [name for name in available if name][:8]
        raise ValueError(f"{who}: no module named {missing[0]!r} in {type(model).__name__}; valid names include {sample}")
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
                raise ValueError(f"{who}: {name!r} returned a nested tensor; build the encoder with enable_nested_tensor=False")
            store[name].append(out.detach())

        return hook

    handles = [module.register_forward_hook(hook_for(name)) for name, module in modules.items()]
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()
