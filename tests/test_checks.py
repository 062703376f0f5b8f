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


def test_in_place_edit_is_reported_and_does_not_reach_the_case():
    original = CASES[0].args[0].clone()

    def mutating(x):
        answer = reference(x)
        x.zero_()
        return answer

    result = check("softmax", mutating, CASES)
    assert result.status == FAILED and "modified its input `x` in place" in result.message
    assert torch.equal(CASES[0].args[0], original)


def test_not_a_function_is_reported():
    assert check("softmax", 42, CASES).status == FAILED


def test_fallback_to_reference_says_so(capsys):
    result = check("softmax", lambda x: None, CASES)
    chosen = use_or_reference(result, lambda x: None, reference)
    assert chosen is reference and "reference implementation" in capsys.readouterr().out


# ------------------------------------------------------------------ side effects, time limits, feedback

import sys  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from helpers import guard  # noqa: E402


def _centre(acts: torch.Tensor) -> torch.Tensor:
    return acts - acts.mean(0)


CENTRE_CASES = [Case("3x4 activations", (torch.arange(12.0).reshape(3, 4),), _centre(torch.arange(12.0).reshape(3, 4)))]


@pytest.mark.parametrize("edit", [
    lambda a: a.sub_(a.mean(0)),                      # acts -= acts.mean(0)
    lambda a: a[:, 0].div_(1.0).zero_(),              # /= on a view, then zeroing a column
    lambda a: a.__setitem__(0, 0.0),                  # zeroing a row
])
def test_every_kind_of_in_place_edit_is_reported(edit):
    def learner(acts):
        answer = _centre(acts.clone())
        edit(acts)
        return answer
    result = check("centre", learner, CENTRE_CASES)
    assert result.status == FAILED and "modified its input `acts`" in result.message


def test_in_place_edit_of_a_tensor_inside_a_list_is_reported():
    def learner(tensors):
        out = [t.softmax(-1) for t in tensors]
        tensors[1] += 1
        return out
    cases = [Case("two tensors", ([torch.ones(2, 3), torch.zeros(2, 3)],), [torch.ones(2, 3).softmax(-1), torch.zeros(2, 3).softmax(-1)])]
    result = check("list", learner, cases)
    assert result.status == FAILED and "`tensors[1]`" in result.message


def test_allow_inplace_lets_a_hook_edit_its_activation():
    def hook(z, hook=None):
        z[:, 0] = 0.0
        return z
    expected = torch.ones(2, 3)
    expected[:, 0] = 0.0
    cases = [Case("z", (torch.ones(2, 3), None), expected)]
    assert check("hook", hook, cases, allow_inplace=("z",)).status == PASSED
    assert check("hook", hook, cases).status == FAILED


def _model_cases(model):
    tokens = torch.tensor([[0, 3, 5, 7, 9]])
    return [Case("logits of a 5-token batch", (model, tokens), model(tokens).detach())]


def _hooks_on(model) -> int:
    return sum(len(hp.fwd_hooks) + len(hp.bwd_hooks) for hp in model.hook_dict.values())


def test_hooks_left_on_the_model_are_reported_and_removed(prev_token_model):
    def leaves_a_hook(model, tokens):
        model.blocks[0].attn.hook_pattern.add_hook(lambda x, hook: x)
        return model(tokens).detach()
    result = check("logits", leaves_a_hook, lambda: _model_cases(prev_token_model))
    assert result.status == FAILED and "hook" in result.message and "blocks.0.attn.hook_pattern" in result.message
    assert _hooks_on(prev_token_model) == 0
    assert check("logits", lambda m, t: m(t).detach(), lambda: _model_cases(prev_token_model)).status == PASSED


def test_hooks_are_reported_by_the_name_the_learner_used(prev_token_model):
    def leaves_a_hook(model, tokens):
        model.add_hook("blocks.0.hook_resid_pre", lambda x, hook: x)
        return model(tokens).detach()
    result = check("logits", leaves_a_hook, lambda: _model_cases(prev_token_model))
    assert "blocks.0.hook_resid_pre" in result.message and _hooks_on(prev_token_model) == 0


def test_raw_torch_hooks_are_removed_too(prev_token_model):
    def leaves_a_torch_hook(model, tokens):
        model.blocks[0].register_forward_hook(lambda module, inputs, output: None)
        return model(tokens).detach()
    result = check("logits", leaves_a_torch_hook, lambda: _model_cases(prev_token_model))
    assert result.status == FAILED and "hook" in result.message
    assert not any(len(m._forward_hooks) for m in prev_token_model.blocks[0].modules())


def test_transformers_output_capturing_hooks_are_not_blamed_on_the_learner(prev_token_model):
    # transformers installs these inert hooks once, the first time attention patterns are requested from a
    # bridge; they are the library's, so a learner whose function triggers them has done nothing wrong.
    from transformers.utils.output_capturing import install_output_capuring_hook

    def triggers_library_hooks(model, tokens):
        install_output_capuring_hook(model.blocks[0], "attentions", 1)
        return model(tokens).detach()
    try:
        result = check("logits", triggers_library_hooks, lambda: _model_cases(prev_token_model))
        assert result.status == PASSED, result.message
        assert len(prev_token_model.blocks[0]._forward_hooks) == 1  # left in place: the library relies on it
    finally:
        prev_token_model.blocks[0]._forward_hooks.clear()


def test_grad_mode_switched_off_is_reported_and_restored(prev_token_model):
    def no_grad_forever(model, tokens):
        torch.set_grad_enabled(False)
        return model(tokens)
    before = torch.is_grad_enabled()
    result = check("logits", no_grad_forever, lambda: _model_cases(prev_token_model))
    assert result.status == FAILED and "gradient tracking off" in result.message
    assert torch.is_grad_enabled() == before


def test_train_mode_is_reported_and_restored(prev_token_model):
    def trains(model, tokens):
        model.train()
        return model(tokens).detach()
    result = check("logits", trains, lambda: _model_cases(prev_token_model))
    assert result.status == FAILED and "train mode" in result.message
    assert not any(m.training for m in prev_token_model.modules())


def test_weight_edited_in_place_is_reported_and_restored_on_a_small_model(prev_token_model):
    before = {n: p.detach().clone() for n, p in prev_token_model.named_parameters()}

    def edits_weights(model, tokens):
        with torch.no_grad():
            next(model.parameters()).mul_(0.0)
        return model(tokens).detach()
    result = check("logits", edits_weights, lambda: _model_cases(prev_token_model))
    assert result.status == FAILED and "edited 1 weight tensor" in result.message and "restored" in result.message
    assert all(torch.equal(before[n], p) for n, p in prev_token_model.named_parameters())


def test_weight_edit_on_a_large_model_says_to_reload(prev_token_model, monkeypatch):
    monkeypatch.setattr(guard, "COPY_LIMIT", 0)  # behave as with SmolLM2: no up-front copy
    name, param = next(iter(prev_token_model.named_parameters()))
    saved = param.detach().clone()

    def edits_weights(model, tokens):
        with torch.no_grad():
            next(model.parameters()).add_(1.0)
        return model(tokens).detach()
    try:
        result = check("logits", edits_weights, lambda: _model_cases(prev_token_model))
        assert result.status == FAILED and "reload it" in result.message and name in result.message
    finally:
        with torch.no_grad():
            param.copy_(saved)


def test_sys_exit_does_not_escape():
    def exits(x):
        sys.exit(1)
    result = check("softmax", exits, CASES)
    assert result.status == FAILED and "sys.exit" in result.message


def test_a_function_that_never_returns_is_stopped():
    def forever(x):
        while True:
            try:
                pass
            except Exception:  # a learner's catch-all cannot swallow the time limit
                pass
    result = check("softmax", forever, CASES, time_limit=0.3)
    assert result.status == FAILED and "did not return within 0.3 s" in result.message


def test_cases_that_cannot_be_built_give_a_result_not_a_traceback():
    def broken_cases():
        raise RuntimeError("shape mismatch in the model")
    result = check("softmax", reference, broken_cases)
    assert result.status == FAILED and "could not build its test cases" in result.message


def test_cases_may_be_given_as_a_function():
    assert check("softmax", reference, lambda: CASES).status == PASSED


@pytest.mark.parametrize("number", [np.float32(0.5), np.float64(0.5), np.array(0.5), torch.tensor([0.5]), 0.5])
def test_any_real_number_is_accepted_for_a_number(number):
    cases = [Case("half", (), 0.5)]
    assert check("half", lambda: number, cases).status == PASSED


@pytest.mark.parametrize("not_a_number", [True, "0.5", torch.tensor([0.5, 0.5]), None])
def test_non_numbers_are_rejected_for_a_number(not_a_number):
    assert check("half", lambda: not_a_number, [Case("half", (), 0.5)]).status == FAILED


def test_library_error_quotes_the_learners_line_and_the_hint():
    import einops

    def learner(x):
        shaped = einops.rearrange(x, "a b -> a b c")
        return shaped
    result = check("softmax", learner, CASES)
    assert result.status == FAILED and "shaped = einops.rearrange(x" in result.message
    assert "softmax over the last axis" in result.message and "inside einops" in result.message


def test_ids_returned_where_probabilities_were_expected_are_named():
    result = check("softmax", lambda x: x.argmax(-1, keepdim=True).expand(2, 3), CASES)
    assert result.status == FAILED and "indices or token ids" in result.message


def test_values_returned_where_indices_were_expected_are_named():
    logits = torch.tensor([[0.1, 3.0, 2.0]])
    cases = [Case("top-2", (logits,), logits.topk(2).indices)]
    result = check("top2", lambda x: x.topk(2).values, cases)
    assert result.status == FAILED and ".indices" in result.message
    assert check("top2", lambda x: x.topk(2).indices.int(), cases).status == PASSED


def test_weight_edit_through_data_is_caught_by_the_fingerprint(prev_token_model):
    before = {n: p.detach().clone() for n, p in prev_token_model.named_parameters()}

    def edits_through_data(model, tokens):
        next(model.parameters()).data[0] += 1.0  # .data bypasses the version counter
        return model(tokens).detach()
    result = check("logits", edits_through_data, lambda: _model_cases(prev_token_model))
    assert result.status == FAILED and "edited 1 weight tensor" in result.message
    assert all(torch.equal(before[n], p) for n, p in prev_token_model.named_parameters())
