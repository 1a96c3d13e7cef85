"""Shared test settings."""
import pytest
import torch
from threadpoolctl import threadpool_limits


@pytest.fixture(autouse=True)
def single_thread():
    """Tests use tiny tensors: one torch thread (and one BLAS thread for numpy / scikit-learn) avoids two threads
    fighting for a core (10x faster here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1, user_api="blas"):
        yield
    torch.set_num_threads(before)
