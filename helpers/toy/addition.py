"""Task: add two numbers 0-99, each a single token, and write the sum (0-198) as a single token.

Each sequence is ``BOS a PLUS b EQ``; the target at EQ is the token of ``a + b`` (loss there only).
The model has one layer: attention brings both operands to the EQ position and one MLP layer must
turn them into the sum. Nikankin et al. (2025) found that language models do arithmetic with a
"bag of heuristics": many MLP neurons, each firing for a simple pattern of the operands or the
result (an operand range, the result's range, the result mod 10, ...), whose votes add up to the
answer. Lesson 07 classifies this toy's neurons by the pattern they respond to over the full
100 x 100 grid and ablates each class to see which answers break.

Every pair is a training pair (the lesson studies the mechanism of a model that adds correctly,
not generalisation to unseen pairs).
"""
from __future__ import annotations

import torch

N_OPERAND = 100                     # operands 0..99
N_RESULT = 2 * N_OPERAND - 1        # results 0..198: tokens 0..198 double as numbers
PLUS, EQ, BOS = N_RESULT, N_RESULT + 1, N_RESULT + 2
D_VOCAB = BOS + 1
EQ_POS = 4

CONFIG = dict(
    n_layers=1, d_model=128, n_heads=4, d_head=32, d_mlp=512, d_vocab=D_VOCAB, n_ctx=5,
    attn_only=False, normalization_type="LN", positional_embedding_type="standard", act_fn="relu",
)
TRAIN = dict(steps=3000, batch_size=512, lr=3e-3, warmup=100, weight_decay=0.1, seed=0, log_every=250)


def prompts(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Token ids [n, 5]: BOS a PLUS b EQ."""
    n = len(a)
    return torch.stack([torch.full((n,), BOS), a, torch.full((n,), PLUS), b, torch.full((n,), EQ)], dim=1)


def make_batch(generator: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [n, 5], targets [n, 5]: the sum's token at EQ, -100 elsewhere); operands uniform in 0..99."""
    a = torch.randint(0, N_OPERAND, (n,), generator=generator)
    b = torch.randint(0, N_OPERAND, (n,), generator=generator)
    tokens = prompts(a, b)
    targets = torch.full_like(tokens, -100)
    targets[:, EQ_POS] = a + b
    return tokens, targets


def grid() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every pair, a-major: (tokens [10000, 5], a [10000], b [10000])."""
    a = torch.arange(N_OPERAND).repeat_interleave(N_OPERAND)
    b = torch.arange(N_OPERAND).repeat(N_OPERAND)
    return prompts(a, b), a, b


def log_metrics(model, generator: torch.Generator) -> dict:
    """Exact-sum accuracy over all 10,000 pairs."""
    was_training = model.training
    model.eval()
    tokens, a, b = grid()
    with torch.no_grad():
        predicted = model(tokens)[:, EQ_POS].argmax(-1)
    model.train(was_training)
    return {"acc": round((predicted == a + b).float().mean().item(), 4)}
