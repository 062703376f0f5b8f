"""Steering: remove a direction from the residual stream everywhere, or add a vector at one layer.

Two interventions from Arditi et al. (2024), written as TransformerLens hooks (``(hook_name, fn)``
pairs) so they work with ``model.hooks(fwd_hooks=...)``, ``run_with_hooks`` and
:func:`helpers.generation.generate`:

* **directional ablation** (:func:`ablation_hooks`): project a unit direction ``r`` out of the
  residual stream at every layer and every position, ``x <- x - (x . r) r``. Applied to the input of
  each block (``hook_resid_pre``), after attention (``hook_resid_mid``) and to the final output
  (``hook_resid_post`` of the last block), so no component can write ``r`` back in unseen;
* **activation addition** (:func:`addition_hooks`): add a vector to the residual stream entering one
  layer (``blocks.{L}.hook_resid_pre``), at every position.

A causal claim needs a control: :func:`random_directions` draws unit directions and
:func:`random_like` draws random vectors with the same norm as a given one, seeded, so the same
intervention can be repeated many times with directions that carry no meaning.

Shapes: a direction or vector is ``[d_model]``; residual activations are ``[batch, pos, d_model]``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from helpers.errors import MicroscopeError, ShapeError

Hook = tuple[str, Callable]


class SteeringError(MicroscopeError):
    """A direction, vector or layer that cannot be used to steer this model."""


def check_vector(model, vector, name: str = "direction") -> torch.Tensor:
    """`vector` as a float tensor [d_model] on the model's device; ShapeError / SteeringError otherwise."""
    d_model = model.cfg.d_model
    if not isinstance(vector, torch.Tensor):
        try:
            vector = torch.as_tensor(vector, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            raise SteeringError(f"`{name}` must be a tensor of shape [{d_model}], got {type(vector).__name__}.") from None
    if vector.shape != (d_model,):
        raise ShapeError(
            f"`{name}` has shape {tuple(vector.shape)}, but {model.cfg.model_name}'s residual stream is "
            f"[{d_model}]. Pass one vector of length d_model (e.g. a difference of means at one hook), "
            f"not a batch or a vector from another model.")
    vector = vector.detach().float()
    if not torch.isfinite(vector).all():
        raise SteeringError(f"`{name}` contains NaN or infinite values; recompute it.")
    if vector.norm() < 1e-8:
        raise SteeringError(
            f"`{name}` is zero (norm {vector.norm().item():.2e}): it has no direction to remove or add. "
            "Check that the two classes you averaged differ.")
    return vector.to(model.cfg.device)


def check_layer(model, layer, name: str = "layer") -> int:
    """`layer` as an int in [0, n_layers); SteeringError naming the valid range otherwise."""
    n_layers = model.cfg.n_layers
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise SteeringError(f"`{name}` must be an int between 0 and {n_layers - 1}, got {layer!r}.")
    if not 0 <= layer < n_layers:
        raise SteeringError(f"`{name}`={layer} is out of range: {model.cfg.model_name} has {n_layers} layers, "
                            f"numbered 0 to {n_layers - 1}.")
    return layer


def unit(vector: torch.Tensor) -> torch.Tensor:
    """vector / |vector| (float32)."""
    vector = vector.float()
    return vector / vector.norm()


def project_out(x: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """x [..., d] minus its component along `direction` [d] (normalised here): x - (x . r) r."""
    r = unit(direction).to(x.dtype)
    return x - (x @ r)[..., None] * r


def projection(x: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """The scalar component of x [..., d] along the unit version of `direction` [d]: [...]."""
    return x.float() @ unit(direction).to(x.device)


def ablation_hook_names(model) -> list[str]:
    """Every residual-stream hook that directional ablation edits, in forward order."""
    names = []
    for layer in range(model.cfg.n_layers):
        names += [f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.hook_resid_mid"]
    names.append(f"blocks.{model.cfg.n_layers - 1}.hook_resid_post")
    # Every place a component reads the stream (attention: resid_pre, MLP: resid_mid, unembedding:
    # the last resid_post) is then clean; attention-only models have no resid_mid.
    return [name for name in names if name in model.hook_dict]


def ablation_hooks(model, direction) -> list[Hook]:
    """Hooks removing `direction` [d_model] from the residual stream at every layer and position."""
    r = unit(check_vector(model, direction))

    def remove(x, hook):
        return project_out(x, r)

    return [(name, remove) for name in ablation_hook_names(model)]


def addition_hooks(model, vector, layer: int, scale: float = 1.0) -> list[Hook]:
    """Hooks adding scale * `vector` [d_model] (not normalised) to blocks.{layer}.hook_resid_pre at every position."""
    vector = check_vector(model, vector, "vector")
    layer = check_layer(model, layer)
    if not isinstance(scale, (int, float)) or isinstance(scale, bool):
        raise SteeringError(f"`scale` must be a number, got {scale!r}.")

    def add(x, hook):
        return x + scale * vector.to(x.dtype)

    return [(f"blocks.{layer}.hook_resid_pre", add)]


def random_directions(d: int, n: int, seed: int = 0) -> torch.Tensor:
    """n seeded random unit vectors [n, d] (uniform on the sphere)."""
    if not isinstance(n, int) or n < 1:
        raise SteeringError(f"`n` must be a positive int (how many random directions), got {n!r}.")
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randn(n, d, generator=generator)
    return draws / draws.norm(dim=-1, keepdim=True)


def random_like(vector: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """n seeded random vectors [n, d] with the same norm as `vector` [d] (a size-matched control)."""
    vector = torch.as_tensor(vector).float()
    if vector.dim() != 1:
        raise ShapeError(f"`vector` must be one vector [d], got shape {tuple(vector.shape)}.")
    return random_directions(vector.shape[0], n, seed) * vector.norm()


def layer_choices(model, layers: Sequence[int]) -> list[int]:
    """Checked list of layers (each in range)."""
    return [check_layer(model, layer) for layer in layers]


def check_vectors(model, vectors, name: str = "direction") -> torch.Tensor:
    """One vector [d_model], or one per batch row [rows, d_model], each checked by :func:`check_vector`."""
    if isinstance(vectors, torch.Tensor) and vectors.dim() == 2:
        return torch.stack([check_vector(model, v, f"{name}[{i}]") for i, v in enumerate(vectors)])
    return check_vector(model, vectors, name)


def last_position_addition_hooks(model, vector, layer: int, scale: float = 1.0) -> list[Hook]:
    """Like :func:`addition_hooks`, but only at the last position of each forward pass.

    With :func:`helpers.generation.generate` that is the prompt's last token and every generated
    token; with :class:`helpers.generation.SuffixScorer` (one token per pass) every token it feeds.
    `vector` is [d_model], or [batch, d_model] for one vector per row (``SuffixScorer.many``).
    """
    vector = check_vectors(model, vector, "vector")
    layer = check_layer(model, layer)
    if not isinstance(scale, (int, float)) or isinstance(scale, bool):
        raise SteeringError(f"`scale` must be a number, got {scale!r}.")

    def add(x, hook):
        x = x.clone()
        x[:, -1] += scale * vector.to(x.dtype)
        return x

    return [(f"blocks.{layer}.hook_resid_pre", add)]


def last_position_ablation_hooks(model, direction) -> list[Hook]:
    """Like :func:`ablation_hooks` (every layer), but only at the last position of each forward pass.

    `direction` is [d_model], or [batch, d_model] for one direction per row (``SuffixScorer.many``).
    """
    direction = check_vectors(model, direction)
    r = direction / direction.norm(dim=-1, keepdim=True)

    def remove(x, hook):
        x = x.clone()
        if r.dim() == 1:
            x[:, -1] = project_out(x[:, -1], r.to(x.dtype))
        else:  # one direction per row
            x[:, -1] -= (x[:, -1] * r.to(x.dtype)).sum(-1, keepdim=True) * r.to(x.dtype)
        return x

    return [(name, remove) for name in ablation_hook_names(model)]
