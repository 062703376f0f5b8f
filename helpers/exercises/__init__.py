"""One module per lesson (l00, l01, ...): reference implementations, check cases and check functions.

A check function takes the learner's function and returns a `helpers.checks.CheckResult`; it never
raises. Tests in tests/test_exercises_lNN.py feed each check the reference and at least two
plausible wrong implementations.
"""

import weakref

import torch


def pair_or_problem(got, sizes: tuple[int, int], names: tuple[str, str]) -> tuple[int, int] | str:
    """A learner's (layer, unit) answer as two ints in range, or the feedback that says why it is not one.

    sizes: how many of each there are (e.g. (n_layers, n_heads)); names: what they are (e.g. ("layer", "head")).
    """
    try:
        first, second = (int(x) for x in got)
    except (TypeError, ValueError):
        return f"expected a pair ({names[0]}, {names[1]}) of integers, got {got!r}"
    if not (0 <= first < sizes[0] and 0 <= second < sizes[1]):
        return (f"({first}, {second}) is not a {names[1]}: {names[0]}s 0..{sizes[0] - 1}, "
                f"{names[1]}s 0..{sizes[1] - 1}")
    return first, second


def random_heads(cfg, n: int, generator: torch.Generator) -> list[tuple[int, int]]:
    """n distinct (layer, head) pairs drawn with `generator`: the random controls a named head must beat."""
    draws = torch.randperm(cfg.n_layers * cfg.n_heads, generator=generator)[:n].tolist()
    return [divmod(i, cfg.n_heads) for i in draws]


_EVIDENCE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cached_evidence(model, key, compute):
    """compute(), once per (model, key) for as long as the model lives: a check's own held-out evidence (prompts,
    scores, effects of its comparison heads), shared by every answer checked against the same model."""
    per_model = _EVIDENCE.setdefault(model, {})
    if key not in per_model:
        per_model[key] = compute()
    return per_model[key]
