"""The IOI prompt set and the logit-difference metric: layout, answers, bad input."""
from __future__ import annotations

import pytest
import torch

from helpers import ioi
from helpers.errors import MicroscopeError, PromptError, ShapeError, TokenError


@pytest.fixture(scope="module")
def dataset(smollm2):
    return ioi.make_dataset(smollm2, n_pairs=2)


def test_every_template_shares_one_token_layout(smollm2, dataset):
    assert len(dataset) == len(ioi.TEMPLATES) * 2 * 2
    assert dataset.clean_tokens.shape == dataset.corrupted_tokens.shape
    assert dataset.s2_pos.unique().tolist() == [10]
    assert sorted(dataset.io_pos.unique().tolist()) == [2, 4]
    labels = ioi.position_labels(smollm2, dataset)
    assert labels[0] == "BOS" and labels[2] == "A" and labels[4] == "B" and labels[10] == "S2" and labels[-1] == " to"


def test_clean_and_corrupted_differ_only_at_s2(dataset):
    differs = (dataset.clean_tokens != dataset.corrupted_tokens)
    assert differs.any(0).nonzero().flatten().tolist() == [10]
    assert torch.equal(dataset.corrupted_tokens[:, 10], dataset.io_ids)
    assert torch.equal(dataset.clean_tokens[:, 10], dataset.s_ids)


def test_orders_put_the_indirect_object_first_or_second():
    abb = ioi.make_prompt(ioi.TEMPLATES[0], "Mary", "John", "ABB")
    bab = ioi.make_prompt(ioi.TEMPLATES[0], "Mary", "John", "BAB")
    assert abb.clean == "When Mary and John went to the store, John gave a drink to"
    assert abb.corrupted == "When Mary and John went to the store, Mary gave a drink to"
    assert bab.clean == "When John and Mary went to the store, John gave a drink to"
    assert abb.io == bab.io == " Mary"


def test_the_model_prefers_the_indirect_object(smollm2):
    pair = ioi.build_dataset(smollm2, [ioi.make_prompt(ioi.TEMPLATES[0], "Mary", "John")])
    result = ioi.evaluate(smollm2, pair)
    assert result["clean_ld"].item() == pytest.approx(3.72, abs=0.05)
    assert result["corrupted_ld"].item() == pytest.approx(-7.83, abs=0.05)
    assert result["io_top1"].item()


def test_logit_diff_reads_the_last_position():
    logits = torch.zeros(2, 3, 5)
    logits[:, -1, 1] = 2.0
    logits[:, 0, 2] = 9.0
    io, s = torch.tensor([1, 1]), torch.tensor([2, 0])
    assert ioi.logit_diff(logits, io, s).item() == pytest.approx(2.0)
    assert ioi.logit_diff(logits, io, s, per_prompt=True).tolist() == [2.0, 2.0]


def test_normalized_metric_is_zero_on_corrupted_and_one_on_clean(smollm2, dataset):
    with torch.no_grad():
        clean_logits, corrupted_logits = smollm2(dataset.clean_tokens), smollm2(dataset.corrupted_tokens)
    clean = ioi.logit_diff(clean_logits, dataset.io_ids, dataset.s_ids)
    corrupted = ioi.logit_diff(corrupted_logits, dataset.io_ids, dataset.s_ids)
    metric = ioi.normalized_metric(dataset, clean, corrupted)
    assert metric(clean_logits).item() == pytest.approx(1.0, abs=1e-5)
    assert metric(corrupted_logits).item() == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(MicroscopeError, match="no gap"):
        ioi.normalized_metric(dataset, 1.0, 1.0)


def test_abc_prompts_name_a_third_person(smollm2, dataset):
    abc = ioi.abc_tokens(smollm2, dataset)
    assert abc.shape == dataset.clean_tokens.shape
    assert not (abc[:, 10] == dataset.io_ids).any() and not (abc[:, 10] == dataset.s_ids).any()


def test_subset_keeps_rows_together(dataset):
    part = dataset.subset([3, 0])
    assert part.prompts == [dataset.prompts[3], dataset.prompts[0]]
    assert torch.equal(part.io_ids, dataset.io_ids[[3, 0]])
    with pytest.raises(MicroscopeError, match="out of range"):
        dataset.subset([len(dataset)])


def test_multi_token_name_is_refused(smollm2):
    with pytest.raises(TokenError, match="not one"):
        ioi.build_dataset(smollm2, [ioi.make_prompt(ioi.TEMPLATES[0], "Maximilian", "John")])


def test_prompts_of_different_lengths_are_refused(smollm2):
    prompts = [ioi.make_prompt(ioi.TEMPLATES[0], "Mary", "John"),
               ioi.make_prompt("When {A} and {B} got home, {S} gave a letter to", "Mary", "John")]
    with pytest.raises(PromptError, match="same token length"):
        ioi.build_dataset(smollm2, prompts)


def test_bad_templates_names_and_orders_are_refused():
    with pytest.raises(PromptError, match=r"\{S\}"):
        ioi.make_prompt("When {A} and {B} left", "Mary", "John")
    with pytest.raises(MicroscopeError, match="must differ"):
        ioi.make_prompt(ioi.TEMPLATES[0], "Mary", "Mary")
    with pytest.raises(MicroscopeError, match="Unknown order"):
        ioi.make_prompt(ioi.TEMPLATES[0], "Mary", "John", "AAB")
    with pytest.raises(MicroscopeError, match="name pairs"):
        ioi.name_pairs(10_000)


def test_logit_diff_refuses_bad_shapes():
    with pytest.raises(ShapeError, match=r"\[batch, pos, vocab\]"):
        ioi.logit_diff(torch.zeros(2, 5), torch.tensor([0, 1]), torch.tensor([1, 0]))
    with pytest.raises(ShapeError, match="one IO id"):
        ioi.logit_diff(torch.zeros(2, 3, 5), torch.tensor([0]), torch.tensor([1, 0]))
