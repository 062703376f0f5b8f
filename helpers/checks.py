"""Exercise checks that never raise: passed, failed (which case, expected vs got, a hint), or not implemented.

A lesson's exercise module defines a reference implementation and a list of `Case`s for each
exercise; `check` runs the learner's function on each case and reports the first one that fails.
Whatever the learner's function does (raise, hang, call sys.exit, return a list, return the wrong
shape or dtype), the check returns a `CheckResult` and the notebook carries on. It also reports side
effects instead of hiding them: a function that edits its input tensors in place, or leaves hooks,
train mode, edited weights or gradient tracking switched off on a model or on torch, fails with a
sentence saying what it changed, and the check puts the model and torch back as it found them.
`use_or_reference` then picks the learner's function for later cells if it passed, and the
reference otherwise, saying so.
"""
from __future__ import annotations

import copy
import inspect
import math
import numbers
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from helpers.guard import StateGuard, find_models

PASSED, FAILED, NOT_IMPLEMENTED = "passed", "failed", "not implemented yet"
_SYMBOL = {PASSED: "✅", FAILED: "❌", NOT_IMPLEMENTED: "⏳"}
TIME_LIMIT_ENV = "MICROSCOPE_CHECK_TIME_LIMIT"
DEFAULT_TIME_LIMIT = 60.0  # seconds per case; a learner's function that never returns is stopped after this
_HELPERS_DIR = str(Path(__file__).resolve().parent)


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


class _TimeLimit(BaseException):
    """Raised inside a learner's function that ran past the time limit (BaseException: `except Exception` in
    the learner's code cannot swallow it)."""


def _clone(value: Any) -> Any:
    """A copy of a case's input, so a learner's in-place edit cannot change the next case."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(getattr(value, "cache_dict", None), dict):  # an ActivationCache: copy its tensors, share the model
        clone = copy.copy(value)
        clone.cache_dict = {name: t.detach().clone() for name, t in value.cache_dict.items()}
        return clone
    if isinstance(value, (list, tuple, dict)) and not find_models([value]):
        return copy.deepcopy(value)
    return value  # models and other big objects are shared, not copied


def _tensors(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(path, tensor or array) for every tensor or array in `value`, looking into lists, tuples and dicts."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        yield path, value
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _tensors(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _tensors(item, f"{path}[{key!r}]")
    elif isinstance(getattr(value, "cache_dict", None), dict):
        yield from _tensors(value.cache_dict, path)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):
        return a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))


def _argument_names(fn: Callable, args: tuple, kwargs: dict) -> list[str]:
    """The parameter name each positional argument binds to in `fn` (falls back to 'argument N')."""
    try:
        params = [p.name for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    return [params[i] if i < len(params) else f"argument {i + 1}" for i in range(len(args))]


def _modified_inputs(fn: Callable, originals: tuple, kwarg_originals: dict, args: tuple, kwargs: dict) -> list[str]:
    """Names of the inputs whose tensors differ after the call from the copies taken before it."""
    changed = []
    names = _argument_names(fn, args, kwargs)
    pairs = [(names[i], originals[i], args[i]) for i in range(len(args))]
    pairs += [(key, kwarg_originals[key], kwargs[key]) for key in kwargs]
    for name, before, after in pairs:
        for (path, old), (_, new) in zip(_tensors(before), _tensors(after)):
            if not _same(old, new):
                changed.append(f"`{name}{path}`")
                break
    return changed


@contextmanager
def _time_limit(seconds: float | None):
    """Raise _TimeLimit in the calling code after `seconds` (main thread on POSIX only; elsewhere no limit)."""
    usable = (seconds and seconds > 0 and hasattr(signal, "SIGALRM")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def _stop(signum, frame):
        raise _TimeLimit()

    previous = signal.signal(signal.SIGALRM, _stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _is_library(filename: str) -> bool:
    path = filename.replace("\\", "/")
    return ("site-packages/" in path or "dist-packages/" in path or path.startswith(_HELPERS_DIR.replace("\\", "/"))
            or path.startswith(sys.prefix.replace("\\", "/") + "/lib") or path.startswith(sys.base_prefix.replace("\\", "/") + "/lib")
            or path.startswith("<frozen"))


def _where(error: BaseException) -> str:
    """' (your line N: `code`)' for the innermost frame in the learner's own code, not in a library."""
    frames = traceback.extract_tb(error.__traceback__)
    checks_file = str(Path(__file__).resolve())
    own = [f for f in frames if f.filename != checks_file and not _is_library(f.filename)]
    frame = own[-1] if own else (frames[-1] if frames else None)
    if frame is None:
        return ""
    code = (frame.line or "").strip()
    inside = "" if own and frame is frames[-1] else (
        f"; the error came from inside {Path(frames[-1].filename).parent.name}/{Path(frames[-1].filename).name}"
        if frames else "")
    return f" (your line {frame.lineno}: `{code}`{inside})" if code else f" (line {frame.lineno}{inside})"


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    if isinstance(value, np.ndarray):
        return f"a numpy array of shape {value.shape} and dtype {value.dtype}"
    return _short(f"{type(value).__name__} {value!r}", 200)


def _preview(tensor: torch.Tensor, limit: int = 6) -> str:
    flat = tensor.detach().flatten()[:limit].tolist()
    return "[" + ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in flat) + (", ...]" if tensor.numel() > limit else "]")


def _as_real(value: Any) -> float | None:
    """`value` as a float if it is one real number (Python, numpy or 1-element tensor/array), else None."""
    if isinstance(value, bool) or isinstance(value, np.bool_):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dtype != torch.bool and not value.is_complex():
        return float(value.detach().reshape(()))
    if isinstance(value, np.ndarray) and value.size == 1 and np.issubdtype(value.dtype, np.number) and not np.iscomplexobj(value):
        return float(value.reshape(()))
    return None


def compare(got: Any, expected: Any, atol: float = 1e-4, rtol: float = 1e-3) -> str | None:
    """None if `got` matches `expected`; otherwise a sentence saying how it differs."""
    if isinstance(expected, torch.Tensor):
        if isinstance(got, np.ndarray):
            got = torch.from_numpy(got)
        if not isinstance(got, torch.Tensor):
            return f"expected {_describe(expected)}, got {_describe(got)}"
        if tuple(got.shape) != tuple(expected.shape):
            return f"expected shape {tuple(expected.shape)}, got shape {tuple(got.shape)}"
        if expected.is_floating_point() and not got.is_floating_point():
            return (f"expected floating-point values (dtype {expected.dtype}), got dtype {got.dtype}: did you return "
                    "indices or token ids (e.g. from argmax or topk) where values such as probabilities or scores "
                    "were expected?")
        if not expected.is_floating_point() and got.is_floating_point():
            kind = "True/False values" if expected.dtype == torch.bool else "integer indices"
            return (f"expected {kind} (dtype {expected.dtype}), got floating-point dtype {got.dtype}: did you return "
                    "the values themselves (e.g. topk's .values) instead of their positions (.indices)?")
        if not expected.is_floating_point():
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
        value = _as_real(got)
        if value is None:
            return f"expected a number, got {_describe(got)}"
        if not math.isfinite(value) or abs(value - expected) > atol + rtol * abs(expected):
            return f"expected {expected:.4g}, got {value:.4g}"
        return None
    if isinstance(expected, (list, tuple)):
        if isinstance(got, (torch.Tensor, np.ndarray)) and got.ndim == 1:
            got = got.tolist()
        if not isinstance(got, (list, tuple)):
            return f"expected a {type(expected).__name__} of {len(expected)} items, got {_describe(got)}"
        if len(got) != len(expected):
            return f"expected {len(expected)} items, got {len(got)}"
        for i, (g, e) in enumerate(zip(got, expected)):
            problem = compare(g, e, atol, rtol)
            if problem:
                return f"item {i}: {problem}"
        return None
    if isinstance(expected, int) and not isinstance(expected, bool) and isinstance(got, numbers.Integral) and not isinstance(got, bool):
        got = int(got)
    if got != expected:
        return f"expected {_describe(expected)}, got {_describe(got)}"
    return None


def _time_limit_seconds(time_limit: float | None) -> float | None:
    if time_limit is not None:
        return time_limit
    try:
        return float(os.environ.get(TIME_LIMIT_ENV, DEFAULT_TIME_LIMIT))
    except ValueError:
        return DEFAULT_TIME_LIMIT


def check(exercise: str, fn: Callable, cases: Sequence[Case] | Callable[[], Sequence[Case]], atol: float = 1e-4,
          rtol: float = 1e-3, compare_fn: Callable[[Any, Any], str | None] | None = None,
          after_each: Callable[[], None] | None = None, time_limit: float | None = None,
          allow_inplace: Sequence[str] = (), models: Sequence[torch.nn.Module] = ()) -> CheckResult:
    """Run `fn` on every case; report the first failure. Never raises.

    `cases` may be a list or a zero-argument function returning one (built inside this guard, so a
    model left broken by an earlier cell gives a readable result, not a traceback). Any nn.Module in
    a case's arguments (and any in `models`) is watched: hooks, train mode and weights the function
    changes are reported and undone, and so are torch's grad mode and default dtype. Inputs the
    function edits in place are reported, except the parameters named in `allow_inplace` (a hook may
    edit its activation). Each case runs under `time_limit` seconds (default 60, or
    $MICROSCOPE_CHECK_TIME_LIMIT). `after_each` runs after every case (extra clean-up of the lesson's own).
    """
    compare_fn = compare_fn or (lambda got, expected: compare(got, expected, atol, rtol))
    if not callable(fn):
        return CheckResult(exercise, FAILED, f"expected a function, got {_describe(fn)}")
    limit = _time_limit_seconds(time_limit)
    try:
        case_list = list(cases() if callable(cases) else cases)
    except BaseException as error:  # noqa: BLE001 - a check must never raise
        if isinstance(error, KeyboardInterrupt):
            raise
        return CheckResult(exercise, FAILED, f"the check could not build its test cases ({type(error).__name__}: "
                           f"{_short(error)}). This usually means an earlier cell left the model changed: remove "
                           "hooks with model.reset_hooks(), or reload the model, then re-run this cell.")
    for case in case_list:
        originals = case.args
        kwarg_originals = case.kwargs
        args = tuple(_clone(a) for a in case.args)
        kwargs = {k: _clone(v) for k, v in case.kwargs.items()}
        guard = StateGuard.take(find_models([*case.args, *case.kwargs.values()]) + list(models))
        got, raised = None, None
        try:
            with _time_limit(limit):
                got = fn(*args, **kwargs)
        except NotImplementedError:
            guard.restore()
            return CheckResult(exercise, NOT_IMPLEMENTED, "Replace the `raise NotImplementedError` with your code, then re-run this cell.")
        except _TimeLimit:
            raised = (f"on case '{case.name}' your function did not return within {limit:g} s (an endless loop, or far "
                      "too much work for a small case?); it was stopped.")
        except KeyboardInterrupt:
            guard.restore()
            raise
        except BaseException as error:  # noqa: BLE001 - a learner's bug (even sys.exit) must never crash the notebook
            kind = "called sys.exit" if isinstance(error, SystemExit) else f"raised {type(error).__name__}: {_short(error)}"
            raised = f"on case '{case.name}' your function {kind}{_where(error)}."
        finally:
            changes = guard.restore()
            if after_each is not None:
                try:
                    after_each()
                except Exception:  # noqa: BLE001
                    pass
        hint = f" Hint: {case.hint}" if case.hint else ""
        if raised:
            extra = f" It also changed state: {'; '.join(changes)}." if changes else ""
            return CheckResult(exercise, FAILED, f"{raised}{extra}{hint}")
        if changes:
            return CheckResult(exercise, FAILED, f"on case '{case.name}' your function has a side effect: "
                               f"{'; '.join(changes)}.")
        modified = [name for name in _modified_inputs(fn, originals, kwarg_originals, args, kwargs)
                    if name.strip("`").split("[")[0] not in allow_inplace]
        if modified:
            return CheckResult(exercise, FAILED, f"on case '{case.name}' your function modified its input "
                               f"{', '.join(modified)} in place (e.g. `x /= ...`, `x -= ...`, `x[...] = 0`), which "
                               "changes the caller's tensor too. Work on a copy: `x = x / ...` or `x = x.clone()` first.")
        try:
            problem = compare_fn(got, case.expected)
        except Exception as error:  # noqa: BLE001 - garbage that even comparison chokes on
            problem = f"could not compare the result ({type(error).__name__}: {_short(error)}); got {_describe(got)}"
        if problem:
            return CheckResult(exercise, FAILED, f"on case '{case.name}': {problem}.{hint}")
    return CheckResult(exercise, PASSED, f"all {len(case_list)} cases match.")


def use_or_reference(result: CheckResult, learner_fn: Callable, reference: Callable) -> Callable:
    """The learner's function if its check passed, else the reference (with a note saying so)."""
    if result.passed:
        return learner_fn
    print(f"Using the reference implementation of {result.exercise} below (yours: {result.status}).")
    return reference
