"""Move the weights along Gram directions and random directions; measure loss, accuracy, KL and curvature (docs/methods.md §6).

Curvature vᵀHv is exact (double backward of the evaluation loss w.r.t. the selected parameters); the docs/methods.md §6.2
finite difference at ε = fd_scale·‖θ‖ sits beside it, with σ_k against |ΔL| at that ε (docs/methods.md §6.3).
"""
from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor, nn
from typing_extensions import override

from .functional.ablation import random_subspace
from .functional.fourier_attention import head_entropy
from .functional.perturbation import (
    exact_curvatures, kl_divergence, qk_commutator, second_difference,
)
from .utils.causal import CausalTestCallback, check_directions, named_state_key
from .utils.errors import ConfigurationError, DirectionUnavailable
from .utils.evaluation import Evaluation, eval_mode, evaluate, evaluation_of, evaluation_set, perturbed
from .utils.hidden_states import attention_modules, captured_attention
from .utils.param_selection import split_like
from .utils.protocols import QueryAttentionModule
from .utils.results import unavailable

REFERENCE_EPS = [round(-0.03 + 0.0025 * i, 6) for i in range(25)]  # linspace(−0.03, 0.03, 25), absolute (docs/methods.md §6.1)


def check_eps_grid(eps: Sequence[float]) -> list[float]:
    """The grid as floats; it must contain 0, the unperturbed reference point of every curve."""
    grid = [float(e) for e in eps]
    if 0.0 not in grid:
        raise ConfigurationError(f"the ε grid must contain 0 (the unperturbed model), got {grid}")
    return grid


class PerturbationCallback(CausalTestCallback):
    """At scheduled steps, evaluate θ + ε·d on a grid of ε for Gram directions v_k and random unit directions.

    Per direction: loss, accuracy and mean KL(p‖p_ε) over labelled tokens at every ε (exact log-softmax
    difference), the max KL; with ``curvature``, exact vᵀHv, the finite difference at ε = fd_scale·‖θ‖ and
    |L(θ+εv) − L(θ)| there. A direction the window lacks is reported as unavailable (NaN), not as flat.
    Logs ``perturb/v{k}/max_kl``, ``curvature/v{k}/{hvp,fd,delta_loss,sigma}``, and ``.../random/..._mean``.

    Args:
        steps: optimizer steps after which to run.
        after_grok: offsets after the grok step (needs a ``GrokDetector``).
        directions: 1-indexed Gram directions.
        n_random: random unit directions (direction t drawn by ``numpy.random.default_rng(seed + t)``).
        seed: seed of the first random direction.
        eps: the ε grid; must contain 0. None: the reference's linspace(−0.03, 0.03, 25).
        eps_mode: "absolute" (ε in parameter units; directions are unit vectors) or "relative" (ε·‖θ‖).
        curvature: also compute exact vᵀHv and the finite-difference estimate.
        fd_scale: the finite difference uses ε = fd_scale·‖θ‖ (the reference's 1e-3).
        attention_curves: also record, at every ε, the attention entropy (mean over sequences, heads, every query,
            pads included, then over the ``nn.MultiheadAttention`` modules) and ‖W_Q W_K − W_K W_Q‖_F (mean over
            the modules with an ``in_proj_weight``), the reference's ε-sweep curves.
        dataloader_idx: validation dataloader to evaluate on.
        max_batches: evaluate on the first this many batches of it (None: all).
        json_path: where to write ``results`` at fit end; default ``{log_dir}/perturbation.json``
            (``perturbation_{i}.json`` for the i-th further PerturbationCallback of the trainer;
            ``perturbation_<name>.json`` for a named recorder).
        recorder: name of the UpdateRecorder whose directions are perturbed (None: the trainer's only one).

    Example::

        from lightning.pytorch import Trainer
        from lit_grok.callbacks import GramSpectrum, PerturbationCallback, UpdateRecorder

        perturbation = PerturbationCallback(steps=[500, 1400], directions=[1, 2, 3, 4], n_random=4)
        trainer = Trainer(callbacks=[UpdateRecorder(interval=100), GramSpectrum(), perturbation])
        # after trainer.fit(model): perturbation.results, also in {log_dir}/perturbation.json
    """

    json_name = "perturbation"

    def __init__(
        self,
        steps: list[int] = [],
        after_grok: list[int] = [],
        directions: list[int] = [1, 2, 3, 4],
        n_random: int = 4,
        seed: int = 2000,
        eps: list[float] | None = None,
        eps_mode: Literal["absolute", "relative"] = "absolute",
        curvature: bool = True,
        fd_scale: float = 1e-3,
        attention_curves: bool = False,
        dataloader_idx: int = 0,
        max_batches: int | None = None,
        json_path: str | None = None,
        recorder: str | None = None,
    ) -> None:
        self.directions = check_directions(directions, "PerturbationCallback", "directions")
        if isinstance(n_random, bool) or not isinstance(n_random, int) or n_random < 1:
            raise ConfigurationError(f"PerturbationCallback: n_random must be an integer >= 1, got {n_random!r}")
        if eps_mode not in ("absolute", "relative"):
            raise ConfigurationError(f"PerturbationCallback: eps_mode must be 'absolute' or 'relative', got {eps_mode!r}")
        if not fd_scale > 0:
            raise ConfigurationError(f"PerturbationCallback: fd_scale must be > 0, got {fd_scale}")
        super().__init__(steps, after_grok, dataloader_idx, max_batches, json_path, recorder)
        self.n_random = n_random
        self.seed = seed
        self.eps = check_eps_grid(REFERENCE_EPS if eps is None else eps)
        self.eps_mode = eps_mode
        self.curvature = curvature
        self.fd_scale = fd_scale
        self.attention_curves = attention_curves

    @property
    @override
    def state_key(self) -> str:
        return named_state_key(self, directions=self.directions, eps=self.eps, eps_mode=self.eps_mode)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Find the recorder and the spectrum; with ``attention_curves``, the attention modules too."""
        super().on_fit_start(trainer, pl_module)
        if self.attention_curves and not any(isinstance(m, nn.MultiheadAttention) for m in pl_module.modules()):
            raise ConfigurationError(f"PerturbationCallback(attention_curves=True): {type(pl_module).__name__} has no "
                                     "nn.MultiheadAttention to follow; set attention_curves=False")

    @override
    def run(self, pl_module: pl.LightningModule, batches: list[Any]) -> dict[str, Any]:
        """Curves and curvatures on the current weights; parameters are restored bit-exactly after each."""
        recorder, spectrum = self._recorder, self._spectrum
        params = recorder.selection.params
        theta = recorder.flat_params().double()  # [P]
        theta_norm = float(theta.norm())
        scale = theta_norm if self.eps_mode == "relative" else 1.0
        fd_eps = self.fd_scale * theta_norm
        sigma = [float(s) for s in spectrum.sigma]
        found: dict[str, tuple[Tensor, dict[str, Any]]] = {}
        entries: dict[str, dict[str, Any]] = {}
        for k in self.directions:
            try:
                found[f"v{k}"] = (spectrum.directions([k])[0].to(theta), {"k": k, "sigma": sigma[k - 1]})
            except DirectionUnavailable as err:
                entries[f"v{k}"] = self._unavailable(k, sigma[k - 1] if k <= len(sigma) else math.nan, str(err))
        randoms = [f"random{t}" for t in range(self.n_random)]
        for t, name in enumerate(randoms):
            found[name] = (random_subspace(1, theta.numel(), self.seed + t)[0].to(theta), {"seed": self.seed + t})

        with eval_mode(pl_module):
            data = evaluation_set(pl_module, batches)  # each distinct row once, counted as often as it occurs

            queries = query_batches(pl_module, batches) if self.attention_curves else None  # laid out once

            def state() -> tuple[Evaluation, dict[str, float]]:  # with the attention curves, from the same forward
                return attention_evaluation(pl_module, queries) if self.attention_curves else (
                    evaluate(pl_module, data, keep_outputs=True), {})

            def at(direction: Tensor, eps: float) -> tuple[Evaluation, dict[str, float]]:
                with perturbed(params, split_like(theta + eps * direction, params)):
                    return state()

            base, base_attention = state()
            for name, (d, info) in found.items():
                curve = []
                for e in self.eps:  # ε = 0 is θ itself, bit for bit: the base evaluation
                    ev, attention = (base, base_attention) if e == 0 else at(d, e * scale)
                    curve.append({"eps": e, "eps_abs": e * scale, "loss": ev.loss, "accuracy": ev.accuracy,
                                  "kl": kl_divergence(base.log_probs, ev.log_probs, base.token_counts), **attention})
                entry = {"status": "ok", **info, "curve": curve, "max_kl": max(c["kl"] for c in curve)}
                if self.curvature:
                    plus, minus = at(d, fd_eps)[0].loss, at(d, -fd_eps)[0].loss
                    entry.update(fd=second_difference(plus, minus, base.loss, fd_eps), delta_loss=abs(plus - base.loss),
                                 loss_plus=plus, loss_minus=minus)
                entries[name] = entry
            if self.curvature:
                pieces = [split_like(d, params) for d, _ in found.values()]
                hvps = exact_curvatures(pl_module, data.batches, params, pieces, base.token_total, data.row_counts)
                for name, h in zip(found, hvps):
                    entries[name]["hvp"] = h
        return {
            "window_size": int(spectrum.window_size),
            "window_end_step": recorder.steps_done - recorder.steps_done % recorder.interval,
            "sigma": sigma,
            "theta_norm": theta_norm,
            "params": list(recorder.selection.names),
            "eps_mode": self.eps_mode,
            "fd_eps": fd_eps,
            "base": {"loss": base.loss, "accuracy": base.accuracy, "trials": base.trials, "task_metric": base.task_metric},
            "directions": {name: entries[name] for name in [f"v{k}" for k in self.directions] + randoms},
        }

    def _unavailable(self, k: int, sigma: float, reason: str) -> dict[str, Any]:
        nan_fields = ("max_kl",) + (("hvp", "fd", "delta_loss", "loss_plus", "loss_minus") if self.curvature else ())
        return unavailable(reason, nan_fields, k=k, sigma=sigma, curve=[])

    @override
    def scalars(self, result: dict[str, Any]) -> dict[str, float]:
        """The logged scalars of one run (NaN where a direction is unavailable)."""
        keys = ("hvp", "fd", "delta_loss") if self.curvature else ()
        out, random = {}, {key: [] for key in ("max_kl",) + keys}
        for name, entry in result["directions"].items():
            if name.startswith("random"):
                for key in random:
                    random[key].append(entry[key])
                continue
            out[f"perturb/{name}/max_kl"] = entry["max_kl"]
            for key in keys + (("sigma",) if self.curvature else ()):
                out[f"curvature/{name}/{key}"] = entry[key]
        out["perturb/random/max_kl_mean"] = float(np.mean(random.pop("max_kl")))
        for key, values in random.items():
            out[f"curvature/random/{key}_mean"] = float(np.mean(values))
        return out

    @override
    def settings(self) -> dict[str, Any]:
        return {"directions": self.directions, "n_random": self.n_random, "eps": self.eps,
                "eps_mode": self.eps_mode, "fd_scale": self.fd_scale, "attention_curves": self.attention_curves}


def query_batches(pl_module: pl.LightningModule, batches: list[Any]) -> Any:
    """What ``attention_evaluation`` runs: the module's ``query_batch`` layout of ``batches``, else the batches."""
    return pl_module.query_batch(batches) if isinstance(pl_module, QueryAttentionModule) else batches


@torch.no_grad()
def attention_evaluation(pl_module: pl.LightningModule, queries: Any) -> tuple[Evaluation, dict[str, float]]:
    """One forward of ``queries`` (``query_batches``): its evaluation, and the attention entropy of every
    ``nn.MultiheadAttention`` (mean over sequences, heads and every query, pads included; then over modules) with the
    mean W_Q/W_K commutator norm (docs/methods.md §6.1)."""
    modules = attention_modules(pl_module, None, "PerturbationCallback")
    if isinstance(pl_module, QueryAttentionModule):  # each distinct query once, with its count
        seen = pl_module.query_attention(queries)
        if missing := sorted(set(modules) - seen.probs.keys()):
            raise ConfigurationError(f"PerturbationCallback: {type(pl_module).__name__}.query_attention gave no attention "
                                     f"for {missing}; return every nn.MultiheadAttention's, or set attention_curves=False")
        copies = None if seen.row_copies is None else [seen.row_copies]
        evaluation = evaluation_of([seen.labelled], copies, pl_module.task_metric, keep_outputs=True)
        queries, counts = {name: seen.probs[name][:, :, None] for name in modules}, seen.counts  # [Q, H, 1, K]
    else:
        with captured_attention(pl_module, None, "PerturbationCallback") as store:
            evaluation = evaluate(pl_module, queries, keep_outputs=True)
        queries, counts = {name: torch.cat(store[name]) for name in modules}, None  # [B, H, T, S]
    entropy = [float(head_entropy(p, None, counts).mean()) for p in queries.values()]  # [H] per module, meaned
    commutators = [qk_commutator(m.in_proj_weight) for m in modules.values() if m.in_proj_weight is not None]
    return evaluation, {"attention_entropy": float(np.mean(entropy)),
                        "qk_commutator": float(np.mean(commutators)) if commutators else math.nan}
