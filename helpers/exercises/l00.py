"""Lesson 00 exercises: next-token top-k, where the logit lens settles on the answer for a family of prompts,
a hook that records and edits a neuron, and finding a concept neuron that holds up on held-out text.

The references are the helpers the lesson uses (helpers.lens, helpers.neurons). Cases are small
synthetic tensors built so that each plausible mistake gives a different answer, and SmolLM2 runs on
short prompts the exercise notebook never shows. Mistakes each case separates:

top_k_next_tokens(logits, k)
  * position 0 or the second-to-last position instead of the last: every case, the favourites differ.
  * logits or log-probabilities instead of probabilities; a softmax over positions or over the batch;
    top-k of the logits renormalised over the k alone: every case.
  * not sorted by probability; ranked by |logit| (a large negative logit in the last case).
  * k ignored (k = 3, 5 and 1 across cases); only prompt 0 read (batches of 2 and 3 whose prompts
    prefer different tokens); (ids, probs) returned in the wrong order (dtype message).

settling_layer(model, prompts, k) -> int   (a finding about a prompt family, not a formula the lesson shows)
  The first block after which the model's OWN final answer is among the logit lens's top k for at least half
  of the prompts. The check recomputes it on three families the exercise never shows: six idioms (k=10,
  block 25), six facts (k=100, block 27) and six copying prompts (k=3, block 29). Fails:
  * a layer copied from the lesson, or the last block for every family: the idioms and facts cases.
  * k ignored (top 1 only): idioms (26) and facts (29).
  * no ln_final before the unembedding, or hook_resid_pre (one block late): the idioms and facts cases.
  * only the first prompt read, or "all prompts" instead of "at least half": the idioms and facts cases.

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

import numbers
from collections.abc import Callable

import torch

from helpers.checks import Case, CheckResult, check
from helpers.exercises import pair_or_problem
from helpers.lens import lens_all_layers
from helpers.lens import top_k_next_tokens as reference_top_k_next_tokens
from helpers.neurons import collect_activations, load_sentences, mlp_hook, rank_neurons_across_hooks
from helpers.tokens import run_with_cache

LENS_PROMPT = "The Eiffel Tower is in the city of"
LENS_PROMPTS = [LENS_PROMPT, "The Colosseum is in the city of"]  # the same number of tokens: no padding (record_and_set)

__all__ = ["reference_top_k_next_tokens", "reference_settling_layer", "reference_record_and_set",
           "reference_find_concept_neuron", "check_top_k_next_tokens", "check_settling_layer", "check_record_and_set",
           "check_find_concept_neuron", "held_out_neuron_test", "answer_in_top_k", "LENS_PROMPT", "LENS_PROMPTS",
           "MUSIC", "SETTLE_SHARE"]

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


# --- Exercise 2: when does the answer settle? (a finding, checked on prompt families you never see) ----

SETTLE_SHARE = 0.5  # "settled": the model's own answer is in the lens's top k for at least this share of prompts
# Families for the check only; the exercise notebook uses other prompts of the same kinds.
_SETTLE_FAMILIES = {
    "idioms": ["Actions speak louder than", "Practice makes", "Every cloud has a silver", "Curiosity killed the",
               "A picture is worth a thousand", "Rome was not built in a"],
    "facts": ["The capital of Italy is", "The capital of Spain is", "The chemical symbol for gold is",
              "The Great Wall is in the country of", "The capital of Russia is", "Mount Everest is in the country of"],
    "copying": ["river doctor planet yellow. pencil rabbit river doctor planet",
                "forest planet market yellow garden mirror. forest planet market yellow garden",
                "ocean doctor silver rabbit. basket pencil ocean doctor silver",
                "stone garden mirror river ladder guitar. stone garden mirror river ladder",
                "candle stone yellow silver ocean pencil. candle stone yellow silver ocean",
                "apple cloud window basket. forest apple cloud window"],
}


def answer_in_top_k(model, prompts: list[str], k: int) -> torch.Tensor:
    """For each prompt and each depth, is the model's own final next token among the lens's top k? [prompt, n_layers + 1]
    (column 0: the embeddings, column L + 1: after block L)."""
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers)]
    rows = []
    for prompt in prompts:
        logits, cache, _ = run_with_cache(model, prompt, names=names)
        lens = lens_all_layers(model, cache)[:, 0]  # [n_layers + 1, d_vocab]
        answer = logits[0, -1].argmax()
        rows.append((lens > lens[:, answer, None]).sum(-1) < k)  # rank below k
    return torch.stack(rows)


def reference_settling_layer(model, prompts: list[str], k: int) -> int:
    """The first depth at which the model's own answer is in the logit lens's top k for at least half of `prompts`:
    a block index (the residual stream after that block), or -1 for the embeddings."""
    share = answer_in_top_k(model, prompts, k).float().mean(0)  # [n_layers + 1]
    return int((share >= SETTLE_SHARE).nonzero()[0, 0]) - 1


_SETTLE_HINT = ("for each prompt take the model's OWN final prediction (argmax of the logits at the last position), "
                "read the lens after every block (ln_final, then unembed, on blocks.{L}.hook_resid_post at the last "
                "position), and note whether that token is among the top k there; return the first block after which "
                "this holds for at least half of the prompts (all of them, not only the first)")


_SETTLE_MEMO: dict = {}  # (model, family, k) -> the reference's answer: deterministic, so computed once per session


class _SettlesAt:
    """The 'expected' value of a settling_layer case: the reference's answer, computed only when a learner's
    function has returned something to compare (an unfinished exercise costs nothing)."""

    def __init__(self, model, family: str, k: int):
        self.model, self.family, self.k = model, family, k

    def __call__(self, got) -> str | None:
        key = (id(self.model), self.model.cfg.model_name, self.family, self.k)
        if key not in _SETTLE_MEMO:
            _SETTLE_MEMO[key] = reference_settling_layer(self.model, _SETTLE_FAMILIES[self.family], self.k)
        if isinstance(got, bool) or not isinstance(got, numbers.Integral) and not (
                isinstance(got, torch.Tensor) and got.numel() == 1 and not got.is_floating_point()):
            return f"expected a block index (an int), got {type(got).__name__} {got!r}"[:200]
        if int(got) != _SETTLE_MEMO[key]:
            return f"expected block {_SETTLE_MEMO[key]}, got {int(got)}"
        return None


def _settle_cases(model) -> list[Case]:
    return [Case(f"{len(_SETTLE_FAMILIES[name])} {name} prompts, k={k}", (model, _SETTLE_FAMILIES[name], k),
                 _SettlesAt(model, name, k), hint=_SETTLE_HINT) for name, k in [("idioms", 10), ("facts", 100), ("copying", 3)]]


def check_settling_layer(fn: Callable, model) -> CheckResult:
    """Check settling_layer(model, prompts, k) -> int on three prompt families the exercise never shows."""
    return check("settling_layer", fn, lambda: _settle_cases(model), compare_fn=lambda got, judge: judge(got),
                 time_limit=120)


# --- Exercise 3: a hook that records and edits one neuron ---------------------------------------

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


# --- Exercise 4: find a concept neuron that holds up on sentences you never saw --------------------

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
