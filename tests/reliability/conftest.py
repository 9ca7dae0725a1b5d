"""Reliability suite set-up: Hypothesis profile and one torch thread (stable timings)."""

from __future__ import annotations

import pytest
import torch

from . import profiles  # noqa: F401  (registers and loads the Hypothesis profile)


@pytest.fixture(autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
