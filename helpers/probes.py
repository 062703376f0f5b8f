"""Directions and probes: read a property off a model's activations, with the controls that keep it honest.

The pieces, each usable on its own and with any TransformerBridge and any hook:

* labelled prompt sets (:class:`ProbeDataset`), built from lists or loaded from ``helpers/data``;
* :func:`gather_activations`: one batched pass caching chosen hooks at one token per prompt
  (the last token, a fixed index, or a per-prompt position such as :func:`token_position` of an entity);
* directions by difference of means (:func:`diff_of_means`) and logistic-regression probes
  (:func:`fit_probe`, :func:`probe_accuracies`), trained and scored on a split you choose;
* controls: splits that hold out whole entities (:func:`split_by_group`), control-task labels
  (:func:`control_labels`, Hewitt & Liang 2019), and a randomly initialised copy of the model
  (:func:`random_init_copy`).

Shapes: activations for one hook are ``[n_prompts, d]``; for several hooks ``[n_hooks, n_prompts, d]``.
"""
from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from helpers import validate
from helpers.errors import MicroscopeError, PromptError
from helpers.tokens import check_hook_name, require_tokenizer

DATA = Path(__file__).resolve().parent / "data"


class ProbeDataError(MicroscopeError):
    """A probe dataset or split that cannot give a meaningful probe (one class, mismatched lengths, ...)."""


# ---------------------------------------------------------------------------------------------- data

@dataclass
class ProbeDataset:
    """Prompts with a binary label each, and the group (e.g. entity) each prompt is about.

    ``groups`` is what a held-out split must keep apart: prompts about the same entity go to the
    same side, so a probe is scored on entities it never saw.
    """

    prompts: list[str]
    labels: torch.Tensor  # [n] int64, 0 or 1
    groups: list[str]
    label_names: tuple[str, str] = ("0", "1")
    description: str = ""
    templates: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)


def check_labels(labels, n: int | None = None, what: str = "labels", both_classes: bool = True) -> torch.Tensor:
    """Labels as an int64 tensor [n] of 0/1 (both classes present unless both_classes=False); ProbeDataError otherwise."""
    labels = torch.as_tensor(labels)
    if labels.dim() != 1:
        raise ProbeDataError(f"{what} must be one label per prompt (a 1-D sequence), got shape {tuple(labels.shape)}.")
    if n is not None and len(labels) != n:
        raise ProbeDataError(f"{len(labels)} {what} for {n} prompts/activations: give exactly one label per prompt.")
    if labels.dtype == torch.bool:
        labels = labels.long()
    if labels.is_floating_point() and not torch.equal(labels, labels.round()):
        raise ProbeDataError(f"{what} must be class ids 0 and 1, got non-integer values like {labels[0].item()}.")
    labels = labels.long()
    values = sorted(set(labels.tolist()))
    if not set(values) <= {0, 1}:
        raise ProbeDataError(f"{what} must be 0 or 1 (a binary property), got values {values[:10]}.")
    if not values:
        raise ProbeDataError(f"No {what} given.")
    if both_classes and len(values) < 2:
        raise ProbeDataError(
            f"all {len(labels)} {what} are {values[0] if values else '(none)'}: a probe needs both classes to "
            "learn a boundary (and with one class, 'accuracy' is 100% for a constant guess). "
            "Add prompts of the other class.")
    return labels


def make_dataset(prompts: Sequence[str], labels, groups: Sequence[str] | None = None,
                 label_names: tuple[str, str] = ("0", "1"), description: str = "") -> ProbeDataset:
    """A checked ProbeDataset; groups default to one group per prompt."""
    prompts = list(prompts)
    if not prompts:
        raise ProbeDataError("No prompts given: a probe dataset needs prompts of both classes.")
    if not all(isinstance(p, str) for p in prompts):
        raise ProbeDataError("Prompts must be strings.")
    labels = check_labels(labels, len(prompts))
    groups = [str(i) for i in range(len(prompts))] if groups is None else [str(g) for g in groups]
    if len(groups) != len(prompts):
        raise ProbeDataError(f"{len(groups)} groups for {len(prompts)} prompts: give one group per prompt.")
    return ProbeDataset(prompts, labels, groups, tuple(label_names), description)


def load_prompt_set(name: str) -> ProbeDataset:
    """Load ``helpers/data/NAME.json``: every template filled with every entity, labelled by entity.

    The file holds ``templates`` (each with one ``{entity}``), ``entities`` (name -> 0/1) and
    ``label_names``. Prompts are ordered template-major: prompt i is template i // n_entities.
    """
    path = DATA / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in DATA.glob("*.json"))
        raise ProbeDataError(f"No prompt set {name!r} in {DATA}. Known: {', '.join(known) or '(none)'}.")
    spec = json.loads(path.read_text())
    templates, entities = spec["templates"], spec["entities"]
    bad = [t for t in templates if t.count("{entity}") != 1]
    if bad:
        raise ProbeDataError(f"{path.name}: each template needs exactly one {{entity}}, these do not: {bad}")
    prompts, labels, groups = [], [], []
    for template in templates:
        for entity, label in entities.items():
            prompts.append(template.format(entity=entity))
            labels.append(label)
            groups.append(entity)
    data = make_dataset(prompts, labels, groups, tuple(spec["label_names"]), spec.get("description", ""))
    data.templates = list(templates)
    return data


# ------------------------------------------------------------------------------------ activations

def token_position(model, prompt: str, substring: str, prepend_bos: bool = True) -> int:
    """Index (in the model's tokens, BOS included) of the last token of the last occurrence of `substring`."""
    start = prompt.rfind(substring)
    if start < 0 or not substring:
        raise PromptError(f"{substring!r} does not occur in the prompt {prompt!r}.")
    end = start + len(substring)
    encoding = model.tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    # The last token that starts before the substring ends is the one that completes it.
    last = max(i for i, (s, _) in enumerate(encoding["offset_mapping"]) if s < end)
    return last + int(prepend_bos)


def default_hook_names(model, hook: str = "hook_resid_post") -> list[str]:
    """The embedding (blocks.0.hook_resid_pre) then `hook` of every layer: n_layers + 1 names."""
    return ["blocks.0.hook_resid_pre"] + [f"blocks.{layer}.{hook}" for layer in range(model.cfg.n_layers)]


def _resolve_positions(position, lengths: list[int]) -> list[int]:
    n = len(lengths)
    if position == "last":
        return [length - 1 for length in lengths]
    if isinstance(position, str):
        raise ProbeDataError(f"position must be 'last', an int or one int per prompt, got {position!r}.")
    if isinstance(position, (int, np.integer)) or (isinstance(position, torch.Tensor) and position.numel() == 1):
        position = validate.integer(position, "position")
        positions = [position if position >= 0 else length + position for length in lengths]
    else:
        positions = [validate.integer(p, f"position[{i}]") for i, p in enumerate(position)]
        if len(positions) != n:
            raise ProbeDataError(f"{len(positions)} positions for {n} prompts: give one position per prompt.")
    for i, (pos, length) in enumerate(zip(positions, lengths)):
        if not 0 <= pos < length:
            raise PromptError(f"Position {pos} is outside prompt {i}, which has {length} tokens (BOS included).")
    return positions


def gather_activations(model, prompts: Sequence[str], hook_names: str | Sequence[str], position="last",
                       batch_size: int = 64, prepend_bos: bool = True, progress: bool = True) -> torch.Tensor:
    """Activations at one token per prompt: [n_prompts, d] for one hook name, [n_hooks, n_prompts, d] for a list.

    position: "last" (each prompt's own last token), an int index (negative counts from each
    prompt's end) or one index per prompt (e.g. from token_position). Prompts may differ in length:
    batches are right-padded, which cannot change earlier positions of a causal model.
    """
    from tqdm.auto import tqdm

    require_tokenizer(model)
    batch_size = validate.positive_int(batch_size, "batch_size")
    if isinstance(prompts, str):
        prompts = [prompts]
    single = isinstance(hook_names, str)
    names = [hook_names] if single else list(hook_names)
    if not names:
        raise ProbeDataError("No hook names given: pass one name or a list (e.g. default_hook_names(model)).")
    names = [check_hook_name(model, name) for name in names]
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise PromptError("gather_activations needs a non-empty list of non-empty prompt strings.")
    ids = [model.tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    if prepend_bos:
        if model.tokenizer.bos_token_id is None:
            raise PromptError(f"{model.cfg.model_name}'s tokenizer has no BOS token; pass prepend_bos=False.")
        ids = [[model.tokenizer.bos_token_id, *row] for row in ids]
    lengths = [len(row) for row in ids]
    if max(lengths) > model.cfg.n_ctx:
        raise PromptError(f"A prompt is {max(lengths)} tokens; {model.cfg.model_name} reads at most {model.cfg.n_ctx}.")
    positions = _resolve_positions(position, lengths)
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    out = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="activations", disable=not progress or len(starts) < 2):
        rows = ids[start:start + batch_size]
        width = max(len(row) for row in rows)
        tokens = torch.tensor([row + [pad] * (width - len(row)) for row in rows], device=model.cfg.device)
        at = torch.tensor(positions[start:start + batch_size])
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=names)
        out.append(torch.stack([cache[name][torch.arange(len(rows)), at].float().cpu() for name in names]))
        del cache
    acts = torch.cat(out, dim=1)
    return acts[0] if single else acts


# --------------------------------------------------------------------------------------- directions

def _check_acts(acts: torch.Tensor, labels, both_classes: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    acts = validate.tensor(acts, "acts", shape_doc="activations [n_prompts, d]")
    if acts.dim() != 2:
        raise ProbeDataError(f"activations must be [n_prompts, d], got shape {tuple(acts.shape)}.")
    return acts.float(), check_labels(labels, acts.shape[0], both_classes=both_classes)


def diff_of_means(acts: torch.Tensor, labels) -> torch.Tensor:
    """Unit vector [d] from the mean of class 0 to the mean of class 1. acts [n, d], labels [n]."""
    acts, labels = _check_acts(acts, labels)
    direction = acts[labels == 1].mean(0) - acts[labels == 0].mean(0)
    norm = direction.norm()
    if not norm > 1e-12 * max(1.0, float(acts.abs().max())):
        raise ProbeDataError("The two classes have identical mean activations, so there is no difference-of-means "
                             "direction: check the labels (are both classes really different prompts?) and the hook.")
    return direction / norm


def projection_accuracy(acts: torch.Tensor, labels, direction: torch.Tensor, threshold: float) -> float:
    """Accuracy of 'label 1 iff acts @ direction > threshold'. acts [n, d], direction [d]."""
    acts, labels = _check_acts(acts, labels, both_classes=False)
    return ((acts @ direction.float() > threshold).long() == labels).float().mean().item()


# ------------------------------------------------------------------------------------------ splits

def split_by_group(groups: Sequence[str], test_fraction: float = 0.25, seed: int = 0,
                   labels=None) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, test_idx): whole groups held out, so no test group is seen in training.

    With `labels` (constant within a group), the same fraction of each class's groups is held out.
    """
    if not 0 < test_fraction < 1:
        raise ProbeDataError(f"test_fraction must be between 0 and 1, got {test_fraction}.")
    groups = [str(g) for g in groups]
    if labels is None:
        strata = {0: sorted(set(groups))}
    else:
        labels = check_labels(labels, len(groups)).tolist()
        label_of: dict[str, int] = {}
        for g, y in zip(groups, labels):
            if label_of.setdefault(g, y) != y:
                raise ProbeDataError(f"group {g!r} has prompts with both labels; a stratified group split needs one label per group.")
        strata = {y: sorted(g for g in label_of if label_of[g] == y) for y in (0, 1)}
    # A seed string distinct from control_labels', so the held-out groups and control labels are independent.
    rng = random.Random(f"split_by_group:{seed}")
    held_out: set[str] = set()
    for members in strata.values():
        if len(members) < 2:
            raise ProbeDataError(f"A held-out split by group needs at least two groups per class, got {members}.")
        members = members[:]
        rng.shuffle(members)
        held_out.update(members[:min(len(members) - 1, max(1, round(test_fraction * len(members))))])
    test = np.array([i for i, g in enumerate(groups) if g in held_out])
    train = np.array([i for i, g in enumerate(groups) if g not in held_out])
    return train, test


def split_by_prompt(n: int, test_fraction: float = 0.25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, test_idx) of a random split of n prompts (groups may appear on both sides)."""
    if not 0 < test_fraction < 1:
        raise ProbeDataError(f"test_fraction must be between 0 and 1, got {test_fraction}.")
    order = np.random.default_rng(seed).permutation(n)
    n_test = min(n - 1, max(1, round(test_fraction * n)))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def control_labels(groups: Sequence[str], seed: int = 0) -> torch.Tensor:
    """Control-task labels [n]: a random 0/1 per group type, the same at each of its occurrences (half the types each)."""
    unique = sorted(set(groups))
    if len(unique) < 2:
        raise ProbeDataError("Control labels need at least two group types (one per label).")
    rng = random.Random(f"control_labels:{seed}")
    shuffled = unique[:]
    rng.shuffle(shuffled)
    label_of = {g: int(i < len(shuffled) // 2) for i, g in enumerate(shuffled)}
    return torch.tensor([label_of[g] for g in groups])


# ------------------------------------------------------------------------------------------ probes

def fit_probe(acts: torch.Tensor, labels, seed: int = 0, C: float = 0.1):
    """A logistic-regression probe (standardised features, L2 strength 1/C) fitted on acts [n, d]."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    acts, labels = _check_acts(acts, labels)
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000, random_state=seed))
    return probe.fit(acts.numpy(), labels.numpy())


def probe_score(probe, acts: torch.Tensor, labels) -> float:
    """Accuracy of a fitted probe on acts [n, d] (a test side may hold one class only)."""
    acts, labels = _check_acts(acts, labels, both_classes=False)
    return float(probe.score(acts.numpy(), labels.numpy()))


def probe_direction(probe) -> torch.Tensor:
    """The unit vector [d] in activation space along which a fitted probe's score increases."""
    scaler, logistic = probe[0], probe[-1]
    direction = torch.tensor(logistic.coef_[0] / scaler.scale_, dtype=torch.float32)
    return direction / direction.norm()


def remove_direction(acts: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """acts [n, d] with their component along `direction` [d] projected out."""
    unit = direction.float() / direction.norm()
    return acts - (acts @ unit)[:, None] * unit


def _check_split(labels: torch.Tensor, train_idx, test_idx) -> tuple[np.ndarray, np.ndarray]:
    train_idx, test_idx = np.asarray(train_idx), np.asarray(test_idx)
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise ProbeDataError("The split has an empty train or test side.")
    if set(train_idx.tolist()) & set(test_idx.tolist()):
        raise ProbeDataError("Some prompts are in both the train and the test split: test accuracy would be inflated.")
    check_labels(labels[torch.as_tensor(train_idx)], what="training labels")
    return train_idx, test_idx


def probe_accuracies(acts: torch.Tensor, labels, train_idx, test_idx, seed: int = 0, C: float = 0.1,
                     progress: bool = True) -> np.ndarray:
    """Test accuracy [n_hooks] of one probe per hook, trained on train_idx. acts [n_hooks, n, d], labels [n]."""
    from tqdm.auto import tqdm

    acts = torch.as_tensor(acts)
    if acts.dim() != 3:
        raise ProbeDataError(f"activations must be [n_hooks, n_prompts, d], got shape {tuple(acts.shape)}.")
    labels = check_labels(labels, acts.shape[1])
    train_idx, test_idx = _check_split(labels, train_idx, test_idx)
    scores = []
    for layer_acts in tqdm(acts, desc="probes", disable=not progress):
        probe = fit_probe(layer_acts[train_idx], labels[train_idx], seed=seed, C=C)
        scores.append(probe_score(probe, layer_acts[test_idx], labels[test_idx]))
    return np.array(scores)


# ------------------------------------------------------------------------------------------ models

def random_init_copy(model, seed: int = 0):
    """A TransformerBridge with `model`'s architecture and tokenizer but freshly initialised (untrained) weights."""
    from transformers import AutoModelForCausalLM
    from transformer_lens.model_bridge import TransformerBridge

    hf_config = model.original_model.config
    torch.manual_seed(seed)
    hf_model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    device = model.cfg.device
    bridge = TransformerBridge.boot_transformers(
        hf_config._name_or_path or model.cfg.model_name, hf_model=hf_model.to(device),
        tokenizer=model.tokenizer, device=device)
    bridge.cfg.model_name = f"{model.cfg.model_name} (random init, seed {seed})"
    bridge.eval()
    return bridge
