"""The spectrum of the window of update rows: σ_k, the gap g23, k*, R, edge rotation and |cos(θ, v_k)|.

The recorder's one ``GramWindow`` keeps G = X Xᵀ and solves it per row (docs/methods.md §4.3); this callback
adds the products with θ, turns each ``WindowRow`` into scalars, and forms directions v_k = Xᵀu_k/σ_k only when
another callback asks for them.
"""
from __future__ import annotations

import math
from typing import Sequence

import lightning.pytorch as pl
import torch
from torch import Tensor
from typing_extensions import override

from .functional.gram_spectrum import (
    EPS,
    edge_statistics,
    mode_overlaps,
    rotation_angles,
    theta_cosines,
    usable_modes,
    window_spectrum,
)
from .utils.errors import DirectionUnavailable
from .utils.protocols import DirectionSource
from .utils.row_analysis import Pair, Products, RowAnalysis, WindowRow
from .utils.trainer import find


class GramSpectrum(RowAnalysis, DirectionSource):
    """Logs edge/sigma_k, g23, k_star, gap_ratio, rotation_v1_deg, rotation_span12_deg, cos_theta_v{k} and
    update/norm_total, update/theta_norm each time the UpdateRecorder completes a row (window ≥ 2 rows).

    Args:
        top_k: leading directions reported (at most the recorder's window).
        history_path: ``.npz`` of every logged scalar vs step, written at fit end (relative: under trainer.log_dir).
        recorder: name of the UpdateRecorder to read (None: the trainer's only one); tags follow its name.

    Example::

        from lightning.pytorch import Trainer
        from lit_grok.callbacks import GramSpectrum, UpdateRecorder

        spectrum = GramSpectrum(top_k=3)
        trainer = Trainer(callbacks=[UpdateRecorder(interval=100, window=5), spectrum])
        # after trainer.fit(...): spectrum.latest["edge/sigma_1"], spectrum.directions([1, 2])
    """

    def __init__(self, top_k: int = 5, history_path: str | None = None, recorder: str | None = None) -> None:
        super().__init__(top_k, history_path, recorder)

    @staticmethod
    def find(trainer: "pl.Trainer", recorder: str | None = None) -> "GramSpectrum":
        """The trainer's one GramSpectrum (with ``recorder``: the one reading the UpdateRecorder of that name; a
        ConfigurationError if there is none or several)."""
        if recorder is None:
            return find(trainer, GramSpectrum, "add UpdateRecorder() and GramSpectrum() to them")
        return find(trainer, GramSpectrum, f"add GramSpectrum(recorder={recorder!r})", where=lambda cb: cb.recorder == recorder)

    # ---------------------------------------------------------------- per row
    @override
    def row_pairs(self) -> dict[str, Pair]:
        return {"ring_theta": ("ring_total", "theta"), "x_theta": ("total", "theta"), "theta_theta": ("theta", "theta")}

    @override
    def absorb(self, row: WindowRow, products: Products) -> dict[str, float]:
        theta_norm = math.sqrt(float(products["theta_theta"]))
        metrics = {"update/norm_total": math.sqrt(row.xx), "update/theta_norm": theta_norm}
        w, sigma, u = row.size, row.sigma, row.u
        if w < 2:
            return metrics
        stats = edge_statistics(sigma)
        for k in range(1, min(self.top_k, w) + 1):
            metrics[f"edge/sigma_{k}"] = float(sigma[k - 1])
        for k in range(1, min(self.top_k, w - 1) + 1):
            metrics[f"edge/sigma_ratio_{k}"] = stats["ratios"][k - 1]
        metrics["edge/g23"], metrics["edge/gap_ratio"] = stats["g23"], stats["gap_ratio"]
        metrics["edge/k_star"] = float(stats["k_star"])
        n = usable_modes(sigma, self.top_k)
        if theta_norm > 0:
            x_theta = torch.cat([row.oldest_first(products["ring_theta"]), products["x_theta"].reshape(1)])
            cosines = theta_cosines(x_theta[-w:], u[:, :n], sigma[:n], theta_norm)
            metrics.update({f"edge/cos_theta_v{k + 1}": float(c) for k, c in enumerate(cosines)})
        m = len(row.order)
        if m >= 2 and n >= 1:  # the previous window (rows r−m..r−1) had a spectrum too
            s_prev, u_prev = window_spectrum(row.gram[:m, :m])
            n_prev = usable_modes(s_prev, self.top_k)
            if n_prev >= 1:
                cross = row.gram[:m, m + 1 - w :]  # X_prev X_curᵀ [m, w]
                overlaps = mode_overlaps(u_prev[:, :n_prev], s_prev[:n_prev], cross, u[:, :n], sigma[:n])
                metrics.update({f"edge/{k}": v for k, v in rotation_angles(overlaps).items()})
        return metrics

    # ---------------------------------------------------------------- public API
    def _spectrum(self) -> tuple[int, Tensor, Tensor]:
        if self._window is None:
            empty = torch.zeros(0, dtype=torch.float64)
            return 0, empty, empty.reshape(0, 0)
        return self._window.spectrum()

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

    @override
    def custom_scalar_charts(self) -> dict[str, list]:
        return {"sigma_k": ["Multiline", [f"edge/sigma_{k}" for k in range(1, self.top_k + 1)]]}
