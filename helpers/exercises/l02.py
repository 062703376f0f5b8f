"""Lesson 02 exercises: the induction score, a head-ablation hook, the K-composition score, and finding the induction
head that matters causally on held-out prompts.

Cases are small seeded tensors built so that each plausible mistake changes the answer: token
sequences with a token seen twice before (sum the attention on both targets), with the same token
twice in a row (the query itself is not a target), and with queries that have no earlier copy (they
do not count); hook_z tensors whose head axis differs in size from the position and d_head axes (a
wrong axis shows); and weight matrices whose Q-, K- and V-composition scores all differ. Mistakes
each case separates:

induction_score(pattern, tokens)
  * the copy itself (duplicate-token head) or the token before it instead of the token after it:
    every case.
  * every query averaged (queries with no earlier copy counted as 0): the messy and the 3-prompt cases.
  * the largest target, the mean of the targets or only the most recent copy instead of the sum over
    all targets: tokens seen three times in the messy case.
  * the query itself counted as a target (k <= q): a token twice in a row in the messy case.
  * key 0 counted through a wrap-around (tokens.roll): prompts whose last token appears earlier.
  * assuming two repeated halves (a fixed offset): the messy and the 3-prompt cases.
  * no batch mean, only prompt 0, or a mean of per-prompt scores (prompts with different numbers of
    eligible queries, one with none at all): batches of 2 and 3. Heads vary (2, 3, 4).

zero_head_hook(z, hook, head)
  * the wrong axis (positions or d_head): every axis has its own size.
  * a hard-coded head, the last head, or head + 1: heads 1, 2 (the last) and 0 across cases.
  * only batch item 0 or only the last position zeroed: batches of 2 and 3, 5 to 6 positions.
  * every head zeroed, only that head kept, mean-ablation instead of zero, or nothing returned
    (an in-place edit alone): every case.

k_composition(W_V0, W_O0, W_Q1, W_K1)
  * Q-composition (W_OV @ W_QK) or V-composition shapes; W_K @ W_Q.T in place of W_QK: every case.
  * no normalisation, spectral norms, a squared ratio: every case.
  * one argument ignored or used twice (W_Q1 @ W_Q1.T): every case (all four are random and distinct).
  * an aligned case (the late head's keys read what the early head writes): K-composition 0.60 against
    a Q-composition of 0.35, so mixing the two up shows there too.

find_induction_head(model, tokens) -> (layer, head)   (a finding, checked on held-out prompts)
  The check draws new repeated-random-token prompts (another seed and length), and the named head must
  (a) score >= 0.3 for induction there and (b) raise the second-copy loss, when mean-ablated alone
  (per-position means from a separate reference batch), by more than the 90th percentile of 12 random
  single heads and by at least half the largest effect among the 5 top-scoring induction heads. Fails:
  * the strongest previous-token head (its ablation hurts copying even more, but it is not an
    induction head: the wrong class).
  * the second-highest induction score (L17H4: a high score, an effect no larger than random heads').
  * the highest first-token (BOS) score, or a head with a negative effect (L24H4).
"""
from __future__ import annotations

import torch

from helpers.ablation import head_means
from helpers.attention import head_scores, repeated_random_tokens, top_heads
from helpers.attention import induction_score as _induction_score
from helpers.checks import Case, CheckResult, check
from helpers.exercises import cached_evidence, pair_or_problem, random_heads
from helpers.induction import composition_score, per_token_loss


def reference_induction_score(pattern: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean attention on the keys right after earlier copies of the query's token. [batch, head, q, k], [batch, pos] -> [head]."""
    return _induction_score(pattern, tokens)


def reference_zero_head_hook(z: torch.Tensor, hook, head: int) -> torch.Tensor:
    """hook_z [batch, pos, head, d_head] with head `head` set to zero and every other head unchanged."""
    z = z.clone()
    z[:, :, head] = 0.0
    return z


def reference_k_composition(W_V0: torch.Tensor, W_O0: torch.Tensor, W_Q1: torch.Tensor, W_K1: torch.Tensor) -> torch.Tensor:
    """K-composition of an early head (W_V0 [d_model, d_head], W_O0 [d_head, d_model]) into a late head's keys (W_Q1, W_K1 [d_model, d_head])."""
    W_OV = W_V0 @ W_O0
    W_QK = W_Q1 @ W_K1.T
    return composition_score(W_OV, W_QK.T)


def _causal_pattern(batch: int, heads: int, pos: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, heads, pos, pos, generator=generator) * 2
    return scores.masked_fill(torch.ones(pos, pos, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)


def _repeated(length: int, seed: int) -> torch.Tensor:
    """[1, 1 + 2 * length]: BOS (0), then `length` distinct tokens, then the same tokens again."""
    half = torch.randperm(50, generator=torch.Generator().manual_seed(seed))[:length] + 1
    return torch.cat([torch.zeros(1, dtype=torch.long), half, half])[None]


_TARGET = ("For query q, the targets are the keys k (1 <= k < q) with tokens[k - 1] == tokens[q]: the token *after* "
           "an earlier copy of the query's token, not the copy itself.")
_ELIGIBLE = ("Average only over the (batch, query) pairs that have at least one target; a query whose token never "
             "appeared before cannot show induction and must not count as a zero. Average over the batch too.")
_SUM = ("When the query's token appeared more than once before, there are several targets: add the attention on all "
        "of them (a head that splits its attention between the copies still does induction).")
_SELF = ("k < q strictly: when the same token appears twice in a row, the 'token after the earlier copy' is the query "
         "itself, which is not an earlier position and is not a target.")


def _score_cases() -> list[Case]:
    clean = _repeated(6, seed=0)
    # Token 7 appears three times (two targets for its last copy), 9 9 appears twice in a row, and
    # several queries have no earlier copy at all.
    messy = torch.tensor([[0, 7, 3, 9, 9, 7, 5, 7, 2, 3, 8, 5],
                          [0, 4, 4, 4, 6, 1, 6, 1, 2, 2, 6, 1]])
    # Three prompts with 2, 0 and 6 eligible queries, last tokens that appeared before (a wrap-around
    # to key 0 shows), and a token seen three times.
    three = torch.tensor([[0, 5, 6, 7, 8, 9, 10, 11, 5, 12, 6],
                          [0, 1, 2, 3, 4, 13, 14, 15, 16, 17, 18],
                          [0, 4, 9, 4, 9, 4, 2, 7, 2, 7, 9]])
    cases = []
    for name, tokens, heads, seed, hint in [
        ("BOS + 6 random tokens + the same 6 again, 2 heads", clean, 2, 1, _TARGET),
        ("a batch of 2 with repeats, triple copies and a doubled token, 3 heads", messy, 3, 2,
         f"{_ELIGIBLE} {_SUM} {_SELF}"),
        ("a batch of 3 prompts with 2, 0 and 6 eligible queries, 4 heads", three, 4, 5,
         f"{_ELIGIBLE} Pool the eligible queries of all prompts (do not average per prompt first). {_TARGET}"),
    ]:
        pattern = _causal_pattern(tokens.shape[0], heads, tokens.shape[1], seed)
        cases.append(Case(name, (pattern, tokens), reference_induction_score(pattern, tokens), hint))
    return cases


_AXIS = ("hook_z is [batch, pos, head, d_head]: the head is axis 2 (z[:, :, head]). Zero that head at every "
         "batch item and position, and leave the other heads as they were.")
_RETURN = "Return the edited tensor (a hook's return value replaces the activation)."


def _hook_point(layer: int):
    """A HookPoint named like the one the hook is registered on (in case the learner reads hook.name)."""
    from transformer_lens.hook_points import HookPoint

    point = HookPoint()
    point.name = f"blocks.{layer}.attn.hook_z"
    return point


def _hook_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(3)
    cases = []
    # 5 positions, 4 heads, 3 dims per head: every axis has its own size, so a wrong axis shows.
    for name, shape, head in [("batch 2, 5 positions, 4 heads, d_head 3: zero head 1", (2, 5, 4, 3), 1),
                              ("batch 1, 6 positions, 3 heads, d_head 2: zero head 2 (the last)", (1, 6, 3, 2), 2),
                              ("batch 3, 5 positions, 6 heads, d_head 4: zero head 0", (3, 5, 6, 4), 0)]:
        z = torch.randn(*shape, generator=generator)
        hook = _hook_point(1)
        cases.append(Case(name, (z, hook), reference_zero_head_hook(z, hook, head), f"{_AXIS} {_RETURN}",
                          kwargs={"head": head}))
    return cases


_KCOMP = ("W_OV = W_V0 @ W_O0 is what the early head writes; W_QK = W_Q1 @ W_K1.T scores query against key. "
          "The early head feeds the late head's *keys*, so multiply W_OV by W_QK.T (K-composition), take the "
          "Frobenius norm, and divide by the Frobenius norms of W_OV and W_QK.")


def _composition_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(4)
    cases = []
    for name, d_model, d_head in [("d_model 6, d_head 2", 6, 2), ("d_model 16, d_head 4", 16, 4)]:
        weights = tuple(torch.randn(*shape, generator=generator) for shape in
                        [(d_model, d_head), (d_head, d_model), (d_model, d_head), (d_model, d_head)])
        cases.append(Case(name, weights, reference_k_composition(*weights).item(), _KCOMP))
    # Aligned: the late head's key weights read the directions the early head writes (W_K1 = W_OV.T @ R),
    # so K-composition (0.60) is well above Q-composition (0.35).
    W_V0, W_O0 = torch.randn(10, 3, generator=generator), torch.randn(3, 10, generator=generator)
    W_Q1 = torch.randn(10, 3, generator=generator)
    W_K1 = (W_V0 @ W_O0).T @ torch.randn(10, 3, generator=generator) * 0.1
    weights = (W_V0, W_O0, W_Q1, W_K1)
    cases.append(Case("d_model 10, d_head 3, keys aligned with the early head's output", weights,
                      reference_k_composition(*weights).item(), _KCOMP))
    return cases


def check_induction_score(fn) -> CheckResult:
    """Check a learner's induction_score(pattern, tokens) against the reference."""
    return check("induction_score", fn, _score_cases, atol=1e-5, rtol=1e-4)


def check_zero_head_hook(fn) -> CheckResult:
    """Check a learner's zero_head_hook(z, hook, head) against the reference."""
    # A TransformerLens hook may edit its activation in place and return it: that is allowed here.
    return check("zero_head_hook", fn, _hook_cases, atol=0.0, rtol=0.0, allow_inplace=("z",))


def check_k_composition(fn) -> CheckResult:
    """Check a learner's k_composition(W_V0, W_O0, W_Q1, W_K1) against the reference."""
    return check("k_composition", fn, _composition_cases, atol=1e-5, rtol=1e-4)


# --- Exercise 4: find the induction head that matters, and prove it on prompts you never saw -------

HALF = 10  # held-out prompts: BOS + 10 random tokens + the same 10 again
N_RANDOM_HEADS = 12  # size-matched control: single random heads, ablated the same way
MIN_INDUCTION_SCORE = 0.3
MIN_SHARE_OF_BEST = 0.5  # the named head's effect must be at least this share of the best induction head's


def ablation_effects(model, tokens: torch.Tensor, heads: list[tuple[int, int]], half: int,
                     means: dict[int, torch.Tensor]) -> torch.Tensor:
    """Second-copy loss increase when each head ALONE is mean-ablated: [len(heads)], in one batched forward.

    Variant v (rows v*B .. v*B + B - 1 of a batch that repeats `tokens`) ablates heads[v]; the last
    variant ablates nothing and gives the baseline.
    """
    batch, n = tokens.shape[0], len(heads)
    by_layer: dict[int, list[tuple[int, int]]] = {}
    for v, (layer, head) in enumerate(heads):
        by_layer.setdefault(layer, []).append((v, head))

    def make_hook(layer: int):
        def hook(z: torch.Tensor, hook) -> torch.Tensor:
            z = z.clone()
            for v, head in by_layer[layer]:
                z[v * batch:(v + 1) * batch, :, head] = means[layer][0, :, head].to(z.dtype)
            return z
        return hook

    with torch.no_grad():
        logits = model.run_with_hooks(tokens.repeat(n + 1, 1),
                                      fwd_hooks=[(f"blocks.{layer}.attn.hook_z", make_hook(layer)) for layer in by_layer])
    loss = per_token_loss(logits, tokens.repeat(n + 1, 1))[:, half + 1:].reshape(n + 1, batch, -1).mean((1, 2))
    return loss[:n] - loss[n]


def reference_find_induction_head(model, tokens: torch.Tensor) -> tuple[int, int]:
    """Among the 5 heads with the highest induction score on `tokens`, the one whose mean-ablation hurts copying most."""
    half = (tokens.shape[1] - 1) // 2
    scores = head_scores(model, tokens, ("induction",))["induction"]
    candidates = [(layer, head) for layer, head, _ in top_heads(scores, 5)]
    effects = ablation_effects(model, tokens, candidates, half, head_means(model, tokens, per_position=True))
    return candidates[int(effects.argmax())]


class _PassesTheCausalTest:
    """The 'expected' value of a find_induction_head case: tests the named head on held-out prompts."""

    def __init__(self, model, seed: int):
        self.model, self.seed = model, seed

    def __call__(self, got) -> str | None:
        cfg = self.model.cfg
        pair = pair_or_problem(got, (cfg.n_layers, cfg.n_heads), ("layer", "head"))
        if isinstance(pair, str):
            return pair
        layer, head = pair
        held_out, means, scores, top, randoms, effects = cached_evidence(self.model, ("find_induction_head", self.seed),
                                                                         self._evidence)
        score = scores[layer, head].item()
        if score < MIN_INDUCTION_SCORE:
            return (f"head {layer}.{head} is not an induction head on the held-out prompts: induction score "
                    f"{score:.2f} (need >= {MIN_INDUCTION_SCORE}); find the head's class before its effect")
        mine = effects.get((layer, head))
        if mine is None:  # each head is ablated alone, so its effect does not depend on the others
            mine = ablation_effects(self.model, held_out, [(layer, head)], HALF, means)[0].item()
        best = max(effects[h] for h in top)
        random = torch.tensor([effects[h] for h in randoms])
        ceiling = random.quantile(0.9).item()
        if mine <= ceiling or mine < MIN_SHARE_OF_BEST * best:
            return (f"head {layer}.{head} is an induction head (score {score:.2f}) but mean-ablating it raises the held-out "
                    f"second-copy loss by only {mine:+.3f}: the 90th percentile of {N_RANDOM_HEADS} random heads is "
                    f"{ceiling:+.3f} and the strongest induction head gives {best:+.3f}. A high score is not an effect")
        return None


    def _evidence(self):
        """Held-out prompts, per-position means, induction scores, the top-5 and random heads and their effects."""
        gen = torch.Generator().manual_seed(self.seed)
        held_out = repeated_random_tokens(self.model, 4, HALF, gen)
        reference = repeated_random_tokens(self.model, 12, HALF, gen)  # per-position means from other prompts
        scores = head_scores(self.model, held_out, ("induction",))["induction"]
        top = [(lay, hd) for lay, hd, _ in top_heads(scores, 5)]
        randoms = random_heads(self.model.cfg, N_RANDOM_HEADS, gen)
        means = head_means(self.model, reference, per_position=True)
        heads = list(dict.fromkeys([*top, *randoms]))
        effects = dict(zip(heads, ablation_effects(self.model, held_out, heads, HALF, means).tolist()))
        return held_out, means, scores, top, randoms, effects


def _find_cases(model) -> list[Case]:
    hint = ("score every head for induction on the tokens you are given, then test the top few causally "
            "(mean-ablate each alone, per-position means) and return the one whose ablation hurts copying most")
    cases = []
    for name, seed, held_seed, half in [("4 prompts of 2 x 12 random tokens", 7, 1001, 12),
                                        ("3 prompts of 2 x 8 random tokens", 8, 1002, 8)]:
        tokens = repeated_random_tokens(model, 4 if half == 12 else 3, half, torch.Generator().manual_seed(seed))
        cases.append(Case(f"{name} (the head is then tested on held-out prompts)", (model, tokens),
                          _PassesTheCausalTest(model, held_seed), hint=hint))
    return cases


def check_find_induction_head(fn, model) -> CheckResult:
    """Check find_induction_head(model, tokens) -> (layer, head): an induction head whose ablation hurts held-out copying."""
    return check("find_induction_head", fn, lambda: _find_cases(model), compare_fn=lambda got, test: test(got),
                 time_limit=120)
