"""Lesson 08 exercises: the SAE forward pass and loss, top-activating contexts (one per document), the spliced-in loss.

Mistakes each case separates:

sae_forward(x, W_enc, b_enc, W_dec, b_dec, k) -> (x_hat, f, loss)
  * b_dec not subtracted before encoding: every case has a large b_dec.
  * k ignored (plain ReLU) or a fixed k: cases with k = 2, 3 and 5, and pre-activations with more
    than k positive entries per row.
  * the k largest |pre-activations| (abs) instead of the largest: rows whose most extreme
    pre-activations are negative.
  * ReLU forgotten after TopK: rows with fewer than k positive pre-activations (a negative value kept).
  * loss not normalised by the data's variance, a mean over d_model instead of a sum, or the
    variance of the reconstruction instead of the data: every case (variance far from 1).
  * batch of one (x[0] only): batches of 4, 6 and 5.

top_contexts(f, doc, feature, k) -> token indices [k]
  * the feature ignored (e.g. the largest activation of any feature): two features per data set.
  * ascending order, or the feature before it (off by one): other columns are larger or negative.
  * several tokens from one document: the top two tokens of the feature share a document.
  * k ignored: k = 2 and k = 3.

spliced_loss(model, tokens, sae)
  * no splice (the clean loss) or the hook name ignored (always layer 15): a random SAE at layer 5.
  * BOS spliced too: every case (the BOS activation is hundreds of times larger).
  * the BOS position's prediction included, or logits and targets off by one: every case.
  * only the first document: batches of 3.
  * hooks left on the model: reported by the check (the model is in every case's arguments).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from helpers.checks import Case, CheckResult, check
from helpers.sae import SAE, init_sae, load_sae

__all__ = ["reference_sae_forward", "reference_top_contexts", "reference_spliced_loss", "check_sae_forward",
           "check_top_contexts", "check_spliced_loss", "exercise_documents"]


def reference_sae_forward(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, W_dec: torch.Tensor,
                          b_dec: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_hat [batch, d_model], f [batch, d_sae], loss) of a TopK SAE; loss = sum of squared errors / sum of squared deviations from the batch mean."""
    pre = (x - b_dec) @ W_enc + b_enc
    values, indices = pre.topk(k, dim=-1)
    f = torch.zeros_like(pre).scatter(-1, indices, values.relu())
    x_hat = f @ W_dec + b_dec
    loss = (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    return x_hat, f, loss


def _forward_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(8)
    cases = []
    for batch, d_model, d_sae, k in [(4, 6, 12, 3), (6, 5, 16, 2), (5, 8, 10, 5)]:
        x = torch.randn(batch, d_model, generator=gen) * 3 + 2
        W_enc = torch.randn(d_model, d_sae, generator=gen)
        b_enc = torch.randn(d_sae, generator=gen) - 0.5
        W_dec = torch.randn(d_sae, d_model, generator=gen)
        b_dec = torch.randn(d_model, generator=gen) * 4
        args = (x, W_enc, b_enc, W_dec, b_dec, k)
        cases.append(Case(f"batch {batch}, d_model {d_model}, d_sae {d_sae}, k={k}", args,
                          reference_sae_forward(*args),
                          hint="encode (x - b_dec), keep each row's k LARGEST pre-activations (not the largest in "
                               "absolute value) and ReLU them, decode with + b_dec, and divide the summed squared "
                               "error by the summed squared deviation of x from its batch mean"))
    x = torch.randn(5, 4, generator=gen)
    W_enc = -torch.rand(4, 9, generator=gen) * 3  # most pre-activations negative: fewer than k positive
    args = (x, W_enc, torch.zeros(9), torch.randn(9, 4, generator=gen), torch.zeros(4), 4)
    cases.append(Case("batch 5 where most pre-activations are negative, k=4", args, reference_sae_forward(*args),
                      hint="TopK picks the k largest pre-activations, and ReLU then zeroes the negative ones: a "
                           "feature is never active with a negative value"))
    return cases


def check_sae_forward(fn: Callable) -> CheckResult:
    """Check sae_forward(x [batch, d_model], W_enc, b_enc, W_dec, b_dec, k) -> (x_hat, f, loss)."""
    return check("sae_forward", fn, _forward_cases, atol=1e-4, rtol=1e-4)


def reference_top_contexts(f: torch.Tensor, doc: torch.Tensor, feature: int, k: int) -> torch.Tensor:
    """Indices [k] of the tokens where `feature` is largest, at most one token per document, largest first."""
    values = f[:, feature]
    order = values.argsort(descending=True, stable=True)
    chosen, seen = [], set()
    for i in order.tolist():
        if int(doc[i]) not in seen:
            seen.add(int(doc[i]))
            chosen.append(i)
        if len(chosen) == k:
            break
    return torch.tensor(chosen)


def _context_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(80)
    cases = []
    for n_tokens, d_sae, n_docs, feature, k in [(30, 6, 5, 2, 3), (24, 5, 6, 4, 2)]:
        f = torch.rand(n_tokens, d_sae, generator=gen) * 5
        f[torch.rand(n_tokens, d_sae, generator=gen) < 0.5] = 0.0
        f[:, (feature + 1) % d_sae] *= 3  # another feature is larger everywhere: an ignored `feature` shows
        f[:, (feature - 1) % d_sae] = -20 * torch.rand(n_tokens, generator=gen)  # an off-by-one column differs
        doc = torch.arange(n_tokens) % n_docs
        top = f[:, feature].argsort(descending=True)
        f[top[1], feature] = f[top[0], feature] - 0.01  # the two best tokens...
        doc = doc.clone()
        doc[top[1]] = doc[top[0]]  # ...share a document
        args = (f, doc, feature, k)
        cases.append(Case(f"{n_tokens} tokens in {n_docs} documents, feature {feature}, k={k}", args,
                          reference_top_contexts(*args),
                          hint="sort the tokens by f[:, feature], largest first, and take the best token of each "
                               "document until you have k (a second token from a document already chosen is skipped)"))
    return cases


def check_top_contexts(fn: Callable) -> CheckResult:
    """Check top_contexts(f [n_tokens, d_sae], doc [n_tokens], feature, k) -> token indices [k]."""
    return check("top_contexts", fn, _context_cases)


def reference_spliced_loss(model, tokens: torch.Tensor, sae: SAE) -> torch.Tensor:
    """Mean next-token loss [scalar] with sae.hook's activation at positions >= 1 replaced by its SAE reconstruction.

    tokens [batch, pos] start with BOS; predictions made at positions 1 .. pos-2 are scored.
    """
    def splice(act, hook):
        act = act.clone()
        act[:, 1:] = sae(act[:, 1:])[0]
        return act

    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=[(sae.hook, splice)])
    return F.cross_entropy(logits[:, 1:-1].flatten(0, 1), tokens[:, 2:].flatten())


EXERCISE_DOCS = [["The pilot checked the weather before the flight to Rome.",
                  "My grandmother baked bread every Sunday morning in winter.",
                  "The committee voted to build a new library near the river."],
                 ["The airport was busy with travellers heading south.",
                  "He fixed the old bicycle with a borrowed wrench.",
                  "The orchestra rehearsed the symphony until late."]]


def exercise_documents(model, which: int = 0) -> torch.Tensor:
    """A batch of 3 equal-length documents [3, pos] (BOS first), cut to their shortest length."""
    rows = [model.to_tokens(text)[0] for text in EXERCISE_DOCS[which]]
    length = min(len(r) for r in rows)
    return torch.stack([r[:length] for r in rows])


def _splice_cases(model) -> list[Case]:
    random_sae = init_sae(model.cfg.d_model, 256, 16, seed=5)
    random_sae.hook = "blocks.5.hook_resid_post"
    cases = []
    for which, sae, label in [(0, load_sae("4x"), "the lesson's 4x SAE at layer 15"),
                              (1, random_sae, "a random SAE at layer 5")]:
        tokens = exercise_documents(model, which)
        cases.append(Case(f"3 documents of {tokens.shape[1]} tokens, {label}", (model, tokens, sae),
                          float(reference_spliced_loss(model, tokens, sae)),
                          hint="hook sae.hook, replace act[:, 1:] (never the BOS position) by sae(act[:, 1:])[0], "
                               "then score logits[:, 1:-1] against tokens[:, 2:] with cross-entropy, averaged"))
    return cases


def check_spliced_loss(fn: Callable, model) -> CheckResult:
    """Check spliced_loss(model, tokens [batch, pos], sae) -> mean next-token loss."""
    return check("spliced_loss", fn, lambda: _splice_cases(model), atol=1e-3, rtol=1e-3)
