"""The model loader: the offline default, toy models, unknown names, the cache and its checksum."""
from __future__ import annotations

import socket

import pytest
import torch

from helpers import models
from helpers.errors import ModelUnavailableError, UnknownModelError
from helpers.toy import TOY_MODELS


def test_unknown_model_lists_known_names():
    with pytest.raises(UnknownModelError) as info:
        models.load("smollm3")
    message = str(info.value)
    assert "'smollm3'" in message and "'smollm2'" in message
    for toy in TOY_MODELS:
        assert repr(toy) in message
    assert "gpt2" in message


def test_typo_gets_a_suggestion():
    with pytest.raises(UnknownModelError, match="Did you mean 'prev-token'"):
        models.load("prev-tokn")


def _no_network_calls(monkeypatch) -> list:
    """Record (and refuse) every DNS lookup or connection attempt, so a test proves none was made."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise OSError("network refused by the test")
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return calls


def test_online_model_in_offline_mode_fails_at_once_without_network(monkeypatch):
    # The hub library reads HF_HUB_OFFLINE when it is imported; the loader must read it at call time.
    import huggingface_hub  # noqa: F401 - imported first on purpose
    from transformer_lens.model_bridge import TransformerBridge

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls = _no_network_calls(monkeypatch)
    monkeypatch.setattr(TransformerBridge, "boot_transformers", lambda *a, **k: pytest.fail("tried the hub"))
    with pytest.raises(ModelUnavailableError, match="offline mode is on"):
        models.load("someone/not-a-real-model-xyz")
    assert calls == []


def test_online_model_without_network_fails_after_one_quick_probe(monkeypatch):
    from transformer_lens.model_bridge import TransformerBridge

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    calls = _no_network_calls(monkeypatch)
    monkeypatch.setattr(TransformerBridge, "boot_transformers", lambda *a, **k: pytest.fail("tried the hub"))
    with pytest.raises(ModelUnavailableError, match="cannot be reached"):
        models.load("gpt2")
    assert len(calls) == 1  # one connection attempt, not a minute of retries


def test_unknown_device_is_refused_with_the_choices():
    from helpers.validate import ArgumentError

    with pytest.raises(ArgumentError, match="cuda"):
        models.load("prev-token", device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelUnavailableError, match="no cuda device"):
            models.load("prev-token", device="cuda")


def _tiny_cache(directory, truncate: bool = False, drop: str | None = None):
    """A cache folder with the right file names (tiny stand-ins) for testing validation only."""
    import json

    from safetensors.torch import save_file

    directory.mkdir(parents=True)
    save_file({"w": torch.zeros(64, 64)}, str(directory / "model.safetensors"))
    if truncate:
        data = (directory / "model.safetensors").read_bytes()
        (directory / "model.safetensors").write_bytes(data[: len(data) // 2])
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (directory / name).write_text("{}")
    (directory / "source.json").write_text(json.dumps({"gguf_sha256": models.SMOLLM2_SHA256, "format": models.CACHE_FORMAT}))
    if drop:
        (directory / drop).unlink()
    return directory


def test_cache_validation_names_what_is_wrong(tmp_path):
    assert models.cache_problem(_tiny_cache(tmp_path / "ok")) is None
    assert "truncated" in models.cache_problem(_tiny_cache(tmp_path / "cut", truncate=True))
    assert "missing config.json" in models.cache_problem(_tiny_cache(tmp_path / "noconfig", drop="config.json"))
    empty = _tiny_cache(tmp_path / "empty")
    (empty / "model.safetensors").write_bytes(b"")
    assert "empty" in models.cache_problem(empty)


@pytest.mark.slow
def test_truncated_cache_is_rebuilt_automatically(tmp_path, monkeypatch, smollm2):
    import shutil

    real = models.smollm2_cache_dir()
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))
    copy = models.smollm2_cache_dir()
    shutil.copytree(real, copy)
    with open(copy / "model.safetensors", "r+b") as handle:
        handle.truncate(1_000_000)
    (copy / "config.json").unlink()
    model = models.load("smollm2")
    assert models.cache_problem(copy) is None
    tokens = model.to_tokens("The capital of France is")
    assert model.tokenizer.decode(model(tokens)[0, -1].argmax()) == " Paris"


def test_damaged_toy_weights_say_how_to_restore_them(tmp_path):
    from helpers.toy import load_toy

    damaged = tmp_path / "prev-token.safetensors"
    damaged.write_bytes(TOY_MODELS["prev-token"].weights.read_bytes()[:300])
    with pytest.raises(ModelUnavailableError, match="python -m helpers.toy.train prev-token"):
        load_toy("prev-token", path=damaged)


def test_tests_cannot_reach_the_network():
    from pytest_socket import SocketConnectBlockedError

    with pytest.raises(SocketConnectBlockedError):
        socket.create_connection(("93.184.215.14", 80), timeout=2)


def test_env_var_selects_model(monkeypatch):
    monkeypatch.setenv(models.MODEL_ENV, "prev-token")
    assert models.load().cfg.n_layers == 1


@pytest.mark.slow
def test_smollm2_predicts_paris(smollm2):
    tokens = smollm2.to_tokens("The capital of France is")
    # The course prepends <|endoftext|> (id 0), not the GGUF's declared <|im_start|> (id 1).
    assert tokens[0, 0].item() == smollm2.tokenizer.bos_token_id == 0
    with torch.no_grad():
        logits = smollm2(tokens)
    assert smollm2.tokenizer.decode(logits[0, -1].argmax()) == " Paris"
    assert smollm2.cfg.n_layers == 30 and smollm2.cfg.n_heads == 9 and smollm2.cfg.d_mlp == 1536


def test_corrupted_gguf_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / models.SMOLLM2_GGUF
    fake.write_bytes(b"not a model")
    monkeypatch.setattr(models, "smollm2_gguf_path", lambda: fake)
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(ModelUnavailableError, match="SHA-256"):
        models.build_smollm2_cache()
    assert not (tmp_path / "cache" / "smollm2-135m-instruct-v1").exists()


def test_cache_dir_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))
    assert models.smollm2_cache_dir().parent == tmp_path


def test_toy_weights_are_safetensors_not_pickles():
    for spec in TOY_MODELS.values():
        assert spec.weights.suffix == ".safetensors" and spec.weights.is_file()
        assert spec.weights.read_bytes()[:2] != b"\x80\x02"  # pickle protocol header


def test_prev_token_toy_has_its_planted_head(prev_token_model):
    tokens = torch.randint(0, 24, (16, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, cache = prev_token_model.run_with_cache(tokens)
    accuracy = (logits[:, 1:].argmax(-1) == tokens[:, :-1]).float().mean().item()
    pattern = cache["blocks.0.attn.hook_pattern"]  # [batch, head, query, key]
    to_previous = pattern[:, :, 1:, :].diagonal(dim1=-2, dim2=-1).mean((0, 2))
    assert accuracy > 0.99
    assert to_previous.max().item() > 0.8


def test_an_import_error_while_loading_does_not_rebuild_the_shared_cache(monkeypatch, tmp_path):
    """A broken environment (e.g. a local profile.py shadowing the standard module) is not a broken cache:
    the error surfaces and the cache folder, which other notebooks may be reading, is left alone."""
    import helpers.models as models

    rebuilds = []
    monkeypatch.setattr(models, "build_smollm2_cache", lambda force=False: rebuilds.append(force) or tmp_path)

    def fail(directory, device):
        raise ImportError("cannot import name 'Profile' from 'profile'")
    monkeypatch.setattr(models, "_bridge_from_cache", fail)
    with pytest.raises(ImportError, match="profile"):
        models._load_smollm2("cpu")
    assert rebuilds == [False]  # looked up once, never forced
