"""Lesson 06 exercises: the early-answering AOC, a hint-following rate normalised by option swap, and the patch
that decides whether an answer reads the hint or the steps.

Cases are built so each plausible mistake gives another number: curves on uneven fraction grids that do not
start at 0 (forgetting to scale the axis shows; a left Riemann sum shows), answer sets where the hint
sometimes equals the unhinted answer (counting those shows) and where the two option orders disagree
(reading one order shows); patches on both toy reasoners at the hint and at the last step, at both layers
(the wrong position, the wrong hook or the wrong comparison show).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from helpers.checks import Case, CheckResult, check
from helpers.models import load
from helpers.toy import TOY_MODELS

__all__ = ["reference_area_over_curve", "reference_swap_normalised_following", "reference_patch_flip_rate",
           "check_area_over_curve", "check_swap_normalised_following", "check_patch_flip_rate", "patch_inputs"]


def reference_area_over_curve(fractions: Sequence[float], same: Sequence[float]) -> float:
    """1 - (trapezoid area under `same` against `fractions`) / (last fraction - first fraction)."""
    area = sum((b - a) * (sa + sb) / 2 for a, b, sa, sb in zip(fractions, fractions[1:], same, same[1:]))
    return float(1.0 - area / (fractions[-1] - fractions[0]))


def _rate(answers: torch.Tensor, hints: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    informative = hints != baseline
    return (answers[informative] == hints[informative]).float().mean()


def reference_swap_normalised_following(answers: torch.Tensor, hints: torch.Tensor, baseline: torch.Tensor,
                                        swapped_answers: torch.Tensor, swapped_hints: torch.Tensor,
                                        swapped_baseline: torch.Tensor) -> float:
    """Mean over the two option orders of: among items whose hint differs from the unhinted answer, the share
    answering the hint. All [n] option indices, each in its own prompt's order."""
    return float((_rate(answers, hints, baseline) + _rate(swapped_answers, swapped_hints, swapped_baseline)) / 2)


def reference_patch_flip_rate(model, base: torch.Tensor, source: torch.Tensor, position: int, layer: int) -> float:
    """Share of `base` rows [n, pos] whose answer (argmax over symbols 0..9 at the last position) changes when
    blocks.{layer}.hook_resid_pre at `position` is copied from `source` [n, pos]."""
    name = f"blocks.{layer}.hook_resid_pre"
    with torch.no_grad():
        _, cache = model.run_with_cache(source, names_filter=[name])
        clean = model(base)[:, -1, :10].argmax(-1)

        def patch(resid, hook):
            resid = resid.clone()
            resid[:, position] = cache[name][:, position]
            return resid

        patched = model.run_with_hooks(base, fwd_hooks=[(name, patch)])[:, -1, :10].argmax(-1)
    return (patched != clean).float().mean().item()


def _curve_cases() -> list[Case]:
    cases = []
    for name, fractions, same in [
        ("three steps, a chain that matters", [0.0, 1 / 3, 2 / 3, 1.0], [0.1, 0.1, 0.45, 1.0]),
        ("uneven grid starting at 0.25", [0.25, 0.5, 1.0], [0.2, 0.6, 1.0]),
        ("a chain that never matters", [0.0, 0.5, 1.0], [1.0, 1.0, 1.0]),
    ]:
        cases.append(Case(name, (fractions, same), reference_area_over_curve(fractions, same),
                          hint="Area OVER the curve: 1 minus the trapezoid area under it, divided by the width of "
                               "the fraction axis (it need not start at 0)."))
    return cases


def check_area_over_curve(fn: Callable) -> CheckResult:
    """Check area_over_curve(fractions, same) -> float."""
    return check("area_over_curve", fn, _curve_cases, atol=1e-6)


def _following_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(6)
    cases = []
    for name, n in [("12 two-option items", 12), ("40 two-option items", 40)]:
        baseline = torch.randint(0, 2, (n,), generator=gen)
        hints = torch.randint(0, 2, (n,), generator=gen)  # some hints agree with the unhinted answer
        answers = torch.where(torch.rand(n, generator=gen) < 0.6, hints, baseline)
        s_baseline = torch.randint(0, 2, (n,), generator=gen)
        s_hints = torch.randint(0, 2, (n,), generator=gen)
        s_answers = torch.where(torch.rand(n, generator=gen) < 0.2, s_hints, 1 - s_hints)
        args = (answers, hints, baseline, s_answers, s_hints, s_baseline)
        cases.append(Case(name, args, reference_swap_normalised_following(*args),
                          hint="Use both option orders (average their rates) and count only items whose hint "
                               "differs from the unhinted answer."))
    return cases


def check_swap_normalised_following(fn: Callable) -> CheckResult:
    """Check swap_normalised_following(answers, hints, baseline, swapped_answers, swapped_hints, swapped_baseline)."""
    return check("swap_normalised_following", fn, _following_cases, atol=1e-6)


def patch_inputs(name: str, what: str, n: int = 64, seed: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    """(base, source) [n, pos] full chains of toy `name` read at ANS; source differs in the hint or the last step."""
    from helpers.toy import reasoner

    task = TOY_MODELS[name].task()
    examples = task.make_examples(torch.Generator().manual_seed(seed), n)
    layout = examples.layout
    base = examples.tokens[:, :layout.ans() + 1].clone()
    source = base.clone()
    shift = torch.randint(1, reasoner.N_SYMBOLS, (n,), generator=torch.Generator().manual_seed(seed + 1))
    position = layout.hint if what == "hint" else layout.steps[-1]
    source[:, position] = (base[:, position] + shift) % reasoner.N_SYMBOLS
    return base, source


def _patch_cases(models: dict) -> list[Case]:
    from helpers.toy.reasoner import Layout

    layout = Layout(3)
    cases = []
    for name, what, layer in [("reasoner-unfaithful", "hint", 0), ("reasoner-faithful", "step", 1),
                              ("reasoner-faithful", "hint", 0), ("reasoner-unfaithful", "step", 1)]:
        base, source = patch_inputs(name, what)
        position = layout.hint if what == "hint" else layout.steps[-1]
        args = (models[name], base, source, position, layer)
        cases.append(Case(f"{name}, 64 chains, patch the {what} (position {position}) at layer {layer}", args,
                          reference_patch_flip_rate(*args),
                          hint="Copy blocks.{layer}.hook_resid_pre at that one position from the source run, and "
                               "count answers that differ from the unpatched base run's answers."))
    return cases


def check_patch_flip_rate(fn: Callable, models: dict | None = None) -> CheckResult:
    """Check patch_flip_rate(model, base, source, position, layer) -> float on both hard reasoners."""
    def cases():
        loaded = models or {name: load(name) for name in ("reasoner-faithful", "reasoner-unfaithful")}
        return _patch_cases(loaded)
    return check("patch_flip_rate", fn, cases, atol=1e-6)
