"""Lesson 03 checks pass the references and alternative correct answers, and fail the plausible mistakes."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from helpers import steering
from helpers.generation import last_logits
from helpers.tokens import single_token_id
from helpers.checks import FAILED, NOT_IMPLEMENTED, PASSED
from helpers.exercises import l03
from helpers.probes import fit_probe, probe_accuracies, probe_score, split_by_group


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

def _unit(v):
    return v / v.norm()


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


def dom_abs(acts, labels):
    return _unit(acts[labels == 1].mean(0) - acts[labels == 0].mean(0)).abs()


def dom_sums_not_means(acts, labels):
    return _unit(acts[labels == 1].sum(0) - acts[labels == 0].sum(0))


def dom_assumes_sorted_halves(acts, labels):
    n1 = int(labels.sum())
    return _unit(acts[-n1:].mean(0) - acts[:-n1].mean(0))


def dom_averages_unit_rows(acts, labels):
    rows = acts / acts.norm(dim=1, keepdim=True)
    return _unit(rows[labels == 1].mean(0) - rows[labels == 0].mean(0))


def dom_l1_normalised(acts, labels):
    direction = acts[labels == 1].mean(0) - acts[labels == 0].mean(0)
    return direction / direction.abs().sum()


DOM_WRONG = [dom_wrong_sign, dom_not_normalised, dom_wrong_axis, dom_integer_indexing, dom_abs, dom_sums_not_means,
             dom_assumes_sorted_halves, dom_averages_unit_rows, dom_l1_normalised]


@pytest.mark.parametrize("wrong", DOM_WRONG)
def test_diff_of_means_mistakes_fail(wrong):
    assert l03.check_diff_of_means_direction(wrong).status == FAILED, wrong.__name__


def dom_with_one_hot_matmul(acts, labels):
    one_hot = torch.nn.functional.one_hot(labels, 2).float()  # [n, 2]
    means = (one_hot.T @ acts) / one_hot.sum(0)[:, None]  # [2, d]
    return torch.nn.functional.normalize(means[1] - means[0], dim=0)


def dom_overall_mean_minus_class_0(acts, labels):
    # mean(all) - mean(class 0) = p1 * (mean1 - mean0): the same direction once normalised
    return _unit(acts.mean(0) - acts[labels == 0].mean(0))


@pytest.mark.parametrize("right", [dom_with_one_hot_matmul, dom_overall_mean_minus_class_0])
def test_diff_of_means_alternative_answers_pass(right):
    assert l03.check_diff_of_means_direction(right).status == PASSED, right.__name__


# ---- held-out probe

def _score_with_test_mask(acts, labels, test):
    test = torch.as_tensor(test)
    return probe_score(fit_probe(acts[~test], labels[~test]), acts[test], labels[test])


def _mask(groups, held_out):
    return torch.tensor([g in held_out for g in groups])


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


def probe_first_groups(acts, labels, groups, test_fraction=0.25, seed=0):
    unique = sorted(set(groups))
    return _score_with_test_mask(acts, labels, _mask(groups, set(unique[: round(test_fraction * len(unique))])))


def probe_last_groups(acts, labels, groups, test_fraction=0.25, seed=0):
    unique = list(dict.fromkeys(groups))  # in order of appearance
    return _score_with_test_mask(acts, labels, _mask(groups, set(unique[-round(test_fraction * len(unique)):])))


def probe_first_rows(acts, labels, groups, test_fraction=0.25, seed=0):
    test = torch.zeros(len(groups), dtype=torch.bool)
    test[: int(test_fraction * len(groups))] = True
    return _score_with_test_mask(acts, labels, test)


def probe_ignores_test_fraction(acts, labels, groups, test_fraction=0.25, seed=0):
    return l03.reference_heldout_probe_accuracy(acts, labels, groups, 0.25, seed)


def probe_fraction_as_training_share(acts, labels, groups, test_fraction=0.25, seed=0):
    unique = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(unique)
    train = set(order[: round(test_fraction * len(unique))].tolist())
    return _score_with_test_mask(acts, labels, ~_mask(groups, train))


def probe_ignores_seed(acts, labels, groups, test_fraction=0.25, seed=0):
    return l03.reference_heldout_probe_accuracy(acts, labels, groups, test_fraction, 0)


def probe_unseeded_generator(acts, labels, groups, test_fraction=0.25, seed=0):
    unique = sorted(set(groups))
    held_out = set(np.random.permutation(unique)[: round(test_fraction * len(unique))].tolist())
    return _score_with_test_mask(acts, labels, _mask(groups, held_out))


def probe_set_order_no_shuffle(acts, labels, groups, test_fraction=0.25, seed=0):
    unique = list(set(groups))  # an arbitrary but fixed order: "random" without the seed
    return _score_with_test_mask(acts, labels, _mask(groups, set(unique[: round(test_fraction * len(unique))])))


def probe_fitted_on_everything(acts, labels, groups, test_fraction=0.25, seed=0):
    unique = sorted(set(groups))
    held_out = set(np.random.default_rng(seed).permutation(unique)[: round(test_fraction * len(unique))].tolist())
    test = _mask(groups, held_out)
    return probe_score(fit_probe(acts, labels), acts[test], labels[test])


HELDOUT_WRONG = [probe_scored_on_training_data, probe_split_per_prompt, probe_trained_and_scored_on_test_side,
                 constant_chance, probe_first_groups, probe_last_groups, probe_first_rows, probe_ignores_test_fraction,
                 probe_fraction_as_training_share, probe_ignores_seed, probe_unseeded_generator,
                 probe_set_order_no_shuffle, probe_fitted_on_everything]


@pytest.mark.parametrize("wrong", HELDOUT_WRONG)
def test_heldout_probe_mistakes_fail(wrong):
    assert l03.check_heldout_probe_accuracy(wrong).status == FAILED, wrong.__name__


def probe_torch_randperm_rounding_down(acts, labels, groups, test_fraction=0.25, seed=0):
    unique = sorted(set(groups))
    order = torch.randperm(len(unique), generator=torch.Generator().manual_seed(seed))
    held_out = {unique[i] for i in order[: int(test_fraction * len(unique))].tolist()}
    return _score_with_test_mask(acts, labels, _mask(groups, held_out))


def probe_python_random_rounding_up(acts, labels, groups, test_fraction=0.25, seed=0):
    unique = sorted(set(groups))
    held_out = set(random.Random(seed).sample(unique, math.ceil(test_fraction * len(unique))))
    return _score_with_test_mask(acts, labels, _mask(groups, held_out))


def probe_with_the_split_helper(acts, labels, groups, test_fraction=0.25, seed=0):
    train, test = split_by_group(groups, test_fraction, seed)
    return float(probe_accuracies(acts[None], labels, train, test, progress=False)[0])


def probe_numpy_choice_in_order_of_appearance(acts, labels, groups, test_fraction=0.25, seed=0):
    unique = list(dict.fromkeys(groups))
    n_test = round(test_fraction * len(unique))
    held_out = set(np.random.default_rng(seed + 1000).choice(unique, n_test, replace=False).tolist())
    return torch.tensor(_score_with_test_mask(acts, labels, _mask(groups, held_out)))  # a 0-d tensor is fine too


def probe_other_seed(acts, labels, groups, test_fraction=0.25, seed=0):
    return l03.reference_heldout_probe_accuracy(acts, labels, groups, test_fraction, seed=seed + 7)


@pytest.mark.parametrize("right", [probe_torch_randperm_rounding_down, probe_python_random_rounding_up,
                                   probe_with_the_split_helper, probe_numpy_choice_in_order_of_appearance,
                                   probe_other_seed])
def test_heldout_probe_check_accepts_other_honest_splits(right):
    result = l03.check_heldout_probe_accuracy(right)
    assert result.status == PASSED, result


def test_leak_message_names_the_problem():
    message = l03.check_heldout_probe_accuracy(probe_split_per_prompt).message
    assert "held out entirely" in message and "between 0.25 and 0.75" in message


def test_ordered_split_messages_name_the_order():
    assert "first quarter" in l03.check_heldout_probe_accuracy(probe_first_groups).message
    assert "last quarter" in l03.check_heldout_probe_accuracy(probe_last_groups).message


def test_fraction_and_seed_messages_name_the_argument():
    assert "`test_fraction`" in l03.check_heldout_probe_accuracy(probe_ignores_test_fraction).message
    assert "`seed`" in l03.check_heldout_probe_accuracy(probe_ignores_seed).message
    assert "called twice with seed=3" in l03.check_heldout_probe_accuracy(probe_unseeded_generator).message


def test_the_seed_record_does_not_leak_between_checks():
    # a second run of the same check starts with no remembered accuracies
    assert l03.check_heldout_probe_accuracy(probe_other_seed).status == PASSED
    assert l03.check_heldout_probe_accuracy(l03.reference_heldout_probe_accuracy).status == PASSED


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


def selectivity_abs(acts, task, control, train_idx, test_idx):
    return abs(l03.reference_selectivity(acts, task, control, train_idx, test_idx))


def selectivity_task_scored_on_train(acts, task, control, train_idx, test_idx):
    task_probe, control_probe = fit_probe(acts[train_idx], task[train_idx]), fit_probe(acts[train_idx], control[train_idx])
    return (probe_score(task_probe, acts[train_idx], task[train_idx])
            - probe_score(control_probe, acts[test_idx], control[test_idx]))


def selectivity_train_and_test_swapped(acts, task, control, train_idx, test_idx):
    return l03.reference_selectivity(acts, task, control, test_idx, train_idx)


def selectivity_own_split(acts, task, control, train_idx, test_idx):
    order = np.random.default_rng(0).permutation(len(acts))
    n_test = len(test_idx)
    return l03.reference_selectivity(acts, task, control, order[n_test:], order[:n_test])


def selectivity_task_labels_twice(acts, task, control, train_idx, test_idx):
    return l03.reference_selectivity(acts, task, task, train_idx, test_idx)


SELECTIVITY_WRONG = [selectivity_control_on_train, selectivity_sign_swapped, selectivity_control_fitted_on_test,
                     selectivity_abs, selectivity_task_scored_on_train, selectivity_train_and_test_swapped,
                     selectivity_own_split, selectivity_task_labels_twice]


@pytest.mark.parametrize("wrong", SELECTIVITY_WRONG)
def test_selectivity_mistakes_fail(wrong):
    assert l03.check_selectivity(wrong).status == FAILED, wrong.__name__


def selectivity_with_masks_and_the_helper(acts, task, control, train_idx, test_idx):
    train = torch.zeros(len(acts), dtype=torch.bool)
    train[torch.as_tensor(train_idx)] = True
    test = torch.zeros(len(acts), dtype=torch.bool)
    test[torch.as_tensor(test_idx)] = True
    train_rows, test_rows = train.nonzero()[:, 0].numpy(), test.nonzero()[:, 0].numpy()
    task_acc = probe_accuracies(acts[None], task, train_rows, test_rows, progress=False)[0]
    control_acc = probe_accuracies(acts[None], control, train_rows, test_rows, progress=False)[0]
    return task_acc - control_acc  # a numpy float is fine


def test_selectivity_alternative_answer_passes():
    assert l03.check_selectivity(selectivity_with_masks_and_the_helper).status == PASSED


def test_one_selectivity_case_is_negative():
    assert any(case.expected < 0 for case in l03._selectivity_cases())


# ---- is the direction used? (SmolLM2; a finding judged by the check's own random directions)

def _ablated_each(model, prompts, signs, edits, chunk=5):
    """profession_margin with each edit(x) applied at every residual hook that directional ablation uses: one
    margin per edit, `chunk` edits per forward pass (one block of rows each). The wrong answers below differ
    from the right one in their mistake, not in their speed."""
    prompts, n, out = list(prompts), len(prompts), []
    ids = single_token_id(model, " scientist"), single_token_id(model, " musician")
    for start in range(0, len(edits), chunk):
        block = edits[start:start + chunk]

        def edit_rows(x, hook, block=block):
            return torch.cat([edit(x[i * n:(i + 1) * n]) for i, edit in enumerate(block)])
        hooks = [(name, edit_rows) for name in steering.ablation_hook_names(model)]
        logprobs = last_logits(model, prompts * len(block), hooks, batch_size=n * len(block), prepend_bos=True).log_softmax(-1)
        diff = (logprobs[:, ids[0]] - logprobs[:, ids[1]]).reshape(len(block), n)
        out += (torch.as_tensor(signs, dtype=torch.float32) * diff).mean(-1).tolist()
    return out


def _verdict(model, prompts, signs, n_random, seed, edit_for, draws=None, effect_of=None, compare_to=None):
    """A direction_is_used built from one mistake: edit_for(r) -> the edit removing r; draws: the random vectors."""
    def fn(direction):
        clean = l03.profession_margin(model, prompts, signs)
        randoms = draws if draws is not None else steering.random_directions(model.cfg.d_model, n_random, seed)
        margins = _ablated_each(model, prompts, signs, [edit_for(direction)] + [edit_for(r) for r in randoms])
        effect, random_effects = margins[0] - clean, [m - clean for m in margins[1:]]
        reported = effect if effect_of is None else effect_of(effect, clean)
        baseline = effect if compare_to is None else compare_to
        p = (1 + sum(e <= baseline for e in random_effects)) / (1 + len(random_effects))
        return bool(reported < 0 and p <= l03.ALPHA), reported, p
    return fn


def _remove(r):
    r = r / r.norm()
    return lambda x: x - (x @ r)[..., None] * r


def used_unnormalised(model, direction, prompts, signs, n_random=19, seed=0):
    return _verdict(model, prompts, signs, n_random, seed, lambda r: (lambda x: x - (x @ r)[..., None] * r))(direction)


def used_added_not_removed(model, direction, prompts, signs, n_random=19, seed=0):
    def add(r):
        r = r / r.norm()
        return lambda x: x + (x @ r)[..., None] * r
    return _verdict(model, prompts, signs, n_random, seed, add)(direction)


def used_last_position_only(model, direction, prompts, signs, n_random=19, seed=0):
    def last(r):
        r = r / r.norm()

        def edit(x):
            x = x.clone()
            x[:, -1] = x[:, -1] - (x[:, -1] @ r)[..., None] * r
            return x
        return edit
    return _verdict(model, prompts, signs, n_random, seed, last)(direction)


def used_three_random_draws(model, direction, prompts, signs, n_random=19, seed=0):
    return _verdict(model, prompts, signs, 3, seed, _remove)(direction)


def used_random_not_unit(model, direction, prompts, signs, n_random=19, seed=0):
    draws = torch.randn(n_random, model.cfg.d_model, generator=torch.Generator().manual_seed(seed))  # norm about 24
    raw = lambda r: (lambda x: x - (x @ r)[..., None] * r)  # noqa: E731 - the real one is normalised, the draws not
    def edit_for(r):
        return _remove(r) if r is direction else raw(r)
    return _verdict(model, prompts, signs, n_random, seed, edit_for, draws=draws)(direction)


def used_ablated_margin_not_change(model, direction, prompts, signs, n_random=19, seed=0):
    return _verdict(model, prompts, signs, n_random, seed, _remove, effect_of=lambda effect, clean: effect + clean)(direction)


def used_randoms_compared_with_zero(model, direction, prompts, signs, n_random=19, seed=0):
    return _verdict(model, prompts, signs, n_random, seed, _remove, compare_to=0.0)(direction)


USED_WRONG = [used_unnormalised, used_added_not_removed, used_last_position_only, used_three_random_draws,
              used_random_not_unit, used_ablated_margin_not_change, used_randoms_compared_with_zero]


@pytest.mark.slow
@pytest.mark.parametrize("wrong", USED_WRONG)
def test_direction_is_used_check_rejects_mistakes(smollm2, wrong):
    result = l03.check_direction_is_used(wrong, smollm2)
    assert result.status == FAILED, (wrong.__name__, result)


def used_by_hand_at_resid_pre(model, direction, prompts, signs, n_random=19, seed=0):
    """Another correct route: remove the direction where each block reads (resid_pre; the MLP reads resid_mid, which
    is not cleaned here), random directions from numpy; the check accepts the small difference in effect."""
    rng = np.random.default_rng(seed)
    randoms = torch.tensor(rng.standard_normal((n_random, model.cfg.d_model)), dtype=torch.float32)
    clean = l03.profession_margin(model, prompts, signs)

    def effect_of(r):
        edit = _remove(r)
        hooks = [(f"blocks.{layer}.hook_resid_pre", lambda x, hook: edit(x)) for layer in range(model.cfg.n_layers)]
        return l03.profession_margin(model, prompts, signs, hooks) - clean
    effect = effect_of(direction)
    p = (1 + sum(effect_of(r) <= effect for r in randoms)) / (1 + n_random)
    return effect < 0 and p <= 0.05, torch.tensor(effect), np.float64(p)


@pytest.mark.slow
def test_direction_is_used_check_passes_the_reference_and_another_route(smollm2):
    assert l03.check_direction_is_used(l03.reference_direction_is_used, smollm2).status == PASSED
    result = l03.check_direction_is_used(used_by_hand_at_resid_pre, smollm2)
    assert result.status == PASSED, result
    assert l03.check_direction_is_used(stub, smollm2).status == NOT_IMPLEMENTED


@pytest.mark.slow
def test_batched_ablation_effects_match_the_hooks_one_direction_at_a_time(smollm2):
    people, signs = l03._CHECK_PEOPLE["used"]
    prompts = [l03.BEHAVIOUR.format(p) for p in people[:4]]
    directions = torch.cat([l03.check_directions(smollm2)["used"][None], steering.random_directions(576, 2, seed=1)])
    batched = l03.ablation_effects(smollm2, directions, prompts, signs[:4], chunk=2)
    clean = l03.profession_margin(smollm2, prompts, signs[:4])
    one_by_one = [l03.profession_margin(smollm2, prompts, signs[:4], steering.ablation_hooks(smollm2, d)) - clean
                  for d in directions]
    assert torch.allclose(batched, torch.tensor(one_by_one), atol=1e-3)
