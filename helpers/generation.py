"""Generation with hooks: batched greedy decoding that reuses a KV cache, and chat prompts.

:func:`generate` runs prompts in batches (left-padded, with an attention mask and per-row
positions), computes the prompt once, then feeds one new token per step while the model keeps its
keys and values in a KV cache. Hooks passed as ``fwd_hooks`` (TransformerLens ``(name, fn)`` pairs,
e.g. from :mod:`helpers.steering`) stay on for the prompt and every generated token; during the
decoding steps a hook sees ``[batch, 1, d]``, the newest token only.

Why not ``TransformerBridge.generate``? With the transformers version this course pins (5.x), the
decoder layers hand the cache to attention as ``cache=`` while TransformerLens 4's attention bridge
reads ``past_key_values=``. The cache is never filled, every new token attends to itself alone and
greedy output degenerates ("The-------"). :func:`kv_cache_fix` bridges the two names for the
duration of a call (a forward pre-hook per attention module, removed afterwards). The test suite
checks that cached generation equals recomputing the whole sequence at every step, hooks included.
``benchmarks/bench_generation.py`` compares speed with the bridge's own ``generate`` and plain
transformers.
"""
from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from helpers.errors import PromptError
from helpers.patching import _is_kv_cache
from helpers.tokens import check_hook_name, require_tokenizer


@dataclass
class Generation:
    """Greedy continuations: text [n] and new token ids [n, steps] (pad after a row's end token)."""

    texts: list[str]
    tokens: torch.Tensor


def _check_prompts(prompts, what: str = "prompts") -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise PromptError(f"`{what}` must be a non-empty list of strings, got {prompts!r:.80}.")
    for i, text in enumerate(prompts):
        if not isinstance(text, str) or not text.strip():
            raise PromptError(f"{what}[{i}] is {text!r:.60}: every prompt must be a non-empty string.")
    return list(prompts)


def chat_prompts(model, requests: Sequence[str], system: str | None = None) -> list[str]:
    """Each request as one user turn in the model's chat template, ending with the assistant's opener.

    system=None keeps the template's default system prompt (SmolLM2: "You are a helpful AI assistant
    named SmolLM, ..."); a string replaces it.
    """
    require_tokenizer(model)
    requests = _check_prompts(requests, "requests")
    if system is not None and (not isinstance(system, str) or not system.strip()):
        raise PromptError(f"`system` must be None (the template's default) or a non-empty string, got {system!r:.60}.")
    template = getattr(model.tokenizer, "chat_template", None)
    if not template:
        raise PromptError(f"{model.cfg.model_name}'s tokenizer has no chat template; pass plain prompts to generate().")
    out = []
    for request in requests:
        messages = ([{"role": "system", "content": system}] if system is not None else []) + [
            {"role": "user", "content": request}]
        try:
            text = model.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as error:  # jinja raises TemplateError (e.g. "System role not supported")
            raise PromptError(
                f"{model.cfg.model_name}'s chat template rejected these messages ({error}). "
                "If it does not take a system prompt, pass system=None and put the instruction in the request."
            ) from error
        if system is not None and system not in text:
            raise PromptError(f"{model.cfg.model_name}'s chat template dropped the system prompt; "
                              "put the instruction in the user turn instead.")
        out.append(text)
    return out


def _is_attention(module) -> bool:
    return hasattr(module, "_update_kv_cache")


def _rename_cache(module, args, kwargs):
    if kwargs.get("past_key_values") is None and kwargs.get("cache") is not None:
        kwargs = {**kwargs, "past_key_values": kwargs["cache"]}
    return args, kwargs


@contextlib.contextmanager
def kv_cache_fix(model):
    """While active, attention bridges receive the KV cache that transformers 5 passes as `cache=`."""
    handles = [module.register_forward_pre_hook(_rename_cache, with_kwargs=True)
               for module in model.modules() if _is_attention(module)]
    try:
        with warnings.catch_warnings():  # the bridge passes the cache by its deprecated name
            warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated", category=FutureWarning)
            yield
    finally:
        for handle in handles:
            handle.remove()


def _encode(model, prompts: list[str], prepend_bos: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids [n, width] and attention mask [n, width]."""
    tokenizer = model.tokenizer
    rows = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    if prepend_bos:
        rows = [[tokenizer.bos_token_id, *row] for row in rows]
    width = max(len(r) for r in rows)
    if width > model.cfg.n_ctx:
        raise PromptError(f"A prompt is {width} tokens; {model.cfg.model_name} reads at most {model.cfg.n_ctx}.")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids.to(model.cfg.device), mask.to(model.cfg.device)


def _check_hooks(model, fwd_hooks) -> list:
    hooks = list(fwd_hooks or [])
    for item in hooks:
        if not (isinstance(item, tuple) and len(item) == 2 and callable(item[1])):
            raise PromptError(f"`fwd_hooks` must be a list of (hook_name, function) pairs, got {item!r:.80}.")
        check_hook_name(model, item[0])
    return hooks


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def generate(model, prompts: Sequence[str], max_new_tokens: int = 20, fwd_hooks=(), batch_size: int = 32,
             prepend_bos: bool = False, stop_at_eos: bool = True) -> Generation:
    """Greedy continuations of `prompts` with `fwd_hooks` on, batched, reusing a KV cache.

    prepend_bos=False suits chat prompts (they open with their own <|im_start|>); use True for plain text.
    """
    require_tokenizer(model)
    prompts = _check_prompts(prompts)
    hooks = _check_hooks(model, fwd_hooks)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise PromptError(f"`max_new_tokens` must be a positive int, got {max_new_tokens!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise PromptError(f"`batch_size` must be a positive int, got {batch_size!r}.")
    eos = model.tokenizer.eos_token_id
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    texts, token_rows = [], []
    with torch.no_grad(), kv_cache_fix(model), model.hooks(fwd_hooks=hooks):
        for start in range(0, len(prompts), batch_size):
            ids, mask = _encode(model, prompts[start:start + batch_size], prepend_bos)
            positions = _positions(mask)
            logits, cache = model(ids, attention_mask=mask, position_ids=positions, return_type="logits_and_cache")
            done = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
            new = []
            for step in range(max_new_tokens):
                next_ids = logits[:, -1].argmax(-1)
                next_ids = torch.where(done, torch.full_like(next_ids, pad), next_ids)
                new.append(next_ids)
                if stop_at_eos and eos is not None:
                    done |= next_ids == eos
                if bool(done.all()) or step == max_new_tokens - 1:
                    break
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                positions = positions[:, -1:] + 1
                logits, cache = model(next_ids[:, None], attention_mask=mask, position_ids=positions,
                                      past_key_values=cache, return_type="logits_and_cache")
            block = torch.stack(new, dim=1).cpu()
            block = torch.nn.functional.pad(block, (0, max_new_tokens - block.shape[1]), value=pad)
            token_rows.append(block)
            for row in block.tolist():
                if stop_at_eos and eos is not None and eos in row:
                    row = row[:row.index(eos)]
                texts.append(model.tokenizer.decode(row))
    return Generation(texts, torch.cat(token_rows))


def last_logits(model, prompts: Sequence[str], fwd_hooks=(), batch_size: int = 32,
                prepend_bos: bool = False) -> torch.Tensor:
    """Next-token logits [n, d_vocab] after each prompt's last token, with `fwd_hooks` on (batched)."""
    require_tokenizer(model)
    prompts = _check_prompts(prompts)
    hooks = _check_hooks(model, fwd_hooks)
    out = []
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        for start in range(0, len(prompts), batch_size):
            ids, mask = _encode(model, prompts[start:start + batch_size], prepend_bos)
            logits = model(ids, attention_mask=mask, position_ids=_positions(mask), logits_to_keep=1)  # last column only
            out.append(logits[:, -1].float().cpu())
    return torch.cat(out)


def reference_generate(model, prompt: str, max_new_tokens: int, fwd_hooks=(), prepend_bos: bool = False) -> list[int]:
    """Greedy new token ids for one prompt, recomputing the whole sequence at every step (slow; for tests)."""
    ids, _ = _encode(model, _check_prompts([prompt]), prepend_bos)
    new = []
    with torch.no_grad(), model.hooks(fwd_hooks=_check_hooks(model, fwd_hooks)):
        for _ in range(max_new_tokens):
            next_id = model(ids)[0, -1].argmax()
            new.append(int(next_id))
            if next_id == model.tokenizer.eos_token_id:
                break
            ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
    return new


def _continuation_ids(model, continuation) -> list[int]:
    if not isinstance(continuation, str) or not continuation:
        raise PromptError(f"`continuation` must be a non-empty string (e.g. \"I cannot\"), got {continuation!r}.")
    return model.tokenizer.encode(continuation, add_special_tokens=False)


def continuation_logprobs(model, prompts: Sequence[str], continuation: str, fwd_hooks=(), batch_size: int = 32,
                          prepend_bos: bool = False) -> torch.Tensor:
    """Log-probability [n] of `continuation`'s tokens right after each prompt, teacher-forced, with hooks on.

    One batched forward pass of prompt + continuation: a cheap stand-in for "would the model say
    this?" (the reference for :class:`SuffixScorer`).
    """
    require_tokenizer(model)
    prompts = _check_prompts(prompts)
    hooks = _check_hooks(model, fwd_hooks)
    cont = _continuation_ids(model, continuation)
    k = len(cont)
    target = torch.tensor(cont)
    out = []
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        for start in range(0, len(prompts), batch_size):
            ids, mask = _encode(model, [p + continuation for p in prompts[start:start + batch_size]], prepend_bos)
            if not torch.equal(ids[:, -k:].cpu(), target.expand(len(ids), k)):
                raise PromptError(f"{continuation!r} tokenizes differently after a prompt than alone; "
                                  "start it with a token boundary (e.g. after the chat template's newline).")
            logprobs = model(ids, attention_mask=mask, position_ids=_positions(mask)).float().log_softmax(-1)
            picked = logprobs[:, -k - 1:-1].gather(-1, ids[:, -k:, None]).squeeze(-1)
            out.append(picked.sum(-1).cpu())
    return torch.cat(out)


class SuffixScorer:
    """Re-score a continuation after fixed prompts under many interventions on the prompts' last tokens.

    The prompts' first tokens are run once and kept in a KV cache; each call feeds only the last
    `free` prompt tokens and the continuation, one token at a time, with `fwd_hooks` on, and returns
    the continuation's log-probability [n]. Hooks therefore act on the last `free` prompt tokens and
    the continuation only (they see ``[n, 1, d]``; ``self.step`` is the index of the token being fed,
    0 = the first free prompt token), which is what makes a random-direction control with hundreds of
    draws affordable on a CPU. ``self.read`` holds the activations [n, d] at the `read` hooks at
    the last prompt token (after the hooks' edits) and ``self.last_logprobs`` the next-token
    log-probabilities [n, d_vocab] there, from the latest call. ``self.prefix_read`` holds the
    clean activations [n_offsets, n, d] at the `read` hooks at each `read_prefix` offset (e.g. -6: the
    sixth token from a prompt's end), captured while the prefix is cached. :meth:`many` runs a batch
    of vectors (e.g. random controls) through one pass per chunk.
    """

    def __init__(self, model, prompts: Sequence[str], continuation: str, free: int = 1, read: Sequence[str] = (),
                 read_prefix: Sequence[int] = ()):
        require_tokenizer(model)
        prompts = _check_prompts(prompts)
        if not isinstance(free, int) or free < 1:
            raise PromptError(f"`free` must be a positive int (prompt tokens fed with the hooks on), got {free!r}.")
        self.model, self.free = model, free
        self.read_names = [check_hook_name(model, name) for name in read]
        cont = _continuation_ids(model, continuation)
        ids, mask = _encode(model, prompts, prepend_bos=False)
        if free >= ids.shape[1] or int(mask[:, :-free].sum(-1).min()) < 1:
            raise PromptError(f"`free`={free} leaves no prompt tokens to cache; use a smaller `free`.")
        positions = _positions(mask)
        self.target = torch.tensor(cont, device=ids.device)
        self.feed = torch.cat([ids[:, -free:], self.target[:-1].expand(len(ids), -1)], dim=1)
        last = positions[:, -1:]
        self.feed_positions = torch.cat([positions[:, -free:], last + torch.arange(1, len(cont), device=ids.device)], 1)
        self.prefix_mask = mask[:, :-free]
        for offset in read_prefix:
            if not isinstance(offset, int) or not -int(mask.sum(-1).min()) <= offset < -free:
                raise PromptError(f"Each of `read_prefix` must be a negative int before the `free`={free} last tokens "
                                  f"and inside every prompt, got {offset!r}.")
        columns = [ids.shape[1] + offset for offset in read_prefix]  # left-padded: an offset is one column
        prefix_read = {}

        def capture(name):
            def hook(x, hook):
                prefix_read[name] = x[:, columns].transpose(0, 1).float().cpu()
                return x
            return hook

        hooks = [(name, capture(name)) for name in self.read_names] if columns else []
        with torch.no_grad(), kv_cache_fix(model), model.hooks(fwd_hooks=hooks):
            _, self.cache = model(ids[:, :-free], attention_mask=self.prefix_mask, position_ids=positions[:, :-free],
                                  return_type="logits_and_cache", logits_to_keep=1)  # only the cache is kept
        self.prefix_read = prefix_read
        self.step, self.read = 0, {}

    def __call__(self, fwd_hooks=()) -> torch.Tensor:
        hooks = _check_hooks(self.model, fwd_hooks)
        total, self.read, logprobs, self.cache = self._feed(hooks, self.cache, self.feed, self.feed_positions,
                                                            self.prefix_mask)
        self.last_logprobs = logprobs
        return total

    def many(self, hooks_for, vectors: torch.Tensor, chunk: int = 8, from_layer: int | None = None) -> torch.Tensor:
        """Scores [k, n]: row i equals ``self(hooks_for(vectors[i]))``, for `chunk` vectors per forward pass.

        The prompts' cache is repeated once per vector of a chunk, so one pass serves chunk x n rows.
        ``hooks_for`` receives the vectors laid out one per row, [chunk * n, d] (row p * chunk + i holds
        vector i for prompt p), which the last-position hooks of :mod:`helpers.steering` accept.
        ``self.many_read`` holds the `read` activations [k, n, d] at the last prompt token. On one CPU
        thread this costs about as much as k calls (every row still runs the whole model; copying the
        repeated cache takes what batching saves), so use it for its layout, not for speed.

        `from_layer` L is for hooks that all sit at block L or later (e.g. adding a vector at
        ``blocks.L.hook_resid_pre``): blocks below L then compute the same thing for every vector, so
        they run once, clean, and each chunk calls only blocks L.. directly, reading the prompts' keys
        and values without copying the model's cache (about 0.35 of the time for L = 20 of 30, in
        ``benchmarks/bench_suffix_scorer.py``; L = 0 is no faster than the usual way). The replay is checked once against the clean score; where it does not
        reproduce it, every chunk runs the usual way (the same numbers, slower).
        """
        vectors = torch.as_tensor(vectors).float()
        if vectors.dim() != 2 or len(vectors) < 1:
            raise PromptError(f"`vectors` must be [k, d] with k >= 1, got shape {tuple(vectors.shape)}.")
        if not isinstance(chunk, int) or chunk < 1:
            raise PromptError(f"`chunk` must be a positive int (vectors per forward pass), got {chunk!r}.")
        n_layers = self.model.cfg.n_layers
        if from_layer is not None and (not isinstance(from_layer, int) or isinstance(from_layer, bool)
                                       or not 0 <= from_layer < n_layers):
            raise PromptError(f"`from_layer` must be None or a block index 0..{n_layers - 1}, got {from_layer!r}.")
        replay = None if from_layer is None else self._replay_from(from_layer)
        n, scores, reads = len(self.feed), [], {name: [] for name in self.read_names}
        for start in range(0, len(vectors), chunk):
            block = vectors[start:start + chunk]
            c = len(block)
            hooks = _check_hooks(self.model, hooks_for(block.repeat(n, 1).to(self.feed.device)))
            if from_layer is not None:
                below = [name for name, _ in hooks if _block_of(name) < from_layer]
                if below:
                    raise PromptError(f"With from_layer={from_layer} every hook must sit at block {from_layer} or "
                                      f"later; {below[0]!r} does not. Use a lower from_layer (0 runs every block).")
            if replay is not None and replay.exact:
                total, read = replay.run(hooks, c)
            else:
                cache = copy.deepcopy(self.cache)
                cache.batch_repeat_interleave(c)
                repeat = lambda t: t.repeat_interleave(c, dim=0)  # noqa: E731
                total, read, _, _ = self._feed(hooks, cache, repeat(self.feed), repeat(self.feed_positions),
                                               repeat(self.prefix_mask))
            scores.append(total.view(n, c).T)
            for name in self.read_names:
                reads[name].append(read[name].view(n, c, -1).transpose(0, 1))
        self.many_read = {name: torch.cat(parts) for name, parts in reads.items()}
        return torch.cat(scores)

    def _replay_from(self, layer: int) -> _FromLayer:
        if not hasattr(self, "_replays"):
            self._replays = {}
        if layer not in self._replays:
            self._replays[layer] = _FromLayer(self, layer)
        return self._replays[layer]

    def _read_hooks(self, names, captured: dict) -> list:
        """Hooks storing each named activation at the last prompt token (step free - 1) in `captured`."""
        def capture(name):
            def hook(x, hook):
                if self.step == self.free - 1:
                    captured[name] = x[:, -1].float().cpu()
                return x
            return hook
        return [(name, capture(name)) for name in names]

    def _feed(self, hooks, cache, feed, feed_positions, prefix_mask):
        """Feed the free prompt tokens and the continuation one at a time over `cache`, hooks on.

        Returns the continuation's log-probability [rows], the `read` activations at the last prompt
        token, the next-token log-probabilities there, and the cache cut back to the prompts' prefix.
        """
        model, captured = self.model, {}
        hooks = hooks + self._read_hooks(self.read_names, captured)
        mask, total, last_logprobs = prefix_mask, torch.zeros(len(feed)), None
        try:
            with torch.no_grad(), kv_cache_fix(model), model.hooks(fwd_hooks=hooks):
                for step in range(feed.shape[1]):
                    self.step = step
                    mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                    logits, cache = model(feed[:, step:step + 1], attention_mask=mask,
                                          position_ids=feed_positions[:, step:step + 1],
                                          past_key_values=cache, return_type="logits_and_cache")
                    if step == self.free - 1:
                        last_logprobs = logits[:, -1].float().log_softmax(-1).cpu()
                    if step >= self.free - 1:
                        target = self.target[step - self.free + 1]
                        total += logits[:, -1].float().log_softmax(-1)[:, target].cpu()
        finally:  # back to the prompts' cached prefix for the next call
            extra = cache.get_seq_length() - prefix_mask.shape[1]
            if extra > 0:
                cache.crop(-extra)
        return total, captured, last_logprobs, cache


def _block_of(name: str) -> int:
    """The block index of a hook name (-1 for hooks before the blocks, n_layers-like for after)."""
    parts = name.split(".")
    if parts[0] == "blocks" and len(parts) > 1 and parts[1].isdigit():
        return int(parts[1])
    return -1 if name.startswith(("hook_embed", "embed", "hook_pos_embed", "pos_embed")) else 10 ** 6


def _repeat_rows(value, n: int, c: int):
    """A block keyword argument for c copies of each of n rows (row p * c + i), recursively through tuples."""
    if isinstance(value, (tuple, list)):
        return type(value)(_repeat_rows(v, n, c) for v in value)
    if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == n and c > 1:
        return value.repeat_interleave(c, dim=0)
    return value


class _GrowingKV:
    """Stands in for a KV cache for blocks `layer`..: starts from the prompts' cached keys and values, and
    appends each fed token's, as the real cache would."""

    def __init__(self, keys: dict, values: dict):
        self.keys, self.values = keys, values

    def update(self, key, value, layer_idx, *args, **kwargs):
        self.keys[layer_idx] = torch.cat([self.keys[layer_idx], key], dim=-2)
        self.values[layer_idx] = torch.cat([self.values[layer_idx], value], dim=-2)
        return self.keys[layer_idx], self.values[layer_idx]


class _FromLayer:
    """SuffixScorer.many from block `layer` up: the residual entering it at every fed token, and the
    keyword arguments each block got, are captured in one clean pass; each chunk then runs blocks
    layer.. on its rows, one token per step, with hooks on."""

    def __init__(self, scorer: SuffixScorer, layer: int):
        model, self.scorer, self.layer = scorer.model, scorer, layer
        self.resid: list[torch.Tensor] = []
        self.kwargs: dict[int, list[dict]] = {block: [] for block in range(layer, model.cfg.n_layers)}

        def pre_hook(block):
            def hook(module, args, kwargs):
                self.kwargs[block].append({k: v for k, v in kwargs.items() if not _is_kv_cache(v)})
            return hook

        def grab(x, hook):
            self.resid.append(x.detach().clone())
            return x

        handles = [model.blocks[block].register_forward_pre_hook(pre_hook(block), with_kwargs=True)
                   for block in self.kwargs]
        try:
            clean, read, _, scorer.cache = scorer._feed([(f"blocks.{layer}.hook_resid_pre", grab)], scorer.cache,
                                                        scorer.feed, scorer.feed_positions, scorer.prefix_mask)
        finally:
            for handle in handles:
                handle.remove()
        self.clean_read = read
        self.prefix = {block: (scorer.cache.layers[block].keys, scorer.cache.layers[block].values)
                       for block in self.kwargs}
        try:
            replayed, _ = self.run([], 1)
            self.exact = bool((replayed - clean).abs().max() <= 1e-4 * max(1.0, clean.abs().max().item()))
        except Exception:  # noqa: BLE001 - an architecture whose blocks need more than was captured
            self.exact = False

    def run(self, hooks, c: int) -> tuple[torch.Tensor, dict]:
        """Continuation log-probabilities [n * c] and `read` activations [n * c, d], rows p * c + i."""
        scorer, model = self.scorer, self.scorer.model
        n, captured = len(scorer.feed), {}
        kv = _GrowingKV({b: k.repeat_interleave(c, 0) for b, (k, _) in self.prefix.items()},
                        {b: v.repeat_interleave(c, 0) for b, (_, v) in self.prefix.items()})
        low = [name for name in scorer.read_names if _block_of(name) < self.layer]
        for name in low:  # below the replay: the clean activations, the same for every copy
            captured[name] = self.clean_read[name].repeat_interleave(c, 0)
        hooks = list(hooks) + scorer._read_hooks([name for name in scorer.read_names if name not in low], captured)
        total = torch.zeros(n * c)
        with torch.no_grad(), kv_cache_fix(model), model.hooks(fwd_hooks=hooks):
            for step, resid in enumerate(self.resid):
                scorer.step = step
                x = resid.repeat_interleave(c, 0)
                for block, per_step in self.kwargs.items():
                    kwargs = {k: _repeat_rows(v, n, c) for k, v in per_step[step].items()}
                    if "use_cache" in kwargs:
                        kwargs["use_cache"] = False
                    kwargs["layer_past"] = kv
                    out = model.blocks[block](x, **kwargs)
                    x = out[0] if isinstance(out, tuple) else out
                if step >= scorer.free - 1:
                    logits = model.unembed(model.ln_final(x))[:, -1].float()
                    total += logits.log_softmax(-1)[:, scorer.target[step - scorer.free + 1]].cpu()
        return total, captured
