"""Exercise checks that never raise: passed, failed (which case, expected vs got, a hint), or not implemented.

A lesson's exercise module defines a reference implementation and a list of `Case`s for each
exercise; `check` runs the learner's function on each case and reports the first one that fails.
Whatever the learner's function does (raise, return a list, return the wrong shape, mutate its
input), the check returns a `CheckResult` and the notebook carries on. `use_or_reference` then picks
the learner's function for later cells if it passed, and the reference otherwise, saying so.
"""
from __future__ import annotations

import copy
import math
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

PASSED, FAILED, NOT_IMPLEMENTED = "passed", "failed", "not implemented yet"
_SYMBOL = {PASSED: "✅", FAILED: "❌", NOT_IMPLEMENTED: "⏳"}


@dataclass
class Case:
    """One input to an exercise, the expected output (computed by the reference), and a hint."""

    name: str
    args: tuple
    expected: Any
    hint: str = ""
    kwargs: dict = field(default_factory=dict)


@dataclass
class CheckResult:
    """The outcome of checking one exercise. Displays itself as one readable line."""

    exercise: str
    status: str
    message: str = ""

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    def __str__(self) -> str:
        text = f"{_SYMBOL[self.status]} {self.exercise}: {self.status}"
        return f"{text}. {self.message}" if self.message else text

    __repr__ = __str__


def _clone(value: Any) -> Any:
    """A copy of a case's input, so a learner's in-place edit cannot change the next case."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (list, tuple, dict)):
        return copy.deepcopy(value)
    return value  # models and other big objects are shared, not copied


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"{type(value).__name__} {value!r}"[:200]


def _preview(tensor: torch.Tensor, limit: int = 6) -> str:
    flat = tensor.detach().flatten()[:limit].tolist()
    return "[" + ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in flat) + (", ...]" if tensor.numel() > limit else "]")


def compare(got: Any, expected: Any, atol: float = 1e-4, rtol: float = 1e-3) -> str | None:
    """None if `got` matches `expected`; otherwise a sentence saying how it differs."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return f"expected {_describe(expected)}, got {_describe(got)}"
        if tuple(got.shape) != tuple(expected.shape):
            return f"expected shape {tuple(expected.shape)}, got shape {tuple(got.shape)}"
        if expected.dtype in (torch.bool, torch.int64, torch.int32) or got.dtype in (torch.bool, torch.int64, torch.int32):
            if not torch.equal(got.to(expected.dtype), expected):
                bad = (got.to(expected.dtype) != expected).nonzero()[0].tolist()
                return f"values differ, first at index {bad}: expected {expected[tuple(bad)].item()}, got {got[tuple(bad)].item()}"
            return None
        got_f = got.detach().float()
        if not torch.isfinite(got_f).all():
            return "the result contains NaN or infinite values"
        diff = (got_f - expected.float()).abs()
        tolerance = atol + rtol * expected.float().abs()
        if (diff > tolerance).any():
            worst = torch.tensor(int((diff - tolerance).flatten().argmax()))
            index = tuple(int(i) for i in torch.unravel_index(worst, diff.shape)) if diff.dim() else ()
            return (f"values differ (max abs difference {diff.max().item():.4g}); at index {list(index)} expected "
                    f"{expected[index].item():.4g}, got {got_f[index].item():.4g}. Expected starts "
                    f"{_preview(expected)}, got {_preview(got_f)}")
        return None
    if isinstance(expected, float):
        if not isinstance(got, (int, float)) and not (isinstance(got, torch.Tensor) and got.numel() == 1):
            return f"expected a number, got {_describe(got)}"
        value = float(got)
        if not math.isfinite(value) or abs(value - expected) > atol + rtol * abs(expected):
            return f"expected {expected:.4g}, got {value:.4g}"
        return None
    if isinstance(expected, (list, tuple)):
        if not isinstance(got, (list, tuple)):
            return f"expected a {type(expected).__name__} of {len(expected)} items, got {_describe(got)}"
        if len(got) != len(expected):
            return f"expected {len(expected)} items, got {len(got)}"
        for i, (g, e) in enumerate(zip(got, expected)):
            problem = compare(g, e, atol, rtol)
            if problem:
                return f"item {i}: {problem}"
        return None
    if got != expected:
        return f"expected {_describe(expected)}, got {_describe(got)}"
    return None


def check(exercise: str, fn: Callable, cases: Sequence[Case], atol: float = 1e-4, rtol: float = 1e-3,
          compare_fn: Callable[[Any, Any], str | None] | None = None,
          after_each: Callable[[], None] | None = None) -> CheckResult:
    """Run `fn` on every case; report the first failure. Never raises.

    `after_each` restores shared state (e.g. removes hooks a learner's function left on a model).
    """
    compare_fn = compare_fn or (lambda got, expected: compare(got, expected, atol, rtol))
    if not callable(fn):
        return CheckResult(exercise, FAILED, f"expected a function, got {_describe(fn)}")
    for case in cases:
        args = tuple(_clone(a) for a in case.args)
        kwargs = {k: _clone(v) for k, v in case.kwargs.items()}
        try:
            got = fn(*args, **kwargs)
        except NotImplementedError:
            return CheckResult(exercise, NOT_IMPLEMENTED, "Replace the `raise NotImplementedError` with your code, then re-run this cell.")
        except Exception as error:  # a learner's bug must never crash the notebook
            where = traceback.extract_tb(error.__traceback__)[-1]
            return CheckResult(exercise, FAILED, f"on case '{case.name}' your function raised "
                               f"{type(error).__name__}: {error} (line {where.lineno}: {where.line!r}).")
        finally:
            if after_each is not None:
                after_each()
        try:
            problem = compare_fn(got, case.expected)
        except Exception as error:  # garbage that even comparison chokes on
            problem = f"could not compare the result ({type(error).__name__}: {error}); got {_describe(got)}"
        if problem:
            hint = f" Hint: {case.hint}" if case.hint else ""
            return CheckResult(exercise, FAILED, f"on case '{case.name}': {problem}.{hint}")
    return CheckResult(exercise, PASSED, f"all {len(cases)} cases match.")


def use_or_reference(result: CheckResult, learner_fn: Callable, reference: Callable) -> Callable:
    """The learner's function if its check passed, else the reference (with a note saying so)."""
    if result.passed:
        return learner_fn
    print(f"Using the reference implementation of {result.exercise} below (yours: {result.status}).")
    return reference
