"""Lesson 00's checks pass the reference and report plausible mistakes, stubs and crashes correctly."""
from __future__ import annotations

import pytest
import torch

from helpers.checks import FAILED, NOT_IMPLEMENTED, PASSED
from helpers.exercises import l00


def stub(*args, **kwargs):
    raise NotImplementedError


def crashing(*args, **kwargs):
    raise IndexError("index 3 is out of bounds")


# --- top_k_next_tokens -------------------------------------------------------------------------

def top_k_first_position(logits, k):
    return logits[:, 0].softmax(-1).topk(k)


def top_k_logits_not_probs(logits, k):
    return logits[:, -1].topk(k)


def top_k_softmax_over_positions(logits, k):
    return logits.softmax(dim=1)[:, -1].topk(k)


def top_k_unsorted(logits, k):
    probs = logits[:, -1].softmax(-1)
    ids = probs.topk(k).indices.sort(-1).values  # sorted by id, not by probability
    return probs.gather(-1, ids), ids


@pytest.mark.parametrize("wrong", [top_k_first_position, top_k_logits_not_probs, top_k_softmax_over_positions, top_k_unsorted])
def test_top_k_check_catches_mistakes(wrong):
    result = l00.check_top_k_next_tokens(wrong)
    assert result.status == FAILED, result


def test_top_k_check_passes_reference_and_reports_stub_and_crash():
    assert l00.check_top_k_next_tokens(l00.reference_top_k_next_tokens).status == PASSED
    assert l00.check_top_k_next_tokens(stub).status == NOT_IMPLEMENTED
    result = l00.check_top_k_next_tokens(crashing)
    assert result.status == FAILED and "IndexError" in result.message


# --- lens_logits (needs the model: one short forward pass) ---------------------------------------

def lens_without_final_norm(model, cache, layer):
    return model.unembed(cache[f"blocks.{layer}.hook_resid_post"][:, -1])


def lens_resid_pre(model, cache, layer):
    return model.unembed(model.ln_final(cache[f"blocks.{layer}.hook_resid_pre"][:, -1]))


def lens_first_position(model, cache, layer):
    return model.unembed(model.ln_final(cache[f"blocks.{layer}.hook_resid_post"][:, 0]))


def lens_by_hand(model, cache, layer):
    """A correct answer written without the helper modules: RMSNorm and W_U spelled out."""
    resid = cache[f"blocks.{layer}.hook_resid_post"][:, -1]
    norm = model.ln_final
    eps = getattr(norm.original_component, "variance_epsilon", 1e-5)
    normed = resid / (resid.pow(2).mean(-1, keepdim=True) + eps).sqrt() * norm.original_component.weight
    return normed @ model.W_U


@pytest.mark.slow
@pytest.mark.parametrize("wrong", [lens_without_final_norm, lens_resid_pre, lens_first_position])
def test_lens_check_catches_mistakes(smollm2, wrong):
    result = l00.check_lens_logits(wrong, smollm2)
    assert result.status == FAILED, result


@pytest.mark.slow
def test_lens_check_passes_reference_and_a_hand_written_answer(smollm2):
    assert l00.check_lens_logits(l00.reference_lens_logits, smollm2).status == PASSED
    assert l00.check_lens_logits(lens_by_hand, smollm2).status == PASSED


@pytest.mark.slow
def test_lens_check_reports_stub_and_crash(smollm2):
    assert l00.check_lens_logits(stub, smollm2).status == NOT_IMPLEMENTED
    assert l00.check_lens_logits(crashing, smollm2).status == FAILED


# --- rank_neurons --------------------------------------------------------------------------------

def _pool(acts, start=1):
    return torch.cat([a[start:] for a in acts]).mean(0)


def _top(scores, k):
    values, ids = scores.topk(k)
    return ids, values


def rank_by_concept_only(concept, control, k):
    return _top(_pool(concept), k)


def rank_by_absolute_difference(concept, control, k):
    diff = _pool(concept) - _pool(control)
    ids = diff.abs().topk(k).indices
    return ids, diff[ids]


def rank_with_bos(concept, control, k):
    return _top(_pool(concept, 0) - _pool(control, 0), k)


def rank_flipped_sign(concept, control, k):
    return _top(_pool(control) - _pool(concept), k)


def rank_mean_of_sentence_means(concept, control, k):
    means = lambda acts: torch.stack([a[1:].mean(0) for a in acts]).mean(0)  # noqa: E731
    return _top(means(concept) - means(control), k)


def rank_correct_with_sorted_argsort(concept, control, k):
    diff = _pool(concept) - _pool(control)
    ids = diff.argsort(descending=True)[:k]
    return ids, diff[ids]


@pytest.mark.parametrize("wrong", [rank_by_concept_only, rank_by_absolute_difference, rank_with_bos,
                                   rank_flipped_sign, rank_mean_of_sentence_means])
def test_rank_check_catches_mistakes(wrong):
    result = l00.check_rank_neurons(wrong)
    assert result.status == FAILED, result


def test_rank_check_passes_reference_and_an_equivalent_answer():
    assert l00.check_rank_neurons(l00.reference_rank_neurons).status == PASSED
    assert l00.check_rank_neurons(rank_correct_with_sorted_argsort).status == PASSED


def test_rank_check_reports_stub_and_crash():
    assert l00.check_rank_neurons(stub).status == NOT_IMPLEMENTED
    result = l00.check_rank_neurons(crashing)
    assert result.status == FAILED and "IndexError" in result.message
