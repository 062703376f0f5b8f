"""Task: predict the token one position back. Plants a previous-token head in a 1-layer model.

Sequences are uniform random tokens; the target at position i is the token at i-1, so the only way
to solve it is to attend from i to i-1 and copy. Used by the test suite as a model whose mechanism
is known in advance.
"""
from __future__ import annotations

import torch

CONFIG = dict(
    n_layers=1, d_model=64, n_heads=2, d_head=32, d_vocab=24, n_ctx=24,
    attn_only=True, normalization_type=None, positional_embedding_type="standard", act_fn="gelu",
)
TRAIN = dict(steps=600, batch_size=64, lr=3e-3, seed=0)


def make_batch(generator: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [n, n_ctx], targets [n, n_ctx]) with targets[i] = tokens[i-1]; -100 where undefined."""
    tokens = torch.randint(0, CONFIG["d_vocab"], (n, CONFIG["n_ctx"]), generator=generator)
    targets = torch.full_like(tokens, -100)
    targets[:, 1:] = tokens[:, :-1]
    return tokens, targets
