"""Reusable Lightning callbacks that watch the spectral edge of parameter updates.

They know nothing of Dyck or SCAN: any LightningModule trained by a torch optimizer works. The package has three
rooms: the ``callbacks/`` folder holds the public callbacks (one per file, named after its class), ``functional`` the
pure math each of them uses (one module per callback, no Lightning), and ``utils`` the plumbing
(parameter selection, evaluation, hidden-state capture, result files, the scheduling and per-row bases, protocols).

Import it as ``lit_grok.callbacks`` inside other projects (a ``callbacks.py`` of theirs cannot shadow that name);
the modules live in the top-level ``callbacks/`` folder, which is this package's ``__path__``, and the short name
``callbacks`` is the same package (one copy of every class), where it is not shadowed.
"""
from pathlib import Path

__path__ = [str(Path(__file__).resolve().parents[2] / "callbacks")]  # the modules: <repo or site-packages>/callbacks

from .ablation_callback import AblationCallback
from .edge_decomposer import EdgeDecomposer
from .fourier_attention_callback import FourierAttentionCallback
from .gram_spectrum import GramSpectrum
from .grok_detector import GrokDetector
from .interrupt_checkpoint import InterruptCheckpoint
from .perturbation_callback import PerturbationCallback
from .probe_callback import ProbeCallback
from .rng_states import RNGStates
from .update_recorder import RowEvent, UpdateRecorder
from .utils.causal import CausalTestCallback
from .utils.decay_rules import DecayRule, DecayStep, register_decay_rule
from .utils.errors import ConfigurationError, DirectionUnavailable, LitGrokError, NonFiniteError, RunInterrupted
from .utils.protocols import (
    DirectionSource, DistinctRowsModule, EvaluableModule, GrokStepSource, ProbeableModule, ProbeTarget,
    QueryAttention, QueryAttentionModule, sequence_keys,
)
from .utils.row_analysis import GramWindow, RowAnalysis, WindowRow
from .utils.schedule import RunSchedule, ScheduledCallback
from .weight_decay_schedule import WeightDecaySchedule
from .depth_geometry_callback import DepthGeometryCallback
from .component_effect_callback import ComponentEffectCallback
from .qk_directions_callback import QKDirectionsCallback
from .loss_decomposition_callback import LossDecompositionCallback

__all__ = [
    # the public callbacks
    "AblationCallback", "EdgeDecomposer", "FourierAttentionCallback", "GramSpectrum", "GrokDetector",
    "InterruptCheckpoint", "PerturbationCallback", "ProbeCallback", "RNGStates", "UpdateRecorder", "WeightDecaySchedule",
    "DepthGeometryCallback", "ComponentEffectCallback", "QKDirectionsCallback",
    # extension points: the bases a new analysis subclasses, and the protocols a module or callback implements
    "CausalTestCallback", "GramWindow", "RowAnalysis", "RowEvent", "RunSchedule", "ScheduledCallback", "WindowRow",
    "DecayRule", "DecayStep", "register_decay_rule",
    "DirectionSource", "DistinctRowsModule", "EvaluableModule", "GrokStepSource", "ProbeableModule", "ProbeTarget", "QueryAttention", "QueryAttentionModule",
    "sequence_keys",
    # errors
    "ConfigurationError", "DirectionUnavailable", "LitGrokError", "NonFiniteError", "RunInterrupted",
    # further public callbacks
    "LossDecompositionCallback",
]
