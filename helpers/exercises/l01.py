"""Lesson 01 exercises: a causal attention pattern from q and k, and the previous-token score.

Cases are small seeded tensors chosen so that each plausible mistake changes the answer: patterns
with more than one position (a missing mask shows), d_head > 1 (a missing scale shows), grouped
key/value heads whose values differ (a wrong grouping shows), and patterns whose query 0 and query 1
carry weight that a correct score must ignore. Mistakes each case separates:

causal_pattern(q, k)
  * no causal mask, a mask applied after the softmax or with 0 instead of -inf, a mask off by one
    (hiding the diagonal, or letting one future key through): every case (5 to 7 positions).
  * no 1/sqrt(d_head) scale, or 1/d_head, or sqrt of the wrong axis: d_head 8, 16, 64 and 4 across cases.
  * softmax over queries instead of keys; q and k swapped (the pattern transposed): every case.
  * grouped-query attention: no grouping, `repeat` instead of `repeat_interleave`, a group size
    hard-coded to SmolLM2's 3: groups of 1, 2, 3 and 2 (multi-query) across cases.
  * only batch item 0: batches of 2 and 3 with different q and k per item.
  * negative scores are common in every case, so an abs() anywhere shows.

previous_token_score(pattern)
  * the main diagonal or two back instead of one back; the diagonal above instead of below: every case.
  * query 0 or query 1 counted, or the last query dropped: the resting head and the random cases.
  * no batch mean (only item 0, or the mean over heads instead of the batch): batches of 3 and 2
    whose items differ; a sum instead of a mean, or a max over queries: the random case.
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
        ("batch of 3, multi-query: 2 query heads share 1 key head, d_head 4", (3, 5, 2, 1, 4, 5), _GQA),
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
    # A batch of 2 whose items differ: head 0 is a previous-token head on item 0 and rests on item 1;
    # head 1 does the opposite after query 3. Reading item 0 only, or averaging heads, shows.
    mixed = torch.cat([_perfect_previous_token_head(5).repeat(1, 2, 1, 1), rest[..., :5, :5].repeat(1, 2, 1, 1)])
    mixed[0, 1, 3:] = rest[0, 0, 3:5, :5]
    mixed[1, 1, 3:] = _perfect_previous_token_head(5)[0, 0, 3:]
    # The resting head comes first: it exposes counting query 0 or query 1, which a perfect head hides.
    return [
        Case("a head resting on BOS (query 1's previous token is BOS)", (rest,), reference_previous_token_score(rest),
             _QUERIES + " And read key i-1 for query i."),
        Case("a perfect previous-token head", (perfect,), reference_previous_token_score(perfect),
             _DIAGONAL + " Then average over queries 2..pos-1."),
        Case("random causal patterns, batch 3, 4 heads", (random,), reference_previous_token_score(random), _QUERIES),
        Case("batch of 2 prompts on which 2 heads behave differently", (mixed,), reference_previous_token_score(mixed),
             "average over the batch axis (0) and the queries 2..pos-1, keeping one score per head (axis 1)."),
    ]


def check_causal_pattern(fn) -> CheckResult:
    """Check a learner's causal_pattern(q, k) against the reference."""
    return check("causal_pattern", fn, _pattern_cases, atol=1e-5, rtol=1e-4)


def check_previous_token_score(fn) -> CheckResult:
    """Check a learner's previous_token_score(pattern) against the reference."""
    return check("previous_token_score", fn, _score_cases, atol=1e-5, rtol=1e-4)
