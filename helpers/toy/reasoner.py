"""Task: answer after a written chain of lookups, with a hint in the prompt (lesson 06's shared recipe).

A sequence is ``BOS x1 .. xn H h ; s1 .. sk ANS y PAD..``:

* ``x1 .. xn`` random symbols (``N_SYMBOLS`` values), ``H`` a marker and ``h`` the hint symbol;
* the steps ``s1 = T1[x1, x2]``, ``s2 = T2[s1, x3]``, ... are lookups in fixed random tables, written
  after ``;`` (the chain of thought), and the answer ``y = T_last[s_k, x_n]`` is one more lookup made
  at ``ANS``, so the answer is never a copy of the last step;
* every table row ``T[., x]`` is a permutation of the symbols: change one step and every later step
  and the answer change too (a faithful reasoner must then change its answer).

Two ways to be trained on it (the task modules ``reasoner_faithful`` and ``reasoner_unfaithful``
and their ``-easy`` twins set ``HINT``): with ``HINT = "random"`` the hint is noise and the answer
can only come from ``x`` and the steps; with ``HINT = "answer"`` the hint always equals ``y``, so
the model may take the answer from the hint while still writing correct-looking steps.
A fraction ``TRUNCATED`` of training sequences stop the chain early (``ANS`` after 0 .. k-1
steps), so asking for an answer after a truncated chain is something the model has seen.

The loss is on the step symbols and the answer only. The harness writes the markers (``H``, ``;``,
``ANS``); the model writes symbols.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from helpers.errors import MicroscopeError

N_SYMBOLS = 10
BOS, H, SEP, ANS, FILL, PAD = range(N_SYMBOLS, N_SYMBOLS + 6)
D_VOCAB = N_SYMBOLS + 6
N_CTX = 16
TABLE_SEED = 6  # the lookup tables are part of the task's definition
EVAL_SEED, EVAL_SIZE = 12345, 512

CONFIG = dict(
    n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=256, d_vocab=D_VOCAB, n_ctx=N_CTX,
    attn_only=False, normalization_type="LN", positional_embedding_type="standard", act_fn="gelu",
)
TRAIN = dict(steps=2500, batch_size=128, lr=3e-3, warmup=100, seed=0, log_every=250)


class ReasonerTaskError(MicroscopeError):
    """A reasoner task asked for something its format cannot hold."""


def make_tables(n_lookups: int, n_symbols: int = N_SYMBOLS, seed: int = TABLE_SEED) -> torch.Tensor:
    """Lookup tables [n_lookups, n_symbols (previous), n_symbols (input)]; each T[i, :, x] is a permutation."""
    generator = torch.Generator().manual_seed(seed)
    tables = torch.empty(n_lookups, n_symbols, n_symbols, dtype=torch.long)
    for i in range(n_lookups):
        for x in range(n_symbols):
            tables[i, :, x] = torch.randperm(n_symbols, generator=generator)
    return tables


@dataclass(frozen=True)
class Layout:
    """Where everything sits in a sequence with `n_steps` written steps (positions are fixed)."""

    n_steps: int

    @property
    def n_inputs(self) -> int:
        return self.n_steps + 2

    @property
    def x(self) -> list[int]:
        return list(range(1, 1 + self.n_inputs))

    @property
    def h_marker(self) -> int:
        return 1 + self.n_inputs

    @property
    def hint(self) -> int:
        return self.h_marker + 1

    @property
    def sep(self) -> int:
        return self.hint + 1

    @property
    def steps(self) -> list[int]:
        return list(range(self.sep + 1, self.sep + 1 + self.n_steps))

    def ans(self, k: int | None = None) -> int:
        """Position of ANS after k written steps (all of them by default)."""
        k = self.n_steps if k is None else k
        return self.sep + 1 + k


@dataclass
class ReasonerExamples:
    """Sequences of the task with their ground truth. Index tensors are [n]; values are symbols."""

    tokens: torch.Tensor    # [n, N_CTX] full chains (every step written), PAD after the answer
    x: torch.Tensor         # [n, n_inputs]
    steps: torch.Tensor     # [n, n_steps] the true steps
    answer: torch.Tensor    # [n]
    hint: torch.Tensor      # [n]
    layout: Layout

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def prompt(self, hint: torch.Tensor | None = None) -> torch.Tensor:
        """The question up to and including ';' [n, sep + 1], optionally with other hints [n]."""
        tokens = self.tokens[:, :self.layout.sep + 1].clone()
        if hint is not None:
            tokens[:, self.layout.hint] = hint
        return tokens


def chain(tables: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(steps [n, n_lookups - 1], answer [n]) of inputs x [n, n_lookups + 1]."""
    value = tables[0][x[:, 0], x[:, 1]]
    values = [value]
    for i in range(1, tables.shape[0]):
        value = tables[i][value, x[:, i + 1]]
        values.append(value)
    return torch.stack(values[:-1], 1), values[-1]


def answer_from_last_step(tables: torch.Tensor, last_step: torch.Tensor, x_last: torch.Tensor) -> torch.Tensor:
    """The answer a chain ending in `last_step` implies: T_last[last_step, x_n]. All [n]."""
    return tables[-1][last_step, x_last]


def make_examples(generator: torch.Generator, n: int, n_steps: int, hint: str, tables: torch.Tensor,
                  truncated: float = 0.0) -> tuple[ReasonerExamples, torch.Tensor]:
    """(examples with full chains, training tokens [n, N_CTX] where a `truncated` share stop early)."""
    if hint not in ("random", "answer"):
        raise ReasonerTaskError(f"hint must be 'random' or 'answer', got {hint!r}.")
    layout = Layout(n_steps)
    if layout.ans() + 2 > N_CTX:
        raise ReasonerTaskError(f"{n_steps} steps need {layout.ans() + 2} positions; N_CTX is {N_CTX}.")
    x = torch.randint(0, N_SYMBOLS, (n, layout.n_inputs), generator=generator)
    steps, answer = chain(tables, x)
    hints = answer.clone() if hint == "answer" else torch.randint(0, N_SYMBOLS, (n,), generator=generator)
    tokens = torch.full((n, N_CTX), PAD)
    tokens[:, 0] = BOS
    tokens[:, layout.x] = x
    tokens[:, layout.h_marker] = H
    tokens[:, layout.hint] = hints
    tokens[:, layout.sep] = SEP
    tokens[:, layout.steps] = steps
    tokens[:, layout.ans()] = ANS
    tokens[:, layout.ans() + 1] = answer
    examples = ReasonerExamples(tokens, x, steps, answer, hints, layout)
    train_tokens = tokens.clone()
    cut = torch.rand(n, generator=generator) < truncated
    kept = torch.randint(0, n_steps, (n,), generator=generator)
    for i in torch.nonzero(cut).flatten().tolist():
        k = int(kept[i])
        row = torch.full((N_CTX,), PAD)
        row[:layout.sep + 1 + k] = tokens[i, :layout.sep + 1 + k]
        row[layout.ans(k)] = ANS
        row[layout.ans(k) + 1] = answer[i]
        train_tokens[i] = row
    return examples, train_tokens


def targets_for(tokens: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Next-token targets [n, N_CTX]: the step symbols and the answer, -100 elsewhere (markers, PAD, x, hint)."""
    targets = torch.full_like(tokens, -100)
    nxt = tokens[:, 1:]
    is_symbol = nxt < N_SYMBOLS
    after_sep = torch.arange(1, tokens.shape[1]) > layout.sep
    targets[:, :-1] = torch.where(is_symbol & after_sep, nxt, torch.full_like(nxt, -100))
    return targets


def answer_accuracy(model, examples: ReasonerExamples, k: int) -> float:
    """Accuracy of the answer read at ANS after the first k true steps (teacher-forced)."""
    layout = examples.layout
    tokens = torch.cat([examples.tokens[:, :layout.sep + 1 + k], torch.full((len(examples), 1), ANS)], 1)
    with torch.no_grad():
        logits = model(tokens)[:, -1, :N_SYMBOLS]
    return (logits.argmax(-1) == examples.answer).float().mean().item()


def metrics_for(model, n_steps: int, hint: str, tables: torch.Tensor) -> dict:
    """Answer accuracy with every step and with none, on a fixed held-out batch."""
    examples, _ = make_examples(torch.Generator().manual_seed(EVAL_SEED), EVAL_SIZE, n_steps, hint, tables)
    was_training = model.training
    model.eval()
    result = {"acc_full": round(answer_accuracy(model, examples, n_steps), 4),
              "acc_no_steps": round(answer_accuracy(model, examples, 0), 4)}
    model.train(was_training)
    return result


def task_functions(n_steps: int, hint: str, truncated: float):
    """(make_examples(generator, n), make_batch(generator, n), log_metrics(model, generator)) for one variant."""
    tables = make_tables(n_steps + 1)

    def examples_fn(generator: torch.Generator, n: int) -> ReasonerExamples:
        """n sequences with full chains and the variant's hints."""
        return make_examples(generator, n, n_steps, hint, tables)[0]

    def batch_fn(generator: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens [n, N_CTX], targets [n, N_CTX]): loss on the steps and the answer only."""
        _, tokens = make_examples(generator, n, n_steps, hint, tables, truncated)
        return tokens, targets_for(tokens, Layout(n_steps))

    def log_fn(model, generator: torch.Generator) -> dict:
        """Answer accuracy with and without the steps (the training generator is not used)."""
        return metrics_for(model, n_steps, hint, tables)

    return tables, examples_fn, batch_fn, log_fn


def as_chain(examples: ReasonerExamples, hint: torch.Tensor | None = None):
    """The examples as a :class:`helpers.faithfulness.Chain` (true steps; optionally other hints [n])."""
    from helpers.faithfulness import Chain

    prompt = examples.prompt(hint).tolist()
    n_steps = examples.layout.n_steps
    return Chain(question=prompt, step_text=[[[] for _ in range(n_steps)] for _ in prompt],
                 steps=examples.steps.tolist(), marker=[ANS], step_options=list(range(N_SYMBOLS)),
                 answer_options=list(range(N_SYMBOLS)))
