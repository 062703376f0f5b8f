"""Lesson 05 checks: the references pass, and plausible mistakes fail."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import planning
from helpers.checks import FAILED, NOT_IMPLEMENTED, PASSED
from helpers.exercises import l05
from helpers.toy import load_toy


@pytest.fixture(scope="module")
def planner_model():
    return load_toy("planner")


def _raises(*args):
    raise RuntimeError("boom")


def _stub(*args):
    raise NotImplementedError


# --- heldout_cell_split -----------------------------------------------------------------------

def random_example_split(cells, words, n_held):
    """Splits examples, not cells: the same cell lands on both sides (a leak)."""
    order = np.random.default_rng(0).permutation(len(cells))
    cut = len(cells) // 4
    return np.sort(order[cut:]), np.sort(order[:cut])


def whole_words_held_out(cells, words, n_held):
    """Holds out every cell of some words: the probe never sees those words at all."""
    test = np.isin(words, np.unique(words)[:4])
    return np.flatnonzero(~test), np.flatnonzero(test)


def ignores_n_held(cells, words, n_held):
    return l05.reference_heldout_cell_split(cells, words, 1)


def boolean_masks(cells, words, n_held):
    train, test = l05.reference_heldout_cell_split(cells, words, n_held)
    mask = np.zeros(len(cells), dtype=bool)
    mask[test] = True
    return ~mask, mask


def random_cells_not_per_word(cells, words, n_held):
    """Holds out a quarter of all cells at random: some words lose several cells, some none."""
    held = np.random.default_rng(1).permutation(np.unique(cells))[:16 * n_held]
    test = np.isin(cells, held)
    return np.flatnonzero(~test), np.flatnonzero(test)


def test_split_reference_passes():
    assert l05.check_heldout_cell_split(l05.reference_heldout_cell_split).status == PASSED


def test_split_any_seed_passes():
    assert l05.check_heldout_cell_split(
        lambda c, w, n: planning.heldout_cell_split(c, w, n_held=n, seed=5)).status == PASSED


@pytest.mark.parametrize("wrong", [random_example_split, whole_words_held_out, ignores_n_held, boolean_masks,
                                   random_cells_not_per_word])
def test_split_mistakes_fail(wrong):
    assert l05.check_heldout_cell_split(wrong).status == FAILED, wrong.__name__


def test_split_stub_and_crash():
    assert l05.check_heldout_cell_split(_stub).status == NOT_IMPLEMENTED
    assert l05.check_heldout_cell_split(_raises).status == FAILED


# --- patch_plan -------------------------------------------------------------------------------

def _patch(model, target, source, hook_name, rows_positions):
    rows, positions = rows_positions
    with torch.no_grad():
        _, cache = model.run_with_cache(source, names_filter=[hook_name])

        def hook(resid, hook):
            resid = resid.clone()
            resid[rows, positions] = cache[hook_name][rows, positions]
            return resid

        return model.run_with_hooks(target, fwd_hooks=[(hook_name, hook)])


def first_row_position_for_all(model, target, source, layer, positions):
    """Uses sequence 0's position for every sequence (wrong for mixed layouts)."""
    rows = torch.arange(target.shape[0])
    return _patch(model, target, source, f"blocks.{layer}.hook_resid_pre", (rows, positions[0].expand(len(rows))))


def resid_post_instead(model, target, source, layer, positions):
    """Patches the output of the layer instead of its input (one layer too late)."""
    rows = torch.arange(target.shape[0])
    return _patch(model, target, source, f"blocks.{layer}.hook_resid_post", (rows, positions))


def position_after(model, target, source, layer, positions):
    rows = torch.arange(target.shape[0])
    return _patch(model, target, source, f"blocks.{layer}.hook_resid_pre", (rows, positions + 1))


def source_and_target_swapped(model, target, source, layer, positions):
    return l05.reference_patch_plan(model, source, target, layer, positions)


def leaves_hook_on(model, target, source, layer, positions):
    model.add_hook(f"blocks.{layer}.hook_resid_pre", lambda resid, hook: resid)
    return l05.reference_patch_plan(model, target, source, layer, positions)


def test_patch_reference_passes(planner_model):
    assert l05.check_patch_plan(l05.reference_patch_plan, planner_model).status == PASSED


def test_patch_reference_matches_the_helper(planner_model):
    from helpers.toy import planner

    target, source = planner.make_patch_pairs(torch.Generator().manual_seed(1), 8)
    for layer in (0, 1):
        got = l05.reference_patch_plan(planner_model, target.tokens, source.tokens, layer, target.nl)
        helper = planning.patch_resid(planner_model, target.tokens, source.tokens, layer, target.nl)
        assert torch.allclose(got, helper)


@pytest.mark.parametrize("wrong", [first_row_position_for_all, resid_post_instead, position_after,
                                   source_and_target_swapped])
def test_patch_mistakes_fail(planner_model, wrong):
    assert l05.check_patch_plan(wrong, planner_model).status == FAILED, wrong.__name__


def test_patch_stub_crash_and_leftover_hook(planner_model):
    assert l05.check_patch_plan(_stub, planner_model).status == NOT_IMPLEMENTED
    assert l05.check_patch_plan(_raises, planner_model).status == FAILED
    result = l05.check_patch_plan(leaves_hook_on, planner_model)
    assert result.status == FAILED and "hook" in str(result).lower()
    assert l05.check_patch_plan(l05.reference_patch_plan, planner_model).status == PASSED


# --- future_agreement -------------------------------------------------------------------------

def next_token_not_after_next(model, predicted, logits):
    """Compares with the model's prediction at t (token t + 1) instead of at t + 1 (token t + 2)."""
    guess = planning.decode_final(model, predicted[:, :-1]).argmax(-1)
    return (guess == logits[:, :-1].argmax(-1)).float().mean().item()


def skips_final_norm(model, predicted, logits):
    with torch.no_grad():
        guess = model.unembed(predicted[:, :-1]).argmax(-1)
    return (guess == logits[:, 1:].argmax(-1)).float().mean().item()


def includes_last_position(model, predicted, logits):
    """Scores the last position too, against itself (there is no t + 1 there)."""
    guess = planning.decode_final(model, predicted).argmax(-1)
    target = torch.cat([logits[:, 1:], logits[:, -1:]], dim=1).argmax(-1)
    return (guess == target).float().mean().item()


def test_agreement_reference_passes(planner_model):
    assert l05.check_future_agreement(l05.reference_future_agreement, planner_model).status == PASSED


@pytest.mark.parametrize("wrong", [next_token_not_after_next, skips_final_norm, includes_last_position])
def test_agreement_mistakes_fail(planner_model, wrong):
    assert l05.check_future_agreement(wrong, planner_model).status == FAILED, wrong.__name__


def test_agreement_stub_and_crash(planner_model):
    assert l05.check_future_agreement(_stub, planner_model).status == NOT_IMPLEMENTED
    assert l05.check_future_agreement(_raises, planner_model).status == FAILED
