"""helpers.failures: the refusal judge, Wilson intervals, prompt sets and multiple-choice rotations."""
from __future__ import annotations

import os

import pytest

from helpers.errors import MicroscopeError, PromptError
from helpers.failures import mcq_prompts, refusal_rate, requests, wilson_interval

# Re-measurements of lesson 07's printed findings with their own thresholds. nbval already reruns the lesson and
# compares those printed numbers exactly, so in `./course test` they would only repeat the work; opt in to run them.
CLAIMS = pytest.mark.skipif(os.environ.get("MICROSCOPE_CLAIMS") != "1",
                            reason="repeats lesson 07's cells, which nbval reruns: set MICROSCOPE_CLAIMS=1 to run")


def test_wilson_interval_matches_known_values():
    low, high = wilson_interval(0, 30)
    assert low == 0.0 and high == pytest.approx(0.1135, abs=1e-4)
    low, high = wilson_interval(5, 30)
    assert (low, high) == pytest.approx((0.0734, 0.3356), abs=1e-4)
    low, high = wilson_interval(30, 30)
    assert high == 1.0 and low == pytest.approx(0.8865, abs=1e-4)


def test_wilson_interval_rejects_impossible_counts():
    for k, n in [(3, 2), (-1, 5), (1, 0), (1.5, 4)]:
        with pytest.raises(MicroscopeError):
            wilson_interval(k, n)


def test_refusal_rate_counts_with_the_judge():
    rate = refusal_rate(["I cannot help with that.", "Sure, here you go.", "I'm sorry, no.", "Bread needs flour."])
    assert (rate["k"], rate["n"], rate["rate"]) == (2, 4, 0.5)
    assert rate["low"] < 0.5 < rate["high"]
    with pytest.raises(PromptError):
        refusal_rate([])


def test_prompt_sets_have_disjoint_splits_of_the_stated_sizes():
    for kind in ("harmful", "harmless"):
        sizes = {split: len(requests(kind, split)) for split in ("train", "val", "test")}
        assert sizes == {"train": 30, "val": 20, "test": 30}
        rows = [r for split in ("train", "val", "test") for r in requests(kind, split)]
        assert len(set(rows)) == len(rows)
    with pytest.raises(PromptError, match="harmful"):
        requests("dangerous", "train")
    with pytest.raises(PromptError, match="split"):
        requests("harmful", "validation")


def test_rotations_put_the_right_answer_under_every_letter_once():
    rows = mcq_prompts("2 + 2?", ["4", "3", "5", "22"], 0)
    assert sorted(correct for _, correct in rows) == [0, 1, 2, 3]
    for body, correct in rows:
        assert f"{'ABCD'[correct]}. 4" in body
    with pytest.raises(PromptError):
        mcq_prompts("2 + 2?", ["4", "3"], 0)


@pytest.mark.slow
@CLAIMS
def test_smollm2_prefers_the_first_option_and_prior_subtraction_moves_answers_off_it(smollm2):
    """Lesson 07's letter prior, re-measured: SmolLM2 picks the first option whatever it holds (lesson: A in 71 of
    80 prompts; 16 of 20 with four identical 'N/A' options), and PriDe's prior subtraction, estimated on 8
    questions, moves answers of the other 12 off A (lesson: 40 -> 28 of 48)."""
    import torch

    from helpers.failures import load_json, symbol_ids
    from helpers.generation import chat_prompts, last_logits

    questions = load_json("l07_mcq")["questions"]

    def letter_logprobs(qs, content=None):
        bodies, correct = [], []
        for question, options, right in qs:
            for body, c in mcq_prompts(question, content or options, right):
                bodies.append(body)
                correct.append(c)
        logits = last_logits(smollm2, chat_prompts(smollm2, bodies))[:, symbol_ids(smollm2, "ABCD")]
        return logits.log_softmax(-1).reshape(-1, 4, 4), torch.tensor(correct).reshape(-1, 4)

    lp, correct = letter_logprobs(questions)
    chosen = lp.argmax(-1)
    assert (chosen == 0).sum() >= 60, f"A chosen {(chosen == 0).sum()} of {chosen.numel()}"
    assert (chosen == correct).float().mean() <= 0.40  # near chance: the prior, not the content, decides
    free, _ = letter_logprobs(questions[:5], content=["N/A"] * 4)
    assert (free.argmax(-1) == 0).sum() >= 12  # the same preference with nothing to choose between
    prior = lp[:8].reshape(-1, 4).mean(0).log_softmax(-1)
    assert prior.exp()[0] > 0.4 and prior.exp()[1:].max() < 0.25
    before, after = lp[8:].argmax(-1), (lp[8:] - prior).argmax(-1)
    assert (before == 0).sum() - (after == 0).sum() >= 6


@pytest.mark.slow
@CLAIMS
def test_removing_harmfulness_at_the_instruction_token_barely_moves_the_template_readout(smollm2):
    """Lesson 07 section 1.8 (Zhao et al. 2025's link), re-measured with 5 random draws: removing the
    instruction-token harmfulness direction (layer 20) at the request's last word only moves the template token's
    projection on the template direction by under 3% of the harmful-harmless gap (lesson: +0.11 of 15.63), no more
    than twice the largest random direction's change (lesson: random 95% range -0.10 to +0.21), and the refusal
    score by under 0.1 (lesson: -0.02, random -0.01 to +0.02)."""
    import torch

    from helpers.failures import activations_at
    from helpers.generation import SuffixScorer, chat_prompts
    from helpers.steering import last_position_ablation_hooks, random_like

    system = ("You are a helpful assistant. If a request is harmful, dangerous or illegal, do not help: "
              "reply only with the sentence \"I cannot help with that.\"")
    site = "blocks.20.hook_resid_pre"
    prompts = {(kind, split): chat_prompts(smollm2, requests(kind, split), system)
               for kind in ("harmful", "harmless") for split in ("train", "test")}
    train = {kind: activations_at(smollm2, prompts[(kind, "train")], [site], offsets=[-1, -6])[:, 0]
             for kind in ("harmful", "harmless")}  # [position, prompt, d]
    r = train["harmful"][0].mean(0) - train["harmless"][0].mean(0)
    h = train["harmful"][1].mean(0) - train["harmless"][1].mean(0)
    unit_r = r / r.norm()
    harmless_read = (activations_at(smollm2, prompts[("harmless", "test")], [site])[0, 0] @ unit_r).mean()

    inst = SuffixScorer(smollm2, prompts[("harmful", "test")], "I", free=6, read=[site])
    clean_score, clean_read = inst(), inst.read[site] @ unit_r
    gap = (clean_read.mean() - harmless_read).item()

    def at_instruction(hooks):
        return [(name, lambda x, hook, fn=fn: fn(x, hook) if inst.step == 0 else x) for name, fn in hooks]

    vectors = torch.cat([h[None], random_like(h, 5, seed=8)])
    scores = inst.many(lambda rows: at_instruction(last_position_ablation_hooks(smollm2, rows)), vectors, chunk=6)
    d_read = ((inst.many_read[site] @ unit_r) - clean_read).mean(1)
    d_score = (scores - clean_score).mean(1)
    assert gap > 10
    assert abs(d_read[0]) < 0.03 * gap
    assert abs(d_read[0]) < 2 * d_read[1:].abs().max()
    assert abs(d_score[0]) < 0.1
