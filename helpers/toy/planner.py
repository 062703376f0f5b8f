"""Task: write an article that agrees with a word written later. The toy "a/an" problem (lesson 05).

Each sequence is ``BOS x.. a b NL art f.. = w PAD..``:

* ``x..`` 0-3 random prefix tokens, ``a`` and ``b`` two cues (8 values each);
* ``w = TABLE[a, b]``: a random 8x8 table onto 16 words, each word filling 4 cells, with no
  arithmetic structure (knowing ``a`` alone or ``b`` alone says little about ``w``);
* ``art = ARTICLE[w]``: the 16 words fall into 4 "article" classes of 4 words each, the way
  " an" goes with "apple" and " a" with "pear";
* ``f..`` filler of random length, then ``=``, after which the model writes ``w``.

The loss is on two tokens only: ``art`` (predicted at ``NL``) and ``w`` (predicted at ``=``). To
write ``art`` at ``NL`` the model needs something about a word it will only write later, like a
poet who must know the rhyme before writing the line. It can get both right without a plan: look
``art`` up from (a, b) directly, then recompute ``w`` from (a, b) at the end.

This model (``planner``) uses *distractor* filler: 2-4 tokens drawn from the cue vocabulary, and a
prefix drawn from it too, so at ``=`` the original cues cannot be told from the distractors by
content or by position; the two tokens before ``NL`` are the only reliable ones, and ``NL`` is
where the model can gather them. Its twin ``planner-neutral`` (:mod:`helpers.toy.planner_neutral`)
uses neutral filler and a neutral prefix, so re-reading the cues at the end is easy.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from helpers.errors import MicroscopeError

# Vocabulary: special tokens, then one block of ids per role.
BOS, NL, SAY, PAD = 0, 1, 2, 3
N_A, N_B, N_WORDS, N_ARTICLES, N_PREFIX, N_FILLER = 8, 8, 16, 4, 8, 8
A0 = 4
B0 = A0 + N_A
W0 = B0 + N_B
ART0 = W0 + N_WORDS
PREFIX0 = ART0 + N_ARTICLES
FILLER0 = PREFIX0 + N_PREFIX
D_VOCAB = FILLER0 + N_FILLER
TABLE_SEED = 5  # the random table and article map (fixed: part of the task's definition)

CONFIG = dict(
    n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=256, d_vocab=D_VOCAB, n_ctx=16,
    attn_only=False, normalization_type="LN", positional_embedding_type="standard", act_fn="gelu",
)
TRAIN = dict(steps=3000, batch_size=128, lr=3e-3, warmup=100, seed=0, log_every=250)
FILLER = "distractor"  # "distractor": cue-vocabulary filler and prefix; "neutral": their own tokens
PREFIX_LENGTHS = (0, 3)  # inclusive
FILLER_LENGTHS = {"distractor": (2, 4), "neutral": (1, 4)}
EVAL_SEED, EVAL_SIZE = 12345, 512


class ToyTaskError(MicroscopeError):
    """A toy task configuration that cannot be built (e.g. more words than table cells allow)."""


def make_tables(n_a: int = N_A, n_b: int = N_B, n_words: int = N_WORDS, n_articles: int = N_ARTICLES,
                seed: int = TABLE_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """(table [n_a, n_b] of word indices, article [n_words] of article indices), each value equally often."""
    cells = n_a * n_b
    if n_words < 1 or n_articles < 1 or cells < 1:
        raise ToyTaskError(f"n_a, n_b, n_words and n_articles must be positive, got {n_a}, {n_b}, {n_words}, {n_articles}.")
    if cells % n_words:
        raise ToyTaskError(
            f"n_words={n_words} cannot fill an {n_a}x{n_b} table evenly ({cells} cells): every word must fill "
            f"the same number of cells. Use a number of words that divides {cells} (e.g. 16 for 8x8).")
    if n_words % n_articles:
        raise ToyTaskError(
            f"n_articles={n_articles} cannot split {n_words} words evenly: use a divisor of {n_words} (e.g. 4).")
    if cells // n_words < 2:
        raise ToyTaskError(
            f"{n_words} words in {cells} cells leaves one cell per word: a held-out-cell probe needs each word "
            "in at least two cells (one to train on, one to test). Use fewer words or a larger table.")
    generator = torch.Generator().manual_seed(seed)
    table = torch.arange(n_words).repeat(cells // n_words)[torch.randperm(cells, generator=generator)]
    article = torch.arange(n_articles).repeat(n_words // n_articles)[torch.randperm(n_words, generator=generator)]
    return table.reshape(n_a, n_b), article


TABLE, ARTICLE = make_tables()


@dataclass
class PlanExamples:
    """Sequences of the planning task with their ground truth. Index tensors are [n]."""

    tokens: torch.Tensor    # [n, n_ctx]
    targets: torch.Tensor   # [n, n_ctx]: art at NL, w at "=", -100 elsewhere
    a: torch.Tensor         # cue values 0..N_A-1
    b: torch.Tensor
    word: torch.Tensor      # 0..N_WORDS-1
    article: torch.Tensor   # 0..N_ARTICLES-1
    nl: torch.Tensor        # position of NL
    say: torch.Tensor       # position of "=" (where w is predicted)
    prefix_len: torch.Tensor
    filler_len: torch.Tensor

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def cell(self) -> torch.Tensor:
        """Table cell index a * N_B + b: [n]."""
        return self.a * N_B + self.b


def _randint(generator: torch.Generator, low: int, high: int, n: int) -> torch.Tensor:
    """n integers uniform in [low, high] inclusive."""
    return torch.randint(low, high + 1, (n,), generator=generator)


def make_examples(generator: torch.Generator, n: int, filler: str | None = None, a=None, b=None,
                  prefix_len=None, filler_len=None) -> PlanExamples:
    """n sequences; a, b, prefix_len, filler_len may be fixed ([n] tensors or ints), else drawn at random."""
    filler = filler or FILLER
    if filler not in FILLER_LENGTHS:
        raise ToyTaskError(f"filler must be one of {sorted(FILLER_LENGTHS)}, got {filler!r}.")
    fill_low, fill_high = FILLER_LENGTHS[filler]

    def given(value, low, high):
        drawn = _randint(generator, low, high, n)
        return drawn if value is None else torch.as_tensor(value).expand(n).clone()

    a, b = given(a, 0, N_A - 1), given(b, 0, N_B - 1)
    prefix_len = given(prefix_len, *PREFIX_LENGTHS)
    filler_len = given(filler_len, fill_low, fill_high)
    word = TABLE[a, b]
    article = ARTICLE[word]
    n_ctx = CONFIG["n_ctx"]
    tokens = torch.full((n, n_ctx), PAD)
    targets = torch.full((n, n_ctx), -100)
    tokens[:, 0] = BOS
    cue_vocab = torch.cat([torch.arange(A0, A0 + N_A), torch.arange(B0, B0 + N_B)])
    noise_prefix = cue_vocab if filler == "distractor" else torch.arange(PREFIX0, PREFIX0 + N_PREFIX)
    noise_filler = cue_vocab if filler == "distractor" else torch.arange(FILLER0, FILLER0 + N_FILLER)
    prefix = noise_prefix[torch.randint(len(noise_prefix), (n, PREFIX_LENGTHS[1]), generator=generator)]
    fill = noise_filler[torch.randint(len(noise_filler), (n, fill_high), generator=generator)]
    nl = 3 + prefix_len
    say = nl + 2 + filler_len
    if (say + 1 >= n_ctx).any():
        raise ToyTaskError(f"n_ctx={n_ctx} is too short for the longest sequence ({int(say.max()) + 2} tokens).")
    for i in range(n):
        p, f, at = int(prefix_len[i]), int(filler_len[i]), int(nl[i])
        row = [*prefix[i, :p].tolist(), A0 + int(a[i]), B0 + int(b[i]), NL, ART0 + int(article[i]),
               *fill[i, :f].tolist(), SAY, W0 + int(word[i])]
        tokens[i, 1:1 + len(row)] = torch.tensor(row)
        targets[i, at] = ART0 + int(article[i])
        targets[i, int(say[i])] = W0 + int(word[i])
    return PlanExamples(tokens, targets, a, b, word, article, nl, say, prefix_len, filler_len)


def make_patch_pairs(generator: torch.Generator, n: int, filler: str | None = None) -> tuple[PlanExamples, PlanExamples]:
    """(target, source): n pairs with the same layout, prefix and filler tokens, whose cues give a different article.

    Only the cues a and b differ, so the word and the article differ too, and a patch at any position
    compares like with like (same token at the same place everywhere else).
    """
    target = make_examples(generator, n, filler)
    a, b = target.a.clone(), target.b.clone()
    redo = torch.ones(n, dtype=torch.bool)
    while redo.any():  # rejection sampling: a source cell whose article differs from the target's
        a[redo] = torch.randint(N_A, (int(redo.sum()),), generator=generator)
        b[redo] = torch.randint(N_B, (int(redo.sum()),), generator=generator)
        redo = ARTICLE[TABLE[a, b]] == target.article
    word = TABLE[a, b]
    article = ARTICLE[word]
    rows = torch.arange(n)
    tokens, targets = target.tokens.clone(), target.targets.clone()
    tokens[rows, target.nl - 2], tokens[rows, target.nl - 1] = A0 + a, B0 + b
    tokens[rows, target.nl + 1], tokens[rows, target.say + 1] = ART0 + article, W0 + word
    targets[rows, target.nl], targets[rows, target.say] = ART0 + article, W0 + word
    source = PlanExamples(tokens, targets, a, b, word, article, target.nl.clone(), target.say.clone(),
                          target.prefix_len.clone(), target.filler_len.clone())
    return target, source


def describe(tokens: torch.Tensor) -> str:
    """One sequence [pos] in words: cue a3 is 'a3', word 5 is 'w5', article 2 is 'art2' (padding dropped)."""
    roles = [(A0, N_A, "a"), (B0, N_B, "b"), (W0, N_WORDS, "w"), (ART0, N_ARTICLES, "art"), (PREFIX0, N_PREFIX, "x"),
             (FILLER0, N_FILLER, "f")]
    names = {BOS: "BOS", NL: "NL", SAY: "=", PAD: ""}
    out = []
    for token in tokens.tolist():
        if token in names:
            out.append(names[token])
            continue
        out.extend(f"{name}{token - start}" for start, size, name in roles if start <= token < start + size)
    return " ".join(t for t in out if t)


def make_batch(generator: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [n, n_ctx], targets [n, n_ctx]): loss only on the article (at NL) and the word (at "=")."""
    examples = make_examples(generator, n)
    return examples.tokens, examples.targets


def accuracies(logits: torch.Tensor, examples: PlanExamples) -> dict[str, float]:
    """Top-1 accuracy on the article (read at NL) and the word (read at "="). logits [n, pos, vocab]."""
    rows = torch.arange(len(examples))
    art = logits[rows, examples.nl].argmax(-1) == ART0 + examples.article
    word = logits[rows, examples.say].argmax(-1) == W0 + examples.word
    return {"article": art.float().mean().item(), "word": word.float().mean().item()}


def metrics_for(model, filler: str) -> dict:
    """Article and word accuracy on a fixed held-out batch (the training stream is untouched)."""
    examples = make_examples(torch.Generator().manual_seed(EVAL_SEED), EVAL_SIZE, filler)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(examples.tokens)
    model.train(was_training)
    return {k: round(v, 4) for k, v in accuracies(logits, examples).items()}


def log_metrics(model, generator: torch.Generator) -> dict:
    """Per-step article and word accuracy for the training log."""
    return metrics_for(model, FILLER)
