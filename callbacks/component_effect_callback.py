"""What the gradient part and the decay part of the latest update along v_k do to the model (docs/methods.md §5.4).

The recorder splits each row exactly into gradient and weight-decay parts; this callback moves the weights by
each part's projection on v_k at its real size (and, as options, by the reference's ±ε probe or by the whole
part), evaluates, and restores the weights bit-exactly.
"""
from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
from torch import Tensor
from typing_extensions import override

from .functional.ablation import paired_counts, paired_interval
from .functional.component_effect import COMPONENTS, SPANS, component_rows, projected_step, unit_step
from .utils.causal import CausalTestCallback, check_directions
from .utils.errors import ConfigurationError, DirectionUnavailable
from .utils.evaluation import Evaluation, eval_mode, evaluate, evaluation_set, perturbed
from .utils.param_selection import split_like
from .utils.results import unavailable

VARIANTS = ("actual", "unit", "full")
EFFECT_FIELDS = ("step_norm", "loss", "accuracy", "delta_loss", "delta_acc", "loss_undo", "accuracy_undo",
                 "delta_loss_undo", "delta_acc_undo")


class ComponentEffectCallback(CausalTestCallback):
    """At scheduled steps, evaluate θ ± s for the step s of each update part C ∈ {grad, wd, total} along v_k.

    With x_C the part C of the newest row (``span="last"``) or of the window's sum (``"window"``) and
    c = ⟨x_C, v_k⟩, the variants are ``actual``: s = c·v_k (the part's real size along v_k, the default);
    ``unit``: s = ε·sign(c)·v_k with ε = ``eps_scale``·‖θ‖ (ref ``grad_vs_wd_decomposition.py``, which ignores
    the size; unavailable when |c| < 1e-12); ``full``: s = x_C itself (not along one direction). θ + s applies the
    part once more, θ − s undoes it. Each Δacc has a paired Agresti–Min interval. Logs
    ``component/v{k}/{C}/coefficient`` and ``component/v{k}/{C}/{variant}/{delta_loss, delta_acc,
    delta_loss_undo, delta_acc_undo}`` (``component/full/{C}/...`` for ``full``); keeps ``results``, writes JSON.

    Args:
        steps: optimizer steps after which to measure.
        after_grok: offsets after the grok step (needs a ``GrokDetector``).
        directions: 1-indexed Gram directions.
        components: any of ``grad``, ``wd``, ``total``.
        variants: any of ``actual``, ``unit``, ``full``.
        span: ``last`` (the newest row, the reference's centre delta) or ``window`` (the sum of the window's rows).
        eps_scale: ε = eps_scale·‖θ‖ of the ``unit`` variant (the reference's 0.005).
        confidence: level of the Δacc intervals, in (0, 1).
        dataloader_idx: validation dataloader to evaluate on.
        max_batches: evaluate on the first this many batches of it (None: all).
        json_path: where to write ``results`` at fit end; default ``{log_dir}/component_effect.json``
            (``component_effect_{i}.json`` for the i-th further ComponentEffectCallback of the trainer).

    Example::

        from lightning.pytorch import Trainer
        from lit_grok.callbacks import ComponentEffectCallback, GramSpectrum, UpdateRecorder

        effect = ComponentEffectCallback(steps=[300, 600], directions=[1, 2], variants=["actual", "unit"])
        trainer = Trainer(callbacks=[UpdateRecorder(interval=100), GramSpectrum(), effect])
        # after trainer.fit(model): effect.results, also in {log_dir}/component_effect.json
    """

    json_name = "component_effect"

    def __init__(
        self,
        steps: list[int] = [],
        after_grok: list[int] = [],
        directions: list[int] = [1],
        components: list[str] = ["grad", "wd"],
        variants: list[str] = ["actual"],
        span: str = "last",
        eps_scale: float = 0.005,
        confidence: float = 0.95,
        dataloader_idx: int = 0,
        max_batches: int | None = None,
        json_path: str | None = None,
    ) -> None:
        self.directions = check_directions(directions, "ComponentEffectCallback", "directions")
        for name, given, allowed in (("components", components, COMPONENTS), ("variants", variants, VARIANTS)):
            bad = [g for g in given if g not in allowed]
            if bad or not given or len(set(given)) != len(given):
                raise ConfigurationError(f"ComponentEffectCallback: {name} must be distinct values from {allowed}, got {given}")
        if span not in SPANS:
            raise ConfigurationError(f"ComponentEffectCallback: span must be one of {SPANS}, got {span!r}")
        if not eps_scale > 0:
            raise ConfigurationError(f"ComponentEffectCallback: eps_scale must be > 0, got {eps_scale}")
        if not 0 < confidence < 1:
            raise ConfigurationError(f"ComponentEffectCallback: confidence must lie in (0, 1), got {confidence}")
        super().__init__(steps, after_grok, dataloader_idx, max_batches, json_path)
        self.components = list(components)
        self.variants = list(variants)
        self.span = span
        self.eps_scale = eps_scale
        self.confidence = confidence

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(directions=self.directions, components=self.components, span=self.span)

    @override
    def run(self, pl_module: pl.LightningModule, batches: list[Any]) -> dict[str, Any]:
        """Every (direction, part, variant) on the current weights; parameters are restored bit-exactly."""
        recorder, spectrum = self._recorder, self._spectrum
        params = recorder.selection.params
        theta = recorder.flat_params().double()  # [P]
        eps = self.eps_scale * float(theta.norm())
        rows_total, rows_wd = (r.to(theta) for r in recorder.window_rows())  # [w, P] each
        parts = component_rows(rows_total, rows_wd, self.span) if rows_total.shape[0] else None  # None: no row yet
        with eval_mode(pl_module):
            data = evaluation_set(pl_module, batches)  # each distinct row once, counted as often as it occurs
            base = evaluate(pl_module, data, keep_outputs=True)

            def effect(step: Tensor) -> dict[str, Any]:
                out: dict[str, Any] = {"status": "ok", "step_norm": float(step.norm())}
                for suffix, moved in (("", theta + step), ("_undo", theta - step)):
                    with perturbed(params, split_like(moved, params)):
                        changed = evaluate(pl_module, data, keep_outputs=True)
                    out.update(self._delta(base, changed, suffix))
                return out

            directions: dict[str, Any] = {}
            for k in self.directions:
                try:
                    v = spectrum.directions([k])[0].to(theta)  # [P]
                except DirectionUnavailable as err:
                    directions[f"v{k}"] = {c: {"coefficient": math.nan, **{m: unavailable(str(err), EFFECT_FIELDS)
                                                                             for m in self.variants if m != "full"}}
                                           for c in self.components}
                    continue
                entry = {}
                for c in self.components:
                    coefficient, projection = projected_step(parts[c], v)
                    entry[c] = {"coefficient": coefficient}
                    if "actual" in self.variants:
                        entry[c]["actual"] = effect(projection)
                    if "unit" in self.variants:
                        probe = unit_step(coefficient, v, eps)
                        entry[c]["unit"] = effect(probe) if probe is not None else unavailable(
                            f"|<x_{c}, v{k}>| = {abs(coefficient):.3g} < 1e-12: no sign for the ±ε probe", EFFECT_FIELDS)
                directions[f"v{k}"] = entry
            full = {}
            if "full" in self.variants:
                full = {c: effect(parts[c]) if parts is not None else unavailable("no row completed yet", EFFECT_FIELDS)
                        for c in self.components}
        return {
            "window_size": int(spectrum.window_size),
            "window_end_step": recorder.steps_done - recorder.steps_done % recorder.interval,
            "span": self.span,
            "sigma": [float(s) for s in spectrum.sigma],
            "theta_norm": float(theta.norm()),
            "eps": eps,
            "part_norms": {c: float(parts[c].norm()) if parts is not None else math.nan for c in self.components},
            "params": list(recorder.selection.names),
            "base": {"loss": base.loss, "accuracy": base.accuracy, "trials": base.trials, "task_metric": base.task_metric},
            "directions": directions,
            "full": full,
        }

    def _delta(self, base: Evaluation, changed: Evaluation, suffix: str) -> dict[str, Any]:
        counts = paired_counts(base.outcomes, changed.outcomes, base.outcome_counts)
        return {f"loss{suffix}": changed.loss, f"accuracy{suffix}": changed.accuracy,
                f"delta_loss{suffix}": changed.loss - base.loss, f"delta_acc{suffix}": counts.delta,
                f"delta_acc{suffix}_ci": list(paired_interval(counts, self.confidence))}

    @override
    def scalars(self, result: dict[str, Any]) -> dict[str, float]:
        """The logged scalars of one run (NaN where a direction or a sign is unavailable)."""
        keys = ("delta_loss", "delta_acc", "delta_loss_undo", "delta_acc_undo")
        out = {}
        for name, entry in result["directions"].items():
            for c, by_variant in entry.items():
                out[f"component/{name}/{c}/coefficient"] = by_variant["coefficient"]
                for variant in ("actual", "unit"):
                    if variant in by_variant:
                        out.update({f"component/{name}/{c}/{variant}/{key}": by_variant[variant][key] for key in keys})
        for c, e in result["full"].items():
            out.update({f"component/full/{c}/{key}": e[key] for key in keys})
        return out

    @override
    def settings(self) -> dict[str, Any]:
        return {"directions": self.directions, "components": self.components, "variants": self.variants,
                "span": self.span, "eps_scale": self.eps_scale, "confidence": self.confidence}
