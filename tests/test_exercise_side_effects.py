"""The lessons' real exercise checks catch side effects: in-place edits of inputs, hooks left on the
model, grad mode or train mode switched, weights edited, sys.exit, and leave everything as they found it.

Each wrong answer here computes the right value, so only the side effect can fail it.
"""
from __future__ import annotations

import sys

import pytest
import torch

from helpers.checks import FAILED, PASSED
from helpers.exercises import l00, l01, l02, l03, l04


def _hooks_on(model) -> int:
    return sum(len(hp.fwd_hooks) + len(hp.bwd_hooks) for hp in model.hook_dict.values())


def test_top_k_that_subtracts_the_max_in_place_is_reported():
    def top_k(logits, k):
        answer = l00.reference_top_k_next_tokens(logits.clone(), k)
        logits -= logits.max(-1, keepdim=True).values  # "for numerical stability", in place
        return answer
    result = l00.check_top_k_next_tokens(top_k)
    assert result.status == FAILED and "modified its input `logits`" in result.message


def test_causal_pattern_that_scales_q_in_place_is_reported():
    def causal_pattern(q, k):
        q /= q.shape[-1] ** 0.5
        return l01.reference_causal_pattern(q * q.shape[-1] ** 0.5, k)
    result = l01.check_causal_pattern(causal_pattern)
    assert result.status == FAILED and "modified its input `q`" in result.message


def test_previous_token_score_that_zeroes_rows_of_the_pattern_is_reported():
    def previous_token_score(pattern):
        answer = l01.reference_previous_token_score(pattern.clone())
        pattern[:, :, 0] = 0.0
        return answer
    result = l01.check_previous_token_score(previous_token_score)
    assert result.status == FAILED and "modified its input `pattern`" in result.message


def test_diff_of_means_that_centres_in_place_is_reported():
    def diff_of_means_direction(acts, labels):
        acts -= acts.mean(0)
        return l03.reference_diff_of_means_direction(acts, labels)  # centring does not change the direction
    result = l03.check_diff_of_means_direction(diff_of_means_direction)
    assert result.status == FAILED and "modified its input `acts`" in result.message


def test_k_composition_that_exits_does_not_stop_the_notebook():
    def k_composition(W_V0, W_O0, W_Q1, W_K1):
        sys.exit("done")
    result = l02.check_k_composition(k_composition)
    assert result.status == FAILED and "sys.exit" in result.message


@pytest.mark.slow
def test_record_and_set_that_edits_its_tokens_in_place_is_reported(smollm2):
    def record_and_set(model, tokens, layer, neuron, value):
        answer = l00.reference_record_and_set(model, tokens.clone(), layer, neuron, value)
        tokens[:, 1:] = tokens[:, :1]  # "reuse the buffer"
        return answer
    result = l00.check_record_and_set(record_and_set, smollm2)
    assert result.status == FAILED and "modified its input `tokens`" in result.message


@pytest.mark.slow
@pytest.mark.parametrize("side_effect, words", [
    (lambda model: torch.set_grad_enabled(False), "gradient tracking off"),
    (lambda model: model.train(), "train mode"),
    (lambda model: model.blocks[3].mlp.out.weight.data.add_(0.5), "reload it"),  # through .data: no version bump
])
def test_record_and_set_that_changes_the_model_or_torch_is_reported_and_undone(smollm2, side_effect, words):
    def record_and_set(model, tokens, layer, neuron, value):
        answer = l00.reference_record_and_set(model, tokens, layer, neuron, value)
        side_effect(model)
        return answer
    weight = smollm2.blocks[3].mlp.out.weight
    saved = weight.detach().clone()
    try:
        result = l00.check_record_and_set(record_and_set, smollm2)
    finally:
        with torch.no_grad():
            weight.copy_(saved)  # SmolLM2 is too big to copy per check: the check reports, the test restores
    assert result.status == FAILED and words in result.message, result.message
    assert torch.is_grad_enabled() and not smollm2.training
    assert l00.check_record_and_set(l00.reference_record_and_set, smollm2).status == PASSED


@pytest.mark.slow
def test_patching_that_leaves_its_hook_on_is_reported_and_the_hook_removed(smollm2):
    def patch_resid_pre(model, clean_tokens, corrupted_tokens, metric, layer, pos):
        name = f"blocks.{layer}.hook_resid_pre"
        _, clean_cache = model.run_with_cache(clean_tokens, names_filter=[name])

        def patch(resid, hook):
            resid = resid.clone()
            resid[:, pos] = clean_cache[name][:, pos]
            return resid
        model.add_hook(name, patch)  # never removed
        return metric(model(corrupted_tokens))
    result = l04.check_patch_resid_pre(patch_resid_pre, smollm2)
    assert result.status == FAILED and "hook" in result.message
    assert _hooks_on(smollm2) == 0
    assert l04.check_patch_resid_pre(l04.reference_patch_resid_pre, smollm2).status == PASSED
