"""Geometry of hidden states grouped by a per-token regression target, at scheduled steps (docs/methods.md §8.1).

Outputs of named modules are captured by forward hooks on validation batches; the LightningModule supplies the
target (``probe_targets``). Per module: Ridge R² of the target (in-sample, as the reference, and held out by
sequence group), the PCA₁ share of the level centroids and the mean distance between consecutive centroids.
"""
from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from typing_extensions import override

from .functional.depth_geometry import depth_geometry
from .utils.errors import ConfigurationError, bad_input_is_configuration
from .utils.hidden_states import module_aliases
from .utils.results import write_results
from .utils.schedule import ScheduledCallback
from .utils.token_probes import check_token_probe, collect_token_samples
from .utils.trainer import log_scalars

SCALARS = ("r2_in_sample", "r2_heldout", "pca1_share", "mean_distance", "distance_over_spread")


class DepthGeometryCallback(ScheduledCallback):
    """How the levels of a regression target sit in the outputs of ``modules``: centroid per level, their PCA and
    spacing, and how linearly the target reads out, at scheduled steps.

    Logs ``depth_geometry/{alias}/{r2_in_sample, r2_heldout, pca1_share, mean_distance, distance_over_spread}``
    at ``trainer.global_step``; keeps each record (with the per-level counts, distances and first 5 PCA shares)
    in ``results`` and writes them to JSON at fit end.

    Args:
        modules: module names as in ``named_modules()`` (e.g. ``encoder.layers.1``), or {alias: module name}.
        target: name of a regression target of the LightningModule's ``probe_targets(batch)`` (e.g. ``depth``).
        steps: optimizer steps after which to measure.
        after_grok: offsets after the grok step (needs a ``GrokDetector``).
        dataloader_idx: validation dataloader whose batches are used.
        max_sequences: the first this many sequences of that dataloader (None: all); 500 as the reference.
        ridge_alpha: Ridge penalty of both R² (the reference's 1.0).
        standardize: standardise features before the Ridge; False (default) fits raw features, as the reference.
        test_fraction: fraction of sequence groups held out for ``r2_heldout``, in (0, 1).
        seed: seed of the group split.
        json_path: where to write ``results`` at fit end; default ``{log_dir}/depth_geometry_{target}.json``
            (``depth_geometry_{target}_{i}.json`` for the i-th further DepthGeometryCallback of the trainer).

    Example::

        from lightning.pytorch import Trainer
        from lit_grok.callbacks import DepthGeometryCallback

        geometry = DepthGeometryCallback(modules={"layer_1": "encoder.layers.1"}, target="depth", steps=[600, 5000])
        trainer = Trainer(callbacks=[geometry])
        # after trainer.fit(model): geometry.results, also in {log_dir}/depth_geometry_depth.json
    """

    def __init__(
        self,
        modules: list[str] | dict[str, str],
        target: str,
        steps: list[int] = [],
        after_grok: list[int] = [],
        dataloader_idx: int = 0,
        max_sequences: int | None = 500,
        ridge_alpha: float = 1.0,
        standardize: bool = False,
        test_fraction: float = 0.3,
        seed: int = 0,
        json_path: str | None = None,
    ) -> None:
        self.modules = module_aliases(modules, "DepthGeometryCallback")
        if max_sequences is not None and max_sequences < 2:
            raise ConfigurationError(f"DepthGeometryCallback: max_sequences must be >= 2 or None, got {max_sequences}")
        if not ridge_alpha > 0:
            raise ConfigurationError(f"DepthGeometryCallback: ridge_alpha must be > 0, got {ridge_alpha}")
        if not 0 < test_fraction < 1:
            raise ConfigurationError(f"DepthGeometryCallback: test_fraction must lie in (0, 1), got {test_fraction}")
        super().__init__(steps, after_grok)
        self.target = target
        self.dataloader_idx = dataloader_idx
        self.max_sequences = max_sequences
        self.ridge_alpha = ridge_alpha
        self.standardize = standardize
        self.test_fraction = test_fraction
        self.seed = seed
        self.json_path = json_path

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(modules=self.modules, target=self.target, standardize=self.standardize)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check the module, the module names and the target before the first step."""
        found = check_token_probe(trainer, pl_module, self.modules, self.target, self.dataloader_idx, "DepthGeometryCallback")
        if found.categorical:
            raise ConfigurationError(f"DepthGeometryCallback: target {self.target!r} is categorical; name a regression "
                                     "target (its levels must be ordered)")

    @override
    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[dict[str, Any]]:
        """One record per module."""
        samples = collect_token_samples(trainer, pl_module, self.modules, self.target, self.dataloader_idx,
                                        self.max_sequences, "DepthGeometryCallback")
        metrics, records = {}, []
        for alias, features in samples.features.items():
            with bad_input_is_configuration("DepthGeometryCallback"):
                geometry = depth_geometry(features, samples.values, samples.groups, self.ridge_alpha, self.standardize,
                                          self.test_fraction, self.seed)
            metrics.update({f"depth_geometry/{alias}/{key}": geometry[key] for key in SCALARS})
            records.append({"module": alias, **geometry})
        log_scalars(trainer, metrics)
        return records

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write every result to JSON (rank zero)."""
        if not trainer.is_global_zero:
            return
        payload = {"target": self.target, "modules": self.modules, "ridge_alpha": self.ridge_alpha,
                   "standardize": self.standardize, "max_sequences": self.max_sequences, "results": self.results}
        write_results(trainer, self, self.json_path, f"depth_geometry_{self.target}", payload)
