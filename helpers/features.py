"""Reading and testing SAE features: quality metrics, top contexts, promoted tokens, selectivity, steering, ablation.

Works with any :class:`helpers.sae.SAE` and the TransformerBridge whose hook it was trained on.
Documents are token-id lists with BOS first (:func:`helpers.sae.document_tokens`); BOS positions
are never encoded, spliced or scored (their activations are outliers, hundreds of times larger).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from helpers import validate
from helpers.patching import RunFromLayer
from helpers.sae import SAE, SAEError, _padded


@dataclass
class FeatureActs:
    """Sparse feature activations of many tokens: values and indices [n_tokens, k], doc and pos [n_tokens]."""

    values: torch.Tensor
    indices: torch.Tensor
    doc: torch.Tensor
    pos: torch.Tensor
    d_sae: int

    def column(self, feature: int) -> torch.Tensor:
        """Activation of one feature on every token [n_tokens] (0 where it is not among the active ones)."""
        feature = validate.index(feature, "feature", self.d_sae, "features", allow_negative=False)
        return (self.values * (self.indices == feature)).sum(-1)

    def fired(self) -> torch.Tensor:
        """How many tokens each feature is active on [d_sae]."""
        counts = torch.zeros(self.d_sae)
        return counts.index_add_(0, self.indices[self.values > 0], torch.ones(int((self.values > 0).sum())))


def encode_documents(sae: SAE, acts: Sequence[torch.Tensor]) -> FeatureActs:
    """Encode each document's activations [pos_i, d_model] (BOS skipped) into sparse FeatureActs."""
    rows, docs, positions = [], [], []
    for index, act in enumerate(acts):
        rows.append(act[1:])
        docs.append(torch.full((len(act) - 1,), index))
        positions.append(torch.arange(1, len(act)))
    f = sae.encode(torch.cat(rows))
    values, indices = f.topk(sae.k, dim=-1)
    return FeatureActs(values, indices, torch.cat(docs), torch.cat(positions), sae.d_sae)


def reconstruction_stats(sae: SAE, x: torch.Tensor) -> dict[str, float]:
    """L0 (mean active features per token) and fraction of variance explained on activations x [n_tokens, d_model]."""
    x = validate.tensor(x, "x", ndim=2, shape_doc="[n_tokens, d_model]")
    x_hat, f = sae(x)
    fve = 1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    return {"L0": (f > 0).sum(-1).float().mean().item(), "variance_explained": fve.item()}


def next_token_loss(model, tokens: list[torch.Tensor], hook: str | None = None, replace=None,
                    batch_size: int = 16) -> float:
    """Mean next-token loss over every non-BOS position, optionally with `replace(act [batch, pos, d])` at `hook`.

    `replace` sees the activations of the non-BOS positions only and returns what goes in their place.
    """
    total, count = 0.0, 0
    for start in range(0, len(tokens), batch_size):
        batch = tokens[start:start + batch_size]
        ids = _padded(batch, model.tokenizer.pad_token_id or 0)
        lengths = torch.tensor([len(t) for t in batch])
        hooks = [(hook, _splice(replace))] if replace is not None else []
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            logits = model(ids)
        # predictions made at positions 1 .. len-2 (the BOS position's prediction is not spliced)
        batch_total, n = _summed_loss(logits, ids, lengths)
        total += batch_total
        count += n
    return total / count


def _splice(replace):
    """A hook putting replace(act) in place of the activations of every non-BOS position."""
    def splice(act, hook):  # noqa: ARG001
        act = act.clone()
        act[:, 1:] = replace(act[:, 1:])
        return act
    return splice


def _summed_loss(logits: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[float, int]:
    """Summed next-token loss and count over positions 1 .. len-2 of each row (what next_token_loss averages)."""
    x = logits[:, 1:-1].float()
    logp = x.gather(-1, ids[:, 2:, None])[..., 0] - x.logsumexp(-1)
    mask = torch.arange(1, ids.shape[1] - 1)[None] < (lengths[:, None] - 1)
    return -(logp * mask).sum().item(), int(mask.sum())


def next_token_losses(model, tokens: list[torch.Tensor], hook: str, replaces: dict, batch_size: int = 16
                      ) -> dict[str, float]:
    """{"clean": loss, name: loss with replaces[name] at `hook`, ...}: next_token_loss for many replacements at once.

    Each batch runs in full once (the clean loss); each replacement then replays only the blocks from the
    hook's block up (:class:`helpers.patching.RunFromLayer`), since nothing below the hook can change.
    Same numbers as one next_token_loss call per replacement (tested to 1e-4), in about half the time.
    """
    from helpers.tokens import check_hook_name

    hook = check_hook_name(model, hook)
    if not isinstance(replaces, dict) or not replaces or not all(callable(f) for f in replaces.values()):
        raise SAEError("`replaces` must be a non-empty dict {name: function(act) -> act}, got "
                       f"{validate.describe(replaces)}.")
    parts = hook.split(".")
    layer = int(parts[1]) if parts[0] == "blocks" else None
    batch_size = validate.positive_int(batch_size, "batch_size")
    totals, count = dict.fromkeys(["clean", *replaces], 0.0), 0
    for start in range(0, len(tokens), batch_size):
        batch = tokens[start:start + batch_size]
        ids = _padded(batch, model.tokenizer.pad_token_id or 0)
        lengths = torch.tensor([len(t) for t in batch])
        if layer is None:  # a hook before the blocks: every run is a full one
            run = lambda hooks: model.run_with_hooks(ids, fwd_hooks=hooks)  # noqa: E731
            clean = model(ids)
        else:
            replay = RunFromLayer(model, ids, layer)
            run, clean = replay, replay.logits
        with torch.no_grad():
            total, n = _summed_loss(clean, ids, lengths)
            totals["clean"] += total
            count += n
            for name, replace in replaces.items():
                totals[name] += _summed_loss(run([(hook, _splice(replace))]), ids, lengths)[0]
    return {name: total / count for name, total in totals.items()}


def spliced_losses(model, sae: SAE, tokens: list[torch.Tensor], mean_act: torch.Tensor) -> dict[str, float]:
    """Next-token loss clean, with the SAE's reconstruction spliced in, and with the layer zero- and mean-ablated."""
    mean_act = validate.tensor(mean_act, "mean_act", ndim=1, shape_doc="[d_model]")
    out = next_token_losses(model, tokens, sae.hook, {
        "sae": lambda a: sae(a)[0], "zero_ablation": torch.zeros_like, "mean_ablation": lambda a: mean_act.expand_as(a)})
    out["recovered_vs_zero"] = (out["zero_ablation"] - out["sae"]) / (out["zero_ablation"] - out["clean"])
    out["recovered_vs_mean"] = (out["mean_ablation"] - out["sae"]) / (out["mean_ablation"] - out["clean"])
    return out


def top_contexts(model, tokens: list[torch.Tensor], acts: FeatureActs, feature: int, k: int = 8,
                 window: int = 6) -> pd.DataFrame:
    """The k tokens where `feature` fires most: activation, doc, position, token, context (`window` tokens before, [token])."""
    k = validate.positive_int(k, "k")
    column = acts.column(feature)
    order = column.argsort(descending=True, stable=True)[:k]
    rows = []
    for i in order.tolist():
        if column[i] <= 0:
            break
        doc, pos = int(acts.doc[i]), int(acts.pos[i])
        pieces = model.tokenizer.convert_ids_to_tokens(tokens[doc][max(1, pos - window):pos + 1].tolist())
        pieces = [model.tokenizer.convert_tokens_to_string([p]) for p in pieces]
        rows.append({"activation": round(column[i].item(), 3), "doc": doc, "position": pos, "token": pieces[-1],
                     "context": "".join(pieces[:-1]) + f"[{pieces[-1]}]"})
    return pd.DataFrame(rows, columns=["activation", "doc", "position", "token", "context"])


def promoted_tokens(model, sae: SAE, feature: int, k: int = 8) -> tuple[list[str], list[str]]:
    """(most promoted, most suppressed) tokens of a feature's decoder direction read through the final norm's scale and W_U."""
    feature = validate.index(feature, "feature", sae.d_sae, "features", allow_negative=False)
    scale = model.ln_final.weight if hasattr(model.ln_final, "weight") else model.ln_final.w
    logits = (sae.W_dec[feature] * scale.detach()) @ model.W_U.detach()
    show = lambda ids: [model.tokenizer.decode([i]) for i in ids.tolist()]  # noqa: E731
    return show(logits.topk(k).indices), show((-logits).topk(k).indices)


def sentence_peaks(acts: Sequence[torch.Tensor], unit: int | None = None, sae: SAE | None = None) -> torch.Tensor:
    """Each sentence's largest activation over its non-BOS tokens [n_sentences]: of `unit`, or of SAE feature `unit`."""
    if sae is None:
        return torch.stack([a[1:, unit].max() for a in acts])
    return torch.stack([sae.encode(a[1:])[:, unit].max() for a in acts])


def auroc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    diff = positive.flatten()[:, None] - negative.flatten()[None, :]
    return ((diff > 0).float() + 0.5 * (diff == 0).float()).mean().item()


def feature_effects(sae: SAE, concept: Sequence[torch.Tensor], control: Sequence[torch.Tensor]) -> pd.DataFrame:
    """Per feature: mean activation on concept and control tokens (BOS skipped), difference and effect size."""
    a = sae.encode(torch.cat([x[1:] for x in concept]))
    b = sae.encode(torch.cat([x[1:] for x in control]))
    spread = torch.cat([a, b]).std(0).clamp_min(1e-6)
    table = pd.DataFrame({"feature": range(sae.d_sae), "concept_mean": a.mean(0), "control_mean": b.mean(0)})
    table["difference"] = table.concept_mean - table.control_mean
    table["effect"] = table.difference / spread.numpy()
    return table.sort_values("effect", ascending=False, kind="stable").reset_index(drop=True)


def steering_hook(sae: SAE, feature: int, scale: float):
    """A (hook name, hook) pair adding `scale` times feature `feature`'s unit decoder direction at every position.

    Every position, so that it also acts during KV-cached generation, where a hook sees only the newest
    token; on BOS, whose activation is hundreds of times larger, the addition is negligible.
    """
    direction = sae.W_dec[validate.index(feature, "feature", sae.d_sae, "features", allow_negative=False)]
    scale = float(scale)

    def hook(act, hook):  # noqa: ARG001
        return act + scale * direction
    return sae.hook, hook


def ablation_hook(sae: SAE, feature: int):
    """A hook removing feature `feature`'s contribution (its activation times its decoder row) at every non-BOS position."""
    feature = validate.index(feature, "feature", sae.d_sae, "features", allow_negative=False)

    def hook(act, hook):  # noqa: ARG001
        act = act.clone()
        f = sae.encode(act[:, 1:])[..., feature]
        act[:, 1:] -= f[..., None] * sae.W_dec[feature]
        return act
    return sae.hook, hook


def prompt_run(model, prompts: Sequence[str], layer: int) -> tuple[RunFromLayer, torch.Tensor]:
    """(run, last) for many hooked runs of the same prompts: `run` replays blocks `layer`.. of the padded prompts
    (every hook must sit at that layer or later; the blocks below run once, here), and `last` [n_prompts, pos]
    marks each prompt's last position. Pass the pair as `run=` to last_token_logprobs or answer_logprobs."""
    prompts = validate.strings(prompts, "prompts")
    tokens = [model.to_tokens(p)[0] for p in prompts]
    ids = _padded(tokens, model.tokenizer.pad_token_id or 0)
    last = torch.zeros(ids.shape, dtype=torch.bool)
    last[torch.arange(len(tokens)), torch.tensor([len(t) - 1 for t in tokens])] = True
    return RunFromLayer(model, ids, layer), last


def _last_logits(model, prompts: Sequence[str], fwd_hooks, run) -> torch.Tensor:
    """Logits at each prompt's last position [n_prompts, vocab], in full or replayed by `run` (from prompt_run)."""
    if run is not None:
        replay, last = run
        if replay.tokens.shape[0] != len(prompts):
            raise SAEError(f"`run` was built for {replay.tokens.shape[0]} prompts, not these {len(prompts)}; "
                           "build it with prompt_run(model, prompts, layer) for the same prompts.")
        return replay(list(fwd_hooks), at=last)  # one True per row: rows come back in prompt order
    tokens = [model.to_tokens(p)[0] for p in prompts]
    ids = _padded(tokens, model.tokenizer.pad_token_id or 0)
    last = torch.tensor([len(t) - 1 for t in tokens])
    keep = last.unique()  # unembed only the columns where some prompt ends
    with torch.no_grad(), model.hooks(fwd_hooks=list(fwd_hooks)):
        logits = model(ids, logits_to_keep=keep)
    return logits[torch.arange(len(tokens)), torch.searchsorted(keep, last)]


def last_token_logprobs(model, prompts: Sequence[str], answer_ids: Sequence[int], fwd_hooks=(),
                        run: tuple[RunFromLayer, torch.Tensor] | None = None) -> torch.Tensor:
    """Mean log-probability of the `answer_ids` tokens at each prompt's last position [n_prompts].

    `run` (from prompt_run) replays only the blocks from its layer up: the same numbers, for hooks at that layer or later."""
    prompts = validate.strings(prompts, "prompts")
    logp = _last_logits(model, prompts, fwd_hooks, run).log_softmax(-1)
    return logp[:, list(answer_ids)].mean(-1)


def answer_logprobs(model, prompts: Sequence[str], answer_ids: Sequence[int], fwd_hooks=(),
                    run: tuple[RunFromLayer, torch.Tensor] | None = None) -> torch.Tensor:
    """Log-probability of each prompt's own answer token at its last position [n_prompts] (one batched pass).

    `run` (from prompt_run) replays only the blocks from its layer up: the same numbers, for hooks at that layer or later."""
    prompts = validate.strings(prompts, "prompts")
    if len(answer_ids) != len(prompts):
        raise SAEError(f"`answer_ids` has {len(answer_ids)} ids for {len(prompts)} prompts: give one answer per prompt.")
    rows = torch.arange(len(prompts))
    return _last_logits(model, prompts, fwd_hooks, run).log_softmax(-1)[rows, torch.tensor(list(answer_ids))]


def matched_features(size: torch.Tensor, target: int, n: int, seed: int = 0, band: float = 2.0) -> list[int]:
    """n random features (not `target`, drawn with replacement) whose `size` [d_sae] is within a factor `band` of the target's.

    `size` is what must match: e.g. how often each feature fires, or its summed activation on the prompts used.
    """
    n = validate.positive_int(n, "n")
    size = validate.tensor(size, "size", ndim=1, shape_doc="[d_sae]")
    target = validate.index(target, "target", len(size), "features", allow_negative=False)
    wanted = size[target]
    if wanted <= 0:
        raise SAEError(f"Feature {target} has size {wanted.item():.3g} here: there is nothing to match. Pick prompts "
                       "on which it is active.")
    ok = (size >= wanted / band) & (size <= wanted * band)
    ok[target] = False
    pool = ok.nonzero()[:, 0]
    if len(pool) == 0:
        raise SAEError(f"No other feature has a size within a factor {band} of feature {target}'s; widen `band`.")
    generator = torch.Generator().manual_seed(seed)
    return pool[torch.randint(len(pool), (n,), generator=generator)].tolist()


def interval(values: torch.Tensor, level: float = 0.95) -> tuple[float, float]:
    """The central `level` range of `values` (e.g. 2.5th and 97.5th percentiles)."""
    low, high = (1 - level) / 2, 1 - (1 - level) / 2
    return values.quantile(low).item(), values.quantile(high).item()

