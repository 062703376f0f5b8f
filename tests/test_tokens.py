"""Bad input to the tokenisation helpers gets a clear error naming the problem."""
from __future__ import annotations

import pytest

from helpers.errors import HookNameError, PromptError, TokenError
from helpers.tokens import check_hook_name, run_with_cache, single_token_id, to_tokens

pytestmark = pytest.mark.slow


def test_empty_prompt_is_refused(smollm2):
    with pytest.raises(PromptError, match="empty"):
        to_tokens(smollm2, "   ")


def test_over_long_prompt_names_the_context_window(smollm2):
    with pytest.raises(PromptError, match="8192 tokens"):
        to_tokens(smollm2, "word " * 9000)


def test_prompts_of_different_lengths_are_refused(smollm2):
    with pytest.raises(PromptError, match="different token lengths"):
        to_tokens(smollm2, ["The cat", "The cat sat on the mat"])


def test_multi_token_answer_shows_split_and_suggests_space(smollm2):
    with pytest.raises(TokenError, match=r"not one"):
        single_token_id(smollm2, "Parisian gate")
    with pytest.raises(TokenError, match="Did you mean ' Amsterdam'"):
        single_token_id(smollm2, "Amsterdam")


def test_single_token_answer_returns_its_id(smollm2):
    token = single_token_id(smollm2, " Paris")
    assert smollm2.tokenizer.decode([token]) == " Paris"


def test_misspelt_hook_suggests_the_real_one(smollm2):
    with pytest.raises(HookNameError, match="blocks.0.attn.hook_pattern"):
        check_hook_name(smollm2, "blocks.0.attn.hook_patern")


def test_hook_in_missing_layer_says_how_many_layers(smollm2):
    with pytest.raises(HookNameError, match="30 layers, numbered 0 to 29"):
        check_hook_name(smollm2, "blocks.30.hook_resid_post")


def test_run_with_cache_keeps_only_requested_hooks(smollm2):
    _, cache, tokens = run_with_cache(smollm2, "Hello there", names=["blocks.2.hook_resid_post"])
    assert "blocks.2.hook_resid_post" in cache
    assert cache["blocks.2.hook_resid_post"].shape == (1, tokens.shape[1], smollm2.cfg.d_model)
