"""Activation patching, fast: exact sweeps that batch the patched runs, and attribution patching.

Activation patching runs the *corrupted* prompt with one activation replaced by its value on the
*clean* prompt and records a metric of the logits. TransformerLens's ``transformer_lens.patching``
does one full forward pass per patched index. The sweeps here return the same numbers (tested to
1e-4) and skip the work a patch cannot affect:

* many patched variants run as rows of one batch, each row with its own patch;
* layers: a patch at layer L cannot change layers below L, so each variant starts from the
  corrupted run's cached residual stream at layer L. Variants are sorted by layer and the batch
  grows as it climbs: block L runs only the variants patched at or below L;
* positions (causal models): a patch at position p cannot change positions before p, so those
  rows start at position p, attending to the corrupted run's cached keys and values for earlier
  positions; and positions before the first token where clean and corrupted differ hold the same
  activations in both runs, so patching them changes nothing;
* logits: only the positions the metric reads are unembedded (found by its gradient, checked by
  poisoning the others; positions it does not read are NaN, so a mistake cannot pass silently);
* a memory cap (``max_memory_mb``) or an explicit ``batch_size`` splits the variants into chunks.

Each shortcut is checked once per call against the model's own forward pass on the corrupted
prompt; one that does not reproduce it is not used (the slowest fallback is batched full passes).

:func:`attribution_patch` is the first-order estimate of the same sweeps:
``(clean_act - corrupted_act) . d metric / d act`` on the corrupted run, from one forward and one
backward pass plus the clean forward.

Variants and rows: a chunk of ``n`` variants over a batch of ``B`` prompt pairs runs ``n * B`` rows;
variant ``v`` owns rows ``v*B .. v*B + B - 1`` (the corrupted batch, repeated), so the metric sees
logits ``[B, pos, vocab]`` exactly as in TransformerLens.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from helpers import validate
from helpers.errors import MicroscopeError, scalar_metric
from helpers.tokens import check_hook_name

Metric = Callable[[torch.Tensor], torch.Tensor]

# Site name -> (hook name template, what the patch index selects).
SITES: dict[str, tuple[str, str]] = {
    "resid_pre": ("blocks.{layer}.hook_resid_pre", "pos"),
    "attn_out": ("blocks.{layer}.hook_attn_out", "pos"),
    "mlp_out": ("blocks.{layer}.hook_mlp_out", "pos"),
    "z": ("blocks.{layer}.attn.hook_z", "head"),
}
POSITION_SITES = tuple(s for s, (_, kind) in SITES.items() if kind == "pos")
HEAD_SITES = tuple(s for s, (_, kind) in SITES.items() if kind == "head")
BLOCK_SITES = ("resid_pre", "attn_out", "mlp_out")
DEFAULT_MAX_MEMORY_MB = 1024


class PatchingError(MicroscopeError):
    """Inputs that a patching sweep cannot use: mismatched prompts, a bad metric, an unknown site."""


@dataclass(frozen=True)
class Patch:
    """One patched variant: the clean value of `site` at `layer`, at position or head `index`."""

    layer: int
    site: str
    index: int


# ---------------------------------------------------------------------------------------------
# Input checks


def hook_name(site: str, layer: int) -> str:
    """The TransformerLens hook name of a patching site at a layer (e.g. blocks.3.hook_attn_out)."""
    return SITES[site][0].format(layer=layer)


def _check_site(site: str, allowed: Sequence[str]) -> str:
    if site not in allowed:
        raise PatchingError(
            f"Unknown patching site {site!r}; this sweep patches one of {', '.join(map(repr, allowed))}."
        )
    return site


def _check_tokens(model, clean, corrupted) -> tuple[torch.Tensor, torch.Tensor]:
    pair = []
    for label, tokens in (("clean", clean), ("corrupted", corrupted)):
        if not isinstance(tokens, torch.Tensor):
            raise PatchingError(
                f"{label} must be a tensor of token ids [batch, pos], got {type(tokens).__name__}; "
                "make one with helpers.tokens.to_tokens(model, prompt)."
            )
        if tokens.ndim == 1:
            tokens = tokens.unsqueeze(0)
        if tokens.ndim != 2 or tokens.is_floating_point():
            raise PatchingError(
                f"{label} must be integer token ids shaped [batch, pos], got {tokens.dtype} "
                f"of shape {tuple(tokens.shape)}."
            )
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= model.cfg.d_vocab):
            raise PatchingError(
                f"{label} holds token ids outside the vocabulary 0..{model.cfg.d_vocab - 1}."
            )
        pair.append(tokens.to(model.cfg.device))
    clean, corrupted = pair
    if clean.shape[1] != corrupted.shape[1]:
        raise PatchingError(
            f"The clean prompt is {clean.shape[1]} tokens long and the corrupted one {corrupted.shape[1]}: "
            "patching swaps activations position by position, so both need the same token length. "
            "Reword one prompt (model.to_str_tokens shows the split) until the lengths match."
        )
    if clean.shape[0] != corrupted.shape[0]:
        raise PatchingError(
            f"{clean.shape[0]} clean prompts but {corrupted.shape[0]} corrupted ones; pass them in pairs."
        )
    return clean, corrupted


def _metric_value(metric: Metric, logits: torch.Tensor) -> torch.Tensor:
    """metric(logits) as a 0-d tensor, or a PatchingError saying what it returned instead."""
    return scalar_metric(metric, logits, PatchingError, run="patched run")


def _check_layers(model, layers: Sequence[int] | None) -> list[int]:
    n_layers = model.cfg.n_layers
    if layers is None:
        return list(range(n_layers))
    if isinstance(layers, (int, np.integer)) and not isinstance(layers, bool):
        layers = [layers]
    with validate.reraise_as(PatchingError):
        layers = [validate.integer(layer, "layers") for layer in layers]
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise PatchingError(f"`layers` {bad} do not exist: {model.cfg.model_name} has layers 0 to {n_layers - 1}.")
    return layers


# ---------------------------------------------------------------------------------------------
# The batched engine


def _is_kv_cache(value) -> bool:
    return "Cache" in type(value).__name__


class _PrefixKV:
    """Stands in for a KV cache. Recording, it keeps each layer's keys and values; replaying, it
    prepends the corrupted run's first `start` positions, so only later positions are recomputed."""

    def __init__(self):
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.start: int | None = None

    def update(self, key, value, layer_idx, *args, **kwargs):
        if self.start is None:
            self.keys[layer_idx], self.values[layer_idx] = key, value
            return key, value
        reps = key.shape[0] // self.keys[layer_idx].shape[0]
        prefix_k = self.keys[layer_idx][..., :self.start, :].repeat(reps, 1, 1, 1)
        prefix_v = self.values[layer_idx][..., :self.start, :].repeat(reps, 1, 1, 1)
        return torch.cat([prefix_k, key], dim=-2), torch.cat([prefix_v, value], dim=-2)


def _adapt(value, batch: int, rows: int, n_pos: int, start: int, key: str = ""):
    """A block keyword argument for `rows` rows and positions start..: repeat the batch dimension
    (variant-major rows) and drop the first `start` positions of position-indexed tensors."""
    if isinstance(value, (tuple, list)):
        return type(value)(_adapt(v, batch, rows, n_pos, start) for v in value)
    if not isinstance(value, torch.Tensor) or value.ndim == 0:
        return value
    if start:
        if key == "attention_mask" and value.ndim == 4:
            value = value[..., start:, :]
        elif value.ndim >= 2 and value.shape[1] == n_pos:
            value = value[:, start:]
    if value.shape[0] == batch and rows != batch:
        value = value.repeat(rows // batch, *([1] * (value.ndim - 1)))
    return value


class _Replay:
    """Runs the model from the residual stream entering any block, for any rows and positions.

    During the corrupted forward pass it captures the keyword arguments the model hands each
    block (attention mask, rotary embeddings, position ids), so blocks can be called directly.
    """

    def __init__(self, model, batch: int, n_pos: int):
        self.model, self.batch, self.n_pos = model, batch, n_pos
        self.block_kwargs: dict[int, dict] = {}
        self.prefix = _PrefixKV()
        self._handles = []

    def capture(self) -> None:
        def make(layer):
            def pre_hook(module, args, kwargs):
                self.block_kwargs[layer] = {k: v for k, v in kwargs.items() if not _is_kv_cache(v)}
            return pre_hook

        self._handles = [block.register_forward_pre_hook(make(layer), with_kwargs=True)
                         for layer, block in enumerate(self.model.blocks)]

    def release(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def block(self, layer: int, x: torch.Tensor, start: int = 0, record: bool = False) -> torch.Tensor:
        """Block `layer` on rows x [rows, pos - start, d_model] (positions start.. of the prompt);
        `record` keeps its keys and values as the prefix for later calls."""
        kwargs = {k: _adapt(v, self.batch, x.shape[0], self.n_pos, start, k)
                  for k, v in self.block_kwargs[layer].items()}
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        self.prefix.start = None if record else start
        # The bridge's attention reads a cache under this name (transformers renames past_key_values).
        kwargs["layer_past"] = self.prefix
        out = self.model.blocks[layer](x, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.unembed(self.model.ln_final(x))

    def run(self, x: torch.Tensor, start: int = 0, record: bool = False) -> torch.Tensor:
        """Logits at positions start.. from the residual x entering block 0."""
        for layer in range(len(self.model.blocks)):
            x = self.block(layer, x, start, record)
        return self.logits(x)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and (a - b).abs().max().item() <= 1e-5 * max(1.0, b.abs().max().item())


def _replay_mode(replayer: _Replay, corrupted_cache, corrupted_logits, causal: bool) -> str:
    """'suffix' if blocks replay from any layer and position, 'layer' if only from any layer,
    'full' if neither reproduces the model's own forward pass (then every variant runs in full)."""
    x = corrupted_cache["blocks.0.hook_resid_pre"]
    try:
        if not _close(replayer.run(x, record=True), corrupted_logits):
            return "full"
    except Exception:  # an architecture whose blocks need more than we captured
        return "full"
    if not causal or replayer.n_pos < 2 or not replayer.prefix.keys:
        return "layer"
    start = replayer.n_pos // 2
    try:
        ok = _close(replayer.run(x[:, start:], start), corrupted_logits[:, start:])
    except Exception:
        ok = False
    return "suffix" if ok else "layer"


def _patch_hooks(patches: Sequence[Patch], batch: int, clean_cache, start: int):
    """Forward hooks writing each variant's clean value into its own rows (variant v: rows v*B..),
    on rows that hold positions start.. of the prompt."""
    groups: dict[str, list[int]] = {}
    for v, patch in enumerate(patches):
        groups.setdefault(hook_name(patch.site, patch.layer), []).append(v)
    hooks = []
    arange_b = torch.arange(batch)
    for name, variants in groups.items():
        kind = SITES[patches[variants[0]].site][1]
        rows = (torch.tensor(variants)[:, None] * batch + arange_b[None, :]).flatten()
        source = arange_b.repeat(len(variants))
        index = torch.tensor([patches[v].index for v in variants]).repeat_interleave(batch)
        if kind == "pos":
            index = index - start
        clean = clean_cache[name][:, start:]

        def hook(act, hook, rows=rows, source=source, index=index, clean=clean, kind=kind):
            act = act.clone()
            if kind == "pos":
                act[rows, index] = clean[source, index].to(act.dtype)
            else:
                act[rows, :, index] = clean[source, :, index].to(act.dtype)
            return act

        hooks.append((name, hook))
    return hooks


def _row_bytes(model, n_pos: int, full_pos: int, n_read: int) -> tuple[int, int]:
    """Rough float32 bytes one row needs inside a block (n_pos of full_pos positions computed), and
    for its logits at the n_read positions the metric reads (with room for a copy)."""
    cfg = model.cfg
    d_mlp = cfg.d_mlp or 4 * cfg.d_model
    block = 4 * n_pos * (12 * cfg.d_model + 5 * d_mlp + 3 * cfg.n_heads * full_pos)
    logits = 4 * n_read * cfg.d_vocab * 2
    return block, logits


def _chunk_sizes(model, n_pos: int, full_pos: int, n_read: int, batch: int, batch_size,
                 max_memory_mb) -> tuple[int, int]:
    """(variants per chunk, variants per unembedding) within the memory cap."""
    cap = (max_memory_mb or DEFAULT_MAX_MEMORY_MB) * 2**20
    block, logits = _row_bytes(model, n_pos, full_pos, n_read)
    per_chunk = max(1, int(cap // (block * batch)))
    per_unembed = max(1, int(cap // (logits * batch)))
    if batch_size is not None:
        per_chunk = min(per_chunk, int(batch_size))
        per_unembed = min(per_unembed, int(batch_size))
    return per_chunk, per_unembed


def _positions_read(metric: Metric, logits: torch.Tensor, value: torch.Tensor) -> list[int]:
    """The positions whose logits the metric reads (all of them unless proven fewer).

    Candidates are the positions where the metric has a gradient; the claim is then checked by
    replacing every other position with NaN, and with large noise, and requiring the very same
    value. Sweeps fill unread positions with NaN, so a metric that did read them would show NaN
    rather than a wrong number.
    """
    every = list(range(logits.shape[1]))
    probe = logits.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = metric(probe)
        if not isinstance(out, torch.Tensor) or not out.requires_grad:
            return every
        (grad,) = torch.autograd.grad(out, probe, allow_unused=True)
    if grad is None:
        return every
    read = grad.abs().sum(dim=(0, 2)).nonzero().flatten().tolist()
    others = [q for q in every if q not in read]
    if not read or not others:
        return every
    noise = torch.randn(logits[:, others].shape, generator=torch.Generator().manual_seed(0)) * 100
    for poison in (float("nan"), noise.to(logits.device)):
        poisoned = logits.clone()
        poisoned[:, others] = poison
        if not torch.equal(torch.as_tensor(metric(poisoned)), value):
            return every
    return read


def _first_difference(clean: torch.Tensor, corrupted: torch.Tensor) -> int:
    """First position where any clean prompt differs from its corrupted partner (pos if none)."""
    differs = (clean != corrupted).any(dim=0).nonzero()
    return int(differs[0]) if len(differs) else clean.shape[1]


def run_patches(model, clean, corrupted, metric: Metric, patches: Sequence[Patch], *,
                batch_size: int | None = None, max_memory_mb: float | None = None,
                progress: bool = True, desc: str = "patching", mode: str | None = None) -> torch.Tensor:
    """Metric of the corrupted run with each patch applied alone: [len(patches)].

    `mode` forces an engine for testing: "full" (batched full forward passes), "layer" (start at
    the patched layer) or "suffix" (also skip positions the patch cannot reach); by default the
    fastest one that reproduces the model's own forward pass on the corrupted prompt.
    """
    clean, corrupted = _check_tokens(model, clean, corrupted)
    ranks = {"full": 0, "layer": 1, "suffix": 2}
    if mode is not None and mode not in ranks:
        raise PatchingError(f"Unknown mode {mode!r}; use one of {', '.join(map(repr, ranks))}, or None.")
    with validate.reraise_as(PatchingError):
        batch_size = validate.positive_int(batch_size, "batch_size", allow_none=True)
    if max_memory_mb is not None and max_memory_mb <= 0:
        raise PatchingError(f"max_memory_mb must be positive, got {max_memory_mb}.")
    if getattr(model, "training", False):
        raise PatchingError("The model is in training mode (dropout on); call model.eval() first.")
    names = sorted({hook_name(p.site, p.layer) for p in patches})
    for name in names:
        check_hook_name(model, name)
    n_layers, (batch, n_pos) = model.cfg.n_layers, corrupted.shape
    causal = getattr(model.cfg, "attention_dir", "causal") == "causal"

    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean, names_filter=names)
        replayer = _Replay(model, batch, n_pos)
        replayer.capture()
        try:
            corrupted_logits, corrupted_cache = model.run_with_cache(
                corrupted, names_filter=[f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)])
        finally:
            replayer.release()
        corrupted_value = _metric_value(metric, corrupted_logits)
        baseline = corrupted_value.detach().float().cpu()
        available = _replay_mode(replayer, corrupted_cache, corrupted_logits, causal)
    if mode is not None and ranks[mode] > ranks[available]:
        raise PatchingError(f"mode {mode!r} does not reproduce {model.cfg.model_name}'s forward pass here.")
    mode = mode or available

    # Causality: a patch at position p changes no position before p, so it cannot move a metric
    # that reads only earlier logits. Positions before the first token where clean and corrupted
    # differ hold equal activations in both runs, so patches there change nothing at all.
    read = _positions_read(metric, corrupted_logits, corrupted_value) if causal else list(range(n_pos))
    first_diff = _first_difference(clean, corrupted) if causal else 0
    values = torch.full((len(patches),), float("nan"))
    groups: dict[int, list[int]] = {}
    for i, patch in enumerate(patches):
        reach = max(patch.index if SITES[patch.site][1] == "pos" else 0, first_diff)
        no_op = SITES[patch.site][1] == "pos" and patch.index < first_diff
        if no_op or reach > max(read):
            values[i] = baseline
            continue
        groups.setdefault(reach if mode == "suffix" else 0, []).append(i)

    jobs = []
    for start, members in sorted(groups.items()):
        members.sort(key=lambda i: patches[i].layer)
        n_read = len([q for q in read if q >= start])
        per_chunk, per_unembed = _chunk_sizes(model, n_pos - start, n_pos, n_read, batch, batch_size,
                                              max_memory_mb)
        jobs += [(start, members[i:i + per_chunk], per_unembed) for i in range(0, len(members), per_chunk)]
    steps = sum(1 if mode == "full" else n_layers - patches[chunk[0]].layer for _, chunk, _ in jobs)
    with torch.no_grad(), tqdm(total=steps, desc=desc, disable=not progress, leave=False) as bar:
        for start, chunk, per_unembed in jobs:
            chunk_patches = [patches[i] for i in chunk]
            hooks = _patch_hooks(chunk_patches, batch, clean_cache, start)
            with model.hooks(fwd_hooks=hooks):
                if mode == "full":
                    logits = model(corrupted.repeat(len(chunk), 1))
                    out = [_metric_value(metric, logits[v * batch:(v + 1) * batch]) for v in range(len(chunk))]
                    bar.update(1)
                else:
                    out = _run_chunk(replayer, chunk_patches, corrupted_cache, corrupted_logits, start,
                                     read, per_unembed, metric, bar)
            values[torch.tensor(chunk)] = torch.stack([v.detach().float().cpu() for v in out])
    return values


def _run_chunk(replayer: _Replay, chunk: Sequence[Patch], corrupted_cache, corrupted_logits, start: int,
               read: list[int], per_unembed: int, metric: Metric, bar) -> list[torch.Tensor]:
    """Climb the blocks from the chunk's lowest layer, adding each variant's rows at its layer;
    then unembed only the positions the metric reads at or after `start`."""
    batch, n_pos = replayer.batch, replayer.n_pos
    n_layers = len(replayer.model.blocks)
    counts = torch.bincount(torch.tensor([p.layer for p in chunk]), minlength=n_layers)
    x = None
    for layer in range(chunk[0].layer, n_layers):
        if counts[layer]:
            fresh = corrupted_cache[f"blocks.{layer}.hook_resid_pre"][:, start:].repeat(int(counts[layer]), 1, 1)
            x = fresh if x is None else torch.cat([x, fresh])
        x = replayer.block(layer, x, start)
        bar.update(1)
    computed = [q for q in read if q >= start]
    unchanged = [q for q in read if q < start]  # before the patch: the corrupted run's logits
    x = x[:, [q - start for q in computed]]
    out = []
    for first in range(0, len(chunk), per_unembed):
        last = min(len(chunk), first + per_unembed)
        fresh = replayer.logits(x[first * batch:last * batch])
        for v in range(last - first):
            if len(read) == n_pos and not unchanged:
                logits = fresh[v * batch:(v + 1) * batch]
            else:
                logits = corrupted_logits.new_full(corrupted_logits.shape, float("nan"))
                logits[:, unchanged] = corrupted_logits[:, unchanged]
                logits[:, computed] = fresh[v * batch:(v + 1) * batch]
            out.append(_metric_value(metric, logits))
    return out


# ---------------------------------------------------------------------------------------------
# Public sweeps


def residual_sweep(model, clean_tokens, corrupted_tokens, metric: Metric, *, site: str = "resid_pre",
                   batch_size: int | None = None, max_memory_mb: float | None = None,
                   progress: bool = True, layers: Sequence[int] | None = None) -> torch.Tensor:
    """Metric after patching the clean `site` activation at one (layer, position): [n_layers, pos].

    Same numbers as transformer_lens.patching.get_act_patch_resid_pre (or get_act_patch_attn_out /
    get_act_patch_mlp_out for site "attn_out" / "mlp_out"). `layers` restricts the sweep to those
    layers (rows in the order given).
    """
    _check_site(site, POSITION_SITES)
    clean_tokens, corrupted_tokens = _check_tokens(model, clean_tokens, corrupted_tokens)
    layers = _check_layers(model, layers)
    n_pos = corrupted_tokens.shape[1]
    patches = [Patch(layer, site, pos) for layer in layers for pos in range(n_pos)]
    values = run_patches(model, clean_tokens, corrupted_tokens, metric, patches, batch_size=batch_size,
                         max_memory_mb=max_memory_mb, progress=progress, desc=f"{site} sweep")
    return values.reshape(len(layers), n_pos)


def block_sweep(model, clean_tokens, corrupted_tokens, metric: Metric, *, batch_size: int | None = None,
                max_memory_mb: float | None = None, progress: bool = True,
                layers: Sequence[int] | None = None) -> torch.Tensor:
    """resid_pre, attn_out and mlp_out sweeps in one pass: [3, n_layers, pos].

    Same numbers as transformer_lens.patching.get_act_patch_block_every.
    """
    clean_tokens, corrupted_tokens = _check_tokens(model, clean_tokens, corrupted_tokens)
    layers = _check_layers(model, layers)
    n_pos = corrupted_tokens.shape[1]
    patches = [Patch(layer, site, pos) for site in BLOCK_SITES for layer in layers for pos in range(n_pos)]
    values = run_patches(model, clean_tokens, corrupted_tokens, metric, patches, batch_size=batch_size,
                         max_memory_mb=max_memory_mb, progress=progress, desc="block sweep")
    return values.reshape(len(BLOCK_SITES), len(layers), n_pos)


def head_sweep(model, clean_tokens, corrupted_tokens, metric: Metric, *, site: str = "z",
               batch_size: int | None = None, max_memory_mb: float | None = None,
               progress: bool = True, layers: Sequence[int] | None = None) -> torch.Tensor:
    """Metric after patching one head's clean output at every position: [n_layers, n_heads].

    Same numbers as transformer_lens.patching.get_act_patch_attn_head_out_all_pos.
    """
    _check_site(site, HEAD_SITES)
    clean_tokens, corrupted_tokens = _check_tokens(model, clean_tokens, corrupted_tokens)
    layers = _check_layers(model, layers)
    n_heads = model.cfg.n_heads
    patches = [Patch(layer, site, head) for layer in layers for head in range(n_heads)]
    values = run_patches(model, clean_tokens, corrupted_tokens, metric, patches, batch_size=batch_size,
                         max_memory_mb=max_memory_mb, progress=progress, desc="head sweep")
    return values.reshape(len(layers), n_heads)


# ---------------------------------------------------------------------------------------------
# Attribution patching


def attribution_patch(model, clean_tokens, corrupted_tokens, metric: Metric,
                      sites: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """First-order estimate of each sweep: {site: [n_layers, pos] or [n_layers, n_heads]}.

    `sites` defaults to every site in SITES that the model has (an attention-only model has no
    mlp_out); a site named explicitly must exist.

    Estimate = (clean_act - corrupted_act) . d metric / d act, with the gradient taken on the
    corrupted run and summed over the batch and the activation's last dimension (and, for heads,
    over positions), from one clean forward, one corrupted forward and one backward pass.
    """
    if sites is None:
        sites = [site for site in SITES if hook_name(site, 0) in model.hook_dict]
    with validate.reraise_as(PatchingError):
        sites = validate.strings(sites, "sites")
    for site in sites:
        _check_site(site, tuple(SITES))
    clean_tokens, corrupted_tokens = _check_tokens(model, clean_tokens, corrupted_tokens)
    n_layers = model.cfg.n_layers
    names = {(site, layer): hook_name(site, layer) for site in sites for layer in range(n_layers)}
    for name in names.values():
        check_hook_name(model, name)
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean_tokens, names_filter=sorted(set(names.values())))

    acts: dict[str, torch.Tensor] = {}

    def keep(act, hook, name):
        if not act.requires_grad:  # nothing upstream needs a gradient: make this one a leaf
            act = act.detach().requires_grad_(True)
        acts[name] = act
        return act

    hooks = [(name, lambda act, hook, name=name: keep(act, hook, name)) for name in sorted(set(names.values()))]
    with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
        value = _metric_value(metric, model(corrupted_tokens))
        if not value.requires_grad:
            raise PatchingError(
                "Attribution patching needs the gradient of the metric, but the metric's value is not connected to "
                "the logits (it returned a Python number, or used .item(), float() or .detach()). Return a tensor "
                "computed from the logits, e.g. (logits[:, -1, a] - logits[:, -1, b]).mean().")
        order = sorted(acts)
        grads = torch.autograd.grad(value, [acts[n] for n in order], allow_unused=True)
    grad_of = {n: (g if g is not None else torch.zeros_like(acts[n])) for n, g in zip(order, grads)}

    result = {}
    for site in sites:
        per_layer = []
        for layer in range(n_layers):
            name = names[(site, layer)]
            delta = clean_cache[name] - acts[name].detach()
            product = delta * grad_of[name]
            if SITES[site][1] == "pos":
                per_layer.append(product.sum(dim=(0, 2)))
            else:
                per_layer.append(product.sum(dim=(0, 1, 3)))
        result[site] = torch.stack(per_layer).detach().cpu()
    return result


# ---------------------------------------------------------------------------------------------
# Re-running only the top of the model


class RunFromLayer:
    """Many hooked runs of the same prompts whose hooks all sit at or above one layer.

    A hook on block `layer` or later cannot change blocks below it, so their output (the residual
    stream entering `layer`) is computed once, here; each call then runs only blocks `layer`.. and
    the unembedding, for `copies` repeats of the batch (copy c is rows c*B .. c*B + B - 1, so one
    call can hold many variants, each hook editing its own rows). `at`, a boolean mask
    [batch, pos], unembeds only those positions (the others are usually most of the cost of the
    logits). The replay is checked once against the model's own forward pass; a model whose blocks
    cannot be called this way runs every call in full (the same numbers, slower).
    """

    def __init__(self, model, tokens, layer: int):
        with validate.reraise_as(PatchingError):
            tokens = validate.token_ids(tokens, "tokens", model.cfg.d_vocab).to(model.cfg.device)
            self.layer = validate.index(layer, "layer", model.cfg.n_layers, "layers", allow_negative=False)
        self.model, self.tokens = model, tokens
        name = f"blocks.{self.layer}.hook_resid_pre"
        self.replayer = _Replay(model, tokens.shape[0], tokens.shape[1])
        self.replayer.capture()
        try:
            with torch.no_grad():
                self.logits, cache = model.run_with_cache(tokens, names_filter=[name])
        finally:
            self.replayer.release()
        self.resid = cache[name]
        try:
            with torch.no_grad():
                self.exact = _close(self._top(self.resid, None, record=True), self.logits)
        except Exception:  # an architecture whose blocks need more than we captured
            self.exact = False

    def _top(self, x: torch.Tensor, at: torch.Tensor | None, record: bool = False) -> torch.Tensor:
        for layer in range(self.layer, self.model.cfg.n_layers):
            x = self.replayer.block(layer, x, 0, record)
        return self.replayer.logits(x if at is None else x[at])

    def __call__(self, fwd_hooks=(), copies: int = 1, at: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [copies * batch, pos, vocab] with `fwd_hooks` on ([n, vocab] at the n True cells of `at`
        repeated `copies` times)."""
        with validate.reraise_as(PatchingError):
            copies = validate.positive_int(copies, "copies")
        fwd_hooks = list(fwd_hooks)
        for hook in fwd_hooks:
            name = hook[0] if isinstance(hook, (tuple, list)) and len(hook) == 2 else None
            parts = name.split(".") if isinstance(name, str) else []
            if len(parts) < 2 or parts[0] != "blocks" or not parts[1].isdigit() or int(parts[1]) < self.layer:
                raise PatchingError(f"Every hook must be a (name, function) pair on blocks.{self.layer} or later "
                                    f"(this run starts at layer {self.layer}), got {validate.describe(name if name else hook)}; "
                                    "start from a lower layer, or run the model in full with run_with_hooks.")
        if at is not None:
            if not isinstance(at, torch.Tensor) or at.dtype != torch.bool or at.shape != self.tokens.shape:
                raise PatchingError(f"`at` must be a boolean mask shaped like the tokens {tuple(self.tokens.shape)}, "
                                    f"got {validate.describe(at)}.")
            at = at.to(self.resid.device).repeat(copies, 1)
        with torch.no_grad(), self.model.hooks(fwd_hooks=fwd_hooks):
            if not self.exact:
                logits = self.model(self.tokens.repeat(copies, 1))
                return logits if at is None else logits[at]
            return self._top(self.resid.repeat(copies, 1, 1), at)
