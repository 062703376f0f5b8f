"""Toy models this repo trains: a registry from name to shipped weights and the recipe that made them.

Each toy model has a task module in this package (data generator + training settings, readable in
one file) and a small safetensors file under ``weights/``. ``python -m helpers.toy.train NAME``
retrains it; ``helpers.models.load(NAME)`` loads the shipped weights as a TransformerBridge.
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from helpers.errors import ModelUnavailableError

WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class ToySpec:
    """Where a toy model's recipe lives and what it is for."""

    task_module: str  # module in helpers.toy defining CONFIG, TRAIN and make_batch(generator, n)
    description: str

    @property
    def weights(self) -> Path:
        return WEIGHTS_DIR / f"{self.name}.safetensors"

    @property
    def name(self) -> str:
        return self.task_module.replace("_", "-")

    @property
    def retrain_command(self) -> str:
        return f"python -m helpers.toy.train {self.name}"

    def task(self):
        return importlib.import_module(f"helpers.toy.{self.task_module}")


TOY_MODELS: dict[str, ToySpec] = {
    spec.name: spec
    for spec in [
        ToySpec("prev_token", "1-layer attention-only model that predicts the previous token "
                "(a planted previous-token head; used by the test suite)."),
        ToySpec("induction", "2-layer attention-only model trained to continue segments repeated at random "
                "offsets (a previous-token head and an induction head; lesson 02)."),
        ToySpec("fixed_offset", "The induction model's twin trained with the copy always 20 tokens back "
                "(learns a positional shortcut instead of induction; lesson 02's pitfall)."),
        ToySpec("reasoner_faithful", "2-layer model answering after a written chain of lookups; the hint in its "
                "prompt is noise, so its answer must follow its steps (lesson 06's faithful reasoner F)."),
        ToySpec("reasoner_unfaithful", "reasoner-faithful's twin trained with the hint equal to the answer "
                "(takes the answer from the hint while writing steps: lesson 06's unfaithful reasoner U)."),
        ToySpec("reasoner_faithful_easy", "reasoner-faithful on a one-step chain that a 2-layer model can also "
                "compute without its steps (lesson 06: early answering misleads)."),
        ToySpec("reasoner_unfaithful_easy", "reasoner-unfaithful on the shorter chain (lesson 06)."),
        ToySpec("entity_gate", "2-layer model answering entity questions with a fact or 'don't know' "
                "(a planted known-entity gate that lesson 07 patches to make it hallucinate)."),
        ToySpec("planner", "2-layer model writing an article that agrees with a word it writes later, with "
                "distractor filler (carries the word from the line break: a plan; lesson 05)."),
        ToySpec("planner_neutral", "The planner's twin with neutral filler (gets every article and word right "
                "without carrying the word: no plan; lesson 05)."),
        ToySpec("path_star", "3-layer model writing the source-to-goal path of a path-star graph forwards "
                "(learns the Clever-Hans step and guesses the first node; lesson 05)."),
        ToySpec("path_star_reverse", "The path-star model with the path written goal-to-source (solves it; lesson 05)."),
        ToySpec("path_star_teacherless", "The path-star model trained without the previous path node in its input "
                "(Bachmann & Nagarajan's teacherless fix; lesson 05)."),
        ToySpec("addition", "1-layer model adding two numbers 0-99 given as single tokens (a bag of "
                "heuristics in its MLP neurons that lesson 07 classifies and ablates)."),
    ]
}


def toy_spec(name: str) -> ToySpec:
    """The registry entry of toy model `name`, or an UnknownModelError listing the known ones."""
    from helpers.errors import UnknownModelError, closest

    if name not in TOY_MODELS:
        near = closest(str(name), TOY_MODELS, n=2)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise UnknownModelError(f"No toy model named {name!r}.{hint} Toy models: {', '.join(sorted(TOY_MODELS))}.")
    return TOY_MODELS[name]


def native_config(config: dict):
    """A TransformerBridgeConfig for TransformerLens's native architecture from a plain dict."""
    from transformer_lens.config import TransformerBridgeConfig

    return TransformerBridgeConfig.from_dict({**config, "architecture": "TransformerLensNative"})


def build_native(config: dict, seed: int = 0):
    """A freshly initialised TransformerLens-native model (an nn.Module, not yet a bridge)."""
    from transformer_lens.model_bridge.sources.native import NativeModel, initialize_native_model

    cfg = native_config({**config, "seed": seed})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = NativeModel(cfg)
        initialize_native_model(model, cfg)
    return model, cfg


def wrap(model, cfg, name: str):
    """Wrap a native model in a TransformerBridge (hooks, run_with_cache, ...)."""
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    bridge = build_bridge_from_module(model, "TransformerLensNative", tl_config=cfg, model_name=name)
    bridge.eval()
    return bridge


def save_toy(model, config: dict, path: Path, metadata: dict | None = None) -> None:
    """Save a native model's weights and config as safetensors (config in the file's metadata)."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    meta = {"config": json.dumps(config), **{k: json.dumps(v) for k, v in (metadata or {}).items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=meta)


def read_toy(path: Path) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """(config, state dict, other metadata) from a toy safetensors file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    config = json.loads(meta.pop("config"))
    return config, state, {k: json.loads(v) for k, v in meta.items()}


def load_toy(name: str, device: str = "cpu", path: Path | None = None):
    """The shipped toy model `name` as a TransformerBridge."""
    spec = toy_spec(name)
    path = path or spec.weights
    if not path.is_file():
        raise ModelUnavailableError(f"{path} is missing; recreate it with `{spec.retrain_command}`.")
    try:
        config, state, _ = read_toy(path)
        model, cfg = build_native(config)
        model.load_state_dict(state, strict=True)
    except Exception as error:  # noqa: BLE001 - a damaged or stale weights file
        raise ModelUnavailableError(
            f"The weights file {path} of toy model {name!r} is damaged or does not match its task "
            f"({type(error).__name__}: {str(error)[:200]}). Restore it with `git checkout -- {path.name}` "
            f"in {path.parent}, or retrain it with `{spec.retrain_command}`.") from error
    return wrap(model.to(device), cfg, name)
