"""helpers.failures: the refusal judge, Wilson intervals, prompt sets and multiple-choice rotations."""
from __future__ import annotations

import pytest

from helpers.errors import MicroscopeError, PromptError
from helpers.failures import mcq_prompts, refusal_rate, requests, wilson_interval


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
