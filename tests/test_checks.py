"""The generic check machinery: it reports pass / fail / not implemented and never raises."""
from __future__ import annotations

import torch

from helpers.checks import FAILED, NOT_IMPLEMENTED, PASSED, Case, check, use_or_reference


def reference(x: torch.Tensor) -> torch.Tensor:
    return x.softmax(-1)


CASES = [Case("a 2x3 input", (torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]),), reference(torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])), hint="softmax over the last axis")]


def test_correct_function_passes():
    assert check("softmax", reference, CASES).status == PASSED


def test_stub_reports_not_implemented():
    def stub(x):
        raise NotImplementedError
    assert check("softmax", stub, CASES).status == NOT_IMPLEMENTED


def test_exception_is_reported_not_raised():
    result = check("softmax", lambda x: x.nonexistent(), CASES)
    assert result.status == FAILED and "AttributeError" in result.message and "a 2x3 input" in result.message


def test_wrong_shape_is_named():
    result = check("softmax", lambda x: x.softmax(-1)[0], CASES)
    assert result.status == FAILED and "expected shape (2, 3), got shape (3,)" in result.message


def test_wrong_values_show_expected_and_got_and_hint():
    result = check("softmax", lambda x: x.softmax(0), CASES)
    assert result.status == FAILED and "expected" in result.message and "softmax over the last axis" in result.message


def test_garbage_return_is_reported():
    for garbage in (None, "tensor", [1, 2, 3], {"a": 1}, torch.tensor([float("nan")] * 3).expand(2, 3)):
        assert check("softmax", lambda x, g=garbage: g, CASES).status == FAILED


def test_in_place_edit_does_not_leak_between_cases():
    seen = []

    def mutating(x):
        seen.append(x.clone())
        x.zero_()
        return reference(seen[-1])

    cases = CASES * 2
    assert check("softmax", mutating, cases).status == PASSED
    assert torch.equal(seen[0], seen[1])


def test_not_a_function_is_reported():
    assert check("softmax", 42, CASES).status == FAILED


def test_fallback_to_reference_says_so(capsys):
    result = check("softmax", lambda x: None, CASES)
    chosen = use_or_reference(result, lambda x: None, reference)
    assert chosen is reference and "reference implementation" in capsys.readouterr().out
