"""Shared test fixtures."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: small tensor ops are as fast, and on a busy 2-core machine two
    threads spin against each other (a DataLoader worker uses one thread too)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
