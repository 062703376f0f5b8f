"""Lesson 06 checks: the references pass, plausible mistakes fail."""
from __future__ import annotations

import pytest
import torch

from helpers import faithfulness as fa
from helpers.checks import FAILED, NOT_IMPLEMENTED, PASSED
from helpers.exercises import l06
from helpers.models import load


@pytest.fixture(scope="module")
def reasoners():
    return {name: load(name) for name in ("reasoner-faithful", "reasoner-unfaithful")}


def _stub(*args):
    raise NotImplementedError


def test_area_over_curve_reference_passes_and_matches_helper():
    assert l06.check_area_over_curve(l06.reference_area_over_curve).status == PASSED
    assert l06.check_area_over_curve(fa.area_over_curve).status == PASSED
    assert l06.check_area_over_curve(_stub).status == NOT_IMPLEMENTED


def _under(fractions, same):
    return sum((b - a) * (x + y) / 2 for a, b, x, y in zip(fractions, fractions[1:], same, same[1:]))


def _unscaled(fractions, same):
    return 1 - _under(fractions, same)


def _left_sum(fractions, same):
    return 1 - sum((b - a) * x for a, b, x in zip(fractions, fractions[1:], same)) / (fractions[-1] - fractions[0])


def _mean_gap(fractions, same):
    return 1 - sum(same) / len(same)


@pytest.mark.parametrize("wrong", [_under, _unscaled, _left_sum, _mean_gap])
def test_area_over_curve_catches_mistakes(wrong):
    assert l06.check_area_over_curve(wrong).status == FAILED


def test_swap_normalised_following_reference_passes():
    assert l06.check_swap_normalised_following(l06.reference_swap_normalised_following).status == PASSED


def _one_order(a, h, b, sa, sh, sb):
    return l06._rate(a, h, b).item()


def _all_items(a, h, b, sa, sh, sb):
    return (((a == h).float().mean() + (sa == sh).float().mean()) / 2).item()


def _pooled_agreement(a, h, b, sa, sh, sb):
    return (((a == h) & (h != b)).float().mean() + ((sa == sh) & (sh != sb)).float().mean()).item() / 2


def _ignores_swapped_baseline(a, h, b, sa, sh, sb):
    return (l06._rate(a, h, b) + l06._rate(sa, sh, b)).item() / 2


@pytest.mark.parametrize("wrong", [_one_order, _all_items, _pooled_agreement, _ignores_swapped_baseline])
def test_swap_normalised_following_catches_mistakes(wrong):
    assert l06.check_swap_normalised_following(wrong).status == FAILED


def test_patch_flip_rate_reference_passes(reasoners):
    assert l06.check_patch_flip_rate(l06.reference_patch_flip_rate, reasoners).status == PASSED


def _patched_answers(model, base, source, position, layer, hook="hook_resid_pre"):
    name = f"blocks.{layer}.{hook}"
    with torch.no_grad():
        _, cache = model.run_with_cache(source, names_filter=[name])

        def patch(resid, hook):
            resid = resid.clone()
            resid[:, position] = cache[name][:, position]
            return resid

        return model.run_with_hooks(base, fwd_hooks=[(name, patch)])[:, -1, :10].argmax(-1)


def _off_by_one(model, base, source, position, layer):
    clean = model(base)[:, -1, :10].argmax(-1)
    return (_patched_answers(model, base, source, position + 1, layer) != clean).float().mean().item()


def _resid_post(model, base, source, position, layer):
    clean = model(base)[:, -1, :10].argmax(-1)
    return (_patched_answers(model, base, source, position, layer, "hook_resid_post") != clean).float().mean().item()


def _matches_source(model, base, source, position, layer):
    target = model(source)[:, -1, :10].argmax(-1)
    return (_patched_answers(model, base, source, position, layer) == target).float().mean().item()


def _ignores_layer(model, base, source, position, layer):
    return l06.reference_patch_flip_rate(model, base, source, position, 0)


def _whole_source(model, base, source, position, layer):
    return (model(source)[:, -1, :10].argmax(-1) != model(base)[:, -1, :10].argmax(-1)).float().mean().item()


@pytest.mark.parametrize("wrong", [_off_by_one, _resid_post, _matches_source, _ignores_layer, _whole_source])
def test_patch_flip_rate_catches_mistakes(wrong, reasoners):
    assert l06.check_patch_flip_rate(wrong, reasoners).status == FAILED
