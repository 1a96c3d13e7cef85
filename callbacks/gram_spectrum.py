"""The spectrum of the window of update rows: σ_k, the gap g23, k*, R, edge rotation and |cos(θ, v_k)|.

G = X Xᵀ is kept incrementally (a new row costs its dot products with the ring, O(wP)) and solved in
float64; directions v_k = Xᵀu_k/σ_k are formed only when another callback asks for them.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import lightning.pytorch as pl
import torch
from torch import Tensor

from callbacks.utils.row_analysis import RowAnalysis
from callbacks.functional.gram_spectrum import (
    EPS,
    append_gram,
    edge_statistics,
    mode_overlaps,
    rotation_angles,
    theta_cosines,
    usable_modes,
    window_spectrum,
)
from callbacks.update_recorder import RowEvent
from callbacks.utils.errors import DirectionUnavailable
from callbacks.utils.protocols import DirectionSource
from callbacks.utils.trainer import find


class GramSpectrum(RowAnalysis, DirectionSource):
    """Logs edge/sigma_k, g23, k_star, gap_ratio, rotation_v1_deg, rotation_span12_deg, cos_theta_v{k} and
    update/norm_total, update/theta_norm each time the UpdateRecorder completes a row (window ≥ 2 rows).

    Args:
        top_k: leading directions reported (at most the recorder's window).
        history_path: ``.npz`` of every logged scalar vs step, written at fit end (relative: under trainer.log_dir).
    """

    def __init__(self, top_k: int = 5, history_path: str | None = None) -> None:
        super().__init__(top_k, history_path)
        self._gram = torch.zeros(0, 0, dtype=torch.float64)  # rows r−window..r, oldest→newest
        self._cache: tuple[int, Tensor, Tensor] | None = None  # (rows seen, σ [w], U [w, w])

    @staticmethod
    def find(trainer: "pl.Trainer") -> "GramSpectrum":
        return find(trainer, GramSpectrum, "add UpdateRecorder() and GramSpectrum() to them")

    # ---------------------------------------------------------------- per row
    def _row_products(self, event: RowEvent) -> Tensor:
        x = event.total
        theta = self._recorder.flat_params().to(x.dtype)
        ring = event.ring_total  # [window, P]
        return torch.cat([ring @ x, (x @ x)[None], ring @ theta, (x @ theta)[None], (theta @ theta)[None]])

    def _absorb(self, index: int, products: Tensor) -> dict[str, float]:
        W = self._recorder.window
        order = self._recorder.ring_order(index)  # slots of the previous rows, oldest→newest
        m = len(order)
        col, xx = products[:W][order], products[W]
        x_theta = torch.cat([products[W + 1 : 2 * W + 1][order], products[2 * W + 1 : 2 * W + 2]])
        theta_norm = math.sqrt(float(products[2 * W + 2]))
        self._gram = append_gram(self._gram, col, xx, keep=W + 1)  # [m+1, m+1]
        metrics = {"update/norm_total": math.sqrt(float(xx)), "update/theta_norm": theta_norm}
        w = min(W, index + 1)
        if w < 2:
            return metrics
        sigma, u = window_spectrum(self._gram[-w:, -w:])
        self._cache = (index + 1, sigma, u)
        stats = edge_statistics(sigma)
        for k in range(1, min(self.top_k, w) + 1):
            metrics[f"edge/sigma_{k}"] = float(sigma[k - 1])
        for k in range(1, min(self.top_k, w - 1) + 1):
            metrics[f"edge/sigma_ratio_{k}"] = stats["ratios"][k - 1]
        metrics["edge/g23"], metrics["edge/gap_ratio"] = stats["g23"], stats["gap_ratio"]
        metrics["edge/k_star"] = float(stats["k_star"])
        n = usable_modes(sigma, self.top_k)
        if theta_norm > 0:
            cosines = theta_cosines(x_theta[-w:], u[:, :n], sigma[:n], theta_norm)
            metrics.update({f"edge/cos_theta_v{k + 1}": float(c) for k, c in enumerate(cosines)})
        if m >= 2 and n >= 1:  # the previous window (rows r−m..r−1) had a spectrum too
            s_prev, u_prev = window_spectrum(self._gram[:m, :m])
            n_prev = usable_modes(s_prev, self.top_k)
            if n_prev >= 1:
                cross = self._gram[:m, m + 1 - w :]  # X_prev X_curᵀ [m, w]
                overlaps = mode_overlaps(u_prev[:, :n_prev], s_prev[:n_prev], cross, u[:, :n], sigma[:n])
                metrics.update({f"edge/{k}": v for k, v in rotation_angles(overlaps).items()})
        return metrics

    # ---------------------------------------------------------------- public API
    def _spectrum(self) -> tuple[int, Tensor, Tensor]:
        self._process()
        w = min(self._recorder.window, self._rows_seen) if self._recorder is not None else 0
        if w < 2:
            empty = torch.zeros(0, dtype=torch.float64)
            return 0, empty, empty.reshape(0, 0)
        if self._cache is None or self._cache[0] != self._rows_seen:
            self._cache = (self._rows_seen, *window_spectrum(self._gram[-w:, -w:]))
        return w, self._cache[1], self._cache[2]

    @property
    def window_size(self) -> int:
        """Rows in the latest window (0 before the first spectrum)."""
        return self._spectrum()[0]

    @property
    def sigma(self) -> Tensor:
        """σ [w] float64 of the latest window, descending."""
        return self._spectrum()[1].clone()

    def directions(self, ks: Sequence[int]) -> Tensor:
        """v_k [len(ks), P] (1-indexed k) of the window as of the latest completed row, in the params' dtype."""
        w, sigma, u = self._spectrum()
        for k in ks:
            if not 1 <= k <= w:
                raise DirectionUnavailable(f"v_{k} is unavailable: the current window has {w} rows")
            if sigma[k - 1] <= EPS:
                raise DirectionUnavailable(f"v_{k} is unavailable: σ_{k} = 0 in the current window")
        idx = [k - 1 for k in ks]
        x_total = self._recorder.window_rows()[0]  # [w, P]
        coef = (u[:, idx] / sigma[idx]).T.to(x_total)  # [len(ks), w]
        return (coef @ x_total).to(self._recorder.selection.dtype)

    def custom_scalar_charts(self) -> dict[str, list]:
        return {"sigma_k": ["Multiline", [f"edge/sigma_{k}" for k in range(1, self.top_k + 1)]]}

    def _analysis_state(self) -> dict[str, Any]:
        return {"gram": self._gram.clone()}

    def _load_analysis_state(self, state: dict[str, Any]) -> None:
        self._gram, self._cache = state["gram"].to(torch.float64), None
