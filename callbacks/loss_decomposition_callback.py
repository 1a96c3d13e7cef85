"""Predict each Gram direction's importance from its stability and gradients, and check it by ablation
(docs/methods.md §11.2)."""
from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from .functional.ablation import projection_removal
from .functional.loss_decomposition import gradient_projections, importance, stability_alphas
from .utils.causal import CausalTestCallback
from .utils.errors import ConfigurationError, DirectionUnavailable
from .utils.evaluation import eval_mode, evaluate, evaluation_batches, evaluation_set, loss_gradient, perturbed
from .utils.param_selection import split_like

PER_DIRECTION = ("alpha", "g_train", "g_val", "predicted", "actual_dloss", "actual_dacc")


class LossDecompositionCallback(CausalTestCallback):
    """At scheduled steps, α_j·G_j^train·G_j^val predicts how much v_j matters; ablating v_j alone measures it.

    α_j = |⟨v_j⁽¹⁾, v_j⁽²⁾⟩| compares the directions of the window's first ⌊w/2⌋ rows and of the rest (how stable
    v_j is within the window); G_j = ⟨v_j, ∇L⟩ projects the raw full-batch gradient of the training and of the
    validation loss (token-weighted mean cross-entropy, dropout off) on v_j of the whole window (``GramSpectrum``).
    The actual effect is Δloss (and Δacc) on the validation batches of θ − ⟨θ, v_j⟩v_j. Logs
    ``loss_decomp/v{j}/{alpha,g_train,g_val,predicted,actual_dloss,actual_dacc}`` and ``loss_decomp/{pearson,
    spearman}`` (|predicted| vs |actual Δloss| over j, NaN below 3 directions; ``few_points`` below 10); keeps
    ``results`` and writes them to JSON at fit end.

    Args:
        steps: optimizer steps after which to measure.
        after_grok: offsets after the grok step (needs a ``GrokDetector``).
        n_dirs: directions v_1..v_n (at most the window's rows; the reference: 6).
        train_dataloader_idx: validation dataloader holding the training set (the gradient G^train).
        dataloader_idx: validation dataloader of the held-out set (G^val and the ablation).
        max_batches: use the first this many batches of each (None: all).
        reference_alpha: set every α to 1 when the window has < 4 rows, as the reference does (default NaN).
        json_path: where to write ``results``; default ``{log_dir}/loss_decomposition.json``.

    Example::

        from lightning.pytorch import Trainer
        from lit_grok.callbacks import GramSpectrum, GrokDetector, LossDecompositionCallback, UpdateRecorder

        decomposition = LossDecompositionCallback(after_grok=[0], n_dirs=5)
        trainer = Trainer(callbacks=[GrokDetector(), UpdateRecorder(interval=100), GramSpectrum(), decomposition])
        # after trainer.fit(model): decomposition.results, also in {log_dir}/loss_decomposition.json
    """

    json_name = "loss_decomposition"

    def __init__(
        self,
        steps: list[int] = [],
        after_grok: list[int] = [],
        n_dirs: int = 5,
        train_dataloader_idx: int = 1,
        dataloader_idx: int = 0,
        max_batches: int | None = None,
        reference_alpha: bool = False,
        json_path: str | None = None,
    ) -> None:
        if isinstance(n_dirs, bool) or not isinstance(n_dirs, int) or n_dirs < 1:
            raise ConfigurationError(f"LossDecompositionCallback: n_dirs must be an integer >= 1, got {n_dirs!r}")
        for name, idx in (("train_dataloader_idx", train_dataloader_idx), ("dataloader_idx", dataloader_idx)):
            if isinstance(idx, bool) or not isinstance(idx, int) or idx < 0:
                raise ConfigurationError(f"LossDecompositionCallback: {name} must be an integer >= 0, got {idx!r}")
        if train_dataloader_idx == dataloader_idx:
            raise ConfigurationError("LossDecompositionCallback: train_dataloader_idx must differ from dataloader_idx "
                                     "(the training set and the held-out set)")
        super().__init__(steps, after_grok, dataloader_idx, max_batches, json_path)
        self.n_dirs = n_dirs
        self.train_dataloader_idx = train_dataloader_idx
        self.reference_alpha = reference_alpha
        self._train_batches: list[Any] | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(n_dirs=self.n_dirs, train=self.train_dataloader_idx, val=self.dataloader_idx)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Find the recorder and the spectrum; the training batches are materialised at the first measurement."""
        super().on_fit_start(trainer, pl_module)
        self._train_batches = None

    @override
    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[dict[str, Any]]:
        if self._train_batches is None:
            self._train_batches = evaluation_batches(trainer, pl_module, self.train_dataloader_idx, self.max_batches)
        return super().measure(trainer, pl_module)

    @override
    def run(self, pl_module: pl.LightningModule, batches: list[Any]) -> dict[str, Any]:
        """Gradients, α and single-direction ablations on the current weights (restored bit-exactly)."""
        recorder, spectrum = self._recorder, self._spectrum
        params = recorder.selection.params
        theta = recorder.flat_params().double()  # [P]
        rows = recorder.window_rows()[0]  # [w, P]
        n = min(self.n_dirs, rows.shape[0])
        alpha = stability_alphas(rows, n, reference=self.reference_alpha)  # [n]
        with eval_mode(pl_module):
            data = evaluation_set(pl_module, batches)  # each distinct row once, counted as often as it occurs
            g_train_full = loss_gradient(pl_module, evaluation_set(pl_module, self._train_batches), params)  # [P]
            g_val_full = loss_gradient(pl_module, data, params)  # [P]
            base = evaluate(pl_module, data)
            directions = []
            for k in range(1, n + 1):
                try:
                    v = spectrum.directions([k]).to(theta)  # [1, P]
                except DirectionUnavailable as err:
                    directions.append({"k": k, "status": "unavailable", "reason": str(err),
                                       **{key: math.nan for key in PER_DIRECTION}})
                    continue
                with perturbed(params, split_like(theta - projection_removal(theta, v), params)):
                    ablated = evaluate(pl_module, data)
                directions.append({
                    "k": k, "status": "ok", "alpha": float(alpha[k - 1]),
                    "g_train": float(gradient_projections(g_train_full, v)[0]),
                    "g_val": float(gradient_projections(g_val_full, v)[0]),
                    "actual_dloss": ablated.loss - base.loss, "actual_dacc": ablated.accuracy - base.accuracy,
                })
        column = lambda key: torch.tensor([d[key] if d["status"] == "ok" else math.nan for d in directions])  # noqa: E731
        summary = importance(column("alpha"), column("g_train"), column("g_val"), column("actual_dloss"))
        for d, predicted in zip(directions, summary.pop("predicted")):
            d["predicted"] = predicted
        return {
            "window_size": int(rows.shape[0]),
            "window_end_step": recorder.steps_done - recorder.steps_done % recorder.interval,
            "sigma": [float(s) for s in spectrum.sigma],
            "reference_alpha": self.reference_alpha,
            "base": {"loss": base.loss, "accuracy": base.accuracy, "task_metric": base.task_metric},
            "grad_norm_train": float(g_train_full.norm()), "grad_norm_val": float(g_val_full.norm()),
            "directions": directions,
            **summary,
        }

    @staticmethod
    @override
    def scalars(result: dict[str, Any]) -> dict[str, float]:
        out = {f"loss_decomp/v{d['k']}/{key}": d[key] for d in result["directions"] for key in PER_DIRECTION}
        out["loss_decomp/pearson"], out["loss_decomp/spearman"] = result["pearson"], result["spearman"]
        return out

    @override
    def settings(self) -> dict[str, Any]:
        return {"n_dirs": self.n_dirs, "train_dataloader_idx": self.train_dataloader_idx,
                "dataloader_idx": self.dataloader_idx, "reference_alpha": self.reference_alpha}
