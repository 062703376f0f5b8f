"""RunFromLayer: replaying the top of the model gives the model's own numbers, for every variant and position."""
from __future__ import annotations

import pytest
import torch

from helpers.models import load
from helpers.patching import PatchingError, RunFromLayer


@pytest.fixture(scope="module")
def toy():
    return load("induction")


@pytest.fixture(scope="module")
def toy_tokens():
    return torch.tensor([[0, 5, 9, 3, 5, 9, 3, 7], [0, 4, 8, 2, 4, 8, 2, 6], [0, 1, 2, 3, 1, 2, 3, 4]])


def _scale_head(head, factor):
    def hook(z, hook):
        z = z.clone()
        z[:, :, head] = z[:, :, head] * factor
        return z
    return hook


def _per_copy(batch):
    """A hook giving each copy of the batch its own edit: copy c scales head 0 by c."""
    def hook(z, hook):
        z = z.clone()
        scale = torch.arange(z.shape[0] // batch, dtype=z.dtype).repeat_interleave(batch)
        z[:, :, 0] = z[:, :, 0] * scale[:, None, None]
        return z
    return hook


def test_replay_from_a_layer_equals_the_full_hooked_run(toy, toy_tokens):
    run = RunFromLayer(toy, toy_tokens, 1)
    assert run.exact
    hooks = [("blocks.1.attn.hook_z", _scale_head(1, -2.0))]
    with torch.no_grad():
        full = toy.run_with_hooks(toy_tokens, fwd_hooks=hooks)
    assert torch.allclose(run(hooks), full, atol=1e-5)
    assert not torch.allclose(run(), full, atol=1e-3)  # the hook matters, and a call without it leaves it off
    assert torch.allclose(run(), run.logits, atol=1e-5)


def test_copies_and_positions_select_the_same_numbers(toy, toy_tokens):
    run = RunFromLayer(toy, toy_tokens, 1)
    at = torch.zeros_like(toy_tokens, dtype=torch.bool)
    at[0, 3] = at[1, 7] = at[2, 0] = True
    copies = run([("blocks.1.attn.hook_z", _per_copy(len(toy_tokens)))], copies=3, at=at)
    assert copies.shape == (9, toy.cfg.d_vocab)
    for c in range(3):
        with torch.no_grad():
            full = toy.run_with_hooks(toy_tokens, fwd_hooks=[("blocks.1.attn.hook_z", _scale_head(0, float(c)))])
        assert torch.allclose(copies[3 * c:3 * (c + 1)], full[at], atol=1e-5), c


def test_layer_zero_replays_the_whole_model(toy, toy_tokens):
    run = RunFromLayer(toy, toy_tokens, 0)
    hooks = [("blocks.0.attn.hook_z", _scale_head(0, 0.0))]
    with torch.no_grad():
        assert torch.allclose(run(hooks), toy.run_with_hooks(toy_tokens, fwd_hooks=hooks), atol=1e-5)


@pytest.mark.parametrize("hooks, fragment", [([("blocks.0.attn.hook_z", _scale_head(0, 0.0))], "blocks.1 or later"),
                                             ([("hook_embed", _scale_head(0, 0.0))], "blocks.1 or later"),
                                             (["blocks.1.attn.hook_z"], "(name, function) pair")])
def test_a_hook_below_the_start_layer_is_refused(toy, toy_tokens, hooks, fragment):
    with pytest.raises(PatchingError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        RunFromLayer(toy, toy_tokens, 1)(hooks)


def test_bad_arguments_name_themselves(toy, toy_tokens):
    run = RunFromLayer(toy, toy_tokens, 1)
    with pytest.raises(PatchingError, match="`at`"):
        run(at=torch.ones_like(toy_tokens))
    with pytest.raises(PatchingError, match="copies"):
        run(copies=0)
    with pytest.raises(PatchingError, match="layer"):
        RunFromLayer(toy, toy_tokens, 2)


@pytest.mark.slow
def test_smollm2_mlp_neuron_edits_replayed_from_a_late_layer(smollm2):
    tokens = smollm2.to_tokens(["The pilot landed the plane on the runway.", "She parked the car outside."],
                               padding_side="right")
    run = RunFromLayer(smollm2, tokens, 24)
    assert run.exact

    def set_neuron(act, hook):
        act = act.clone()
        act[:, :, 1418] = 8.0
        return act

    hooks = [("blocks.25.mlp.hook_post", set_neuron)]
    with torch.no_grad():
        full = smollm2.run_with_hooks(tokens, fwd_hooks=hooks)
    at = torch.zeros_like(tokens, dtype=torch.bool)
    at[:, 2:5] = True
    assert torch.allclose(run(hooks, at=at), full[at], atol=1e-4)


@pytest.mark.slow
def test_feature_logprobs_replayed_from_the_sae_layer_equal_the_full_runs(smollm2):
    from helpers import features as feat
    from helpers import sae as sae_lib

    sae = sae_lib.load_sae("1x")
    prompts = ["I saw a", "The passengers boarded the", "We waited at the"]  # different lengths: padded
    ids = [smollm2.tokenizer.encode(w)[0] for w in (" plane", " train", " gate")]
    run = feat.prompt_run(smollm2, prompts, int(sae.hook.split(".")[1]))
    for hooks in ([], [feat.steering_hook(sae, 3, 50.0)], [feat.ablation_hook(sae, 3)]):
        assert torch.allclose(feat.last_token_logprobs(smollm2, prompts, ids, hooks, run=run),
                              feat.last_token_logprobs(smollm2, prompts, ids, hooks), atol=1e-4)
        assert torch.allclose(feat.answer_logprobs(smollm2, prompts, ids, hooks, run=run),
                              feat.answer_logprobs(smollm2, prompts, ids, hooks), atol=1e-4)
    with pytest.raises(feat.SAEError, match="prompt_run"):
        feat.last_token_logprobs(smollm2, prompts[:2], ids, run=run)
    with pytest.raises(PatchingError, match="blocks.15 or later"):
        feat.answer_logprobs(smollm2, prompts, ids, [("blocks.3.hook_resid_post", lambda a, hook: a)], run=run)
