"""Toy models of superposition (Elhage et al. 2022): n sparse features squeezed through m < n dimensions.

Each input has n features; each is 0 with probability ``sparsity`` and uniform on [0, 1] otherwise.
The model compresses x [n] to h = W x [m] and reconstructs x' = ReLU(W^T h + b) [n]; the loss weights
feature i's squared error by its importance I_i. Many independent models ("instances", one per
setting of sparsity and importance) train at once as one batched tensor, in a few seconds on a CPU.
Nothing is hidden: the data, the model and the loop are the functions below.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from helpers import validate
from helpers.errors import MicroscopeError


class SuperpositionError(MicroscopeError):
    """Bad settings for a toy superposition model."""


@dataclass
class ToySuperposition:
    """Trained instances: W [instances, m, n], b [instances, n], and their sparsity [instances] and importance [instances, n]."""

    W: torch.Tensor
    b: torch.Tensor
    sparsity: torch.Tensor
    importance: torch.Tensor

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """x' [batch, instances, n] from inputs x [batch, instances, n]."""
        hidden = torch.einsum("imn,bin->bim", self.W, x)
        return torch.relu(torch.einsum("imn,bim->bin", self.W, hidden) + self.b)


def _settings(sparsity, importance, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    sparsity = validate.tensor(sparsity, "sparsity", ndim=1, shape_doc="[instances]").float()
    if ((sparsity < 0) | (sparsity >= 1)).any():
        raise SuperpositionError(f"`sparsity` is the probability that a feature is zero: every value must be in "
                                 f"[0, 1), got min {sparsity.min().item():.3g}, max {sparsity.max().item():.3g}.")
    importance = validate.tensor(importance, "importance", ndim=2, shape_doc="[instances, n]").float()
    if importance.shape != (len(sparsity), n):
        raise SuperpositionError(f"`importance` must have shape [instances, n] = [{len(sparsity)}, {n}], got "
                                 f"{tuple(importance.shape)}. Give one importance per feature for every instance.")
    if (importance <= 0).any():
        raise SuperpositionError("`importance` must be positive: a feature with weight 0 is not in the loss at all.")
    return sparsity, importance


def sparse_features(generator: torch.Generator, batch: int, sparsity: torch.Tensor, n: int) -> torch.Tensor:
    """Inputs [batch, instances, n]: each feature uniform on [0, 1] with probability 1 - sparsity, else 0."""
    values = torch.rand(batch, len(sparsity), n, generator=generator)
    present = torch.rand(batch, len(sparsity), n, generator=generator) >= sparsity[None, :, None]
    return values * present


def train_toy(n: int, m: int, sparsity, importance, steps: int = 3000, batch: int = 1024, lr: float = 1e-2,
              seed: int = 0) -> ToySuperposition:
    """Train one toy model per (sparsity[i], importance[i]) at once; returns the trained instances."""
    n, m = validate.positive_int(n, "n"), validate.positive_int(m, "m")
    steps, batch = validate.positive_int(steps, "steps"), validate.positive_int(batch, "batch")
    if m > n:
        raise SuperpositionError(f"`m`={m} dimensions for `n`={n} features: superposition needs m < n "
                                 "(fewer dimensions than features).")
    sparsity, importance = _settings(sparsity, importance, n)
    generator = torch.Generator().manual_seed(seed)
    W = torch.nn.init.xavier_normal_(torch.empty(len(sparsity), m, n), generator=generator).requires_grad_()
    b = torch.zeros(len(sparsity), n, requires_grad=True)
    optimiser = torch.optim.AdamW([W, b], lr=lr, weight_decay=0.0)
    with torch.enable_grad():
        for _ in range(steps):
            x = sparse_features(generator, batch, sparsity, n)
            model = ToySuperposition(W, b, sparsity, importance)
            loss = (importance * (x - model.reconstruct(x)) ** 2).mean(0).sum()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return ToySuperposition(W.detach(), b.detach(), sparsity, importance)


def feature_norms(W: torch.Tensor) -> torch.Tensor:
    """||W_i|| [instances, n]: about 1 for a represented feature, about 0 for an ignored one."""
    return validate.tensor(W, "W", ndim=3, shape_doc="[instances, m, n]").norm(dim=1)


def interference(W: torch.Tensor) -> torch.Tensor:
    """Largest |cos| between feature i's column and any other represented column [instances, n] (0 = own dimension)."""
    W = validate.tensor(W, "W", ndim=3, shape_doc="[instances, m, n]")
    unit = W / W.norm(dim=1, keepdim=True).clamp_min(1e-8)
    cos = torch.einsum("imn,imk->ink", unit, unit).abs()
    represented = feature_norms(W) > 0.5
    eye = torch.eye(W.shape[-1], dtype=torch.bool)
    cos = cos.masked_fill(eye | ~represented[:, None, :], 0.0)
    return cos.amax(-1)


def dimensions_per_feature(W: torch.Tensor) -> torch.Tensor:
    """m / ||W||_F^2 [instances]: Elhage et al.'s measure; 1 = one dimension per feature, 0.5 = two features per dimension."""
    W = validate.tensor(W, "W", ndim=3, shape_doc="[instances, m, n]")
    return W.shape[1] / W.pow(2).sum(dim=(1, 2))


def phase(W: torch.Tensor, feature: int = 1) -> torch.Tensor:
    """For n=2, m=1 models: 0 = `feature` not represented, 1 = it has the dimension alone, 2 = both share it (superposition)."""
    norms = feature_norms(W)
    feature = validate.index(feature, "feature", norms.shape[-1], "features")
    other = 1 - feature if norms.shape[-1] == 2 else None
    if other is None:
        raise SuperpositionError(f"`phase` classifies n=2 models; this W has n={norms.shape[-1]} features.")
    mine, theirs = norms[:, feature] > 0.5, norms[:, other] > 0.5
    return torch.where(~mine, 0, torch.where(theirs, 2, 1))
