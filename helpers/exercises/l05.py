"""Lesson 05 exercises: a held-out-cell split, patching a plan with hooks, the future-lens agreement score.

Cases are built so that each plausible mistake gives a different answer: the split is checked by
its properties (no cell on both sides, the asked number of cells held out per word, every word still
trainable), so any correct split passes and a leaky one fails; the patching cases mix layouts in one
batch (per-sequence positions) and patch the line break and a filler position at both layers of the
toy planner, where the article and word really move; the agreement cases are noisy guesses of the
final residual, so comparing with the wrong position or skipping the final norm changes the score.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from helpers import planning
from helpers.checks import Case, CheckResult, check
from helpers.toy import planner

__all__ = ["reference_heldout_cell_split", "reference_patch_plan", "reference_future_agreement",
           "check_heldout_cell_split", "check_patch_plan", "check_future_agreement"]


def reference_heldout_cell_split(cells: np.ndarray, words: np.ndarray, n_held: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, test_idx): for every word, n_held of its cells go wholly to the test side."""
    return planning.heldout_cell_split(cells, words, n_held=n_held, seed=0)


def reference_patch_plan(model, target_tokens: torch.Tensor, source_tokens: torch.Tensor, layer: int,
                         positions: torch.Tensor) -> torch.Tensor:
    """Logits [batch, pos, vocab] of the target run with blocks.{layer}.hook_resid_pre at positions[i]
    (one per sequence) replaced by the source run's value there."""
    name = f"blocks.{layer}.hook_resid_pre"
    rows = torch.arange(target_tokens.shape[0])
    with torch.no_grad():
        _, cache = model.run_with_cache(source_tokens, names_filter=[name])

        def patch(resid, hook):
            resid = resid.clone()
            resid[rows, positions] = cache[name][rows, positions]
            return resid

        return model.run_with_hooks(target_tokens, fwd_hooks=[(name, patch)])


def reference_future_agreement(model, predicted: torch.Tensor, logits: torch.Tensor) -> float:
    """Fraction of t < pos - 1 where unembed(ln_final(predicted[:, t])) has the same top-1 as logits[:, t + 1]."""
    return planning.future_lens_agreement(model, predicted, logits)


# ------------------------------------------------------------------------------------ the split

def _split_message(got, cells: np.ndarray, words: np.ndarray, n_held: int) -> str | None:
    if not isinstance(got, tuple) or len(got) != 2:
        return f"expected a tuple (train_idx, test_idx), got {type(got).__name__}"
    try:
        train, test = (np.asarray(side).astype(int).reshape(-1) for side in got)
    except (TypeError, ValueError) as error:
        return f"train_idx and test_idx must be arrays of example indices ({error})"
    n = len(cells)
    if len(train) + len(test) != n or set(train.tolist()) | set(test.tolist()) != set(range(n)):
        return (f"train_idx and test_idx must split the {n} example indices 0..{n - 1} (got {len(train)} + "
                f"{len(test)}; boolean masks or missing examples?)")
    if set(train.tolist()) & set(test.tolist()):
        return "some examples are on both sides"
    leaked = sorted(set(cells[train].tolist()) & set(cells[test].tolist()))
    if leaked:
        return (f"cells {leaked[:5]} have examples on both sides: the probe saw those cells in training, so its "
                "test score can come from memorising (a, b) -> word instead of reading a word representation")
    for word in np.unique(words):
        held = set(cells[test][words[test] == word].tolist())
        kept = set(cells[train][words[train] == word].tolist())
        if len(held) != n_held:
            return f"word {word} has {len(held)} held-out cell(s); hold out exactly n_held={n_held} per word"
        if not kept:
            return f"word {word} has no training cell: a probe cannot learn a word it never saw"
    return None


def _split_cases() -> list[Case]:
    cases = []
    for name, n, n_held, seed in [("2000 examples, one cell held out per word", 2000, 1, 1),
                                  ("3000 examples, two cells held out per word", 3000, 2, 2)]:
        examples = planner.make_examples(torch.Generator().manual_seed(seed), n, "neutral")
        cells, words = examples.cell.numpy(), examples.word.numpy()
        cases.append(Case(name, (cells, words, n_held), (cells, words, n_held),
                          hint="group the examples by cell; for each word pick n_held of ITS cells and put every "
                               "example of those cells (and only those) on the test side"))
    return cases


def check_heldout_cell_split(fn: Callable) -> CheckResult:
    """Check heldout_cell_split(cells [n], words [n], n_held) -> (train_idx, test_idx)."""
    return check("heldout_cell_split", fn, _split_cases,
                 compare_fn=lambda got, expected: _split_message(got, *expected))


# ---------------------------------------------------------------------------------- plan patching

_PATCH_HINT = ("cache the SOURCE run at blocks.{layer}.hook_resid_pre, then run the TARGET tokens with a hook there "
               "that replaces, for each sequence i, only resid[i, positions[i]] with the source's value at that "
               "same place; return the logits")


def _patch_cases(model) -> list[Case]:
    target, source = planner.make_patch_pairs(torch.Generator().manual_seed(7), 6, planner.FILLER)
    cases = []
    for layer, positions, where in [(1, target.nl, "the line break"), (0, target.nl - 1, "the cue b"),
                                    (1, target.nl + 2, "a filler token")]:
        args = (model, target.tokens, source.tokens, layer, positions)
        cases.append(Case(f"6 pairs of mixed layouts, layer {layer}, {where}", args,
                          reference_patch_plan(*args), hint=_PATCH_HINT))
    return cases


def check_patch_plan(fn: Callable, model) -> CheckResult:
    """Check patch_plan(model, target_tokens, source_tokens, layer, positions [batch]) -> logits [batch, pos, vocab]."""
    return check("patch_plan", fn, lambda: _patch_cases(model), atol=1e-4, rtol=1e-3)


# ------------------------------------------------------------------------------ future agreement

def _agreement_cases(model) -> list[Case]:
    cases = []
    for name, seed, n, noise in [("3 sequences, small noise", 11, 3, 0.5), ("5 sequences, larger noise", 12, 5, 1.5)]:
        generator = torch.Generator().manual_seed(seed)
        examples = planner.make_examples(generator, n)
        hook = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
        with torch.no_grad():
            logits, cache = model.run_with_cache(examples.tokens, names_filter=[hook])
        final = cache[hook]
        # A noisy guess of the final residual one position ahead, as a ridge map would give.
        shifted = torch.cat([final[:, 1:], final[:, -1:]], dim=1)
        predicted = shifted + noise * final.std() * torch.randn(final.shape, generator=generator)
        cases.append(Case(name, (model, predicted, logits), reference_future_agreement(model, predicted, logits),
                          hint="decode predicted[:, :-1] with model.ln_final then model.unembed, take the top-1, and "
                               "compare it with the model's own top-1 at the NEXT position, logits[:, 1:]"))
    return cases


def check_future_agreement(fn: Callable, model) -> CheckResult:
    """Check future_agreement(model, predicted [batch, pos, d], logits [batch, pos, vocab]) -> float."""
    return check("future_agreement", fn, lambda: _agreement_cases(model), atol=1e-6, rtol=0)
