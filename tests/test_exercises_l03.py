"""Lesson 03 checks pass the references and fail the plausible mistakes."""
from __future__ import annotations

import numpy as np
import torch

from helpers.checks import FAILED, NOT_IMPLEMENTED, PASSED
from helpers.exercises import l03
from helpers.probes import fit_probe, probe_score


def stub(*args, **kwargs):
    raise NotImplementedError


def crash(*args, **kwargs):
    raise RuntimeError("boom")


CHECKS = [
    (l03.check_diff_of_means_direction, l03.reference_diff_of_means_direction),
    (l03.check_heldout_probe_accuracy, l03.reference_heldout_probe_accuracy),
    (l03.check_selectivity, l03.reference_selectivity),
]


def test_references_pass():
    for check, reference in CHECKS:
        assert check(reference).status == PASSED, check.__name__


def test_stubs_are_not_implemented_and_crashes_are_failures():
    for check, _ in CHECKS:
        assert check(stub).status == NOT_IMPLEMENTED
        result = check(crash)
        assert result.status == FAILED and "RuntimeError" in result.message


# ---- difference of means

def dom_wrong_sign(acts, labels):
    direction = acts[labels == 0].mean(0) - acts[labels == 1].mean(0)
    return direction / direction.norm()


def dom_not_normalised(acts, labels):
    return acts[labels == 1].mean(0) - acts[labels == 0].mean(0)


def dom_wrong_axis(acts, labels):
    direction = acts[labels == 1].mean(1) - acts[labels == 0].mean(1)[: int((labels == 1).sum())]
    return direction / direction.norm()


def dom_integer_indexing(acts, labels):
    # acts[labels] with 0/1 integer labels picks rows 0 and 1, not the rows of each class
    direction = acts[labels].mean(0) - acts[1 - labels].mean(0)
    return direction / direction.norm()


def test_diff_of_means_mistakes_fail():
    for wrong in (dom_wrong_sign, dom_not_normalised, dom_wrong_axis, dom_integer_indexing):
        assert l03.check_diff_of_means_direction(wrong).status == FAILED, wrong.__name__


# ---- held-out probe

def probe_scored_on_training_data(acts, labels, groups, test_fraction=0.25, seed=0):
    return probe_score(fit_probe(acts, labels), acts, labels)


def probe_split_per_prompt(acts, labels, groups, test_fraction=0.25, seed=0):
    order = np.random.default_rng(seed).permutation(len(groups))
    n_test = int(test_fraction * len(groups))
    test, train = order[:n_test], order[n_test:]
    return probe_score(fit_probe(acts[train], labels[train]), acts[test], labels[test])


def probe_trained_and_scored_on_test_side(acts, labels, groups, test_fraction=0.25, seed=0):
    held_out = set(sorted(set(groups))[: int(test_fraction * len(set(groups)))])
    test = torch.tensor([g in held_out for g in groups])
    return probe_score(fit_probe(acts[test], labels[test]), acts[test], labels[test])


def constant_chance(acts, labels, groups, test_fraction=0.25, seed=0):
    return 0.5


def test_heldout_probe_mistakes_fail():
    for wrong in (probe_scored_on_training_data, probe_split_per_prompt, probe_trained_and_scored_on_test_side,
                  constant_chance):
        assert l03.check_heldout_probe_accuracy(wrong).status == FAILED, wrong.__name__


def test_heldout_probe_check_accepts_other_honest_splits():
    def other_seed(acts, labels, groups, test_fraction=0.25, seed=0):
        return l03.reference_heldout_probe_accuracy(acts, labels, groups, test_fraction, seed=seed + 7)
    assert l03.check_heldout_probe_accuracy(other_seed).status == PASSED


def test_leak_message_names_the_problem():
    message = l03.check_heldout_probe_accuracy(probe_split_per_prompt).message
    assert "held out entirely" in message and "between 0.25 and 0.75" in message


# ---- selectivity

def selectivity_control_on_train(acts, task, control, train_idx, test_idx):
    task_probe, control_probe = fit_probe(acts[train_idx], task[train_idx]), fit_probe(acts[train_idx], control[train_idx])
    return (probe_score(task_probe, acts[test_idx], task[test_idx])
            - probe_score(control_probe, acts[train_idx], control[train_idx]))


def selectivity_sign_swapped(acts, task, control, train_idx, test_idx):
    return -l03.reference_selectivity(acts, task, control, train_idx, test_idx)


def selectivity_control_fitted_on_test(acts, task, control, train_idx, test_idx):
    task_probe, control_probe = fit_probe(acts[train_idx], task[train_idx]), fit_probe(acts[test_idx], control[test_idx])
    return (probe_score(task_probe, acts[test_idx], task[test_idx])
            - probe_score(control_probe, acts[test_idx], control[test_idx]))


def test_selectivity_mistakes_fail():
    for wrong in (selectivity_control_on_train, selectivity_sign_swapped, selectivity_control_fitted_on_test):
        assert l03.check_selectivity(wrong).status == FAILED, wrong.__name__
