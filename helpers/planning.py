"""Planning: read a future token off a model's residual stream, and test whether the model uses it.

The pieces (lesson 05), each usable on any TransformerBridge and any hook:

* :func:`resid_at`: activations at one position per sequence (the line break, the decision point);
* held-out-cell probes: :func:`heldout_cell_split` keeps whole (a, b) cells apart, so a probe that
  decodes the future word on unseen cells has found a word representation, not a lookup of its
  inputs; :func:`class_probe_accuracies` fits one multiclass probe per hook;
* causal tests: :func:`patch_resid` copies the residual at given positions from a source run into a
  target run (per-sequence positions, one hook), :func:`steer_resid` adds a direction there;
* future-token read-outs: :func:`future_lens` fits a ridge map from the residual at position t to
  the final residual at t+1 and scores its decoded top-1 against the model's own prediction at t+1
  (the token after next), with :func:`skip_bigram_table` as the input-only baseline;
* :func:`bootstrap_ci` for every rate the lesson reports.

Shapes: activations for one hook are ``[n, d]``, for several ``[n_hooks, n, d]``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from helpers.errors import MicroscopeError, PromptError
from helpers.tokens import check_hook_name


class PlanningError(MicroscopeError):
    """Inputs a planning read-out or patch cannot use (mismatched layouts, a bad split, ...)."""


# ------------------------------------------------------------------------------------ activations

def _check_token_batch(model, tokens, name: str = "tokens") -> torch.Tensor:
    if not isinstance(tokens, torch.Tensor) or tokens.is_floating_point() or tokens.dim() != 2:
        raise PlanningError(f"{name} must be an integer tensor of token ids [batch, pos], got "
                            f"{type(tokens).__name__}{'' if not isinstance(tokens, torch.Tensor) else tuple(tokens.shape)}.")
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= model.cfg.d_vocab):
        raise PlanningError(f"{name} holds ids outside the vocabulary 0..{model.cfg.d_vocab - 1}.")
    return tokens.to(model.cfg.device)


def _check_positions(positions, n: int, n_pos: int, name: str = "positions") -> torch.Tensor:
    """One in-range position per sequence: [n] int64 (an int is broadcast)."""
    positions = torch.as_tensor(positions)
    if positions.is_floating_point():
        raise PlanningError(f"{name} must be integer positions, got {positions.dtype}.")
    positions = positions.long().reshape(-1) if positions.dim() else positions.long().expand(n)
    if len(positions) != n:
        raise PlanningError(f"{len(positions)} {name} for {n} sequences: give one position per sequence (or one int).")
    bad = ((positions < 0) | (positions >= n_pos)).nonzero().flatten()
    if len(bad):
        i = int(bad[0])
        raise PromptError(f"{name}[{i}] = {int(positions[i])} is beyond the prompt, which has {n_pos} tokens "
                          f"(positions 0..{n_pos - 1}, BOS included). Read a position inside the prompt.")
    return positions


def resid_at(model, tokens: torch.Tensor, positions, hook_names: str | Sequence[str],
             batch_size: int = 512) -> torch.Tensor:
    """Activations at one position per sequence: [n, d] for one hook name, [n_hooks, n, d] for a list."""
    tokens = _check_token_batch(model, tokens)
    positions = _check_positions(positions, tokens.shape[0], tokens.shape[1])
    single = isinstance(hook_names, str)
    names = [check_hook_name(model, name) for name in ([hook_names] if single else list(hook_names))]
    if not names:
        raise PlanningError("No hook names given: pass one name or a list.")
    out = []
    for start in range(0, tokens.shape[0], batch_size):
        rows = slice(start, start + batch_size)
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens[rows], names_filter=names)
        at = positions[rows]
        out.append(torch.stack([cache[name][torch.arange(len(at)), at].float().cpu() for name in names]))
    acts = torch.cat(out, dim=1)
    return acts[0] if single else acts


def layer_hook_names(model) -> list[str]:
    """The embedding (blocks.0.hook_resid_pre) then every layer's hook_resid_post: n_layers + 1 names."""
    return ["blocks.0.hook_resid_pre"] + [f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers)]


# ------------------------------------------------------------------------------ held-out-cell probes

def heldout_cell_split(cells, words, n_held: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, test_idx) holding out `n_held` whole cells per word.

    cells [n]: each example's input cell (e.g. a * n_b + b); words [n]: the word that cell maps to.
    Every example of a held-out cell is on the test side, so the probe never sees that cell, and
    every word keeps at least one other cell on the training side (the probe can still learn it).
    """
    cells, words = np.asarray(cells), np.asarray(words)
    if cells.shape != words.shape or cells.ndim != 1:
        raise PlanningError(f"cells and words must be 1-D and the same length, got {cells.shape} and {words.shape}.")
    if int(n_held) < 1:
        raise PlanningError(f"n_held must be at least 1 (cells held out per word), got {n_held}.")
    rng = np.random.default_rng(seed)
    held_out = []
    for word in np.unique(words):
        word_cells = np.unique(cells[words == word])
        if len(word_cells) <= n_held:
            raise PlanningError(f"word {word} occurs in {len(word_cells)} cell(s) {word_cells.tolist()}: holding out "
                                f"{n_held} would leave nothing to learn it from. Use more examples or fewer held-out cells.")
        held_out.extend(rng.choice(word_cells, size=int(n_held), replace=False))
    test = np.isin(cells, held_out)
    return np.flatnonzero(~test), np.flatnonzero(test)


def onehot_inputs(*columns: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Concatenated one-hot codes of integer columns (e.g. a and b): [n, sum(sizes)]."""
    if len(columns) != len(sizes):
        raise PlanningError(f"{len(columns)} columns but {len(sizes)} sizes: give one size per column.")
    return torch.cat([torch.nn.functional.one_hot(torch.as_tensor(c).long(), s).float()
                      for c, s in zip(columns, sizes)], dim=-1)


def fit_class_probe(acts: torch.Tensor, labels, seed: int = 0, C: float = 1.0):
    """A multiclass logistic-regression probe (standardised features) fitted on acts [n, d], labels [n]."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    acts, labels = torch.as_tensor(acts).float(), torch.as_tensor(labels).long()
    if acts.dim() != 2 or len(labels) != acts.shape[0]:
        raise PlanningError(f"need acts [n, d] and labels [n], got {tuple(acts.shape)} and {tuple(labels.shape)}.")
    if len(labels.unique()) < 2:
        raise PlanningError("All training labels are the same class: a probe needs at least two classes.")
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=3000, random_state=seed))
    return probe.fit(acts.numpy(), labels.numpy())


def class_probe_accuracies(acts: torch.Tensor, labels, train_idx, test_idx, seed: int = 0,
                           C: float = 1.0) -> np.ndarray:
    """Held-out accuracy [n_hooks] of one multiclass probe per hook. acts [n_hooks, n, d] (or [n, d]), labels [n]."""
    acts, labels = torch.as_tensor(acts), torch.as_tensor(labels).long()
    if acts.dim() == 2:
        acts = acts[None]
    train_idx, test_idx = np.asarray(train_idx), np.asarray(test_idx)
    if not len(train_idx) or not len(test_idx):
        raise PlanningError("The split has an empty train or test side.")
    if np.intersect1d(train_idx, test_idx).size:
        raise PlanningError("Some examples are on both sides of the split: the test accuracy would be inflated.")
    scores = []
    for layer_acts in acts:
        probe = fit_class_probe(layer_acts[train_idx], labels[train_idx], seed=seed, C=C)
        scores.append(float(probe.score(layer_acts[test_idx].float().numpy(), labels[test_idx].numpy())))
    return np.array(scores)


# ---------------------------------------------------------------------------------- causal tests

def _resid_hook(model, layer: int, site: str) -> str:
    if site not in ("resid_pre", "resid_post"):
        raise PlanningError(f"site must be 'resid_pre' or 'resid_post', got {site!r}.")
    if not 0 <= int(layer) < model.cfg.n_layers:
        raise PlanningError(f"layer {layer} does not exist: the model has layers 0 to {model.cfg.n_layers - 1}.")
    return f"blocks.{int(layer)}.hook_{site}"


def patch_resid(model, target: torch.Tensor, source: torch.Tensor, layer: int, positions,
                site: str = "resid_pre", source_positions=None) -> torch.Tensor:
    """Logits [batch, pos, vocab] of the target run with the residual at `positions` copied from the source run.

    positions: one position per sequence (or an int). The source's positions default to the same
    ones; if you pass different ones the two layouts differ, and that is an error (the patched
    vector would carry the source's position, not only its content).
    """
    target = _check_token_batch(model, target, "target")
    source = _check_token_batch(model, source, "source")
    if target.shape != source.shape:
        raise PlanningError(f"target {tuple(target.shape)} and source {tuple(source.shape)} differ in shape: patch "
                            "between prompts of the same layout (same length, the patched token at the same place).")
    positions = _check_positions(positions, target.shape[0], target.shape[1])
    if source_positions is not None:
        source_positions = _check_positions(source_positions, target.shape[0], target.shape[1], "source_positions")
        if not torch.equal(source_positions, positions):
            i = int((source_positions != positions).nonzero()[0])
            raise PlanningError(f"pair {i}: the source's position {int(source_positions[i])} differs from the target's "
                                f"{int(positions[i])}: the prompts have different layouts. Build source and target "
                                "with the same prefix and filler lengths.")
    name = _resid_hook(model, layer, site)
    rows = torch.arange(target.shape[0])
    with torch.no_grad():
        _, cache = model.run_with_cache(source, names_filter=[name])
        clean = cache[name][rows, positions]

        def patch(resid, hook):
            resid = resid.clone()
            resid[rows, positions] = clean
            return resid

        return model.run_with_hooks(target, fwd_hooks=[(name, patch)])


def steer_resid(model, tokens: torch.Tensor, layer: int, positions, direction: torch.Tensor,
                site: str = "resid_pre") -> torch.Tensor:
    """Logits [batch, pos, vocab] with `direction` [d_model] added to the residual at `positions`."""
    tokens = _check_token_batch(model, tokens)
    positions = _check_positions(positions, tokens.shape[0], tokens.shape[1])
    direction = torch.as_tensor(direction, dtype=torch.float32)
    if direction.shape != (model.cfg.d_model,):
        raise PlanningError(f"direction must be [d_model] = [{model.cfg.d_model}], got {tuple(direction.shape)}.")
    name = _resid_hook(model, layer, site)
    rows = torch.arange(tokens.shape[0])

    def add(resid, hook):
        resid = resid.clone()
        resid[rows, positions] += direction.to(resid.dtype)
        return resid

    with torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=[(name, add)])


def read_at(logits: torch.Tensor, positions) -> torch.Tensor:
    """Top-1 token at one position per sequence: logits [batch, pos, vocab] -> [batch]."""
    positions = _check_positions(positions, logits.shape[0], logits.shape[1])
    return logits[torch.arange(logits.shape[0]), positions].argmax(-1)


# --------------------------------------------------------------------------------- statistics

def bootstrap_ci(values, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of a percentile bootstrap over the entries of `values` [n]."""
    values = np.asarray(values, dtype=float).reshape(-1)
    if not len(values):
        raise PlanningError("bootstrap_ci needs at least one value.")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n_boot, len(values)))].mean(1)
    tail = (1 - level) / 2
    return float(values.mean()), float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def patch_and_write(model, target: torch.Tensor, source: torch.Tensor, layer: int, positions, write_at,
                    read_at_: Sequence[int] | torch.Tensor, site: str = "resid_pre",
                    source_positions=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(written [batch], read [batch]): patch, let the model write its own next token after `write_at`, read later.

    The patch at `positions` stays on while the model writes the token it predicts at `write_at`
    into position write_at + 1 (as it would when generating), then the top-1 token at `read_at_`
    is read. This is how "the article and then the word follow the source" is tested: with the
    original token left in place, a later position could read the old article from the input.
    """
    target = _check_token_batch(model, target, "target")
    write_at = _check_positions(write_at, target.shape[0], target.shape[1] - 1, "write_at")
    rows = torch.arange(target.shape[0])
    written = read_at(patch_resid(model, target, source, layer, positions, site, source_positions), write_at)
    continued = target.clone()
    continued[rows, write_at + 1] = written
    logits = patch_resid(model, continued, source, layer, positions, site, source_positions)
    return written.cpu(), read_at(logits, read_at_).cpu()


# ------------------------------------------------------------------------------ offline text

TEXT_PATH = "l05_text.json"  # in helpers/data: the lesson's offline text, written for this project


# ----------------------------------------------------------------------------- future lens (lite)

def decode_final(model, final_resid: torch.Tensor) -> torch.Tensor:
    """Logits [..., vocab] from final-layer residuals [..., d_model]: the final norm, then the unembedding."""
    with torch.no_grad():
        return model.unembed(model.ln_final(final_resid.to(model.cfg.device)))


def future_lens_agreement(model, predicted: torch.Tensor, logits: torch.Tensor) -> float:
    """Fraction of positions t where decoding predicted[:, t] (a guess of the final residual at t + 1)
    gives the model's own top-1 at t + 1 (its guess of token t + 2). predicted [batch, pos, d], logits [batch, pos, vocab]."""
    if predicted.shape[:2] != logits.shape[:2] or predicted.shape[1] < 2:
        raise PlanningError(f"predicted {tuple(predicted.shape)} and logits {tuple(logits.shape)} need the same "
                            "[batch, pos] (pos >= 2).")
    guess = decode_final(model, predicted[:, :-1]).argmax(-1)
    return (guess == logits[:, 1:].argmax(-1).to(guess.device)).float().mean().item()


def fit_ridge(x: torch.Tensor, y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight [d_in, d_out], bias [d_out]) of ridge regression y ~ x @ weight + bias. x [n, d_in], y [n, d_out]."""
    x, y = x.double(), y.double()
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc = x - x_mean
    gram = xc.T @ xc + alpha * len(x) * torch.eye(x.shape[1], dtype=x.dtype)
    weight = torch.linalg.solve(gram, xc.T @ (y - y_mean))
    return weight.float(), (y_mean - x_mean @ weight).float()


def skip_bigram_table(docs: Sequence[torch.Tensor]) -> tuple[dict[int, int], int]:
    """({token: most frequent token two places later}, overall most frequent such token) from token rows [pos]."""
    from collections import Counter, defaultdict

    counts: dict[int, Counter] = defaultdict(Counter)
    overall: Counter = Counter()
    for row in docs:
        row = row.tolist()
        for t in range(len(row) - 2):
            counts[row[t]][row[t + 2]] += 1
            overall[row[t + 2]] += 1
    if not overall:
        raise PlanningError("No document has 3 or more tokens: a skip-bigram table needs token t and t + 2.")
    return {token: c.most_common(1)[0][0] for token, c in counts.items()}, overall.most_common(1)[0][0]


def steer_and_write(model, tokens: torch.Tensor, layer: int, positions, direction: torch.Tensor, write_at,
                    read_at_, site: str = "resid_pre") -> tuple[torch.Tensor, torch.Tensor]:
    """(written [batch], read [batch]) as in patch_and_write, with `direction` added instead of a patch."""
    tokens = _check_token_batch(model, tokens)
    write_at = _check_positions(write_at, tokens.shape[0], tokens.shape[1] - 1, "write_at")
    written = read_at(steer_resid(model, tokens, layer, positions, direction, site), write_at)
    continued = tokens.clone()
    continued[torch.arange(tokens.shape[0]), write_at + 1] = written
    return written.cpu(), read_at(steer_resid(model, continued, layer, positions, direction, site), read_at_).cpu()
