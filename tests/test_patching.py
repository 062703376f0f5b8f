"""Fast patching sweeps return TransformerLens's numbers; attribution patching is the true derivative."""
from __future__ import annotations

import pandas as pd
import pytest
import torch
from transformer_lens import patching as tl_patching

from helpers.errors import HookNameError, MicroscopeError
from helpers.patching import (
    Patch,
    PatchingError,
    _positions_read,
    attribution_patch,
    block_sweep,
    head_sweep,
    hook_name,
    residual_sweep,
    run_patches,
)

TOLERANCE = 1e-4


def tl_reference(sweep, model, clean, corrupted, metric, index_df=None):
    """TransformerLens's sweep (optionally only the rows of index_df), without autograd."""
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
        if index_df is None:
            return sweep(model, corrupted, clean_cache, metric).cpu()
        return sweep(model, corrupted, clean_cache, metric, index_df=index_df, index_axis_names=None).cpu()


# ---------------------------------------------------------------------------------------------
# Toy model: a 1-layer attention-only model that copies the previous token.


@pytest.fixture(scope="module")
def toy_pair():
    """Three random prompt pairs differing at positions 3 and 8, and a metric reading position 9."""
    generator = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 24, (3, 10), generator=generator)
    corrupted = clean.clone()
    corrupted[:, 3] = (corrupted[:, 3] + 5) % 24
    corrupted[:, 8] = (corrupted[:, 8] + 7) % 24

    def metric(logits):
        rows = torch.arange(logits.shape[0])
        return (logits[rows, -1, clean[:, 8]] - logits[rows, -1, corrupted[:, 8]]).mean()

    return clean, corrupted, metric


@pytest.mark.parametrize("site, sweep", [
    ("resid_pre", tl_patching.get_act_patch_resid_pre),
    ("attn_out", tl_patching.get_act_patch_attn_out),
])
def test_residual_sweep_matches_transformer_lens_on_toy(prev_token_model, toy_pair, site, sweep):
    clean, corrupted, metric = toy_pair
    ours = residual_sweep(prev_token_model, clean, corrupted, metric, site=site, progress=False)
    reference = tl_reference(sweep, prev_token_model, clean, corrupted, metric)
    assert ours.shape == reference.shape == (1, 10)
    assert (ours - reference).abs().max() <= TOLERANCE
    assert reference.std() > 0.1  # the patches do move the metric, so equality is not trivial


def test_head_sweep_matches_transformer_lens_on_toy(prev_token_model, toy_pair):
    clean, corrupted, metric = toy_pair
    ours = head_sweep(prev_token_model, clean, corrupted, metric, progress=False)
    reference = tl_reference(tl_patching.get_act_patch_attn_head_out_all_pos, prev_token_model, clean,
                             corrupted, metric)
    assert ours.shape == reference.shape == (1, 2)
    assert (ours - reference).abs().max() <= TOLERANCE


def test_a_metric_reading_every_position_matches_transformer_lens(prev_token_model, toy_pair):
    clean, corrupted, _ = toy_pair

    def loss_on_clean_targets(logits):
        """Cross-entropy of predicting each previous clean token: reads every position."""
        log_probs = logits[:, 1:].log_softmax(-1)
        return -log_probs.gather(-1, clean[:, :-1, None]).mean()

    for ours_fn, sweep in [
        (residual_sweep, tl_patching.get_act_patch_resid_pre),
        (head_sweep, tl_patching.get_act_patch_attn_head_out_all_pos),
    ]:
        ours = ours_fn(prev_token_model, clean, corrupted, loss_on_clean_targets, progress=False)
        reference = tl_reference(sweep, prev_token_model, clean, corrupted, loss_on_clean_targets)
        assert (ours - reference).abs().max() <= TOLERANCE


def test_positions_a_metric_reads_are_found_and_verified():
    logits = torch.randn(2, 6, 11, generator=torch.Generator().manual_seed(0))

    def read(metric):
        return _positions_read(metric, logits, torch.as_tensor(metric(logits)))

    assert read(lambda lg: (lg[:, -1, 3] - lg[:, -1, 4]).mean()) == [5]
    assert read(lambda lg: lg[:, 2, 0].sum() + lg[:, 4].logsumexp(-1).mean()) == [2, 4]
    assert read(lambda lg: lg.log_softmax(-1)[:, :, 0].mean()) == list(range(6))
    # No gradient through argmax: the reads cannot be proven, so every position counts.
    assert read(lambda lg: (lg[:, 1].argmax(-1) == 3).float().mean() + lg[:, -1, 0].mean()) == list(range(6))


@pytest.mark.parametrize("mode", ["full", "layer"])
def test_every_engine_and_chunking_gives_the_same_numbers(prev_token_model, toy_pair, mode):
    clean, corrupted, metric = toy_pair
    patches = [Patch(0, site, pos) for site in ("resid_pre", "attn_out") for pos in range(10)]
    reference = run_patches(prev_token_model, clean, corrupted, metric, patches, progress=False)
    one_at_a_time = run_patches(prev_token_model, clean, corrupted, metric, patches, mode=mode,
                                batch_size=1, progress=False)
    tiny_memory = run_patches(prev_token_model, clean, corrupted, metric, patches, mode=mode,
                              max_memory_mb=0.05, progress=False)
    assert (one_at_a_time - reference).abs().max() <= TOLERANCE
    assert (tiny_memory - reference).abs().max() <= TOLERANCE


def test_attribution_is_the_derivative_of_patching(prev_token_model, toy_pair):
    """attribution[site] = d/da metric(corrupted + a * (clean - corrupted) at that site) at a = 0."""
    clean, corrupted, metric = toy_pair
    model = prev_token_model
    estimate = attribution_patch(model, clean, corrupted, metric, sites=("resid_pre", "z"))
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
        _, corrupted_cache = model.run_with_cache(corrupted)

    def interpolated(name, select, alpha):
        def hook(act, hook):
            act = act.clone()
            delta = clean_cache[name] - corrupted_cache[name]
            act[select] = act[select] + alpha * delta[select]
            return act
        with torch.no_grad():
            return metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, hook)])).item()

    eps = 1e-2
    for site, index, select in [("resid_pre", (0, 3), (slice(None), 3)), ("resid_pre", (0, 8), (slice(None), 8)),
                                ("z", (0, 0), (slice(None), slice(None), 0)), ("z", (0, 1), (slice(None), slice(None), 1))]:
        name = hook_name(site, 0)
        slope = (interpolated(name, select, eps) - interpolated(name, select, -eps)) / (2 * eps)
        assert estimate[site][index].item() == pytest.approx(slope, rel=1e-2, abs=1e-3), (site, index)
    assert estimate["resid_pre"][0, 3].abs() > 1e-3  # a real signal, not zeros matching zeros


# ---------------------------------------------------------------------------------------------
# Bad input


def test_prompts_of_different_lengths_are_refused(prev_token_model, toy_pair):
    clean, corrupted, metric = toy_pair
    with pytest.raises(PatchingError, match="same token length"):
        residual_sweep(prev_token_model, clean, corrupted[:, :-1], metric, progress=False)
    with pytest.raises(PatchingError, match="same token length"):
        attribution_patch(prev_token_model, clean, corrupted[:, :-1], metric)


def test_metric_returning_a_non_scalar_is_refused(prev_token_model, toy_pair):
    clean, corrupted, _ = toy_pair

    def per_prompt(logits):
        return logits[:, -1, 0]

    with pytest.raises(PatchingError, match=r"scalar.*shape \(3,\).*\.mean\(\)"):
        head_sweep(prev_token_model, clean, corrupted, per_prompt, progress=False)
    with pytest.raises(PatchingError, match="scalar"):
        attribution_patch(prev_token_model, clean, corrupted, per_prompt)


def test_site_whose_hook_does_not_exist_names_the_hook(prev_token_model, toy_pair):
    clean, corrupted, metric = toy_pair
    # The toy model is attention-only: it has no MLP, so no blocks.0.hook_mlp_out.
    with pytest.raises(HookNameError, match="blocks.0.hook_mlp_out"):
        block_sweep(prev_token_model, clean, corrupted, metric, progress=False)
    with pytest.raises(HookNameError, match="blocks.0.hook_mlp_out"):
        attribution_patch(prev_token_model, clean, corrupted, metric, sites=("mlp_out",))


def test_unknown_site_lists_the_known_ones(prev_token_model, toy_pair):
    clean, corrupted, metric = toy_pair
    with pytest.raises(PatchingError, match="'resid_pre', 'attn_out', 'mlp_out'"):
        residual_sweep(prev_token_model, clean, corrupted, metric, site="resid_post")
    with pytest.raises(PatchingError, match="'z'"):
        head_sweep(prev_token_model, clean, corrupted, metric, site="pattern")


@pytest.mark.parametrize("clean, message", [
    ("a prompt", "tensor of token ids"),
    (torch.zeros(3, 10), "integer token ids"),
    (torch.full((3, 10), 99), "outside the vocabulary"),
    (torch.zeros(2, 10, dtype=torch.long), "2 clean prompts but 3 corrupted"),
])
def test_malformed_tokens_are_refused(prev_token_model, toy_pair, clean, message):
    _, corrupted, metric = toy_pair
    with pytest.raises(PatchingError, match=message):
        residual_sweep(prev_token_model, clean, corrupted, metric, progress=False)


def test_bad_layers_and_sizes_are_refused(prev_token_model, toy_pair):
    clean, corrupted, metric = toy_pair
    with pytest.raises(PatchingError, match="layers 0 to 0"):
        residual_sweep(prev_token_model, clean, corrupted, metric, layers=[1], progress=False)
    with pytest.raises(PatchingError, match="batch_size"):
        residual_sweep(prev_token_model, clean, corrupted, metric, batch_size=0, progress=False)
    with pytest.raises(PatchingError, match="max_memory_mb"):
        residual_sweep(prev_token_model, clean, corrupted, metric, max_memory_mb=-1, progress=False)
    assert issubclass(PatchingError, MicroscopeError)


def test_engine_that_cannot_reproduce_the_model_is_refused(prev_token_model, toy_pair):
    clean, corrupted, metric = toy_pair
    patches = [Patch(0, "resid_pre", 5)]
    with pytest.raises(PatchingError, match="Unknown mode 'fast'"):
        run_patches(prev_token_model, clean, corrupted, metric, patches, mode="fast")
    # The toy's attention reads no key/value cache, so starting mid-prompt cannot be replayed.
    with pytest.raises(PatchingError, match="does not reproduce prev-token"):
        run_patches(prev_token_model, clean, corrupted, metric, patches, mode="suffix")


# ---------------------------------------------------------------------------------------------
# SmolLM2 on the IOI pair (TransformerLens's reference restricted to a few layers: it is slow)


@pytest.fixture(scope="module")
def ioi(smollm2):
    model = smollm2
    clean = model.to_tokens("When Mary and John went to the store, John gave a drink to")
    corrupted = model.to_tokens("When John and Mary went to the store, Mary gave a drink to")
    mary, john = model.to_single_token(" Mary"), model.to_single_token(" John")

    def logit_diff(logits):
        return (logits[:, -1, mary] - logits[:, -1, john]).mean()

    return model, clean, corrupted, logit_diff


def layer_pos_index(layers, n_pos):
    return pd.DataFrame([(layer, pos) for layer in layers for pos in range(n_pos)], columns=["layer", "pos"])


@pytest.mark.slow
@pytest.mark.parametrize("site, sweep, layers", [
    ("resid_pre", tl_patching.get_act_patch_resid_pre, [0, 29]),
    ("attn_out", tl_patching.get_act_patch_attn_out, [20]),
    ("mlp_out", tl_patching.get_act_patch_mlp_out, [0]),
])
def test_residual_sweep_matches_transformer_lens_on_smollm2(ioi, site, sweep, layers):
    model, clean, corrupted, metric = ioi
    n_pos = clean.shape[1]
    ours = residual_sweep(model, clean, corrupted, metric, site=site, layers=layers, progress=False)
    reference = tl_reference(sweep, model, clean, corrupted, metric, layer_pos_index(layers, n_pos))
    assert ours.shape == (len(layers), n_pos)
    assert (ours - reference.reshape(len(layers), n_pos)).abs().max() <= TOLERANCE


@pytest.mark.slow
def test_head_sweep_matches_transformer_lens_on_smollm2(ioi):
    model, clean, corrupted, metric = ioi
    layers = [0, 29]
    ours = head_sweep(model, clean, corrupted, metric, layers=layers, progress=False)
    index = pd.DataFrame([(layer, head) for layer in layers for head in range(model.cfg.n_heads)],
                         columns=["layer", "head"])
    reference = tl_reference(tl_patching.get_act_patch_attn_head_out_all_pos, model, clean, corrupted,
                             metric, index)
    assert (ours - reference.reshape(len(layers), -1)).abs().max() <= TOLERANCE


@pytest.mark.slow
def test_block_sweep_stacks_the_three_residual_sweeps(ioi):
    model, clean, corrupted, metric = ioi
    blocks = block_sweep(model, clean, corrupted, metric, layers=[28], progress=False)
    assert blocks.shape == (3, 1, clean.shape[1])
    for i, site in enumerate(("resid_pre", "attn_out", "mlp_out")):
        alone = residual_sweep(model, clean, corrupted, metric, site=site, layers=[28], progress=False)
        assert (blocks[i] - alone).abs().max() <= TOLERANCE


@pytest.mark.slow
def test_smollm2_replays_from_mid_prompt_and_agrees_with_full_passes(ioi):
    model, clean, corrupted, metric = ioi
    patches = [Patch(layer, "resid_pre", pos) for layer in (3, 27) for pos in range(clean.shape[1])]
    suffix = run_patches(model, clean, corrupted, metric, patches, mode="suffix", progress=False)
    full = run_patches(model, clean, corrupted, metric, patches, mode="full", progress=False)
    assert (suffix - full).abs().max() <= TOLERANCE


@pytest.mark.slow
def test_attribution_tracks_exact_patching_on_smollm2(ioi):
    model, clean, corrupted, metric = ioi
    estimate = attribution_patch(model, clean, corrupted, metric)
    assert estimate["resid_pre"].shape == (30, clean.shape[1])
    assert estimate["z"].shape == (30, model.cfg.n_heads)
    exact = residual_sweep(model, clean, corrupted, metric, layers=[0, 13, 29], progress=False)
    with torch.no_grad():
        baseline = metric(model(corrupted)).item()
    # Attribution estimates the change from the corrupted baseline; exact sweeps report the metric.
    pair = torch.stack([estimate["resid_pre"][[0, 13, 29]].flatten(), (exact - baseline).flatten()])
    # A first-order estimate, rough where patches are large (layer 0): tracks, but is not exact.
    assert torch.corrcoef(pair)[0, 1] > 0.6
