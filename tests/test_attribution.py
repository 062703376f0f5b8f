"""Direct logit attribution adds up to the real logit difference; the circuit check ablates the rest."""
from __future__ import annotations

import pytest
import torch

from helpers import attribution, ioi
from helpers.ablation import head_means, run_with_heads_ablated
from helpers.errors import MicroscopeError, ShapeError


@pytest.fixture(scope="module")
def pairs(smollm2):
    return ioi.make_dataset(smollm2, n_pairs=1, templates=ioi.TEMPLATES[:2])


@pytest.fixture(scope="module")
def clean_run(smollm2, pairs):
    with torch.no_grad():
        return smollm2.run_with_cache(pairs.clean_tokens)


def test_components_sum_to_the_logit_difference(smollm2, pairs, clean_run):
    logits, cache = clean_run
    labels, values = attribution.component_dla(smollm2, cache, pairs.io_ids, pairs.s_ids)
    n_layers, n_heads = smollm2.cfg.n_layers, smollm2.cfg.n_heads
    assert len(labels) == values.shape[0] == 1 + n_layers * (n_heads + 1)  # SmolLM2 has no biases
    target = ioi.logit_diff(logits, pairs.io_ids, pairs.s_ids, per_prompt=True)
    assert torch.allclose(values.sum(0), target, atol=1e-3)


def test_head_dla_is_the_head_rows_of_component_dla(smollm2, pairs, clean_run):
    _, cache = clean_run
    labels, values = attribution.component_dla(smollm2, cache, pairs.io_ids, pairs.s_ids)
    heads = attribution.head_dla(smollm2, cache, pairs.io_ids, pairs.s_ids)
    assert heads.shape == (smollm2.cfg.n_layers, smollm2.cfg.n_heads)
    assert heads[23, 3].item() == pytest.approx(values[labels.index("L23H3")].mean().item(), abs=1e-5)


def test_head_outputs_add_up_to_attn_out(smollm2, clean_run):
    _, cache = clean_run
    outputs = attribution.head_outputs(smollm2, cache, pos=-1)
    assert torch.allclose(outputs[7].sum(0), cache["blocks.7.hook_attn_out"][:, -1], atol=1e-4)


def test_components_sum_with_biases_and_no_norm(prev_token_model):
    tokens = torch.randint(0, prev_token_model.cfg.d_vocab, (3, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, cache = prev_token_model.run_with_cache(tokens)
    io, s = torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6])
    labels, values = attribution.component_dla(prev_token_model, cache, io, s)
    assert "attn bias 0" in labels and "L0H1" in labels and not any(l.startswith("MLP") for l in labels)
    target = logits[torch.arange(3), -1, io] - logits[torch.arange(3), -1, s]
    assert torch.allclose(values.sum(0), target, atol=1e-4)


def test_missing_cache_entry_is_named(smollm2, pairs):
    with torch.no_grad():
        _, cache = smollm2.run_with_cache(pairs.clean_tokens, names_filter=["hook_embed"])
    with pytest.raises(attribution.AttributionError, match="hook_z"):
        attribution.head_dla(smollm2, cache, pairs.io_ids, pairs.s_ids)


def test_mismatched_answer_ids_are_refused(smollm2):
    with pytest.raises(ShapeError, match="one of each"):
        attribution.answer_directions(smollm2, torch.tensor([1, 2]), torch.tensor([3]))


def test_keeping_every_head_is_the_intact_model(smollm2, pairs):
    with torch.no_grad():
        intact = smollm2(pairs.clean_tokens)
    kept = attribution.run_with_only_heads(smollm2, pairs.clean_tokens, attribution.all_heads(smollm2))
    assert torch.allclose(kept, intact, atol=1e-4)


def test_keeping_no_head_equals_mean_ablating_all(smollm2, pairs):
    reference = ioi.abc_tokens(smollm2, pairs)
    none = attribution.run_with_only_heads(smollm2, pairs.clean_tokens, [], reference)
    ablated = run_with_heads_ablated(smollm2, pairs.clean_tokens, attribution.all_heads(smollm2), "mean",
                                     reference_tokens=reference, per_position=True)
    assert torch.allclose(none, ablated, atol=1e-4)


def test_circuit_check_reports_recovered_fraction(smollm2, pairs):
    metric = ioi.logit_diff_metric(pairs)
    reference = ioi.abc_tokens(smollm2, pairs)
    everything = attribution.circuit_check(smollm2, pairs.clean_tokens, attribution.all_heads(smollm2), metric, reference)
    assert everything["recovered"] == pytest.approx(1.0, abs=1e-4)
    nothing = attribution.circuit_check(smollm2, pairs.clean_tokens, [], metric, reference)
    assert nothing["recovered"] == pytest.approx(0.0, abs=1e-6)
    assert set(nothing) == {"full", "circuit", "no_heads", "recovered"}


def test_circuit_check_refuses_a_non_scalar_metric(smollm2, pairs):
    per_prompt = lambda logits: ioi.logit_diff(logits, pairs.io_ids, pairs.s_ids, per_prompt=True)
    with pytest.raises(attribution.AttributionError, match="one number"):
        attribution.circuit_check(smollm2, pairs.clean_tokens, [(23, 3)], per_prompt)


def test_circuit_check_refuses_heads_that_do_not_exist(smollm2, pairs):
    with pytest.raises(MicroscopeError, match="does not exist"):
        attribution.run_with_only_heads(smollm2, pairs.clean_tokens, [(30, 0)])


def test_per_position_means_need_equal_lengths(smollm2, pairs):
    short = smollm2.to_tokens(["When Mary left"])
    with pytest.raises(ShapeError, match="as long as"):
        attribution.run_with_only_heads(smollm2, pairs.clean_tokens, [(23, 3)], short)
    with pytest.raises(MicroscopeError, match="positions"):
        run_with_heads_ablated(smollm2, pairs.clean_tokens, [(23, 3)], "mean", reference_tokens=short, per_position=True)


def test_head_means_shapes(smollm2, pairs):
    means = head_means(smollm2, pairs.clean_tokens, layers=[0, 5])
    assert set(means) == {0, 5}
    assert means[5].shape == (1, pairs.clean_tokens.shape[1], smollm2.cfg.n_heads, smollm2.cfg.d_head)
    pooled = head_means(smollm2, pairs.clean_tokens, layers=[5], per_position=False)
    assert pooled[5].shape == (1, 1, smollm2.cfg.n_heads, smollm2.cfg.d_head)


def test_precomputed_means_give_the_same_logits(smollm2, pairs):
    reference = ioi.abc_tokens(smollm2, pairs)
    means = head_means(smollm2, reference)
    keep = [(23, 3), (20, 0)]
    direct = attribution.run_with_only_heads(smollm2, pairs.clean_tokens, keep, reference)
    reused = attribution.run_with_only_heads(smollm2, pairs.clean_tokens, keep, means=means)
    assert torch.allclose(direct, reused, atol=1e-5)
    last = attribution.run_with_only_heads(smollm2, pairs.clean_tokens, keep, means=means, last_only=True)
    assert last.shape == (direct.shape[0], 1, direct.shape[2])
    assert torch.allclose(last[:, 0], direct[:, -1], atol=1e-4)
    full = attribution.run_with_only_heads(smollm2, pairs.clean_tokens, attribution.all_heads(smollm2), last_only=True)
    assert torch.allclose(full[:, 0], smollm2(pairs.clean_tokens)[:, -1], atol=1e-4)
    with pytest.raises(attribution.AttributionError, match="no entry for layers"):
        attribution.run_with_only_heads(smollm2, pairs.clean_tokens, keep, means={0: means[0]})
    with pytest.raises(attribution.AttributionError, match="last_only"):
        attribution.run_with_only_heads(smollm2, pairs.clean_tokens, keep, means=means, last_only="yes")


def test_token_attribution_splits_the_difference(smollm2, pairs, clean_run):
    _, cache = clean_run
    to_io = attribution.head_token_attribution(smollm2, cache, pairs.io_ids)
    to_s = attribution.head_token_attribution(smollm2, cache, pairs.s_ids)
    assert torch.allclose(to_io - to_s, attribution.head_dla(smollm2, cache, pairs.io_ids, pairs.s_ids), atol=1e-5)
