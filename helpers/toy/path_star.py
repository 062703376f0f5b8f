"""Task: find the path from the centre of a star graph to a goal leaf (Bachmann & Nagarajan 2024), written forwards.

A path-star graph has a centre ``s`` and ``DEGREE`` arms of ``ARM_LENGTH`` nodes each; node names
are random tokens, so every sequence is a new graph. The sequence is::

    BOS  u v  u v  ...  u v  |  s g  =  s n1 n2 n3 g

the edges (``u -> v``, pointing away from the centre) in a shuffled order, the source ``s`` and goal
``g``, then the path. The loss is on the path only. Written forwards, every step after the first is
easy: the next node is the one the current node has an edge to (a "Clever Hans" lookup that teacher
forcing rewards). The first step is the whole problem: which of the centre's neighbours leads to
``g``? That needs the path worked out backwards from ``g`` before the first node is written, and the
easy later steps give the model almost no gradient towards it, so it tends to guess (right about
1/DEGREE of the time). The twins: :mod:`helpers.toy.path_star_reverse` writes the path from ``g``
back to ``s`` (each step is then the lookup ``which node has an edge to this one``), and
:mod:`helpers.toy.path_star_teacherless` hides the path from the inputs, so the model must produce
every node from the graph alone (Bachmann & Nagarajan's "teacherless" fix).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from helpers.toy.planner import ToyTaskError

DEGREE, ARM_LENGTH, N_NODES = 2, 4, 24
BOS, SEP, SAY, DUMMY = 0, 1, 2, 3
NODE0 = 4
D_VOCAB = NODE0 + N_NODES

CONFIG = dict(
    n_layers=3, d_model=64, n_heads=4, d_head=16, d_mlp=256, d_vocab=D_VOCAB, n_ctx=26,
    attn_only=False, normalization_type="LN", positional_embedding_type="standard", act_fn="gelu",
)
TRAIN = dict(steps=1000, batch_size=128, lr=2e-3, warmup=100, seed=0, log_every=250)
DIRECTION = "forward"  # "forward", "reverse" or "teacherless"
EVAL_SEED, EVAL_SIZE = 12345, 512


@dataclass
class PathExamples:
    """Path-star sequences and their ground truth. Index tensors are [n]."""

    tokens: torch.Tensor      # [n, n_ctx] (inputs; DUMMY on the path for teacherless)
    targets: torch.Tensor     # [n, n_ctx]: the written path's next node, -100 elsewhere
    path: torch.Tensor        # [n, ARM_LENGTH + 1] node ids of s, n1, .., g (source first)
    first_options: torch.Tensor  # [n, DEGREE] the centre's neighbours, in edge-list order
    first_label: torch.Tensor    # [n] which of first_options is on the path (0..DEGREE-1)
    path_start: int           # position of the first written path token (after "=")

    def __len__(self) -> int:
        return self.tokens.shape[0]


def layout(degree: int = DEGREE, arm_length: int = ARM_LENGTH, n_nodes: int = N_NODES) -> dict[str, int]:
    """Positions of the sequence parts; a ToyTaskError if the graph cannot be built."""
    if degree < 2 or arm_length < 1:
        raise ToyTaskError(f"a path-star graph needs degree >= 2 and arm_length >= 1, got {degree} and {arm_length}.")
    needed = 1 + degree * arm_length
    if needed > n_nodes:
        raise ToyTaskError(f"degree {degree} x arm length {arm_length} needs {needed} distinct nodes but the vocabulary "
                           f"has {n_nodes}: lower the degree or arm length, or raise n_nodes.")
    n_edges = degree * arm_length
    sep = 1 + 2 * n_edges
    return {"n_edges": n_edges, "sep": sep, "say": sep + 3, "path_start": sep + 4,
            "length": sep + 4 + arm_length + 1}


def make_examples(generator: torch.Generator, n: int, direction: str | None = None) -> PathExamples:
    """n random path-star graphs with their path written `direction` ("forward", "reverse", "teacherless")."""
    direction = direction or DIRECTION
    if direction not in ("forward", "reverse", "teacherless"):
        raise ToyTaskError(f"direction must be 'forward', 'reverse' or 'teacherless', got {direction!r}.")
    parts = layout()
    if parts["length"] > CONFIG["n_ctx"]:
        raise ToyTaskError(f"sequences of {parts['length']} tokens do not fit n_ctx={CONFIG['n_ctx']}.")
    tokens = torch.full((n, CONFIG["n_ctx"]), DUMMY)
    targets = torch.full((n, CONFIG["n_ctx"]), -100)
    paths = torch.empty((n, ARM_LENGTH + 1), dtype=torch.long)
    options = torch.empty((n, DEGREE), dtype=torch.long)
    labels = torch.empty(n, dtype=torch.long)
    start = parts["path_start"]
    for i in range(n):
        nodes = NODE0 + torch.randperm(N_NODES, generator=generator)[:1 + DEGREE * ARM_LENGTH]
        centre, arms = nodes[0], nodes[1:].reshape(DEGREE, ARM_LENGTH)
        edges = [(centre, arm[0]) for arm in arms] + [(arm[j], arm[j + 1]) for arm in arms for j in range(ARM_LENGTH - 1)]
        order = torch.randperm(len(edges), generator=generator)
        edges = [edges[j] for j in order]
        goal_arm = int(torch.randint(DEGREE, (1,), generator=generator))
        path = torch.cat([centre[None], arms[goal_arm]])
        firsts = [int(v) for u, v in edges if int(u) == int(centre)]
        row = [BOS, *[int(t) for edge in edges for t in edge], SEP, int(centre), int(path[-1]), SAY]
        written = path if direction != "reverse" else path.flip(0)
        tokens[i, :len(row)] = torch.tensor(row)
        tokens[i, start:start + len(written)] = DUMMY if direction == "teacherless" else written
        targets[i, start - 1:start - 1 + len(written)] = written
        paths[i], options[i] = path, torch.tensor(firsts)
        labels[i] = firsts.index(int(path[1]))
    return PathExamples(tokens, targets, paths, options, labels, start)


def make_batch(generator: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [n, n_ctx], targets [n, n_ctx]): loss on the written path only."""
    examples = make_examples(generator, n)
    return examples.tokens, examples.targets


def step_accuracy(logits: torch.Tensor, examples: PathExamples) -> torch.Tensor:
    """Teacher-forced top-1 accuracy of each written path token: logits [n, pos, vocab] -> [ARM_LENGTH + 1]."""
    start = examples.path_start - 1
    span = slice(start, start + ARM_LENGTH + 1)
    return (logits[:, span].argmax(-1) == examples.targets[:, span]).float().mean(0)


def decode_path(model, examples: PathExamples, direction: str | None = None) -> torch.Tensor:
    """The model's own path [n, ARM_LENGTH + 1], source first: greedy decoding (one pass for teacherless)."""
    direction = direction or DIRECTION
    tokens = examples.tokens.clone()
    start = examples.path_start
    with torch.no_grad():
        if direction == "teacherless":
            written = model(tokens)[:, start - 1:start + ARM_LENGTH].argmax(-1)
        else:
            for j in range(ARM_LENGTH + 1):
                tokens[:, start + j] = model(tokens[:, :start + j])[:, -1].argmax(-1)
            written = tokens[:, start:start + ARM_LENGTH + 1]
    return written if direction != "reverse" else written.flip(1)


def metrics_for(model, direction: str) -> dict:
    """Teacher-forced first-step and later-step accuracy and greedy full-path accuracy on a fixed batch."""
    examples = make_examples(torch.Generator().manual_seed(EVAL_SEED), EVAL_SIZE, direction)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        steps = step_accuracy(model(examples.tokens), examples)
    full = (decode_path(model, examples, direction) == examples.path).all(1).float().mean()
    model.train(was_training)
    return {"steps": [round(v, 3) for v in steps.tolist()], "full_path": round(full.item(), 4)}


def log_metrics(model, generator: torch.Generator) -> dict:
    """Per-step accuracies for the training log."""
    return metrics_for(model, DIRECTION)
