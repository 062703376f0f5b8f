"""Shared fixtures: the expensive model loads happen once per test process."""
from __future__ import annotations

import pytest
import torch

from helpers.models import load


@pytest.fixture(scope="session")
def smollm2():
    """The default offline model, SmolLM2-135M-Instruct (warm cache: about a second)."""
    torch.manual_seed(0)
    return load("smollm2")


@pytest.fixture(scope="session")
def prev_token_model():
    """A shipped 1-layer toy model whose previous-token head is planted by training."""
    return load("prev-token")
