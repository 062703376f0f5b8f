"""Lesson 00's checks pass the reference and report plausible mistakes, stubs and crashes correctly."""
from __future__ import annotations

import pytest
import torch

from helpers.checks import FAILED, NOT_IMPLEMENTED, PASSED
from helpers.exercises import l00
from helpers.lens import lens_logits
from helpers.tokens import run_with_cache


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


# --- settling_layer (needs the model: one cached run per prompt) ----------------------------------

def _settle(model, prompts, k, lens_of, share=0.5):
    """A settling_layer built from parts: lens_of(cache, layer) -> [d_vocab] logits of the lens after block layer."""
    hits = []
    for prompt in prompts:
        names = [f"blocks.{layer}.hook_resid_{where}" for layer in range(model.cfg.n_layers) for where in ("pre", "post")]
        logits, cache, _ = run_with_cache(model, prompt, names=names)
        answer = logits[0, -1].argmax()
        lenses = [lens_of(model, cache, layer) for layer in range(model.cfg.n_layers)]
        hits.append([int((lens > lens[answer]).sum()) < k for lens in lenses])
    counts = torch.tensor(hits).float().mean(0)
    return int((counts >= share).nonzero()[0, 0])


def _lens(model, cache, layer):
    return model.unembed(model.ln_final(cache[f"blocks.{layer}.hook_resid_post"][0, -1]))


def settle_with_the_lens_helper(model, prompts, k):
    """A correct route: helpers.lens.lens_logits layer by layer (blocks only; the embeddings never qualify here)."""
    return _settle(model, prompts, k, lambda m, c, layer: lens_logits(m, c, layer)[0])


def settle_last_block(model, prompts, k):
    return model.cfg.n_layers - 1


def settle_copied_from_the_lesson(model, prompts, k):
    return 28  # where ' Paris' became the lens's top token in the lesson


def settle_ignores_k(model, prompts, k):
    return _settle(model, prompts, 1, _lens)


def settle_without_final_norm(model, prompts, k):
    return _settle(model, prompts, k, lambda m, c, layer: m.unembed(c[f"blocks.{layer}.hook_resid_post"][0, -1]))


def settle_resid_pre(model, prompts, k):
    return _settle(model, prompts, k, lambda m, c, layer: m.unembed(m.ln_final(c[f"blocks.{layer}.hook_resid_pre"][0, -1])))


def settle_first_prompt_only(model, prompts, k):
    return _settle(model, prompts[:1], k, _lens)


def settle_all_prompts(model, prompts, k):
    return _settle(model, prompts, k, _lens, share=1.0)


SETTLE_WRONG = [settle_last_block, settle_copied_from_the_lesson, settle_ignores_k, settle_without_final_norm,
                settle_resid_pre, settle_first_prompt_only, settle_all_prompts]


@pytest.mark.slow
@pytest.mark.parametrize("wrong", SETTLE_WRONG)
def test_settling_layer_check_catches_mistakes(smollm2, wrong):
    result = l00.check_settling_layer(wrong, smollm2)
    assert result.status == FAILED, (wrong.__name__, result)


@pytest.mark.slow
def test_settling_layer_check_passes_the_reference_and_another_route(smollm2):
    assert l00.check_settling_layer(l00.reference_settling_layer, smollm2).status == PASSED
    assert l00.check_settling_layer(settle_with_the_lens_helper, smollm2).status == PASSED
    assert l00.check_settling_layer(stub, smollm2).status == NOT_IMPLEMENTED
    assert l00.check_settling_layer(crashing, smollm2).status == FAILED


@pytest.mark.slow
def test_settling_layer_families_settle_at_different_depths(smollm2):
    """The check's families are not all settled at the last block, so a layer copied for every family fails."""
    answers = [l00.reference_settling_layer(smollm2, prompts, k) for _, prompts, k in
               (case.args for case in l00._settle_cases(smollm2))]
    assert len(set(answers)) >= 2 and min(answers) < smollm2.cfg.n_layers - 1, answers


# --- record_and_set (needs the model: a few short forward passes) ----------------------------------

def _run_set(model, tokens, hook_name, edit):
    recorded = []

    def hook(post, hook):
        recorded.append(post.clone())
        return edit(post.clone())

    logits = model.run_with_hooks(tokens, fwd_hooks=[(hook_name, hook)])
    return recorded[0], logits


def set_records_after_the_edit(model, tokens, layer, neuron, value):
    def hook(post, hook):
        post = post.clone()
        post[:, :, neuron] = value
        seen.append(post[:, :, neuron].clone())
        return post
    seen = []
    logits = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.mlp.hook_post", hook)])
    return seen[0], logits


def set_only_the_last_position(model, tokens, layer, neuron, value):
    def edit(post):
        post[:, -1, neuron] = value
        return post
    recorded, logits = _run_set(model, tokens, f"blocks.{layer}.mlp.hook_post", edit)
    return recorded[:, :, neuron], logits


def set_at_hook_pre(model, tokens, layer, neuron, value):
    def edit(post):
        post[:, :, neuron] = value
        return post
    recorded, logits = _run_set(model, tokens, f"blocks.{layer}.mlp.hook_pre", edit)
    return recorded[:, :, neuron], logits


def set_ignores_value(model, tokens, layer, neuron, value):
    def edit(post):
        post[:, :, neuron] = 0.0
        return post
    recorded, logits = _run_set(model, tokens, f"blocks.{layer}.mlp.hook_post", edit)
    return recorded[:, :, neuron], logits


def set_only_prompt_0(model, tokens, layer, neuron, value):
    def edit(post):
        post[0, :, neuron] = value
        return post
    recorded, logits = _run_set(model, tokens, f"blocks.{layer}.mlp.hook_post", edit)
    return recorded[:, :, neuron], logits


def set_and_leave_the_hook_on(model, tokens, layer, neuron, value):
    seen = []

    def hook(post, hook):
        seen.append(post[:, :, neuron].clone())
        post = post.clone()
        post[:, :, neuron] = value
        return post
    model.add_hook(f"blocks.{layer}.mlp.hook_post", hook)
    logits = model(tokens)
    return seen[0], logits


SET_WRONG = [set_records_after_the_edit, set_only_the_last_position, set_at_hook_pre, set_ignores_value,
             set_only_prompt_0, set_and_leave_the_hook_on]


@pytest.mark.slow
@pytest.mark.parametrize("wrong", SET_WRONG)
def test_record_and_set_check_catches_mistakes(smollm2, wrong):
    result = l00.check_record_and_set(wrong, smollm2)
    assert result.status == FAILED, result
    assert not smollm2.hook_dict["blocks.25.mlp.hook_post"].fwd_hooks  # the check removed a hook left on


@pytest.mark.slow
def test_record_and_set_check_passes_reference_and_a_context_manager_answer(smollm2):
    def with_hooks_context(model, tokens, layer, neuron, value):
        seen = {}

        def hook(post, hook):
            seen["acts"] = post[..., neuron].clone()
            post = post.clone()
            post[..., neuron] = value
            return post
        with model.hooks(fwd_hooks=[(f"blocks.{layer}.mlp.hook_post", hook)]):
            logits = model(tokens)
        return seen["acts"], logits

    assert l00.check_record_and_set(l00.reference_record_and_set, smollm2).status == PASSED
    assert l00.check_record_and_set(with_hooks_context, smollm2).status == PASSED
    assert l00.check_record_and_set(stub, smollm2).status == NOT_IMPLEMENTED


# --- find_concept_neuron: the named neuron is tested on held-out sentences -----------------------

def _grids(model, concept, control):
    from helpers.neurons import collect_activations, mlp_hook
    hooks = [mlp_hook(layer) for layer in range(model.cfg.n_layers)]
    on, off = collect_activations(model, concept, hooks), collect_activations(model, control, hooks)
    pooled_on = [torch.cat([a[1:] for a in on[h]]) for h in hooks]
    pooled_off = [torch.cat([a[1:] for a in off[h]]) for h in hooks]
    return pooled_on, pooled_off


def _argmax(grid):
    flat = int(grid.flatten().argmax())
    return flat // grid.shape[1], flat % grid.shape[1]


def find_by_raw_difference(model, concept, control):
    """A correct route the lesson did not show: unstandardised differences (here it picks layer-29 neurons)."""
    on, off = _grids(model, concept, control)
    return _argmax(torch.stack([a.mean(0) - b.mean(0) for a, b in zip(on, off)]))


def find_by_concept_mean_only(model, concept, control):
    on, _ = _grids(model, concept, control)
    return _argmax(torch.stack([a.mean(0) for a in on]))


def find_with_the_sign_flipped(model, concept, control):
    on, off = _grids(model, concept, control)
    return _argmax(torch.stack([b.mean(0) - a.mean(0) for a, b in zip(on, off)]))


def find_the_lessons_neuron(model, concept, control):
    return 25, 1418


def find_not_a_pair(model, concept, control):
    return 1418


@pytest.mark.slow
@pytest.mark.parametrize("wrong", [find_by_concept_mean_only, find_with_the_sign_flipped, find_the_lessons_neuron,
                                   find_not_a_pair])
def test_find_concept_neuron_check_rejects_neurons_that_fail_on_held_out_text(smollm2, wrong):
    result = l00.check_find_concept_neuron(wrong, smollm2)
    assert result.status == FAILED, result


@pytest.mark.slow
def test_find_concept_neuron_check_passes_more_than_one_route(smollm2):
    assert l00.check_find_concept_neuron(l00.reference_find_concept_neuron, smollm2).status == PASSED
    assert l00.check_find_concept_neuron(find_by_raw_difference, smollm2).status == PASSED
    assert l00.check_find_concept_neuron(stub, smollm2).status == NOT_IMPLEMENTED


@pytest.mark.slow
def test_settling_check_on_a_model_left_broken_gives_a_result_not_a_traceback(smollm2):
    def broken(resid, hook):
        raise RuntimeError("a hook an earlier cell forgot")
    smollm2.add_hook("blocks.0.hook_resid_pre", broken)
    try:
        result = l00.check_settling_layer(l00.reference_settling_layer, smollm2)
    finally:
        smollm2.reset_hooks()
    # cases built now ("could not build its test cases") or earlier in the session (the function's run fails)
    assert result.status == FAILED and "a hook an earlier cell forgot" in result.message, result
