"""Lesson 00 exercises: next-token top-k, the logit lens at one layer, ranking concept neurons.

The references are the helpers the lesson uses (helpers.lens, helpers.neurons). Cases are small
synthetic tensors built so that each plausible mistake gives a different answer, plus one real
forward pass of SmolLM2 on a batch of two short prompts for the logit lens. Mistakes each case separates:

top_k_next_tokens(logits, k)
  * position 0 or the second-to-last position instead of the last: every case, the favourites differ.
  * logits or log-probabilities instead of probabilities; a softmax over positions or over the batch;
    top-k of the logits renormalised over the k alone: every case.
  * not sorted by probability; ranked by |logit| (a large negative logit in the last case).
  * k ignored (k = 3, 5 and 1 across cases); only prompt 0 read (batches of 2 and 3 whose prompts
    prefer different tokens); (ids, probs) returned in the wrong order (dtype message).

lens_logits(model, cache, layer)
  * no ln_final, or hook_resid_pre (one block early): every case; the next block's stream: layers 0, 1, 14.
  * the first or second-to-last position instead of the last: every case.
  * the layer ignored (hard-coded, or the cached final norm for every layer): layers 0, 1, 14 and 29.
  * only prompt 0 read: a batch of two prompts with different next tokens.
  * log-probabilities instead of logits: every case.

rank_neurons(concept_acts, control_acts, k)
  * ranked by the concept mean alone; abs() or the sign flipped: the designed case (neuron 2).
  * BOS included, or dropped only from the first sentence: the designed case (neuron 0 fires on every BOS).
  * the mean of per-sentence means: the random case (sentences of 2 to 7 tokens).
  * only the first sentence of each set: both cases.
  * the last token dropped instead of the first; worst first instead of best first: both cases.
  * k ignored (k = 2, 4 and 1); (scores, ids) in the wrong order (dtype message).
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
LENS_PROMPTS = [LENS_PROMPT, "The Colosseum is in the city of"]  # the same number of tokens: no padding

__all__ = ["reference_top_k_next_tokens", "reference_lens_logits", "reference_rank_neurons",
           "check_top_k_next_tokens", "check_lens_logits", "check_rank_neurons", "LENS_PROMPT", "LENS_PROMPTS"]

_TOP_K_HINT = ("use the LAST position (logits[:, -1]), softmax over the vocabulary (the last axis), and return "
               "(probabilities, ids) sorted from most to least likely, one row per prompt")


def _top_k_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(0)
    # Position 0 and the last position favour different tokens, so reading the wrong one shows.
    logits = torch.randn(2, 4, 12, generator=gen) * 2
    logits[:, 0, 7] += 8.0
    logits[:, -1, 3] += 3.0
    cases = [Case("batch of 2, 4 positions, 12-token vocabulary, k=3", (logits, 3),
                  reference_top_k_next_tokens(logits, 3), hint=_TOP_K_HINT)]
    one = torch.randn(1, 6, 50, generator=gen)
    cases.append(Case("one prompt, 50-token vocabulary, k=5", (one, 5), reference_top_k_next_tokens(one, 5),
                      hint="return probabilities, not logits: they are positive and at most 1"))
    # Three prompts whose last positions prefer tokens 2, 5 and 8, a second-to-last position that
    # prefers token 9, and a very negative logit (-20) that an |logit| ranking would pick.
    three = torch.randn(3, 5, 10, generator=gen)
    three[torch.arange(3), -1, torch.tensor([2, 5, 8])] += 4.0
    three[:, -2, 9] += 6.0
    three[:, -1, 0] = -20.0
    cases.append(Case("batch of 3 prompts that prefer different tokens, k=1", (three, 1),
                      reference_top_k_next_tokens(three, 1),
                      hint="each prompt (row) gets its own answer; the likeliest token is the LARGEST logit, "
                           "not the largest in absolute value. " + _TOP_K_HINT))
    return cases


def check_top_k_next_tokens(fn: Callable) -> CheckResult:
    """Check top_k_next_tokens(logits [batch, pos, d_vocab], k) -> (probs [batch, k], ids [batch, k])."""
    return check("top_k_next_tokens", fn, _top_k_cases)


def _lens_cases(model) -> list[Case]:
    # Cache resid_pre too, so an off-by-one answer gets compared (and explained) rather than a KeyError.
    names = [f"blocks.{layer}.hook_resid_{where}" for layer in range(model.cfg.n_layers) for where in ("pre", "post")]
    _, cache, _ = run_with_cache(model, LENS_PROMPTS, names=names + ["ln_final.hook_normalized"])
    last = model.cfg.n_layers - 1
    general = ("layer L means the residual stream AFTER block L (cache['blocks.{L}.hook_resid_post']) at the LAST "
               "position, for every prompt of the batch; apply model.ln_final before model.unembed, as the model "
               "does after its last block")
    hints = {0: general, 1: general, last // 2: general,
             last: "at the last layer your answer must equal the model's own logits at the last position; " + general}
    prompts = " and ".join(repr(p) for p in LENS_PROMPTS)
    return [Case(f"{prompts}, layer {layer}", (model, cache, layer), reference_lens_logits(model, cache, layer), hint=hint)
            for layer, hint in hints.items()]


def check_lens_logits(fn: Callable, model) -> CheckResult:
    """Check lens_logits(model, cache, layer) -> [batch, d_vocab] on two short prompts at four layers."""
    return check("lens_logits", fn, lambda: _lens_cases(model), atol=1e-3, rtol=1e-3)


def _sentences(rows: list[list[list[float]]]) -> list[torch.Tensor]:
    return [torch.tensor(sentence) for sentence in rows]


_RANK_HINT = ("score = mean over concept tokens MINUS mean over control tokens, skipping position 0 (BOS) "
              "of every sentence; keep the sign (neurons that fire LESS on the concept rank last)")


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
                  hint=_RANK_HINT)]
    gen = torch.Generator().manual_seed(1)
    # Sentences of different lengths: pooling tokens and averaging per-sentence means now disagree.
    concept = [torch.randn(n, 8, generator=gen) + torch.linspace(0, 1, 8) for n in (3, 7, 4)]
    control = [torch.randn(n, 8, generator=gen) for n in (5, 2, 6)]
    cases.append(Case("random activations, sentences of 2 to 7 tokens, k=4", (concept, control, 4),
                      reference_rank_neurons(concept, control, 4),
                      hint="pool every token (BOS excluded) of a set into one mean, so each token counts once; "
                           "return (neuron ids, scores), best first"))
    # A best neuron (5) whose lead comes from the later sentences and last tokens; the first sentence
    # of each set alone ranks another neuron first.
    concept = [torch.randn(n, 6, generator=gen) for n in (4, 5, 3)]
    control = [torch.randn(n, 6, generator=gen) for n in (3, 4)]
    concept[0][1:, 2] += 2.0
    concept[1][1:, 5] += 3.0
    concept[2][-1, 5] += 4.0
    cases.append(Case("6 neurons, 3 concept and 2 control sentences, k=1", (concept, control, 1),
                      reference_rank_neurons(concept, control, 1),
                      hint="use every sentence of both lists and every token after position 0. " + _RANK_HINT))
    return cases


def check_rank_neurons(fn: Callable) -> CheckResult:
    """Check rank_neurons(concept_acts, control_acts, k) -> (ids [k], scores [k])."""
    return check("rank_neurons", fn, _rank_cases)
