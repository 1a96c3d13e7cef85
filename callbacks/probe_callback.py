"""Probe hidden states for a per-token target at scheduled steps (docs/methods.md §8).

Outputs of named modules are captured by forward hooks on validation batches; the LightningModule supplies
the target (``probe_targets``). Linear, quadratic and MLP probes are fit on a by-sequence-group split.
"""
from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from typing_extensions import override

from .functional.probe import PROBE_KINDS, run_probes
from .utils.errors import ConfigurationError, bad_input_is_configuration
from .utils.hidden_states import module_aliases
from .utils.results import write_results
from .utils.schedule import ScheduledCallback
from .utils.token_probes import check_token_probe, collect_token_samples
from .utils.trainer import log_scalars


class ProbeCallback(ScheduledCallback):
    """Fit probes from the outputs of ``modules`` to the target ``target`` at scheduled steps; log held-out scores.

    Logs ``probe/{alias}/{probe}_r2`` (regression) or ``probe/{alias}/{probe}_acc`` (categorical target) at
    ``trainer.global_step``; keeps every score in ``results`` and writes them to JSON at fit end.

    Args:
        modules: module names as in ``named_modules()`` (e.g. ``encoder.layers.1``), or {alias: module name}.
        target: name of a target returned by the LightningModule's ``probe_targets(batch)`` (e.g. ``depth``).
        probes: any of ``linear`` (standardise + Ridge / logistic), ``quadratic`` (standardise + degree-2
            features with squares + Ridge / logistic), ``mlp`` (standardise + 64-unit ReLU MLP, early stopping).
        steps: optimizer steps after which to probe.
        after_grok: offsets after the grok step (needs a ``GrokDetector``).
        dataloader_idx: validation dataloader whose batches are probed.
        max_sequences: probe the first this many sequences of that dataloader (None: all); 300 as the reference.
        max_tokens: keep a seeded random subset of at most this many tokens (None: all). With 3000, the three
            probes of one Dyck layer (D=128; the quadratic probe has D + D(D+1)/2 = 8,384 features) took ~10 s
            on one busy CPU core (quadratic ~4 s, MLP ~6 s, linear < 0.1 s).
        test_fraction: fraction of sequence groups held out, in (0, 1).
        seed: seed of the token subset, the group split and the MLP.
        ridge_alpha: L2 strength of the linear probe (Ridge alpha; logistic C = 1/alpha).
        quadratic_alpha: L2 strength of the quadratic probe (the reference's 10).
        standardize: standardise features before every probe (default); False fits raw features as the
            reference did, whose fixed Ridge penalty makes R² fall when the representation shrinks.
        json_path: where to write ``results`` at fit end; default ``{log_dir}/probes_{target}.json``
            (``probes_{target}_{i}.json`` for the i-th further ProbeCallback of the trainer).

    Example::

        from lightning.pytorch import Trainer
        from lit_grok.callbacks import ProbeCallback

        probe = ProbeCallback(modules={"layer_1": "encoder.layers.1"}, target="depth", steps=[200, 600, 2000])
        trainer = Trainer(callbacks=[probe])
        # after trainer.fit(model): probe.results, also in {log_dir}/probes_depth.json
    """

    def __init__(
        self,
        modules: list[str] | dict[str, str],
        target: str,
        probes: list[str] = list(PROBE_KINDS),
        steps: list[int] = [],
        after_grok: list[int] = [],
        dataloader_idx: int = 0,
        max_sequences: int | None = 300,
        max_tokens: int | None = 3000,
        test_fraction: float = 0.3,
        seed: int = 0,
        ridge_alpha: float = 1.0,
        quadratic_alpha: float = 10.0,
        standardize: bool = True,
        json_path: str | None = None,
    ) -> None:
        self.modules = module_aliases(modules, "ProbeCallback")
        unknown = [p for p in probes if p not in PROBE_KINDS]
        if unknown or not probes:
            raise ConfigurationError(f"ProbeCallback: unknown probe kind {unknown[0] if unknown else None!r}; choose from {PROBE_KINDS}")
        if not 0 < test_fraction < 1:
            raise ConfigurationError(f"ProbeCallback: test_fraction must lie in (0, 1), got {test_fraction}")
        for name, value in (("max_sequences", max_sequences), ("max_tokens", max_tokens)):
            if value is not None and value < 2:
                raise ConfigurationError(f"ProbeCallback: {name} must be >= 2 or None, got {value}")
        if not (ridge_alpha > 0 and quadratic_alpha > 0):
            raise ConfigurationError(f"ProbeCallback: ridge_alpha and quadratic_alpha must be > 0, got {ridge_alpha}, {quadratic_alpha}")
        self.target = target
        self.probes = tuple(probes)
        super().__init__(steps, after_grok)
        self.dataloader_idx = dataloader_idx
        self.max_sequences = max_sequences
        self.max_tokens = max_tokens
        self.test_fraction = test_fraction
        self.seed = seed
        self.ridge_alpha = ridge_alpha
        self.quadratic_alpha = quadratic_alpha
        self.standardize = standardize
        self.json_path = json_path

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(modules=self.modules, target=self.target, standardize=self.standardize)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check the module, the module names and the target before the first step."""
        check_token_probe(trainer, pl_module, self.modules, self.target, self.dataloader_idx, "ProbeCallback")

    @override
    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[dict[str, Any]]:
        """One record per (module, probe) with its held-out score."""
        samples = collect_token_samples(trainer, pl_module, self.modules, self.target, self.dataloader_idx,
                                        self.max_sequences, "ProbeCallback")
        metrics, records = {}, []
        for alias, features in samples.features.items():
            with bad_input_is_configuration("ProbeCallback"):
                found = run_probes(features, samples.values, samples.groups, samples.categorical, self.probes, self.test_fraction, self.seed,
                                   self.max_tokens, self.ridge_alpha, self.quadratic_alpha, self.standardize)
            for res in found:
                metrics[f"probe/{alias}/{res.kind}_{res.metric}"] = res.value
                records.append({"module": alias, "probe": res.kind, "metric": res.metric, "value": res.value,
                                "n_train": res.n_train, "n_test": res.n_test})
        log_scalars(trainer, metrics)
        return records

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write every result to JSON (rank zero)."""
        if not trainer.is_global_zero:
            return
        payload = {"target": self.target, "modules": self.modules, "results": self.results}
        write_results(trainer, self, self.json_path, f"probes_{self.target}", payload)
