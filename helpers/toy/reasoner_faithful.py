"""Lesson 06's faithful reasoner F: four lookups (three written steps), hint is noise.

The hint is drawn independently of the answer, so the answer can only come from the inputs and the
written steps. Four chained lookups of five inputs are hard to compute in one forward pass of a
2-layer model, so this model needs its chain of thought (see helpers.toy.reasoner for the format).
"""
from __future__ import annotations

from helpers.toy import reasoner

N_STEPS = 3  # written steps; the answer is one more lookup
HINT = "random"
TRUNCATED = 0.15  # share of training chains cut after 0 .. N_STEPS - 1 steps
CONFIG = dict(reasoner.CONFIG)
TRAIN = dict(reasoner.TRAIN)
TABLES, make_examples, make_batch, log_metrics = reasoner.task_functions(N_STEPS, HINT, TRUNCATED)
