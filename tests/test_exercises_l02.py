"""Lesson 02 checks: the references pass, plausible mistakes fail, stubs and crashes are reported."""
from __future__ import annotations

import pytest
import torch

from helpers.checks import FAILED, NOT_IMPLEMENTED, PASSED
from helpers.exercises import l02
from helpers.models import load


@pytest.fixture(scope="module")
def induction_model():
    """The shipped 2-layer induction toy model."""
    return load("induction")


def _targets(tokens: torch.Tensor, shift: int = 1, strict: bool = True) -> torch.Tensor:
    """[batch, q, k] True where tokens[k - shift] == tokens[q] (k < q if strict, else k <= q)."""
    batch, n = tokens.shape
    mask = torch.zeros(batch, n, n, dtype=torch.bool)
    if shift >= 0:
        mask[:, :, shift:] = tokens[:, :, None] == tokens[:, None, : n - shift]
    else:
        mask[:, :, :shift] = tokens[:, :, None] == tokens[:, None, -shift:]
    return mask & torch.ones(n, n, dtype=torch.bool).tril(-1 if strict else 0)


def _score(pattern, mask, all_queries=False, reduce="sum"):
    picked = pattern * mask[:, None]
    mass = picked.sum(-1) if reduce == "sum" else picked.amax(-1)
    eligible = mask.any(-1) if not all_queries else torch.ones_like(mask.any(-1))
    return (mass * eligible[:, None]).sum((0, 2)) / eligible.sum()


def duplicate_instead_of_induction(pattern, tokens):
    return _score(pattern, _targets(tokens, shift=0))


def off_by_one_the_other_way(pattern, tokens):
    return _score(pattern, _targets(tokens, shift=-1))


def averages_over_every_query(pattern, tokens):
    return _score(pattern, _targets(tokens), all_queries=True)


def takes_the_largest_target_not_the_sum(pattern, tokens):
    return _score(pattern, _targets(tokens), reduce="max")


def counts_the_query_itself(pattern, tokens):
    return _score(pattern, _targets(tokens, strict=False))


def assumes_two_halves(pattern, tokens):
    half = (tokens.shape[1] - 1) // 2
    return pattern.diagonal(offset=-(half - 1), dim1=-2, dim2=-1)[..., half + 1 - (half - 1):].mean((0, 2))


def forgets_batch_mean(pattern, tokens):
    return _score(pattern[:1], _targets(tokens[:1]))


def mean_of_the_targets_not_the_sum(pattern, tokens):
    mask = _targets(tokens)
    picked = (pattern * mask[:, None]).sum(-1) / mask.sum(-1).clamp_min(1)[:, None]
    eligible = mask.any(-1)
    return (picked * eligible[:, None]).sum((0, 2)) / eligible.sum()


def only_the_most_recent_copy(pattern, tokens):
    mask = _targets(tokens)
    last = mask & (mask.int().flip(-1).cumsum(-1).flip(-1) == 1)  # the right-most target of each query
    return _score(pattern, last)


def wraps_around_with_roll(pattern, tokens):
    n = tokens.shape[1]
    mask = (tokens[:, :, None] == tokens.roll(1, dims=1)[:, None, :]) & torch.ones(n, n, dtype=torch.bool).tril(-1)
    return _score(pattern, mask)


def mean_of_per_prompt_scores(pattern, tokens):
    mask = _targets(tokens)
    scores = [_score(pattern[b:b + 1], mask[b:b + 1]) for b in range(tokens.shape[0]) if mask[b].any()]
    return torch.stack(scores).mean(0)


def reads_only_prompt_0(pattern, tokens):
    return _score(pattern[:1], _targets(tokens[:1]))


INDUCTION_WRONG = [duplicate_instead_of_induction, off_by_one_the_other_way, averages_over_every_query,
                   takes_the_largest_target_not_the_sum, counts_the_query_itself, assumes_two_halves,
                   forgets_batch_mean, mean_of_the_targets_not_the_sum, only_the_most_recent_copy,
                   wraps_around_with_roll, mean_of_per_prompt_scores, reads_only_prompt_0]


@pytest.mark.parametrize("wrong", INDUCTION_WRONG)
def test_induction_score_mistakes_fail(wrong):
    assert l02.check_induction_score(wrong).status == FAILED, wrong.__name__


def test_induction_score_reference_passes():
    assert l02.check_induction_score(l02.reference_induction_score).status == PASSED


def test_two_halves_shortcut_passes_the_clean_case_and_gets_a_hint_on_the_messy_one():
    result = l02.check_induction_score(assumes_two_halves)
    assert "a batch of 2" in result.message and "at least one target" in result.message


def test_an_independent_loop_implementation_passes():
    def loops(pattern, tokens):
        batch, heads, n, _ = pattern.shape
        total, count = torch.zeros(heads), 0
        for b in range(batch):
            for q in range(n):
                keys = [k for k in range(1, q) if tokens[b, k - 1] == tokens[b, q]]
                if keys:
                    total += pattern[b, :, q, keys].sum(-1)
                    count += 1
        return total / count
    assert l02.check_induction_score(loops).status == PASSED


def zeroes_the_position_axis(z, hook, head):
    z = z.clone()
    z[:, head] = 0.0
    return z


def zeroes_the_d_head_axis(z, hook, head):
    z = z.clone()
    z[..., head] = 0.0
    return z


def keeps_only_that_head(z, hook, head):
    out = torch.zeros_like(z)
    out[:, :, head] = z[:, :, head]
    return out


def edits_in_place_returns_nothing(z, hook, head):
    z[:, :, head] = 0.0


def zeroes_every_head(z, hook, head):
    return torch.zeros_like(z)


def always_zeroes_head_1(z, hook, head):
    z = z.clone()
    z[:, :, 1] = 0.0
    return z


def zeroes_the_last_head(z, hook, head):
    z = z.clone()
    z[:, :, -1] = 0.0
    return z


def zeroes_the_next_head(z, hook, head):
    z = z.clone()
    z[:, :, (head + 1) % z.shape[2]] = 0.0
    return z


def zeroes_only_batch_item_0(z, hook, head):
    z = z.clone()
    z[0, :, head] = 0.0
    return z


def zeroes_only_the_last_position(z, hook, head):
    z = z.clone()
    z[:, -1, head] = 0.0
    return z


def mean_ablates_instead(z, hook, head):
    z = z.clone()
    z[:, :, head] = z[:, :, head].mean((0, 1), keepdim=True)
    return z


HOOK_WRONG = [zeroes_the_position_axis, zeroes_the_d_head_axis, keeps_only_that_head, edits_in_place_returns_nothing,
              zeroes_every_head, always_zeroes_head_1, zeroes_the_last_head, zeroes_the_next_head,
              zeroes_only_batch_item_0, zeroes_only_the_last_position, mean_ablates_instead]


@pytest.mark.parametrize("wrong", HOOK_WRONG)
def test_zero_head_hook_mistakes_fail(wrong):
    assert l02.check_zero_head_hook(wrong).status == FAILED, wrong.__name__


def test_zero_head_hook_reference_passes():
    assert l02.check_zero_head_hook(l02.reference_zero_head_hook).status == PASSED


def test_in_place_hook_that_returns_z_passes():
    def in_place(z, hook, head):
        z[:, :, head] = 0.0
        return z
    assert l02.check_zero_head_hook(in_place).status == PASSED


def test_mask_multiplying_hook_that_reads_the_hook_name_passes():
    def with_a_mask(z, hook, head):
        assert hook.name.endswith("attn.hook_z")  # the check passes a real, named HookPoint
        keep = torch.ones(z.shape[2])
        keep[head] = 0.0
        return z * keep[:, None]
    assert l02.check_zero_head_hook(with_a_mask).status == PASSED


def test_reference_hook_matches_the_ablation_helper(induction_model):
    from functools import partial

    from helpers.ablation import run_with_heads_ablated

    tokens = torch.randint(1, 128, (4, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = induction_model.run_with_hooks(
            tokens, fwd_hooks=[("blocks.1.attn.hook_z", partial(l02.reference_zero_head_hook, head=1))])
    assert torch.allclose(ours, run_with_heads_ablated(induction_model, tokens, [(1, 1)]))


def _ov_qk(W_V0, W_O0, W_Q1, W_K1):
    return W_V0 @ W_O0, W_Q1 @ W_K1.T


def _normalised(product, a, b):
    return product.norm() / (a.norm() * b.norm())


def q_composition_instead(W_V0, W_O0, W_Q1, W_K1):
    ov, qk = _ov_qk(W_V0, W_O0, W_Q1, W_K1)
    return _normalised(ov @ qk, ov, qk)


def v_composition_shape_guess(W_V0, W_O0, W_Q1, W_K1):
    ov, _ = _ov_qk(W_V0, W_O0, W_Q1, W_K1)
    return _normalised(ov @ ov, ov, ov)


def not_normalised(W_V0, W_O0, W_Q1, W_K1):
    ov, qk = _ov_qk(W_V0, W_O0, W_Q1, W_K1)
    return (ov @ qk.T).norm()


def spectral_not_frobenius(W_V0, W_O0, W_Q1, W_K1):
    ov, qk = _ov_qk(W_V0, W_O0, W_Q1, W_K1)
    spectral = lambda m: torch.linalg.matrix_norm(m, ord=2)  # noqa: E731
    return spectral(ov @ qk.T) / (spectral(ov) * spectral(qk))


def qk_as_key_times_query(W_V0, W_O0, W_Q1, W_K1):
    ov, _ = _ov_qk(W_V0, W_O0, W_Q1, W_K1)
    kq = W_K1 @ W_Q1.T
    return _normalised(ov @ kq.T, ov, kq)


def uses_w_q1_twice(W_V0, W_O0, W_Q1, W_K1):
    ov, qk = W_V0 @ W_O0, W_Q1 @ W_Q1.T
    return _normalised(ov @ qk.T, ov, qk)


def squared_ratio(W_V0, W_O0, W_Q1, W_K1):
    ov, qk = _ov_qk(W_V0, W_O0, W_Q1, W_K1)
    return _normalised(ov @ qk.T, ov, qk) ** 2


def ignores_the_value_weights(W_V0, W_O0, W_Q1, W_K1):
    _, qk = _ov_qk(W_V0, W_O0, W_Q1, W_K1)
    return _normalised(W_O0 @ qk.T, W_O0, qk)


def normalised_by_all_four_weights(W_V0, W_O0, W_Q1, W_K1):
    ov, qk = _ov_qk(W_V0, W_O0, W_Q1, W_K1)
    return (ov @ qk.T).norm() / (W_V0.norm() * W_O0.norm() * W_Q1.norm() * W_K1.norm())


COMPOSITION_WRONG = [q_composition_instead, v_composition_shape_guess, not_normalised, spectral_not_frobenius,
                     qk_as_key_times_query, uses_w_q1_twice, squared_ratio, ignores_the_value_weights,
                     normalised_by_all_four_weights]


@pytest.mark.parametrize("wrong", COMPOSITION_WRONG)
def test_k_composition_mistakes_fail(wrong):
    assert l02.check_k_composition(wrong).status == FAILED, wrong.__name__


def test_k_composition_reference_passes():
    assert l02.check_k_composition(l02.reference_k_composition).status == PASSED


def test_k_composition_transpose_form_passes():
    def transposed(W_V0, W_O0, W_Q1, W_K1):
        ov, qk = _ov_qk(W_V0, W_O0, W_Q1, W_K1)
        return _normalised(qk @ ov.T, ov, qk)
    assert l02.check_k_composition(transposed).status == PASSED


def test_k_composition_einsum_form_returning_a_python_float_passes():
    def with_einsum(W_V0, W_O0, W_Q1, W_K1):
        ov = torch.einsum("ah,hb->ab", W_V0, W_O0)
        kq = torch.einsum("ah,bh->ab", W_K1, W_Q1)  # = W_QK.T
        product = torch.einsum("ab,bc->ac", ov, kq)
        return float(product.pow(2).sum().sqrt() / (ov.pow(2).sum().sqrt() * kq.pow(2).sum().sqrt()))
    assert l02.check_k_composition(with_einsum).status == PASSED


def test_reference_k_composition_matches_the_helper(induction_model):
    from helpers.induction import head_matrices, model_composition_scores

    w = head_matrices(induction_model)
    grid = model_composition_scores(induction_model)
    got = l02.reference_k_composition(w["W_V"][0, 1], w["W_O"][0, 1], w["W_Q"][1, 0], w["W_K"][1, 0])
    assert torch.isclose(got, grid[1, 0])


@pytest.mark.parametrize("checker", [l02.check_induction_score, l02.check_zero_head_hook, l02.check_k_composition])
def test_stub_is_not_implemented(checker):
    def stub(*args, **kwargs):
        raise NotImplementedError("Exercise: write this function, then run the check below.")
    assert checker(stub).status == NOT_IMPLEMENTED


@pytest.mark.parametrize("checker", [l02.check_induction_score, l02.check_zero_head_hook, l02.check_k_composition])
def test_raising_function_fails_without_raising(checker):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")
    result = checker(broken)
    assert result.status == FAILED and "RuntimeError: boom" in result.message


# --- find_induction_head: the named head must pass the causal test on held-out prompts -------------

def _top_by(kind, rank=0):
    from helpers.attention import head_scores, top_heads

    def answer(model, tokens):
        layer, head, _ = top_heads(head_scores(model, tokens, (kind,))[kind], rank + 1)[rank]
        return layer, head
    answer.__name__ = f"top_{kind}_rank_{rank}"
    return answer


def find_a_head_with_a_negative_effect(model, tokens):
    return 24, 4


@pytest.mark.slow
@pytest.mark.parametrize("wrong", [_top_by("previous-token"), _top_by("induction", rank=1), _top_by("first-token"),
                                   find_a_head_with_a_negative_effect], ids=["previous-token head (wrong class)",
                                   "second induction score (no effect)", "first-token head", "negative effect"])
def test_find_induction_head_check_rejects_heads_that_fail_the_causal_test(smollm2, wrong):
    result = l02.check_find_induction_head(wrong, smollm2)
    assert result.status == FAILED, result


@pytest.mark.slow
def test_find_induction_head_check_passes_the_reference_and_another_route(smollm2):
    assert l02.check_find_induction_head(l02.reference_find_induction_head, smollm2).status == PASSED
    # Another route: the single highest induction score happens to be the causal head here.
    assert l02.check_find_induction_head(_top_by("induction"), smollm2).status == PASSED
