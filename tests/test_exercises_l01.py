"""Lesson 01 checks: the references pass, plausible mistakes fail, stubs and crashes are reported."""
from __future__ import annotations

import pytest
import torch

from helpers.checks import FAILED, NOT_IMPLEMENTED, PASSED
from helpers.exercises import l01


def _scores(q, k, scale=True):
    return torch.einsum("bqhd,bkhd->bhqk", q, k) / (q.shape[-1] ** 0.5 if scale else 1.0)


def _causal(scores):
    n = scores.shape[-1]
    return scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))


def _grouped(q, k):
    return k.repeat_interleave(q.shape[2] // k.shape[2], dim=2)


def no_mask(q, k):
    return _scores(q, _grouped(q, k)).softmax(-1)


def no_scale(q, k):
    return _causal(_scores(q, _grouped(q, k), scale=False)).softmax(-1)


def softmax_over_queries(q, k):
    return _causal(_scores(q, _grouped(q, k))).softmax(-2).nan_to_num()


def no_kv_repeat(q, k):
    return _causal(_scores(q, k)).softmax(-1)


def repeat_instead_of_interleave(q, k):
    return _causal(_scores(q, k.repeat(1, 1, q.shape[2] // k.shape[2], 1))).softmax(-1)


def mask_with_zero_not_minus_inf(q, k):
    n = q.shape[1]
    return (_scores(q, _grouped(q, k)) * torch.ones(n, n).tril()).softmax(-1)


def scale_by_d_head_not_its_root(q, k):
    return _causal(_scores(q, _grouped(q, k), scale=False) / q.shape[-1]).softmax(-1)


def mask_hides_the_diagonal(q, k):
    n = q.shape[1]
    scores = _scores(q, _grouped(q, k)).masked_fill(torch.ones(n, n, dtype=torch.bool).triu(0), float("-inf"))
    return scores.softmax(-1).nan_to_num()


def mask_lets_one_future_key_through(q, k):
    n = q.shape[1]
    return _scores(q, _grouped(q, k)).masked_fill(torch.ones(n, n, dtype=torch.bool).triu(2), float("-inf")).softmax(-1)


def q_and_k_swapped(q, k):
    return _causal(_scores(q, _grouped(q, k)).transpose(-1, -2)).softmax(-1)


def group_size_hard_coded_to_3(q, k):
    k = k if k.shape[2] == q.shape[2] else k.repeat_interleave(3, dim=2)
    return _causal(_scores(q, k)).softmax(-1)


def only_batch_item_0(q, k):
    pattern = _causal(_scores(q[:1], _grouped(q[:1], k[:1]))).softmax(-1)
    return pattern.expand(q.shape[0], -1, -1, -1)


def absolute_scores(q, k):
    return _causal(_scores(q, _grouped(q, k)).abs()).softmax(-1)


PATTERN_WRONG = [no_mask, no_scale, softmax_over_queries, no_kv_repeat, repeat_instead_of_interleave,
                 mask_with_zero_not_minus_inf, scale_by_d_head_not_its_root, mask_hides_the_diagonal,
                 mask_lets_one_future_key_through, q_and_k_swapped, group_size_hard_coded_to_3, only_batch_item_0,
                 absolute_scores]


@pytest.mark.parametrize("wrong", PATTERN_WRONG)
def test_causal_pattern_mistakes_fail(wrong):
    result = l01.check_causal_pattern(wrong)
    assert result.status == FAILED, wrong.__name__


def test_causal_pattern_reference_passes():
    assert l01.check_causal_pattern(l01.reference_causal_pattern).status == PASSED


def test_causal_pattern_loop_with_matmul_passes():
    def loops(q, k):
        batch, pos, heads, d_head = q.shape
        group = heads // k.shape[2]
        out = torch.zeros(batch, heads, pos, pos)
        for b in range(batch):
            for h in range(heads):
                scores = q[b, :, h] @ k[b, :, h // group].T / d_head ** 0.5
                scores = scores + torch.full((pos, pos), float("-inf")).triu(1)
                out[b, h] = torch.softmax(scores, dim=-1)
        return out
    assert l01.check_causal_pattern(loops).status == PASSED


def test_causal_pattern_gqa_mistake_gets_the_grouping_hint():
    result = l01.check_causal_pattern(repeat_instead_of_interleave)
    assert "repeat_interleave" in result.message and "grouped-query" in result.message


def test_reference_pattern_matches_the_model(smollm2):
    _, cache = smollm2.run_with_cache("The cat sat on the mat because the cat was tired.")
    for layer in (0, 17):
        got = l01.reference_causal_pattern(cache[f"blocks.{layer}.attn.hook_rot_q"], cache[f"blocks.{layer}.attn.hook_rot_k"])
        assert torch.allclose(got, cache[f"blocks.{layer}.attn.hook_pattern"], atol=1e-5)


def off_by_one_self(pattern):
    return pattern.diagonal(offset=0, dim1=-2, dim2=-1)[..., 2:].mean((0, 2))


def off_by_one_two_back(pattern):
    return pattern.diagonal(offset=-2, dim1=-2, dim2=-1)[..., 1:].mean((0, 2))


def includes_query_0(pattern):
    return pattern.roll(1, dims=-1).diagonal(dim1=-2, dim2=-1).mean((0, 2))


def includes_query_1(pattern):
    return pattern.diagonal(offset=-1, dim1=-2, dim2=-1).mean((0, 2))


def forgets_batch_mean(pattern):
    return pattern.diagonal(offset=-1, dim1=-2, dim2=-1)[..., 1:].mean(-1)[0]


def diagonal_above(pattern):
    return pattern.diagonal(offset=1, dim1=-2, dim2=-1)[..., 1:].mean((0, 2))


def drops_the_last_query(pattern):
    return pattern.diagonal(offset=-1, dim1=-2, dim2=-1)[..., 1:-1].mean((0, 2))


def skips_query_2_too(pattern):
    return pattern.diagonal(offset=-1, dim1=-2, dim2=-1)[..., 2:].mean((0, 2))


def mean_over_heads_not_batch(pattern):
    return pattern.diagonal(offset=-1, dim1=-2, dim2=-1)[..., 1:].mean((1, 2))


def sums_instead_of_mean(pattern):
    return pattern.diagonal(offset=-1, dim1=-2, dim2=-1)[..., 1:].sum(2).mean(0)


def max_over_queries(pattern):
    return pattern.diagonal(offset=-1, dim1=-2, dim2=-1)[..., 1:].amax(2).mean(0)


SCORE_WRONG = [off_by_one_self, off_by_one_two_back, includes_query_0, includes_query_1, forgets_batch_mean,
               diagonal_above, drops_the_last_query, skips_query_2_too, mean_over_heads_not_batch,
               sums_instead_of_mean, max_over_queries]


@pytest.mark.parametrize("wrong", SCORE_WRONG)
def test_previous_token_score_mistakes_fail(wrong):
    assert l01.check_previous_token_score(wrong).status == FAILED, wrong.__name__


def test_previous_token_score_reference_passes():
    assert l01.check_previous_token_score(l01.reference_previous_token_score).status == PASSED


def test_previous_token_score_vectorised_answer_passes():
    def diagonal_answer(pattern):
        return pattern.diagonal(offset=-1, dim1=-2, dim2=-1)[..., 1:].mean((0, 2))
    assert l01.check_previous_token_score(diagonal_answer).status == PASSED


def test_previous_token_score_loop_answer_passes():
    def loops(pattern):
        batch, heads, pos, _ = pattern.shape
        total = torch.zeros(heads)
        for b in range(batch):
            for q in range(2, pos):
                total += pattern[b, :, q, q - 1]
        return total / (batch * (pos - 2))
    assert l01.check_previous_token_score(loops).status == PASSED


def test_query_mistakes_get_the_query_hint():
    assert "queries 2..pos-1" in l01.check_previous_token_score(includes_query_1).message


@pytest.mark.parametrize("checker", [l01.check_causal_pattern, l01.check_previous_token_score])
def test_stub_is_not_implemented(checker):
    def stub(*args):
        raise NotImplementedError("Exercise: write this function, then run the check below.")
    assert checker(stub).status == NOT_IMPLEMENTED


@pytest.mark.parametrize("checker", [l01.check_causal_pattern, l01.check_previous_token_score])
def test_raising_function_fails_without_raising(checker):
    def broken(*args):
        raise RuntimeError("boom")
    result = checker(broken)
    assert result.status == FAILED and "RuntimeError: boom" in result.message


# --- find_bracket_head: the finding is tested on held-out prompts ---------------------------------------------------

@pytest.mark.slow
def test_find_bracket_head_reference_passes_and_wrong_heads_fail(smollm2):
    assert l01.check_find_bracket_head(l01.reference_find_bracket_head, smollm2).status == PASSED
    # second-strongest opener-attender (27.7 attends ~0.5 but its ablation is a fraction of 26.6's)
    assert l01.check_find_bracket_head(lambda *a: (27, 7), smollm2).status == FAILED
    # a head that barely attends to the opener
    assert l01.check_find_bracket_head(lambda *a: (0, 0), smollm2).status == FAILED
    # the highest-attention head of the wrong query: attention from the opener itself (off by one / wrong position)
    def wrong_position(model, tokens, opener_pos, right, wrong):
        att = l01.opener_attention(model, tokens[:, :opener_pos + 2], opener_pos)
        return divmod(int(att.flatten().argmax()), model.cfg.n_heads)
    assert l01.check_find_bracket_head(wrong_position, smollm2).status == FAILED
