"""Remove the current weights' component along Gram directions and measure what the model loses (docs/methods.md §7).

Every run also measures four controls on the same trials: random subspaces of the same dimension, random
subspaces removing the same norm, a radial shrink by the same norm, and removing θ̂ itself (θ → 0).
"""
from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import numpy as np
from torch import Tensor
from typing_extensions import override

from .functional.ablation import (
    norm_matched_removal,
    paired_counts,
    paired_interval,
    projection_removal,
    radial_removal,
    random_subspace,
    ratio_interval,
    sequence_interval,
)
from .utils.causal import CausalTestCallback, check_direction_sets, named_state_key
from .utils.errors import ConfigurationError, DirectionUnavailable
from .utils.evaluation import Evaluation, eval_mode, evaluate, evaluation_set, perturbed
from .utils.param_selection import split_like
from .utils.results import unavailable

CONTROLS = ("random", "random_norm", "radial", "theta_hat")
NAN_INTERVAL = [math.nan, math.nan]


UNMEASURED = ("removed_norm", "loss", "accuracy", "delta_loss", "delta_acc")


def unmeasured(reason: str, **fields: Any) -> dict[str, Any]:
    """An effect that could not be measured: NaN metrics and intervals, never a zero effect."""
    return {**unavailable(reason, UNMEASURED, **fields), "ci": NAN_INTERVAL, "ci_for_ratio": NAN_INTERVAL}


class AblationCallback(CausalTestCallback):
    """At scheduled steps, ablate θ' = θ − Σ_{k∈S} ⟨θ, v_k⟩ v_k for each named set S and compare with controls.

    θ is the ``UpdateRecorder`` selection and v_k the ``GramSpectrum`` directions of the window ending at the
    latest completed row. Accuracy is the module's task metric on a validation dataloader; each Δacc has a
    paired interval (Agresti–Min, ablated and base scored on the same trials). Controls, matched to
    ``matched_set`` (dimension m, removed norm c):

    * ``random``: project out a random m-dim subspace (trial t: ``numpy.random.default_rng(seed + t)``, QR).
    * ``random_norm``: remove c·r̂ with r̂ = θ's component in that trial's subspace, normalised (‖removed‖ = c).
    * ``radial``: θ ← θ·(1 − c/‖θ‖).
    * ``theta_hat``: remove ⟨θ, θ̂⟩θ̂, i.e. set the whole selection to 0 (removed norm ‖θ‖).

    With ``one_direction_control``, also the reference's 1-direction control: v₁ removed alone against
    ``n_trials`` random unit directions (trial t: ``default_rng(one_direction_seed + t)``), under ``one_direction``
    (logged as ``ablation/one_direction/{v1,random}/...`` and ``ablation/one_direction/ratio``).

    Trial controls report the mean Δ with the mean of the per-trial interval bounds (conservative for
    positively correlated trials). The ratio Δacc(matched)/Δacc(control) uses intervals at level
    1 − α/2 each and the range of their corner quotients (≥ 1 − α by Bonferroni); it is "not_resolvable"
    when the control's interval contains 0 or |Δ| < 1/trials. Logs ``ablation/{set}/...`` and
    ``ablation/control_{name}/...``; keeps ``results`` (one dict per run) and writes them to JSON at fit end.

    Args:
        steps: optimizer steps after which to ablate.
        after_grok: offsets after the grok step (needs a ``GrokDetector``).
        sets: named sets of 1-indexed Gram directions.
        matched_set: the set the controls match (default: the first of ``sets``).
        n_trials: random subspaces per random control.
        seed: trial t uses seed + t.
        confidence: level of the Δacc intervals, in (0, 1).
        dataloader_idx: validation dataloader to evaluate on.
        max_batches: evaluate on the first this many batches of it (None: all).
        one_direction_control: also measure v₁ alone against random single directions (docs/methods.md §7.4).
        one_direction_seed: trial t of that control uses one_direction_seed + t (the reference's 2000).
        json_path: where to write ``results`` at fit end; default ``{log_dir}/ablation.json``
            (``ablation_{i}.json`` for the i-th further AblationCallback of the trainer; ``ablation_<name>.json``
            for a named recorder).
        recorder: name of the UpdateRecorder whose directions are ablated (None: the trainer's only one).

    Example::

        from lightning.pytorch import Trainer
        from lit_grok.callbacks import AblationCallback, GramSpectrum, GrokDetector, UpdateRecorder

        ablation = AblationCallback(steps=[500], after_grok=[0, 800], sets={"edge": [1, 2], "bulk": [3, 4]})
        trainer = Trainer(callbacks=[GrokDetector(), UpdateRecorder(interval=100), GramSpectrum(), ablation])
        # after trainer.fit(model): ablation.results, also in {log_dir}/ablation.json
    """

    json_name = "ablation"

    def __init__(
        self,
        steps: list[int] = [],
        after_grok: list[int] = [],
        sets: dict[str, list[int]] = {"edge": [1, 2]},
        matched_set: str | None = None,
        n_trials: int = 10,
        seed: int = 1000,
        confidence: float = 0.95,
        dataloader_idx: int = 0,
        max_batches: int | None = None,
        one_direction_control: bool = False,
        one_direction_seed: int = 2000,
        json_path: str | None = None,
        recorder: str | None = None,
    ) -> None:
        self.sets = check_direction_sets(sets, "AblationCallback")
        matched_set = next(iter(self.sets)) if matched_set is None else matched_set
        if matched_set not in self.sets:
            raise ConfigurationError(f"AblationCallback: matched_set {matched_set!r} is not one of the sets {list(self.sets)}")
        if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
            raise ConfigurationError(f"AblationCallback: n_trials must be an integer >= 1, got {n_trials!r}")
        if not 0 < confidence < 1:
            raise ConfigurationError(f"AblationCallback: confidence must lie in (0, 1), got {confidence}")
        super().__init__(steps, after_grok, dataloader_idx, max_batches, json_path, recorder)
        self.matched_set = matched_set
        self.n_trials = n_trials
        self.seed = seed
        self.confidence = confidence
        if isinstance(one_direction_seed, bool) or not isinstance(one_direction_seed, int):
            raise ConfigurationError(f"AblationCallback: one_direction_seed must be an integer, got {one_direction_seed!r}")
        self.one_direction_control = one_direction_control
        self.one_direction_seed = one_direction_seed

    @property
    @override
    def state_key(self) -> str:
        return named_state_key(self, sets=self.sets, matched_set=self.matched_set)

    @override
    def run(self, pl_module: pl.LightningModule, batches: list[Any]) -> dict[str, Any]:
        """Ablate every set and control on the current weights; parameters are restored bit-exactly."""
        recorder, spectrum = self._recorder, self._spectrum
        params = recorder.selection.params
        theta = recorder.flat_params().double()  # [P]
        with eval_mode(pl_module):
            data = evaluation_set(pl_module, batches)  # each distinct row once, counted as often as it occurs
            base = evaluate(pl_module, data, keep_outputs=True)

            def measure(removal: Tensor) -> dict[str, Any]:
                with perturbed(params, split_like(theta - removal, params)):
                    changed = evaluate(pl_module, data, keep_outputs=True)
                return self._effect(base, changed, float(removal.norm()))

            sets = {}
            for name, ks in self.sets.items():
                try:
                    basis = spectrum.directions(ks).to(theta)  # [m, P]
                except DirectionUnavailable as err:
                    sets[name] = unmeasured(str(err), directions=ks)
                    continue
                sets[name] = {"status": "ok", "directions": ks, **measure(projection_removal(theta, basis))}
            controls = self._controls(theta, sets[self.matched_set], measure)
            one_direction = self._one_direction(theta, measure, base.trials, sets) if self.one_direction_control else None
        matched = sets[self.matched_set]
        ratios = {
            kind: ratio_interval(matched["delta_acc"], matched["ci_for_ratio"], c["delta_acc"], c["ci_for_ratio"], base.trials)
            if matched["status"] == c["status"] == "ok"
            else {**unavailable("the matched set or the control is unavailable", ("ratio",)), "interval": NAN_INTERVAL}
            for kind, c in controls.items()
        }
        extra = {} if one_direction is None else {"one_direction": one_direction}
        return {
            "window_size": int(spectrum.window_size),
            "window_end_step": recorder.steps_done - recorder.steps_done % recorder.interval,
            "sigma": [float(s) for s in spectrum.sigma],
            "theta_norm": float(theta.norm()),
            "params": list(recorder.selection.names),
            "base": {"loss": base.loss, "accuracy": base.accuracy, "trials": base.trials, "task_metric": base.task_metric},
            "matched_set": self.matched_set,
            "sets": sets,
            "controls": controls,
            "ratios": ratios,
            **extra,
        }

    def _effect(self, base: Evaluation, changed: Evaluation, removed_norm: float) -> dict[str, Any]:
        counts = paired_counts(base.outcomes, changed.outcomes, base.outcome_counts)
        return {
            "removed_norm": removed_norm,
            "loss": changed.loss,
            "accuracy": changed.accuracy,
            "delta_loss": changed.loss - base.loss,
            "delta_acc": counts.delta,
            "ci": list(paired_interval(counts, self.confidence)),
            "ci_for_ratio": list(paired_interval(counts, 1 - (1 - self.confidence) / 2)),
            "ci_sequence": list(sequence_interval(base.outcomes, changed.outcomes, base.outcome_rows, base.row_copies,
                                                  self.confidence)),
            "lost": counts.lost,
            "gained": counts.gained,
        }

    def _controls(self, theta: Tensor, matched: dict[str, Any], measure: Any) -> dict[str, dict[str, Any]]:
        controls: dict[str, dict[str, Any]] = {}
        if matched["status"] == "ok":
            dim, norm = len(matched["directions"]), matched["removed_norm"]
            random, random_norm = [], []
            for t in range(self.n_trials):
                basis = random_subspace(dim, theta.numel(), self.seed + t).to(theta)  # [m, P]
                random.append(measure(projection_removal(theta, basis)))
                random_norm.append(measure(norm_matched_removal(theta, basis, norm)))
            controls["random"] = self._summarise(random)
            controls["random_norm"] = self._summarise(random_norm)
            controls["radial"] = {"status": "ok", **measure(radial_removal(theta, norm))}
        else:
            reason = f"matched set {self.matched_set!r} is unavailable"
            controls.update({kind: unmeasured(reason) for kind in ("random", "random_norm", "radial")})
        controls["theta_hat"] = {"status": "ok", **measure(theta)}
        return controls

    def _one_direction(self, theta: Tensor, measure: Any, trials: int, sets: dict[str, Any]) -> dict[str, Any]:
        """v₁ removed alone against n_trials random unit directions (ref ``random_direction_controls.py``); a set
        of v₁ alone is that same removal, already measured."""
        measured = [result for result in sets.values() if result["directions"] == [1] and result["status"] == "ok"]
        try:
            v1 = measured[0] if measured else {
                "status": "ok", "directions": [1], **measure(projection_removal(theta, self._spectrum.directions([1]).to(theta)))}
        except DirectionUnavailable as err:
            v1 = unmeasured(str(err), directions=[1])
        random = [measure(projection_removal(theta, random_subspace(1, theta.numel(), self.one_direction_seed + t).to(theta)))
                  for t in range(self.n_trials)]
        summary = {**self._summarise(random), "seeds": [self.one_direction_seed + t for t in range(self.n_trials)]}
        ratio = (ratio_interval(v1["delta_acc"], v1["ci_for_ratio"], summary["delta_acc"], summary["ci_for_ratio"], trials)
                 if v1["status"] == "ok" else {**unavailable("v1 is unavailable", ("ratio",)), "interval": NAN_INTERVAL})
        return {"v1": v1, "random": summary, "ratio": ratio}

    def _summarise(self, trials: list[dict[str, Any]]) -> dict[str, Any]:
        mean = lambda key: float(np.mean([t[key] for t in trials]))  # noqa: E731
        bounds = lambda key: [float(np.mean([t[key][i] for t in trials])) for i in (0, 1)]  # noqa: E731
        accs = [t["delta_acc"] for t in trials]
        return {
            "status": "ok",
            "n_trials": len(trials),
            "seeds": [self.seed + t for t in range(len(trials))],
            "removed_norm": mean("removed_norm"),
            "loss": mean("loss"),
            "accuracy": mean("accuracy"),
            "delta_loss": mean("delta_loss"),
            "delta_acc": mean("delta_acc"),
            "delta_acc_std": float(np.std(accs, ddof=1)) if len(accs) > 1 else math.nan,
            "ci": bounds("ci"),
            "ci_for_ratio": bounds("ci_for_ratio"),
            "trials": trials,
        }

    @staticmethod
    @override
    def scalars(result: dict[str, Any]) -> dict[str, float]:
        """The logged scalars of one run (NaN where a set or control is unavailable)."""
        out = {"ablation/base/accuracy": result["base"]["accuracy"], "ablation/base/loss": result["base"]["loss"]}
        entries = {**result["sets"], **{f"control_{k}": v for k, v in result["controls"].items()}}
        for name, r in entries.items():
            for key in ("delta_acc", "delta_loss", "removed_norm"):
                out[f"ablation/{name}/{key}"] = r[key]
            out[f"ablation/{name}/delta_acc_low"], out[f"ablation/{name}/delta_acc_high"] = r["ci"]
            if "ci_sequence" in r:
                out[f"ablation/{name}/delta_acc_seq_low"], out[f"ablation/{name}/delta_acc_seq_high"] = r["ci_sequence"]
        for kind, r in result["ratios"].items():
            out[f"ablation/control_{kind}/ratio"] = r["ratio"]
        if "one_direction" in result:
            for name in ("v1", "random"):
                r = result["one_direction"][name]
                for key in ("delta_acc", "delta_loss", "removed_norm"):
                    out[f"ablation/one_direction/{name}/{key}"] = r[key]
            out["ablation/one_direction/ratio"] = result["one_direction"]["ratio"]["ratio"]
        return out

    @override
    def settings(self) -> dict[str, Any]:
        return {"sets": self.sets, "matched_set": self.matched_set, "confidence": self.confidence,
                "one_direction_control": self.one_direction_control, "one_direction_seed": self.one_direction_seed}
