"""Reusable Lightning callbacks that watch the spectral edge of parameter updates.

They know nothing of Dyck or SCAN: any LightningModule trained by a torch optimizer works.
"""
from callbacks.ablation_callback import AblationCallback
from callbacks.edge_decomposer import EdgeDecomposer
from callbacks.fourier_attention_callback import FourierAttentionCallback
from callbacks.gram_spectrum import DirectionUnavailable, GramSpectrum
from callbacks.grok_detector import GrokDetector
from callbacks.perturbation_callback import PerturbationCallback
from callbacks.probe_callback import ProbeCallback
from callbacks.schedule import RunSchedule, ScheduledCallback
from callbacks.update_recorder import UpdateRecorder
from callbacks.weight_decay_schedule import WeightDecaySchedule

__all__ = [
    "AblationCallback", "DirectionUnavailable", "EdgeDecomposer", "FourierAttentionCallback", "GramSpectrum",
    "GrokDetector", "PerturbationCallback", "ProbeCallback", "RunSchedule", "ScheduledCallback", "UpdateRecorder",
    "WeightDecaySchedule",
]
