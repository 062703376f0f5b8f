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


def top_k_second_to_last_position(logits, k):
    return logits[:, -2].softmax(-1).topk(k)


def top_k_log_probabilities(logits, k):
    return logits[:, -1].log_softmax(-1).topk(k)


def top_k_softmax_over_batch(logits, k):
    return logits.softmax(dim=0)[:, -1].topk(k)


def top_k_renormalised_over_the_k(logits, k):
    values, ids = logits[:, -1].topk(k)
    return values.softmax(-1), ids


def top_k_by_absolute_logit(logits, k):
    probs = logits[:, -1].softmax(-1)
    ids = logits[:, -1].abs().topk(k).indices
    return probs.gather(-1, ids), ids


def top_k_ignores_k(logits, k):
    return logits[:, -1].softmax(-1).topk(3)


def top_k_reads_only_prompt_0(logits, k):
    values, ids = logits[0, -1].softmax(-1).topk(k)
    return values.expand(logits.shape[0], k), ids.expand(logits.shape[0], k)


def top_k_ids_first(logits, k):
    values, ids = logits[:, -1].softmax(-1).topk(k)
    return ids, values


TOP_K_WRONG = [top_k_first_position, top_k_logits_not_probs, top_k_softmax_over_positions, top_k_unsorted,
               top_k_second_to_last_position, top_k_log_probabilities, top_k_softmax_over_batch,
               top_k_renormalised_over_the_k, top_k_by_absolute_logit, top_k_ignores_k, top_k_reads_only_prompt_0,
               top_k_ids_first]


@pytest.mark.parametrize("wrong", TOP_K_WRONG)
def test_top_k_check_catches_mistakes(wrong):
    result = l00.check_top_k_next_tokens(wrong)
    assert result.status == FAILED, result


def top_k_with_a_loop_and_argsort(logits, k):
    probs, ids = [], []
    for row in logits:
        p = torch.exp(row[-1] - row[-1].max())
        p = p / p.sum()
        order = p.argsort(descending=True)[:k]
        probs.append(p[order])
        ids.append(order)
    return torch.stack(probs), torch.stack(ids)


def test_top_k_check_passes_a_loop_written_answer():
    assert l00.check_top_k_next_tokens(top_k_with_a_loop_and_argsort).status == PASSED


def test_top_k_wrong_order_gets_a_dtype_message():
    assert "dtype" in l00.check_top_k_next_tokens(top_k_ids_first).message


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


def lens_next_block(model, cache, layer):
    name = f"blocks.{min(layer + 1, model.cfg.n_layers - 1)}.hook_resid_post"
    return model.unembed(model.ln_final(cache[name][:, -1]))


def lens_second_to_last_position(model, cache, layer):
    return model.unembed(model.ln_final(cache[f"blocks.{layer}.hook_resid_post"][:, -2]))


def lens_always_last_layer(model, cache, layer):
    return model.unembed(cache["ln_final.hook_normalized"][:, -1])


def lens_reads_only_prompt_0(model, cache, layer):
    resid = cache[f"blocks.{layer}.hook_resid_post"][:1, -1]
    return model.unembed(model.ln_final(resid)).expand(cache[f"blocks.{layer}.hook_resid_post"].shape[0], -1)


def lens_log_probabilities(model, cache, layer):
    return model.unembed(model.ln_final(cache[f"blocks.{layer}.hook_resid_post"][:, -1])).log_softmax(-1)


LENS_WRONG = [lens_without_final_norm, lens_resid_pre, lens_first_position, lens_next_block,
              lens_second_to_last_position, lens_always_last_layer, lens_reads_only_prompt_0, lens_log_probabilities]


@pytest.mark.slow
@pytest.mark.parametrize("wrong", LENS_WRONG)
def test_lens_check_catches_mistakes(smollm2, wrong):
    result = l00.check_lens_logits(wrong, smollm2)
    assert result.status == FAILED, result


def lens_every_position_then_last(model, cache, layer):
    """Correct too: the lens of every position, then the last one."""
    return model.unembed(model.ln_final(cache[f"blocks.{layer}.hook_resid_post"]))[:, -1]


@pytest.mark.slow
def test_lens_check_passes_reference_and_a_hand_written_answer(smollm2):
    assert l00.check_lens_logits(l00.reference_lens_logits, smollm2).status == PASSED
    assert l00.check_lens_logits(lens_by_hand, smollm2).status == PASSED
    assert l00.check_lens_logits(lens_every_position_then_last, smollm2).status == PASSED


@pytest.mark.slow
def test_lens_check_uses_a_batch_of_two_prompts(smollm2):
    assert "batch" in l00.check_lens_logits(lens_reads_only_prompt_0, smollm2).message


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


def rank_first_sentence_only(concept, control, k):
    return _top(concept[0][1:].mean(0) - control[0][1:].mean(0), k)


def rank_bos_dropped_once(concept, control, k):
    return _top(torch.cat(concept)[1:].mean(0) - torch.cat(control)[1:].mean(0), k)


def rank_drops_last_token(concept, control, k):
    pool = lambda acts: torch.cat([a[:-1] for a in acts]).mean(0)  # noqa: E731
    return _top(pool(concept) - pool(control), k)


def rank_worst_first(concept, control, k):
    diff = _pool(concept) - _pool(control)
    values, ids = diff.topk(k, largest=False)
    return ids, values


def rank_ignores_k(concept, control, k):
    return _top(_pool(concept) - _pool(control), 2)


def rank_scores_first(concept, control, k):
    ids, values = _top(_pool(concept) - _pool(control), k)
    return values, ids


RANK_WRONG = [rank_by_concept_only, rank_by_absolute_difference, rank_with_bos, rank_flipped_sign,
              rank_mean_of_sentence_means, rank_first_sentence_only, rank_bos_dropped_once, rank_drops_last_token,
              rank_worst_first, rank_ignores_k, rank_scores_first]


@pytest.mark.parametrize("wrong", RANK_WRONG)
def test_rank_check_catches_mistakes(wrong):
    result = l00.check_rank_neurons(wrong)
    assert result.status == FAILED, result


def rank_correct_with_sums_and_counts(concept, control, k):
    def mean(acts):
        total = sum(a[1:].sum(0) for a in acts)
        return total / sum(len(a) - 1 for a in acts)
    diff = mean(concept) - mean(control)
    ids = sorted(range(len(diff)), key=lambda i: -float(diff[i]))[:k]
    return torch.tensor(ids), diff[ids]


def test_rank_check_passes_reference_and_an_equivalent_answer():
    assert l00.check_rank_neurons(l00.reference_rank_neurons).status == PASSED
    assert l00.check_rank_neurons(rank_correct_with_sorted_argsort).status == PASSED
    assert l00.check_rank_neurons(rank_correct_with_sums_and_counts).status == PASSED


def test_rank_check_reports_stub_and_crash():
    assert l00.check_rank_neurons(stub).status == NOT_IMPLEMENTED
    result = l00.check_rank_neurons(crashing)
    assert result.status == FAILED and "IndexError" in result.message


@pytest.mark.slow
def test_lens_check_on_a_model_left_broken_gives_a_result_not_a_traceback(smollm2):
    def broken(resid, hook):
        raise RuntimeError("a hook an earlier cell forgot")
    smollm2.add_hook("blocks.0.hook_resid_pre", broken)
    try:
        result = l00.check_lens_logits(l00.reference_lens_logits, smollm2)
    finally:
        smollm2.reset_hooks()
    assert result.status == FAILED and "could not build its test cases" in result.message
