"""Reusable Lightning callbacks that watch the spectral edge of parameter updates.

They know nothing of Dyck or SCAN: any LightningModule trained by a torch optimizer works.
"""
from callbacks.ablation_callback import AblationCallback
from callbacks.edge_decomposer import EdgeDecomposer
from callbacks.errors import ConfigurationError, LitGrokError, NonFiniteError
from callbacks.fourier_attention_callback import FourierAttentionCallback
from callbacks.gram_spectrum import DirectionUnavailable, GramSpectrum
from callbacks.grok_detector import GrokDetector
from callbacks.interrupt_checkpoint import InterruptCheckpoint, RunInterrupted
from callbacks.perturbation_callback import PerturbationCallback
from callbacks.probe_callback import ProbeCallback
from callbacks.rng_states import RNGStates
from callbacks.schedule import RunSchedule, ScheduledCallback
from callbacks.update_recorder import UpdateRecorder
from callbacks.weight_decay_schedule import WeightDecaySchedule

__all__ = [
    "AblationCallback", "ConfigurationError", "DirectionUnavailable", "EdgeDecomposer", "FourierAttentionCallback",
    "GramSpectrum", "GrokDetector", "InterruptCheckpoint", "LitGrokError", "NonFiniteError", "PerturbationCallback",
    "ProbeCallback", "RNGStates", "RunInterrupted", "RunSchedule", "ScheduledCallback", "UpdateRecorder", "WeightDecaySchedule",
]
