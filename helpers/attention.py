"""Attention patterns and the scores that classify heads (previous-token, first-token, duplicate, induction).

Shapes follow TransformerLens: a pattern is ``[batch, head, query_pos, key_pos]`` (rows sum to 1).
Scores average, over the queries where a head *could* show the behaviour, the attention mass the
head puts on the key positions that define the behaviour; 1.0 means all of it.
"""
from __future__ import annotations

import torch

from helpers import validate
from helpers.errors import MicroscopeError, ShapeError


def _check_pattern(pattern: torch.Tensor) -> torch.Tensor:
    pattern = validate.tensor(pattern, "pattern", ndim=4, shape_doc="a pattern [batch, head, query_pos, key_pos]")
    if pattern.shape[-1] != pattern.shape[-2]:
        raise ShapeError(f"expected a pattern [batch, head, query_pos, key_pos], got shape {tuple(pattern.shape)}")
    return pattern


def _check_tokens(tokens: torch.Tensor) -> torch.Tensor:
    return validate.tensor(tokens, "tokens", ndim=2, shape_doc="token ids [batch, pos]", floating=False)


def masked_score(pattern: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over eligible queries of the attention on keys where mask is True. [batch, head, q, k], [batch, q, k] -> [head]."""
    pattern = _check_pattern(pattern)
    if mask.shape != (pattern.shape[0], *pattern.shape[2:]):
        raise ShapeError(f"mask shape {tuple(mask.shape)} does not match pattern {tuple(pattern.shape)} (need [batch, q, k])")
    mass = (pattern * mask[:, None].to(pattern.dtype)).sum(-1)  # [batch, head, q]
    eligible = mask.any(-1)  # [batch, q]
    if not eligible.any():
        raise MicroscopeError("no query position is eligible for this score: the prompt has no repeated "
                              "tokens (duplicate/induction scores need some) or is too short")
    return (mass * eligible[:, None]).sum((0, 2)) / eligible.sum()


def offset_mask(batch: int, n_pos: int, offset: int, first_query: int = 1) -> torch.Tensor:
    """[batch, q, k] mask that is True at key = query - offset, for queries >= max(offset, first_query)."""
    q = torch.arange(n_pos)[:, None]
    k = torch.arange(n_pos)[None, :]
    mask = (k == q - offset) & (q >= max(offset, first_query))
    return mask.expand(batch, n_pos, n_pos)


def previous_token_score(pattern: torch.Tensor) -> torch.Tensor:
    """Attention from each position to the one before it (queries 2.. so position 0 is not counted twice). -> [head]"""
    pattern = _check_pattern(pattern)
    return masked_score(pattern, offset_mask(pattern.shape[0], pattern.shape[-1], 1, first_query=2))


def first_token_score(pattern: torch.Tensor) -> torch.Tensor:
    """Attention to position 0 (BOS: the 'attention sink'), from queries 1.. (query 0 has no choice). -> [head]"""
    pattern = _check_pattern(pattern)
    batch, _, n_pos, _ = pattern.shape
    mask = torch.zeros(batch, n_pos, n_pos, dtype=torch.bool)
    mask[:, 1:, 0] = True
    return masked_score(pattern, mask)


def duplicate_token_mask(tokens: torch.Tensor) -> torch.Tensor:
    """[batch, q, k]: key k < q holds the same token as query q."""
    tokens = _check_tokens(tokens)
    same = tokens[:, :, None] == tokens[:, None, :]
    return same & torch.ones_like(same).tril(-1)


def induction_mask(tokens: torch.Tensor) -> torch.Tensor:
    """[batch, q, k]: key k < q is the token right after an earlier occurrence of query q's token."""
    tokens = _check_tokens(tokens)
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


# --- Recomputing a pattern, and what a head writes --------------------------------------------


class ScoreNameError(MicroscopeError):
    """A head-score name that is not one of HEAD_SCORES."""


def repeat_kv(k: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Give every query head its shared key/value head (grouped-query attention).

    [batch, pos, kv_head, d_head] -> [batch, pos, head, d_head]. Query heads are grouped in order:
    with 9 query heads and 3 KV heads, query heads 0-2 read KV head 0, 3-5 KV head 1, 6-8 KV head 2.
    """
    if k.dim() != 4:
        raise ShapeError(f"expected keys or values [batch, pos, kv_head, d_head], got shape {tuple(k.shape)}")
    n_kv = k.shape[2]
    if n_heads % n_kv:
        raise ShapeError(f"{n_heads} query heads cannot share {n_kv} key/value heads evenly")
    return k.repeat_interleave(n_heads // n_kv, dim=2)


def pattern_from_qk(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Causal softmax(q.k / sqrt(d_head)). q [batch, pos, head, d_head], k [batch, pos, kv_head, d_head] -> [batch, head, q, k].

    Pass the keys and queries *after* rotary (hook_rot_q, hook_rot_k) for a rotary model.
    """
    q = validate.tensor(q, "q", ndim=4, shape_doc="queries [batch, pos, head, d_head]")
    k = validate.tensor(k, "k", ndim=4, shape_doc="keys [batch, pos, kv_head, d_head]")
    if q.dim() != 4 or k.dim() != 4 or q.shape[0] != k.shape[0] or q.shape[1] != k.shape[1] or q.shape[3] != k.shape[3]:
        raise ShapeError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must be [batch, pos, heads, d_head] with equal batch, pos and d_head")
    k = repeat_kv(k, q.shape[2])
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / q.shape[-1] ** 0.5
    n_pos = q.shape[1]
    future = torch.ones(n_pos, n_pos, dtype=torch.bool, device=q.device).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(-1)


def head_writes(x: torch.Tensor, W_O: torch.Tensor) -> torch.Tensor:
    """Each head's vector x @ W_O in the residual stream. x [batch, pos, head, d_head], W_O [head, d_head, d_model] -> [batch, pos, head, d_model].

    With x = hook_z this is the head's output; with x = the (repeated) values it is what the head
    would write if it put all its attention on that position.
    """
    if x.dim() != 4 or W_O.dim() != 3 or x.shape[2:] != W_O.shape[:2]:
        raise ShapeError(f"x {tuple(x.shape)} must be [batch, pos, head, d_head] matching W_O {tuple(W_O.shape)} [head, d_head, d_model]")
    return torch.einsum("bphd,hdm->bphm", x, W_O)


# --- Scoring every head ---------------------------------------------------------------------

HEAD_SCORES = {
    "previous-token": lambda pattern, tokens: previous_token_score(pattern),
    "first-token": lambda pattern, tokens: first_token_score(pattern),
    "duplicate-token": duplicate_token_score,
    "induction": induction_score,
}


def repeated_random_tokens(model, n_prompts: int, half_len: int, generator: torch.Generator) -> torch.Tensor:
    """[n_prompts, 1 + 2 * half_len]: BOS, then half_len distinct random tokens, then the same tokens again."""
    if n_prompts < 1 or half_len < 2:
        raise ShapeError(f"need n_prompts >= 1 and half_len >= 2, got {n_prompts} and {half_len}")
    # Skip the special tokens at the bottom of the vocabulary; no token repeats inside a half, so
    # duplicates happen only across the two halves.
    low = max(model.tokenizer.all_special_ids) + 100
    halves = torch.stack([torch.randperm(model.cfg.d_vocab - low, generator=generator)[:half_len] + low for _ in range(n_prompts)])
    bos = torch.full((n_prompts, 1), model.tokenizer.bos_token_id)
    return torch.cat([bos, halves, halves], dim=1)


def head_scores(model, prompts, kinds=("previous-token", "first-token")) -> dict[str, torch.Tensor]:
    """Scores of every head, averaged over prompts: {kind: [layer, head]}.

    prompts: a list of strings (run one at a time, so lengths may differ) or a token tensor [batch, pos]
    (run as one batch). kinds: names from HEAD_SCORES.
    """
    from tqdm.auto import tqdm

    kinds = validate.strings(kinds, "kinds")
    if isinstance(prompts, str):
        prompts = [prompts]
    unknown = [kind for kind in kinds if kind not in HEAD_SCORES]
    if unknown or not kinds:
        raise ScoreNameError(f"unknown head score(s) {unknown or list(kinds)}; choose from {list(HEAD_SCORES)}")
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() != 2:
            raise ShapeError(f"token prompts must be [batch, pos], got shape {tuple(prompts.shape)}")
        batches = [prompts]
    else:
        from helpers.tokens import to_tokens

        batches = [to_tokens(model, text) for text in prompts]
    totals = {kind: 0.0 for kind in kinds}
    for tokens in tqdm(batches, desc="scoring heads", disable=len(batches) < 2):
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("attn.hook_pattern"))
        patterns = stack_patterns(cache, model.cfg.n_layers)
        for kind in kinds:
            totals[kind] = totals[kind] + score_all_heads(patterns, HEAD_SCORES[kind], tokens)
    return {kind: total / len(batches) for kind, total in totals.items()}


def top_heads(scores: torch.Tensor, k: int = 5) -> list[tuple[int, int, float]]:
    """The k highest-scoring heads of a [layer, head] score grid, as (layer, head, score)."""
    scores = validate.tensor(scores, "scores", ndim=2, shape_doc="scores [layer, head]", finite=False)
    k = validate.positive_int(k, "k")
    values, flat = scores.flatten().topk(min(k, scores.numel()))
    n_heads = scores.shape[1]
    return [(int(i) // n_heads, int(i) % n_heads, float(v)) for v, i in zip(values, flat)]


# --- Pictures ---------------------------------------------------------------------------------


def plot_pattern(pattern: torch.Tensor, str_tokens: list[str], ax=None, title: str = "", colorbar: bool = True):
    """Heatmap of one head's pattern [q, k]: rows are queries (the token reading), columns keys (the token read)."""
    import matplotlib.pyplot as plt

    if pattern.dim() != 2 or pattern.shape[0] != pattern.shape[1] or pattern.shape[0] != len(str_tokens):
        raise ShapeError(f"pattern {tuple(pattern.shape)} must be [q, k] with one row per token ({len(str_tokens)} tokens)")
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4.5))
    image = ax.imshow(pattern.detach().cpu().numpy(), cmap="Blues", vmin=0, vmax=1)
    labels = [repr(t)[1:-1] for t in str_tokens]  # show spaces and newlines
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("key position (attended to)")
    ax.set_ylabel("query position (attending)")
    ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, fraction=0.046, label="attention weight")
    return ax


def plot_layer_patterns(layer_pattern: torch.Tensor, str_tokens: list[str], layer: int, n_cols: int = 3):
    """A grid with every head's pattern of one layer [head, q, k]; returns the figure."""
    import matplotlib.pyplot as plt

    if layer_pattern.dim() != 3:
        raise ShapeError(f"expected one layer's pattern [head, q, k], got shape {tuple(layer_pattern.shape)}")
    n_heads = layer_pattern.shape[0]
    n_rows = -(-n_heads // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.3 * n_cols, 3.3 * n_rows), squeeze=False)
    for head, ax in enumerate(axes.flat):
        if head >= n_heads:
            ax.axis("off")
            continue
        plot_pattern(layer_pattern[head], str_tokens, ax=ax, title=f"head {layer}.{head}", colorbar=False)
        ax.tick_params(labelsize=5)
        ax.xaxis.label.set_size(7)
        ax.yaxis.label.set_size(7)
    fig.suptitle(f"Layer {layer}: every head's attention pattern (rows: query, columns: key)")
    fig.tight_layout()
    return fig
