"""Lesson 07 checks: the references pass (and agree with the lesson's helpers), plausible mistakes fail."""
from __future__ import annotations

import math

import pytest
import torch

from helpers.checks import FAILED, NOT_IMPLEMENTED, PASSED
from helpers.exercises import l07
from helpers.failures import is_refusal
from helpers.steering import ablation_hooks


def _stub(*args):
    raise NotImplementedError


# --- ablate_everywhere -------------------------------------------------------------------------

def _run(model, tokens, direction, names, normalise=True):
    unit = direction / direction.norm() if normalise else direction

    def remove(x, hook):
        return x - (x @ unit)[..., None] * unit

    with torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=[(name, remove) for name in names])


def not_normalised(model, tokens, direction):
    names = [f"blocks.{L}.hook_resid_{s}" for L in range(model.cfg.n_layers) for s in ("pre", "mid")]
    return _run(model, tokens, direction, names + [f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"], normalise=False)


def one_layer_only(model, tokens, direction):
    return _run(model, tokens, direction, [f"blocks.{model.cfg.n_layers // 2}.hook_resid_pre"])


def block_inputs_only(model, tokens, direction):
    return _run(model, tokens, direction, [f"blocks.{L}.hook_resid_pre" for L in range(model.cfg.n_layers)])


def fixed_direction(model, tokens, direction):
    return l07.reference_ablate_everywhere(model, tokens, torch.ones_like(direction))


def first_prompt_only(model, tokens, direction):
    out = l07.reference_ablate_everywhere(model, tokens, direction)
    with torch.no_grad():
        plain = model(tokens)
    out[1:] = plain[1:]
    return out


def hooks_left_on(model, tokens, direction):
    for name, fn in ablation_hooks(model, direction):
        model.add_hook(name, fn)
    with torch.no_grad():
        return model(tokens)


@pytest.mark.slow
def test_ablate_everywhere_reference_passes_and_matches_the_steering_helper(smollm2):
    assert l07.check_ablate_everywhere(l07.reference_ablate_everywhere, smollm2).status == PASSED
    tokens = l07.exercise_tokens(smollm2)
    direction = torch.randn(smollm2.cfg.d_model, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        helper = smollm2.run_with_hooks(tokens, fwd_hooks=ablation_hooks(smollm2, direction))
    assert torch.allclose(helper, l07.reference_ablate_everywhere(smollm2, tokens, direction), atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("wrong", [not_normalised, one_layer_only, block_inputs_only, fixed_direction,
                                   first_prompt_only, hooks_left_on])
def test_ablate_everywhere_catches_mistakes(smollm2, wrong):
    result = l07.check_ablate_everywhere(wrong, smollm2)
    assert result.status == FAILED, result
    assert not any(hook.fwd_hooks for hook in smollm2.hook_dict.values())  # the check cleaned up


@pytest.mark.slow
def test_ablate_everywhere_stub_is_not_implemented(smollm2):
    assert l07.check_ablate_everywhere(_stub, smollm2).status == NOT_IMPLEMENTED


# --- refusal_interval --------------------------------------------------------------------------

def wald(replies, judge):
    k, n = sum(map(judge, replies)), len(replies)
    p = k / n
    half = 1.96 * math.sqrt(p * (1 - p) / n)
    return p, max(0.0, p - half), min(1.0, p + half)


def ninety_percent(replies, judge):
    from helpers.failures import wilson_interval

    k = sum(map(judge, replies))
    low, high = wilson_interval(k, len(replies), z=1.645)
    return k / len(replies), low, high


def ignores_judge(replies, judge):
    return l07.reference_refusal_interval(replies, is_refusal)


def count_not_rate(replies, judge):
    rate, low, high = l07.reference_refusal_interval(replies, judge)
    return rate * len(replies), low, high


def test_refusal_interval_reference_passes():
    assert l07.check_refusal_interval(l07.reference_refusal_interval).status == PASSED


@pytest.mark.parametrize("wrong", [wald, ninety_percent, ignores_judge, count_not_rate])
def test_refusal_interval_catches_mistakes(wrong):
    assert l07.check_refusal_interval(wrong).status == FAILED


def test_refusal_interval_stub_is_not_implemented():
    assert l07.check_refusal_interval(_stub).status == NOT_IMPLEMENTED


def test_the_judge_flags_refusal_phrases_near_the_start_only():
    assert is_refusal("I cannot help with that.")
    assert is_refusal("  I’m sorry, but no.")  # typographic apostrophe
    assert not is_refusal("To bake bread, mix flour and water.")
    assert not is_refusal("Here is a long answer about bread and flour and water and salt and yeast; I cannot stress enough.")
    assert is_refusal("I cannot believe how easy this is")  # a false positive the lesson shows


# --- debias_letters ----------------------------------------------------------------------------

def prior_from_test(logprobs, calibration):
    return l07.reference_debias_letters(logprobs, logprobs)


def prior_added(logprobs, calibration):
    return (logprobs + calibration.mean(0).log_softmax(-1)).log_softmax(-1)


def not_renormalised(logprobs, calibration):
    return logprobs - calibration.mean(0).log_softmax(-1)


def mean_of_probabilities(logprobs, calibration):
    log_prior = calibration.exp().mean(0).log()
    return (logprobs - log_prior).log_softmax(-1)


def subtracted_in_probability_space(logprobs, calibration):
    probs = (logprobs.exp() - calibration.mean(0).softmax(-1)).clamp(min=1e-6)
    return (probs / probs.sum(-1, keepdim=True)).log()


def test_debias_letters_reference_passes():
    assert l07.check_debias_letters(l07.reference_debias_letters).status == PASSED


@pytest.mark.parametrize("wrong", [prior_from_test, prior_added, not_renormalised, mean_of_probabilities,
                                   subtracted_in_probability_space])
def test_debias_letters_catches_mistakes(wrong):
    assert l07.check_debias_letters(wrong).status == FAILED


def test_debiasing_removes_a_planted_letter_preference():
    gen = torch.Generator().manual_seed(0)
    content = torch.randn(400, 4, generator=gen)
    bias = torch.tensor([0.0, 0.0, 0.0, 3.0])
    observed = (content + bias).log_softmax(-1)
    truth = content.argmax(-1)
    debiased = l07.reference_debias_letters(observed[200:], observed[:200])
    before = (observed[200:].argmax(-1) == truth[200:]).float().mean()
    after = (debiased.argmax(-1) == truth[200:]).float().mean()
    assert before < 0.6 and after > 0.9
