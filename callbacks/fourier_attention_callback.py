"""At scheduled steps: positional DFT of hidden states, per-head attention summaries, and optionally the
depth-basis Fourier of the Gram edge's perturbation response (docs/methods.md §10, §6.4).

Everything comes from the model's own forward on validation batches: module outputs and attention
probabilities are captured by hooks; the edge perturbation is undone bit-exactly.
"""
from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor
from typing_extensions import override

from .functional.fourier_attention import (
    attention_block_masks, field_pearson, grouped_spectrum, head_entropy, is_causal_pattern, kl_to_uniform, local_score,
    mean_pattern, pattern_power, positional_field_spectrum, positional_power, recent_score, reference_func_r2,
    summarize_spectrum, token_ratio, uniform_causal_entropy,
)
from .functional.probe import run_probes
from .update_recorder import UpdateRecorder
from .utils.causal import check_directions, check_recorder_name, find_edge, named_state_key
from .utils.errors import ConfigurationError, DirectionUnavailable, bad_input_is_configuration
from .utils.evaluation import eval_mode, evaluation_batches, perturbed, require_evaluable
from .utils.hidden_states import (
    attention_modules, captured_sequences, module_aliases, require_target, resolve_modules,
)
from .utils.param_selection import split_like
from .utils.protocols import ProbeableModule, ProbeTarget
from .utils.results import unavailable, write_results
from .utils.schedule import ScheduledCallback
from .utils.trainer import log_scalars


def check_aligned(mask: Tensor, shape: torch.Size, alias: str, target: str) -> None:
    if tuple(mask.shape) != tuple(shape[:2]):
        raise ConfigurationError(
            f"FourierAttentionCallback: the mask of target {target!r} has shape {tuple(mask.shape)} but {alias!r} has "
            f"[B, T] = {tuple(shape[:2])}; use a separate callback without mask_target for this module"
        )


def cat_batches(chunks: list[Tensor], alias: str) -> Tensor:
    """Concatenate per-batch captures along the batch axis; they must share every other size."""
    shapes = {tuple(c.shape[1:]) for c in chunks}
    if len(shapes) > 1:
        raise ConfigurationError(f"FourierAttentionCallback: {alias!r} has batches of different shapes {sorted(shapes)}; "
                         "pad the validation batches to one length")
    return torch.cat(chunks)


class FourierAttentionCallback(ScheduledCallback):
    """Positional DFT of ``modules`` outputs and per-head summaries of ``attention`` probabilities, at scheduled steps.

    Logs ``fourier/{alias}/{top1,top3,top5,omega_star,dc_share}`` (centred, DC apart) and, with
    ``reference_variant``, ``fourier/{alias}/ref_{top1,top3,omega_star}`` (uncentred, DC counted);
    ``attention/{alias}/head{h}/{entropy,kl_uniform,local,recent}`` and ``attention/{alias}/entropy_mean``
    (plus ``entropy_all``: all queries, pads included, when ``mask_target`` is set); ``kl_uniform`` is the KL of the
    mean pattern to uniform attention on keys 0..t when the probabilities are causal, else on all S keys (padded
    keys included); with ``response_module``,
    ``fourier_edge/v{k}/{F,omega_star,elevation,func_r2,pearson,pos_F,pos_omega_star}`` (docs/methods.md §6.5),
    ``token_ratio`` with ``token_target`` and ``ref_func_r2`` with ``reference_variant``. Everything, spectra
    included, goes to ``results``/JSON.

    Args:
        modules: modules whose outputs [B, T, D] get a positional DFT, or {alias: module name}.
        attention: ``nn.MultiheadAttention`` modules to summarise (list or {alias: name}); None: all of them.
        mask_target: probe target whose mask marks valid positions (DFT positions, attention queries);
            None: every position counts. Modules must share its [B, T].
        steps: optimizer steps after which to run.
        after_grok: offsets after the grok step (needs a ``GrokDetector``).
        dataloader_idx: validation dataloader to use.
        max_sequences: use its first this many sequences (None: all).
        reference_variant: also log the reference's uncentred, DC-included DFT summaries.
        response_module: module whose output h gives f_k = ‖h(θ+εv_k) − h(θ)‖² per token (e.g. ``ln_f``);
            None: skip the edge response. Needs ``UpdateRecorder`` and ``GramSpectrum``.
        response_target: probe target whose values group f_k (e.g. ``depth``) and whose mask picks tokens.
        directions: 1-indexed Gram directions v_k for the edge response.
        eps_scale: ε = eps_scale · ‖θ‖ of the recorder's selection (the reference's 0.005).
        response_blocks: also the per-block variant: v_k with every coordinate zeroed but those of one block type
            (W_Q, W_K, W_V or W_O over all layers), not renormalised, same ε (ref ``fourier_correct_basis.py``);
            under ``edge["v{k}"]["blocks"]``, logged as ``fourier_edge/v{k}/{type}/{F,omega_star,elevation}``.
        seed: seed of the by-group split of the ``func_r2`` probe (Ridge from Δh to the target).
        token_target: probe target holding the input token ids (e.g. ``token``): the field's token ratio.
        token_pair: the two token ids of the ratio (mean f over the first / over the second); None: the two most
            frequent among the response tokens.
        ref_seed: seed of the reference's random token split for ``ref_func_r2`` (the reference's 42).
        json_path: where to write ``results`` at fit end; default ``{log_dir}/fourier_attention.json``
            (``fourier_attention_{i}.json`` for the i-th further callback of this class in the trainer).
        recorder: name of the UpdateRecorder whose directions the edge response uses (None: the trainer's only
            one); its ``fourier_edge/`` tags carry that name.

    Example::

        from lightning.pytorch import Trainer
        from lit_grok.callbacks import FourierAttentionCallback, GramSpectrum, UpdateRecorder

        fourier = FourierAttentionCallback(modules={"layer_1": "encoder.layers.1"}, mask_target="depth", steps=[500],
                                           response_module="ln_f", response_target="depth")
        trainer = Trainer(callbacks=[UpdateRecorder(interval=100), GramSpectrum(), fourier])
        # after trainer.fit(model): fourier.results, also in {log_dir}/fourier_attention.json
    """

    def __init__(
        self,
        modules: list[str] | dict[str, str] = [],
        attention: list[str] | dict[str, str] | None = None,
        mask_target: str | None = None,
        steps: list[int] = [],
        after_grok: list[int] = [],
        dataloader_idx: int = 0,
        max_sequences: int | None = 500,
        reference_variant: bool = True,
        response_module: str | None = None,
        response_target: str | None = None,
        directions: list[int] = [1],
        eps_scale: float = 0.005,
        response_blocks: bool = False,
        seed: int = 0,
        json_path: str | None = None,
        token_target: str | None = None,
        token_pair: list[int] | None = None,
        ref_seed: int = 42,
        recorder: str | None = None,
    ) -> None:
        self.modules = module_aliases(modules, "FourierAttentionCallback", allow_empty=True)
        self.attention = None if attention is None else module_aliases(attention, "FourierAttentionCallback", allow_empty=True)
        if max_sequences is not None and max_sequences < 1:
            raise ConfigurationError(f"FourierAttentionCallback: max_sequences must be >= 1 or None, got {max_sequences}")
        if (response_module is None) != (response_target is None):
            raise ConfigurationError("FourierAttentionCallback: give both response_module and response_target, or neither")
        directions = check_directions(directions, "FourierAttentionCallback", "directions")
        if not eps_scale > 0:
            raise ConfigurationError(f"FourierAttentionCallback: eps_scale must be > 0, got {eps_scale}")
        if not self.modules and self.attention == {} and response_module is None:
            raise ConfigurationError("FourierAttentionCallback has nothing to do: give modules, attention (None: all) or response_module")
        if token_target is not None and response_module is None:
            raise ConfigurationError("FourierAttentionCallback: token_target needs response_module and response_target")
        if token_pair is not None and (len(token_pair) != 2 or any(isinstance(i, bool) or not isinstance(i, int) for i in token_pair)):
            raise ConfigurationError(f"FourierAttentionCallback: token_pair must be two token ids, got {token_pair!r}")
        self.mask_target = mask_target
        super().__init__(steps, after_grok)
        self.dataloader_idx = dataloader_idx
        self.max_sequences = max_sequences
        self.reference_variant = reference_variant
        self.response_module = response_module
        self.response_target = response_target
        self.directions = list(directions)
        self.eps_scale = eps_scale
        self.response_blocks = response_blocks
        self.seed = seed
        self.json_path = json_path
        self.recorder = check_recorder_name(recorder, "FourierAttentionCallback")
        self._recorder: UpdateRecorder | None = None
        self.token_target = token_target
        self.token_pair = None if token_pair is None else tuple(token_pair)
        self.ref_seed = ref_seed

    @property
    @override
    def state_key(self) -> str:
        return named_state_key(self, modules=self.modules, attention=self.attention, response=self.response_module)

    def prepare(self, pl_module: pl.LightningModule) -> None:
        """Check the module names against ``pl_module`` and resolve the attention modules; ``run`` needs it."""
        who = "FourierAttentionCallback"
        require_evaluable(pl_module, who)
        resolve_modules(pl_module, list(self.modules.values()) + [self.response_module] * (self.response_module is not None), who)
        attn = attention_modules(pl_module, None if self.attention is None else list(self.attention.values()), who)
        self._attention = self.attention if self.attention is not None else {name: name for name in attn}

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check the module, its names and targets before the first step; find the recorder and spectrum the edge response needs."""
        who = "FourierAttentionCallback"
        self.prepare(pl_module)
        wanted = [t for t in (self.mask_target, self.response_target, self.token_target) if t is not None]
        if wanted:
            if not isinstance(pl_module, ProbeableModule):
                raise ConfigurationError(f"{who} needs the LightningModule to define `probe_targets(batch)` for its targets")
            targets = pl_module.probe_targets(evaluation_batches(trainer, pl_module, self.dataloader_idx, max_batches=1)[0])
            for name in wanted:
                require_target(targets, name, who)
        if self.response_module is not None:
            self._recorder, self._spectrum = find_edge(trainer, self.recorder)

    @override
    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[dict[str, Any]]:
        with eval_mode(pl_module), torch.no_grad():
            result = self.run(pl_module, evaluation_batches(trainer, pl_module, self.dataloader_idx))
        log_scalars(trainer, self.scalars(result))
        return [result]

    @override
    def run(self, pl_module: pl.LightningModule, batches: list[Any]) -> dict[str, Any]:
        """All summaries on the current weights, from the first ``max_sequences`` sequences of ``batches``.

        Usable on a checkpoint without a Trainer: ``cb.prepare(model)``, then ``cb.run(model, batches)`` under
        ``torch.no_grad()`` in eval mode (the edge response needs the Trainer's UpdateRecorder and GramSpectrum).
        """
        who = "FourierAttentionCallback"
        names = list(dict.fromkeys([*self.modules.values(), *[self.response_module] * (self.response_module is not None)]))
        reps: dict[str, list[Tensor]] = {name: [] for name in names}
        probs: dict[str, list[Tensor]] = {alias: [] for alias in self._attention}
        targets: list[dict[str, ProbeTarget]] = []
        used: list[Any] = []  # the batches that were captured
        with_targets = self.mask_target is not None or self.response_target is not None
        for seen in captured_sequences(pl_module, batches, names, who, list(self._attention.values()),
                                       self.max_sequences, with_targets):
            for name in names:
                reps[name].append(seen.outputs[name].cpu())
            for alias, name in self._attention.items():
                probs[alias].append(seen.attention[name].cpu())
            if with_targets:
                targets.append(seen.targets)
            used.append(seen.batch)
        masks = [t[self.mask_target].mask for t in targets] if self.mask_target is not None else []
        result: dict[str, Any] = {"fourier": {}, "attention": {}}
        for alias, name in self.modules.items():
            r = cat_batches(reps[name], alias)  # [N, T, D]
            mask = self._mask(masks, r.shape, alias)
            centred = positional_power(r, mask, centre=True)
            entry = {"power": centred.tolist(), **vars(summarize_spectrum(centred, include_dc=False))}
            if self.reference_variant:
                raw = positional_power(r, mask, centre=False)
                entry["ref_power"] = raw.tolist()
                entry.update({f"ref_{k}": v for k, v in vars(summarize_spectrum(raw, include_dc=True)).items()})
            result["fourier"][alias] = entry
        for alias, chunks in probs.items():
            p = cat_batches(chunks, alias)  # [N, H, T, S]
            mask = self._mask(masks, p.shape[:1] + p.shape[2:3], alias)
            result["attention"][alias] = self._attention_summary(p, mask)
        if self.response_module is not None:
            base = reps[self.response_module]
            tokens = [t[self.token_target] for t in targets] if self.token_target is not None else None
            result["edge"] = self._edge_response(pl_module, used, base, [t[self.response_target] for t in targets], tokens)
        return result

    def _mask(self, masks: list[Tensor], shape: torch.Size, alias: str) -> Tensor:
        if self.mask_target is None:
            return torch.ones(tuple(shape[:2]), dtype=torch.bool)
        mask = torch.cat(masks)
        check_aligned(mask, shape, alias, self.mask_target)
        return mask

    def _attention_summary(self, p: Tensor, mask: Tensor) -> dict[str, Any]:
        causal = is_causal_pattern(p)
        pattern = mean_pattern(p, mask)  # [H, T, S]
        heads = {
            "entropy": head_entropy(p, mask).tolist(),
            "entropy_all": head_entropy(p, None).tolist(),
            "kl_uniform": kl_to_uniform(pattern, causal).tolist(),
            "local": local_score(pattern).tolist(),
            "recent": recent_score(pattern).tolist(),
        }
        return {"causal": causal, "uniform_entropy": uniform_causal_entropy(p.shape[-2]) if causal else math.log(p.shape[-1]),
                "pattern_power": pattern_power(pattern).tolist(), **heads}

    def _edge_response(self, pl_module: pl.LightningModule, batches: list[Any], base: list[Tensor],
                       targets: list[ProbeTarget], tokens: list[ProbeTarget] | None) -> dict[str, Any]:
        """Per direction: f_k per token, grouped by the response target (docs/methods.md §10.3), the Δh → target
        probe (docs/methods.md §6.4), and the field's Pearson, token ratio and positional DFT (docs/methods.md §6.5)."""
        who = "FourierAttentionCallback"
        params = self._recorder.selection.params
        theta = self._recorder.flat_params().double()  # [P]
        eps = self.eps_scale * float(theta.norm())
        mask = [t.mask.bool() for t in targets]
        values = torch.cat([t.values[m] for t, m in zip(targets, mask)])  # [n]
        groups = torch.cat([t.groups[:, None].expand_as(m)[m] for t, m in zip(targets, mask)])
        categorical = targets[0].categorical
        token_ids = torch.cat([t.values[m] for t, m in zip(tokens, mask)]) if tokens is not None else None  # [n]
        edge: dict[str, Any] = {"eps": eps}

        def response(direction: Tensor) -> dict[str, Any]:
            """f per token at θ + ε·direction, its spectrum over the target's levels, the Δh probe and the field's
            statistics."""
            deltas, fields = [], []
            with perturbed(params, split_like(theta + eps * direction, params)):
                again = captured_sequences(pl_module, batches, [self.response_module], who,
                                           max_sequences=self.max_sequences)
                for seen, h0, m in zip(again, base, mask):
                    full = seen.outputs[self.response_module].cpu().double() - h0.double()  # [B, T, D]
                    deltas.append(full[m])  # [n_b, D]
                    fields.append(full.square().sum(-1))  # [B, T]
            delta = torch.cat(deltas)  # [n, D]
            f = delta.square().sum(-1)  # [n]
            stats = self._field_statistics(f, values, token_ids, fields, mask)
            with bad_input_is_configuration(f"FourierAttentionCallback (response target {self.response_target!r})"):
                spec = grouped_spectrum(f, values)
                func = run_probes(delta.numpy(), values.numpy(), groups.numpy(), categorical, ("linear",), seed=self.seed)[0]
            out = {"status": "ok", "levels": spec.levels, "power": spec.power.tolist(),
                   "F": spec.concentration, "omega_star": spec.omega_star, "n_bins": spec.n_bins,
                   "baseline": spec.baseline, "elevation": spec.elevation, f"func_{func.metric}": func.value, **stats}
            if self.reference_variant and not categorical:
                out["ref_func_r2"] = reference_func_r2(delta, values, self.ref_seed)
            return out

        for k in self.directions:
            try:
                v = self._spectrum.directions([k])[0].to(theta)  # [P]
            except DirectionUnavailable as err:
                edge[f"v{k}"] = unavailable(str(err))
                continue
            edge[f"v{k}"] = response(v)
            if self.response_blocks:
                masks = attention_block_masks([(b.name, b.offset, b.shape) for b in self._recorder.selection.blocks],
                                              theta.numel())
                edge[f"v{k}"]["blocks"] = {
                    kind: {**response(v * m.to(v.device)), "block_norm": float(v[m.to(v.device)].norm())}
                    if m.any() else unavailable(f"the recorder selects no {kind} coordinates")
                    for kind, m in masks.items()}
        return edge

    def _field_statistics(self, f: Tensor, values: Tensor, token_ids: Tensor | None, fields: list[Tensor],
                          mask: list[Tensor]) -> dict[str, Any]:
        """Pearson(f, target), the token ratio, and the positional DFT of f (unavailable for ragged batches)."""
        out: dict[str, Any] = {"pearson": field_pearson(f, values)}
        if token_ids is not None:
            ratio = token_ratio(f, token_ids, self.token_pair)
            out["token_pair"], out["token_ratio"] = ratio["pair"], ratio["ratio"]
        positions = int(torch.cat(mask).any(0).sum()) if len({tuple(x.shape[1:]) for x in fields}) == 1 else 0
        if positions >= 2:
            pos = positional_field_spectrum(torch.cat(fields), torch.cat(mask))
            out.update({"pos_power": pos["power"], "pos_F": pos["F"], "pos_omega_star": pos["omega_star"]})
        else:
            why = (f"the target has {positions} valid position(s)" if positions else "batches of different lengths")
            out.update({"pos_power": None, "pos_F": math.nan, "pos_omega_star": math.nan,
                        "pos_reason": f"{why}: no positional spectrum"})
        return out

    @override
    def scalars(self, result: dict[str, Any]) -> dict[str, float]:
        out: dict[str, float] = {}
        for alias, e in result["fourier"].items():
            for key in ("top1", "top3", "top5", "omega_star", "dc_share"):
                out[f"fourier/{alias}/{key}"] = float(e[key])
            if self.reference_variant:
                for key in ("top1", "top3", "omega_star"):
                    out[f"fourier/{alias}/ref_{key}"] = float(e[f"ref_{key}"])
        for alias, a in result["attention"].items():
            for key in ("entropy", "kl_uniform", "local", "recent"):
                for h, value in enumerate(a[key]):
                    out[f"attention/{alias}/head{h}/{key}"] = float(value)
            out[f"attention/{alias}/entropy_mean"] = float(np.mean(a["entropy"]))
            if self.mask_target is not None:
                out[f"attention/{alias}/entropy_all"] = float(np.mean(a["entropy_all"]))
        for name, e in result.get("edge", {}).items():
            if name != "eps" and e["status"] == "ok":
                for key in ("F", "omega_star", "elevation", "pearson", "pos_F", "pos_omega_star", "token_ratio",
                            "ref_func_r2"):
                    if key in e:
                        out[f"fourier_edge/{name}/{key}"] = float(e[key])
                metric = next(key for key in e if key.startswith("func_"))
                out[f"fourier_edge/{name}/{metric}"] = float(e[metric])
                for kind, b in e.get("blocks", {}).items():
                    for key in ("F", "omega_star", "elevation"):
                        out[f"fourier_edge/{name}/{kind}/{key}"] = float(b.get(key, math.nan))
        if self._recorder is not None:  # the edge response's tags carry its recorder's name
            out = {self._recorder.tag(k) if k.startswith("fourier_edge/") else k: v for k, v in out.items()}
        return out

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write every result to JSON (rank zero)."""
        if trainer.is_global_zero:
            write_results(trainer, self, self.json_path, "fourier_attention", {"results": self.results})
