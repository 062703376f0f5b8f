"""The project's battery of bad and unusual inputs to public helpers.

Each bad input must raise the course's own error (a MicroscopeError subclass) whose message names
the argument or the problem; each harmless unusual form (numpy ints, one string for a list, one
(layer, head) pair for a list, a plain list of ids, half precision) must be accepted and give the
same answer as the canonical form. No call may leave the model changed (hooks, mode, grad).
`test_battery_summary` prints the counts quoted in the closing note of issue 7.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import ablation, attention, attribution, induction, lens, neurons, patching, path_patching, probes, tokens
from helpers.errors import MicroscopeError
from helpers.models import load
from helpers.toy import load_toy


@pytest.fixture(scope="module")
def toy():
    return load("induction")


@pytest.fixture(scope="module")
def toy_tokens():
    return torch.tensor([[0, 5, 9, 3, 5, 9, 3, 7], [0, 4, 8, 2, 4, 8, 2, 6]])


def _metric(logits):
    return logits[:, -1, 3].mean()


def _pattern(batch=2, heads=2, n=6, dtype=torch.float32):
    scores = torch.randn(batch, heads, n, n, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(n, n, dtype=torch.bool).triu(1)
    return scores.masked_fill(mask, float("-inf")).softmax(-1).to(dtype)


# Each entry: (id, function of (toy, toy_tokens) that must raise, fragment the message must contain).
TOY_ERRORS = [
    ("tokens: text prompt to a model without a tokenizer", lambda m, t: tokens.to_tokens(m, "hello"), "no tokenizer"),
    ("lens: layer out of range", lambda m, t: lens.lens_logits(m, m.run_with_cache(t)[1], 7), "layer"),
    ("lens: position out of range", lambda m, t: lens.lens_logits(m, m.run_with_cache(t)[1], 0, pos=40), "pos"),
    ("lens: float layer", lambda m, t: lens.lens_logits(m, m.run_with_cache(t)[1], 1.0), "layer"),
    ("lens: top-k of 0", lambda m, t: lens.top_k_next_tokens(m(t), k=0), "k"),
    ("lens: top-k of logits with 2 dims", lambda m, t: lens.top_k_next_tokens(m(t)[0], k=3), "logits"),
    ("attention: integer pattern", lambda m, t: attention.previous_token_score(_pattern().long()), "pattern"),
    ("attention: 3-d pattern", lambda m, t: attention.previous_token_score(_pattern()[0]), "pattern"),
    ("attention: integer q", lambda m, t: attention.pattern_from_qk(torch.ones(1, 4, 2, 3, dtype=torch.long),
                                                                     torch.ones(1, 4, 2, 3)), "q"),
    ("attention: float tokens for induction", lambda m, t: attention.induction_score(_pattern(), torch.rand(2, 6)), "tokens"),
    ("attention: top_heads k=0", lambda m, t: attention.top_heads(torch.rand(2, 2), k=0), "k"),
    ("attention: unknown score kind", lambda m, t: attention.head_scores(m, t, kinds=["inductoin"]), "induction"),
    ("composition: early layer out of range", lambda m, t: induction.model_composition_scores(m, early=5, late=1), "early"),
    ("composition: late layer out of range", lambda m, t: induction.model_composition_scores(m, early=0, late=9), "late"),
    ("composition: early not before late", lambda m, t: induction.model_composition_scores(m, early=1, late=0), "earlier"),
    ("ablation: head out of range", lambda m, t: ablation.run_with_heads_ablated(m, t, [(0, 5)]), "head"),
    ("ablation: a bare int for heads", lambda m, t: ablation.run_with_heads_ablated(m, t, 3), "heads"),
    ("ablation: misspelt mode", lambda m, t: ablation.run_with_heads_ablated(m, t, [(0, 1)], mode="Mean"), "'mean'"),
    ("ablation: float tokens", lambda m, t: ablation.run_with_heads_ablated(m, t.float(), [(0, 1)]), "tokens"),
    ("ablation: ids outside the vocabulary", lambda m, t: ablation.run_with_heads_ablated(m, t + 1000, [(0, 1)]), "vocabulary"),
    ("patching: batch_size 0", lambda m, t: patching.residual_sweep(m, t, t.flip(0), _metric, batch_size=0), "batch_size"),
    ("patching: batch_size -2", lambda m, t: patching.head_sweep(m, t, t.flip(0), _metric, batch_size=-2), "batch_size"),
    ("patching: layer out of range", lambda m, t: patching.residual_sweep(m, t, t.flip(0), _metric, layers=[4]), "layer"),
    ("patching: NaN metric", lambda m, t: patching.head_sweep(m, t, t.flip(0), lambda lg: lg.sum() * float("nan")), "NaN"),
    ("patching: metric returns a string", lambda m, t: patching.head_sweep(m, t, t.flip(0), lambda lg: "x"), "metric"),
    ("patching: clean and corrupted differ in shape", lambda m, t: patching.head_sweep(m, t, t[:, :5], _metric), "token length"),
    ("attribution patching: Python-float metric", lambda m, t: patching.attribution_patch(m, t, t.flip(0), lambda lg: 1.0),
     "gradient"),
    ("attribution patching: NaN metric", lambda m, t: patching.attribution_patch(m, t, t.flip(0), lambda lg: lg.sum() * float("nan")),
     "NaN"),
    ("attribution patching: unknown site", lambda m, t: patching.attribution_patch(m, t, t.flip(0), _metric, sites=["resid_prE"]),
     "resid_pre"),
    ("dla: position out of range", lambda m, t: attribution.head_dla(m, m.run_with_cache(t)[1], torch.tensor([1, 2]),
                                                                       torch.tensor([3, 4]), pos=30), "pos"),
    ("dla: wrong number of answer ids", lambda m, t: attribution.head_dla(m, m.run_with_cache(t)[1], torch.tensor([1, 2, 3]),
                                                                           torch.tensor([3, 4, 5]), pos=-1), "prompt"),
    ("dla: component position out of range", lambda m, t: attribution.component_dla(m, m.run_with_cache(t)[1], torch.tensor([1, 2]),
                                                                                      torch.tensor([3, 4]), pos=-9), "pos"),
    ("probes: NaN activations", lambda m, t: probes.diff_of_means(torch.tensor([[0.0, float("nan")], [1.0, 1.0]]), [0, 1]), "NaN"),
    ("probes: identical class means", lambda m, t: probes.diff_of_means(torch.ones(4, 3), [0, 1, 0, 1]), "identical"),
    ("probes: test_fraction 1.5", lambda m, t: probes.split_by_group(["a", "b", "c", "d"], test_fraction=1.5), "test_fraction"),
    ("probes: integer activations", lambda m, t: probes.fit_probe(torch.ones(4, 3, dtype=torch.long), [0, 1, 0, 1]), "acts"),
    ("neurons: k of 0", lambda m, t: neurons.rank_neurons([torch.rand(3, 4)], [torch.rand(3, 4)], k=0), "k"),
    ("models: device 'gpu'", lambda m, t: load("induction", device="gpu"), "device"),
    ("models: unknown toy name", lambda m, t: load_toy("inductoin"), "induction"),
    ("models: name not a string", lambda m, t: load(42), "name"),
    ("failures: groups of the wrong length", lambda m, t: __import__("helpers.failures").failures.variance_explained(
        torch.rand(10, 3), torch.arange(4)), "groups"),
    ("failures: CCS pairs of different shapes", lambda m, t: __import__("helpers.failures").failures.ccs_fit(
        torch.rand(10, 3), torch.rand(9, 3)), "positive"),
    ("faithfulness: zero arithmetic problems", lambda m, t: __import__("helpers.faithfulness").faithfulness.arithmetic_items(
        torch.Generator().manual_seed(0), 0), "n"),
    ("faithfulness: few-shot flags of the wrong length", lambda m, t: __import__("helpers.faithfulness").faithfulness
     .few_shot([("q", "a", "b")], [True, False]), "right_first"),
    ("faithfulness: few-shot example without its wrong answer", lambda m, t: __import__("helpers.faithfulness")
     .faithfulness.few_shot([("q", "a")], [True]), "example 0"),
    ("path patching: each receiver of 'logits'", lambda m, t: path_patching.path_patch_each_receiver(
        m, t, t.flip(0), _metric, (0, 1), "logits", progress=False), "path_patch"),
    ("path patching: a list of senders to each receiver", lambda m, t: path_patching.path_patch_each_receiver(
        m, t, t.flip(0), _metric, [(0, 1), (0, 0)], [(1, 0)], progress=False), "sender"),
    ("path patching: no receivers", lambda m, t: path_patching.path_patch_each_receiver(
        m, t, t.flip(0), _metric, (0, 1), [], progress=False), "receivers"),
    ("path patching: no senders", lambda m, t: path_patching.path_patch(m, t, t.flip(0), _metric, [], progress=False),
     "senders"),
    ("path patching: sender not before its receiver", lambda m, t: path_patching.path_patch_each_receiver(
        m, t, t.flip(0), _metric, (1, 1), [(1, 0)], progress=False), "later layers"),
    ("path patching: unknown receiver input", lambda m, t: path_patching.path_patch_each_receiver(
        m, t, t.flip(0), _metric, (0, 1), [(1, 0)], "z", progress=False), "receiver_input"),
    ("path patching: sender out of range", lambda m, t: path_patching.path_patch_each_receiver(
        m, t, t.flip(0), _metric, (0, 9), [(1, 0)], progress=False), "does not exist"),
    ("run from layer: a hook below the start layer", lambda m, t: patching.RunFromLayer(m, t, 1)(
        [("blocks.0.attn.hook_z", lambda z, hook: z)]), "blocks.1 or later"),
    ("run from layer: layer out of range", lambda m, t: patching.RunFromLayer(m, t, 5), "layer"),
    ("run from layer: a position mask that is not boolean", lambda m, t: patching.RunFromLayer(m, t, 1)(
        at=torch.ones_like(t)), "`at`"),
    ("faithfulness: a stated option among one choice", lambda m, t: __import__("helpers.faithfulness").faithfulness
     .stated_option("dog", ["dog"]), "choices"),
    ("faithfulness: bias mention in a text that is not a string", lambda m, t: __import__("helpers.faithfulness")
     .faithfulness.bias_mention(None), "`text`"),
    ("faithfulness: shared-prefix generation of 0 tokens", lambda m, t: __import__("helpers.faithfulness").faithfulness
     .generate_shared(m, ["a cat"], max_new_tokens=0), "max_new_tokens"),
]

# Harmless unusual forms: (id, unusual call, canonical call); both must give the same result.
TOY_ACCEPTED = [
    ("numpy int layer in the lens", lambda m, t, c: lens.lens_logits(m, c, np.int64(1)), lambda m, t, c: lens.lens_logits(m, c, 1)),
    ("numpy int position in the lens", lambda m, t, c: lens.lens_logits(m, c, 1, pos=np.int32(3)),
     lambda m, t, c: lens.lens_logits(m, c, 1, pos=3)),
    ("one (layer, head) pair", lambda m, t, c: ablation.run_with_heads_ablated(m, t, (1, 0)),
     lambda m, t, c: ablation.run_with_heads_ablated(m, t, [(1, 0)])),
    ("numpy ints in heads", lambda m, t, c: ablation.run_with_heads_ablated(m, t, [(np.int64(1), np.int64(0))]),
     lambda m, t, c: ablation.run_with_heads_ablated(m, t, [(1, 0)])),
    ("a plain list of ids", lambda m, t, c: ablation.run_with_heads_ablated(m, t.tolist(), [(1, 0)]),
     lambda m, t, c: ablation.run_with_heads_ablated(m, t, [(1, 0)])),
    ("one string for attribution sites", lambda m, t, c: patching.attribution_patch(m, t, t.flip(0), _metric, sites="z")["z"],
     lambda m, t, c: patching.attribution_patch(m, t, t.flip(0), _metric, sites=["z"])["z"]),
    ("one string for head-score kinds", lambda m, t, c: attention.head_scores(m, t, kinds="induction")["induction"],
     lambda m, t, c: attention.head_scores(m, t, kinds=["induction"])["induction"]),
    ("half-precision pattern", lambda m, t, c: attention.previous_token_score(_pattern(dtype=torch.float16)),
     lambda m, t, c: attention.previous_token_score(_pattern(dtype=torch.float16).float())),
    ("numpy int layers in a sweep", lambda m, t, c: patching.residual_sweep(m, t, t.flip(0), _metric, layers=[np.int64(1)], progress=False),
     lambda m, t, c: patching.residual_sweep(m, t, t.flip(0), _metric, layers=[1], progress=False)),
    ("Python-float metric in a sweep", lambda m, t, c: patching.head_sweep(m, t, t.flip(0), lambda lg: float(_metric(lg)), progress=False),
     lambda m, t, c: patching.head_sweep(m, t, t.flip(0), _metric, progress=False)),
    ("one pair kept in a circuit", lambda m, t, c: attribution.run_with_only_heads(m, t, (1, 1)),
     lambda m, t, c: attribution.run_with_only_heads(m, t, [(1, 1)])),
    ("numpy ints in a path-patching sender", lambda m, t, c: path_patching.path_patch_each_receiver(
        m, t, t.flip(0), _metric, (np.int64(0), np.int64(1)), [(1, 0), (1, 1)], progress=False),
     lambda m, t, c: path_patching.path_patch_each_receiver(m, t, t.flip(0), _metric, (0, 1), [(1, 0), (1, 1)], progress=False)),
]


def _state(model):
    hooks = sum(len(hp.fwd_hooks) + len(hp.bwd_hooks) for hp in model.hook_dict.values())
    return hooks, model.training, torch.is_grad_enabled()


@pytest.mark.parametrize("case", TOY_ERRORS, ids=[c[0] for c in TOY_ERRORS])
def test_bad_input_gets_the_courses_own_clear_error(case, toy, toy_tokens):
    _, call, fragment = case
    before = _state(toy)
    with pytest.raises(MicroscopeError) as info:
        call(toy, toy_tokens)
    assert fragment.lower() in str(info.value).lower(), str(info.value)
    assert _state(toy) == before


@pytest.mark.parametrize("case", TOY_ACCEPTED, ids=[c[0] for c in TOY_ACCEPTED])
def test_harmless_forms_are_accepted(case, toy, toy_tokens):
    _, unusual, canonical = case
    _, cache = toy.run_with_cache(toy_tokens)
    got, want = unusual(toy, toy_tokens, cache), canonical(toy, toy_tokens, cache)
    assert torch.allclose(torch.as_tensor(got).float(), torch.as_tensor(want).float(), atol=1e-5)


SMOLLM2_ERRORS = [
    ("tokens: None prompt", lambda m: tokens.to_tokens(m, None), "prompt"),
    ("tokens: int prompt", lambda m: tokens.to_tokens(m, 42), "prompt"),
    ("tokens: None inside a list", lambda m: tokens.to_tokens(m, ["a cat", None]), "prompt"),
    ("tokens: empty prompt", lambda m: tokens.to_tokens(m, "  "), "empty"),
    ("tokens: over-long prompt", lambda m: tokens.to_tokens(m, "word " * 9000), "tokens long"),
    ("tokens: misspelt hook name", lambda m: tokens.run_with_cache(m, "Hi", names=["blocks.0.hook_resid_postt"]), "closest"),
    ("tokens: multi-token answer", lambda m: tokens.single_token_id(m, "Parisian-ness"), "not one"),
    ("tokens: None answer", lambda m: tokens.single_token_id(m, None), "answer"),
    ("lens: None prompt", lambda m: lens.logit_lens(m, None), "prompt"),
    ("lens: prompts and answers of different counts", lambda m: lens.answer_ranks(m, ["a", "b"], [" c"]), "answer"),
    ("probes: hook name misspelt", lambda m: probes.gather_activations(m, ["a cat"], "blocks.0.hook_resid_pots"), "closest"),
    ("probes: batch_size 0", lambda m: probes.gather_activations(m, ["a cat"], "blocks.0.hook_resid_post", batch_size=0),
     "batch_size"),
    ("probes: position beyond the prompt", lambda m: probes.gather_activations(m, ["a cat"], "blocks.0.hook_resid_post",
                                                                               position=9), "position"),
    ("neurons: batch_size -1 (was an empty result)", lambda m: neurons.collect_activations(
        m, ["a cat"], ["blocks.0.mlp.hook_post"], batch_size=-1), "batch_size"),
    ("neurons: batch_size 0", lambda m: neurons.collect_activations(m, ["a cat"], ["blocks.0.mlp.hook_post"], batch_size=0),
     "batch_size"),
    ("widgets: head out of range", lambda m: __import__("helpers.widgets").widgets.attention_explorer(m, "a cat sat", 0, 12),
     "head"),
    ("failures: batch_size 0", lambda m: __import__("helpers.failures").failures.activations_at(
        m, ["a cat"], ["blocks.0.hook_resid_post"], batch_size=0), "batch_size"),
    ("neurons: misspelt hook", lambda m: neurons.top_activating_tokens(m, ["a cat"], "blocks.0.mlp.hook_postt", 3), "closest"),
    ("neurons: neuron out of range", lambda m: neurons.top_activating_tokens(m, ["a cat"], "blocks.0.mlp.hook_post", 99999),
     "neuron"),
    ("generation: empty continuation to score", lambda m: __import__("helpers.generation").generation.continuation_logprobs(
        m, ["Hi"], ""), "continuation"),
    ("generation: suffix scorer with free=0", lambda m: __import__("helpers.generation").generation.SuffixScorer(
        m, ["Hello there"], "I", free=0), "free"),
    ("faithfulness: arithmetic item with a two-digit sum", lambda m: __import__("helpers.faithfulness").faithfulness
     .arithmetic_chain(m, [(7, 8, 1)]), "a+b <= 9"),
    ("faithfulness: copy control with one distractor too few", lambda m: __import__("helpers.faithfulness").faithfulness
     .copy_control(m, __import__("helpers.faithfulness").faithfulness.arithmetic_chain(m, [(1, 2, 1), (2, 3, 1)]), [4]),
     "distractor"),
    ("exercise 01: bracket prompts with more items than words", lambda m: __import__("helpers.exercises.l01").exercises
     .l01.bracket_prompts(m, 4, 40, torch.Generator().manual_seed(0)), "items"),
    ("exercise 01: bracket prompts with a seed for a generator", lambda m: __import__("helpers.exercises.l01").exercises
     .l01.bracket_prompts(m, 4, 3, 0), "generator"),
    ("exercise 01: opener position beyond the prompt", lambda m: __import__("helpers.exercises.l01").exercises
     .l01.opener_attention(m, torch.tensor([[1, 2, 3]]), 7), "opener_pos"),
    ("exercise 01: ablation drops with no heads", lambda m: __import__("helpers.exercises.l01").exercises
     .l01.bracket_ablation_drops(m, torch.tensor([[1, 2, 3]]), torch.tensor([4]), torch.tensor([5]), [], {}), "heads"),
    ("exercise 01: ablation drops without a layer's means", lambda m: __import__("helpers.exercises.l01").exercises
     .l01.bracket_ablation_drops(m, torch.tensor([[1, 2, 3]]), torch.tensor([4]), torch.tensor([5]), [(3, 1)], {}), "means"),
    ("generation: many() given one vector, not [k, d]", lambda m: __import__("helpers.generation").generation.SuffixScorer(
        m, ["Hello there"], "I").many(lambda rows: [], torch.ones(m.cfg.d_model)), "vectors"),
    ("generation: read_prefix inside the free tokens", lambda m: __import__("helpers.generation").generation.SuffixScorer(
        m, ["Hello there"], "I", read=["blocks.0.hook_resid_pre"], read_prefix=(-1,)), "read_prefix"),
    ("steering: a zero vector among per-row vectors", lambda m: __import__("helpers.steering").steering
     .last_position_addition_hooks(m, torch.zeros(3, m.cfg.d_model), 5), "vector[0]"),
    ("failures: neuron ablation with no neurons", lambda m: __import__("helpers.failures").failures.last_mlp_ablation_logits(
        m, torch.zeros(2, m.cfg.d_model), torch.zeros(2, 8), [], torch.zeros(8)), "neurons"),
]

SMOLLM2_ACCEPTED = [
    ("one string for hook names", lambda m: tokens.run_with_cache(m, "Hi there", names="blocks.0.hook_resid_post")[1]
     ["blocks.0.hook_resid_post"], lambda m: tokens.run_with_cache(m, "Hi there", names=["blocks.0.hook_resid_post"])[1]
     ["blocks.0.hook_resid_post"]),
    ("one string for prompts", lambda m: probes.gather_activations(m, "a cat", "blocks.0.hook_resid_post", progress=False),
     lambda m: probes.gather_activations(m, ["a cat"], "blocks.0.hook_resid_post", progress=False)),
    ("numpy int position", lambda m: probes.gather_activations(m, ["a cat"], "blocks.0.hook_resid_post", position=np.int64(1),
                                                              progress=False),
     lambda m: probes.gather_activations(m, ["a cat"], "blocks.0.hook_resid_post", position=1, progress=False)),
    ("one prompt string and one answer", lambda m: lens.answer_ranks(m, "The capital of France is", " Paris"),
     lambda m: lens.answer_ranks(m, ["The capital of France is"], [" Paris"])),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", SMOLLM2_ERRORS, ids=[c[0] for c in SMOLLM2_ERRORS])
def test_bad_input_to_smollm2_helpers_gets_a_clear_error(case, smollm2):
    _, call, fragment = case
    before = _state(smollm2)
    with pytest.raises(MicroscopeError) as info:
        call(smollm2)
    assert fragment.lower() in str(info.value).lower(), str(info.value)
    assert _state(smollm2) == before


@pytest.mark.slow
@pytest.mark.parametrize("case", SMOLLM2_ACCEPTED, ids=[c[0] for c in SMOLLM2_ACCEPTED])
def test_harmless_forms_are_accepted_on_smollm2(case, smollm2):
    _, unusual, canonical = case
    assert torch.allclose(torch.as_tensor(unusual(smollm2)).float(), torch.as_tensor(canonical(smollm2)).float(), atol=1e-5)


def test_battery_summary(capsys):
    """Prints the battery's size (the note quotes it); the per-case tests above decide pass or fail."""
    errors, accepted = len(TOY_ERRORS) + len(SMOLLM2_ERRORS), len(TOY_ACCEPTED) + len(SMOLLM2_ACCEPTED)
    with capsys.disabled():
        print(f"\nbad-input battery: {errors} bad inputs that must raise the course's error, "
              f"{accepted} harmless forms that must be accepted")
    assert errors >= 50 and accepted >= 15
