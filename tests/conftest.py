"""Shared test settings."""
import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    """Tests use tiny tensors: one torch thread avoids two threads fighting for a core (10x faster here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
