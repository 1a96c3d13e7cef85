"""How much of each edge direction v_k is driven by the gradient and how much by weight decay.

Each row's projection on v_k splits exactly into g_j (optimizer-processed gradient) + w_j (decay), all in
Gram space from X Xᵀ and X_wd Xᵀ; reports grad% = E[g²]/(E[g²]+E[w²]) and the alignment A = E[g·w].
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from callbacks.utils.row_analysis import RowAnalysis
from callbacks.functional.edge_decomposer import append_cross, decompose
from callbacks.functional.gram_spectrum import append_gram, usable_modes, window_spectrum
from callbacks.update_recorder import RowEvent


class EdgeDecomposer(RowAnalysis):
    """Logs edge/grad_frac_v{k}, edge/alignment_v{k}, edge/grad_mean_v{k}, edge/wd_mean_v{k} and
    update/norm_grad, update/norm_wd each time the UpdateRecorder completes a row (window ≥ 2 rows).

    Args:
        top_k: leading directions decomposed (at most the recorder's window).
        history_path: ``.npz`` of every logged scalar vs step, written at fit end (relative: under trainer.log_dir).
    """

    def __init__(self, top_k: int = 5, history_path: str | None = None) -> None:
        super().__init__(top_k, history_path)
        self._gram = torch.zeros(0, 0, dtype=torch.float64)  # X Xᵀ of the window
        self._cross = torch.zeros(0, 0, dtype=torch.float64)  # X_wd Xᵀ: [i, j] = wd_i · total_j

    def _row_products(self, event: RowEvent) -> Tensor:
        x, d = event.total, event.wd
        return torch.cat(
            [event.ring_total @ x, event.ring_total @ d, event.ring_wd @ x, torch.stack([x @ x, d @ x, d @ d])]
        )

    def _absorb(self, index: int, products: Tensor) -> dict[str, float]:
        W = self._recorder.window
        order = self._recorder.ring_order(index)
        tot_tot, tot_wd, wd_tot = (products[i * W : (i + 1) * W][order] for i in range(3))
        xx, dx, dd = products[3 * W :]
        self._gram = append_gram(self._gram, tot_tot, xx, keep=W)
        self._cross = append_cross(self._cross, new_row=tot_wd, new_col=wd_tot, corner=dx, keep=W)
        metrics = {
            "update/norm_wd": math.sqrt(float(dd)),
            "update/norm_grad": math.sqrt(max(float(xx - 2 * dx + dd), 0.0)),
        }
        w = self._gram.shape[0]
        if w < 2:
            return metrics
        sigma, u = window_spectrum(self._gram)
        for k in range(1, usable_modes(sigma, self.top_k) + 1):
            parts = decompose(self._cross, u[:, k - 1], float(sigma[k - 1]))
            for name in ("grad_frac", "alignment", "grad_mean", "wd_mean"):
                metrics[f"edge/{name}_v{k}"] = parts[name]
        return metrics

    def custom_scalar_charts(self) -> dict[str, list]:
        return {"grad_frac_vk": ["Multiline", [f"edge/grad_frac_v{k}" for k in range(1, self.top_k + 1)]]}

    def _analysis_state(self) -> dict[str, Any]:
        return {"gram": self._gram.clone(), "cross": self._cross.clone()}

    def _load_analysis_state(self, state: dict[str, Any]) -> None:
        self._gram = state["gram"].to(torch.float64)
        self._cross = state["cross"].to(torch.float64)
