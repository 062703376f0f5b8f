"""Errors the course raises on bad input, each naming the problem and the way out."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class MicroscopeError(ValueError):
    """Base class: every error raised on a learner's bad input."""


class UnknownModelError(MicroscopeError):
    """A model name that no loader knows."""


class ModelUnavailableError(MicroscopeError):
    """A known model that cannot be loaded here (not installed, offline, corrupted file)."""


class HookNameError(MicroscopeError, KeyError):
    """A hook name that the model does not have."""

    def __str__(self) -> str:  # KeyError would otherwise print the message with quotes
        return str(self.args[0])


class PromptError(MicroscopeError):
    """An empty or over-long prompt, or mismatched prompt lengths."""


class TokenError(MicroscopeError):
    """An answer string that is not exactly one token where one token is required."""


class ShapeError(MicroscopeError):
    """A tensor whose shape is not the one the function needs."""


def scalar_metric(metric, logits, error: type[MicroscopeError] = MicroscopeError, run: str = "run"):
    """metric(logits) as a 0-d tensor, or `error` saying what the metric returned instead.

    `run` names what one metric value stands for in the message (e.g. "patched run").
    """
    import torch

    value = metric(logits)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(float(value))
    if not isinstance(value, torch.Tensor):
        raise error(f"The metric must return a scalar tensor, got {type(value).__name__}.")
    if value.ndim != 0:
        raise error(
            f"The metric must return a scalar (one number per {run}), got a tensor of shape "
            f"{tuple(value.shape)}. Reduce it, e.g. with .mean() over the batch of prompt pairs.")
    if value.is_floating_point() and not torch.isfinite(value.detach()):
        raise error(f"The metric returned {value.item()} on the {run}: a NaN or infinite metric makes every result "
                    "meaningless. Check for a division by zero (e.g. a normalised metric whose clean and corrupted "
                    "values are equal) or a log of zero.")
    return value


def closest(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The candidates that look most like `name` (for 'did you mean' messages)."""
    return difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.5)
