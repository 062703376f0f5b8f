"""Lesson 03 exercises: a difference-of-means direction, a probe scored on held-out entities, selectivity.

The cases use small synthetic activations whose truth is known by construction, so each check can
tell a correct answer from the classic mistakes:

* ``noise_data``: every group (entity) has its own random feature vector and a random label. Nothing
  generalises to a new group, so an honest held-out accuracy is near chance (0.5); a probe scored on
  its training prompts, or on a split that lets a group's prompts fall on both sides, memorises the
  group and scores near 1.
* ``signal_data``: the label shifts every prompt along one direction, so an honest probe generalises.
"""
from __future__ import annotations

import numpy as np
import torch

from helpers.checks import Case, CheckResult, check
from helpers.probes import diff_of_means, fit_probe, probe_score


# ------------------------------------------------------------------------------------ synthetic data

def group_data(n_groups: int = 200, per_group: int = 3, d: int = 64, signal: float = 0.0, seed: int = 0):
    """(acts [n, d], labels [n], groups list[str]): a random vector per group plus prompt noise, labels
    random per group (balanced); `signal` adds label * signal along a fixed direction."""
    gen = torch.Generator().manual_seed(seed)
    group_vectors = torch.randn(n_groups, d, generator=gen)
    group_labels = torch.randperm(n_groups, generator=gen) % 2
    direction = torch.randn(d, generator=gen)
    direction /= direction.norm()
    index = torch.arange(n_groups).repeat_interleave(per_group)
    acts = group_vectors[index] + 0.3 * torch.randn(len(index), d, generator=gen)
    labels = group_labels[index]
    acts += signal * (2.0 * labels[:, None] - 1.0) * direction
    return acts, labels, [f"entity{int(i)}" for i in index]


# ------------------------------------------------------------------ exercise 1: difference of means

def reference_diff_of_means_direction(acts: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Unit vector [d] pointing from the mean of class 0 to the mean of class 1. acts [n, d], labels [n]."""
    return diff_of_means(acts, labels)


def _dom_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(3)
    cases = []
    for name, n, d in (("40 prompts, d=8", 40, 8), ("12 prompts, d=5 (unbalanced classes)", 12, 5)):
        acts = torch.randn(n, d, generator=gen) + 2.0
        labels = (torch.arange(n) % (2 if n == 40 else 3) == 0).long()
        acts[labels == 1, 0] += 3.0
        cases.append(Case(name, (acts, labels), reference_diff_of_means_direction(acts, labels),
                          hint="mean of the class-1 rows minus mean of the class-0 rows (average over axis 0, "
                               "the prompts), then divide by its norm so the direction has length 1."))
    return cases


def check_diff_of_means_direction(fn) -> CheckResult:
    """Check a difference-of-means direction; never raises."""
    return check("diff_of_means_direction", fn, _dom_cases(), atol=1e-5)


# ---------------------------------------------------------- exercise 2: a probe with a proper split

def reference_heldout_probe_accuracy(acts: torch.Tensor, labels: torch.Tensor, groups: list[str],
                                     test_fraction: float = 0.25, seed: int = 0) -> float:
    """Hold out a random `test_fraction` of the groups (all their prompts), fit a probe on the rest,
    return its accuracy on the held-out prompts."""
    rng = np.random.default_rng(seed)
    unique = sorted(set(groups))
    held_out = set(rng.permutation(unique)[:max(1, round(test_fraction * len(unique)))].tolist())
    test = torch.tensor([g in held_out for g in groups])
    probe = fit_probe(acts[~test], labels[~test])
    return probe_score(probe, acts[test], labels[test])


def _in_range(got, expected: tuple[float, float]) -> str | None:
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if not isinstance(got, (int, float, np.floating)):
        return f"expected an accuracy (a float between 0 and 1), got {type(got).__name__} {got!r}"[:200]
    low, high = expected
    if not low <= float(got) <= high:
        return f"expected an accuracy between {low} and {high}, got {float(got):.3f}"
    return None


def _split_cases() -> list[Case]:
    # d > number of groups, so a leaky probe can memorise every group; 50 held-out groups keep an
    # honest probe's accuracy within about +-0.1 of chance whatever split the learner draws.
    noise = group_data(n_groups=200, d=512, signal=0.0, seed=1)
    signal = group_data(n_groups=200, d=512, signal=4.0, seed=2)
    return [
        Case("random label per entity (nothing to generalise)", (*noise,), (0.25, 0.75), kwargs={"test_fraction": 0.25},
             hint="an honest probe cannot predict random labels of entities it never saw, so its accuracy is "
                  "near chance. Near 1.0 means the test prompts' entities were seen in training: score only "
                  "on prompts whose group is held out entirely (not a random subset of prompts), and never on "
                  "the training prompts."),
        Case("label shifts a direction (should generalise)", (*signal,), (0.9, 1.0), kwargs={"test_fraction": 0.25},
             hint="this data has a real, shared signal: a probe trained on some entities should score above "
                  "0.9 on the held-out ones. Fit on the training side, score on the test side."),
    ]


def check_heldout_probe_accuracy(fn) -> CheckResult:
    """Check a held-out-entity probe by what its accuracy must be on data built to expose leaks; never raises."""
    return check("heldout_probe_accuracy", fn, _split_cases(), compare_fn=_in_range)


# ----------------------------------------------------------------------------- exercise 3: selectivity

def reference_selectivity(acts: torch.Tensor, task_labels: torch.Tensor, control_labels: torch.Tensor,
                          train_idx, test_idx) -> float:
    """Test accuracy of a probe for the task minus test accuracy of a probe for the control task
    (both fitted with fit_probe on train_idx, scored with probe_score on test_idx)."""
    task = fit_probe(acts[train_idx], task_labels[train_idx])
    control = fit_probe(acts[train_idx], control_labels[train_idx])
    return (probe_score(task, acts[test_idx], task_labels[test_idx])
            - probe_score(control, acts[test_idx], control_labels[test_idx]))


def _selectivity_cases() -> list[Case]:
    cases = []
    for name, seed in (("by-prompt split", 4), ("another draw", 5)):
        # Task: a shared signal. Control: random labels per group, learnable only by memorising groups.
        acts, task_labels, groups = group_data(n_groups=60, per_group=4, d=96, signal=1.5, seed=seed)
        _, control_labels, _ = group_data(n_groups=60, per_group=4, d=96, seed=seed + 100)
        order = np.random.default_rng(seed).permutation(len(groups))
        train_idx, test_idx = np.sort(order[60:]), np.sort(order[:60])
        args = (acts, task_labels, control_labels, train_idx, test_idx)
        cases.append(Case(name, args, reference_selectivity(*args),
                          hint="selectivity = task accuracy on the TEST prompts minus control accuracy on the "
                               "same TEST prompts; both probes are fitted on the training prompts only."))
    return cases


def check_selectivity(fn) -> CheckResult:
    """Check selectivity against the reference on two synthetic splits; never raises."""
    return check("selectivity", fn, _selectivity_cases(), atol=1e-6, rtol=0.0)
