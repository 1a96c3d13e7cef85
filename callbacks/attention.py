"""Attention probabilities from the model's real forward pass, and summaries of them per head (spec §10.2-10.3).

``captured_attention`` makes each ``nn.MultiheadAttention`` return its per-head probabilities (a pre-hook
sets ``need_weights=True, average_attn_weights=False``) and stores them; nothing is reconstructed by hand.
Hooks on the attention also switch off the fused encoder-layer fast path, which would skip the module call.
"""
from __future__ import annotations

import inspect
import math
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

from callbacks.hidden_states import resolve_modules


def attention_modules(model: nn.Module, names: Sequence[str] | None, who: str) -> dict[str, nn.MultiheadAttention]:
    """The named attention modules, or every ``nn.MultiheadAttention`` in ``model`` when ``names`` is None."""
    if names is None:
        found = {name: m for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)}
        if not found:
            raise ValueError(f"{who}: {type(model).__name__} has no nn.MultiheadAttention; name the attention modules")
        return found
    modules = resolve_modules(model, names, who)
    for name, m in modules.items():
        if not isinstance(m, nn.MultiheadAttention):
            raise TypeError(f"{who}: module {name!r} is a {type(m).__name__}, not an nn.MultiheadAttention")
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


def uniform_causal_entropy(T: int) -> float:
    """Mean entropy of uniform causal attention over T queries: (1/T) Σ_{t=1}^{T} ln t = ln(T!)/T."""
    return math.lgamma(T + 1) / T


def is_causal_pattern(probs: Tensor) -> bool:
    """True when probs [B, H, T, T] put exactly zero mass above the diagonal (a causal mask)."""
    T, S = probs.shape[-2:]
    return T == S and bool((probs.triu(diagonal=1) == 0).all())


def _query_weights(probs: Tensor, query_mask: Tensor | None) -> Tensor:
    B, _, T, _ = probs.shape
    mask = torch.ones(B, T, dtype=torch.bool, device=probs.device) if query_mask is None else query_mask.bool()
    return mask.to(torch.float64)  # [B, T]


def head_entropy(probs: Tensor, query_mask: Tensor | None = None) -> Tensor:
    """−Σ_s p log p (0·log 0 = 0) of probs [B, H, T, S], averaged over valid queries (all if no mask) -> [H]."""
    w = _query_weights(probs, query_mask)  # [B, T]
    p = probs.to(torch.float64)
    ent = -torch.xlogy(p, p).sum(-1)  # [B, H, T]
    ent = torch.where(w[:, None] > 0, ent, 0.0)  # a masked query may be NaN (no key to attend to)
    return (ent * w[:, None]).sum((0, 2)) / w.sum()


def mean_pattern(probs: Tensor, query_mask: Tensor | None = None) -> Tensor:
    """Ā [H, T, S]: per query position, the mean over the sequences where that query is valid (NaN if none)."""
    w = _query_weights(probs, query_mask)  # [B, T]
    valid = w[:, None, :, None] > 0
    total = torch.where(valid, probs.to(torch.float64), 0.0).sum(0)  # [H, T, S]
    return total / w.sum(0)[None, :, None]


def kl_to_uniform(pattern: Tensor, causal: bool) -> Tensor:
    """KL(Ā[t] ‖ uniform) per head, averaged over query rows -> [H]. Causal: uniform on keys 0..t, rows
    t = 1..T-1 (row 0 is trivially 0); otherwise uniform on all S keys, every row. NaN rows are skipped."""
    H, T, S = pattern.shape
    if causal:
        support = torch.ones(T, S, dtype=torch.bool, device=pattern.device).tril()  # keys 0..t
        n_keys = torch.arange(1, T + 1, device=pattern.device, dtype=torch.float64)[:, None]  # [T, 1]
        rows = slice(1, T)
    else:
        support = torch.ones(T, S, dtype=torch.bool, device=pattern.device)
        n_keys = torch.full((T, 1), float(S), dtype=torch.float64, device=pattern.device)
        rows = slice(0, T)
    p = pattern * support
    kl = torch.xlogy(p, p * n_keys).sum(-1)  # [H, T]
    return torch.nanmean(kl[:, rows], dim=1)


def pattern_power(pattern: Tensor) -> Tensor:
    """|rfft over keys|² of each row of Ā [H, T, S], averaged over query rows -> [H, S // 2 + 1]."""
    return torch.nanmean(torch.fft.rfft(pattern, dim=-1).abs().square(), dim=1)


def local_score(pattern: Tensor) -> Tensor:
    """mean_t Ā[t, t] -> [H] (over t < min(T, S))."""
    return torch.nanmean(pattern.diagonal(dim1=-2, dim2=-1), dim=-1)


def recent_score(pattern: Tensor, span: int = 3) -> Tensor:
    """mean_t of the mass on keys t-span+1..t -> [H] (keys t-2..t by default)."""
    H, T, S = pattern.shape
    t = torch.arange(T, device=pattern.device)[:, None]
    k = torch.arange(S, device=pattern.device)[None, :]
    band = (k <= t) & (k > t - span)  # [T, S]
    return torch.nanmean((pattern * band).sum(-1), dim=-1)
