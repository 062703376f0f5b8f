"""Attention patterns and the scores that classify heads (previous-token, first-token, duplicate, induction).

Shapes follow TransformerLens: a pattern is ``[batch, head, query_pos, key_pos]`` (rows sum to 1).
Scores average, over the queries where a head *could* show the behaviour, the attention mass the
head puts on the key positions that define the behaviour; 1.0 means all of it.
"""
from __future__ import annotations

import torch

from helpers.errors import ShapeError


def _check_pattern(pattern: torch.Tensor) -> None:
    if pattern.dim() != 4 or pattern.shape[-1] != pattern.shape[-2]:
        raise ShapeError(f"expected a pattern [batch, head, query_pos, key_pos], got shape {tuple(pattern.shape)}")


def masked_score(pattern: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over eligible queries of the attention on keys where mask is True. [batch, head, q, k], [batch, q, k] -> [head]."""
    _check_pattern(pattern)
    if mask.shape != (pattern.shape[0], *pattern.shape[2:]):
        raise ShapeError(f"mask shape {tuple(mask.shape)} does not match pattern {tuple(pattern.shape)} (need [batch, q, k])")
    mass = (pattern * mask[:, None].to(pattern.dtype)).sum(-1)  # [batch, head, q]
    eligible = mask.any(-1)  # [batch, q]
    if not eligible.any():
        raise ValueError("no query position is eligible for this score (e.g. no repeated tokens)")
    return (mass * eligible[:, None]).sum((0, 2)) / eligible.sum()


def offset_mask(batch: int, n_pos: int, offset: int, first_query: int = 1) -> torch.Tensor:
    """[batch, q, k] mask that is True at key = query - offset, for queries >= max(offset, first_query)."""
    q = torch.arange(n_pos)[:, None]
    k = torch.arange(n_pos)[None, :]
    mask = (k == q - offset) & (q >= max(offset, first_query))
    return mask.expand(batch, n_pos, n_pos)


def previous_token_score(pattern: torch.Tensor) -> torch.Tensor:
    """Attention from each position to the one before it (queries 2.. so position 0 is not counted twice). -> [head]"""
    return masked_score(pattern, offset_mask(pattern.shape[0], pattern.shape[-1], 1, first_query=2))


def first_token_score(pattern: torch.Tensor) -> torch.Tensor:
    """Attention to position 0 (BOS: the 'attention sink'), from queries 1.. (query 0 has no choice). -> [head]"""
    batch, _, n_pos, _ = pattern.shape
    mask = torch.zeros(batch, n_pos, n_pos, dtype=torch.bool)
    mask[:, 1:, 0] = True
    return masked_score(pattern, mask)


def duplicate_token_mask(tokens: torch.Tensor) -> torch.Tensor:
    """[batch, q, k]: key k < q holds the same token as query q."""
    same = tokens[:, :, None] == tokens[:, None, :]
    return same & torch.ones_like(same).tril(-1)


def induction_mask(tokens: torch.Tensor) -> torch.Tensor:
    """[batch, q, k]: key k < q is the token right after an earlier occurrence of query q's token."""
    batch, n_pos = tokens.shape
    mask = torch.zeros(batch, n_pos, n_pos, dtype=torch.bool)
    mask[:, :, 1:] = tokens[:, :, None] == tokens[:, None, :-1]  # token at k-1 equals token at q
    return mask & torch.ones_like(mask).tril(-1)


def duplicate_token_score(pattern: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Attention to earlier copies of the current token. -> [head]"""
    return masked_score(pattern, duplicate_token_mask(tokens))


def induction_score(pattern: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Attention to the token after an earlier copy of the current token (A B ... A -> B). -> [head]"""
    return masked_score(pattern, induction_mask(tokens))


def stack_patterns(cache, n_layers: int) -> torch.Tensor:
    """Every layer's pattern from a cache: [layer, batch, head, q, k]."""
    return torch.stack([cache[f"blocks.{layer}.attn.hook_pattern"] for layer in range(n_layers)])


def score_all_heads(patterns: torch.Tensor, score_fn, *args) -> torch.Tensor:
    """Apply a per-layer score to stacked patterns [layer, batch, head, q, k] -> [layer, head]."""
    return torch.stack([score_fn(layer_pattern, *args) for layer_pattern in patterns])
