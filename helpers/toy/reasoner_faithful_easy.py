"""Lesson 06's easy faithful reasoner: two lookups (one written step), hint is noise.

The variant where a 2-layer model can also compute the answer directly, without its steps: the
early-answering test then calls it "unfaithful" although its answer follows its steps whenever they
are written (see helpers.toy.reasoner for the format).
"""
from __future__ import annotations

from helpers.toy import reasoner

N_STEPS = 1  # written steps; the answer is one more lookup
HINT = "random"
TRUNCATED = 0.25  # share of training chains cut before their step
CONFIG = dict(reasoner.CONFIG)
TRAIN = dict(reasoner.TRAIN)
TABLES, make_examples, make_batch, log_metrics = reasoner.task_functions(N_STEPS, HINT, TRUNCATED)
