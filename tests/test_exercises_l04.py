"""Lesson 04 checks: the references pass (and match helpers.patching), plausible mistakes fail."""
from __future__ import annotations

import pytest
import torch

from helpers.checks import FAILED, NOT_IMPLEMENTED, PASSED
from helpers.exercises import l04
from helpers.patching import attribution_patch, residual_sweep


def _raises(*args):
    raise RuntimeError("boom")


def _stub(*args):
    raise NotImplementedError


# --- logit_diff -------------------------------------------------------------------------------

def swapped_answers(logits, io_ids, s_ids):
    return l04.reference_logit_diff(logits, s_ids, io_ids)


def first_position(logits, io_ids, s_ids):
    rows = torch.arange(logits.shape[0])
    return (logits[rows, 0, io_ids] - logits[rows, 0, s_ids]).mean()


def probabilities(logits, io_ids, s_ids):
    probs = logits[:, -1].softmax(-1)
    rows = torch.arange(logits.shape[0])
    return (probs[rows, io_ids] - probs[rows, s_ids]).mean()


def summed_not_averaged(logits, io_ids, s_ids):
    return l04.reference_logit_diff(logits, io_ids, s_ids) * logits.shape[0]


def test_logit_diff_reference_passes():
    assert l04.check_logit_diff(l04.reference_logit_diff).status == PASSED


@pytest.mark.parametrize("wrong", [swapped_answers, first_position, probabilities, summed_not_averaged])
def test_logit_diff_mistakes_fail(wrong):
    assert l04.check_logit_diff(wrong).status == FAILED, wrong.__name__


def test_logit_diff_stub_and_crash():
    assert l04.check_logit_diff(_stub).status == NOT_IMPLEMENTED
    assert l04.check_logit_diff(_raises).status == FAILED


# --- patch_resid_pre --------------------------------------------------------------------------

def _patched(model, source_tokens, target_tokens, metric, layer, where):
    name = f"blocks.{layer}.hook_resid_pre"
    with torch.no_grad():
        _, cache = model.run_with_cache(source_tokens, names_filter=[name])

        def hook(resid, hook):
            resid = resid.clone()
            resid[:, where] = cache[name][:, where]
            return resid

        return metric(model.run_with_hooks(target_tokens, fwd_hooks=[(name, hook)]))


def position_before(model, clean, corrupted, metric, layer, pos):
    return _patched(model, clean, corrupted, metric, layer, pos - 1)


def every_position(model, clean, corrupted, metric, layer, pos):
    return _patched(model, clean, corrupted, metric, layer, slice(None))


def corrupted_into_clean(model, clean, corrupted, metric, layer, pos):
    return _patched(model, corrupted, clean, metric, layer, pos)


def leaves_hook_on(model, clean, corrupted, metric, layer, pos):
    model.add_hook(f"blocks.{layer}.hook_resid_pre", lambda resid, hook: resid * 0)
    return l04.reference_patch_resid_pre(model, clean, corrupted, metric, layer, pos)


def test_patch_reference_passes(smollm2):
    assert l04.check_patch_resid_pre(l04.reference_patch_resid_pre, smollm2).status == PASSED


@pytest.mark.parametrize("wrong", [position_before, every_position, corrupted_into_clean])
def test_patch_mistakes_fail(smollm2, wrong):
    assert l04.check_patch_resid_pre(wrong, smollm2).status == FAILED, wrong.__name__


def test_patch_stub_crash_and_leftover_hooks(smollm2):
    assert l04.check_patch_resid_pre(_stub, smollm2).status == NOT_IMPLEMENTED
    assert l04.check_patch_resid_pre(_raises, smollm2).status == FAILED
    l04.check_patch_resid_pre(leaves_hook_on, smollm2)
    # the check removed the learner's stray hook: the reference still passes afterwards
    assert l04.check_patch_resid_pre(l04.reference_patch_resid_pre, smollm2).status == PASSED


def test_patch_reference_matches_the_fast_sweep(smollm2):
    pairs, metric = l04.exercise_pairs(smollm2)
    sweep = residual_sweep(smollm2, pairs.clean_tokens, pairs.corrupted_tokens, metric, layers=[0, 22], progress=False)
    for row, layer in enumerate([0, 22]):
        for pos in (10, 14):
            got = l04.reference_patch_resid_pre(smollm2, pairs.clean_tokens, pairs.corrupted_tokens, metric, layer, pos)
            assert float(got) == pytest.approx(float(sweep[row, pos]), abs=1e-4)


# --- attribution_patch_resid ------------------------------------------------------------------

def flipped_sign(model, clean, corrupted, metric):
    return -l04.reference_attribution_patch_resid(model, clean, corrupted, metric)


def gradient_on_clean(model, clean, corrupted, metric):
    # (clean - corrupted) * gradient, but the gradient taken on the CLEAN run: the reference with the
    # two runs swapped computes (corrupted - clean) * grad_clean, so negate it.
    return -l04.reference_attribution_patch_resid(model, corrupted, clean, metric)


def test_attribution_reference_passes(smollm2):
    assert l04.check_attribution_patch_resid(l04.reference_attribution_patch_resid, smollm2).status == PASSED


@pytest.mark.parametrize("wrong", [flipped_sign, gradient_on_clean])
def test_attribution_mistakes_fail(smollm2, wrong):
    assert l04.check_attribution_patch_resid(wrong, smollm2).status == FAILED, wrong.__name__


def test_attribution_stub_and_crash(smollm2):
    assert l04.check_attribution_patch_resid(_stub, smollm2).status == NOT_IMPLEMENTED
    assert l04.check_attribution_patch_resid(_raises, smollm2).status == FAILED


def test_attribution_reference_matches_helpers_patching(smollm2):
    pairs, metric = l04.exercise_pairs(smollm2)
    ours = l04.reference_attribution_patch_resid(smollm2, pairs.clean_tokens, pairs.corrupted_tokens, metric)
    theirs = attribution_patch(smollm2, pairs.clean_tokens, pairs.corrupted_tokens, metric, sites=("resid_pre",))
    assert torch.allclose(ours, theirs["resid_pre"], atol=1e-4)
