"""Lesson 03 exercises: a difference-of-means direction, a probe scored on held-out entities, selectivity,
and deciding whether SmolLM2 uses a direction (exercise 4, documented with its check further down).

The first three use small synthetic activations whose truth is known by construction, so each check can
tell a correct answer from the classic mistakes. Mistakes each case separates:

diff_of_means_direction(acts, labels)
  * class 0 minus class 1 (sign), or ``abs()`` of the direction: every case has components of both signs.
  * not normalised, or normalised with another norm (L1, max): every case has non-unit differences.
  * mean over the features (axis 1), or sums instead of means: cases have unbalanced classes.
  * ``acts[labels]`` (integer indexing picks rows 0 and 1): every case.
  * assumes the classes are sorted (first half class 0): labels interleaved in one case, class 1 first
    in another.
  * unit-normalising each row before averaging: rows of very different norms in one case.

heldout_probe_accuracy(acts, labels, groups, test_fraction, seed)
  The answer depends on a random split, so the check judges what an honest split must give:
  * scored on the training prompts, trained on all prompts, or a split by prompt instead of by group:
    "random label per entity" (an honest probe is near chance; a leaky one memorises the entities).
  * a constant, or trained and scored on the wrong side: "label shifts a direction" (must be > 0.9).
  * the first (or last) groups or rows as the test side instead of a random choice: two datasets
    sorted by source, whose first (last) quarter of entities has the label signal reversed; a split
    that takes them gets almost every test prompt wrong.
  * ignores ``test_fraction`` (or uses it as the training share): two cases with a fraction other
    than 0.25 on one-prompt entities, where the accuracy must be a whole number of correct answers out
    of round(test_fraction x entities) test prompts (the counts are chosen to share no factor).
  * ignores ``seed`` (the same split whatever the seed), or uses an unseeded generator (a different
    split on every call): four seeds on one dataset must not all give the same accuracy, and the same
    seed twice must give the same accuracy.

selectivity(acts, task_labels, control_labels, train_idx, test_idx)
  * control probe scored on the training prompts, or fitted on the test prompts; train and test
    swapped; its own split instead of train_idx / test_idx: every case (compared exactly with the reference).
  * task minus control swapped (sign): every case. ``abs()`` of the difference, or the task probe scored
    on the training prompts: the third case, with a learnable control task and a random main task, so
    its selectivity is negative.
  * the task labels used for both probes (a typo): every case.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from helpers import steering
from helpers.checks import Case, CheckResult, _as_real, check
from helpers.generation import last_logits
from helpers.probes import (diff_of_means, fit_probe, gather_activations, load_prompt_set, probe_direction, probe_score,
                            remove_direction)
from helpers.tokens import single_token_id


# ------------------------------------------------------------------------------------ synthetic data

def group_data(n_groups: int = 200, per_group: int = 3, d: int = 64, signal: float = 0.0, seed: int = 0):
    """(acts [n, d], labels [n], groups list[str]): a random vector per group plus prompt noise, labels
    random per group (balanced); `signal` adds label * signal along a fixed direction."""
    return entity_data([per_group] * n_groups, d=d, signal=signal, seed=seed, padded=False)


def entity_data(sizes, d: int = 64, signal=0.0, seed: int = 0, padded: bool = True):
    """Like `group_data`, with `sizes[i]` prompts for entity i, entities listed in order, and `signal`
    either one number or one per entity (a negative signal reverses the label's direction for that entity).

    With `padded`, entity names are zero-padded (entity007) so that sorting them keeps their order.
    """
    gen = torch.Generator().manual_seed(seed)
    n_groups = len(sizes)
    group_vectors = torch.randn(n_groups, d, generator=gen)
    group_labels = torch.randperm(n_groups, generator=gen) % 2
    direction = torch.randn(d, generator=gen)
    direction /= direction.norm()
    index = torch.arange(n_groups).repeat_interleave(torch.as_tensor(sizes))
    acts = group_vectors[index] + 0.3 * torch.randn(len(index), d, generator=gen)
    labels = group_labels[index]
    strength = torch.as_tensor(signal, dtype=torch.float32).expand(n_groups)[index]
    acts += (strength * (2.0 * labels - 1.0))[:, None] * direction
    width = len(str(n_groups - 1)) if padded else 0
    return acts, labels, [f"entity{int(i):0{width}d}" for i in index]


# ------------------------------------------------------------------ exercise 1: difference of means

def reference_diff_of_means_direction(acts: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Unit vector [d] pointing from the mean of class 0 to the mean of class 1. acts [n, d], labels [n]."""
    return diff_of_means(acts, labels)


_DOM_HINT = ("mean of the class-1 rows minus mean of the class-0 rows (average over axis 0, the prompts; select "
             "rows with a boolean mask such as labels == 1), then divide by its norm so the direction has length 1.")


def _dom_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(3)
    cases = []
    for name, n, d in (("40 prompts, d=8", 40, 8), ("12 prompts, d=5 (unbalanced classes)", 12, 5)):
        acts = torch.randn(n, d, generator=gen) + 2.0
        labels = (torch.arange(n) % (2 if n == 40 else 3) == 0).long()
        acts[labels == 1, 0] += 3.0
        cases.append(Case(name, (acts, labels), reference_diff_of_means_direction(acts, labels), hint=_DOM_HINT))
    # Class 1 first (a learner assuming class 0 comes first fails), 7 of 16 in class 1, rows whose norms
    # range over two orders of magnitude (averaging unit rows differs), and a class-1 mean lower than the
    # class-0 mean on most features (the direction's sign matters everywhere).
    acts = torch.randn(16, 6, generator=gen) * torch.logspace(-1, 1, 16)[:, None] - 1.0
    labels = (torch.arange(16) < 7).long()
    acts[labels == 1] -= torch.tensor([2.0, 0.5, -1.0, 3.0, 0.0, -0.5])
    cases.append(Case("16 prompts, d=6, class 1 listed first, rows of very different sizes", (acts, labels),
                      reference_diff_of_means_direction(acts, labels), hint=_DOM_HINT))
    return cases


def check_diff_of_means_direction(fn) -> CheckResult:
    """Check a difference-of-means direction; never raises."""
    return check("diff_of_means_direction", fn, _dom_cases, atol=1e-5)


# ---------------------------------------------------------- exercise 2: a probe with a proper split

def reference_heldout_probe_accuracy(acts: torch.Tensor, labels: torch.Tensor, groups: list[str],
                                     test_fraction: float = 0.25, seed: int = 0) -> float:
    """Hold out a random `test_fraction` of the groups (all their prompts), fit a probe on the rest,
    return its accuracy on the held-out prompts."""
    rng = np.random.default_rng(seed)
    unique = sorted(set(groups))
    held_out = set(rng.permutation(unique)[:max(1, round(test_fraction * len(unique)))].tolist())
    test = torch.tensor([g in held_out for g in groups])
    probe = fit_probe(acts[~test], labels[~test])
    return probe_score(probe, acts[test], labels[test])


@dataclass(frozen=True)
class Accuracy:
    """What an honest held-out accuracy must look like on one case (the split itself may differ)."""

    low: float
    high: float
    test_counts: tuple[int, ...] = ()  # if given: the accuracy is k / n for one of these test-set sizes
    fraction_note: str = ""  # says where test_counts come from
    seed_run: str = ""  # cases sharing a seed_run use the same data with different seeds
    seed: int | None = None
    last_of_run: bool = False


def _as_accuracy(got) -> float | None:
    if isinstance(got, torch.Tensor) and got.numel() == 1 and got.is_floating_point():
        return float(got.item())
    if isinstance(got, np.ndarray) and got.size == 1 and np.issubdtype(got.dtype, np.floating):
        return float(got.reshape(()))
    if isinstance(got, (int, float, np.floating, np.integer)) and not isinstance(got, (bool, np.bool_)):
        return float(got)
    return None


def _in_range(got, expected) -> str | None:
    """Judge one accuracy against an `Accuracy` (or a (low, high) pair)."""
    return _judge(got, expected if isinstance(expected, Accuracy) else Accuracy(*expected), {})


def _judge(got, spec: Accuracy, memory: dict) -> str | None:
    value = _as_accuracy(got)
    if value is None:
        return f"expected an accuracy (a float between 0 and 1), got {type(got).__name__} {got!r}"[:200]
    if not spec.low <= value <= spec.high:
        return f"expected an accuracy between {spec.low} and {spec.high}, got {value:.3f}"
    if spec.test_counts and not any(abs(value * n - round(value * n)) < 1e-4 for n in spec.test_counts):
        counts = " or ".join(str(n) for n in spec.test_counts)
        return (f"an accuracy of {value:.4f} is not a whole number of correct answers out of the {counts} test "
                f"prompts that {spec.fraction_note} gives, so your test side has another size: did you ignore "
                "`test_fraction`, or use it as the share of the training side?")
    if spec.seed_run:
        run = memory.setdefault(spec.seed_run, {})
        if spec.seed in run and abs(run[spec.seed] - value) > 1e-9:
            return (f"called twice with seed={spec.seed} on the same data, your function returned "
                    f"{run[spec.seed]:.4f}, then {value:.4f}: make every random choice from `seed` (for example "
                    "rng = np.random.default_rng(seed)), so that a result can be reproduced")
        run[spec.seed] = value
        if spec.last_of_run and len(run) > 1 and max(run.values()) - min(run.values()) < 1e-9:
            return (f"seeds {', '.join(str(s) for s in run)} all gave exactly {value:.4f}: a different seed should "
                    "hold out different entities, so `seed` must drive your random choice of test groups")
    return None


_LEAK_HINT = ("an honest probe cannot predict random labels of entities it never saw, so its accuracy is near "
              "chance. Near 1.0 means the test prompts' entities were seen in training: score only on prompts "
              "whose group is held out entirely (not a random subset of prompts), and never on the training prompts.")
_ORDER_HINT = ("this dataset is sorted by source, and the {where} quarter of its entities come from a source where "
               "the label points the other way. A random choice of held-out entities mixes sources; taking the "
               "{where} entities (or rows) as the test side puts one whole source there. Choose the held-out "
               "groups at random, with `seed`.")
_FRACTION_HINT = ("hold out round(test_fraction x number of entities) entities, chosen at random with `seed` "
                  "(rounding up or down is fine), and put all their prompts on the test side.")
_SEED_HINT = ("use `seed` for every random choice (e.g. rng = np.random.default_rng(seed)): the same seed must give "
              "the same split, and different seeds different splits.")


def _fraction_case(n_entities: int, test_fraction: float, seed: int, data_seed: int) -> Case:
    # One prompt per entity and a weak signal: the accuracy is k / n_test with 0 < k < n_test, and
    # n_test for test_fraction shares no factor with the sizes a fixed 0.25 or the training share give.
    data = entity_data([1] * n_entities, d=64, signal=1.5, seed=data_seed)
    x = test_fraction * n_entities
    counts = tuple(sorted({math.floor(x), round(x), math.ceil(x)}))
    spec = Accuracy(0.0, 1.0, test_counts=counts,
                    fraction_note=f"test_fraction={test_fraction} of {n_entities} entities (one prompt each)")
    return Case(f"{n_entities} entities with one prompt each, test_fraction={test_fraction}, seed={seed}",
                data, spec, hint=_FRACTION_HINT, kwargs={"test_fraction": test_fraction, "seed": seed})


def _split_cases() -> list[Case]:
    # d > number of groups, so a leaky probe can memorise every group; 50 held-out groups keep an
    # honest probe's accuracy within about +-0.1 of chance whatever split the learner draws.
    noise = group_data(n_groups=200, d=512, signal=0.0, seed=1)
    signal = group_data(n_groups=200, d=512, signal=4.0, seed=2)
    cases = [
        Case("random label per entity (nothing to generalise)", (*noise,), Accuracy(0.25, 0.75),
             kwargs={"test_fraction": 0.25}, hint=_LEAK_HINT),
        Case("label shifts a direction (should generalise)", (*signal,), Accuracy(0.9, 1.0), kwargs={"test_fraction": 0.25},
             hint="this data has a real, shared signal: a probe trained on some entities should score above "
                  "0.9 on the held-out ones. Fit on the training side, score on the test side."),
    ]
    # Sorted by source: a quarter of the entities (first, then last) has the label direction reversed.
    # An honest random split scores about 0.66 (between 0.51 and 0.79 over 100 splits); a split that
    # holds out that quarter scores about 0; a split by prompt about 0.99.
    for where, seed, data_seed in (("first", 1, 11), ("last", 2, 12)):
        strength = torch.full((200,), 4.0)
        strength[slice(0, 50) if where == "first" else slice(150, 200)] = -4.0
        data = entity_data([3] * 200, d=512, signal=strength, seed=data_seed)
        cases.append(Case(f"sorted by source: the {where} 50 of 200 entities have the label reversed, seed={seed}",
                          data, Accuracy(0.4, 0.9), hint=_ORDER_HINT.format(where=where),
                          kwargs={"test_fraction": 0.25, "seed": seed}))
    cases += [_fraction_case(68, 0.2, seed=0, data_seed=21), _fraction_case(76, 0.3, seed=4, data_seed=22)]
    # Entities of 1 to 5 prompts with random labels: every split gives its own accuracy.
    sizes = (torch.randperm(120, generator=torch.Generator().manual_seed(5)) % 5 + 1).tolist()
    data = entity_data(sizes, d=128, signal=0.0, seed=23)
    seeds = (3, 4, 3, 5, 6)
    for i, seed in enumerate(seeds):
        again = " (again)" if seed in seeds[:i] else ""
        cases.append(Case(f"120 entities of 1 to 5 prompts, random labels, seed={seed}{again}", data,
                          Accuracy(0.15, 0.85, seed_run="seeds", seed=seed, last_of_run=i == len(seeds) - 1),
                          hint=_SEED_HINT, kwargs={"test_fraction": 0.25, "seed": seed}))
    return cases


def check_heldout_probe_accuracy(fn) -> CheckResult:
    """Check a held-out-entity probe by what its accuracy must be on data built to expose leaks; never raises."""
    memory: dict = {}
    return check("heldout_probe_accuracy", fn, _split_cases, compare_fn=lambda got, spec: _judge(got, spec, memory))


# ----------------------------------------------------------------------------- exercise 3: selectivity

def reference_selectivity(acts: torch.Tensor, task_labels: torch.Tensor, control_labels: torch.Tensor,
                          train_idx, test_idx) -> float:
    """Test accuracy of a probe for the task minus test accuracy of a probe for the control task
    (both fitted with fit_probe on train_idx, scored with probe_score on test_idx)."""
    task = fit_probe(acts[train_idx], task_labels[train_idx])
    control = fit_probe(acts[train_idx], control_labels[train_idx])
    return (probe_score(task, acts[test_idx], task_labels[test_idx])
            - probe_score(control, acts[test_idx], control_labels[test_idx]))


_SELECTIVITY_HINT = ("selectivity = task accuracy on the TEST prompts minus control accuracy on the same TEST "
                     "prompts; both probes are fitted on the training prompts only (train_idx), each on its own labels.")


def _selectivity_cases() -> list[Case]:
    cases = []
    for name, seed in (("by-prompt split", 4), ("another draw", 5)):
        # Task: a shared signal. Control: random labels per group, learnable only by memorising groups.
        acts, task_labels, groups = group_data(n_groups=60, per_group=4, d=96, signal=1.5, seed=seed)
        _, control_labels, _ = group_data(n_groups=60, per_group=4, d=96, seed=seed + 100)
        order = np.random.default_rng(seed).permutation(len(groups))
        train_idx, test_idx = np.sort(order[60:]), np.sort(order[:60])
        args = (acts, task_labels, control_labels, train_idx, test_idx)
        cases.append(Case(name, args, reference_selectivity(*args), hint=_SELECTIVITY_HINT))
    # The roles reversed: the control labels carry a shared signal and the task labels are random per
    # group, so selectivity is negative (a wrong abs() or swapped sign shows). The test side is the
    # first 60 rows, unsorted train indices.
    acts, control_labels, _ = group_data(n_groups=60, per_group=4, d=96, signal=1.5, seed=6)
    _, task_labels, _ = group_data(n_groups=60, per_group=4, d=96, seed=106)
    order = np.random.default_rng(6).permutation(np.arange(60, 240))
    args = (acts, task_labels, control_labels, order, np.arange(60))
    cases.append(Case("a random task and a learnable control (selectivity is negative)", args,
                      reference_selectivity(*args), hint=_SELECTIVITY_HINT + " Keep the sign: it can be negative."))
    return cases


def check_selectivity(fn) -> CheckResult:
    """Check selectivity against the reference on three synthetic splits; never raises."""
    return check("selectivity", fn, _selectivity_cases, atol=1e-6, rtol=0.0)


# ------------------------------------------------------- exercise 4: is the direction used? (a finding)
#
# direction_is_used(model, direction, prompts, signs, n_random, seed) -> (used, effect, p_value)
#   The check does not compare code: it recomputes the evidence itself, with its own random draws, on
#   people who are in none of the lesson's prompts, and judges the verdict and the numbers behind it.
#   Case 1 gives the lesson's difference-of-means direction UNNORMALISED (norm about 40), which the model
#   uses; case 2 gives the direction of a second probe fitted after the first probe's direction is projected
#   out (Ravfogel et al.'s second iteration), which it does not use (the check's own
#   effect is -7.15, p 0.05, for case 1 and +0.19, p 0.95, for case 2). Mistakes each case separates:
#   * the direction not normalised before projecting it out: the stream explodes (NaN or a huge effect), case 1.
#   * the projection added instead of removed (x + (x.r)r at every hook compounds): random directions do
#     as much, so p is large and the verdict "not used", case 1.
#   * removed at the last position only (the lesson removes it at every position): a small fraction of the
#     effect (-0.40 against -4.58 on 24 people when this exercise was written), case 1.
#   * a p-value from 2-3 random draws (p >= 0.25), or ignoring `n_random` (a p smaller than n_random draws
#     allow, or larger than the evidence gives), or p = k/n without the +1 (p = 0 is impossible), case 1.
#   * random directions not normalised to unit length (randn vectors of norm about 24 projected out): their
#     effects explode (NaN), so no random draw counts against the real one and p is as small as it can be;
#     case 2's p (0.95 in the check's own draws) then comes out 0.1.
#   * the wrong baseline: the ablated margin instead of its change, or random effects compared with 0
#     (or with the clean margin) instead of with the real direction's effect, case 1.

ALPHA = 0.05  # the verdict's threshold: "used" if the real effect is negative and p <= ALPHA
BEHAVIOUR = "{} was a famous"
DIRECTION_HOOK = "blocks.6.hook_resid_post"  # the lesson's chosen depth (the stream entering block 7)
# People in none of the lesson's prompts, for the check only (the lesson's 80 people are all in l03_people).
_CHECK_PEOPLE = {
    "used": (["Alessandro Volta", "Billie Holiday", "Lise Meitner", "Nina Simone", "Carl Linnaeus", "Duke Ellington"],
             [1, -1, 1, -1, 1, -1]),
    "decodable": (["Igor Stravinsky", "Blaise Pascal", "Buddy Holly", "Christiaan Huygens", "Leonard Cohen", "James Watt"],
                  [-1, 1, -1, 1, -1, 1]),
}
_CHECK_DRAWS, _CHECK_SEED = 19, 1000  # the check's own random directions (not the learner's seeds)
P_TOLERANCE = 0.45  # |learner's p - the check's p|: about three standard deviations of a p from 9 draws


def profession_margin(model, prompts: list[str], signs, fwd_hooks=()) -> float:
    """Mean over prompts of sign * (log P(' scientist') - log P(' musician')) at the last position.

    signs [n]: +1 for a scientist, -1 for a musician, so a positive margin means "on the correct side".
    fwd_hooks: (hook_name, fn) pairs active during the forward pass (e.g. steering.ablation_hooks(...)).
    """
    ids = single_token_id(model, " scientist"), single_token_id(model, " musician")
    logprobs = last_logits(model, list(prompts), fwd_hooks, prepend_bos=True).log_softmax(-1)
    signs = torch.as_tensor(signs, dtype=torch.float32)
    return float((signs * (logprobs[:, ids[0]] - logprobs[:, ids[1]])).mean())


def reference_direction_is_used(model, direction: torch.Tensor, prompts: list[str], signs, n_random: int = 19,
                                seed: int = 0) -> tuple[bool, float, float]:
    """Remove `direction` [d_model] at every layer and position; compare the margin's change with n_random
    random unit directions removed the same way. Returns (used, effect, p_value)."""
    clean = profession_margin(model, prompts, signs)
    effect = profession_margin(model, prompts, signs, steering.ablation_hooks(model, direction)) - clean
    randoms = steering.random_directions(model.cfg.d_model, n_random, seed=seed)
    random_effects = [profession_margin(model, prompts, signs, steering.ablation_hooks(model, r)) - clean
                      for r in randoms]
    p_value = (1 + sum(e <= effect for e in random_effects)) / (1 + n_random)
    return bool(effect < 0 and p_value <= ALPHA), effect, p_value


def ablation_effects(model, directions: torch.Tensor, prompts: list[str], signs, chunk: int = 4) -> torch.Tensor:
    """The margin's change when each of directions [k, d_model] is removed at every layer and position: [k].

    The same numbers as profession_margin with steering.ablation_hooks, one direction per copy of the prompts
    in a batch (a few directions per forward pass), so the check's own evidence is cheap.
    """
    prompts, n = list(prompts), len(prompts)
    clean = profession_margin(model, prompts, signs)
    units = directions.float() / directions.float().norm(dim=-1, keepdim=True)
    effects = []
    for start in range(0, len(units), chunk):
        block = units[start:start + chunk]
        rows = block.repeat_interleave(n, dim=0)  # [m * n, d]: row i removes direction i // n

        def remove(x, hook, rows=rows):
            r = rows.to(x.dtype)[:, None, :]
            return x - (x * r).sum(-1, keepdim=True) * r

        hooks = [(name, remove) for name in steering.ablation_hook_names(model)]
        ids = single_token_id(model, " scientist"), single_token_id(model, " musician")
        logprobs = last_logits(model, prompts * len(block), hooks, batch_size=len(rows), prepend_bos=True).log_softmax(-1)
        diff = (logprobs[:, ids[0]] - logprobs[:, ids[1]]).reshape(len(block), n)
        effects.append((torch.as_tensor(signs, dtype=torch.float32) * diff).mean(-1) - clean)
    return torch.cat(effects)


_DIRECTIONS: dict = {}


def check_directions(model) -> dict[str, torch.Tensor]:
    """The check's two directions at the lesson's depth, from the lesson's 80 people in one template:
    'used': the scientist-minus-musician difference of means, NOT normalised; 'decodable': the direction of
    a second probe fitted after the first probe's direction is projected out (not used)."""
    key = id(model)
    if key not in _DIRECTIONS:
        people = load_prompt_set("l03_people")
        rows = [i for i, p in enumerate(people.prompts) if p.startswith("The documentary was about")]
        acts = gather_activations(model, [people.prompts[i] for i in rows], DIRECTION_HOOK, progress=False)
        labels = people.labels[rows]
        raw = acts[labels == 1].mean(0) - acts[labels == 0].mean(0)
        second = probe_direction(fit_probe(remove_direction(acts, probe_direction(fit_probe(acts, labels))), labels))
        _DIRECTIONS[key] = {"used": raw, "decodable": 3.0 * second}
    return _DIRECTIONS[key]


class _Evidence:
    """The 'expected' value of a direction_is_used case: the check's own effect and p-value, computed when
    first needed (with the check's own random directions) and then judged against the learner's answer."""

    _memo: dict = {}

    def __init__(self, model, direction, prompts, signs, n_random):
        self.model, self.direction, self.prompts, self.signs, self.n_random = model, direction, prompts, signs, n_random

    def evidence(self) -> tuple[float, float]:
        key = (id(self.model), tuple(self.prompts), float(self.direction.norm()))
        if key not in self._memo:
            d = self.model.cfg.d_model
            draws = torch.cat([self.direction[None].float(), steering.random_directions(d, _CHECK_DRAWS, _CHECK_SEED)])
            effects = ablation_effects(self.model, draws, self.prompts, self.signs)
            effect = float(effects[0])
            self._memo[key] = (effect, (1 + int((effects[1:] <= effect).sum())) / (1 + _CHECK_DRAWS))
        return self._memo[key]

    def __call__(self, got) -> str | None:
        if not isinstance(got, (tuple, list)) or len(got) != 3:
            return f"expected a tuple (used, effect, p_value), got {_short_repr(got)}"
        used, effect, p_value = got
        if isinstance(used, torch.Tensor) and used.numel() == 1 and used.dtype == torch.bool:
            used = bool(used)
        if not isinstance(used, (bool, np.bool_)):
            return f"`used` should be True or False, got {_short_repr(used)}"
        effect, p_value = _as_real(effect), _as_real(p_value)
        if effect is None or p_value is None:
            return "effect and p_value should each be one real number"
        if not (math.isfinite(effect) and math.isfinite(p_value)):
            return (f"effect {effect} and p-value {p_value} must be finite: did the residual stream explode? Removing "
                    "x - (x . r) r only removes the component along r if r has length 1: normalise the direction first")
        smallest = 1 / (1 + self.n_random)
        if p_value < smallest - 1e-9 or p_value > 1 + 1e-9:
            return (f"a p-value of {p_value:.4f} is impossible with n_random={self.n_random} random directions: it lies "
                    f"between 1/(n_random + 1) = {smallest:.4f} (no random direction does as much) and 1. Count the real "
                    "direction among the draws: p = (1 + #{random effects <= effect}) / (1 + n_random)")
        ref_effect, ref_p = self.evidence()
        if abs(effect - ref_effect) > 0.15 + 0.1 * abs(ref_effect):
            return (f"the check measures an effect of {ref_effect:.2f} (ablated margin minus clean margin, direction "
                    f"removed at every layer and every position), you report {effect:.2f}")
        verdict = ref_effect < 0 and ref_p <= ALPHA
        if bool(used) != verdict:
            return (f"with its own {_CHECK_DRAWS} random directions the check finds p = {ref_p:.3f} for an effect of "
                    f"{ref_effect:.2f}, so the direction is {'' if verdict else 'not '}used; you said used={bool(used)} "
                    f"with p = {p_value:.3f}")
        if verdict and p_value > smallest + 1e-9:
            return (f"no random direction in the check's draws comes near this effect (p = {ref_p:.3f}), but your "
                    f"p-value is {p_value:.3f}: with n_random={self.n_random} draws it should be {smallest:.3f}. Are your "
                    "random directions unit vectors removed exactly as the real one, and is each compared with the "
                    "real direction's effect (not with 0 or the clean margin)?")
        if abs(p_value - ref_p) > P_TOLERANCE:
            return (f"your p-value {p_value:.3f} is far from the {ref_p:.3f} the check measures with its own "
                    f"{_CHECK_DRAWS} random directions: random directions as strong as this one should be about as "
                    "common in your draws. Are your random directions unit vectors, removed exactly as the real one?")
        if bool(used) != (effect < 0 and p_value <= ALPHA):
            return f"your verdict used={bool(used)} does not follow from your own numbers (effect {effect:.2f}, p {p_value:.3f})"
        return None


def _short_repr(value) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


_USED_HINT = ("remove the UNIT direction from the residual stream at every layer and every position "
              "(steering.ablation_hooks), effect = ablated margin minus clean margin (l03.profession_margin, with "
              "the signs); do the same for n_random random unit directions drawn with `seed`; p = (1 + #{random "
              "effects <= effect}) / (1 + n_random); used = effect < 0 and p <= 0.05")


def _used_cases(model) -> list[Case]:
    directions = check_directions(model)
    cases = []
    for name, n_random, seed in (("used", 19, 0), ("decodable", 9, 3)):
        people, signs = _CHECK_PEOPLE[name]
        prompts = [BEHAVIOUR.format(p) for p in people]
        what = ("the lesson's difference-of-means direction, unnormalised" if name == "used" else
                "a second probe's direction (fitted after the first probe's direction is projected out)")
        cases.append(Case(f"{what}, {len(people)} people not in the lesson, n_random={n_random}, seed={seed}",
                          (model, directions[name], prompts, signs), _Evidence(model, directions[name], prompts, signs, n_random),
                          hint=_USED_HINT, kwargs={"n_random": n_random, "seed": seed}))
    return cases


def check_direction_is_used(fn, model) -> CheckResult:
    """Check direction_is_used(model, direction, prompts, signs, n_random, seed) -> (used, effect, p_value) by
    recomputing the evidence with the check's own random directions on people the lesson never used."""
    return check("direction_is_used", fn, lambda: _used_cases(model), compare_fn=lambda got, judge: judge(got),
                 time_limit=180)
