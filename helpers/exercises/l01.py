"""Lesson 01 exercises: a causal attention pattern from q and k, and the previous-token score.

Cases are small seeded tensors chosen so that each plausible mistake changes the answer: patterns
with more than one position (a missing mask shows), d_head > 1 (a missing scale shows), grouped
key/value heads whose values differ (a wrong grouping shows), and patterns whose query 0 and query 1
carry weight that a correct score must ignore.
"""
from __future__ import annotations

import torch

from helpers.attention import pattern_from_qk
from helpers.attention import previous_token_score as _previous_token_score
from helpers.checks import Case, CheckResult, check


def reference_causal_pattern(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Causal softmax(q.k / sqrt(d_head)). q [batch, pos, head, d_head], k [batch, pos, kv_head, d_head] -> [batch, head, q, k]."""
    return pattern_from_qk(q, k)


def reference_previous_token_score(pattern: torch.Tensor) -> torch.Tensor:
    """Mean attention from query i to key i-1 over batch and queries 2..pos-1. [batch, head, q, k] -> [head]."""
    return _previous_token_score(pattern)


def _qk(batch: int, pos: int, heads: int, kv_heads: int, d_head: int, seed: int, size: float = 1.0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, pos, heads, d_head, generator=generator) * size
    k = torch.randn(batch, pos, kv_heads, d_head, generator=generator) * size
    return q, k


_MASK_SCALE_AXIS = ("Three ingredients: divide q.k by sqrt(d_head); set the scores of keys after the query to -inf "
                    "before the softmax (the causal mask); take the softmax over the key axis (the last one).")
_GQA = ("k has fewer heads than q. Give each query head its key head in order: with 4 query heads and 2 key "
        "heads, query heads 0-1 read key head 0 and 2-3 read key head 1 (k.repeat_interleave(group, dim=2), "
        "not k.repeat).")


def _pattern_cases() -> list[Case]:
    cases = []
    for name, shape, hint in [
        ("one head, 5 positions, d_head 8", (1, 5, 1, 1, 8, 0), _MASK_SCALE_AXIS),
        ("batch of 2, 3 heads each with its own key head", (2, 6, 3, 3, 16, 1), _MASK_SCALE_AXIS),
        ("grouped-query attention: 4 query heads share 2 key heads", (1, 6, 4, 2, 8, 2), _GQA),
        ("SmolLM2-sized: 9 query heads share 3 key heads, d_head 64", (2, 7, 9, 3, 64, 3), _GQA),
    ]:
        q, k = _qk(*shape, size=2.0)
        cases.append(Case(name, (q, k), reference_causal_pattern(q, k), hint))
    return cases


def _random_causal_pattern(batch: int, heads: int, pos: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, heads, pos, pos, generator=generator) * 2
    future = torch.ones(pos, pos, dtype=torch.bool).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(-1)


def _perfect_previous_token_head(pos: int) -> torch.Tensor:
    """[1, 1, pos, pos]: query 0 attends to itself, every later query to the token before it."""
    pattern = torch.zeros(pos, pos)
    pattern[0, 0] = 1
    pattern[torch.arange(1, pos), torch.arange(pos - 1)] = 1
    return pattern[None, None]


_DIAGONAL = ("The previous token of query i is key i-1: the diagonal just *below* the main one "
             "(pattern.diagonal(offset=-1, dim1=-2, dim2=-1) holds queries 1..pos-1).")
_QUERIES = ("Average over queries 2..pos-1 only: query 0 has no previous token, and query 1's previous token "
            "is BOS, where resting heads put their attention anyway. Average over the batch too.")


def _score_cases() -> list[Case]:
    perfect = _perfect_previous_token_head(6)
    rest = torch.zeros(1, 1, 6, 6)
    rest[..., 0] = 1  # a head resting on BOS: every query attends to position 0
    random = _random_causal_pattern(3, 4, 7, seed=4)
    # The resting head comes first: it exposes counting query 0 or query 1, which a perfect head hides.
    return [
        Case("a head resting on BOS (query 1's previous token is BOS)", (rest,), reference_previous_token_score(rest),
             _QUERIES + " And read key i-1 for query i."),
        Case("a perfect previous-token head", (perfect,), reference_previous_token_score(perfect),
             _DIAGONAL + " Then average over queries 2..pos-1."),
        Case("random causal patterns, batch 3, 4 heads", (random,), reference_previous_token_score(random), _QUERIES),
    ]


PATTERN_CASES = _pattern_cases()
SCORE_CASES = _score_cases()


def check_causal_pattern(fn) -> CheckResult:
    """Check a learner's causal_pattern(q, k) against the reference."""
    return check("causal_pattern", fn, PATTERN_CASES, atol=1e-5, rtol=1e-4)


def check_previous_token_score(fn) -> CheckResult:
    """Check a learner's previous_token_score(pattern) against the reference."""
    return check("previous_token_score", fn, SCORE_CASES, atol=1e-5, rtol=1e-4)
