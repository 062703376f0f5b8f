"""Concept neurons: rank neurons by how much more they fire on concept text than on control text.

Works for any hook whose last axis indexes units (``blocks.{L}.mlp.hook_post`` is the usual one: the
MLP's hidden activations, ``[batch, pos, d_mlp]``) and any pair of sentence sets. Activations are
kept per sentence, ``[pos, d]`` with the BOS token at position 0, because sentences differ in length.

Scores pool every token of a set (BOS excluded: position 0 is the same token in every sentence and
some neurons fire enormously there, which says nothing about the concept). A high score is a
correlation, a hypothesis about what the neuron does; only an intervention (ablate or patch it, see
lesson 04) tests whether the model uses it.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from helpers import validate
from helpers.errors import MicroscopeError, PromptError, ShapeError
from helpers.tokens import check_hook_name

DATA = Path(__file__).resolve().parent / "data"


def mlp_hook(layer: int) -> str:
    """The hook holding layer `layer`'s MLP neuron activations: ``blocks.{layer}.mlp.hook_post``."""
    return f"blocks.{layer}.mlp.hook_post"


def load_sentences(name: str) -> dict:
    """A prompt set shipped in helpers/data (e.g. ``"l00_flight"``: concept, control, held_out)."""
    path = DATA / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in DATA.glob("*.json"))
        raise MicroscopeError(f"No prompt set {name!r} in {DATA}. Known sets: {', '.join(known) or '(none)'}.")
    return json.loads(path.read_text())


def _check_sentences(sentences: Sequence[str]) -> list[str]:
    if isinstance(sentences, str):
        raise PromptError("Pass a list of sentences, not one string (a string would be read letter by letter).")
    sentences = list(sentences)
    if not sentences:
        raise PromptError("The list of sentences is empty: there is nothing to run the model on.")
    for i, text in enumerate(sentences):
        if not isinstance(text, str) or not text.strip():
            raise PromptError(f"Sentence {i} is {text!r}; every sentence must be a non-empty string.")
    return sentences


def collect_activations(model, sentences: Sequence[str], hook_names: Sequence[str],
                        batch_size: int = 32) -> dict[str, list[torch.Tensor]]:
    """Activations at each hook for each sentence: {hook: [tensor [pos_i, d] per sentence]}, BOS at position 0.

    Sentences are run in right-padded batches; padding sits after every real token, so the causal
    mask keeps it from touching them, and it is cut off before returning.
    """
    sentences = _check_sentences(sentences)
    batch_size = validate.positive_int(batch_size, "batch_size")
    hook_names = validate.strings(hook_names, "hook_names")
    names = [check_hook_name(model, name) for name in hook_names]
    lengths = [len(model.tokenizer.encode(s, add_special_tokens=False)) + 1 for s in sentences]
    if max(lengths) > model.cfg.n_ctx:
        raise PromptError(f"A sentence is {max(lengths)} tokens long; the model reads at most {model.cfg.n_ctx}.")
    out: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    for start in range(0, len(sentences), batch_size):
        batch = sentences[start:start + batch_size]
        tokens = model.to_tokens(batch, prepend_bos=True, padding_side="right")
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=names)
        for name in names:
            for row, length in enumerate(lengths[start:start + batch_size]):
                out[name].append(cache[name][row, :length].detach().clone())
    return out


def pooled_tokens(acts: Sequence[torch.Tensor], skip_bos: bool = True) -> torch.Tensor:
    """Every token's activations from a list of [pos, d] tensors, stacked: [n_tokens, d]."""
    if isinstance(acts, torch.Tensor) or len(acts) == 0:
        raise ShapeError("Expected a non-empty list of per-sentence activations, each [pos, d].")
    widths = {tuple(a.shape[1:]) for a in acts}
    if any(a.dim() != 2 for a in acts) or len(widths) != 1:
        raise ShapeError(f"Each sentence's activations must be [pos, d] with the same d; got shapes "
                         f"{sorted({tuple(a.shape) for a in acts})[:4]}.")
    start = 1 if skip_bos else 0
    kept = [a[start:] for a in acts]
    if sum(len(a) for a in kept) == 0:
        raise ShapeError("No tokens left after dropping BOS: the sentences have no words.")
    return torch.cat(kept).float()


@dataclass
class NeuronStats:
    """Per-neuron statistics [d] comparing a concept set with a control set (BOS excluded)."""

    concept_mean: torch.Tensor
    control_mean: torch.Tensor
    difference: torch.Tensor  # concept_mean - control_mean
    spread: torch.Tensor  # standard deviation over the tokens of both sets
    effect: torch.Tensor  # difference / spread: comparable across layers whose scales differ


def neuron_stats(concept_acts: Sequence[torch.Tensor], control_acts: Sequence[torch.Tensor],
                 skip_bos: bool = True) -> NeuronStats:
    """Concept mean, control mean, their difference, the pooled spread and the effect size, each [d]."""
    concept, control = pooled_tokens(concept_acts, skip_bos), pooled_tokens(control_acts, skip_bos)
    if concept.shape[1] != control.shape[1]:
        raise ShapeError(f"Concept activations have {concept.shape[1]} units, control {control.shape[1]}: "
                         "collect both at the same hook.")
    difference = concept.mean(0) - control.mean(0)
    spread = torch.cat([concept, control]).std(0)
    # A unit that never varies has no effect to measure; 0 rather than a division by zero.
    effect = torch.where(spread > 0, difference / spread.clamp_min(1e-12), torch.zeros_like(difference))
    return NeuronStats(concept.mean(0), control.mean(0), difference, spread, effect)


def rank_neurons(concept_acts: Sequence[torch.Tensor], control_acts: Sequence[torch.Tensor], k: int = 10,
                 skip_bos: bool = True, standardise: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The k neurons that fire most MORE on concept than control tokens: (ids [k], scores [k]), best first.

    score = mean over concept tokens - mean over control tokens (BOS excluded), or that difference
    divided by the neuron's spread when `standardise` (use it to compare neurons of different layers).
    """
    stats = neuron_stats(concept_acts, control_acts, skip_bos)
    scores = stats.effect if standardise else stats.difference
    k = validate.positive_int(k, "k")
    if not 1 <= k <= scores.numel():
        raise MicroscopeError(f"k={k} is out of range: there are {scores.numel()} neurons to rank.")
    values, ids = scores.topk(k)
    return ids, values


def rank_neurons_across_hooks(concept: dict[str, list[torch.Tensor]], control: dict[str, list[torch.Tensor]],
                              k: int = 10, standardise: bool = True) -> pd.DataFrame:
    """Top-k neurons over several hooks (e.g. every layer's mlp.hook_post), one row each, best first.

    Columns: hook, neuron, concept_mean, control_mean, difference, effect. Ranked by effect size by
    default, because activation scales differ a lot between layers.
    """
    if set(concept) != set(control):
        raise MicroscopeError(f"Concept and control were collected at different hooks: {sorted(concept)} vs {sorted(control)}.")
    rows = []
    for hook in concept:
        stats = neuron_stats(concept[hook], control[hook])
        scores = stats.effect if standardise else stats.difference
        for neuron in scores.topk(min(k, scores.numel())).indices.tolist():
            rows.append({"hook": hook, "neuron": neuron, "concept_mean": stats.concept_mean[neuron].item(),
                         "control_mean": stats.control_mean[neuron].item(),
                         "difference": stats.difference[neuron].item(), "effect": stats.effect[neuron].item()})
    key = "effect" if standardise else "difference"
    return pd.DataFrame(rows).sort_values(key, ascending=False, kind="stable").head(k).reset_index(drop=True)


def top_activating_tokens(model, sentences: Sequence[str], hook_name: str, neuron: int, k: int = 10,
                          acts: list[torch.Tensor] | None = None, window: int = 4) -> pd.DataFrame:
    """The k (sentence, token) places where `neuron` at `hook_name` fires most, BOS excluded, best first.

    Columns: activation, sentence (index), position, token, context (the `window` tokens before it
    and the token itself in [brackets]). Pass `acts` from `collect_activations` to skip the forward pass.
    """
    sentences = _check_sentences(sentences)
    if acts is None:
        acts = collect_activations(model, sentences, [hook_name])[check_hook_name(model, hook_name)]
    if len(acts) != len(sentences):
        raise ShapeError(f"Got activations for {len(acts)} sentences but {len(sentences)} sentences.")
    width = acts[0].shape[-1]
    neuron = validate.integer(neuron, "neuron")
    if not 0 <= neuron < width:
        raise MicroscopeError(f"Neuron {neuron} does not exist at {hook_name}: it has {width} units (0 to {width - 1}).")
    rows = []
    for index, (text, act) in enumerate(zip(sentences, acts)):
        pieces = model.to_str_tokens(text)
        for pos in range(1, len(act)):
            context = "".join(pieces[max(1, pos - window):pos]) + f"[{pieces[pos]}]"
            rows.append({"activation": act[pos, neuron].item(), "sentence": index, "position": pos,
                         "token": pieces[pos], "context": context})
    table = pd.DataFrame(rows).sort_values("activation", ascending=False, kind="stable")
    return table.head(k).reset_index(drop=True)
