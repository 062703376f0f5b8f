"""Circuits read from the weights: a head's OV circuit (does it copy?) and an induction head's QK circuit.

A head reads token t through its OV circuit and writes logits: the full OV circuit is the
[d_vocab, d_vocab] matrix ``W_E W_V W_O W_U`` (row: the token attended to; column: the logit it
raises). A *copying* head raises the logit of the very token it reads, so that matrix has a large
positive diagonal and mostly positive eigenvalues. Following Elhage et al. (2021), the copying score
is ``sum(eigenvalues) / sum(|eigenvalues|)``: +1 for a pure copier, -1 for a pure anti-copier, near 0
for a random map. The eigenvalues of a [d_vocab, d_vocab] product equal (apart from zeros) those of
the small [d_head, d_head] matrix obtained by rotating the product, so nothing vocabulary-sized is
ever built.

An induction head's query at token A should match a key whose *previous* token is A. The key learns
its previous token from a previous-token head's OV output, so the token-level QK circuit is
``W_E W_Q (W_E W_OV_prev W_K)^T`` (row: the query's token; column: the token before the key), and the
same eigenvalue score measures how much it matches equal tokens.

Both ignore the norms' division by the activation's scale (one number per position) and fold in the
norms' learned weights; they describe the weights, not one prompt. Each comes with a baseline: the
same score with the head's matrices replaced by Gaussian matrices of the same shapes and norms.
"""
from __future__ import annotations

import weakref
from collections.abc import Sequence

import torch

from helpers import validate
from helpers.path_patching import kv_head

Head = tuple[int, int]


def _norm_weight(module) -> torch.Tensor | None:
    weight = getattr(module, "weight", None) if module is not None else None
    return weight.detach().float() if isinstance(weight, torch.Tensor) else None


def _fold(matrix: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """diag(weight) @ matrix: a norm's learned scale applied to what reads from it."""
    return matrix if weight is None else weight[:, None] * matrix


def head_weights(model, layer: int, head: int) -> dict[str, torch.Tensor]:
    """W_Q, W_K, W_V [d_model, d_head] (first norm's weight folded in) and W_O [d_head, d_model] of one head."""
    ln1 = _norm_weight(getattr(model.blocks[layer], "ln1", None))
    kv = kv_head(model, head)
    with torch.no_grad():
        return {"W_Q": _fold(model.W_Q[layer, head].detach().float(), ln1),
                "W_K": _fold(model.W_K[layer, kv].detach().float(), ln1),
                "W_V": _fold(model.W_V[layer, kv].detach().float(), ln1),
                "W_O": model.W_O[layer, head].detach().float()}


def _embed_unembed(model) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        W_E = model.W_E.detach().float()
        W_U = _fold(model.W_U.detach().float(), _norm_weight(getattr(model, "ln_final", None)))
    return W_E, W_U


# The [d_model, d_model] products over the vocabulary (W_U W_E and W_E^T W_E) cost a pass over the
# 49k-row embedding each; random baselines need them once per call, so they are kept per model and
# recomputed whenever a weight they come from is replaced or edited in place.
_PRODUCTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _vocab_products(model) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_U W_E, W_E^T W_E), both [d_model, d_model], with the final norm's weight folded into W_U."""
    sources = [model.W_E, model.W_U, getattr(getattr(model, "ln_final", None), "weight", None)]
    key = tuple((t.data_ptr(), t._version, tuple(t.shape)) if isinstance(t, torch.Tensor) else None for t in sources)
    try:
        cached = _PRODUCTS.get(model)
    except TypeError:  # a model that cannot be weakly referenced: no cache
        cached = None
    if cached is not None and cached[0] == key:
        return cached[1]
    W_E, W_U = _embed_unembed(model)
    with torch.no_grad():
        products = (W_U @ W_E, W_E.T @ W_E)
    try:
        _PRODUCTS[model] = (key, products)
    except TypeError:
        pass
    return products


def eigen_score(matrix: torch.Tensor) -> float:
    """sum(eigenvalues) / sum(|eigenvalues|) of a square matrix (real part of the sum)."""
    eigenvalues = torch.linalg.eigvals(matrix.double())
    return float(eigenvalues.sum().real / eigenvalues.abs().sum())


def _copying(W_V: torch.Tensor, W_O: torch.Tensor, unembed_embed: torch.Tensor) -> float:
    # eig(W_E W_V W_O W_U) = eig(W_V W_O W_U W_E) = eig(W_O (W_U W_E) W_V), the last [d_head, d_head].
    return eigen_score(W_O @ unembed_embed @ W_V)


def _heads(model, heads, name: str) -> list[Head]:
    return validate.head_list(heads, name, model.cfg.n_layers, model.cfg.n_heads)


def ov_copying_scores(model, heads: Sequence[Head]) -> torch.Tensor:
    """Copying score of each head's full OV circuit W_E W_V W_O W_U: [len(heads)], in [-1, 1]."""
    unembed_embed, _ = _vocab_products(model)  # W_U W_E, [d_model, d_model]
    return torch.tensor([_copying(w["W_V"], w["W_O"], unembed_embed)
                         for w in (head_weights(model, l, h) for l, h in _heads(model, heads, "heads"))])


def ov_top1_copying(model, heads: Sequence[Head], n_tokens: int = 500, seed: int = 0) -> torch.Tensor:
    """Share of `n_tokens` random tokens whose own logit is the top one in their OV-circuit row: [len(heads)]."""
    W_E, W_U = _embed_unembed(model)
    low = max(getattr(model.tokenizer, "all_special_ids", None) or [0]) + 1 if model.tokenizer is not None else 0
    generator = torch.Generator().manual_seed(seed)
    n_tokens = validate.positive_int(n_tokens, "n_tokens")
    tokens = torch.randperm(model.cfg.d_vocab - low, generator=generator)[:n_tokens] + low
    out = []
    for layer, head in _heads(model, heads, "heads"):
        w = head_weights(model, layer, head)
        rows = (W_E[tokens] @ w["W_V"] @ w["W_O"]) @ W_U  # [n_tokens, d_vocab]
        out.append((rows.argmax(-1) == tokens).float().mean())
    return torch.stack(out)


def qk_induction_scores(model, induction_heads: Sequence[Head], previous_heads: Sequence[Head]) -> torch.Tensor:
    """Eigenvalue score of W_E W_Q (W_E W_OV_prev W_K)^T for each (induction head, previous-token head): [I, P].

    Positive: a query token matches keys whose previous token is the same token (induction).
    Previous-token heads must sit in a layer before the induction head (else NaN).
    """
    _, gram = _vocab_products(model)  # W_E^T W_E, [d_model, d_model]
    induction_heads = _heads(model, induction_heads, "induction_heads")
    previous_heads = _heads(model, previous_heads, "previous_heads")
    scores = torch.full((len(induction_heads), len(previous_heads)), float("nan"))
    for i, (layer, head) in enumerate(induction_heads):
        w = head_weights(model, layer, head)
        for j, (p_layer, p_head) in enumerate(previous_heads):
            if p_layer >= layer:
                continue
            p = head_weights(model, p_layer, p_head)
            scores[i, j] = _qk_score(w["W_Q"], w["W_K"], p["W_V"] @ p["W_O"], gram)
    return scores


def _qk_score(W_Q: torch.Tensor, W_K: torch.Tensor, ov_prev: torch.Tensor, gram: torch.Tensor) -> float:
    # M = W_E W_Q W_K^T ov_prev^T W_E^T; eig(M) = eig(W_Q W_K^T ov_prev^T W_E^T W_E), [d_model, d_model]
    # = eig(W_K^T ov_prev^T gram W_Q), [d_head, d_head].
    return eigen_score(W_K.T @ ov_prev.T @ gram @ W_Q)


def _gaussian_like(matrix: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A Gaussian matrix with `matrix`'s shape and Frobenius norm."""
    draw = torch.randn(matrix.shape, generator=generator)
    return draw * (matrix.norm() / draw.norm())


def ov_random_baseline(model, layer: int, draws: int = 200, seed: int = 0) -> torch.Tensor:
    """Copying scores of `draws` random OV circuits (Gaussian W_V, W_O with layer `layer`'s shapes and norms): [draws]."""
    layer = validate.index(layer, "layer", model.cfg.n_layers, "layers", allow_negative=False)
    unembed_embed, _ = _vocab_products(model)
    w = head_weights(model, layer, 0)
    generator = torch.Generator().manual_seed(seed)
    return torch.tensor([_copying(_gaussian_like(w["W_V"], generator), _gaussian_like(w["W_O"], generator),
                                  unembed_embed) for _ in range(validate.positive_int(draws, "draws"))])


def qk_random_baseline(model, induction_head: Head, previous_head: Head, draws: int = 200,
                       seed: int = 0) -> torch.Tensor:
    """QK induction scores with the induction head's W_Q, W_K and the previous head's OV replaced by Gaussians: [draws]."""
    (layer, head), = _heads(model, [induction_head], "induction_head")
    (p_layer, p_head), = _heads(model, [previous_head], "previous_head")
    _, gram = _vocab_products(model)
    w, p = head_weights(model, layer, head), head_weights(model, p_layer, p_head)
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(validate.positive_int(draws, "draws")):
        ov = _gaussian_like(p["W_V"], generator) @ _gaussian_like(p["W_O"], generator)
        out.append(_qk_score(_gaussian_like(w["W_Q"], generator), _gaussian_like(w["W_K"], generator), ov, gram))
    return torch.tensor(out)
