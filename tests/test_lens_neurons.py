"""helpers.lens and helpers.neurons: right answers on planted data and the real model, clear errors on bad input."""
from __future__ import annotations

import pytest
import torch

from helpers.errors import HookNameError, MicroscopeError, PromptError, ShapeError, TokenError
from helpers.lens import answer_ranks, lens_all_layers, lens_logits, logit_lens, top_k_next_tokens
from helpers.neurons import (collect_activations, load_sentences, mlp_hook, neuron_stats, pooled_tokens,
                             rank_neurons, rank_neurons_across_hooks, top_activating_tokens)
from helpers.tokens import run_with_cache

# --- top_k_next_tokens ----------------------------------------------------------------------------


def test_top_k_reads_the_last_position_and_sorts_probabilities():
    logits = torch.zeros(1, 3, 5)
    logits[0, 0, 4] = 10.0  # the first position prefers token 4; the last prefers 2, then 1
    logits[0, -1, 2], logits[0, -1, 1] = 3.0, 2.0
    probs, ids = top_k_next_tokens(logits, 2)
    assert ids.tolist() == [[2, 1]]
    assert torch.allclose(probs, logits[0, -1].softmax(-1)[[2, 1]][None])


def test_top_k_refuses_wrong_shape_and_k():
    with pytest.raises(ShapeError, match=r"\[batch, pos, d_vocab\]"):
        top_k_next_tokens(torch.zeros(3, 5), 2)
    with pytest.raises(MicroscopeError, match="k=6 is out of range"):
        top_k_next_tokens(torch.zeros(1, 3, 5), 6)


# --- logit lens on SmolLM2 --------------------------------------------------------------------------

PROMPT = "The Eiffel Tower is in the city of"


@pytest.mark.slow
def test_lens_at_the_last_layer_is_the_models_prediction(smollm2):
    logits, cache, _ = run_with_cache(smollm2, PROMPT)
    last = smollm2.cfg.n_layers - 1
    assert torch.allclose(lens_logits(smollm2, cache, last), logits[:, -1], atol=1e-4)
    assert torch.allclose(lens_all_layers(smollm2, cache)[-1], logits[:, -1], atol=1e-3)
    # An earlier layer reads a different distribution: the lens is not a constant.
    assert not torch.allclose(lens_logits(smollm2, cache, last // 2), logits[:, -1], atol=1.0)


@pytest.mark.slow
def test_logit_lens_table_has_every_layer_and_ends_on_the_answer(smollm2):
    table = logit_lens(smollm2, PROMPT, " Paris")
    assert table["layer"].tolist() == list(range(-1, smollm2.cfg.n_layers))
    assert table["top_token"].iloc[-1] == " Paris" and table["answer_rank"].iloc[-1] == 0
    assert table["answer_prob"].between(0, 1).all()


@pytest.mark.slow
def test_lens_refuses_multi_token_answers_and_missing_layers(smollm2):
    with pytest.raises(TokenError, match="not one"):
        logit_lens(smollm2, PROMPT, " Parisian gate")
    _, cache, _ = run_with_cache(smollm2, PROMPT)
    with pytest.raises(MicroscopeError, match="blocks 0 to 29"):
        lens_logits(smollm2, cache, 30)
    with pytest.raises(MicroscopeError, match="one answer per prompt"):
        answer_ranks(smollm2, [PROMPT, PROMPT], [" Paris"])


# --- neuron ranking on planted data ------------------------------------------------------------------

def _planted(n_sentences: int, concept: bool, gen: torch.Generator) -> list[torch.Tensor]:
    acts = []
    for _ in range(n_sentences):
        a = torch.randn(6, 10, generator=gen) * 0.1
        a[0, 9] = 100.0  # a BOS-only neuron, the same in both sets
        if concept:
            a[1:, 4] += 2.0  # the planted concept neuron
            a[0, 7] = 50.0  # fires on BOS of concept sentences only: must not win
        acts.append(a)
    return acts


def test_rank_neurons_finds_the_planted_neuron_and_ignores_bos():
    gen = torch.Generator().manual_seed(0)
    concept, control = _planted(4, True, gen), _planted(4, False, gen)
    ids, scores = rank_neurons(concept, control, k=3)
    assert ids[0].item() == 4 and scores[0].item() == pytest.approx(2.0, abs=0.1)
    assert scores.tolist() == sorted(scores.tolist(), reverse=True)
    with_bos, _ = rank_neurons(concept, control, k=1, skip_bos=False)
    assert with_bos.item() == 7  # why BOS is skipped by default


def test_standardised_ranking_compares_neurons_of_different_scales():
    # Neuron 0 swings by +-10 and shifts by 3 on the concept; neuron 1 swings by +-0.1 and shifts by 0.5.
    swing = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0])[:, None] * torch.tensor([10.0, 0.1])
    concept = [swing + torch.tensor([3.0, 0.5]) for _ in range(4)]
    control = [swing.clone() for _ in range(4)]
    assert rank_neurons(concept, control, k=1)[0].item() == 0  # biggest raw difference, noisy
    assert rank_neurons(concept, control, k=1, standardise=True)[0].item() == 1  # cleanest separation
    stats = neuron_stats(concept, control)
    assert torch.allclose(stats.difference, stats.concept_mean - stats.control_mean)


def test_neuron_helpers_refuse_bad_activations():
    with pytest.raises(ShapeError, match="non-empty list"):
        pooled_tokens([])
    with pytest.raises(ShapeError, match="same d"):
        pooled_tokens([torch.zeros(3, 4), torch.zeros(3, 5)])
    with pytest.raises(ShapeError, match="same hook"):
        neuron_stats([torch.zeros(3, 4)], [torch.zeros(3, 5)])
    with pytest.raises(ShapeError, match="no words"):
        pooled_tokens([torch.zeros(1, 4)])
    with pytest.raises(MicroscopeError, match="k=5 is out of range"):
        rank_neurons([torch.randn(3, 4)], [torch.randn(3, 4)], k=5)
    with pytest.raises(MicroscopeError, match="different hooks"):
        rank_neurons_across_hooks({"a": [torch.randn(3, 4)]}, {"b": [torch.randn(3, 4)]})


def test_flight_prompt_set_pairs_each_concept_sentence_with_a_control():
    data = load_sentences("l00_flight")
    assert len(data["concept"]) == len(data["control"]) >= 20
    assert not set(data["concept"]) & set(data["control"])
    held = {row["text"] for row in data["held_out"]}
    assert not held & (set(data["concept"]) | set(data["control"]))
    with pytest.raises(MicroscopeError, match="Known sets: .*l00_flight"):
        load_sentences("l00_flights")


# --- neuron helpers on SmolLM2 -----------------------------------------------------------------------

SENTENCES = ["The plane landed.", "A cat slept on the warm sofa all day."]


@pytest.mark.slow
def test_batched_activations_match_one_sentence_at_a_time(smollm2):
    hook = mlp_hook(3)
    acts = collect_activations(smollm2, SENTENCES, [hook])[hook]
    for text, act in zip(SENTENCES, acts):
        _, cache, tokens = run_with_cache(smollm2, text, names=[hook])
        assert act.shape == (tokens.shape[1], smollm2.cfg.d_mlp)  # padding cut off, BOS kept
        assert torch.allclose(act, cache[hook][0], atol=1e-4)


@pytest.mark.slow
def test_top_activating_tokens_are_sorted_real_and_never_bos(smollm2):
    hook = mlp_hook(5)
    acts = collect_activations(smollm2, SENTENCES, [hook])[hook]
    table = top_activating_tokens(smollm2, SENTENCES, hook, neuron=11, k=5, acts=acts)
    assert table["activation"].is_monotonic_decreasing and len(table) == 5
    assert (table["position"] > 0).all()
    for _, row in table.iterrows():
        assert row["activation"] == pytest.approx(acts[row["sentence"]][row["position"], 11].item())
        assert row["context"].endswith(f"[{row['token']}]")


@pytest.mark.slow
def test_neuron_helpers_refuse_bad_input_on_the_model(smollm2):
    with pytest.raises(PromptError, match="not one string"):
        collect_activations(smollm2, "The plane landed.", [mlp_hook(0)])
    with pytest.raises(PromptError, match="empty"):
        collect_activations(smollm2, [], [mlp_hook(0)])
    with pytest.raises(HookNameError, match="blocks.0.mlp.hook_post"):
        collect_activations(smollm2, SENTENCES, ["blocks.0.mlp.hook_pots"])
    with pytest.raises(MicroscopeError, match="1536 units"):
        top_activating_tokens(smollm2, SENTENCES, mlp_hook(0), neuron=1536)
