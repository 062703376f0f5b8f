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


# Longest files first, so the two workers of `./course test` finish together (longest-processing-time-first
# scheduling; tests/run.py turns off xdist's own reordering by test count). Rough seconds under nbval in a full
# run on the 2-core machine; only the order matters, and a file missing here simply runs after these.
SLOW_FIRST = {
    "notebooks/07_failures.ipynb": 403, "notebooks/04_causal_interventions.ipynb": 212,
    "notebooks/04b_ioi_circuit.ipynb": 180, "notebooks/06_faithfulness.ipynb": 167,
    "notebooks/08_features.ipynb": 150, "notebooks/03_directions_and_probes.ipynb": 150,
    "notebooks/05_planning.ipynb": 109, "notebooks/02_induction_heads.ipynb": 103,
    "solutions/03_directions_and_probes.ipynb": 85, "tests/test_exercises_l03.py": 84, "tests/test_exercises_l04.py": 77,
    "tests/test_exercises_l00.py": 72, "tests/test_browser.py": 70, "solutions/04_causal_interventions.ipynb": 60,
    "tests/test_failures.py": 55, "tests/test_exercises_l02.py": 52, "tests/test_path_patching.py": 50,
    "solutions/01_attention_patterns.ipynb": 45, "solutions/02_induction_heads.ipynb": 38,
    "solutions/07_failures.ipynb": 38, "solutions/00_ai_microscope.ipynb": 37, "solutions/08_features.ipynb": 37,
    "tests/test_patching.py": 32, "exercises/03_directions_and_probes.ipynb": 30, "tests/test_exercises_l01.py": 27,
    "tests/test_grade.py": 27, "exercises/04_causal_interventions.ipynb": 25,
}


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: SLOW_FIRST.get(item.nodeid.split("::")[0], 0), reverse=True)  # stable: cells keep their order
