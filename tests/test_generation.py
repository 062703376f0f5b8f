"""helpers.generation: cached batched greedy generation equals recomputing everything, hooks included."""
from __future__ import annotations

import pytest
import torch

from helpers.errors import PromptError
from helpers.generation import chat_prompts, continuation_logprobs, generate, last_logits, reference_generate
from helpers.steering import ablation_hooks, addition_hooks, random_directions

pytestmark = pytest.mark.slow

REQUESTS = ["What is the capital of France?", "Write a haiku about rain, please.", "Hi"]


def test_cached_batched_generation_matches_full_recomputation(smollm2):
    prompts = chat_prompts(smollm2, REQUESTS)  # different lengths: left padding is exercised
    out = generate(smollm2, prompts, max_new_tokens=8, batch_size=2)
    for prompt, row in zip(prompts, out.tokens):
        expected = reference_generate(smollm2, prompt, 8)
        assert row.tolist()[:len(expected)] == expected
    assert out.texts[0].startswith("The capital of France is Paris")


def test_hooks_stay_on_for_every_generated_token(smollm2):
    prompts = chat_prompts(smollm2, REQUESTS[:2])
    direction = random_directions(smollm2.cfg.d_model, 1, seed=0)[0]
    hooks = ablation_hooks(smollm2, direction) + addition_hooks(smollm2, direction * 40, 10)
    steered = generate(smollm2, prompts, max_new_tokens=6, fwd_hooks=hooks)
    plain = generate(smollm2, prompts, max_new_tokens=6)
    assert not torch.equal(steered.tokens, plain.tokens)
    for prompt, row in zip(prompts, steered.tokens):
        expected = reference_generate(smollm2, prompt, 6, fwd_hooks=hooks)
        assert row.tolist()[:len(expected)] == expected
    assert not smollm2.hook_dict["blocks.10.hook_resid_pre"].fwd_hooks  # removed afterwards


def test_last_logits_ignore_left_padding(smollm2):
    prompts = chat_prompts(smollm2, REQUESTS)
    together = last_logits(smollm2, prompts)
    alone = torch.cat([last_logits(smollm2, [p]) for p in prompts])
    assert torch.allclose(together, alone, atol=1e-3)


def test_system_prompt_replaces_the_default(smollm2):
    text = chat_prompts(smollm2, ["Hello"], system="Answer in French.")[0]
    assert "Answer in French." in text and "SmolLM" not in text
    assert "SmolLM" in chat_prompts(smollm2, ["Hello"])[0]


def test_bad_prompts_and_system_prompts_are_refused(smollm2):
    with pytest.raises(PromptError, match="non-empty list"):
        generate(smollm2, [])
    with pytest.raises(PromptError, match="non-empty string"):
        chat_prompts(smollm2, ["fine", "  "])
    with pytest.raises(PromptError, match="system"):
        chat_prompts(smollm2, ["Hello"], system="")
    with pytest.raises(PromptError, match="max_new_tokens"):
        generate(smollm2, ["Hello"], max_new_tokens=0)
    with pytest.raises(PromptError, match="pairs"):
        generate(smollm2, ["Hello"], fwd_hooks=["blocks.0.hook_resid_pre"])


def test_a_template_that_cannot_take_a_system_prompt_is_explained(smollm2, monkeypatch):
    strict = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
              "{% endif %}{{ m['content'] }}{% endfor %}")
    monkeypatch.setattr(smollm2.tokenizer, "chat_template", strict)
    with pytest.raises(PromptError, match="system=None"):
        chat_prompts(smollm2, ["Hello"], system="Be brief.")
    dropping = "{% for m in messages %}{% if m['role'] != 'system' %}{{ m['content'] }}{% endif %}{% endfor %}"
    monkeypatch.setattr(smollm2.tokenizer, "chat_template", dropping)
    with pytest.raises(PromptError, match="dropped"):
        chat_prompts(smollm2, ["Hello"], system="Be brief.")


def test_continuation_logprobs_equal_the_suffix_scorer_with_and_without_hooks(smollm2):
    from helpers.generation import SuffixScorer, continuation_logprobs
    from helpers.steering import last_position_addition_hooks, last_position_ablation_hooks

    prompts = chat_prompts(smollm2, ["Tell me a joke.", "Hi", "Describe how to cook rice."], "Be brief.")
    vector = random_directions(smollm2.cfg.d_model, 1, seed=5)[0] * 20

    def add_last(k):  # the full-pass equivalent of adding at the last prompt token and the continuation
        def hook(x, hook):
            x = x.clone()
            x[:, -k:] += vector
            return x
        return hook

    scorer = SuffixScorer(smollm2, prompts, "I cannot", read=["blocks.3.hook_resid_pre"])
    plain = continuation_logprobs(smollm2, prompts, "I cannot")
    assert torch.allclose(scorer(), plain, atol=1e-4)
    steered = continuation_logprobs(smollm2, prompts, "I cannot", fwd_hooks=[("blocks.10.hook_resid_pre", add_last(3))])
    assert torch.allclose(scorer(last_position_addition_hooks(smollm2, vector, 10)), steered, atol=1e-4)
    assert not torch.allclose(steered, plain, atol=1e-2)
    assert torch.allclose(scorer(), plain, atol=1e-4)  # the cache is restored after each call
    assert scorer.read["blocks.3.hook_resid_pre"].shape == (3, smollm2.cfg.d_model)
    ablated = scorer(last_position_ablation_hooks(smollm2, vector))
    assert ablated.shape == (3,) and not torch.allclose(ablated, plain, atol=1e-4)
    with pytest.raises(PromptError, match="continuation"):
        continuation_logprobs(smollm2, prompts, "")
    with pytest.raises(PromptError, match="free"):
        SuffixScorer(smollm2, prompts, "I", free=0)


def test_many_vectors_in_one_pass_equal_one_call_per_vector(smollm2):
    """SuffixScorer.many (lesson 07's random controls) gives each vector's own call to 1e-4, reads included."""
    from helpers.generation import SuffixScorer
    from helpers.steering import last_position_ablation_hooks, last_position_addition_hooks

    prompts = chat_prompts(smollm2, ["Tell me a joke.", "Hi", "Describe how to cook rice."], "Be brief.")
    vectors = random_directions(smollm2.cfg.d_model, 5, seed=3) * 15
    site, low = "blocks.12.hook_resid_pre", "blocks.3.hook_resid_pre"
    scorer = SuffixScorer(smollm2, prompts, "I cannot", read=[site, low])
    for make, layer in ((lambda v: last_position_addition_hooks(smollm2, v, 8), 8),
                        (lambda v: last_position_ablation_hooks(smollm2, v), 0)):
        one_by_one, reads = [], {site: [], low: []}
        for v in vectors:
            one_by_one.append(scorer(make(v)))
            for name in reads:
                reads[name].append(scorer.read[name])
        # chunks of 2, 2 and 1; then the same replayed from the hooks' first block (blocks below run once)
        for from_layer in (None, layer):
            batched = scorer.many(make, vectors, chunk=2, from_layer=from_layer)
            assert batched.shape == (5, 3)
            assert torch.allclose(batched, torch.stack(one_by_one), atol=1e-4), from_layer
            for name in reads:
                assert torch.allclose(scorer.many_read[name], torch.stack(reads[name]), atol=1e-3), (from_layer, name)
    assert scorer._replays[8].exact and scorer._replays[0].exact  # the fast path ran, not the fallback
    assert torch.allclose(scorer(), continuation_logprobs(smollm2, prompts, "I cannot"), atol=1e-4)  # cache intact
    with pytest.raises(PromptError, match="vectors"):
        scorer.many(lambda v: [], vectors[0])
    with pytest.raises(PromptError, match="from_layer"):
        scorer.many(lambda v: last_position_addition_hooks(smollm2, v, 8), vectors, from_layer=9)  # hook below
    with pytest.raises(PromptError, match="from_layer"):
        scorer.many(lambda v: [], vectors, from_layer=30)


def test_many_from_a_layer_falls_back_to_full_runs_when_the_replay_fails(smollm2, monkeypatch):
    from helpers import generation
    from helpers.steering import last_position_addition_hooks

    prompts = chat_prompts(smollm2, ["Hi", "Describe how to cook rice."], "Be brief.")
    vectors = random_directions(smollm2.cfg.d_model, 2, seed=4) * 15
    scorer = generation.SuffixScorer(smollm2, prompts, "I")
    make = lambda v: last_position_addition_hooks(smollm2, v, 20)  # noqa: E731
    reference = scorer.many(make, vectors)

    def broken(self, hooks, c):
        raise RuntimeError("this architecture's blocks need more than was captured")

    monkeypatch.setattr(generation._FromLayer, "run", broken)
    assert torch.allclose(scorer.many(make, vectors, from_layer=20), reference, atol=1e-5)
    assert not scorer._replays[20].exact


def test_prefix_reads_equal_activations_of_a_full_pass(smollm2):
    """SuffixScorer reads earlier prompt tokens while it caches them (lesson 07 reads the instruction token there)."""
    from helpers.failures import activations_at
    from helpers.generation import SuffixScorer

    prompts = chat_prompts(smollm2, ["Tell me a joke.", "Hi", "Describe how to cook rice."], "Be brief.")
    names = ["blocks.0.hook_resid_pre", "blocks.9.hook_resid_pre"]
    scorer = SuffixScorer(smollm2, prompts, "I", read=names, read_prefix=(-6, -2))
    scorer()
    full = activations_at(smollm2, prompts, names, offsets=[-6, -2, -1])  # [offset, hook, prompt, d]
    for h, name in enumerate(names):
        assert torch.allclose(scorer.prefix_read[name], full[:2, h], atol=1e-3)
        assert torch.allclose(scorer.read[name], full[2, h], atol=1e-3)
    with pytest.raises(PromptError, match="read_prefix"):
        SuffixScorer(smollm2, prompts, "I", read=names, read_prefix=(-1,))
