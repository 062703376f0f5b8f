"""Attention helpers: patterns rebuilt from q/k match the model, head scores find planted heads, the explorer works."""
from __future__ import annotations

import pytest
import torch

from helpers import attention as A
from helpers.errors import MicroscopeError, PromptError, ShapeError
from helpers.widgets import ExplorerError, attention_explorer, token_html


def _uniform(n: int) -> torch.Tensor:
    return (torch.ones(n, n).tril() / torch.arange(1, n + 1)[:, None])[None, None]


def test_repeat_kv_groups_query_heads_in_order():
    k = torch.arange(3.0).view(1, 1, 3, 1)  # kv head i holds the value i
    assert A.repeat_kv(k, 9).flatten().tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_repeat_kv_rejects_uneven_groups():
    with pytest.raises(ShapeError, match="cannot share"):
        A.repeat_kv(torch.zeros(1, 2, 2, 4), 3)


def test_pattern_from_qk_is_causal_and_normalised():
    generator = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 5, 4, 8, generator=generator), torch.randn(2, 5, 2, 8, generator=generator)
    pattern = A.pattern_from_qk(q, k)
    assert pattern.shape == (2, 4, 5, 5)
    assert torch.allclose(pattern.sum(-1), torch.ones(2, 4, 5))
    assert pattern.triu(1).abs().max() == 0


def test_pattern_from_qk_rejects_mismatched_shapes():
    with pytest.raises(ShapeError, match="must be"):
        A.pattern_from_qk(torch.zeros(1, 5, 4, 8), torch.zeros(1, 6, 2, 8))


@pytest.mark.slow
def test_pattern_from_rotated_qk_matches_every_smollm2_head(smollm2):
    _, cache = smollm2.run_with_cache("Alice packed her red umbrella, and Alice forgot her red umbrella")
    for layer in range(smollm2.cfg.n_layers):
        rebuilt = A.pattern_from_qk(cache[f"blocks.{layer}.attn.hook_rot_q"], cache[f"blocks.{layer}.attn.hook_rot_k"])
        assert torch.allclose(rebuilt, cache[f"blocks.{layer}.attn.hook_pattern"], atol=1e-5), layer
    # Before rotary the keys and queries do not give the model's pattern: the lesson's point.
    unrotated = A.pattern_from_qk(cache["blocks.5.attn.hook_q"], cache["blocks.5.attn.hook_k"])
    assert (unrotated - cache["blocks.5.attn.hook_pattern"]).abs().max() > 0.05


def test_pattern_from_qk_matches_the_unrotated_toy(prev_token_model):
    tokens = torch.randint(0, 24, (2, 24), generator=torch.Generator().manual_seed(1))
    _, cache = prev_token_model.run_with_cache(tokens)
    rebuilt = A.pattern_from_qk(cache["blocks.0.attn.hook_q"], cache["blocks.0.attn.hook_k"])
    assert torch.allclose(rebuilt, cache["blocks.0.attn.hook_pattern"], atol=1e-5)


@pytest.mark.slow
def test_head_writes_sum_to_the_attention_output(smollm2):
    _, cache = smollm2.run_with_cache("The cat sat on the mat.")
    writes = A.head_writes(cache["blocks.3.attn.hook_z"], smollm2.W_O[3].detach())
    assert torch.allclose(writes.sum(2), cache["blocks.3.hook_attn_out"], atol=1e-4)


def test_head_writes_rejects_mismatched_heads():
    with pytest.raises(ShapeError):
        A.head_writes(torch.zeros(1, 2, 3, 4), torch.zeros(2, 4, 8))


def test_scores_of_textbook_patterns():
    perfect = torch.zeros(1, 1, 6, 6)
    perfect[0, 0, 0, 0] = 1
    perfect[0, 0, torch.arange(1, 6), torch.arange(5)] = 1
    assert A.previous_token_score(perfect).item() == pytest.approx(1.0)
    resting = torch.zeros(1, 1, 6, 6)
    resting[..., 0] = 1
    assert A.first_token_score(resting).item() == pytest.approx(1.0)
    assert A.previous_token_score(resting).item() == pytest.approx(0.0)  # query 1 -> BOS is not counted
    # A uniform head: queries 2..5 put 1/(q+1) on their previous token.
    assert A.previous_token_score(_uniform(6)).item() == pytest.approx(sum(1 / (q + 1) for q in range(2, 6)) / 4)


def test_induction_and_duplicate_masks_on_a_repeat():
    tokens = torch.tensor([[1, 7, 8, 9, 7, 8, 9]])
    dup, ind = A.duplicate_token_mask(tokens)[0], A.induction_mask(tokens)[0]
    assert dup[4, 1] and dup[5, 2] and not dup[4, 2]
    assert ind[4, 2] and ind[5, 3] and not ind[4, 1]


def test_head_scores_find_the_planted_previous_token_heads(prev_token_model):
    tokens = torch.randint(0, 24, (4, 24), generator=torch.Generator().manual_seed(0))
    scores = A.head_scores(prev_token_model, tokens, ("previous-token", "first-token"))
    assert scores["previous-token"].shape == (1, 2)
    assert scores["previous-token"].min() > 0.6 > scores["first-token"].max()


def test_head_scores_rejects_unknown_kinds(prev_token_model):
    with pytest.raises(A.ScoreNameError, match="induction"):
        A.head_scores(prev_token_model, torch.zeros(1, 5, dtype=torch.long), ("inducton",))
    assert issubclass(A.ScoreNameError, MicroscopeError)


def test_head_scores_rejects_bad_token_shapes(prev_token_model):
    with pytest.raises(ShapeError):
        A.head_scores(prev_token_model, torch.zeros(5, dtype=torch.long))


@pytest.mark.slow
def test_repeated_random_tokens_repeat_once_and_start_with_bos(smollm2):
    tokens = A.repeated_random_tokens(smollm2, 3, 10, torch.Generator().manual_seed(0))
    assert tokens.shape == (3, 21)
    assert (tokens[:, 0] == smollm2.tokenizer.bos_token_id).all()
    assert torch.equal(tokens[:, 1:11], tokens[:, 11:])
    assert all(len(set(row[1:11].tolist())) == 10 for row in tokens)
    assert tokens[:, 1:].min() > max(smollm2.tokenizer.all_special_ids)


def test_top_heads_are_sorted():
    scores = torch.tensor([[0.1, 0.9], [0.5, 0.2]])
    assert [(l, h) for l, h, _ in A.top_heads(scores, 3)] == [(0, 1), (1, 0), (1, 1)]


def test_plots_are_titled_and_labelled():
    ax = A.plot_pattern(_uniform(3)[0, 0], ["<s>", "a", "b"], title="uniform")
    assert ax.get_title() == "uniform" and ax.get_xlabel() and ax.get_ylabel()
    fig = A.plot_layer_patterns(_uniform(3)[0].expand(4, 3, 3), ["<s>", "a", "b"], layer=2)
    assert "Layer 2" in fig._suptitle.get_text()
    assert [ax.get_title() for ax in fig.axes[:4]] == ["head 2.0", "head 2.1", "head 2.2", "head 2.3"]
    with pytest.raises(ShapeError, match="one row per token"):
        A.plot_pattern(_uniform(3)[0, 0], ["a", "b"])


def test_token_html_escapes_tokens_and_shows_the_query_row():
    html = token_html(_uniform(3)[0, 0], ["<|im_start|>", " a<b", " c"], query=2, uid="x")
    assert "<|im_start|>" not in html and "&lt;|im_start|&gt;" in html and "a&lt;b" in html
    assert "#x .k0 {background: rgba(33, 113, 181, 0.33)}" in html  # query 2 spreads 1/3 over 3 keys
    assert "#x .strip:has(.q1:hover) .k1" in html  # hovering token 1 shows its own row


@pytest.mark.slow
def test_explorer_redraws_when_a_slider_moves(smollm2):
    explorer = attention_explorer(smollm2, "The cat sat on the mat. The cat", layer=18, head=6)
    _, controls, text, heatmap = explorer.children
    layer_slider, head_slider, query_box = controls.children
    before_image, before_text = bytes(heatmap.value), text.value
    assert before_image.startswith(b"\x89PNG") and "attends most to" in before_text
    layer_slider.value = 1
    assert bytes(heatmap.value) != before_image and text.value != before_text
    query_box.children[0].value = 3
    assert "Query 3 ' sat'" in text.value


@pytest.mark.slow
@pytest.mark.parametrize("kwargs, problem", [({"layer": 30}, "layer must be"), ({"head": -1}, "head must be"),
                                             ({"query": 99}, "query must be")])
def test_explorer_rejects_choices_out_of_range(smollm2, kwargs, problem):
    with pytest.raises(ExplorerError, match=problem):
        attention_explorer(smollm2, "The cat sat", **kwargs)


@pytest.mark.slow
def test_explorer_rejects_an_empty_prompt(smollm2):
    with pytest.raises(PromptError):
        attention_explorer(smollm2, "  ")


def test_score_without_eligible_queries_names_the_problem():
    tokens = torch.arange(6)[None]  # no token repeats, so no query can show induction
    pattern = torch.full((1, 2, 6, 6), 1 / 6)
    with pytest.raises(MicroscopeError, match="no repeated tokens"):
        A.induction_score(pattern, tokens)
