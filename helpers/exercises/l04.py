"""Lesson 04 exercises: the logit difference, residual-stream patching by hand, attribution patching, patching one
head's queries, keys or values, and finding which of them carries a head's effect.

Cases are built so that each plausible mistake gives a different answer: random logits whose first
and last positions disagree (reading the wrong position shows) and whose answers are not symmetric
(swapping them shows); a small IOI batch on the real model where patching the position before S2
changes nothing, so the wrong position shows, and where running the clean prompt with corrupted
activations gives a different number from the reverse. Mistakes each case separates:

logit_diff(logits, io_ids, s_ids)
  * IO and S swapped; position 0 or the second-to-last position instead of the last; probabilities
    instead of logits; a sum over the batch instead of the mean: every case.
  * abs() of each difference or of the mean: a batch of 4 whose differences have both signs and a
    negative mean.
  * only prompt 0, the same answer id for every prompt, or last[:, io_ids] (a [batch, batch] block):
    batches of 3 and 4 with different ids per prompt.

patch_resid_pre(model, clean_tokens, corrupted_tokens, metric, layer, pos)
  * the position before `pos`, every position, or only the last: S2, the token before S2, END.
  * corrupted patched into clean, or the clean run patched into itself: every case.
  * resid_post (one block late), or the layer ignored: layers 0, 0, 22 and 12.
  * only pair 0 patched: every case has two IOI pairs.
  * the metric ignored (e.g. a metric defined outside the function): the last case uses the raw
    logit difference instead of the normalised one.
  * hooks left on the model: reported by the check (the model is in every case's arguments).

attribution_patch_resid(model, clean_tokens, corrupted_tokens, metric)
  * the sign of (clean - corrupted) flipped, abs(), the gradient taken on the clean run, the gradient
    times the clean activation alone: every case (the estimates have both signs).
  * a mean over the batch instead of the sum, or only pair 0: two pairs in every case.
  * resid_post instead of resid_pre: every case.
  * the metric ignored: the second case uses the raw logit difference.
  * hooks left on the model: reported by the check.

patch_head_input(model, clean_tokens, corrupted_tokens, metric, layer, head, which)
  * the key/value head indexed by the query head (hook_k[:, :, head]): L23H0 keys pass by luck (head 0),
    L20H7 keys raise an index error (3 key/value heads); head % 3 instead of head // 3: L20H7 (7 % 3 = 1).
  * every head's q/k/v patched, or the layer's attention output: every case.
  * corrupted patched into clean: every case; only the last position: every case (queries at S2 matter).
  * `which` ignored (always q): the values and keys cases; the metric ignored: the raw-metric case.

carrying_input(model, clean_tokens, corrupted_tokens, metric, layer, head) -> 'q' | 'k' | 'v'   (a finding)
  Checked on held-out-template pairs for L17H4 (queries), L23H3 (values) and L23H0 (queries), so one
  fixed letter fails, and so does the input that restores the LEAST, or the largest |effect| when a
  negative effect is the largest in size.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from helpers import ioi
from helpers.checks import Case, CheckResult, check

__all__ = ["reference_logit_diff", "reference_patch_resid_pre", "reference_attribution_patch_resid",
           "reference_patch_head_input", "reference_carrying_input", "check_logit_diff", "check_patch_resid_pre",
           "check_attribution_patch_resid", "check_patch_head_input", "check_carrying_input", "exercise_pairs",
           "held_out_pairs", "patch_head_inputs", "QKV_HEADS"]


def reference_logit_diff(logits: torch.Tensor, io_ids: torch.Tensor, s_ids: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of logit(IO) - logit(S) at the last position: logits [batch, pos, vocab] -> scalar."""
    last = logits[:, -1]
    rows = torch.arange(last.shape[0])
    return (last[rows, io_ids] - last[rows, s_ids]).mean()


def reference_patch_resid_pre(model, clean_tokens: torch.Tensor, corrupted_tokens: torch.Tensor,
                              metric: Callable, layer: int, pos: int) -> torch.Tensor:
    """metric of the corrupted run with blocks.{layer}.hook_resid_pre at `pos` replaced by its clean value."""
    name = f"blocks.{layer}.hook_resid_pre"
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean_tokens, names_filter=[name])

        def patch(resid, hook):
            resid = resid.clone()
            resid[:, pos] = clean_cache[name][:, pos]
            return resid

        logits = model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, patch)])
    return metric(logits)


def reference_attribution_patch_resid(model, clean_tokens: torch.Tensor, corrupted_tokens: torch.Tensor,
                                      metric: Callable) -> torch.Tensor:
    """First-order estimate of every resid_pre patch: [n_layers, pos].

    estimate[L, p] = sum over batch and d_model of (clean - corrupted)[:, p] * d metric / d resid_pre[L]
    with the gradient taken on the corrupted run.
    """
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean_tokens, names_filter=names)
    saved = {}

    def keeper(name):
        def keep(resid, hook):
            saved[name] = resid  # kept attached to the graph, so autograd can reach it
            return resid
        return keep

    with torch.enable_grad():
        logits = model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, keeper(name)) for name in names])
        grads = torch.autograd.grad(metric(logits), [saved[name] for name in names])
    rows = [((clean_cache[name] - saved[name].detach()) * grad).sum((0, 2)) for name, grad in zip(names, grads)]
    return torch.stack(rows)


_LOGIT_HINT = ("read the LAST position (logits[:, -1]), subtract the S logit from the IO logit (raw logits, no "
               "softmax) for each prompt, then average over the batch")


def _logit_cases() -> list[Case]:
    # Expected values are floats, so a 0-d tensor, a Python float or a numpy number all pass.
    gen = torch.Generator().manual_seed(4)
    cases = []
    for name, (batch, pos, vocab) in [("batch of 3, 5 positions, 10-token vocabulary", (3, 5, 10)),
                                      ("one prompt, 4 positions, 7-token vocabulary", (1, 4, 7))]:
        logits = torch.randn(batch, pos, vocab, generator=gen) * 3
        io_ids = torch.randint(0, vocab, (batch,), generator=gen)
        s_ids = (io_ids + 1 + torch.randint(0, vocab - 1, (batch,), generator=gen)) % vocab
        # The last position prefers IO and position 0 prefers S, so both a swap and a wrong position show.
        logits[torch.arange(batch), -1, io_ids] += 4.0
        logits[torch.arange(batch), 0, s_ids] += 4.0
        cases.append(Case(name, (logits, io_ids, s_ids), float(reference_logit_diff(logits, io_ids, s_ids)),
                          hint=_LOGIT_HINT))
    # Four prompts, like corrupted runs: three prefer S at the last position, one prefers IO, so the
    # per-prompt differences have both signs and the mean is negative.
    logits = torch.randn(4, 6, 9, generator=gen)
    io_ids, s_ids = torch.tensor([1, 4, 6, 0]), torch.tensor([3, 2, 8, 5])
    logits[torch.arange(4), -1, s_ids] += torch.tensor([3.0, 2.0, 4.0, -5.0])
    cases.append(Case("batch of 4 where the answer is mostly S (a negative difference)", (logits, io_ids, s_ids),
                      float(reference_logit_diff(logits, io_ids, s_ids)),
                      hint="keep the sign: a prompt that prefers S has a negative difference, and the mean can be "
                           "negative. Index each prompt's own ids (last[rows, io_ids] with rows = arange(batch)). "
                           + _LOGIT_HINT))
    return cases


def check_logit_diff(fn: Callable) -> CheckResult:
    """Check logit_diff(logits [batch, pos, vocab], io_ids [batch], s_ids [batch]) -> scalar."""
    return check("logit_diff", fn, _logit_cases, atol=1e-5, rtol=1e-4)


def _pairs_and_gap(model) -> tuple[ioi.IOIDataset, Callable, float]:
    full = ioi.make_dataset(model, n_pairs=2, templates=ioi.TEMPLATES[:2], seed=3)
    pairs = full.subset([0, 7])
    with torch.no_grad():
        clean = ioi.logit_diff(model(pairs.clean_tokens), pairs.io_ids, pairs.s_ids)
        corrupted = ioi.logit_diff(model(pairs.corrupted_tokens), pairs.io_ids, pairs.s_ids)
    return pairs, ioi.normalized_metric(pairs, clean, corrupted), float(clean) - float(corrupted)


def exercise_pairs(model) -> tuple[ioi.IOIDataset, Callable]:
    """Two IOI pairs (different templates, names and orders) and their normalised logit-difference metric."""
    pairs, metric, _ = _pairs_and_gap(model)
    return pairs, metric


_PATCH_HINT = ("cache the CLEAN run, then run the CORRUPTED tokens with a hook on blocks.{layer}.hook_resid_pre that "
               "overwrites only position `pos` (resid[:, pos], every prompt of the batch) with the clean value, and "
               "return metric(logits), using the `metric` you were given")


def _patch_cases(model) -> list[Case]:
    pairs, metric = exercise_pairs(model)
    s2 = int(pairs.s2_pos[0])
    end = pairs.clean_tokens.shape[1] - 1
    args = (model, pairs.clean_tokens, pairs.corrupted_tokens)
    raw = ioi.logit_diff_metric(pairs)
    cases = []
    for layer, pos, where, fn, kind in [(0, s2, "S2", metric, "normalised"),
                                        (0, s2 - 1, "the token before S2", metric, "normalised"),
                                        (model.cfg.n_layers - 8, end, "END", metric, "normalised"),
                                        (model.cfg.n_layers // 2 - 3, s2, "S2", raw, "raw logit difference")]:
        cases.append(Case(f"two IOI pairs, layer {layer}, position {pos} ({where}), {kind} metric",
                          (*args, fn, layer, pos), float(reference_patch_resid_pre(*args, fn, layer, pos)),
                          hint=_PATCH_HINT))
    return cases


def check_patch_resid_pre(fn: Callable, model) -> CheckResult:
    """Check patch_resid_pre(model, clean_tokens, corrupted_tokens, metric, layer, pos) -> metric value."""
    return check("patch_resid_pre", fn, lambda: _patch_cases(model), atol=1e-3, rtol=1e-3)


_ATTRIBUTION_HINT = ("take the gradient of the metric you were given on the CORRUPTED run with respect to each "
                     "blocks.{L}.hook_resid_pre, multiply by (clean - corrupted) activations, and sum over the "
                     "batch and d_model, keeping [layer, pos]")


def _attribution_cases(model) -> list[Case]:
    pairs, metric, gap = _pairs_and_gap(model)
    args = (model, pairs.clean_tokens, pairs.corrupted_tokens)
    normalised = reference_attribution_patch_resid(*args, metric)
    # raw logit difference = gap * normalised + constant, and the estimate is linear in the metric's
    # gradient, so the raw metric's estimate is gap * the normalised one (tested against a direct run).
    return [Case("two IOI pairs, every layer and position, normalised metric", (*args, metric), normalised,
                 hint=_ATTRIBUTION_HINT),
            Case("two IOI pairs, every layer and position, raw logit difference metric",
                 (*args, ioi.logit_diff_metric(pairs)), normalised * gap, hint=_ATTRIBUTION_HINT)]


def check_attribution_patch_resid(fn: Callable, model) -> CheckResult:
    """Check attribution_patch_resid(model, clean_tokens, corrupted_tokens, metric) -> [n_layers, pos]."""
    return check("attribution_patch_resid", fn, lambda: _attribution_cases(model), atol=2e-3, rtol=1e-2)


# --- Exercise 4: patch one head's queries, keys or values -----------------------------------------

def reference_patch_head_input(model, clean_tokens: torch.Tensor, corrupted_tokens: torch.Tensor, metric: Callable,
                               layer: int, head: int, which: str) -> torch.Tensor:
    """metric of the corrupted run with head `head`'s queries ('q'), keys ('k') or values ('v') taken from the clean run.

    Keys and values live at blocks.{layer}.attn.hook_k / hook_v, [batch, pos, n_key_value_heads, d_head]:
    query head h reads key/value head h // (n_heads // n_key_value_heads), shared with the other heads of
    its group, so patching "its" keys or values patches them for the whole group.
    """
    name = f"blocks.{layer}.attn.hook_{which}"
    index = head if which == "q" else head // (model.cfg.n_heads // model.cfg.n_key_value_heads)
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean_tokens, names_filter=[name])

        def patch(x, hook):
            x = x.clone()
            x[:, :, index] = clean_cache[name][:, :, index]
            return x

        logits = model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, patch)])
    return metric(logits)


def patch_head_inputs(model, clean_tokens: torch.Tensor, corrupted_tokens: torch.Tensor,
                      specs: list[tuple[Callable, int, int, str]]) -> list[torch.Tensor]:
    """reference_patch_head_input for each (metric, layer, head, which) in `specs`, in two forward passes.

    The clean run is cached once for every spec, and the patched corrupted runs go through the model
    together: the corrupted batch repeated once per spec, each block of rows with its own slice patched.
    The same numbers as one call per spec (up to float rounding), for a fraction of the passes.
    """
    group = model.cfg.n_heads // model.cfg.n_key_value_heads
    batch = corrupted_tokens.shape[0]
    slices: dict[str, list[tuple[int, int]]] = {}
    for i, (_, layer, head, which) in enumerate(specs):
        slices.setdefault(f"blocks.{layer}.attn.hook_{which}", []).append((i, head if which == "q" else head // group))
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean_tokens, names_filter=list(slices))

        def patcher(name):
            def patch(x, hook):
                x = x.clone()
                for i, index in slices[name]:
                    x[i * batch:(i + 1) * batch, :, index] = clean_cache[name][:, :, index]
                return x
            return patch

        logits = model.run_with_hooks(corrupted_tokens.repeat(len(specs), 1),
                                      fwd_hooks=[(name, patcher(name)) for name in slices])
    return [spec[0](logits[i * batch:(i + 1) * batch]) for i, spec in enumerate(specs)]


_QKV_HINT = ("cache blocks.{layer}.attn.hook_q / hook_k / hook_v on the CLEAN run and overwrite only the slice "
             "this head reads in the CORRUPTED run, at every position: queries have one slice per head "
             "(hook_q[:, :, head]); keys and values one per key/value head, shared by n_heads // n_key_value_heads "
             "query heads (hook_k[:, :, head // 3] in SmolLM2), then return metric(logits)")


def _qkv_cases(model) -> list[Case]:
    pairs, metric, gap = _pairs_and_gap(model)
    args = (model, pairs.clean_tokens, pairs.corrupted_tokens)
    raw = ioi.logit_diff_metric(pairs)
    specs = [("L17H4 queries", (metric, 17, 4, "q")), ("L23H3 values", (metric, 23, 3, "v")),
             ("L23H0 keys (key/value head 0)", (metric, 23, 0, "k")),
             ("L24H4 values, the raw logit difference as metric", (raw, 24, 4, "v")),
             ("L20H7 keys (key/value head 2)", (metric, 20, 7, "k"))]
    values = patch_head_inputs(*args, [spec for _, spec in specs])  # the reference's numbers, in one batched pass
    return [Case(name, (*args, *spec), float(value), hint=_QKV_HINT) for (name, spec), value in zip(specs, values)]


def check_patch_head_input(fn: Callable, model) -> CheckResult:
    """Check patch_head_input(model, clean_tokens, corrupted_tokens, metric, layer, head, which) -> scalar."""
    return check("patch_head_input", fn, lambda: _qkv_cases(model), atol=2e-3, rtol=1e-2)


# --- Exercise 5: which input carries a head's effect? (a finding, checked on held-out templates) ----

QKV_HEADS = ((17, 4), (23, 3), (23, 0))  # heads whose answer is clear on the held-out templates


def held_out_pairs(model) -> tuple[ioi.IOIDataset, Callable]:
    """IOI pairs from the held-out templates (never used to choose heads) and their normalised metric."""
    data = ioi.make_dataset(model, n_pairs=1, templates=ioi.HELD_OUT_TEMPLATES, seed=5)
    data = data.subset([0, 3, 4, 7, 8, 11, 12])  # one pair per template, both name orders
    with torch.no_grad():
        clean = ioi.logit_diff(model(data.clean_tokens), data.io_ids, data.s_ids)
        corrupted = ioi.logit_diff(model(data.corrupted_tokens), data.io_ids, data.s_ids)
    return data, ioi.normalized_metric(data, clean, corrupted)


def reference_carrying_input(model, clean_tokens: torch.Tensor, corrupted_tokens: torch.Tensor, metric: Callable,
                             layer: int, head: int) -> str:
    """'q', 'k' or 'v': the input whose clean value alone restores most of the metric in the corrupted run."""
    values = patch_head_inputs(model, clean_tokens, corrupted_tokens, [(metric, layer, head, w) for w in "qkv"])
    effects = dict(zip("qkv", map(float, values)))
    return max(effects, key=effects.get)


def _carrying_cases(model) -> list[Case]:
    data, metric = held_out_pairs(model)
    args = (model, data.clean_tokens, data.corrupted_tokens, metric)
    return [Case(f"L{layer}H{head} on {len(data)} held-out-template pairs", (*args, layer, head),
                 reference_carrying_input(*args, layer, head),
                 hint="patch the head's q, k and v one at a time (exercise 4) and name the one that restores the "
                      "most of the clean metric; different heads get their information through different inputs")
            for layer, head in QKV_HEADS]


def check_carrying_input(fn: Callable, model) -> CheckResult:
    """Check carrying_input(model, clean_tokens, corrupted_tokens, metric, layer, head) -> 'q', 'k' or 'v'."""
    return check("carrying_input", fn, lambda: _carrying_cases(model), compare_fn=_same_letter, time_limit=120)


def _same_letter(got, expected: str) -> str | None:
    if not isinstance(got, str) or got.strip().lower() not in ("q", "k", "v"):
        return f"expected one of 'q', 'k', 'v', got {got!r}"
    return None if got.strip().lower() == expected else f"expected {expected!r}, got {got!r}"
