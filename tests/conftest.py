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
    "notebooks/07_failures.ipynb": 424, "notebooks/04_causal_interventions.ipynb": 210,
    "notebooks/06_faithfulness.ipynb": 172, "notebooks/08_features.ipynb": 170,
    "notebooks/03_directions_and_probes.ipynb": 165, "notebooks/04b_ioi_circuit.ipynb": 150,
    "notebooks/02_induction_heads.ipynb": 120, "tests/test_exercises_l03.py": 110, "tests/test_browser.py": 96,
    "notebooks/05_planning.ipynb": 90, "solutions/03_directions_and_probes.ipynb": 86,
    "tests/test_exercises_l04.py": 82, "solutions/04_causal_interventions.ipynb": 72,
    "exercises/03_directions_and_probes.ipynb": 70, "tests/test_exercises_l02.py": 65, "tests/test_exercises_l00.py": 60,
    "exercises/04_causal_interventions.ipynb": 54, "solutions/02_induction_heads.ipynb": 46,
    "solutions/01_attention_patterns.ipynb": 49, "tests/test_path_patching.py": 45,
    "solutions/00_ai_microscope.ipynb": 40, "solutions/08_features.ipynb": 38, "exercises/08_features.ipynb": 38,
    "tests/test_exercises_l01.py": 37, "solutions/07_failures.ipynb": 35, "exercises/07_failures.ipynb": 35,
}


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: SLOW_FIRST.get(item.nodeid.split("::")[0], 0), reverse=True)  # stable: cells keep their order
