"""Ablation: switch components off (zero), or replace them with their mean or with another input's values.

Heads are ablated at ``blocks.{L}.attn.hook_z`` ([batch, pos, head, d_head]), the per-head output
before the output projection, so removing head h removes exactly its contribution to the residual stream.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch

from helpers import validate
from helpers.errors import MicroscopeError

Head = tuple[int, int]


def _validate_heads(model, heads: Iterable[Head], name: str = "heads") -> list[Head]:
    return validate.head_list(heads, name, model.cfg.n_layers, model.cfg.n_heads)


def _tokens(model, tokens, name: str = "tokens") -> torch.Tensor:
    return validate.token_ids(tokens, name, model.cfg.d_vocab).to(model.cfg.device)


def head_ablation_hooks(model, heads: Iterable[Head], replacement: dict[int, torch.Tensor] | None = None):
    """Forward hooks that overwrite the listed heads' hook_z.

    replacement[layer] (broadcastable to [batch, pos, head, d_head]) gives the values to write
    (mean or resample ablation); without it the heads are zeroed.
    """
    by_layer: dict[int, list[int]] = {}
    for layer, head in _validate_heads(model, heads):
        by_layer.setdefault(layer, []).append(head)

    def make_hook(layer: int, head_ids: list[int]):
        def hook(z: torch.Tensor, hook) -> torch.Tensor:
            z = z.clone()
            if replacement is None:
                z[:, :, head_ids] = 0.0
            else:
                z[:, :, head_ids] = replacement[layer].expand_as(z)[:, :, head_ids].to(z.dtype)
            return z
        return hook

    return [(f"blocks.{layer}.attn.hook_z", make_hook(layer, ids)) for layer, ids in sorted(by_layer.items())]


def run_with_heads_ablated(model, tokens: torch.Tensor, heads: Iterable[Head], mode: str = "zero",
                           reference_tokens: torch.Tensor | None = None, per_position: bool = False) -> torch.Tensor:
    """Logits [batch, pos, vocab] with `heads` ablated.

    mode: "zero"; "mean" (each head's output averaged over batch and positions of reference_tokens,
    default the same tokens; over the batch only, position by position, if `per_position`);
    "resample" (the head's output on reference_tokens, same shape as tokens).
    """
    heads = _validate_heads(model, heads)
    tokens = _tokens(model, tokens)
    mode = validate.choice(mode, "mode", ("zero", "mean", "resample"))
    replacement = None
    if mode != "zero":
        source = tokens if reference_tokens is None else _tokens(model, reference_tokens, "reference_tokens")
        if mode == "resample" and source.shape != tokens.shape:
            raise MicroscopeError(f"resample ablation needs reference tokens of shape {tuple(tokens.shape)}, got {tuple(source.shape)}")
        layers = sorted({layer for layer, _ in heads})
        if mode == "mean":
            if per_position and source.shape[1] != tokens.shape[1]:
                raise MicroscopeError(f"per-position mean ablation needs reference tokens with {tokens.shape[1]} "
                                      f"positions, got {source.shape[1]}")
            replacement = head_means(model, source, layers, per_position=per_position)
        else:
            names = [f"blocks.{layer}.attn.hook_z" for layer in layers]
            with torch.no_grad():
                _, cache = model.run_with_cache(source, names_filter=names)
            replacement = {layer: cache[name] for layer, name in zip(layers, names)}
    with torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=head_ablation_hooks(model, heads, replacement))


def head_means(model, reference_tokens: torch.Tensor, layers: Iterable[int] | None = None,
               per_position: bool = True) -> dict[int, torch.Tensor]:
    """Mean hook_z over reference_tokens, per layer: [1, pos, n_heads, d_head] (or [1, 1, ...] if not per_position).

    Per-position means keep what a head typically writes at each position of a fixed template (e.g.
    its output at the BOS token), so mean ablation removes the prompt-specific part only.
    """
    layers = range(model.cfg.n_layers) if layers is None else [
        validate.index(layer, "layers", model.cfg.n_layers, "layers", allow_negative=False) for layer in layers]
    reference_tokens = _tokens(model, reference_tokens, "reference_tokens")
    names = [f"blocks.{layer}.attn.hook_z" for layer in layers]
    with torch.no_grad():
        _, cache = model.run_with_cache(reference_tokens, names_filter=names)
    dims = (0,) if per_position else (0, 1)
    return {layer: cache[name].mean(dims, keepdim=True) for layer, name in zip(layers, names)}
