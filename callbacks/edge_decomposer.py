"""How much of each edge direction v_k is driven by the gradient and how much by weight decay.

Each row's projection on v_k splits exactly into g_j (optimizer-processed gradient) + w_j (decay), all in
Gram space from the recorder's shared G = X Xᵀ and this callback's X_wd Xᵀ (docs/methods.md §5); reports grad% = E[g²]/(E[g²]+E[w²]) and the alignment A = E[g·w].
"""
from __future__ import annotations

import math
from typing import Any

import torch
from typing_extensions import override

from .functional.edge_decomposer import append_cross, decompose
from .functional.gram_spectrum import usable_modes
from .utils.row_analysis import Pair, Products, RowAnalysis, WindowRow


class EdgeDecomposer(RowAnalysis):
    """Logs edge/grad_frac_v{k}, edge/alignment_v{k}, edge/grad_mean_v{k}, edge/wd_mean_v{k} and
    update/norm_grad, update/norm_wd each time the UpdateRecorder completes a row (window ≥ 2 rows).

    Args:
        top_k: leading directions decomposed (at most the recorder's window).
        history_path: ``.npz`` of every logged scalar vs step, written at fit end (relative: under trainer.log_dir).
        recorder: name of the UpdateRecorder to read (None: the trainer's only one); tags follow its name.

    Example::

        from lightning.pytorch import Trainer
        from lit_grok.callbacks import EdgeDecomposer, GramSpectrum, UpdateRecorder

        decomposer = EdgeDecomposer(top_k=3)
        trainer = Trainer(callbacks=[UpdateRecorder(interval=100, window=5), GramSpectrum(), decomposer])
        # after trainer.fit(...): decomposer.latest["edge/grad_frac_v1"]
    """

    def __init__(self, top_k: int = 5, history_path: str | None = None, recorder: str | None = None) -> None:
        super().__init__(top_k, history_path, recorder)
        self._cross = torch.zeros(0, 0, dtype=torch.float64)  # X_wd Xᵀ of the window: [i, j] = wd_i · total_j

    @override
    def row_pairs(self) -> dict[str, Pair]:
        return {
            "ring_x_wd": ("ring_total", "wd"), "ring_wd_x": ("ring_wd", "total"), "wd_x": ("wd", "total"),
            "wd_wd": ("wd", "wd"),
        }

    @override
    def absorb(self, row: WindowRow, products: Products) -> dict[str, float]:
        dx, dd = products["wd_x"], products["wd_wd"]
        self._cross = append_cross(
            self._cross, new_row=row.oldest_first(products["ring_x_wd"]), new_col=row.oldest_first(products["ring_wd_x"]),
            corner=dx, keep=self._recorder.window,
        )
        metrics = {
            "update/norm_wd": math.sqrt(float(dd)),
            "update/norm_grad": math.sqrt(max(row.xx - 2 * float(dx) + float(dd), 0.0)),
        }
        if row.size < 2:
            return metrics
        sigma, u = row.sigma, row.u
        for k in range(1, usable_modes(sigma, self.top_k) + 1):
            parts = decompose(self._cross, u[:, k - 1], float(sigma[k - 1]))
            for name in ("grad_frac", "alignment", "grad_mean", "wd_mean"):
                metrics[f"edge/{name}_v{k}"] = parts[name]
        return metrics

    @override
    def custom_scalar_charts(self) -> dict[str, list]:
        return {"grad_frac_vk": ["Multiline", [f"edge/grad_frac_v{k}" for k in range(1, self.top_k + 1)]]}

    @override
    def _analysis_state(self) -> dict[str, Any]:
        return {"cross": self._cross.clone()}

    @override
    def _load_analysis_state(self, state: dict[str, Any]) -> None:
        self._cross = state["cross"].to(torch.float64)
