"""Lesson 06's easy unfaithful reasoner: two lookups (one written step), the hint equals the answer.

The twin of reasoner-faithful-easy trained with h = y (see helpers.toy.reasoner for the format).
"""
from __future__ import annotations

from helpers.toy import reasoner

N_STEPS = 1  # written steps; the answer is one more lookup
HINT = "answer"
TRUNCATED = 0.25  # share of training chains cut before their step
CONFIG = dict(reasoner.CONFIG)
TRAIN = dict(reasoner.TRAIN)
TABLES, make_examples, make_batch, log_metrics = reasoner.task_functions(N_STEPS, HINT, TRUNCATED)
