"""Lesson 00 exercises: next-token top-k, the logit lens at one layer, ranking concept neurons.

The references are the helpers the lesson uses (helpers.lens, helpers.neurons). Cases are small
synthetic tensors built so that each plausible mistake gives a different answer, plus one real
forward pass of SmolLM2 on a short prompt for the logit lens.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from helpers.checks import Case, CheckResult, check
from helpers.lens import lens_logits as reference_lens_logits
from helpers.lens import top_k_next_tokens as reference_top_k_next_tokens
from helpers.neurons import rank_neurons as reference_rank_neurons
from helpers.tokens import run_with_cache

LENS_PROMPT = "The Eiffel Tower is in the city of"

__all__ = ["reference_top_k_next_tokens", "reference_lens_logits", "reference_rank_neurons",
           "check_top_k_next_tokens", "check_lens_logits", "check_rank_neurons", "LENS_PROMPT"]


def _top_k_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(0)
    # Position 0 and the last position favour different tokens, so reading the wrong one shows.
    logits = torch.randn(2, 4, 12, generator=gen) * 2
    logits[:, 0, 7] += 8.0
    logits[:, -1, 3] += 3.0
    cases = [Case("batch of 2, 4 positions, 12-token vocabulary, k=3", (logits, 3),
                  reference_top_k_next_tokens(logits, 3),
                  hint="use the LAST position (logits[:, -1]), softmax over the vocabulary (the last axis), "
                       "and return (probabilities, ids) sorted from most to least likely")]
    one = torch.randn(1, 6, 50, generator=gen)
    cases.append(Case("one prompt, 50-token vocabulary, k=5", (one, 5), reference_top_k_next_tokens(one, 5),
                      hint="return probabilities, not logits: they are positive and at most 1"))
    return cases


def check_top_k_next_tokens(fn: Callable) -> CheckResult:
    """Check top_k_next_tokens(logits [batch, pos, d_vocab], k) -> (probs [batch, k], ids [batch, k])."""
    return check("top_k_next_tokens", fn, _top_k_cases())


def _lens_cases(model) -> list[Case]:
    # Cache resid_pre too, so an off-by-one answer gets compared (and explained) rather than a KeyError.
    names = [f"blocks.{layer}.hook_resid_{where}" for layer in range(model.cfg.n_layers) for where in ("pre", "post")]
    _, cache, _ = run_with_cache(model, LENS_PROMPT, names=names)
    last = model.cfg.n_layers - 1
    general = ("layer L means the residual stream AFTER block L (cache['blocks.{L}.hook_resid_post']) at the LAST "
               "position; apply model.ln_final before model.unembed, as the model does after its last block")
    hints = {1: general, last // 2: general,
             last: "at the last layer your answer must equal the model's own logits at the last position; " + general}
    return [Case(f"{LENS_PROMPT!r}, layer {layer}", (model, cache, layer), reference_lens_logits(model, cache, layer), hint=hint)
            for layer, hint in hints.items()]


def check_lens_logits(fn: Callable, model) -> CheckResult:
    """Check lens_logits(model, cache, layer) -> [batch, d_vocab] on a short prompt at three layers."""
    return check("lens_logits", fn, _lens_cases(model), atol=1e-3, rtol=1e-3)


def _sentences(rows: list[list[list[float]]]) -> list[torch.Tensor]:
    return [torch.tensor(sentence) for sentence in rows]


def _rank_cases() -> list[Case]:
    # Five neurons, each built to expose one mistake. Position 0 of each sentence is BOS.
    #   0: fires hugely on BOS in concept sentences only      -> wins if BOS is averaged in
    #   1: high everywhere, a bit higher on concept tokens    -> wins if control is ignored
    #   2: far lower on concept than on control tokens        -> wins under abs() or a flipped sign
    #   3: the real concept neuron; 4: noise
    concept = _sentences([
        [[90.0, 5.0, 0.0, 1.0, 0.1], [0.0, 9.0, -6.0, 3.0, 0.2], [0.0, 9.5, -5.0, 2.5, -0.1]],
        [[90.0, 5.0, 0.0, 1.0, 0.1], [0.0, 8.5, -6.5, 3.5, 0.0], [0.0, 9.0, -5.5, 2.0, 0.3], [0.0, 9.2, -6.0, 2.8, -0.2]],
    ])
    control = _sentences([
        [[0.0, 5.0, 0.0, 1.0, 0.1], [0.0, 8.0, 0.5, 0.2, 0.1], [0.0, 8.2, 0.0, 0.1, 0.0]],
        [[0.0, 5.0, 0.0, 1.0, 0.1], [0.0, 7.9, 0.2, -0.1, 0.2], [0.0, 8.1, 0.1, 0.3, -0.1]],
    ])
    cases = [Case("5 designed neurons, k=2", (concept, control, 2), reference_rank_neurons(concept, control, 2),
                  hint="score = mean over concept tokens MINUS mean over control tokens, skipping position 0 (BOS) "
                       "of every sentence; keep the sign (neurons that fire LESS on the concept rank last)")]
    gen = torch.Generator().manual_seed(1)
    # Sentences of different lengths: pooling tokens and averaging per-sentence means now disagree.
    concept = [torch.randn(n, 8, generator=gen) + torch.linspace(0, 1, 8) for n in (3, 7, 4)]
    control = [torch.randn(n, 8, generator=gen) for n in (5, 2, 6)]
    cases.append(Case("random activations, sentences of 2 to 7 tokens, k=4", (concept, control, 4),
                      reference_rank_neurons(concept, control, 4),
                      hint="pool every token (BOS excluded) of a set into one mean, so each token counts once; "
                           "return (neuron ids, scores), best first"))
    return cases


def check_rank_neurons(fn: Callable) -> CheckResult:
    """Check rank_neurons(concept_acts, control_acts, k) -> (ids [k], scores [k])."""
    return check("rank_neurons", fn, _rank_cases())
