"""Determinism for notebooks: one call seeds every random number generator the lessons use."""
from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch.Generator seeded the same way for explicit use."""
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.Generator().manual_seed(seed)


def notebook_setup(seed: int = 0) -> torch.Generator:
    """Seed everything and set matplotlib defaults shared by every lesson; returns the generator."""
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 90, "figure.figsize": (7, 3.5), "axes.grid": False,
                         "axes.titlesize": 11, "axes.labelsize": 10})
    return seed_everything(seed)
