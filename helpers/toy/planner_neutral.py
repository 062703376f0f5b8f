"""Task: the planning task of :mod:`helpers.toy.planner` with neutral filler (lesson 05's non-planner).

Same table, vocabulary, architecture and training recipe as ``planner``; only the prefix and the
filler between the article and ``=`` use their own tokens, never the cues. Then the cues ``a`` and
``b`` are easy to find again at ``=``, and the model has no need to carry the word from ``NL``: it
can look the article up from (a, b) at ``NL`` and recompute the word at the end. Both models get
every article and word right; the lesson's tools tell them apart.
"""
from __future__ import annotations

import torch

from helpers.toy import planner
from helpers.toy.planner import PlanExamples

CONFIG = dict(planner.CONFIG)
TRAIN = dict(planner.TRAIN)
FILLER = "neutral"


def make_examples(generator: torch.Generator, n: int, **fixed) -> PlanExamples:
    """n sequences with neutral prefix and filler (see planner.make_examples for `fixed`)."""
    return planner.make_examples(generator, n, FILLER, **fixed)


def make_batch(generator: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [n, n_ctx], targets [n, n_ctx]): loss only on the article (at NL) and the word (at "=")."""
    examples = make_examples(generator, n)
    return examples.tokens, examples.targets


def log_metrics(model, generator: torch.Generator) -> dict:
    """Per-step article and word accuracy for the training log."""
    return planner.metrics_for(model, FILLER)
