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


def test_online_model_offline_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises((ModelUnavailableError, OSError)):
        models.load("someone/not-a-real-model-xyz")


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
