"""Path patching: the batched version equals a slow one-sender-at-a-time reference, and it behaves like
the method it names (a path into a head that is never read changes nothing; logits path = direct effect)."""
from __future__ import annotations

import pytest
import torch

from helpers.errors import MicroscopeError
from helpers.path_patching import (PathPatchingError, kv_head, path_patch, path_patch_each_receiver,
                                   path_patch_reference, path_patch_sweep)


@pytest.fixture(scope="module")
def toy():
    from helpers.models import load

    return load("induction")


@pytest.fixture(scope="module")
def toy_pair():
    """BOS + 12 random tokens + the same 12 (clean) vs a first copy of other tokens (corrupted): induction or not."""
    g = torch.Generator().manual_seed(0)
    half = torch.randint(1, 128, (4, 12), generator=g)
    clean = torch.cat([torch.zeros(4, 1, dtype=torch.long), half, half], dim=1)
    corrupted = clean.clone()
    corrupted[:, 1:13] = torch.randint(1, 128, (4, 12), generator=g)
    target = clean[:, -1]

    def metric(logits):
        return logits[:, -2].log_softmax(-1)[torch.arange(4), target].mean()  # log P(the repeated token)
    return clean, corrupted, metric


@pytest.mark.parametrize("receiver_input", ["q", "k", "v"])
def test_batched_path_patching_equals_the_slow_reference_into_heads(toy, toy_pair, receiver_input):
    clean, corrupted, metric = toy_pair
    senders = [(0, 0), (0, 1)]
    fast = path_patch(toy, clean, corrupted, metric, senders, [(1, 0), (1, 1)], receiver_input, batch_size=1,
                      progress=False)
    slow = path_patch_reference(toy, clean, corrupted, metric, senders, [(1, 0), (1, 1)], receiver_input)
    assert torch.allclose(fast, slow, atol=1e-5)
    chunked = path_patch(toy, clean, corrupted, metric, senders, [(1, 0), (1, 1)], receiver_input, batch_size=2,
                         progress=False)
    assert torch.allclose(fast, chunked, atol=1e-5)


def test_path_to_logits_equals_the_reference_and_the_sweep(toy, toy_pair):
    clean, corrupted, metric = toy_pair
    senders = [(0, 0), (0, 1), (1, 0), (1, 1)]
    fast = path_patch(toy, clean, corrupted, metric, senders, "logits", progress=False)
    assert torch.allclose(fast, path_patch_reference(toy, clean, corrupted, metric, senders, "logits"), atol=1e-5)
    grid = path_patch_sweep(toy, clean, corrupted, metric, "logits", progress=False)
    assert torch.allclose(grid.flatten(), fast, atol=1e-5)


def test_the_full_pass_fallback_gives_the_same_numbers(toy, toy_pair, monkeypatch):
    """A model whose blocks cannot be replayed runs every pass in full; the numbers must not change."""
    import helpers.patching

    clean, corrupted, metric = toy_pair
    args = (toy, clean, corrupted, metric, [(0, 0), (0, 1)], [(1, 0)], "k")
    replayed = path_patch(*args, progress=False)
    monkeypatch.setattr(helpers.patching, "_replay_mode", lambda *a: "full")
    assert torch.allclose(path_patch(*args, progress=False), replayed, atol=1e-5)
    assert torch.allclose(path_patch(*args[:5], "logits", progress=False),
                          path_patch_reference(*args[:5], "logits"), atol=1e-5)


@pytest.mark.parametrize("receiver_input", ["q", "k", "v"])
def test_each_receiver_equals_one_path_patch_per_receiver(toy, toy_pair, receiver_input):
    clean, corrupted, metric = toy_pair
    receivers = [(1, 0), (1, 1)]
    each = path_patch_each_receiver(toy, clean, corrupted, metric, (0, 1), receivers, receiver_input, progress=False)
    one_by_one = torch.cat([path_patch_reference(toy, clean, corrupted, metric, [(0, 1)], [r], receiver_input)
                            for r in receivers])
    assert torch.allclose(each, one_by_one, atol=1e-5)
    with pytest.raises(PathPatchingError, match="layer before"):
        path_patch_each_receiver(toy, clean, corrupted, metric, (1, 0), [(1, 1)], receiver_input)


def test_the_previous_token_head_reaches_the_induction_heads_through_their_keys(toy, toy_pair):
    """The planted circuit: head 0.1 is the previous-token head, read by the induction heads' keys (lesson 02)."""
    clean, corrupted, metric = toy_pair
    with torch.no_grad():
        base, worst = float(metric(toy(clean))), float(metric(toy(corrupted)))
    keys = path_patch(toy, clean, corrupted, metric, [(0, 1)], [(1, 0), (1, 1)], "k", progress=False)
    queries = path_patch(toy, clean, corrupted, metric, [(0, 1)], [(1, 0), (1, 1)], "q", progress=False)
    assert base - float(keys) > 0.5 * (base - worst)  # most of the damage travels this one path
    assert base - float(keys) > 10 * abs(base - float(queries))


def test_a_path_from_a_head_to_itself_changes_nothing(toy, toy_pair):
    """Patching a sender whose clean and corrupted outputs are equal leaves the clean metric."""
    clean, _, metric = toy_pair
    with torch.no_grad():
        base = float(metric(toy(clean)))
    same = path_patch(toy, clean, clean.clone(), metric, [(0, 0), (0, 1)], [(1, 1)], "v", progress=False)
    assert torch.allclose(same, torch.tensor([base, base]), atol=1e-5)


def test_sweep_is_nan_where_a_path_is_undefined(toy, toy_pair):
    clean, corrupted, metric = toy_pair
    grid = path_patch_sweep(toy, clean, corrupted, metric, [(1, 0)], "k", progress=False)
    assert grid[0].isfinite().all() and grid[1].isnan().all()


def test_bad_paths_are_refused(toy, toy_pair):
    clean, corrupted, metric = toy_pair
    with pytest.raises(PathPatchingError, match="layer before"):
        path_patch(toy, clean, corrupted, metric, [(1, 0)], [(1, 1)], "q")
    with pytest.raises(PathPatchingError, match="'k'"):
        path_patch(toy, clean, corrupted, metric, [(0, 0)], [(1, 1)], "keys")
    with pytest.raises(MicroscopeError, match="does not exist"):
        path_patch(toy, clean, corrupted, metric, [(0, 5)], "logits")
    with pytest.raises(MicroscopeError):
        path_patch(toy, clean, corrupted[:, :5], metric, [(0, 0)], "logits")


def test_grouped_query_heads_share_their_key_value_head(smollm2):
    assert [kv_head(smollm2, h) for h in range(9)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]


@pytest.mark.slow
def test_batched_equals_reference_on_smollm2_ioi(smollm2):
    from helpers.ioi import logit_diff_metric, make_dataset

    data = make_dataset(smollm2, n_pairs=1)
    metric = logit_diff_metric(data)
    senders = [(17, 4), (10, 7)]
    for receivers, kind in (([(22, 0), (23, 3)], "v"), ([(23, 0)], "q"), ("logits", "q")):
        args = (smollm2, data.clean_tokens, data.corrupted_tokens, metric, senders, receivers, kind)
        fast = path_patch(*args, progress=False)
        slow = path_patch_reference(*args)
        assert torch.allclose(fast, slow, atol=1e-4), (receivers, kind)


def test_each_receiver_gives_the_same_numbers_in_any_batch_size(toy, toy_pair):
    clean, corrupted, metric = toy_pair
    receivers = [(1, 1), (1, 0)]
    together = path_patch_each_receiver(toy, clean, corrupted, metric, (0, 1), receivers, "k", progress=False)
    alone = path_patch_each_receiver(toy, clean, corrupted, metric, (0, 1), receivers, "k", batch_size=1, progress=False)
    assert torch.allclose(together, alone, atol=1e-6)


@pytest.mark.slow
def test_each_receiver_across_layers_matches_the_reference_on_smollm2(smollm2):
    """Value receivers in two layers, batched out of layer order, two of them in one layer with different shared
    key-value heads (grouped-query attention): each equals the slow one-path reference. (Queries and keys are
    compared with the reference on the toy model, for every input kind, and by the test above on SmolLM2.)"""
    from helpers import ioi

    data = ioi.make_dataset(smollm2, 1, seed=0)
    metric = ioi.logit_diff_metric(data)
    receivers, receiver_input = [(23, 0), (21, 5), (23, 7)], "v"
    each = path_patch_each_receiver(smollm2, data.clean_tokens, data.corrupted_tokens, metric, (20, 0), receivers,
                                    receiver_input, batch_size=2, progress=False)
    reference = torch.cat([path_patch_reference(smollm2, data.clean_tokens, data.corrupted_tokens, metric, [(20, 0)],
                                                [r], receiver_input) for r in receivers])
    assert torch.allclose(each, reference, atol=1e-4)
