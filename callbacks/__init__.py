"""Reusable Lightning callbacks that watch the spectral edge of parameter updates.

They know nothing of Dyck or SCAN: any LightningModule trained by a torch optimizer works.
"""

from callbacks.edge_decomposer import EdgeDecomposer
from callbacks.gram_spectrum import DirectionUnavailable, GramSpectrum
from callbacks.update_recorder import UpdateRecorder
