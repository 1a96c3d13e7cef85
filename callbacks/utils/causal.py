"""Base of the callbacks that test the edge causally: at scheduled steps, change the selected weights
along Gram (or control) directions, evaluate on fixed validation batches, log and keep the results.
"""
from __future__ import annotations

from abc import abstractmethod
from typing import Any

import lightning.pytorch as pl
from typing_extensions import override

from ..update_recorder import UpdateRecorder
from ..utils.errors import ConfigurationError
from ..utils.evaluation import evaluation_batches, require_evaluable
from ..utils.protocols import DirectionSource
from ..utils.results import write_results
from ..utils.schedule import ScheduledCallback
from ..utils.trainer import find, log_scalars

SPECTRUM_HINT = "add UpdateRecorder() and GramSpectrum() to them"


def check_recorder_name(recorder: Any, who: str) -> Any:
    """The ``recorder`` argument of an analysis: an UpdateRecorder's name, or None for the trainer's only one."""
    if recorder is not None and (not isinstance(recorder, str) or not recorder):
        raise ConfigurationError(f"{who}: recorder must be the name of an UpdateRecorder or None (the only one), got {recorder!r}")
    return recorder


def find_edge(trainer: pl.Trainer, recorder: str | None) -> tuple[UpdateRecorder, DirectionSource]:
    """The UpdateRecorder named ``recorder`` (None: the only one) and the one GramSpectrum reading it."""
    rec = UpdateRecorder.find(trainer, recorder)
    hint = SPECTRUM_HINT if rec.name is None else f"add GramSpectrum(recorder={rec.name!r})"
    spectrum = find(trainer, DirectionSource, hint, "GramSpectrum", where=lambda cb: cb.bound_recorder is rec)
    return rec, spectrum


def named_state_key(callback: Any, **settings: Any) -> str:
    """A scheduled analysis's state key: its settings, and its recorder's name when one is given."""
    if callback.recorder is not None:
        settings["recorder"] = callback.recorder
    return callback._generate_state_key(**settings)


def check_directions(ks: Any, who: str, name: str) -> list[int]:
    """1-indexed Gram directions, e.g. [1, 2]: a non-empty list of distinct integers k >= 1."""
    ks = list(ks)
    if not ks:
        raise ConfigurationError(f"{who}: {name} is empty; give 1-indexed directions such as [1, 2]")
    if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ConfigurationError(f"{who}: {name} must hold integers k >= 1 (v_1 is the top direction), got {ks}")
    if len(set(ks)) != len(ks):
        raise ConfigurationError(f"{who}: {name} repeats a direction: {ks}")
    return ks


def check_direction_sets(sets: dict[str, list[int]], who: str) -> dict[str, list[int]]:
    """Named sets of 1-indexed Gram directions, e.g. {"edge": [1, 2], "bulk": [3, 4]}."""
    if not isinstance(sets, dict) or not sets:
        raise ConfigurationError(f"{who}: `sets` must name at least one direction set, e.g. {{'edge': [1, 2]}}")
    out = {}
    for name, ks in sets.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ConfigurationError(f"{who}: set names must be non-empty strings without '/', got {name!r}")
        out[name] = check_directions(ks, who, f"direction set {name!r}")
    return out


class CausalTestCallback(ScheduledCallback):
    """Finds the UpdateRecorder (``recorder``: its name; None: the only one) and the GramSpectrum reading it at fit
    start (tags and the JSON file then carry the recorder's name), evaluates on the first ``max_batches``
    batches of validation dataloader ``dataloader_idx`` (materialised once), writes ``json_name`` at fit end.

    Subclasses implement ``run(pl_module, batches) -> result``, ``scalars(result)`` and ``settings()``.
    """

    json_name = "causal_test"  # subclasses name their file

    def __init__(self, steps: list[int], after_grok: list[int], dataloader_idx: int, max_batches: int | None,
                 json_path: str | None, recorder: str | None = None) -> None:
        if max_batches is not None and max_batches < 1:
            raise ConfigurationError(f"{type(self).__name__}: max_batches must be >= 1 or None, got {max_batches}")
        super().__init__(steps, after_grok)
        self.dataloader_idx = dataloader_idx
        self.max_batches = max_batches
        self.json_path = json_path
        self.recorder = check_recorder_name(recorder, type(self).__name__)
        self._batches: list[Any] | None = None

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check the module and find the recorder and the spectrum before the first step."""
        require_evaluable(pl_module, type(self).__name__)
        self._recorder, self._spectrum = find_edge(trainer, self.recorder)
        self._batches = None

    @override
    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[dict[str, Any]]:
        if self._batches is None:
            self._batches = evaluation_batches(trainer, pl_module, self.dataloader_idx, self.max_batches)
        result = self.run(pl_module, self._batches)
        log_scalars(trainer, {self._recorder.tag(k): v for k, v in self.scalars(result).items()})
        return [result]

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write the settings and every result to JSON (rank zero)."""
        if trainer.is_global_zero:
            name = self._recorder.name
            stem = self.json_name if name is None else f"{self.json_name}_{name}"  # {stem}_{name}.json per recorder
            write_results(trainer, self, self.json_path, stem, {**self.settings(), "results": self.results})

    @abstractmethod
    def run(self, pl_module: pl.LightningModule, batches: list[Any]) -> dict[str, Any]:
        """Measure on the current weights and restore them bit-exactly."""

    @abstractmethod
    def scalars(self, result: dict[str, Any]) -> dict[str, float]:
        """The logged scalars of one result."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """What the JSON records beside the results."""
