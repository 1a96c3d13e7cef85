"""Pure math of the functional effect of each part of an update along a Gram direction (docs/methods.md §5.4).

A row x [P] of the window splits exactly into a decay part x_wd and a gradient part x_grad = x − x_wd (docs/methods.md §5.1).
The perturbation for part C along the unit direction v_k is its projection ⟨x_C, v_k⟩ v_k at its real size, or
the reference's ε·sign⟨x_C, v_k⟩·v_k, or the whole part x_C.
"""
from __future__ import annotations

from torch import Tensor

COMPONENTS = ("grad", "wd", "total")
SPANS = ("last", "window")
SIGN_FLOOR = 1e-12  # the reference's floor under which ⟨x_C, v_k⟩ has no sign


def component_rows(rows_total: Tensor, rows_wd: Tensor, span: str) -> dict[str, Tensor]:
    """{"total", "wd", "grad"} -> [P]: the newest row (``span="last"``, the reference's centre delta) or the sum
    of the window's rows (``"window"``) of rows_total, rows_wd [w, P] (oldest -> newest)."""
    if span not in SPANS:
        raise ValueError(f"span must be one of {SPANS}, got {span!r}")
    total, wd = (rows_total[-1], rows_wd[-1]) if span == "last" else (rows_total.sum(0), rows_wd.sum(0))
    return {"total": total, "wd": wd, "grad": total - wd}


def projected_step(part: Tensor, direction: Tensor) -> tuple[float, Tensor]:
    """(c, c·v): the coefficient c = ⟨part, v⟩ of part [P] on the unit direction v [P], and that projection [P]."""
    c = float(part @ direction)
    return c, c * direction


def unit_step(coefficient: float, direction: Tensor, eps: float) -> Tensor | None:
    """ε·sign(c)·v [P] (ref ``grad_vs_wd_decomposition.py``); None when |c| < 1e-12 (no sign to take)."""
    if abs(coefficient) < SIGN_FLOOR:
        return None
    return (eps if coefficient > 0 else -eps) * direction
