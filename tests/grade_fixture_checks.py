"""Checks of a tiny made-up lesson (99) that the autograder's tests grade in seconds."""
from __future__ import annotations

import torch

from helpers.checks import Case, CheckResult, check


def _double_cases() -> list[Case]:
    x = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    return [Case("a 2x2 tensor", (x,), 2 * x, hint="multiply by two")]


def _mean_rows_cases() -> list[Case]:
    x = torch.arange(6.0).reshape(2, 3)
    return [Case("a 2x3 tensor", (x,), x.mean(1), hint="average over the last axis")]


def check_double(fn) -> CheckResult:
    return check("double", fn, _double_cases)


def check_mean_rows(fn) -> CheckResult:
    return check("mean_rows", fn, _mean_rows_cases)
