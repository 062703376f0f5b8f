"""One validation layer for every public helper: types, shapes, dtypes and ranges, checked at the door.

Each function takes the value a learner passed and the argument's name, and either returns it in
the form the helper needs or raises the course's own `ArgumentError` (a `MicroscopeError`) naming
the argument, what was expected, what came instead, and the fix. Harmless forms are accepted and
converted rather than refused: numpy or 0-d tensor integers as indices, one string where a list of
strings is expected, one ``(layer, head)`` pair where a list of pairs is expected, plain lists of
token ids, half-precision activations.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from helpers.errors import MicroscopeError, ShapeError


class ArgumentError(MicroscopeError, TypeError):
    """An argument of the wrong type, value or range."""


@contextmanager
def reraise_as(error: type[MicroscopeError]):
    """Turn an ArgumentError raised inside into `error` (a module's own error class), same message."""
    try:
        yield
    except ArgumentError as problem:
        raise error(str(problem)) from None


def describe(value: Any) -> str:
    """A short description of a value for an error message (type, shape, dtype, repr)."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    if isinstance(value, np.ndarray):
        return f"a numpy array of shape {value.shape}"
    text = repr(value)
    return f"{type(value).__name__} {text[:80] + '...' if len(text) > 80 else text}"


def integer(value: Any, name: str) -> int:
    """`value` as an int: Python, numpy and one-element integer tensors are accepted; bools and floats are not."""
    if isinstance(value, (bool, np.bool_)):
        raise ArgumentError(f"`{name}` must be an integer, got {value!r} (a bool).")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, (torch.Tensor, np.ndarray)) and value.size == 1 if isinstance(value, np.ndarray) \
            else isinstance(value, torch.Tensor) and value.numel() == 1:
        item = value.reshape(()).item()
        if isinstance(item, int) and not isinstance(item, bool):
            return item
    if isinstance(value, float) and value.is_integer():
        raise ArgumentError(f"`{name}` must be an integer, got the float {value!r}; write {int(value)}.")
    raise ArgumentError(f"`{name}` must be an integer, got {describe(value)}.")


def index(value: Any, name: str, size: int, what: str, allow_negative: bool = True) -> int:
    """An index into `size` things (`what` names them, e.g. "layers (blocks)"), negative from the end if allowed."""
    i = integer(value, name)
    low = -size if allow_negative else 0
    if not low <= i < size:
        span = f"0 to {size - 1}" + (f" (or -1 to -{size} from the end)" if allow_negative else "")
        raise ArgumentError(f"`{name}`={i} is out of range: there are {size} {what}, numbered {span}.")
    return i


def positive_int(value: Any, name: str, allow_none: bool = False) -> int | None:
    """A count such as batch_size or k: an integer >= 1 (or None if allowed)."""
    if value is None and allow_none:
        return None
    n = integer(value, name)
    if n < 1:
        raise ArgumentError(f"`{name}` must be at least 1, got {n}" + (" (leave it as None for the default)." if allow_none else "."))
    return n


def fraction(value: Any, name: str, low: float = 0.0, high: float = 1.0, open_ends: bool = True) -> float:
    """A float strictly between `low` and `high` (or within them if not `open_ends`)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ArgumentError(f"`{name}` must be a number between {low} and {high}, got {describe(value)}.")
    x = float(value)
    inside = low < x < high if open_ends else low <= x <= high
    if not inside or math.isnan(x):
        bounds = "strictly between" if open_ends else "between"
        raise ArgumentError(f"`{name}` must be {bounds} {low} and {high}, got {x}.")
    return x


def text(value: Any, name: str = "prompt") -> str:
    """A non-empty string."""
    if not isinstance(value, str):
        raise ArgumentError(f"`{name}` must be a string of text, got {describe(value)}.")
    if not value.strip():
        raise ArgumentError(f"`{name}` is empty (or only whitespace): there is nothing to run the model on.")
    return value


def strings(value: Any, name: str, allow_empty: bool = False) -> list[str]:
    """A list of strings; one string is taken as a list of one (not read letter by letter)."""
    if isinstance(value, str):
        return [value]
    if value is None or not isinstance(value, (list, tuple)) and not hasattr(value, "__iter__"):
        raise ArgumentError(f"`{name}` must be a list of strings, got {describe(value)}.")
    items = list(value)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise ArgumentError(f"`{name}[{i}]` must be a string, got {describe(item)}.")
    if not items and not allow_empty:
        raise ArgumentError(f"`{name}` is empty: give at least one.")
    return items


def choice(value: Any, name: str, options: Sequence[str]) -> str:
    """One of `options`, with a 'did you mean' when close."""
    from helpers.errors import closest

    if not isinstance(value, str) or value not in options:
        near = closest(value, options, n=2) if isinstance(value, str) else []
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise ArgumentError(f"`{name}` must be one of {', '.join(map(repr, options))}, got {value!r}.{hint}")
    return value


def choices(value: Any, name: str, options: Sequence[str]) -> list[str]:
    """A list of values from `options`; one string is a list of one."""
    return [choice(v, f"{name}[{i}]" if not isinstance(value, str) else name, options)
            for i, v in enumerate(strings(value, name))]


def head_list(value: Any, name: str, n_layers: int, n_heads: int) -> list[tuple[int, int]]:
    """A list of (layer, head) pairs; one pair is a list of one; numpy ints are fine."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, numbers.Integral) for v in value):
        value = [value]
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ArgumentError(f"`{name}` must be a list of (layer, head) pairs such as [(9, 1), (10, 7)], got {describe(value)}.")
    out = []
    for i, pair in enumerate(value):
        if isinstance(pair, torch.Tensor):
            pair = pair.tolist()
        if not isinstance(pair, (tuple, list, np.ndarray)) or len(pair) != 2:
            raise ArgumentError(f"`{name}[{i}]` must be a (layer, head) pair, got {describe(pair)}.")
        layer, head = integer(pair[0], f"{name}[{i}] layer"), integer(pair[1], f"{name}[{i}] head")
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ArgumentError(f"`{name}[{i}]`: head ({layer}, {head}) does not exist: the model has layers "
                                f"0-{n_layers - 1} and heads 0-{n_heads - 1} in each layer.")
        out.append((layer, head))
    return out


def tensor(value: Any, name: str, ndim: int | Sequence[int] | None = None, shape_doc: str = "",
           floating: bool = True, finite: bool = True) -> torch.Tensor:
    """A tensor with `ndim` dims (lists and numpy arrays converted); float16/bfloat16 upcast to float32.

    `floating`: True requires real-valued data (integer tensors refused with a hint), False requires
    integers (ids), None accepts either. `finite`: refuse NaN / infinity.
    """
    if isinstance(value, (list, tuple, np.ndarray)) and not isinstance(value, str):
        try:
            value = torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError) as error:
            raise ArgumentError(f"`{name}` must be a tensor{shape_doc and ' ' + shape_doc}, got {describe(value)} "
                                f"that cannot be made into one ({error}).") from None
    if not isinstance(value, torch.Tensor):
        raise ArgumentError(f"`{name}` must be a tensor{shape_doc and ' ' + shape_doc}, got {describe(value)}.")
    dims = (ndim,) if isinstance(ndim, int) else tuple(ndim) if ndim is not None else None
    if dims is not None and value.dim() not in dims:
        raise ShapeError(f"`{name}` must be {shape_doc or f'a {dims[0]}-d tensor'}, got shape {tuple(value.shape)}.")
    if floating is True:
        if value.dtype == torch.bool or not (value.is_floating_point() or value.is_complex()):
            raise ArgumentError(f"`{name}` must hold real numbers (float), got dtype {value.dtype}: did you pass "
                                "token ids or a mask where activations or probabilities were expected?")
        if value.dtype in (torch.float16, torch.bfloat16):
            value = value.float()
    elif floating is False:
        if value.is_floating_point() or value.is_complex():
            raise ArgumentError(f"`{name}` must hold integer token ids, got dtype {value.dtype}; convert with .long().")
        value = value.long()
    if finite and value.is_floating_point() and not torch.isfinite(value).all():
        bad = int((~torch.isfinite(value)).sum())
        raise ArgumentError(f"`{name}` contains {bad} NaN or infinite value(s); check what produced it.")
    return value


def token_ids(value: Any, name: str = "tokens", d_vocab: int | None = None) -> torch.Tensor:
    """Token ids [batch, pos] from a tensor, a list of ids, or a list of lists (one prompt becomes a batch of 1)."""
    ids = tensor(value, name, ndim=(1, 2), shape_doc="of token ids [batch, pos]", floating=False)
    if ids.dim() == 1:
        ids = ids[None]
    if ids.shape[1] == 0:
        raise ArgumentError(f"`{name}` has no positions: there is nothing to run the model on.")
    if d_vocab is not None and ((ids < 0).any() or (ids >= d_vocab).any()):
        raise ArgumentError(f"`{name}` holds ids outside the vocabulary (0 to {d_vocab - 1}): min {int(ids.min())}, "
                            f"max {int(ids.max())}.")
    return ids
