"""The addition toy (lesson 07's bag of heuristics) and the neuron classifier and CCS it is read with."""
from __future__ import annotations

import pytest
import torch

from helpers.errors import PromptError
from helpers.failures import (ccs_fit, ccs_predict, classify_neurons, neuron_patterns, result_profile,
                              variance_explained)
from helpers.toy import TOY_MODELS
from helpers.toy import addition as task


def test_batches_put_the_sum_at_the_equals_sign_only():
    tokens, targets = task.make_batch(torch.Generator().manual_seed(0), 64)
    assert tokens.shape == targets.shape == (64, 5)
    assert (tokens[:, 0] == task.BOS).all() and (tokens[:, 2] == task.PLUS).all() and (tokens[:, 4] == task.EQ).all()
    assert torch.equal(targets[:, task.EQ_POS], tokens[:, 1] + tokens[:, 3])
    assert (targets[:, :task.EQ_POS] == -100).all()
    grid, a, b = task.grid()
    assert grid.shape == (10_000, 5) and int((a + b).max()) == task.N_RESULT - 1


def test_classifier_names_planted_patterns():
    grid, a, b = task.grid()
    s = (a + b).float()
    acts = torch.stack([
        (a.float() - 50).relu(),                     # operand a
        (b.float() < 30).float(),                    # operand b
        torch.exp(-((s - 170) / 10) ** 2),           # a bump on sums near 170
        torch.exp(-((s - 75) / 10) ** 2),            # a bump on sums near 75
        ((a + b) % 10 == 3).float(),                 # the sum ends in 3
        torch.randn(10_000, generator=torch.Generator().manual_seed(0)),  # noise
        torch.ones(10_000),                          # dead
    ], dim=1)
    assert classify_neurons(acts, a, b) == ["operand a", "operand b", "result 150-198", "result 50-99",
                                            "result mod 10", "mixed", "dead"]
    r2 = neuron_patterns(acts, a, b)
    assert r2.shape == (4, 7) and r2[0, 0] > 0.99 and r2[3, 4] > 0.99 and r2[:, 5].max() < 0.05
    assert result_profile(acts, a + b).shape == (199, 7)
    with pytest.raises(PromptError, match="groups"):
        variance_explained(acts, a[:10])


def test_ccs_finds_a_planted_contrast_and_has_no_sign():
    g = torch.Generator().manual_seed(0)
    n, d = 120, 32
    truth = torch.randint(0, 2, (n,), generator=g)
    direction = torch.randn(d, generator=g)
    noise = lambda: torch.randn(n, d, generator=g)
    side = (2 * truth - 1).float()[:, None]                   # +1 when x+ is the true statement
    positive = noise() + 3 * side * direction / direction.norm()
    negative = noise() - 3 * side * direction / direction.norm()
    theta, loss, losses = ccs_fit(positive[:80], negative[:80], restarts=4, steps=200)
    assert len(losses) == 4 and loss == min(losses)
    p = ccs_predict(theta, positive[80:], negative[80:])
    acc = ((p > 0.5).long() == truth[80:]).float().mean().item()
    assert max(acc, 1 - acc) > 0.9
    with pytest.raises(PromptError, match="positive"):
        ccs_fit(positive, negative[:10])


@pytest.fixture(scope="module")
def adder():
    from helpers.models import load

    model = load("addition")
    torch.set_grad_enabled(False)
    grid, a, b = task.grid()
    logits, cache = model.run_with_cache(grid, names_filter=["blocks.0.mlp.hook_post"])
    yield model, grid, a, b, logits[:, task.EQ_POS], cache["blocks.0.mlp.hook_post"][:, task.EQ_POS]
    torch.set_grad_enabled(True)


def test_shipped_adder_is_registered_and_adds(adder):
    assert TOY_MODELS["addition"].weights.exists()
    _, _, a, b, logits, _ = adder
    assert (logits.argmax(-1) == a + b).float().mean() > 0.99


def test_shipped_adder_uses_result_range_neurons_and_no_digit_neurons(adder):
    _, _, a, b, _, acts = adder
    r2 = neuron_patterns(acts, a, b)
    assert r2[3].max() < 0.05                       # no neuron follows the last digit
    labels = classify_neurons(acts, a, b)
    result_like = sum(label.startswith("result ") for label in labels)
    assert result_like / len(labels) > 0.9          # almost every neuron is a function of the sum


def test_ablating_a_range_class_breaks_its_own_range_more_than_random_sets(adder):
    model, grid, a, b, _, acts = adder
    total = a + b
    labels = classify_neurons(acts, a, b)
    mean = acts.mean(0)
    live = [i for i, label in enumerate(labels) if label != "dead"]

    def range_accuracies(neurons):  # accuracy on sums 0-49, 50-99, 100-149, 150-198
        idx = torch.as_tensor(list(neurons), dtype=torch.long)

        def hook(x, hook):
            x = x.clone()
            x[:, task.EQ_POS, idx] = mean[idx]
            return x

        pred = model.run_with_hooks(grid, fwd_hooks=[("blocks.0.mlp.hook_post", hook)])[:, task.EQ_POS].argmax(-1)
        return torch.tensor([(pred[(total >= lo) & (total < lo + 50)] == total[(total >= lo) & (total < lo + 50)]).float().mean()
                             for lo in (0, 50, 100, 150)])

    def selectivity(neurons):  # mean accuracy on the other three ranges minus accuracy on sums 100-149
        acc = range_accuracies(neurons)
        return (acc[[0, 1, 3]].mean() - acc[2]).item(), acc[2].item()

    members = [i for i, label in enumerate(labels) if label == "result 100-149"]
    assert members
    sel, own = selectivity(members)
    g = torch.Generator().manual_seed(0)
    random_sets = [[live[j] for j in torch.randperm(len(live), generator=g)[:len(members)]] for _ in range(10)]
    random_sel = [selectivity(s)[0] for s in random_sets]
    # Random sets of the same size break every range about equally; the class breaks its own range.
    assert own < 0.4 and sel > 0.4
    assert sel > max(random_sel) and sel > sum(random_sel) / len(random_sel) + 0.3


def test_cached_neuron_ablation_equals_a_hooked_forward_pass(adder):
    """The lesson ablates neuron classes from one cached run; it must give the hooked pass's logits (and answers)."""
    from helpers.failures import last_mlp_ablation_logits

    model, grid, a, b, _, acts = adder
    _, cache = model.run_with_cache(grid, names_filter=["blocks.0.hook_resid_post"])
    resid = cache["blocks.0.hook_resid_post"][:, task.EQ_POS]
    mean = acts.mean(0)
    for neurons in ([3, 17, 200], list(range(0, 512, 5)), list(range(256))):
        idx = torch.tensor(neurons)

        def hook(x, hook):
            x = x.clone()
            x[:, task.EQ_POS, idx] = mean[idx]
            return x

        slow = model.run_with_hooks(grid, fwd_hooks=[("blocks.0.mlp.hook_post", hook)])[:, task.EQ_POS]
        fast = last_mlp_ablation_logits(model, resid, acts, neurons, mean)
        assert torch.allclose(fast, slow, atol=1e-4)
        assert torch.equal(fast.argmax(-1), slow.argmax(-1))
    with pytest.raises(PromptError, match="neurons"):
        last_mlp_ablation_logits(model, resid, acts, [], mean)
