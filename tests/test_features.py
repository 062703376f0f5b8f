"""Lesson 08 helpers: superposition toy models, the SAE, its shipped weights and corpus, feature reading and controls."""
from __future__ import annotations

import pytest
import torch

from helpers import features as feat
from helpers import sae as sae_lib
from helpers import superposition as sp
from helpers.errors import MicroscopeError, ModelUnavailableError, ShapeError


# --- superposition ---------------------------------------------------------------------------------

def test_dense_features_get_one_dimension_each_and_sparse_ones_share():
    sparsity = torch.tensor([0.0, 0.95])
    toy = sp.train_toy(n=5, m=2, sparsity=sparsity, importance=(0.9 ** torch.arange(5.0)).expand(2, 5), steps=800)
    represented = (sp.feature_norms(toy.W) > 0.5).sum(1)
    assert represented[0] == 2  # dense: the two most important features, one per dimension
    assert represented[1] >= 4  # sparse: more features than dimensions
    assert sp.dimensions_per_feature(toy.W)[0] > 0.9 > 0.5 > sp.dimensions_per_feature(toy.W)[1]


def test_phase_reports_ignored_alone_and_shared():
    W = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, -1.0]]])  # [instances, m=1, n=2]
    assert sp.phase(W).tolist() == [0, 1, 2]


def test_interference_is_zero_for_orthogonal_features_and_one_for_antipodal():
    W = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, -1.0], [0.0, 0.0]]])
    assert torch.allclose(sp.interference(W), torch.tensor([[0.0, 0.0], [1.0, 1.0]]))


@pytest.mark.parametrize("kwargs, words", [
    (dict(n=2, m=3), "m < n"),
    (dict(sparsity=[1.0]), "[0, 1)"),
    (dict(importance=[[1.0, 1.0, 1.0]]), "[instances, n]"),
    (dict(importance=[[1.0, 0.0]]), "positive"),
])
def test_train_toy_refuses_bad_settings(kwargs, words):
    settings = dict(n=2, m=1, sparsity=[0.5], importance=[[1.0, 1.0]], steps=1)
    with pytest.raises(MicroscopeError, match=words.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
        sp.train_toy(**{**settings, **kwargs})


def test_phase_refuses_more_than_two_features():
    with pytest.raises(MicroscopeError, match="n=2"):
        sp.phase(torch.ones(1, 1, 3))


# --- the SAE -----------------------------------------------------------------------------------------

def test_encode_keeps_at_most_k_non_negative_features_and_decode_inverts_a_perfect_dictionary():
    sae = sae_lib.SAE(W_enc=torch.eye(4), b_enc=torch.zeros(4), W_dec=torch.eye(4), b_dec=torch.zeros(4), k=2)
    x = torch.tensor([[3.0, -1.0, 2.0, 0.5], [0.1, 0.2, -5.0, 4.0]])
    f = sae.encode(x)
    assert ((f > 0).sum(-1) <= 2).all() and (f >= 0).all()
    assert torch.equal(f, torch.tensor([[3.0, 0, 2.0, 0], [0, 0.2, 0, 4.0]]))
    assert torch.equal(sae.decode(f), f)


def test_sae_refuses_activations_of_the_wrong_width():
    sae = sae_lib.init_sae(8, 16, 4)
    with pytest.raises(ShapeError, match="d_model=8"):
        sae.encode(torch.zeros(3, 7))


def test_init_sae_refuses_k_larger_than_the_dictionary():
    with pytest.raises(sae_lib.SAEError, match="d_sae=4"):
        sae_lib.init_sae(8, 4, 5)


def test_training_recovers_a_planted_sparse_dictionary():
    generator = torch.Generator().manual_seed(0)
    true_dirs = torch.nn.functional.normalize(torch.randn(24, 12, generator=generator), dim=-1)
    codes = torch.rand(4000, 24, generator=generator) * (torch.rand(4000, 24, generator=generator) < 0.08)
    x = codes @ true_dirs
    sae, log = sae_lib.train_sae(x, d_sae=48, k=4, steps=600, batch_size=256, lr=3e-3, progress=False)
    stats = feat.reconstruction_stats(sae, x)
    assert stats["variance_explained"] > 0.85 and stats["L0"] <= 4
    best = (torch.nn.functional.normalize(sae.W_dec, dim=-1) @ true_dirs.T).max(0).values
    assert (best > 0.9).float().mean() > 0.6  # most planted directions found by some feature
    assert log[-1]["loss"] < log[0]["loss"]


def test_save_and_load_round_trip(tmp_path):
    sae = sae_lib.init_sae(6, 12, 3, seed=1)
    path = tmp_path / "sae.safetensors"
    sae_lib.save_sae(sae, path, {"note": "test"})
    again = sae_lib.load_sae(path=path)
    assert again.k == 3 and again.hook == sae.hook
    assert torch.allclose(again.W_dec, sae.W_dec, atol=1e-3)


def test_missing_weights_name_the_retrain_command(tmp_path):
    with pytest.raises(ModelUnavailableError, match="python -m helpers.sae train"):
        sae_lib.load_sae(path=tmp_path / "absent.safetensors")


def test_shipped_dictionaries_load_small_and_unit_norm():
    for size, settings in sae_lib.SIZES.items():
        sae = sae_lib.load_sae(size)
        assert sae.d_sae == settings["d_sae"] and sae.k == settings["k"] and sae.hook == sae_lib.HOOK
        assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(sae.d_sae), atol=1e-2)
        assert sae_lib.sae_path(size).stat().st_size < 6_000_000
        assert sae_lib.sae_metadata(size)["seconds"] > 0


def test_corpus_splits_are_disjoint_documents():
    train, held = sae_lib.load_corpus("train"), sae_lib.load_corpus("held_out")
    assert len(train) > 3 * len(held) > 0
    assert not set(train) & set(held)


def test_load_corpus_refuses_an_unknown_split():
    with pytest.raises(MicroscopeError, match="held_out"):
        sae_lib.load_corpus("test")


# --- reading and controls -----------------------------------------------------------------------------

def test_auroc_counts_pairs_and_ties():
    assert feat.auroc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == 1.0
    assert feat.auroc(torch.tensor([1.0]), torch.tensor([1.0, 2.0])) == 0.25


def test_matched_features_stay_in_the_band_and_exclude_the_target():
    size = torch.tensor([10.0, 9.0, 30.0, 5.0, 0.0, 12.0])
    drawn = feat.matched_features(size, 0, n=50, seed=1)
    assert set(drawn) <= {1, 3, 5} and 0 not in drawn and len(set(drawn)) > 1


def test_matched_features_refuses_an_inactive_target():
    with pytest.raises(MicroscopeError, match="nothing to match"):
        feat.matched_features(torch.tensor([0.0, 1.0]), 0, n=3)


def test_feature_acts_column_and_fired_match_the_dense_code():
    sae = sae_lib.init_sae(6, 10, 3, seed=2)
    acts = [torch.randn(5, 6), torch.randn(4, 6)]
    sparse = feat.encode_documents(sae, acts)
    dense = sae.encode(torch.cat([a[1:] for a in acts]))
    assert torch.allclose(sparse.column(7), dense[:, 7])
    assert torch.equal(sparse.fired(), (dense > 0).sum(0).float())
    assert sparse.doc.tolist() == [0] * 4 + [1] * 3 and sparse.pos.tolist() == [1, 2, 3, 4, 1, 2, 3]


@pytest.mark.slow
def test_spliced_sae_beats_mean_ablation_on_held_out_text(smollm2):
    sae = sae_lib.load_sae("4x")
    tokens = sae_lib.document_tokens(smollm2, sae_lib.load_corpus("held_out")[:6])
    mean = sae_lib.token_rows(sae_lib.residual_activations(smollm2, tokens)).mean(0)
    losses = feat.spliced_losses(smollm2, sae, tokens, mean)
    assert losses["clean"] < losses["sae"] < losses["mean_ablation"] < losses["zero_ablation"]


@pytest.mark.slow
def test_losses_from_one_clean_run_equal_one_full_run_per_replacement(smollm2):
    """next_token_losses replays only the blocks from the hook's layer up; the numbers are next_token_loss's."""
    sae = sae_lib.load_sae("1x")
    tokens = sae_lib.document_tokens(smollm2, sae_lib.load_corpus("held_out")[:3])
    replaces = {"sae": lambda a: sae(a)[0], "half": lambda a: a / 2}
    together = feat.next_token_losses(smollm2, tokens, sae.hook, replaces, batch_size=2)  # two batches
    one_by_one = {"clean": feat.next_token_loss(smollm2, tokens),
                  **{name: feat.next_token_loss(smollm2, tokens, sae.hook, f) for name, f in replaces.items()}}
    assert together.keys() == one_by_one.keys()
    for name in together:
        assert abs(together[name] - one_by_one[name]) < 1e-4, name
    embed = feat.next_token_losses(smollm2, tokens[:1], "hook_embed", {"zero": torch.zeros_like})  # not in a block
    assert embed["zero"] > embed["clean"]
    with pytest.raises(MicroscopeError, match="replaces"):
        feat.next_token_losses(smollm2, tokens, sae.hook, {"sae": "not a function"})
    with pytest.raises(MicroscopeError, match="hook"):
        feat.next_token_losses(smollm2, tokens, "blocks.99.hook_resid_post", replaces)


@pytest.mark.slow
def test_residual_activations_match_run_with_cache(smollm2):
    tokens = sae_lib.document_tokens(smollm2, ["The pilot landed.", "A cat slept on the warm mat all day."])
    acts = sae_lib.residual_activations(smollm2, tokens)
    _, cache = smollm2.run_with_cache(tokens[1][None], names_filter=[sae_lib.HOOK])
    assert torch.allclose(acts[1], cache[sae_lib.HOOK][0], atol=1e-4)
    assert [len(a) for a in acts] == [len(t) for t in tokens]


@pytest.mark.slow
def test_steering_and_ablation_hooks_leave_the_model_clean(smollm2):
    sae = sae_lib.load_sae("1x")
    ids = [smollm2.tokenizer.encode(" plane")[0]]
    base = feat.last_token_logprobs(smollm2, ["I saw a"], ids)
    steered = feat.last_token_logprobs(smollm2, ["I saw a"], ids, [feat.steering_hook(sae, 3, 50.0)])
    ablated = feat.last_token_logprobs(smollm2, ["I saw a"], ids, [feat.ablation_hook(sae, 3)])
    assert not torch.allclose(base, steered)
    assert torch.isfinite(ablated).all()
    assert torch.allclose(feat.last_token_logprobs(smollm2, ["I saw a"], ids), base)


@pytest.mark.slow
def test_feature_browser_builds_cards_and_refuses_mismatched_documents(smollm2):
    from helpers.feature_browser import FeatureBrowserError, feature_browser

    sae = sae_lib.load_sae("1x")
    tokens = sae_lib.document_tokens(smollm2, sae_lib.load_corpus("held_out")[:3])
    acts = feat.encode_documents(sae, sae_lib.residual_activations(smollm2, tokens))
    features = acts.fired().argsort(descending=True)[:2].tolist()
    browser = feature_browser(smollm2, sae, tokens, acts, features, labels={features[0]: "busy"})
    dropdown, card = browser.children[1], browser.children[2]
    first = card.value
    assert "busy" in first and "class=\"context\"" in first
    dropdown.value = features[1]
    assert card.value != first and f"feature {features[1]}" in card.value
    with pytest.raises(FeatureBrowserError, match="tokens"):
        feature_browser(smollm2, sae, tokens[:2], acts, features)
