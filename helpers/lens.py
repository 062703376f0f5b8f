"""Next-token predictions and the logit lens: read the residual stream as if the model stopped early.

The model's own prediction is ``unembed(ln_final(resid))`` applied to the residual stream after the
last block. The logit lens applies the same two steps to the residual stream after an earlier block:
"what would the model say if the remaining blocks did nothing?" Layer L below always means the
residual stream *after* block L (``blocks.{L}.hook_resid_post``); layer -1 means the token
embeddings (``blocks.0.hook_resid_pre``), before any block has run.
"""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd
import torch

from helpers import validate
from helpers.errors import MicroscopeError
from helpers.tokens import run_with_cache, single_token_id


def top_k_next_tokens(logits: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities and ids of the k likeliest next tokens after the last position, highest first.

    logits [batch, pos, d_vocab] -> (probs [batch, k], ids [batch, k]).
    """
    logits = validate.tensor(logits, "logits", ndim=3, shape_doc="[batch, pos, d_vocab]", finite=False)
    k = validate.positive_int(k, "k")
    if not 1 <= k <= logits.shape[-1]:
        raise MicroscopeError(f"k={k} is out of range: the vocabulary has {logits.shape[-1]} tokens.")
    probs = logits[:, -1].float().softmax(dim=-1)
    return probs.topk(k, dim=-1)


def _check_layer(model, layer: int) -> int:
    layer = validate.integer(layer, "layer")
    if not -1 <= layer < model.cfg.n_layers:
        raise MicroscopeError(f"layer {layer} does not exist: {model.cfg.model_name} has blocks 0 to "
                              f"{model.cfg.n_layers - 1} (and -1 for the embeddings).")
    return layer


def _check_pos(cache, pos: int) -> int:
    n_pos = cache["blocks.0.hook_resid_pre"].shape[1]
    return validate.index(pos, "pos", n_pos, "positions in the cached prompt")


def residual_after(cache, layer: int) -> torch.Tensor:
    """The residual stream after block `layer` (-1: the embeddings) from a cache: [batch, pos, d_model]."""
    return cache["blocks.0.hook_resid_pre"] if layer == -1 else cache[f"blocks.{layer}.hook_resid_post"]


def lens_logits(model, cache, layer: int, pos: int = -1) -> torch.Tensor:
    """Logit lens at one layer and position: unembed(ln_final(resid after block `layer`)) -> [batch, d_vocab]."""
    layer, pos = _check_layer(model, layer), _check_pos(cache, pos)
    resid = residual_after(cache, layer)[:, pos]
    with torch.no_grad():
        return model.unembed(model.ln_final(resid))


def lens_all_layers(model, cache, pos: int = -1) -> torch.Tensor:
    """Logit lens at every layer in one pass: [n_layers + 1, batch, d_vocab] (row 0: embeddings, row L+1: after block L)."""
    pos = _check_pos(cache, pos)
    resid = torch.stack([residual_after(cache, layer)[:, pos] for layer in range(-1, model.cfg.n_layers)])
    with torch.no_grad():
        return model.unembed(model.ln_final(resid))


def logit_lens(model, prompt: str, answer: str | None = None, pos: int = -1) -> pd.DataFrame:
    """The logit lens at every layer for one prompt, one row per layer (-1 = embeddings).

    Columns: layer, top_token, top_prob, and if `answer` (one token) is given answer_prob and
    answer_rank (0 = the lens's top prediction).
    """
    prompt = validate.text(prompt, "prompt")
    answer_id = single_token_id(model, answer) if answer is not None else None
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers)]
    _, cache, _ = run_with_cache(model, prompt, names=names)
    probs = lens_all_layers(model, cache, pos)[:, 0].float().softmax(-1)  # [n_layers + 1, d_vocab]
    top_prob, top_id = probs.max(-1)
    table = pd.DataFrame({"layer": range(-1, model.cfg.n_layers),
                          "top_token": [model.tokenizer.decode([i]) for i in top_id.tolist()],
                          "top_prob": top_prob.tolist()})
    if answer_id is not None:
        answer_prob = probs[:, answer_id]
        table["answer_prob"] = answer_prob.tolist()
        table["answer_rank"] = (probs > answer_prob[:, None]).sum(-1).tolist()
    return table


def answer_ranks(model, prompts: Sequence[str], answers: Sequence[str]) -> torch.Tensor:
    """Rank of each prompt's answer under the logit lens at every layer: [len(prompts), n_layers + 1] (column 0: embeddings)."""
    prompts, answers = validate.strings(prompts, "prompts"), validate.strings(answers, "answers")
    if len(prompts) != len(answers):
        raise MicroscopeError(f"{len(prompts)} prompts but {len(answers)} answers: give one answer per prompt.")
    return torch.tensor([logit_lens(model, p, a)["answer_rank"].tolist() for p, a in zip(prompts, answers)])


def plot_logit_lens(table: pd.DataFrame, answer: str, title: str):
    """Line plot of the answer's probability and rank across layers from a `logit_lens` table."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    left.plot(table["layer"], table["answer_prob"], marker="o", ms=3)
    left.set(title=f"P({answer!r}) read off each layer", xlabel="layer (-1 = embeddings)", ylabel="probability")
    right.plot(table["layer"], table["answer_rank"] + 1, marker="o", ms=3, color="tab:orange")
    right.set_yscale("log")
    right.set(title=f"Rank of {answer!r} (1 = top prediction)", xlabel="layer (-1 = embeddings)", ylabel="rank (log scale)")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
