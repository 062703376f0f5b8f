"""Task: the path-star task trained "teacherless" (Bachmann & Nagarajan 2024; lesson 05).

Same graphs, architecture and recipe as :mod:`helpers.toy.path_star`, the path written forwards,
but the path positions of the input hold a DUMMY token instead of the previous node: the model
must write every node of the path from the graph alone, in one pass, so the Clever-Hans lookup
(copy the edge after the previous node) is not available to it.
"""
from __future__ import annotations

import torch

from helpers.toy import path_star
from helpers.toy.path_star import PathExamples

CONFIG = dict(path_star.CONFIG)
TRAIN = dict(path_star.TRAIN)
DIRECTION = "teacherless"


def make_examples(generator: torch.Generator, n: int) -> PathExamples:
    """n random path-star graphs with the path written teacherless."""
    return path_star.make_examples(generator, n, DIRECTION)


def make_batch(generator: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [n, n_ctx], targets [n, n_ctx]): loss on the written path only."""
    examples = make_examples(generator, n)
    return examples.tokens, examples.targets


def log_metrics(model, generator: torch.Generator) -> dict:
    """Per-step accuracies for the training log."""
    return path_star.metrics_for(model, DIRECTION)
