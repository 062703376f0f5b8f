"""Circuits from the weights: the small-matrix eigenvalue scores equal the full vocabulary-sized ones, and
on the toy the planted induction heads copy and match previous tokens far beyond random matrices."""
from __future__ import annotations

import pytest
import torch

from helpers import circuits
from helpers.errors import MicroscopeError


@pytest.fixture(scope="module")
def toy():
    from helpers.models import load

    return load("induction")


def test_small_matrix_scores_equal_the_full_vocabulary_circuits(toy):
    W_E, W_U = circuits._embed_unembed(toy)
    w, p = circuits.head_weights(toy, 1, 0), circuits.head_weights(toy, 0, 1)
    full_ov = W_E @ w["W_V"] @ w["W_O"] @ W_U
    assert circuits.ov_copying_scores(toy, [(1, 0)])[0] == pytest.approx(circuits.eigen_score(full_ov), abs=1e-6)
    full_qk = W_E @ w["W_Q"] @ (W_E @ p["W_V"] @ p["W_O"] @ w["W_K"]).T
    score = circuits.qk_induction_scores(toy, [(1, 0)], [(0, 1)])[0, 0]
    assert float(score) == pytest.approx(circuits.eigen_score(full_qk), abs=1e-6)


def test_toy_induction_heads_copy_beyond_every_random_draw(toy):
    scores = circuits.ov_copying_scores(toy, [(1, 0), (1, 1)])
    baseline = circuits.ov_random_baseline(toy, 1, draws=200)
    assert scores.min() > 0.9 and baseline.abs().mean() < 0.15 and scores.min() > baseline.max()
    top1 = circuits.ov_top1_copying(toy, [(1, 0), (1, 1)], n_tokens=100)
    assert top1.min() > 0.9


def test_toy_qk_circuit_matches_the_previous_token(toy):
    scores = circuits.qk_induction_scores(toy, [(1, 0), (1, 1)], [(0, 1)])
    baseline = circuits.qk_random_baseline(toy, (1, 1), (0, 1), draws=200)
    assert scores.min() > 0.9 and scores.min() > baseline.max()


def test_a_previous_head_in_a_later_layer_gives_nan(toy):
    assert circuits.qk_induction_scores(toy, [(0, 0)], [(1, 0)]).isnan().all()


def test_bad_heads_are_refused(toy):
    with pytest.raises(MicroscopeError, match="does not exist"):
        circuits.ov_copying_scores(toy, [(2, 0)])
    with pytest.raises(MicroscopeError, match="draws"):
        circuits.ov_random_baseline(toy, 1, draws=0)


def test_eigen_score_of_identity_and_its_negative():
    assert circuits.eigen_score(torch.eye(4)) == pytest.approx(1.0)
    assert circuits.eigen_score(-torch.eye(4)) == pytest.approx(-1.0)


def test_cached_vocabulary_products_follow_in_place_weight_edits(toy):
    """The W_U W_E / W_E^T W_E cache is reused while the weights stand and rebuilt when one is edited."""
    heads = [(1, 0), (1, 1)]
    before = circuits.ov_copying_scores(toy, heads)
    assert circuits._vocab_products(toy)[1] is circuits._vocab_products(toy)[1]  # reused, not recomputed
    original = toy.W_E.detach().clone()
    try:
        with torch.no_grad():
            toy.W_E.mul_(-1.0)  # in place: W_U W_E changes sign, so every copying score flips
        flipped = circuits.ov_copying_scores(toy, heads)
        W_E, W_U = circuits._embed_unembed(toy)
        assert torch.allclose(circuits._vocab_products(toy)[0], W_U @ W_E)
        assert torch.allclose(flipped, -before, atol=1e-5)
    finally:
        with torch.no_grad():
            toy.W_E.copy_(original)
    assert torch.allclose(circuits.ov_copying_scores(toy, heads), before, atol=1e-6)
