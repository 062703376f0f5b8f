"""Direct logit attribution (DLA) of every component, and a circuit check that ablates all other heads.

The residual stream at the last position is a sum: embeddings + every head's output + every MLP's
output (+ biases). The final norm divides that sum by one number per position (its *scale*) before
the unembedding, so once the scale is frozen at the value the real run used, the logit difference
is a sum of one term per component: the component's vector, divided by the scale, times the norm's
weight, dotted with ``W_U[:, IO] - W_U[:, S]``. That frozen scale is the standard approximation:
the terms add up exactly to the real logit difference, but a term is *not* what removing the
component would do, because removing it would also change the scale (and everything downstream).

Head h of layer L writes ``hook_z[:, :, h] @ W_O[L, h]`` into the residual stream.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

from helpers import validate
from helpers.ablation import Head, _tokens, _validate_heads, head_ablation_hooks, head_means
from helpers.errors import MicroscopeError, ShapeError, scalar_metric


class AttributionError(MicroscopeError):
    """Inputs attribution or the circuit check cannot use: a missing cache entry, a bad metric."""


def _cached(cache, name: str) -> torch.Tensor:
    try:
        return cache[name]
    except KeyError:
        raise AttributionError(f"The cache has no {name!r}; run model.run_with_cache(tokens) without a "
                               "names_filter (or include that hook).") from None


def _optional_param(module, name: str) -> torch.Tensor | None:
    """module.name if it is a tensor with a nonzero entry, else None (an all-zero bias adds nothing)."""
    try:
        value = getattr(module, name)
    except AttributeError:  # bias-free checkpoints raise instead of returning None
        return None
    if not isinstance(value, torch.Tensor) or not value.detach().abs().max() > 0:
        return None
    return value


def _answer_ids(model, ids, name: str) -> torch.Tensor:
    ids = validate.tensor(ids, name, floating=False).flatten()
    if (ids < 0).any() or (ids >= model.cfg.d_vocab).any():
        raise AttributionError(f"`{name}` holds ids outside the vocabulary (0 to {model.cfg.d_vocab - 1}).")
    return ids


def _check_pos(cache, pos: int, batch_ids: torch.Tensor | None = None) -> int:
    """`pos` checked against the cached prompt length; answer ids checked against its batch."""
    z = _cached(cache, "blocks.0.attn.hook_z")
    if batch_ids is not None and batch_ids.numel() != z.shape[0]:
        raise ShapeError(f"{batch_ids.numel()} answer ids for a cache of {z.shape[0]} prompts: give one id per prompt.")
    return validate.index(pos, "pos", z.shape[1], "positions in the cached prompts")


def answer_directions(model, io_ids: torch.Tensor, s_ids: torch.Tensor) -> torch.Tensor:
    """Unembedding difference directions W_U[:, io] - W_U[:, s]: [batch, d_model]."""
    io_ids, s_ids = _answer_ids(model, io_ids, "io_ids"), _answer_ids(model, s_ids, "s_ids")
    if io_ids.shape != s_ids.shape:
        raise ShapeError(f"io_ids has {io_ids.numel()} entries but s_ids {s_ids.numel()}; need one of each per prompt.")
    return (model.W_U[:, io_ids] - model.W_U[:, s_ids]).T


def _readout(model, cache, vectors: torch.Tensor, directions: torch.Tensor, pos: int) -> torch.Tensor:
    """Logit-difference contribution of residual vectors [..., batch, d_model] through the frozen final norm -> [..., batch]."""
    norm = (model.cfg.normalization_type or "").upper()
    if norm.startswith("LN"):  # LayerNorm subtracts the mean: linear too, so apply it per component
        vectors = vectors - vectors.mean(-1, keepdim=True)
    if norm:
        scale = _cached(cache, "ln_final.hook_scale")[:, pos]  # [batch, 1], from the real run
        vectors = vectors / scale
        weight = getattr(model.ln_final, "weight", None)  # absent when folded into W_U
        if isinstance(weight, torch.Tensor):
            vectors = vectors * weight
    return (vectors * directions).sum(-1)


def head_outputs(model, cache, pos: int = -1) -> torch.Tensor:
    """What each head writes into the residual stream at `pos`: [n_layers, n_heads, batch, d_model]."""
    out = []
    for layer in range(model.cfg.n_layers):
        z = _cached(cache, f"blocks.{layer}.attn.hook_z")[:, pos]  # [batch, head, d_head]
        out.append(torch.einsum("bhd,hdm->hbm", z, model.W_O[layer]))
    return torch.stack(out)


def head_dla(model, cache, io_ids: torch.Tensor, s_ids: torch.Tensor, pos: int = -1,
             per_prompt: bool = False) -> torch.Tensor:
    """Each head's direct contribution to logit(IO) - logit(S): [n_layers, n_heads] (batch mean), or [..., batch]."""
    pos = _check_pos(cache, pos, _answer_ids(model, io_ids, "io_ids"))
    with torch.no_grad():
        values = _readout(model, cache, head_outputs(model, cache, pos), answer_directions(model, io_ids, s_ids), pos)
    return values if per_prompt else values.mean(-1)


def head_token_attribution(model, cache, token_ids: torch.Tensor, pos: int = -1) -> torch.Tensor:
    """Each head's direct contribution to the logit of token_ids[b] (one token per prompt): [n_layers, n_heads], batch mean.

    head_dla(io, s) == head_token_attribution(io) - head_token_attribution(s): this splits a head's
    logit-difference share into "pushes IO up" and "pushes S down".
    """
    token_ids = _answer_ids(model, token_ids, "token_ids")
    pos = _check_pos(cache, pos, token_ids)
    with torch.no_grad():
        return _readout(model, cache, head_outputs(model, cache, pos), model.W_U[:, token_ids].T, pos).mean(-1)


def component_dla(model, cache, io_ids: torch.Tensor, s_ids: torch.Tensor,
                  pos: int = -1) -> tuple[list[str], torch.Tensor]:
    """(labels, values [n_components, batch]): 'embed', every head 'L{l}H{h}', every 'MLP{l}', and biases.

    With the final-norm scale frozen at the real run's value, values.sum(0) equals the model's
    logit difference at `pos` for every prompt (up to float rounding).
    """
    io_ids, s_ids = _answer_ids(model, io_ids, "io_ids"), _answer_ids(model, s_ids, "s_ids")
    pos = _check_pos(cache, pos, io_ids)
    directions = answer_directions(model, io_ids, s_ids)
    labels, vectors = ["embed"], []
    with torch.no_grad():
        embed = _cached(cache, "hook_embed")[:, pos]
        if "hook_pos_embed" in cache:
            embed = embed + cache["hook_pos_embed"][:, pos]
        vectors.append(embed[None])
        heads = head_outputs(model, cache, pos)
        for layer in range(model.cfg.n_layers):
            labels += [f"L{layer}H{h}" for h in range(model.cfg.n_heads)]
            vectors.append(heads[layer])
            bias = _optional_param(model.blocks[layer].attn, "b_O")
            if bias is not None:
                labels.append(f"attn bias {layer}")
                vectors.append(bias.expand_as(embed)[None])
            if not getattr(model.cfg, "attn_only", False):
                labels.append(f"MLP{layer}")
                vectors.append(_cached(cache, f"blocks.{layer}.hook_mlp_out")[:, pos][None])
        values = _readout(model, cache, torch.cat(vectors), directions, pos)
        constant = _final_biases(model, directions, io_ids, s_ids)
        if constant is not None:
            labels.append("final biases")
            values = torch.cat([values, constant[None]])
    return labels, values


def _final_biases(model, directions: torch.Tensor, io_ids: torch.Tensor, s_ids: torch.Tensor) -> torch.Tensor | None:
    """The part of the logit difference no component writes (final-norm bias, unembedding bias): [batch] or None."""
    parts = []
    bias = _optional_param(model.ln_final, "bias") if model.cfg.normalization_type else None
    if bias is not None:
        parts.append(directions @ bias)
    b_u = _optional_param(model, "b_U")
    if b_u is not None:
        parts.append(b_u[io_ids] - b_u[s_ids])
    return sum(parts) if parts else None


def _scalar(metric: Callable[[torch.Tensor], torch.Tensor], logits: torch.Tensor) -> float:
    return float(scalar_metric(metric, logits, AttributionError))


def all_heads(model) -> list[Head]:
    """Every (layer, head) of the model, layer by layer."""
    return [(layer, head) for layer in range(model.cfg.n_layers) for head in range(model.cfg.n_heads)]


def _reference_means(model, tokens: torch.Tensor, reference_tokens: torch.Tensor | None) -> dict[int, torch.Tensor]:
    """Per-position head means over reference_tokens (default: tokens), which must be as long as tokens."""
    reference = tokens if reference_tokens is None else reference_tokens
    if reference.shape[1] != tokens.shape[1]:
        raise ShapeError(f"Per-position means need reference prompts as long as the prompts: "
                         f"{reference.shape[1]} vs {tokens.shape[1]} tokens.")
    return head_means(model, reference, per_position=True)


def run_with_only_heads(model, tokens: torch.Tensor, keep: Iterable[Head],
                        reference_tokens: torch.Tensor | None = None,
                        means: dict[int, torch.Tensor] | None = None, last_only: bool = False) -> torch.Tensor:
    """Logits [batch, pos, vocab] with every head NOT in `keep` mean-ablated (MLPs and embeddings untouched).

    Each ablated head's output is replaced by its mean over reference_tokens (default: `tokens`),
    taken separately at each position, so the rest of the model still sees a typical value there.
    Pass `means` (from helpers.ablation.head_means) to reuse them across calls. `last_only` returns
    the last position's logits only, [batch, 1, vocab] (the unembedding is a fifth of SmolLM2's work per
    position: skip it where a metric reads the last position, as the IOI logit difference does).
    """
    if not isinstance(last_only, bool):
        raise AttributionError(f"`last_only` must be True or False, got {last_only!r}.")
    keep = set(_validate_heads(model, keep, "keep"))
    tokens = _tokens(model, tokens)
    ablate = [h for h in all_heads(model) if h not in keep]
    if means is None:
        means = _reference_means(model, tokens, reference_tokens) if ablate else {}
    elif any(means[layer].shape[1] not in (1, tokens.shape[1]) for layer, _ in ablate if layer in means):
        raise ShapeError(f"The means cover a different number of positions than the prompts ({tokens.shape[1]}).")
    missing = sorted({layer for layer, _ in ablate} - set(means))
    if missing:
        raise AttributionError(f"`means` has no entry for layers {missing}; compute them with head_means(model, tokens).")
    keep_logits = {"logits_to_keep": 1} if last_only else {}
    with torch.no_grad():
        if not ablate:
            return model(tokens, **keep_logits)
        return model.run_with_hooks(tokens, fwd_hooks=head_ablation_hooks(model, ablate, means), **keep_logits)


def circuit_check(model, tokens: torch.Tensor, keep: Sequence[Head], metric: Callable[[torch.Tensor], torch.Tensor],
                  reference_tokens: torch.Tensor | None = None) -> dict[str, float]:
    """How much of the metric a set of heads keeps when every other head is mean-ablated.

    Returns full (the intact model), circuit (only `keep` intact), no_heads (every head ablated) and
    recovered = (circuit - no_heads) / (full - no_heads): 1 means the kept heads suffice, 0 means
    they do no better than ablating everything.
    """
    tokens = _tokens(model, tokens)
    with torch.no_grad():
        full = _scalar(metric, model(tokens))
    means = _reference_means(model, tokens, reference_tokens)
    circuit = _scalar(metric, run_with_only_heads(model, tokens, keep, means=means))
    none = _scalar(metric, run_with_only_heads(model, tokens, [], means=means))
    gap = full - none
    if abs(gap) < 1e-6:
        raise AttributionError(f"Ablating every head leaves the metric unchanged ({full:.4g}); the heads do not "
                               "carry this behaviour, so 'recovered' is undefined.")
    return {"full": full, "circuit": circuit, "no_heads": none, "recovered": (circuit - none) / gap}
