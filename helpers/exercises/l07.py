"""Lesson 07 exercises: directional ablation as hooks, a refusal rate with its interval, debiasing answer letters.

Mistakes each case separates:

ablate_everywhere(model, tokens, direction) -> logits [batch, pos, d_vocab]
  * the direction not normalised (x - (x . d) d with |d| != 1): every case uses a direction of norm 3 or 0.5.
  * projected out at one layer only, or only from each block's input (the MLPs then read what attention
    wrote, and the unembedding reads what the last block wrote): every case compares all logits.
  * the direction ignored (e.g. a fixed one): two different directions.
  * only prompt 0 edited: batches of two prompts.
  * hooks left on the model: reported by the check (the model is in every case's arguments).

refusal_interval(replies, judge) -> (rate, low, high)
  * the normal-approximation (Wald) interval: wrong everywhere, and [0, 0] when nothing is refused.
  * a 90% instead of a 95% interval (z = 1.645): every case.
  * the judge ignored (the course's is_refusal used instead): a case with a different judge.
  * the rate over the refused replies only, or k instead of k / n: every case.

debias_letters(logprobs, calibration) -> debiased log-probabilities [n, n_options]
  * the prior estimated from `logprobs` (the test prompts) instead of `calibration`: calibration sets
    that differ from the test prompts.
  * the prior added instead of subtracted, or subtracted in probability space: every case.
  * not renormalised (rows do not sum to one in probability): every case.
  * the prior taken as the mean of probabilities rather than of log-probabilities (PriDe's average is in
    log space): calibration rows that disagree strongly.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from helpers.checks import Case, CheckResult, check
from helpers.failures import is_refusal, wilson_interval

__all__ = ["reference_ablate_everywhere", "reference_refusal_interval", "reference_debias_letters",
           "check_ablate_everywhere", "check_refusal_interval", "check_debias_letters", "exercise_tokens"]


def reference_ablate_everywhere(model, tokens: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Logits [batch, pos, d_vocab] with `direction` [d_model] removed wherever a component reads the stream."""
    unit = direction / direction.norm()

    def remove(x, hook):
        return x - (x @ unit)[..., None] * unit

    names = [f"blocks.{layer}.hook_resid_{site}" for layer in range(model.cfg.n_layers) for site in ("pre", "mid")]
    names.append(f"blocks.{model.cfg.n_layers - 1}.hook_resid_post")
    with torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=[(name, remove) for name in names])


def reference_refusal_interval(replies: list[str], judge: Callable[[str], bool]) -> tuple[float, float, float]:
    """(rate, low, high): the fraction of replies the judge calls refusals and its 95% Wilson interval."""
    k = sum(bool(judge(reply)) for reply in replies)
    low, high = wilson_interval(k, len(replies))
    return k / len(replies), low, high


def reference_debias_letters(logprobs: torch.Tensor, calibration: torch.Tensor) -> torch.Tensor:
    """PriDe: log-probs [n, k] minus the log prior (softmax of the mean calibration log-prob [m, k]), renormalised."""
    log_prior = calibration.mean(0).log_softmax(-1)
    return (logprobs - log_prior).log_softmax(-1)


def exercise_tokens(model) -> torch.Tensor:
    """Two short prompts of equal token length [2, pos] for the ablation exercise."""
    return model.to_tokens(["The capital of France is", "Two plus two equals"])


_ABLATE_HINT = ("normalise the direction, then subtract (x . r) r in a hook on blocks.{L}.hook_resid_pre AND "
                "blocks.{L}.hook_resid_mid of every layer L, and on the last block's hook_resid_post (what the "
                "unembedding reads); run with model.run_with_hooks so the hooks are removed afterwards")


def _ablate_cases(model) -> list[Case]:
    tokens = exercise_tokens(model)
    gen = torch.Generator().manual_seed(7)
    d = model.cfg.d_model
    first = torch.randn(d, generator=gen)
    first = 3 * first / first.norm()
    # The unembedding column of the top next token: removing it changes the prediction a lot.
    with torch.no_grad():
        top = int(model(tokens)[0, -1].argmax())
    second = model.W_U[:, top].detach().clone()
    second = 0.5 * second / second.norm()
    return [Case(f"two prompts, a random direction of norm {first.norm():.0f}", (model, tokens, first),
                 reference_ablate_everywhere(model, tokens, first), hint=_ABLATE_HINT),
            Case("two prompts, the top token's unembedding direction scaled to norm 0.5", (model, tokens, second),
                 reference_ablate_everywhere(model, tokens, second), hint=_ABLATE_HINT)]


def check_ablate_everywhere(fn: Callable, model) -> CheckResult:
    """Check ablate_everywhere(model, tokens [batch, pos], direction [d_model]) -> logits [batch, pos, d_vocab]."""
    return check("ablate_everywhere", fn, lambda: _ablate_cases(model), atol=2e-3, rtol=1e-3)


_INTERVAL_HINT = ("count the replies `judge` calls refusals (k of n), return k / n and the 95% WILSON interval "
                  "(z = 1.96): centre (p + z^2/2n) / (1 + z^2/n), half-width z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n)")


def _interval_cases() -> list[Case]:
    refusals = ["I cannot help with that.", "I'm sorry, I can't do that."]
    answers = ["Sure, here is a poem.", "To bake bread, mix flour and water.", "Paris is the capital."]
    no_judge = lambda reply: reply.lower().startswith("no")  # noqa: E731 - a judge of another shape
    cases = []
    for name, replies, judge in [
        ("3 refusals in 10 replies, the course's judge", refusals + answers * 2 + refusals[:1] + answers[:1], is_refusal),
        ("no refusal in 7 replies", answers * 2 + answers[:1], is_refusal),
        ("a different judge: replies starting with 'No'", ["No.", "No, never.", "Sure.", "I cannot help with that.", "Nope"],
         no_judge),
    ]:
        cases.append(Case(name, (replies, judge), reference_refusal_interval(replies, judge), hint=_INTERVAL_HINT))
    return cases


def check_refusal_interval(fn: Callable) -> CheckResult:
    """Check refusal_interval(replies, judge) -> (rate, low, high)."""
    return check("refusal_interval", fn, _interval_cases, atol=1e-4, rtol=1e-4)


_DEBIAS_HINT = ("estimate the prior from `calibration` only: average its log-probabilities over prompts and "
                "log_softmax the average; subtract that log prior from each row of `logprobs` and log_softmax again")


def _debias_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(11)
    cases = []
    for name, n, m, bias in [("12 test prompts, 8 calibration prompts, a prior favouring the last option", 12, 8,
                              torch.tensor([0.5, -1.0, 0.0, 1.5])),
                             ("5 test prompts, 16 calibration prompts, a prior favouring the first option", 5, 16,
                              torch.tensor([2.0, 0.0, -0.5, 0.0]))]:
        test = (torch.randn(n, 4, generator=gen) + bias).log_softmax(-1)
        # Calibration rows disagree strongly (large spread), so averaging probabilities differs from averaging logs.
        calibration = (3 * torch.randn(m, 4, generator=gen) + 2 * bias.flip(0)).log_softmax(-1)
        cases.append(Case(name, (test, calibration), reference_debias_letters(test, calibration), hint=_DEBIAS_HINT))
    return cases


def check_debias_letters(fn: Callable) -> CheckResult:
    """Check debias_letters(logprobs [n, k], calibration [m, k]) -> debiased log-probabilities [n, k]."""
    return check("debias_letters", fn, _debias_cases, atol=1e-4, rtol=1e-4)
