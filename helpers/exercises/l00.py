"""Lesson 00 exercises: next-token top-k, the logit lens at one layer, a hook that records and edits a neuron,
and finding a concept neuron that holds up on held-out text.

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

record_and_set(model, tokens, layer, neuron, value)
  * recorded after the edit (every entry equals `value`): every case.
  * only the last position edited, or only prompt 0: batches of two prompts, every position compared.
  * hook_pre instead of hook_post, or block layer + 1: layers 25, 3 and 29.
  * `value` ignored (zeroed): values 10 and -2; `neuron` ignored: neurons 1418, 7, 232.
  * a hook left on the model (model.add_hook without removing it): reported by the check.

find_concept_neuron(model, concept, control) -> (layer, neuron)   (a finding, not a formula)
  The named neuron is run on held-out sentences the function never sees and must separate concept
  from control there: standardised token effect >= 0.5 and sentence-peak AUC >= 0.8. Any route that
  finds a real concept neuron passes (raw or standardised differences both do here). Fails:
  * ranked by the concept mean alone (a neuron loud on every text): effect 0.32 (flight), 0.07 (music).
  * the sign flipped (the neuron most suppressed by the concept): negative effect.
  * a neuron copied from the lesson (25, 1418) for every concept: the music case (effect 0.17).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from helpers.checks import Case, CheckResult, check
from helpers.exercises import pair_or_problem
from helpers.lens import lens_logits as reference_lens_logits
from helpers.lens import top_k_next_tokens as reference_top_k_next_tokens
from helpers.neurons import collect_activations, load_sentences, mlp_hook, rank_neurons_across_hooks
from helpers.tokens import run_with_cache

LENS_PROMPT = "The Eiffel Tower is in the city of"
LENS_PROMPTS = [LENS_PROMPT, "The Colosseum is in the city of"]  # the same number of tokens: no padding

__all__ = ["reference_top_k_next_tokens", "reference_lens_logits", "reference_record_and_set",
           "reference_find_concept_neuron", "check_top_k_next_tokens", "check_lens_logits", "check_record_and_set",
           "check_find_concept_neuron", "held_out_neuron_test", "LENS_PROMPT", "LENS_PROMPTS", "MUSIC"]

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


# --- Exercise 2: a hook that records and edits one neuron ---------------------------------------

def reference_record_and_set(model, tokens: torch.Tensor, layer: int, neuron: int,
                             value: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `tokens` with MLP neuron `neuron` of block `layer` (mlp.hook_post) set to `value` at every position.

    Returns (recorded [batch, pos]: the neuron's activation BEFORE the edit, logits [batch, pos, d_vocab]).
    """
    recorded = []

    def hook(post: torch.Tensor, hook) -> torch.Tensor:
        recorded.append(post[:, :, neuron].detach().clone())
        post = post.clone()
        post[:, :, neuron] = value
        return post

    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.mlp.hook_post", hook)])
    return recorded[0], logits


_SET_HINT = ("hook blocks.{layer}.mlp.hook_post ([batch, pos, d_mlp]); inside the hook copy post[:, :, neuron] "
             "BEFORE you overwrite it, then set that neuron to `value` at every position of every prompt and return "
             "the edited tensor; run with model.run_with_hooks (or `with model.hooks(...)`) so no hook stays on")


def _set_cases(model) -> list[Case]:
    tokens = model.to_tokens(LENS_PROMPTS)  # two prompts, same length
    other = model.to_tokens(["A fly landed on the rim of my glass.", "The ferry crossed the bay in an hour."])
    specs = [("the two city prompts, layer 25 neuron 1418 set to 10", (tokens, 25, 1418, 10.0)),
             ("two other prompts, layer 3 neuron 7 set to -2", (other, 3, 7, -2.0)),
             ("the city prompts, layer 29 neuron 232 set to 0", (tokens, 29, 232, 0.0))]
    return [Case(name, (model, *args), reference_record_and_set(model, *args), hint=_SET_HINT) for name, args in specs]


def check_record_and_set(fn: Callable, model) -> CheckResult:
    """Check record_and_set(model, tokens, layer, neuron, value) -> (recorded [batch, pos], logits [batch, pos, vocab])."""
    return check("record_and_set", fn, lambda: _set_cases(model), atol=2e-3, rtol=1e-3)


# --- Exercise 3: find a concept neuron that holds up on sentences you never saw --------------------

MUSIC = {
    "concept": [
        "The violinist tuned her instrument before the concert began.",
        "He played a slow melody on the old piano.",
        "The choir sang three hymns at the service.",
        "Our band rehearsed the new song until midnight.",
        "She hummed the chorus while she cooked.",
        "The orchestra performed a symphony by Beethoven.",
        "He strummed a few chords on his guitar.",
        "The drummer kept a steady beat all night.",
        "They listened to the album from start to finish.",
        "The singer hit the high note perfectly.",
        "A jazz trio played in the corner of the bar.",
        "She practised the cello for two hours every day.",
    ],
    "control": [  # each mirrors the concept sentence at the same index, without music
        "The mechanic checked the engine before the race began.",
        "He read a slow chapter of the old novel.",
        "The committee approved three budgets at the meeting.",
        "Our team painted the new fence until midnight.",
        "She watched the news while she cooked.",
        "The museum displayed a painting by Rembrandt.",
        "He chopped a few onions on the board.",
        "The guard kept a steady watch all night.",
        "They read the report from start to finish.",
        "The runner crossed the line perfectly.",
        "A family of ducks swam in the corner of the pond.",
        "She studied chemistry for two hours every day.",
    ],
}
# Held out: the learner's function never sees these; the check tests the named neuron on them.
_HELD_OUT = {
    "music": (["The pianist bowed after the last sonata.", "We sang along to the radio in the car.",
               "The trumpet solo was the best part of the show.", "He composed a song for his daughter's wedding.",
               "The guitarist broke a string during the encore."],
              ["The doctor bowed after the long operation.", "We talked about the weather in the car.",
               "The dessert was the best part of the meal.", "He wrote a letter for his daughter's birthday.",
               "The carpenter broke a nail during the repair."]),
}
MIN_HELD_OUT_EFFECT = 0.5  # held-out (concept mean - control mean) / pooled std, BOS excluded
MIN_HELD_OUT_AUC = 0.8  # chance that a held-out concept sentence's peak beats a control sentence's


def _flight_held_out() -> tuple[list[str], list[str]]:
    held = load_sentences("l00_flight")["held_out"]
    return ([d["text"] for d in held if d["label"] == "flight"], [d["text"] for d in held if d["label"] == "no flight"])


def held_out_neuron_test(model, layer: int, neuron: int, concept: list[str], control: list[str]) -> dict[str, float]:
    """How well neuron `neuron` of block `layer` separates held-out concept from control sentences (BOS excluded).

    effect: (concept token mean - control token mean) / std over both sets' tokens; auc: the share of
    (concept, control) sentence pairs whose peak activation is higher on the concept sentence.
    """
    hook = mlp_hook(layer)
    acts = collect_activations(model, list(concept) + list(control), [hook])[hook]
    on, off = acts[:len(concept)], acts[len(concept):]
    c, o = torch.cat([a[1:, neuron] for a in on]), torch.cat([a[1:, neuron] for a in off])
    effect = ((c.mean() - o.mean()) / torch.cat([c, o]).std()).item()
    peaks_on, peaks_off = [a[1:, neuron].max().item() for a in on], [a[1:, neuron].max().item() for a in off]
    auc = sum((x > y) + 0.5 * (x == y) for x in peaks_on for y in peaks_off) / (len(peaks_on) * len(peaks_off))
    return {"effect": effect, "auc": auc}


class _HoldsUpOnHeldOut:
    """The 'expected' value of a find_concept_neuron case: a test the named neuron must pass on held-out text."""

    def __init__(self, model, concept: list[str], control: list[str]):
        self.model, self.concept, self.control = model, concept, control

    def __call__(self, got) -> str | None:
        cfg = self.model.cfg
        pair = pair_or_problem(got, (cfg.n_layers, cfg.d_mlp), ("layer", "neuron"))
        if isinstance(pair, str):
            return pair
        layer, neuron = pair
        test = held_out_neuron_test(self.model, layer, neuron, self.concept, self.control)
        if test["effect"] < MIN_HELD_OUT_EFFECT or test["auc"] < MIN_HELD_OUT_AUC:
            return (f"neuron {neuron} of block {layer} does not hold up on held-out sentences: effect "
                    f"{test['effect']:.2f} (need >= {MIN_HELD_OUT_EFFECT}), peak AUC {test['auc']:.2f} "
                    f"(need >= {MIN_HELD_OUT_AUC})")
        return None


_FIND_HINT = ("score every neuron of every block by how much MORE it fires on concept tokens than on the matched "
              "control tokens (BOS excluded, keep the sign); compare neurons of different layers on a common scale "
              "(e.g. divide by each neuron's spread), and use the sentences you are given, not a neuron from the lesson")


def _find_cases(model) -> list[Case]:
    flight = load_sentences("l00_flight")
    return [Case("flight (tested on the held-out flight and no-flight sentences)",
                 (model, flight["concept"], flight["control"]), _HoldsUpOnHeldOut(model, *_flight_held_out()),
                 hint=_FIND_HINT),
            Case("music (a concept the lesson never used; tested on held-out music sentences)",
                 (model, MUSIC["concept"], MUSIC["control"]), _HoldsUpOnHeldOut(model, *_HELD_OUT["music"]),
                 hint=_FIND_HINT)]


def reference_find_concept_neuron(model, concept: list[str], control: list[str]) -> tuple[int, int]:
    """(layer, neuron) of the MLP neuron with the largest standardised concept-minus-control effect."""
    hooks = [mlp_hook(layer) for layer in range(model.cfg.n_layers)]
    table = rank_neurons_across_hooks(collect_activations(model, concept, hooks),
                                      collect_activations(model, control, hooks), k=1)
    return hooks.index(table.loc[0, "hook"]), int(table.loc[0, "neuron"])


def check_find_concept_neuron(fn: Callable, model) -> CheckResult:
    """Check find_concept_neuron(model, concept, control) -> (layer, neuron): the neuron must hold up on held-out text."""
    return check("find_concept_neuron", fn, lambda: _find_cases(model), compare_fn=lambda got, test: test(got),
                 time_limit=120)
