"""Reusable Lightning callbacks that watch the spectral edge of parameter updates.

They know nothing of Dyck or SCAN: any LightningModule trained by a torch optimizer works. The package has three
rooms: this folder holds the public callbacks (one per file, named after its class), ``callbacks.functional`` the
pure math each of them uses (one module per callback, no Lightning), and ``callbacks.utils`` the plumbing
(parameter selection, evaluation, hidden-state capture, result files, the scheduling and per-row bases, protocols).
"""
from callbacks.ablation_callback import AblationCallback
from callbacks.edge_decomposer import EdgeDecomposer
from callbacks.fourier_attention_callback import FourierAttentionCallback
from callbacks.gram_spectrum import GramSpectrum
from callbacks.grok_detector import GrokDetector
from callbacks.interrupt_checkpoint import InterruptCheckpoint
from callbacks.perturbation_callback import PerturbationCallback
from callbacks.probe_callback import ProbeCallback
from callbacks.rng_states import RNGStates
from callbacks.update_recorder import RowEvent, UpdateRecorder
from callbacks.utils.causal import CausalTestCallback
from callbacks.utils.decay_rules import DecayRule, DecayStep, register_decay_rule
from callbacks.utils.errors import ConfigurationError, DirectionUnavailable, LitGrokError, NonFiniteError, RunInterrupted
from callbacks.utils.protocols import (
    DirectionSource, EvaluableModule, GrokStepSource, ProbeableModule, ProbeTarget, sequence_keys,
)
from callbacks.utils.row_analysis import GramWindow, RowAnalysis, WindowRow
from callbacks.utils.schedule import RunSchedule, ScheduledCallback
from callbacks.weight_decay_schedule import WeightDecaySchedule

__all__ = [
    # the public callbacks
    "AblationCallback", "EdgeDecomposer", "FourierAttentionCallback", "GramSpectrum", "GrokDetector",
    "InterruptCheckpoint", "PerturbationCallback", "ProbeCallback", "RNGStates", "UpdateRecorder", "WeightDecaySchedule",
    # extension points: the bases a new analysis subclasses, and the protocols a module or callback implements
    "CausalTestCallback", "GramWindow", "RowAnalysis", "RowEvent", "RunSchedule", "ScheduledCallback", "WindowRow",
    "DecayRule", "DecayStep", "register_decay_rule",
    "DirectionSource", "EvaluableModule", "GrokStepSource", "ProbeableModule", "ProbeTarget", "sequence_keys",
    # errors
    "ConfigurationError", "DirectionUnavailable", "LitGrokError", "NonFiniteError", "RunInterrupted",
]
