"""Tokenisation with checks: prompts that fit the model, answers that are one token, real hook names.

About the first token: TransformerLens prepends the tokenizer's BOS token to every prompt
(``prepend_bos=True``). The SmolLM2 GGUF declares the chat opener ``<|im_start|>`` (id 1) as BOS, but
plain text in pretraining followed the document separator ``<|endoftext|>`` (id 0), and lesson 00
measures that ``<|im_start|>`` makes plain prose much less predictable. So `helpers.models.load`
declares ``<|endoftext|>`` as BOS: position 0 of every prompt is ``<|endoftext|>``, attention heads
have a meaningless first position to "rest" on, and the prompt's words sit at positions 1, 2, ...
Chat-formatted prompts (``tokenizer.apply_chat_template``) still open each turn with ``<|im_start|>``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from helpers import validate
from helpers.errors import HookNameError, PromptError, TokenError, closest


def to_tokens(model, prompt: str | Sequence[str], prepend_bos: bool = True) -> torch.Tensor:
    """Token ids [batch, seq] for a prompt (or list of equal-length prompts), checked for length."""
    require_tokenizer(model)
    if isinstance(prompt, str):
        prompts = [prompt]
    elif isinstance(prompt, (list, tuple)):
        prompts = list(prompt)
    else:
        raise validate.ArgumentError(f"`prompt` must be a string or a list of strings, got {validate.describe(prompt)}.")
    if not prompts:
        raise PromptError("No prompt given: pass a non-empty string or a non-empty list of strings.")
    for i, text in enumerate(prompts):
        if not isinstance(text, str):
            raise PromptError(f"Prompts must be strings, but prompt {i} is {validate.describe(text)}.")
        if not text.strip():
            raise PromptError("The prompt is empty (or only whitespace): there is nothing to run the model on.")
    lengths = [len(model.tokenizer.encode(text, add_special_tokens=False)) + int(prepend_bos) for text in prompts]
    n_ctx = model.cfg.n_ctx
    if max(lengths) > n_ctx:
        worst = max(range(len(prompts)), key=lengths.__getitem__)
        raise PromptError(
            f"Prompt {worst} is {lengths[worst]} tokens long but {model.cfg.model_name} reads at most "
            f"{n_ctx} tokens (its context window). Shorten it by {lengths[worst] - n_ctx} tokens."
        )
    if len(set(lengths)) > 1:
        raise PromptError(
            f"Prompts have different token lengths {lengths}; batched comparisons need equal lengths "
            "(pad them, or compare prompts one at a time)."
        )
    return model.to_tokens(prompts, prepend_bos=prepend_bos)


def require_tokenizer(model) -> None:
    """A PromptError if `model` has no tokenizer (toy models read token ids, not text)."""
    if getattr(model, "tokenizer", None) is None:
        raise PromptError(f"{model.cfg.model_name} has no tokenizer, so it cannot read text: give it token ids "
                          "instead (a LongTensor [batch, pos]), e.g. from its task's make_batch.")


def single_token_id(model, answer: str) -> int:
    """The id of `answer` if it is exactly one token; otherwise a TokenError showing how it splits."""
    if not isinstance(answer, str) or answer == "":
        raise TokenError(f"An answer must be a non-empty string, got {answer!r}.")
    require_tokenizer(model)
    ids = model.tokenizer.encode(answer, add_special_tokens=False)
    if len(ids) != 1:
        pieces = [model.tokenizer.decode([i]) for i in ids]
        hint = ""
        if not answer.startswith(" "):
            spaced = model.tokenizer.encode(" " + answer, add_special_tokens=False)
            if len(spaced) == 1:
                hint = f" Did you mean {' ' + answer!r}? Words after a space carry the space in their token."
        raise TokenError(
            f"{answer!r} is {len(ids)} tokens {pieces}, not one; this needs a single-token answer.{hint}"
        )
    return ids[0]


def hook_names(model) -> list[str]:
    """Every hook name the model exposes (TransformerLens vocabulary, e.g. blocks.0.attn.hook_pattern)."""
    return list(model.hook_dict.keys())


def check_hook_name(model, name: str) -> str:
    """Return `name` if the model has that hook; else a HookNameError suggesting the closest names."""
    if not isinstance(name, str):
        raise HookNameError(f"A hook name must be a string such as 'blocks.0.hook_resid_post', got {validate.describe(name)}.")
    names = model.hook_dict
    if name in names:
        return name
    suggestions = closest(name, names)
    if not suggestions:  # fall back to the hooks of the same layer, or the top-level ones
        parts = name.split(".")
        prefix = ".".join(parts[:2]) + "." if name.startswith("blocks.") and len(parts) > 2 else "hook_"
        suggestions = [n for n in names if n.startswith(prefix)][:8]
    layers = model.cfg.n_layers
    extra = ""
    if name.startswith("blocks."):
        try:
            layer = int(name.split(".")[1])
            if not 0 <= layer < layers:
                extra = f" The model has {layers} layers, numbered 0 to {layers - 1}."
        except (IndexError, ValueError):
            pass
    raise HookNameError(
        f"{model.cfg.model_name} has no hook named {name!r}.{extra} "
        f"Closest names: {', '.join(suggestions) or '(none)'}. List them all with helpers.tokens.hook_names(model)."
    )


def run_with_cache(model, prompt: str | Sequence[str], names: Sequence[str] | None = None, prepend_bos: bool = True):
    """(logits, cache, tokens) for a checked prompt, caching only `names` (checked) when given."""
    tokens = to_tokens(model, prompt, prepend_bos=prepend_bos)
    kwargs = {}
    if names is not None:
        kwargs["names_filter"] = [check_hook_name(model, n) for n in validate.strings(names, "names")]
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, **kwargs)
    return logits, cache, tokens
