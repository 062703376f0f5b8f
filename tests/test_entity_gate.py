"""The entity-gate toy: its task, and the planted known-entity gate that lesson 07 makes misfire."""
from __future__ import annotations

import pytest
import torch

from helpers.models import load
from helpers.steering import random_like
from helpers.toy import entity_gate as task

SITE = "blocks.1.hook_resid_pre"


@pytest.fixture(scope="module")
def toy():
    return load("entity-gate")


def _idk_rate(model, kind, vector):
    tokens, _ = task.all_questions(kind)

    def add(x, hook):
        x = x.clone()
        x[:, task.ASK_POS] += vector
        return x

    with torch.no_grad():
        predicted = model.run_with_hooks(tokens, fwd_hooks=[(SITE, add)])[:, task.ASK_POS].argmax(-1)
    return (predicted == task.IDK).float().mean().item()


def test_batches_ask_one_question_with_loss_only_at_ask():
    tokens, targets = task.make_batch(torch.Generator().manual_seed(0), 64)
    assert tokens.shape == targets.shape == (64, 4)
    assert (targets[:, :task.ASK_POS] == -100).all()
    known = tokens[:, 1] < task.N_KNOWN
    assert (targets[known, task.ASK_POS] != task.IDK).all() and (targets[~known, task.ASK_POS] == task.IDK).all()
    assert (tokens[:, 1] < task.N_KNOWN + task.N_UNKNOWN).all()  # unseen entities never appear in training


def test_shipped_model_answers_facts_and_defaults_to_dont_know(toy):
    with torch.no_grad():
        for kind, minimum in [("known", 0.95), ("unknown", 0.95)]:
            tokens, right = task.all_questions(kind)
            assert (toy(tokens)[:, task.ASK_POS].argmax(-1) == right).float().mean() >= minimum
    assert _idk_rate(toy, "unseen", torch.zeros(toy.cfg.d_model)) >= 0.6


def test_adding_the_known_entity_gate_makes_the_toy_hallucinate_beyond_random(toy):
    with torch.no_grad():
        _, known = toy.run_with_cache(task.all_questions("known")[0], names_filter=[SITE])
        _, unknown = toy.run_with_cache(task.all_questions("unknown")[0], names_filter=[SITE])
    gate = known[SITE][:, task.ASK_POS].mean(0) - unknown[SITE][:, task.ASK_POS].mean(0)
    assert _idk_rate(toy, "unseen", gate) <= 0.1
    random_rates = [_idk_rate(toy, "unseen", v) for v in random_like(gate, 10, seed=0)]
    assert sum(random_rates) / len(random_rates) >= 0.5
    assert _idk_rate(toy, "known", -gate) >= 0.9  # and subtracting it makes known entities "unknown"
