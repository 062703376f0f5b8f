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

`path_patch` batches the senders as rows of one batch (two passes per chunk, each replaying only the
blocks and positions a path can change); `path_patch_each_receiver` sends one head's path into many
receivers one at a time (where does this head's effect go?); `path_patch_reference` does the same
thing one sender at a time with plain hooks and full forward passes, and the tests hold them equal.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from helpers import validate
from helpers.errors import MicroscopeError, scalar_metric
from helpers import patching as _patching

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
    clean, corrupted = _patching._check_tokens(model, clean, corrupted)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    with validate.reraise_as(PathPatchingError):
        senders = validate.head_list(senders, "senders", n_layers, n_heads)
        if not senders:
            raise PathPatchingError("`senders` is empty: name at least one (layer, head) whose path to patch.")
        if not (isinstance(receivers, str) and receivers == "logits"):
            receivers = validate.head_list(receivers, "receivers", n_layers, n_heads)
            if not receivers:
                raise PathPatchingError("`receivers` is empty: name at least one (layer, head), or pass \"logits\".")
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

    Work a path cannot change is skipped, as in `helpers.patching`'s sweeps: the frozen run starts at
    the chunk's lowest sender layer and stops after the receivers' layers; the receiving run starts at
    the receivers' lowest layer; positions before the first token where clean and corrupted prompts
    differ are taken from the clean run; only the positions the metric reads are unembedded. A model
    whose blocks cannot be replayed this way runs every pass in full (the same numbers, slower).
    """
    clean, corrupted, senders, receivers, receiver_input = _check(
        model, clean_tokens, corrupted_tokens, senders, receivers, receiver_input)
    with validate.reraise_as(PathPatchingError):
        batch_size = validate.positive_int(batch_size, "batch_size", allow_none=True) or len(senders)
    setup = _setup(model, clean, corrupted, metric)
    slots = None if receivers == "logits" else _receiver_slots(model, receivers, receiver_input)
    receiver_layers = [] if slots is None else sorted(int(name.split(".")[1]) for name in slots)
    order = sorted(range(len(senders)), key=lambda i: senders[i][0])
    values = torch.full((len(senders),), float("nan"))
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for chunk in tqdm(chunks, desc="path patching", disable=not progress or len(chunks) < 2, leave=False):
        out = _run(setup, [senders[i] for i in chunk], slots, receiver_layers)
        values[torch.tensor(chunk)] = torch.stack([v.detach().float().cpu() for v in out])
    return values


def path_patch_each_receiver(model, clean_tokens, corrupted_tokens, metric: Metric, sender: Head,
                             receivers: Sequence[Head], receiver_input: str = "q", *,
                             batch_size: int | None = 8, progress: bool = True) -> torch.Tensor:
    """Metric with one sender's path into each receiver's `receiver_input`, one receiver at a time: [len(receivers)].

    The same number as `path_patch(..., [sender], [receiver], receiver_input)` for each receiver, with
    the work shared: the frozen run (every head clean except the sender) runs once and records every
    receiver's input; the receiving runs go `batch_size` receivers at a time, each block of rows with
    its own receiver's input replaced. A sweep of where one head's effect goes.
    """
    if isinstance(receivers, str) and receivers == "logits":
        raise PathPatchingError("`receivers` must be (layer, head) pairs here; for a sender's direct path to the "
                                "logits use path_patch(..., senders=[sender], receivers=\"logits\").")
    pair = sender.tolist() if isinstance(sender, (torch.Tensor, np.ndarray)) else sender
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and not isinstance(pair[0], (tuple, list))):
        raise PathPatchingError(f"`sender` must be one (layer, head) pair such as (17, 4), got {validate.describe(sender)}; "
                                "for several senders together use path_patch.")
    clean, corrupted, senders, receivers, receiver_input = _check(
        model, clean_tokens, corrupted_tokens, [sender], receivers, receiver_input)
    with validate.reraise_as(PathPatchingError):
        batch_size = validate.positive_int(batch_size, "batch_size", allow_none=True) or len(receivers)
    setup = _setup(model, clean, corrupted, metric)
    slots = [(f"blocks.{layer}.attn.hook_{receiver_input}", head if receiver_input == "q" else kv_head(model, head), layer)
             for layer, head in receivers]
    recorded = _record_receiver_inputs(setup, senders, {name for name, _, _ in slots}, max(layer for _, _, layer in slots))
    order = sorted(range(len(receivers)), key=lambda i: receivers[i][0])
    values = torch.full((len(receivers),), float("nan"))
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for chunk in tqdm(chunks, desc="path patching", disable=not progress or len(chunks) < 2, leave=False):
        out = _receive(setup, recorded, [slots[i] for i in chunk])
        values[torch.tensor(chunk)] = torch.stack([v.detach().float().cpu() for v in out])
    return values


def _record_receiver_inputs(setup: dict, senders: Sequence[Head], names: set[str], last_layer: int) -> dict:
    """One frozen run (every head clean except the senders, corrupted): the receivers' inputs it produces."""
    recorded: dict[str, torch.Tensor] = {}
    model, clean_cache, corrupted_cache = setup["model"], setup["clean_cache"], setup["corrupted_cache"]
    with torch.no_grad():
        if setup["mode"] == "full":
            freeze = _freeze_hooks(range(model.cfg.n_layers), clean_cache, corrupted_cache, senders, setup["clean"].shape[0], 0)
            model.run_with_hooks(setup["clean"], fwd_hooks=freeze + _recorders(names, recorded))
            return recorded
        replayer, start, first = setup["replayer"], setup["start"], min(layer for layer, _ in senders)
        x = clean_cache[f"blocks.{first}.hook_resid_pre"][:, start:]
        hooks = _freeze_hooks(range(first, last_layer + 1), clean_cache, corrupted_cache, senders, replayer.batch, start)
        with model.hooks(fwd_hooks=hooks + _recorders(names, recorded)):
            for layer in range(first, last_layer + 1):
                x = replayer.block(layer, x, start)
    return recorded


def _receive(setup: dict, recorded: dict, chunk: Sequence[tuple[str, int, int]]) -> list[torch.Tensor]:
    """Clean runs, one block of rows per (hook name, head index, layer) in `chunk`, each with that one input
    replaced by its recorded value: the metric of each."""
    model, clean_cache, clean_logits, metric = setup["model"], setup["clean_cache"], setup["clean_logits"], setup["metric"]
    batch, n = setup["clean"].shape[0], len(chunk)
    by_name: dict[str, list[tuple[int, int]]] = {}
    for v, (name, index, _) in enumerate(chunk):
        by_name.setdefault(name, []).append((v, index))

    def replacer(name: str):
        def replace(act, hook):
            act = act.clone()
            for v, index in by_name[name]:
                act[v * batch:(v + 1) * batch, :, index] = recorded[name][:, :, index]
            return act
        return replace
    hooks = [(name, replacer(name)) for name in by_name]
    with torch.no_grad():
        if setup["mode"] == "full":
            logits = model.run_with_hooks(setup["clean"].repeat(n, 1), fwd_hooks=hooks)
            return [scalar_metric(metric, logits[v * batch:(v + 1) * batch], PathPatchingError, run="path-patched run")
                    for v in range(n)]
        replayer, start, read = setup["replayer"], setup["start"], setup["read"]
        entry = min(layer for _, _, layer in chunk)
        x = clean_cache[f"blocks.{entry}.hook_resid_pre"][:, start:].repeat(n, 1, 1)
        with model.hooks(fwd_hooks=hooks):
            for layer in range(entry, len(model.blocks)):
                x = replayer.block(layer, x, start)
        return _variant_metrics(replayer, x, clean_logits, metric, read, start, n)


def _variant_metrics(replayer, x: torch.Tensor, clean_logits: torch.Tensor, metric: Metric, read: list[int],
                     start: int, n: int) -> list[torch.Tensor]:
    """The metric of each of n variants from the final residual x [n * batch, pos - start, d]: the positions the
    metric reads are unembedded from x, those before `start` taken from the clean logits, the rest left NaN."""
    batch = clean_logits.shape[0]
    with torch.no_grad():
        computed = [q for q in read if q >= start]
        fresh = replayer.logits(x[:, [q - start for q in computed]])
    out = []
    for v in range(n):
        logits = clean_logits.new_full(clean_logits.shape, float("nan"))
        logits[:, [q for q in read if q < start]] = clean_logits[:, [q for q in read if q < start]]
        logits[:, computed] = fresh[v * batch:(v + 1) * batch]
        out.append(scalar_metric(metric, logits, PathPatchingError, run="path-patched run"))
    return out


def _setup(model, clean: torch.Tensor, corrupted: torch.Tensor, metric: Metric) -> dict:
    """Caches every path-patched run reuses: clean and corrupted head outputs, the clean residual
    stream and logits, the block replayer and the positions the metric reads."""
    names = _z_names(model)
    n_layers = model.cfg.n_layers
    batch, n_pos = clean.shape
    replayer = _patching._Replay(model, batch, n_pos)
    replayer.capture()
    try:
        with torch.no_grad():
            clean_logits, clean_cache = model.run_with_cache(
                clean, names_filter=names + [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)])
    finally:
        replayer.release()
    with torch.no_grad():
        _, corrupted_cache = model.run_with_cache(corrupted, names_filter=names)
        clean_value = scalar_metric(metric, clean_logits, PathPatchingError, run="clean run")
        # also records the clean run's keys and values: the prefix every suffix run attends to
        mode = _patching._replay_mode(replayer, clean_cache, clean_logits, getattr(model.cfg, "attention_dir", "causal") == "causal")
    start = min(_patching._first_difference(clean, corrupted), n_pos - 1) if mode == "suffix" else 0
    read = _patching._positions_read(metric, clean_logits, clean_value) if mode != "full" else list(range(n_pos))
    return dict(model=model, clean=clean, replayer=replayer, clean_cache=clean_cache, corrupted_cache=corrupted_cache,
                clean_logits=clean_logits, metric=metric, mode=mode, start=start, read=read)


def _run(setup: dict, senders: Sequence[Head], slots, receiver_layers) -> list[torch.Tensor]:
    with torch.no_grad():
        if setup["mode"] == "full":
            return _full_chunk(setup["model"], setup["clean"], setup["clean_cache"], setup["corrupted_cache"],
                               setup["metric"], senders, slots)
        return _replay_chunk(setup["replayer"], setup["clean_cache"], setup["corrupted_cache"], setup["clean_logits"],
                             setup["metric"], senders, slots, receiver_layers, setup["start"], setup["read"])


def _freeze_hooks(layers: Sequence[int], clean_cache, corrupted_cache, chunk: Sequence[Head], batch: int, start: int):
    """hook_z hooks on `layers`: every head at its clean output, except each variant's sender (corrupted output)."""
    n = len(chunk)

    def freezer(name: str, layer: int):
        def freeze(z, hook):
            frozen = clean_cache[name][:, start:].repeat(n, 1, 1, 1)
            for v, (sender_layer, head) in enumerate(chunk):
                if sender_layer == layer:
                    frozen[v * batch:(v + 1) * batch, :, head] = corrupted_cache[name][:, start:, head]
            return frozen
        return freeze
    # Hooks are bound to the names asked for: TransformerLens may report an alias's canonical name.
    return [(name, freezer(name, layer)) for layer, name in ((layer, f"blocks.{layer}.attn.hook_z") for layer in layers)]


def _recorders(slots, recorded: dict):
    def recorder(name: str):
        def record(act, hook):
            recorded[name] = act.detach().clone()
            return act
        return record
    return [(name, recorder(name)) for name in slots]


def _replacers(slots, recorded: dict):
    def replacer(name: str):
        def replace(act, hook):
            act = act.clone()
            act[:, :, slots[name]] = recorded[name][:, :, slots[name]]
            return act
        return replace
    return [(name, replacer(name)) for name in slots]


def _full_chunk(model, clean, clean_cache, corrupted_cache, metric, chunk, slots) -> list[torch.Tensor]:
    """Two full forward passes for a chunk of senders (the fallback engine)."""
    n, batch = len(chunk), clean.shape[0]
    freeze = _freeze_hooks(range(model.cfg.n_layers), clean_cache, corrupted_cache, chunk, batch, 0)
    rows = clean.repeat(n, 1)
    if slots is None:
        logits = model.run_with_hooks(rows, fwd_hooks=freeze)
    else:
        recorded: dict[str, torch.Tensor] = {}
        model.run_with_hooks(rows, fwd_hooks=freeze + _recorders(slots, recorded))
        logits = model.run_with_hooks(rows, fwd_hooks=_replacers(slots, recorded))
    return [scalar_metric(metric, logits[v * batch:(v + 1) * batch], PathPatchingError, run="path-patched run")
            for v in range(n)]


def _replay_chunk(replayer, clean_cache, corrupted_cache, clean_logits, metric, chunk, slots, receiver_layers,
                  start: int, read: list[int]) -> list[torch.Tensor]:
    """The same two passes, replaying blocks from the lowest layer and position a path can change."""
    model, batch = replayer.model, replayer.batch
    n_layers, n = len(model.blocks), len(chunk)
    first = chunk[0][0]  # chunks are sorted by sender layer
    last = n_layers if slots is None else receiver_layers[-1] + 1
    x = clean_cache[f"blocks.{first}.hook_resid_pre"][:, start:].repeat(n, 1, 1)
    recorded: dict[str, torch.Tensor] = {}
    hooks = _freeze_hooks(range(first, last), clean_cache, corrupted_cache, chunk, batch, start)
    if slots is not None:
        hooks += _recorders(slots, recorded)
    with model.hooks(fwd_hooks=hooks):
        for layer in range(first, last):
            x = replayer.block(layer, x, start)
    if slots is not None:
        entry = receiver_layers[0]
        x = clean_cache[f"blocks.{entry}.hook_resid_pre"][:, start:].repeat(n, 1, 1)
        with model.hooks(fwd_hooks=_replacers(slots, recorded)):
            for layer in range(entry, n_layers):
                x = replayer.block(layer, x, start)
    return _variant_metrics(replayer, x, clean_logits, metric, read, start, n)


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
