"""helpers.probes: datasets, activation gathering at chosen tokens, directions, splits, controls, probes."""
from __future__ import annotations

import pytest
import torch

from helpers import probes
from helpers.errors import HookNameError, MicroscopeError, PromptError
from helpers.probes import ProbeDataError


def test_one_class_dataset_is_a_clear_error():
    with pytest.raises(ProbeDataError, match="both classes"):
        probes.make_dataset(["a b", "c d", "e f"], [1, 1, 1])


def test_one_class_training_labels_are_a_clear_error():
    acts = torch.randn(6, 4)
    with pytest.raises(ProbeDataError, match="both classes"):
        probes.fit_probe(acts, torch.zeros(6, dtype=torch.long))
    with pytest.raises(ProbeDataError, match="both classes"):
        probes.diff_of_means(acts, torch.ones(6, dtype=torch.long))


def test_mismatched_prompts_and_labels_are_a_clear_error():
    with pytest.raises(ProbeDataError, match="3 labels for 2 prompts"):
        probes.make_dataset(["a b", "c d"], [0, 1, 1])
    with pytest.raises(ProbeDataError, match="one group per prompt"):
        probes.make_dataset(["a b", "c d"], [0, 1], groups=["x"])


def test_non_binary_labels_are_rejected():
    with pytest.raises(ProbeDataError, match="0 or 1"):
        probes.make_dataset(["a", "b", "c"], [0, 1, 2])
    with pytest.raises(ProbeDataError, match="non-integer"):
        probes.check_labels(torch.tensor([0.0, 0.5, 1.0]))


def test_probe_errors_are_microscope_errors():
    assert issubclass(ProbeDataError, MicroscopeError)


def test_unknown_prompt_set_lists_the_known_ones():
    with pytest.raises(ProbeDataError, match="l03_people"):
        probes.load_prompt_set("l03_nonexistent")


def test_people_prompt_set_is_balanced_with_repeated_entities():
    data = probes.load_prompt_set("l03_people")
    n_entities = len(set(data.groups))
    assert len(data) == n_entities * len(data.templates)
    assert data.labels.sum().item() * 2 == len(data)
    assert all(p.endswith(g) for p, g in zip(data.prompts, data.groups))


def test_diff_of_means_is_unit_and_points_to_class_one():
    acts = torch.randn(50, 6)
    labels = (torch.arange(50) % 2).long()
    acts[labels == 1, 2] += 5.0
    direction = probes.diff_of_means(acts, labels)
    assert direction.norm().item() == pytest.approx(1.0, abs=1e-6)
    assert direction[2] > 0.9


def test_split_by_group_holds_out_whole_groups_balanced():
    groups = [f"e{i}" for i in range(40)] * 3
    labels = torch.tensor([i % 2 for i in range(40)] * 3)
    train, test = probes.split_by_group(groups, 0.25, seed=0, labels=labels)
    train_groups, test_groups = {groups[i] for i in train}, {groups[i] for i in test}
    assert not train_groups & test_groups and len(test_groups) == 10
    assert labels[torch.as_tensor(test)].float().mean().item() == 0.5
    assert len(train) + len(test) == len(groups)
    again = probes.split_by_group(groups, 0.25, seed=0, labels=labels)[1]
    assert (again == test).all()
    assert set(probes.split_by_group(groups, 0.25, seed=1, labels=labels)[1]) != set(test)


def test_split_by_group_rejects_a_group_with_two_labels():
    with pytest.raises(ProbeDataError, match="both labels"):
        probes.split_by_group(["a", "a", "b", "c"], 0.5, labels=[0, 1, 0, 1])


def test_control_labels_are_fixed_per_type_and_balanced():
    groups = [f"e{i}" for i in range(30)] * 4
    control = probes.control_labels(groups, seed=0)
    per_type = {}
    for g, y in zip(groups, control.tolist()):
        assert per_type.setdefault(g, y) == y
    assert sum(per_type.values()) == 15
    assert not torch.equal(control, probes.control_labels(groups, seed=1))


def test_probe_accuracies_generalise_signal_and_reject_overlapping_splits():
    gen = torch.Generator().manual_seed(0)
    labels = (torch.arange(80) % 2).long()
    acts = torch.randn(2, 80, 10, generator=gen)
    acts[1, :, 0] += 4.0 * labels  # only the second "layer" carries the label
    train, test = probes.split_by_prompt(80, 0.25, seed=0)
    scores = probes.probe_accuracies(acts, labels, train, test, progress=False)
    assert scores[1] > 0.95 and scores[0] < 0.8
    with pytest.raises(ProbeDataError, match="both the train and the test"):
        probes.probe_accuracies(acts, labels, train, [*test, train[0]], progress=False)


@pytest.mark.slow
def test_unknown_hook_is_a_hook_name_error(smollm2):
    with pytest.raises(HookNameError, match="blocks.3.hook_resid_post"):
        probes.gather_activations(smollm2, ["Hello there"], "blocks.3.hook_resid_pots", progress=False)


@pytest.mark.slow
def test_gather_matches_unbatched_runs_despite_padding(smollm2):
    prompts = ["My grandfather once met Albert Einstein", "Hi Bob", "The documentary was about Bob Dylan and more"]
    name = "blocks.5.hook_resid_post"
    acts = probes.gather_activations(smollm2, prompts, [name, "blocks.0.hook_resid_pre"], progress=False)
    assert acts.shape == (2, 3, smollm2.cfg.d_model)
    for i, prompt in enumerate(prompts):
        with torch.no_grad():
            _, cache = smollm2.run_with_cache(smollm2.to_tokens(prompt), names_filter=[name])
        assert torch.allclose(acts[0, i], cache[name][0, -1], atol=1e-4)


@pytest.mark.slow
def test_token_position_finds_the_entitys_last_token(smollm2):
    prompt = "I read about Erwin Schrödinger yesterday"
    position = probes.token_position(smollm2, prompt, "Erwin Schrödinger")
    tokens = smollm2.to_str_tokens(prompt)
    assert tokens[0] == smollm2.tokenizer.bos_token and "".join(tokens[1:position + 1]).endswith("Schrödinger")
    assert not tokens[position + 1].startswith("ö")
    one = probes.gather_activations(smollm2, [prompt], "blocks.2.hook_resid_post", position=[position], progress=False)
    assert one.shape == (1, smollm2.cfg.d_model)
    with pytest.raises(PromptError, match="does not occur"):
        probes.token_position(smollm2, prompt, "Newton")


@pytest.mark.slow
def test_bad_positions_are_clear_errors(smollm2):
    with pytest.raises(PromptError, match="outside prompt 0"):
        probes.gather_activations(smollm2, ["Hello there"], "blocks.0.hook_resid_post", position=7, progress=False)
    with pytest.raises(ProbeDataError, match="'first'"):
        probes.gather_activations(smollm2, ["Hello there"], "blocks.0.hook_resid_post", position="first", progress=False)
    with pytest.raises(ProbeDataError, match="one position per prompt"):
        probes.gather_activations(smollm2, ["Hello there", "Hi"], "blocks.0.hook_resid_post", position=[1], progress=False)


@pytest.mark.slow
def test_random_init_copy_keeps_architecture_but_not_weights(smollm2):
    copy = probes.random_init_copy(smollm2, seed=0)
    assert copy.cfg.n_layers == smollm2.cfg.n_layers and copy.cfg.d_model == smollm2.cfg.d_model
    assert copy.tokenizer is smollm2.tokenizer
    real = smollm2.original_model.model.layers[0].mlp.up_proj.weight
    fresh = copy.original_model.model.layers[0].mlp.up_proj.weight
    assert real.shape == fresh.shape and not torch.allclose(real, fresh)
    again = probes.random_init_copy(smollm2, seed=0).original_model.model.layers[0].mlp.up_proj.weight
    assert torch.equal(fresh, again)


def test_probe_direction_finds_the_signal_and_removing_it_kills_a_one_direction_signal():
    gen = torch.Generator().manual_seed(1)
    labels = (torch.arange(200) % 2).long()
    acts = torch.randn(200, 8, generator=gen)
    acts[:, 3] += 3.0 * labels
    direction = probes.probe_direction(probes.fit_probe(acts, labels))
    assert direction.norm().item() == pytest.approx(1.0, abs=1e-5) and direction[3] > 0.9
    cleaned = probes.remove_direction(acts, direction)
    assert (cleaned @ direction).abs().max() < 1e-4
    train, test = probes.split_by_prompt(200, 0.25)
    assert probes.probe_accuracies(cleaned[None], labels, train, test, progress=False)[0] < 0.75
