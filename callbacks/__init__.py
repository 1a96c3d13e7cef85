"""Reusable Lightning callbacks that watch the spectral edge of parameter updates.

They know nothing of Dyck or SCAN: any LightningModule trained by a torch optimizer works.
"""

from callbacks.edge_decomposer import EdgeDecomposer
from callbacks.gram_spectrum import DirectionUnavailable, GramSpectrum
from callbacks.update_recorder import UpdateRecorder
from callbacks.fourier_attention_callback import FourierAttentionCallback
from callbacks.probe_callback import ProbeCallback
from callbacks.weight_decay_schedule import WeightDecaySchedule
from callbacks.ablation_callback import AblationCallback
from callbacks.perturbation_callback import PerturbationCallback
from callbacks.schedule import RunSchedule
