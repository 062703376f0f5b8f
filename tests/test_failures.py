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
