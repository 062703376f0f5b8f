"""Induction: repeated random tokens, per-token loss, and composition scores between heads.

An induction head completes ``A B ... A -> B``: at the second ``A`` it attends to the token right
after the first ``A`` and copies it. Repeated random tokens isolate that behaviour, because the
first copy of a random segment is unpredictable and the second copy is predictable only by looking
back at the first. Composition scores (Elhage et al., 2021) measure, from the weights alone, how
much one head's output can feed another head's query, key or value.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from helpers import validate
from helpers.errors import MicroscopeError, ShapeError

BOS = 0  # the toy models' first token (a fixed "start" position, like the BOS of a real LLM)


@dataclass
class RepeatExamples:
    """Sequences with one copied segment, and masks marking where the copy makes the next token predictable.

    tokens [batch, pos]; ``second`` [batch, pos] is True at positions p inside the second copy whose
    next token (p + 1) is also inside it: there the answer is in the context. ``first`` marks the
    same relative positions in the first copy, where the next token is still random.
    """

    tokens: torch.Tensor
    first: torch.Tensor
    second: torch.Tensor
    offset: torch.Tensor  # [batch] distance from the first copy to the second


def _uniform_int(generator: torch.Generator, low: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """One integer per element, uniform in [low, low + count)."""
    return low + (torch.rand(low.shape, generator=generator) * count).long()


def make_repeat_examples(generator: torch.Generator, n: int, n_ctx: int, d_vocab: int,
                         lengths: tuple[int, int], offset: int | None = None) -> RepeatExamples:
    """n sequences: BOS, then random tokens in [1, d_vocab), with a segment of random length copied later.

    offset None: the copy starts anywhere after the segment ends (random gap). offset=D: the copy
    starts exactly D positions after the segment (a fixed offset, the pitfall's training data).
    """
    low, high = lengths
    if not 1 <= low <= high or (offset is not None and high > offset):
        raise MicroscopeError(f"segment lengths {lengths} must satisfy 1 <= low <= high (<= offset {offset})")
    room = n_ctx - 1 - (2 * high if offset is None else offset + high)
    if room < 0:
        raise MicroscopeError(f"n_ctx {n_ctx} is too short for segments up to {high} tokens (offset {offset})")
    length = _uniform_int(generator, torch.full((n,), low), torch.full((n,), high - low + 1))
    if offset is None:
        start1 = _uniform_int(generator, torch.ones(n, dtype=torch.long), n_ctx - 2 * length)
        start2 = _uniform_int(generator, start1 + length, n_ctx - length - start1 - length + 1)
    else:
        start1 = _uniform_int(generator, torch.ones(n, dtype=torch.long), n_ctx - offset - length)
        start2 = start1 + offset
    base = torch.randint(1, d_vocab, (n, n_ctx), generator=generator)
    base[:, 0] = BOS
    pos = torch.arange(n_ctx)[None, :]
    in_copy = (pos >= start2[:, None]) & (pos < (start2 + length)[:, None])
    source = torch.where(in_copy, pos - (start2 - start1)[:, None], pos)
    tokens = base.gather(1, source)
    second = (pos >= start2[:, None]) & (pos <= (start2 + length - 2)[:, None])
    first = (pos >= start1[:, None]) & (pos <= (start1 + length - 2)[:, None])
    return RepeatExamples(tokens, first, second, start2 - start1)


def next_token_batch(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, targets) for next-token training: targets[p] = tokens[p + 1], -100 at the last position."""
    targets = torch.full_like(tokens, -100)
    targets[:, :-1] = tokens[:, 1:]
    return tokens, targets


def periodic_tokens(generator: torch.Generator, n: int, period: int, n_ctx: int, vocab: tuple[int, int],
                    bos: int = BOS) -> torch.Tensor:
    """[n, n_ctx]: BOS, then a random segment of `period` ids from [vocab[0], vocab[1]) repeated until n_ctx."""
    if not 2 <= period <= (n_ctx - 1) // 2:
        raise MicroscopeError(f"period {period} must be between 2 and {(n_ctx - 1) // 2} so the segment repeats in {n_ctx} positions")
    segment = torch.randint(vocab[0], vocab[1], (n, period), generator=generator)
    body = segment.repeat(1, -(-(n_ctx - 1) // period))[:, : n_ctx - 1]
    return torch.cat([torch.full((n, 1), bos, dtype=torch.long), body], dim=1)


def random_heads(n_layers: int, n_heads: int, k: int, generator: torch.Generator,
                 exclude: list[tuple[int, int]] = ()) -> list[tuple[int, int]]:
    """k distinct (layer, head) pairs drawn uniformly from the heads not in `exclude` (a control for ablations)."""
    pool = [(layer, head) for layer in range(n_layers) for head in range(n_heads) if (layer, head) not in set(exclude)]
    if not 0 < k <= len(pool):
        raise MicroscopeError(f"cannot draw {k} heads from {len(pool)} candidates")
    return sorted(pool[i] for i in torch.randperm(len(pool), generator=generator)[:k].tolist())


def per_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of predicting tokens[:, p + 1] from position p. [batch, pos, vocab], [batch, pos] -> [batch, pos - 1]."""
    if logits.dim() != 3 or logits.shape[:2] != tokens.shape:
        raise ShapeError(f"logits {tuple(logits.shape)} and tokens {tuple(tokens.shape)} must be [batch, pos, vocab] and [batch, pos]")
    log_probs = logits[:, :-1].float().log_softmax(-1)
    return -log_probs.gather(-1, tokens[:, 1:, None])[..., 0]


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean of `values` where `mask` is True (same shape)."""
    if values.shape != mask.shape:
        raise ShapeError(f"values {tuple(values.shape)} and mask {tuple(mask.shape)} differ in shape")
    if not mask.any():
        raise MicroscopeError("the mask selects no position")
    return values[mask].mean().item()


def repeat_losses(logits: torch.Tensor, examples: RepeatExamples) -> dict[str, float]:
    """Mean loss on the first copy (unpredictable) and on the second copy (predictable in context)."""
    loss = per_token_loss(logits, examples.tokens)
    return {"first_loss": masked_mean(loss, examples.first[:, :-1]),
            "second_loss": masked_mean(loss, examples.second[:, :-1])}


def halves_loss(logits: torch.Tensor, tokens: torch.Tensor, half: int) -> tuple[float, float]:
    """(first, second) mean loss on BOS + R + R (len(R) = half), counting predictions of R's tokens 2..half in each copy."""
    if tokens.shape[1] != 1 + 2 * half:
        raise ShapeError(f"tokens have {tokens.shape[1]} positions; BOS + two halves of {half} need {1 + 2 * half}")
    loss = per_token_loss(logits, tokens)
    return loss[:, 1:half].mean().item(), loss[:, half + 1:].mean().item()


def head_matrices(model) -> dict[str, torch.Tensor]:
    """W_Q, W_K, W_V [layer, head, d_model, d_head] and W_O [layer, head, d_head, d_model] (GQA keys/values expanded)."""
    with torch.no_grad():
        weights = {name: getattr(model, name).detach().float() for name in ("W_Q", "W_K", "W_V", "W_O")}
    n_heads = weights["W_Q"].shape[1]
    for name in ("W_K", "W_V"):
        if weights[name].shape[1] != n_heads:  # grouped-query attention: each KV head serves several query heads
            weights[name] = weights[name].repeat_interleave(n_heads // weights[name].shape[1], dim=1)
    return weights


def composition_score(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """||left @ right||_F / (||left||_F ||right||_F), batched over leading dims. [..., a, b], [..., b, c] -> [...]."""
    if left.shape[-1] != right.shape[-2]:
        raise ShapeError(f"cannot multiply {tuple(left.shape)} by {tuple(right.shape)}")
    product = torch.linalg.matrix_norm(left @ right)
    return product / (torch.linalg.matrix_norm(left) * torch.linalg.matrix_norm(right))


def composition_scores(W_Q: torch.Tensor, W_K: torch.Tensor, W_V: torch.Tensor, W_O: torch.Tensor,
                       early: int, late: int, kind: str = "K") -> torch.Tensor:
    """[head_early, head_late] composition scores of layer `early`'s heads into layer `late`'s heads.

    With row vectors (TransformerLens: x @ W), W_QK = W_Q W_K^T and W_OV = W_V W_O, both [d_model, d_model].
    An early head writes x W_OV; a late head's attention score is x_q W_QK x_k^T. K-composition (the
    early head feeds keys) is W_OV W_QK^T; Q-composition is W_OV W_QK; V-composition is W_OV W_OV(late).
    """
    n_layers = W_Q.shape[0]
    early = validate.index(early, "early", n_layers, "layers", allow_negative=False)
    late = validate.index(late, "late", n_layers, "layers", allow_negative=False)
    if not early < late:
        raise MicroscopeError(f"composition needs an earlier and a later layer, got {early} and {late}")
    ov = W_V[early] @ W_O[early]  # [head, d_model, d_model]
    qk = W_Q[late] @ W_K[late].transpose(-1, -2)
    late_matrix = {"K": qk.transpose(-1, -2), "Q": qk, "V": W_V[late] @ W_O[late]}.get(kind)
    if late_matrix is None:
        raise MicroscopeError(f"unknown composition kind {kind!r}; use 'Q', 'K' or 'V'")
    return composition_score(ov[:, None], late_matrix[None, :])


def model_composition_scores(model, early: int = 0, late: int = 1, kind: str = "K") -> torch.Tensor:
    """[head_early, head_late] composition scores read from a model's weights."""
    return composition_scores(**head_matrices(model), early=early, late=late, kind=kind)


def random_composition_baseline(d_model: int, d_head: int, generator: torch.Generator, samples: int = 200,
                                kind: str = "K") -> torch.Tensor:
    """[samples] composition scores of Gaussian W_Q, W_K, W_V, W_O with one head's shapes: the score of unrelated heads."""
    if kind not in ("Q", "K", "V"):
        raise MicroscopeError(f"unknown composition kind {kind!r}; use 'Q', 'K' or 'V'")

    def draw(*shape: int) -> torch.Tensor:
        return torch.randn(samples, *shape, generator=generator)

    W_Q, W_K, W_V, W_O = draw(d_model, d_head), draw(d_model, d_head), draw(d_model, d_head), draw(d_head, d_model)
    ov, qk = W_V @ W_O, W_Q @ W_K.transpose(-1, -2)
    late = {"K": qk.transpose(-1, -2), "Q": qk, "V": draw(d_model, d_head) @ draw(d_head, d_model)}[kind]
    return composition_score(ov, late)
