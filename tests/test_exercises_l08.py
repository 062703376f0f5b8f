"""Lesson 08 checks: the references pass (and agree with helpers.sae / helpers.features), plausible mistakes fail."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers.checks import FAILED, NOT_IMPLEMENTED, PASSED
from helpers.exercises import l08
from helpers.sae import SAE


def _stub(*args):
    raise NotImplementedError


def _raises(*args):
    raise RuntimeError("boom")


# --- sae_forward ----------------------------------------------------------------------------------

def _finish(x, pre, k, W_dec, b_dec, relu=True, normalise=True, topk=True, by_abs=False):
    if topk:
        key = pre.abs() if by_abs else pre
        indices = key.topk(k, dim=-1).indices
        values = pre.gather(-1, indices)
        f = torch.zeros_like(pre).scatter(-1, indices, values.relu() if relu else values)
    else:
        f = pre.relu()
    x_hat = f @ W_dec + b_dec
    sse = (x - x_hat).pow(2).sum()
    loss = sse / (x - x.mean(0)).pow(2).sum() if normalise else sse / len(x)
    return x_hat, f, loss


def no_b_dec_subtracted(x, W_enc, b_enc, W_dec, b_dec, k):
    return _finish(x, x @ W_enc + b_enc, k, W_dec, b_dec)


def k_ignored_plain_relu(x, W_enc, b_enc, W_dec, b_dec, k):
    return _finish(x, (x - b_dec) @ W_enc + b_enc, k, W_dec, b_dec, topk=False)


def topk_by_absolute_value(x, W_enc, b_enc, W_dec, b_dec, k):
    return _finish(x, (x - b_dec) @ W_enc + b_enc, k, W_dec, b_dec, by_abs=True)


def relu_forgotten(x, W_enc, b_enc, W_dec, b_dec, k):
    return _finish(x, (x - b_dec) @ W_enc + b_enc, k, W_dec, b_dec, relu=False)


def loss_not_normalised(x, W_enc, b_enc, W_dec, b_dec, k):
    return _finish(x, (x - b_dec) @ W_enc + b_enc, k, W_dec, b_dec, normalise=False)


def mse_over_elements(x, W_enc, b_enc, W_dec, b_dec, k):
    x_hat, f, _ = l08.reference_sae_forward(x, W_enc, b_enc, W_dec, b_dec, k)
    return x_hat, f, F.mse_loss(x_hat, x)


def variance_of_reconstruction(x, W_enc, b_enc, W_dec, b_dec, k):
    x_hat, f, _ = l08.reference_sae_forward(x, W_enc, b_enc, W_dec, b_dec, k)
    return x_hat, f, (x - x_hat).pow(2).sum() / (x_hat - x_hat.mean(0)).pow(2).sum()


def fixed_k_of_three(x, W_enc, b_enc, W_dec, b_dec, k):
    return l08.reference_sae_forward(x, W_enc, b_enc, W_dec, b_dec, 3)


FORWARD_WRONG = [no_b_dec_subtracted, k_ignored_plain_relu, topk_by_absolute_value, relu_forgotten,
                 loss_not_normalised, mse_over_elements, variance_of_reconstruction, fixed_k_of_three]


def test_sae_forward_reference_passes_and_matches_the_sae_class():
    assert l08.check_sae_forward(l08.reference_sae_forward).status == PASSED
    for case in l08._forward_cases():
        x, W_enc, b_enc, W_dec, b_dec, k = case.args
        x_hat, f = SAE(W_enc, b_enc, W_dec, b_dec, k)(x)
        assert torch.allclose(x_hat, case.expected[0], atol=1e-5) and torch.equal(f, case.expected[1])


@pytest.mark.parametrize("wrong", FORWARD_WRONG)
def test_sae_forward_mistakes_fail(wrong):
    assert l08.check_sae_forward(wrong).status == FAILED, wrong.__name__


def test_sae_forward_stub_and_crash():
    assert l08.check_sae_forward(_stub).status == NOT_IMPLEMENTED
    assert l08.check_sae_forward(_raises).status == FAILED


def test_sae_forward_cases_use_batches_and_have_fewer_positive_than_k():
    cases = l08._forward_cases()
    assert all(len(case.args[0]) > 1 for case in cases)
    assert any(((c.args[0] - c.args[4]) @ c.args[1] + c.args[2] > 0).sum(-1).min() < c.args[5] for c in cases)


# --- top_contexts ---------------------------------------------------------------------------------

def any_feature(f, doc, feature, k):
    return l08.reference_top_contexts(f, doc, int(f.max(0).values.argmax()), k)


def ascending(f, doc, feature, k):
    return l08.reference_top_contexts(-f, doc, feature, k)


def several_per_document(f, doc, feature, k):
    return f[:, feature].argsort(descending=True)[:k]


def k_ignored(f, doc, feature, k):
    return l08.reference_top_contexts(f, doc, feature, 3)


def off_by_one_feature(f, doc, feature, k):
    return l08.reference_top_contexts(f, doc, feature - 1, k)


CONTEXT_WRONG = [any_feature, ascending, several_per_document, k_ignored, off_by_one_feature]


def test_top_contexts_reference_passes():
    assert l08.check_top_contexts(l08.reference_top_contexts).status == PASSED


@pytest.mark.parametrize("wrong", CONTEXT_WRONG)
def test_top_contexts_mistakes_fail(wrong):
    assert l08.check_top_contexts(wrong).status == FAILED, wrong.__name__


def test_top_contexts_stub_and_crash():
    assert l08.check_top_contexts(_stub).status == NOT_IMPLEMENTED
    assert l08.check_top_contexts(_raises).status == FAILED


# --- spliced_loss ---------------------------------------------------------------------------------

def _loss(model, tokens, hook, replace, first=1, shift=0, rows=slice(None)):
    def splice(act, hook):
        act = act.clone()
        act[:, first:] = replace(act[:, first:])
        return act

    with torch.no_grad():
        logits = model.run_with_hooks(tokens[rows], fwd_hooks=[(hook, splice)] if replace else [])
    return F.cross_entropy(logits[:, 1 - shift:-1].flatten(0, 1), tokens[rows, 2 - shift:].flatten())


def clean_loss(model, tokens, sae):
    return _loss(model, tokens, sae.hook, None)


def always_layer_15(model, tokens, sae):
    return _loss(model, tokens, "blocks.15.hook_resid_post", lambda a: sae(a)[0])


def bos_spliced_too(model, tokens, sae):
    return _loss(model, tokens, sae.hook, lambda a: sae(a)[0], first=0)


def bos_prediction_included(model, tokens, sae):
    return _loss(model, tokens, sae.hook, lambda a: sae(a)[0], shift=1)


def only_first_document(model, tokens, sae):
    return _loss(model, tokens, sae.hook, lambda a: sae(a)[0], rows=slice(0, 1))


def leaves_hook_on(model, tokens, sae):
    model.add_hook(sae.hook, lambda act, hook: act)
    return l08.reference_spliced_loss(model, tokens, sae)


SPLICE_WRONG = [clean_loss, always_layer_15, bos_spliced_too, bos_prediction_included, only_first_document,
                leaves_hook_on]


@pytest.mark.slow
def test_spliced_loss_reference_passes_and_matches_helpers(smollm2):
    from helpers.features import next_token_loss

    assert l08.check_spliced_loss(l08.reference_spliced_loss, smollm2).status == PASSED
    case = l08._splice_cases(smollm2)[0]
    _, tokens, sae = case.args
    helper = next_token_loss(smollm2, list(tokens), sae.hook, lambda a: sae(a)[0])
    assert abs(helper - case.expected) < 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("wrong", SPLICE_WRONG)
def test_spliced_loss_mistakes_fail(smollm2, wrong):
    assert l08.check_spliced_loss(wrong, smollm2).status == FAILED, wrong.__name__


@pytest.mark.slow
def test_spliced_loss_stub(smollm2):
    assert l08.check_spliced_loss(_stub, smollm2).status == NOT_IMPLEMENTED
