"""Path patching: how much of an effect travels along one path, from a sender head to a receiver.

Activation patching a head changes everything downstream of it. Path patching (Wang et al. 2022,
the IOI paper) asks a narrower question: how much of the metric moves through the path
*sender -> receiver* alone, where the receiver is another head's query, key or value input, or the
logits. In the noising direction used here (clean run, corrupted values patched in):

1. Cache every head's output (``hook_z``) on the clean and on the corrupted prompts.
2. Run the clean prompts with every head frozen to its clean output, except the sender, which gets
   its corrupted output. MLPs and norms recompute, so the sender's change reaches later layers only
   directly through the residual stream (and the MLPs on the way), never through another head.
   Receiver "logits": the metric of this run is the answer. Otherwise record the receivers' inputs.
3. Run the clean prompts normally, with only the receivers' q, k or v inputs replaced by what step 2
   recorded; the metric of this run is the answer.

A value near the clean metric means the path carries little of the behaviour; a value near the
corrupted metric means it carries most of it. The key and value inputs of a grouped-query model
(SmolLM2: 9 query heads share 3 key/value heads) belong to a key/value head: patching head h's keys
patches them for every query head in its group, and the functions here say so by name.

`path_patch` batches the senders as rows of one batch (two forward passes per chunk);
`path_patch_reference` does the same thing one sender at a time with plain hooks, and the tests hold
the two equal.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from helpers import validate
from helpers.errors import MicroscopeError, scalar_metric

Head = tuple[int, int]
Metric = Callable[[torch.Tensor], torch.Tensor]
RECEIVER_INPUTS = ("q", "k", "v")


class PathPatchingError(MicroscopeError):
    """Inputs path patching cannot use: a sender not before its receivers, an unknown input, mismatched prompts."""


def kv_head(model, head: int) -> int:
    """The key/value head that query head `head` reads (grouped-query attention; itself without grouping)."""
    n_heads = model.cfg.n_heads
    n_kv = getattr(model.cfg, "n_key_value_heads", None) or n_heads
    return head // (n_heads // n_kv)


def _check(model, clean, corrupted, senders, receivers, receiver_input):
    from helpers.patching import _check_tokens

    clean, corrupted = _check_tokens(model, clean, corrupted)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    with validate.reraise_as(PathPatchingError):
        senders = validate.head_list(senders, "senders", n_layers, n_heads)
        if not (isinstance(receivers, str) and receivers == "logits"):
            receivers = validate.head_list(receivers, "receivers", n_layers, n_heads)
            receiver_input = validate.choice(receiver_input, "receiver_input", RECEIVER_INPUTS)
            first = min(layer for layer, _ in receivers)
            late = [s for s in senders if s[0] >= first]
            if late:
                raise PathPatchingError(f"senders {late} are not in a layer before the receivers' (layer {first}): "
                                        "a head can only send to heads in later layers.")
    if getattr(model, "training", False):
        raise PathPatchingError("The model is in training mode (dropout on); call model.eval() first.")
    return clean, corrupted, senders, receivers, receiver_input


def _z_names(model) -> list[str]:
    return [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]


def _receiver_slots(model, receivers: Sequence[Head], receiver_input: str) -> dict[str, list[int]]:
    """{hook name: indices on its head axis} for the receivers' inputs (key/value heads for k and v)."""
    slots: dict[str, set[int]] = {}
    for layer, head in receivers:
        index = head if receiver_input == "q" else kv_head(model, head)
        slots.setdefault(f"blocks.{layer}.attn.hook_{receiver_input}", set()).add(index)
    return {name: sorted(indices) for name, indices in slots.items()}


def path_patch(model, clean_tokens, corrupted_tokens, metric: Metric, senders: Sequence[Head],
               receivers: Sequence[Head] | str = "logits", receiver_input: str = "q", *,
               batch_size: int | None = 8, progress: bool = True) -> torch.Tensor:
    """Metric of the clean run with each sender's path to the receivers patched: [len(senders)].

    receivers: "logits", or (layer, head) pairs whose `receiver_input` ("q", "k" or "v") receives the path.
    batch_size: senders run together per chunk (each takes as many rows as there are prompt pairs).
    """
    clean, corrupted, senders, receivers, receiver_input = _check(
        model, clean_tokens, corrupted_tokens, senders, receivers, receiver_input)
    with validate.reraise_as(PathPatchingError):
        batch_size = validate.positive_int(batch_size, "batch_size", allow_none=True) or len(senders)
    names = _z_names(model)
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean, names_filter=names)
        _, corrupted_cache = model.run_with_cache(corrupted, names_filter=names)
    batch = clean.shape[0]
    slots = None if receivers == "logits" else _receiver_slots(model, receivers, receiver_input)
    values = []
    chunks = [senders[i:i + batch_size] for i in range(0, len(senders), batch_size)]
    for chunk in tqdm(chunks, desc="path patching", disable=not progress or len(chunks) < 2, leave=False):
        n = len(chunk)

        # Hooks are bound to the names asked for: TransformerLens may report an alias's canonical name.
        def freezer(name: str, layer: int, chunk=chunk, n=n):
            def freeze(z, hook):
                frozen = clean_cache[name].repeat(n, 1, 1, 1)
                for v, (sender_layer, head) in enumerate(chunk):
                    if sender_layer == layer:
                        frozen[v * batch:(v + 1) * batch, :, head] = corrupted_cache[name][:, :, head]
                return frozen
            return freeze
        freeze_hooks = [(name, freezer(name, layer)) for layer, name in enumerate(names)]

        rows = clean.repeat(n, 1)
        with torch.no_grad():
            if slots is None:
                logits = model.run_with_hooks(rows, fwd_hooks=freeze_hooks)
            else:
                recorded: dict[str, torch.Tensor] = {}

                def recorder(name: str):
                    def record(act, hook):
                        recorded[name] = act.detach().clone()
                        return act
                    return record
                model.run_with_hooks(rows, fwd_hooks=freeze_hooks + [(name, recorder(name)) for name in slots])

                def replacer(name: str):
                    def replace(act, hook):
                        act = act.clone()
                        act[:, :, slots[name]] = recorded[name][:, :, slots[name]]
                        return act
                    return replace
                logits = model.run_with_hooks(rows, fwd_hooks=[(name, replacer(name)) for name in slots])
        for v in range(n):
            values.append(scalar_metric(metric, logits[v * batch:(v + 1) * batch], PathPatchingError,
                                        run="path-patched run").detach().float().cpu())
    return torch.stack(values)


def path_patch_reference(model, clean_tokens, corrupted_tokens, metric: Metric, senders: Sequence[Head],
                         receivers: Sequence[Head] | str = "logits", receiver_input: str = "q") -> torch.Tensor:
    """The same numbers as `path_patch`, one sender at a time with plain hooks (slow; for tests)."""
    clean, corrupted, senders, receivers, receiver_input = _check(
        model, clean_tokens, corrupted_tokens, senders, receivers, receiver_input)
    names = _z_names(model)
    _, clean_cache = model.run_with_cache(clean, names_filter=names)
    _, corrupted_cache = model.run_with_cache(corrupted, names_filter=names)
    out = []
    for sender_layer, sender_head in senders:
        def freezer(name, layer):
            def freeze(z, hook):
                z = clean_cache[name].clone()
                if layer == sender_layer:
                    z[:, :, sender_head] = corrupted_cache[name][:, :, sender_head]
                return z
            return freeze
        hooks = [(name, freezer(name, layer)) for layer, name in enumerate(names)]
        if receivers == "logits":
            logits = model.run_with_hooks(clean, fwd_hooks=hooks)
        else:
            inputs = {}
            for layer, head in receivers:
                name = f"blocks.{layer}.attn.hook_{receiver_input}"
                index = head if receiver_input == "q" else kv_head(model, head)
                inputs.setdefault(name, []).append(index)
            with model.hooks(fwd_hooks=hooks):
                _, patched_cache = model.run_with_cache(clean, names_filter=list(inputs))
            captured = {name: patched_cache[name] for name in inputs}

            def putter(name):
                def put(act, hook):
                    act = act.clone()
                    for index in inputs[name]:
                        act[:, :, index] = captured[name][:, :, index]
                    return act
                return put
            logits = model.run_with_hooks(clean, fwd_hooks=[(name, putter(name)) for name in inputs])
        out.append(scalar_metric(metric, logits, PathPatchingError).detach().float().cpu())
    return torch.stack(out)


def path_patch_sweep(model, clean_tokens, corrupted_tokens, metric: Metric,
                     receivers: Sequence[Head] | str = "logits", receiver_input: str = "q", *,
                     batch_size: int | None = 8, progress: bool = True) -> torch.Tensor:
    """path_patch from every head in a layer before the receivers: [n_layers, n_heads] (NaN where undefined)."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    if isinstance(receivers, str) and receivers == "logits":
        last = n_layers
    else:
        with validate.reraise_as(PathPatchingError):
            last = min(layer for layer, _ in validate.head_list(receivers, "receivers", n_layers, n_heads))
    senders = [(layer, head) for layer in range(last) for head in range(n_heads)]
    grid = torch.full((n_layers, n_heads), float("nan"))
    if senders:
        values = path_patch(model, clean_tokens, corrupted_tokens, metric, senders, receivers, receiver_input,
                            batch_size=batch_size, progress=progress)
        grid[:last] = values.reshape(last, n_heads)
    return grid
