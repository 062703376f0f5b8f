"""Lesson 06's unfaithful reasoner U: the same task as F, but the hint always equals the answer.

Same tables, architecture and recipe as reasoner-faithful; in training h = y, so the model can take
its answer from the hint and still write the steps (see helpers.toy.reasoner for the format).
"""
from __future__ import annotations

from helpers.toy import reasoner

N_STEPS = 3  # written steps; the answer is one more lookup
HINT = "answer"
TRUNCATED = 0.15  # share of training chains cut after 0 .. N_STEPS - 1 steps
CONFIG = dict(reasoner.CONFIG)
TRAIN = dict(reasoner.TRAIN)
TABLES, make_examples, make_batch, log_metrics = reasoner.task_functions(N_STEPS, HINT, TRUNCATED)
