"""Task: continue a repeated segment. Plants a previous-token head and an induction head in a 2-layer model.

Each sequence is BOS followed by uniform random tokens, except that one segment (random length) is
copied to a later place (random start, random gap). Inside the second copy the next token is
predictable from the first copy and from nothing else; everywhere else it is noise. Because the
offset between the copies changes from sequence to sequence, no fixed positional rule ("copy the
token 19 back") solves it: the model has to find the earlier occurrence of the current token by
content and copy what followed it. That is the induction algorithm, and an attention-only model
needs two layers for it (lesson 02 shows why).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from helpers.attention import induction_score, previous_token_score
from helpers.induction import RepeatExamples, make_repeat_examples, next_token_batch, repeat_losses

CONFIG = dict(
    n_layers=2, d_model=64, n_heads=2, d_head=32, d_vocab=128, n_ctx=64,
    attn_only=True, normalization_type=None, positional_embedding_type="standard", act_fn="gelu",
)
TRAIN = dict(steps=1500, batch_size=64, lr=5e-3, warmup=100, seed=0)
SEGMENT_LENGTHS = (8, 31)  # inclusive range of the repeated segment's length
OFFSET = None  # random gap between the copies
EVAL_SEED, EVAL_SIZE = 12345, 128


def make_examples(generator: torch.Generator, n: int) -> RepeatExamples:
    """n training-distribution sequences with their first/second-copy masks."""
    return make_repeat_examples(generator, n, CONFIG["n_ctx"], CONFIG["d_vocab"], SEGMENT_LENGTHS, OFFSET)


def make_batch(generator: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [n, n_ctx], next-token targets [n, n_ctx], -100 at the last position)."""
    return next_token_batch(make_examples(generator, n).tokens)


def native_patterns(model, tokens: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(logits, [pattern [batch, head, q, k] per layer]) from a raw native model (no bridge during training)."""
    patterns: list[torch.Tensor] = []
    handles = [layer.attn.register_forward_hook(lambda module, args, out: patterns.append(out[1]))
               for layer in model.layers]
    try:
        with torch.no_grad():
            logits = model(tokens)
    finally:
        for handle in handles:
            handle.remove()
    return logits, patterns


def metrics_for(model, make: Callable[[torch.Generator, int], RepeatExamples]) -> dict:
    """Losses on both copies and the best previous-token (layer 0) and induction (last layer) head scores."""
    # A fixed held-out batch: the log is comparable from step to step and the training stream is untouched.
    examples = make(torch.Generator().manual_seed(EVAL_SEED), EVAL_SIZE)
    was_training = model.training
    model.eval()
    logits, patterns = native_patterns(model, examples.tokens)
    model.train(was_training)
    return {**{k: round(v, 4) for k, v in repeat_losses(logits, examples).items()},
            "prev_token": round(previous_token_score(patterns[0]).max().item(), 4),
            "induction": round(induction_score(patterns[-1], examples.tokens).max().item(), 4)}


def log_metrics(model, generator: torch.Generator) -> dict:
    """Per-step metrics for the training log (the training generator is not used)."""
    return metrics_for(model, make_examples)
