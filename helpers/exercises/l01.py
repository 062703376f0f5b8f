"""Lesson 01 exercises: a causal attention pattern from q and k, and the previous-token score.

Cases are small seeded tensors chosen so that each plausible mistake changes the answer: patterns
with more than one position (a missing mask shows), d_head > 1 (a missing scale shows), grouped
key/value heads whose values differ (a wrong grouping shows), and patterns whose query 0 and query 1
carry weight that a correct score must ignore. Mistakes each case separates:

causal_pattern(q, k)
  * no causal mask, a mask applied after the softmax or with 0 instead of -inf, a mask off by one
    (hiding the diagonal, or letting one future key through): every case (5 to 7 positions).
  * no 1/sqrt(d_head) scale, or 1/d_head, or sqrt of the wrong axis: d_head 8, 16, 64 and 4 across cases.
  * softmax over queries instead of keys; q and k swapped (the pattern transposed): every case.
  * grouped-query attention: no grouping, `repeat` instead of `repeat_interleave`, a group size
    hard-coded to SmolLM2's 3: groups of 1, 2, 3 and 2 (multi-query) across cases.
  * only batch item 0: batches of 2 and 3 with different q and k per item.
  * negative scores are common in every case, so an abs() anywhere shows.

previous_token_score(pattern)
  * the main diagonal or two back instead of one back; the diagonal above instead of below: every case.
  * query 0 or query 1 counted, or the last query dropped: the resting head and the random cases.
  * no batch mean (only item 0, or the mean over heads instead of the batch): batches of 3 and 2
    whose items differ; a sum instead of a mean, or a max over queries: the random case.
"""
from __future__ import annotations

import torch

from helpers.attention import pattern_from_qk
from helpers.attention import previous_token_score as _previous_token_score
from helpers import validate
from helpers.checks import Case, CheckResult, check
from helpers.errors import MicroscopeError
from helpers.exercises import cached_evidence, pair_or_problem, random_heads


def reference_causal_pattern(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Causal softmax(q.k / sqrt(d_head)). q [batch, pos, head, d_head], k [batch, pos, kv_head, d_head] -> [batch, head, q, k]."""
    return pattern_from_qk(q, k)


def reference_previous_token_score(pattern: torch.Tensor) -> torch.Tensor:
    """Mean attention from query i to key i-1 over batch and queries 2..pos-1. [batch, head, q, k] -> [head]."""
    return _previous_token_score(pattern)


def _qk(batch: int, pos: int, heads: int, kv_heads: int, d_head: int, seed: int, size: float = 1.0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, pos, heads, d_head, generator=generator) * size
    k = torch.randn(batch, pos, kv_heads, d_head, generator=generator) * size
    return q, k


_MASK_SCALE_AXIS = ("Three ingredients: divide q.k by sqrt(d_head); set the scores of keys after the query to -inf "
                    "before the softmax (the causal mask); take the softmax over the key axis (the last one).")
_GQA = ("k has fewer heads than q. Give each query head its key head in order: with 4 query heads and 2 key "
        "heads, query heads 0-1 read key head 0 and 2-3 read key head 1 (k.repeat_interleave(group, dim=2), "
        "not k.repeat).")


def _pattern_cases() -> list[Case]:
    cases = []
    for name, shape, hint in [
        ("one head, 5 positions, d_head 8", (1, 5, 1, 1, 8, 0), _MASK_SCALE_AXIS),
        ("batch of 2, 3 heads each with its own key head", (2, 6, 3, 3, 16, 1), _MASK_SCALE_AXIS),
        ("grouped-query attention: 4 query heads share 2 key heads", (1, 6, 4, 2, 8, 2), _GQA),
        ("SmolLM2-sized: 9 query heads share 3 key heads, d_head 64", (2, 7, 9, 3, 64, 3), _GQA),
        ("batch of 3, multi-query: 2 query heads share 1 key head, d_head 4", (3, 5, 2, 1, 4, 5), _GQA),
    ]:
        q, k = _qk(*shape, size=2.0)
        cases.append(Case(name, (q, k), reference_causal_pattern(q, k), hint))
    return cases


def _random_causal_pattern(batch: int, heads: int, pos: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, heads, pos, pos, generator=generator) * 2
    future = torch.ones(pos, pos, dtype=torch.bool).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(-1)


def _perfect_previous_token_head(pos: int) -> torch.Tensor:
    """[1, 1, pos, pos]: query 0 attends to itself, every later query to the token before it."""
    pattern = torch.zeros(pos, pos)
    pattern[0, 0] = 1
    pattern[torch.arange(1, pos), torch.arange(pos - 1)] = 1
    return pattern[None, None]


_DIAGONAL = ("The previous token of query i is key i-1: the diagonal just *below* the main one "
             "(pattern.diagonal(offset=-1, dim1=-2, dim2=-1) holds queries 1..pos-1).")
_QUERIES = ("Average over queries 2..pos-1 only: query 0 has no previous token, and query 1's previous token "
            "is BOS, where resting heads put their attention anyway. Average over the batch too.")


def _score_cases() -> list[Case]:
    perfect = _perfect_previous_token_head(6)
    rest = torch.zeros(1, 1, 6, 6)
    rest[..., 0] = 1  # a head resting on BOS: every query attends to position 0
    random = _random_causal_pattern(3, 4, 7, seed=4)
    # A batch of 2 whose items differ: head 0 is a previous-token head on item 0 and rests on item 1;
    # head 1 does the opposite after query 3. Reading item 0 only, or averaging heads, shows.
    mixed = torch.cat([_perfect_previous_token_head(5).repeat(1, 2, 1, 1), rest[..., :5, :5].repeat(1, 2, 1, 1)])
    mixed[0, 1, 3:] = rest[0, 0, 3:5, :5]
    mixed[1, 1, 3:] = _perfect_previous_token_head(5)[0, 0, 3:]
    # The resting head comes first: it exposes counting query 0 or query 1, which a perfect head hides.
    return [
        Case("a head resting on BOS (query 1's previous token is BOS)", (rest,), reference_previous_token_score(rest),
             _QUERIES + " And read key i-1 for query i."),
        Case("a perfect previous-token head", (perfect,), reference_previous_token_score(perfect),
             _DIAGONAL + " Then average over queries 2..pos-1."),
        Case("random causal patterns, batch 3, 4 heads", (random,), reference_previous_token_score(random), _QUERIES),
        Case("batch of 2 prompts on which 2 heads behave differently", (mixed,), reference_previous_token_score(mixed),
             "average over the batch axis (0) and the queries 2..pos-1, keeping one score per head (axis 1)."),
    ]


def check_causal_pattern(fn) -> CheckResult:
    """Check a learner's causal_pattern(q, k) against the reference."""
    return check("causal_pattern", fn, _pattern_cases, atol=1e-5, rtol=1e-4)


def check_previous_token_score(fn) -> CheckResult:
    """Check a learner's previous_token_score(pattern) against the reference."""
    return check("previous_token_score", fn, _score_cases, atol=1e-5, rtol=1e-4)


# --- Exercise 3: find the head that matches brackets, and prove it on prompts you never saw ------------------
# Measured on 16 prompts "The list ( w1, w2, w3, w4" (BOS at 0, the opener at 3): head 26.6 puts 0.97 of the last
# position's attention on the opener and mean-ablating it alone cuts the closer's logit difference
# (right closer minus the other) by 5.46 of 8.22; 12 random heads move it by at most 0.03.

BRACKET_WORDS = ["apple", "river", "stone", "green", "table", "cloud", "music", "paper", "light", "horse",
                 "chair", "water", "bread", "glass", "sugar", "plant", "metal", "night", "ocean"]
PAIRS = [(" (", ")"), (" [", "]")]
N_RANDOM_BRACKET_HEADS = 12
MIN_OPENER_ATTENTION = 0.3
MIN_SHARE_OF_BEST_BRACKET = 0.5


def bracket_prompts(model, n: int, items: int, generator: torch.Generator, lead: str = "The list"):
    """n prompts '<lead> ( w1, ..., w_items' alternating ( and [: (tokens [n, pos], opener position, right, wrong closer ids)."""
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise MicroscopeError("bracket_prompts needs a model with a tokenizer (SmolLM2), not a toy model.")
    n = validate.positive_int(n, "n")
    items = validate.positive_int(items, "items")
    if items > len(BRACKET_WORDS):
        raise MicroscopeError(f"`items`={items}: a prompt lists distinct words from {len(BRACKET_WORDS)}, so at most "
                              f"{len(BRACKET_WORDS)} items.")
    if not isinstance(generator, torch.Generator):
        raise MicroscopeError(f"`generator` must be a torch.Generator (e.g. torch.Generator().manual_seed(0)), got "
                              f"{validate.describe(generator)}.")
    lead = validate.text(lead, "lead")
    texts, right, wrong = [], [], []
    for i in range(n):
        opener, closer = PAIRS[i % 2]
        idx = torch.randperm(len(BRACKET_WORDS), generator=generator)[:items].tolist()
        texts.append(lead + opener + ", ".join(BRACKET_WORDS[j] for j in idx))
        right.append(tok.encode(closer)[-1])
        wrong.append(tok.encode(PAIRS[1 - i % 2][1])[-1])
    ids = [tok.encode(t) for t in texts]
    opener_pos = len(tok.encode(lead + " ("))  - 1
    assert len({len(x) for x in ids}) == 1, "bracket prompts must tokenize to equal lengths"
    return torch.tensor(ids), opener_pos, torch.tensor(right), torch.tensor(wrong)


def _closer_margin(logits: torch.Tensor, right: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    last = logits[:, -1].float()
    return last.gather(1, right[:, None]).squeeze(1) - last.gather(1, wrong[:, None]).squeeze(1)


def opener_attention(model, tokens: torch.Tensor, opener_pos: int) -> torch.Tensor:
    """[n_layers, n_heads]: mean attention from the last position to the opener."""
    tokens = validate.token_ids(tokens, "tokens", getattr(model.cfg, "d_vocab", None))
    if tokens.ndim != 2:
        raise MicroscopeError(f"`tokens` must be a batch [n_prompts, n_positions], got shape {tuple(tokens.shape)}.")
    opener_pos = validate.index(opener_pos, "opener_pos", tokens.shape[1], "positions")
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("attn.hook_pattern"))
    return torch.stack([cache[f"blocks.{layer}.attn.hook_pattern"][:, :, -1, opener_pos].float().mean(0)
                        for layer in range(model.cfg.n_layers)])


def bracket_ablation_drops(model, tokens, right, wrong, heads, means) -> torch.Tensor:
    """Drop in the closer margin (mean over prompts) when each head ALONE is mean-ablated: [len(heads)]."""
    heads = validate.head_list(heads, "heads", model.cfg.n_layers, model.cfg.n_heads)
    if not heads:
        raise MicroscopeError("`heads` is empty: name at least one (layer, head) to ablate.")
    tokens = validate.token_ids(tokens, "tokens", getattr(model.cfg, "d_vocab", None))
    if tokens.ndim != 2 or len(right) != tokens.shape[0] or len(wrong) != tokens.shape[0]:
        raise MicroscopeError(f"`tokens` [n_prompts, n_positions] and one right and one wrong closer id per prompt are "
                              f"needed: got tokens {tuple(tokens.shape)}, {len(right)} right and {len(wrong)} wrong ids.")
    missing = sorted({layer for layer, _ in heads} - set(means))
    if missing:
        raise MicroscopeError(f"`means` has no mean head output for layer(s) {missing}: pass the per-layer means "
                              "of hook_z ({layer: [n_positions, n_heads, d_head]}).")
    batch, n = tokens.shape[0], len(heads)
    by_layer: dict[int, list[tuple[int, int]]] = {}
    for v, (layer, head) in enumerate(heads):
        by_layer.setdefault(layer, []).append((v, head))

    def make_hook(layer: int):
        def hook(z: torch.Tensor, hook) -> torch.Tensor:
            z = z.clone()
            for v, head in by_layer[layer]:
                z[v * batch:(v + 1) * batch, :, head] = means[layer][:, head].to(z.dtype)
            return z
        return hook

    with torch.no_grad():
        logits = model.run_with_hooks(tokens.repeat(n + 1, 1),
                                      fwd_hooks=[(f"blocks.{layer}.attn.hook_z", make_hook(layer)) for layer in by_layer])
    margin = _closer_margin(logits, right.repeat(n + 1), wrong.repeat(n + 1)).reshape(n + 1, batch).mean(1)
    return margin[n] - margin[:n]


def _z_means(model, tokens: torch.Tensor) -> dict[int, torch.Tensor]:
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("attn.hook_z"))
    return {layer: cache[f"blocks.{layer}.attn.hook_z"].mean(0) for layer in range(model.cfg.n_layers)}


def reference_find_bracket_head(model, tokens: torch.Tensor, opener_pos: int, right: torch.Tensor,
                                wrong: torch.Tensor) -> tuple[int, int]:
    """Among the 5 heads attending most to the opener, the one whose mean-ablation cuts the closer margin most."""
    att = opener_attention(model, tokens, opener_pos)
    n_heads = model.cfg.n_heads
    candidates = [divmod(i, n_heads) for i in att.flatten().topk(5).indices.tolist()]
    drops = bracket_ablation_drops(model, tokens, right, wrong, candidates, _z_means(model, tokens))
    return candidates[int(drops.argmax())]


class _BracketHeadPassesTheCausalTest:
    """The 'expected' value of a find_bracket_head case: tests the named head on held-out prompts."""

    def __init__(self, model, seed: int):
        self.model, self.seed = model, seed

    def __call__(self, got) -> str | None:
        cfg = self.model.cfg
        pair = pair_or_problem(got, (cfg.n_layers, cfg.n_heads), ("layer", "head"))
        if isinstance(pair, str):
            return pair
        layer, head = pair
        prompts, means, att, top, randoms, drops = cached_evidence(self.model, ("find_bracket_head", self.seed),
                                                                   self._evidence)
        score = att[layer, head].item()
        if score < MIN_OPENER_ATTENTION:
            return (f"head {layer}.{head} puts only {score:.2f} of the last position's attention on the opening bracket "
                    f"of held-out prompts (need >= {MIN_OPENER_ATTENTION}); find the head's class before its effect")
        mine = drops.get((layer, head))
        if mine is None:  # each head is ablated alone, so its drop does not depend on the others
            tokens, _, right, wrong = prompts
            mine = bracket_ablation_drops(self.model, tokens, right, wrong, [(layer, head)], means)[0].item()
        best = max(drops[h] for h in top)
        random = torch.tensor([drops[h] for h in randoms])
        ceiling = random.quantile(0.9).item()
        if mine <= ceiling or mine < MIN_SHARE_OF_BEST_BRACKET * best:
            return (f"head {layer}.{head} attends to the opener ({score:.2f}) but mean-ablating it cuts the held-out "
                    f"closer margin by only {mine:+.2f}: the 90th percentile of {N_RANDOM_BRACKET_HEADS} random heads "
                    f"is {ceiling:+.2f} and the strongest opener-attending head gives {best:+.2f}. Attention is not use")
        return None


    def _evidence(self):
        """Held-out prompts, mean values, opener attention, the top-5 and random heads and their margin drops."""
        cfg = self.model.cfg
        gen = torch.Generator().manual_seed(self.seed)
        prompts = bracket_prompts(self.model, 8, 5, gen, lead="Here are the items")
        reference, _, _, _ = bracket_prompts(self.model, 16, 5, gen, lead="Here are the items")
        tokens, opener_pos, right, wrong = prompts
        att = opener_attention(self.model, tokens, opener_pos)
        top = [divmod(i, cfg.n_heads) for i in att.flatten().topk(5).indices.tolist()]
        randoms = random_heads(cfg, N_RANDOM_BRACKET_HEADS, gen)
        means = _z_means(self.model, reference)
        heads = list(dict.fromkeys([*top, *randoms]))
        drops = dict(zip(heads, bracket_ablation_drops(self.model, tokens, right, wrong, heads, means).tolist()))
        return prompts, means, att, top, randoms, drops


def _bracket_cases(model) -> list[Case]:
    hint = ("score every head by the last position's attention to the opener, then mean-ablate the top few one at "
            "a time and return the one whose ablation cuts the closer's logit difference most")
    cases = []
    for name, seed, held_seed, n, items in [("8 prompts with 4 items", 11, 2001, 8, 4),
                                            ("6 prompts with 3 items", 12, 2002, 6, 3)]:
        tokens, opener_pos, right, wrong = bracket_prompts(model, n, items, torch.Generator().manual_seed(seed))
        cases.append(Case(f"{name} (the head is then tested on held-out prompts)", (model, tokens, opener_pos, right, wrong),
                          _BracketHeadPassesTheCausalTest(model, held_seed), hint=hint))
    return cases


def check_find_bracket_head(fn, model) -> CheckResult:
    """Check find_bracket_head(model, tokens, opener_pos, right, wrong) -> (layer, head) on held-out prompts."""
    return check("find_bracket_head", fn, lambda: _bracket_cases(model), compare_fn=lambda got, test: test(got),
                 time_limit=120)
