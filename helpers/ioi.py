"""Indirect-object identification (IOI): a prompt set with a known right answer, and the logit difference.

"When Mary and John went to the store, John gave a drink to" -> " Mary". Two names appear in the
first clause; one of them (the subject, S) is repeated; the model should name the other one, the
indirect object (IO). The *corrupted* twin repeats the other name instead ("..., Mary gave a drink
to"), so the right answer flips while every other token stays put: patching activations from the
clean run into the corrupted run then shows where the model keeps the information "which name was
repeated".

Every template here has the same token layout (BOS, opener, name, " and", name, four tokens, ",",
S2, three tokens, " to"), so prompts from different templates line up position by position and run
in one batch. Names must be single tokens with their leading space; the builder checks both.
"""
from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from helpers.errors import MicroscopeError, PromptError, ShapeError
from helpers.tokens import single_token_id, to_tokens

# {A} and {B} are the two names of the first clause, {S} the repeated one.
TEMPLATES: tuple[str, ...] = (
    "When {A} and {B} went to the store, {S} gave a drink to",
    "When {A} and {B} went to the park, {S} gave a ball to",
    "After {A} and {B} went to the office, {S} gave a book to",
    "When {A} and {B} went to the school, {S} gave a pen to",
    "After {A} and {B} went to the market, {S} handed an apple to",
    "When {A} and {B} arrived at the party, {S} gave a gift to",
    "While {A} and {B} were at the beach, {S} threw a ball to",
)
# Seven more templates with the same 15-token layout, never used to choose heads: a held-out test set.
HELD_OUT_TEMPLATES: tuple[str, ...] = (
    "When {A} and {B} went to the library, {S} gave a letter to",
    "After {A} and {B} went to the museum, {S} gave a map to",
    "When {A} and {B} walked to the station, {S} passed a note to",
    "While {A} and {B} were in the kitchen, {S} gave a spoon to",
    "After {A} and {B} arrived at the lake, {S} threw a stick to",
    "When {A} and {B} sat in the garden, {S} offered a cup to",
    "When {A} and {B} got to the station, {S} sent a message to",
)
NAMES: tuple[str, ...] = (
    "Mary", "John", "Alice", "Bob", "Tom", "James", "Sarah", "Michael", "David", "Emma", "Anna",
    "Paul", "Lisa", "Mark", "Kate", "Peter", "Jane", "Daniel", "Laura", "Chris", "Rachel", "Kevin",
)
# ABB: the IO is named first ("When Mary and John ..., John gave ... to"); BAB: the subject is.
ORDERS = ("ABB", "BAB")


@dataclass(frozen=True)
class IOIPrompt:
    """One clean/corrupted pair: `clean` answers `io`; `corrupted` repeats the IO, so it answers `s`."""

    template: str
    io: str  # the right answer of the clean prompt, with its leading space: " Mary"
    s: str  # the repeated subject: " John"
    order: str  # "ABB" or "BAB"
    clean: str
    corrupted: str


@dataclass
class IOIDataset:
    """A batch of IOI pairs with equal token lengths, tokenised once.

    clean_tokens, corrupted_tokens: [batch, pos]; io_ids, s_ids: [batch];
    io_pos, s1_pos, s2_pos: [batch] positions of the IO, first S and repeated S in the clean prompt.
    """

    prompts: list[IOIPrompt]
    clean_tokens: torch.Tensor
    corrupted_tokens: torch.Tensor
    io_ids: torch.Tensor
    s_ids: torch.Tensor
    io_pos: torch.Tensor
    s1_pos: torch.Tensor
    s2_pos: torch.Tensor

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, index: Sequence[int] | slice) -> "IOIDataset":
        """The pairs at `index` (a list of ints or a slice), as a new dataset."""
        ids = list(range(len(self)))[index] if isinstance(index, slice) else [int(i) for i in index]
        if not ids:
            raise MicroscopeError("This subset selects no prompts; choose at least one index.")
        bad = [i for i in ids if not 0 <= i < len(self)]
        if bad:
            raise MicroscopeError(f"Indices {bad} are out of range: the dataset has {len(self)} pairs.")
        rows = torch.tensor(ids)
        return IOIDataset([self.prompts[i] for i in ids], self.clean_tokens[rows], self.corrupted_tokens[rows],
                          self.io_ids[rows], self.s_ids[rows], self.io_pos[rows], self.s1_pos[rows], self.s2_pos[rows])


def _fill(template: str, io: str, s: str, order: str, repeated: str) -> str:
    first, second = (io, s) if order == "ABB" else (s, io)
    return template.format(A=first, B=second, S=repeated)


def make_prompt(template: str, io: str, s: str, order: str = "ABB") -> IOIPrompt:
    """The clean/corrupted pair for one template and name pair (names without the leading space)."""
    if order not in ORDERS:
        raise MicroscopeError(f"Unknown order {order!r}; use 'ABB' (IO named first) or 'BAB' (subject first).")
    missing = [field for field in ("{A}", "{B}", "{S}") if field not in template]
    if missing:
        raise PromptError(f"The template {template!r} lacks {', '.join(missing)}; it needs {{A}}, {{B}} and {{S}}.")
    io, s = io.strip(), s.strip()
    if io == s:
        raise MicroscopeError(f"The two names must differ, got {io!r} twice.")
    return IOIPrompt(template, " " + io, " " + s, order, _fill(template, io, s, order, s),
                     _fill(template, io, s, order, io))


def name_pairs(n: int, names: Sequence[str] = NAMES, seed: int = 0) -> list[tuple[str, str]]:
    """n distinct ordered (io, s) pairs drawn without replacement, reproducibly."""
    pairs = list(itertools.permutations(names, 2))
    if not 1 <= n <= len(pairs):
        raise MicroscopeError(f"Asked for {n} name pairs; {len(names)} names give 1 to {len(pairs)}.")
    return random.Random(seed).sample(pairs, n)


def abc_tokens(model, dataset: "IOIDataset", names: Sequence[str] = NAMES, seed: int = 0) -> torch.Tensor:
    """The dataset's clean prompts with S2 replaced by a third name: [batch, pos], same layout.

    "When Mary and John went to the store, Kate gave a drink to" has no right answer among the two
    names, so averages over these prompts (mean ablation) carry no hint of which name to say.
    """
    rng = random.Random(seed)
    rows = []
    for p in dataset.prompts:
        third = rng.choice([n for n in names if " " + n not in (p.io, p.s)])
        rows.append(_fill(p.template, p.io.strip(), p.s.strip(), p.order, third))
    tokens = to_tokens(model, rows)
    if tokens.shape != dataset.clean_tokens.shape:
        raise PromptError(f"ABC prompts have shape {tuple(tokens.shape)} but the dataset {tuple(dataset.clean_tokens.shape)}; "
                          "every name must be a single token.")
    return tokens


def _position_of(tokens: torch.Tensor, token_id: int, occurrence: int, text: str) -> int:
    hits = (tokens == token_id).nonzero().flatten().tolist()
    if len(hits) <= occurrence:
        raise PromptError(f"Expected the name token {token_id} at least {occurrence + 1} times in {text!r}.")
    return hits[occurrence]


def build_dataset(model, prompts: Sequence[IOIPrompt]) -> IOIDataset:
    """Tokenise and check a list of pairs: single-token names, equal token lengths everywhere."""
    prompts = list(prompts)
    if not prompts:
        raise PromptError("No IOI prompts given.")
    io_ids = torch.tensor([single_token_id(model, p.io) for p in prompts])
    s_ids = torch.tensor([single_token_id(model, p.s) for p in prompts])
    lengths = {}
    for p in prompts:
        for text in (p.clean, p.corrupted):
            lengths.setdefault(len(model.tokenizer.encode(text, add_special_tokens=False)), text)
    if len(lengths) > 1:
        examples = "; ".join(f"{n} tokens: {text!r}" for n, text in sorted(lengths.items()))
        raise PromptError(f"IOI prompts must all have the same token length to share a batch and line up "
                          f"position by position; got {examples}.")
    clean = to_tokens(model, [p.clean for p in prompts])
    corrupted = to_tokens(model, [p.corrupted for p in prompts])
    io_pos, s1_pos, s2_pos = [], [], []
    for row, p in enumerate(prompts):
        io_pos.append(_position_of(clean[row], int(io_ids[row]), 0, p.clean))
        s1_pos.append(_position_of(clean[row], int(s_ids[row]), 0, p.clean))
        s2_pos.append(_position_of(clean[row], int(s_ids[row]), 1, p.clean))
    return IOIDataset(prompts, clean, corrupted, io_ids, s_ids, torch.tensor(io_pos), torch.tensor(s1_pos),
                      torch.tensor(s2_pos))


def make_dataset(model, n_pairs: int = 3, templates: Sequence[str] = TEMPLATES, orders: Sequence[str] = ORDERS,
                 names: Sequence[str] = NAMES, seed: int = 0) -> IOIDataset:
    """Every template x order x n_pairs name pairs (template-major), checked and tokenised."""
    pairs = name_pairs(n_pairs, names, seed)
    prompts = [make_prompt(t, io, s, order) for t in templates for order in orders for io, s in pairs]
    return build_dataset(model, prompts)


def _check_logits(logits: torch.Tensor, io_ids: torch.Tensor, s_ids: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ShapeError(f"Expected logits [batch, pos, vocab], got {shape}.")
    if io_ids.shape != (logits.shape[0],) or s_ids.shape != (logits.shape[0],):
        raise ShapeError(f"Need one IO id and one S id per prompt: logits have batch {logits.shape[0]}, "
                         f"io_ids shape {tuple(io_ids.shape)}, s_ids shape {tuple(s_ids.shape)}.")


def logit_diff(logits: torch.Tensor, io_ids: torch.Tensor, s_ids: torch.Tensor,
               per_prompt: bool = False) -> torch.Tensor:
    """logit(IO) - logit(S) at the last position: mean over the batch (scalar), or [batch] if per_prompt."""
    _check_logits(logits, io_ids, s_ids)
    last = logits[:, -1]
    rows = torch.arange(last.shape[0])
    diff = last[rows, io_ids.to(last.device)] - last[rows, s_ids.to(last.device)]
    return diff if per_prompt else diff.mean()


def logit_diff_metric(dataset: IOIDataset) -> Callable[[torch.Tensor], torch.Tensor]:
    """metric(logits [batch, pos, vocab]) -> mean logit difference on `dataset`'s answers (scalar)."""
    return lambda logits: logit_diff(logits, dataset.io_ids, dataset.s_ids)


def normalized_metric(dataset: IOIDataset, clean_value: float, corrupted_value: float
                      ) -> Callable[[torch.Tensor], torch.Tensor]:
    """metric(logits) -> (logit diff - corrupted) / (clean - corrupted): 0 = corrupted run, 1 = clean run."""
    gap = float(clean_value) - float(corrupted_value)
    if abs(gap) < 1e-6:
        raise MicroscopeError(f"Clean and corrupted logit differences are equal ({float(clean_value):.4g}): "
                              "there is no gap to recover, so the normalised metric is undefined.")
    return lambda logits: (logit_diff(logits, dataset.io_ids, dataset.s_ids) - float(corrupted_value)) / gap


@torch.no_grad()
def evaluate(model, dataset: IOIDataset) -> dict[str, torch.Tensor]:
    """Per-prompt numbers [batch]: clean and corrupted logit differences, and whether IO is the top-1 token."""
    clean_logits = model(dataset.clean_tokens)
    corrupted_logits = model(dataset.corrupted_tokens)
    return {
        "clean_ld": logit_diff(clean_logits, dataset.io_ids, dataset.s_ids, per_prompt=True),
        "corrupted_ld": logit_diff(corrupted_logits, dataset.io_ids, dataset.s_ids, per_prompt=True),
        "io_top1": clean_logits[:, -1].argmax(-1) == dataset.io_ids,
    }


def position_labels(model, dataset: IOIDataset) -> list[str]:
    """A label per position for plots: 'A' and 'B' (the two first-clause names), 'S2', or the token itself.

    A position whose token differs across the batch shows the first prompt's token with a '*'
    (e.g. ' store*' where other templates have ' park').
    """
    tokens = dataset.clean_tokens
    first = torch.minimum(dataset.io_pos, dataset.s1_pos)
    second = torch.maximum(dataset.io_pos, dataset.s1_pos)
    labels = []
    for pos in range(tokens.shape[1]):
        if (first == pos).all():
            labels.append("A")
        elif (second == pos).all():
            labels.append("B")
        elif (dataset.s2_pos == pos).all():
            labels.append("S2")
        elif pos == 0:
            labels.append("BOS")
        else:
            word = model.tokenizer.decode([int(tokens[0, pos])])
            labels.append(word if (tokens[:, pos] == tokens[0, pos]).all() else word + "*")
    return labels
