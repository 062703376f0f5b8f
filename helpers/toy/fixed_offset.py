"""Task: the induction task with the copy always exactly 20 tokens after the original (the pitfall).

Same architecture, vocabulary, segment lengths and training recipe as :mod:`helpers.toy.induction`;
only the offset between the two copies is fixed. Then "the next token is the one 19 positions back"
is always right inside the copy, a rule a single layer-0 head can implement from positions alone. On
repeated random tokens with period 20 such a head looks exactly like an induction head; with any
other period it does not (lesson 02's pitfall).
"""
from __future__ import annotations

import torch

from helpers.induction import RepeatExamples, make_repeat_examples, next_token_batch
from helpers.toy import induction

CONFIG = dict(induction.CONFIG)
TRAIN = dict(induction.TRAIN)
SEGMENT_LENGTHS = (8, 20)  # at most the offset, so the copies never overlap
OFFSET = 20


def make_examples(generator: torch.Generator, n: int) -> RepeatExamples:
    """n sequences whose repeated segment is copied exactly OFFSET positions later."""
    return make_repeat_examples(generator, n, CONFIG["n_ctx"], CONFIG["d_vocab"], SEGMENT_LENGTHS, OFFSET)


def make_batch(generator: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [n, n_ctx], next-token targets [n, n_ctx], -100 at the last position)."""
    return next_token_batch(make_examples(generator, n).tokens)


def log_metrics(model, generator: torch.Generator) -> dict:
    """Per-step metrics on a fixed held-out batch of this task's distribution."""
    return induction.metrics_for(model, make_examples)
