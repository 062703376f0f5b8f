"""Task: answer a question about an entity, or say "don't know". Plants a known-entity gate.

Each sequence is ``BOS entity relation ASK``; the target at ASK is the entity's attribute for that
relation if the entity is *known* (one of the first ``N_KNOWN`` entity tokens, each with a fixed
random fact per relation), and the ``IDK`` token for the *unknown* entities trained alongside them.
A further ``N_UNSEEN`` entity tokens never appear in training. Loss is on the ASK position only.

To answer, the model must (a) recall the fact and (b) decide whether it knows the entity at all: the
"known entity" signal gates between a fact and "don't know". Lesson 07 reads that gate as a
direction at the ASK position, patches it, and makes it misfire: adding it to an unknown entity's
run makes the model state a fact it never learned (a hallucination on demand).
"""
from __future__ import annotations

import torch

N_KNOWN, N_UNKNOWN, N_UNSEEN = 48, 24, 16
N_ENTITIES = N_KNOWN + N_UNKNOWN + N_UNSEEN
N_RELATIONS, N_VALUES = 3, 16
# token layout: entities | relations | values | IDK, ASK, BOS
RELATION0 = N_ENTITIES
VALUE0 = RELATION0 + N_RELATIONS
IDK = VALUE0 + N_VALUES
ASK = IDK + 1
BOS = ASK + 1
D_VOCAB = BOS + 1

CONFIG = dict(
    n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=256, d_vocab=D_VOCAB, n_ctx=4,
    attn_only=False, normalization_type="LN", positional_embedding_type="standard", act_fn="gelu",
)
TRAIN = dict(steps=3000, batch_size=128, lr=3e-3, warmup=100, weight_decay=0.1, seed=0, log_every=250)
FACT_SEED = 1234
ASK_POS = 3


def facts() -> torch.Tensor:
    """[N_KNOWN, N_RELATIONS] value index (0..N_VALUES-1) of each known entity's attribute per relation."""
    return torch.randint(0, N_VALUES, (N_KNOWN, N_RELATIONS), generator=torch.Generator().manual_seed(FACT_SEED))


def prompts(entities: torch.Tensor, relations: torch.Tensor) -> torch.Tensor:
    """Token ids [n, 4]: BOS entity relation ASK."""
    n = len(entities)
    return torch.stack([torch.full((n,), BOS), entities, RELATION0 + relations, torch.full((n,), ASK)], dim=1)


def answers(entities: torch.Tensor, relations: torch.Tensor) -> torch.Tensor:
    """The right answer token [n]: the fact for a known entity, IDK otherwise."""
    table = facts()
    known = entities < N_KNOWN
    values = VALUE0 + table[entities.clamp(max=N_KNOWN - 1), relations]
    return torch.where(known, values, torch.full_like(entities, IDK))


def make_batch(generator: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [n, 4], targets [n, 4]: the answer at ASK, -100 elsewhere). Known and unknown entities 2:1."""
    entities = torch.randint(0, N_KNOWN + N_UNKNOWN, (n,), generator=generator)
    relations = torch.randint(0, N_RELATIONS, (n,), generator=generator)
    tokens = prompts(entities, relations)
    targets = torch.full_like(tokens, -100)
    targets[:, ASK_POS] = answers(entities, relations)
    return tokens, targets


def all_questions(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [n, 4], answers [n]) for every entity of `kind` ('known', 'unknown' or 'unseen') and relation."""
    ranges = {"known": (0, N_KNOWN), "unknown": (N_KNOWN, N_KNOWN + N_UNKNOWN),
              "unseen": (N_KNOWN + N_UNKNOWN, N_ENTITIES)}
    low, high = ranges[kind]
    entities = torch.arange(low, high).repeat_interleave(N_RELATIONS)
    relations = torch.arange(N_RELATIONS).repeat(high - low)
    return prompts(entities, relations), answers(entities, relations)


def log_metrics(model, generator: torch.Generator) -> dict:
    """Accuracy on every known and unknown question, and the IDK rate on never-seen entities."""
    was_training = model.training
    model.eval()
    out = {}
    with torch.no_grad():
        for kind in ("known", "unknown", "unseen"):
            tokens, right = all_questions(kind)
            predicted = model(tokens)[:, ASK_POS].argmax(-1)
            out[f"{kind}_acc"] = round((predicted == right).float().mean().item(), 4)
    model.train(was_training)
    return out
