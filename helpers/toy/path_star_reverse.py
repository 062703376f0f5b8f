"""Task: the path-star task with the path written from the goal back to the source (lesson 05).

Same graphs, architecture and recipe as :mod:`helpers.toy.path_star`; only the written path is
reversed (``= g n3 n2 n1 s``). Every step is then a lookup the model can learn from the edge list
("which node has an edge to this one?"), because each node has exactly one parent: no step needs a
plan, and the model solves the task.
"""
from __future__ import annotations

import torch

from helpers.toy import path_star
from helpers.toy.path_star import PathExamples

CONFIG = dict(path_star.CONFIG)
TRAIN = dict(path_star.TRAIN)
DIRECTION = "reverse"


def make_examples(generator: torch.Generator, n: int) -> PathExamples:
    """n random path-star graphs with the path written reverse."""
    return path_star.make_examples(generator, n, DIRECTION)


def make_batch(generator: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [n, n_ctx], targets [n, n_ctx]): loss on the written path only."""
    examples = make_examples(generator, n)
    return examples.tokens, examples.targets


def log_metrics(model, generator: torch.Generator) -> dict:
    """Per-step accuracies for the training log."""
    return path_star.metrics_for(model, DIRECTION)
