"""The gate of claim H1d (``hypotheses/test_h1d_transformer.py``): its own statistic, in its
registered regime (the ``lin2025_transformer`` preset's sizes, all p² pairs), passes on the
hand-built Fourier transformer (``testbeds/modadd/hand_built.py``) and fails on the same
architecture at initialisation; and the hand-built network has the properties its docstring
states (architecture, accuracy, key frequencies, a residual stream that is a function of a + b,
margins from the ReLU's kink, an unused "=" row of W_U)."""

from __future__ import annotations

import doctest

import pytest
import torch

from hypotheses.test_h1d_transformer import H1D_KEY_SUM_MIN, TRANSFORMER_PRESET, h1d_statistic
from testbeds import modadd
from testbeds.modadd import hand_built
from testbeds.modadd.ground_truth import embedding_frequency_power

KEY = (4, 5, 7)
KINK_MARGIN_MIN = 0.04  # smallest |ReLU pre-activation| the construction guarantees (0.0407)


@pytest.fixture(scope="module")
def config():
    return modadd.preset(TRANSFORMER_PRESET)


@pytest.fixture(scope="module")
def model(config):
    return modadd.fourier_transformer(config, key=KEY)


@pytest.fixture(scope="module")
def tokens(config):
    a, b = modadd.pairs(config.p)
    return torch.stack([a, b, torch.full_like(a, config.p)], dim=1)  # (p², 3)


@pytest.fixture(scope="module")
def forward(model, tokens):
    """Logits (p², p), MLP pre-activations (p², d_mlp) and the residual stream read by the
    unembedding (p², d_model) of the hand-built network."""
    seen = {}
    hooks = [
        model.mlp_in.register_forward_hook(lambda m, i, o: seen.__setitem__("pre", o)),
        model.unembed.register_forward_hook(lambda m, i, o: seen.__setitem__("resid", i[0])),
    ]
    with torch.no_grad():
        logits = model(tokens)
    for hook in hooks:
        hook.remove()
    return logits, seen["pre"], seen["resid"]


@pytest.mark.gate("H1d", "positive")
def test_h1d_passes_on_the_hand_built_transformer(model):
    value = h1d_statistic(model, modadd.key_frequencies(model))
    assert value >= H1D_KEY_SUM_MIN, value
    assert value >= 0.99, value  # the rings' harmonics carry 0.53% of their power


@pytest.mark.gate("H1d", "control")
def test_h1d_fails_on_the_untrained_transformer(config, model):
    untrained = config.build_model()
    untrained.reset_parameters(torch.Generator().manual_seed(0))
    value = h1d_statistic(untrained, modadd.key_frequencies(model))
    assert value < H1D_KEY_SUM_MIN, value


def test_it_is_the_preset_architecture_in_float32(config, model):
    reference = dict(config.build_model().named_parameters())
    built = dict(model.named_parameters())
    assert list(built) == list(reference)
    for name, parameter in built.items():
        assert parameter.shape == reference[name].shape, name
        assert parameter.dtype == torch.float32, name
    for layer in (model.mlp_in, model.mlp_out):
        assert layer.bias is None or not layer.bias.any()


def test_it_adds_modulo_p_on_every_pair(config, model, forward):
    logits = forward[0]
    a, b = modadd.pairs(config.p)
    assert logits.shape == (config.p**2, config.p)
    assert (logits.argmax(-1) == (a + b) % config.p).all()
    top2 = logits.topk(2, dim=-1).values
    # γ(|K| − max_{d≠0} Σ_k cos ω_k d) = 5 · 1.83, less the rings' harmonics
    assert (top2[:, 0] - top2[:, 1]).min() > 8.0


def test_its_key_frequencies_are_the_planted_ones(model):
    assert sorted(modadd.key_frequencies(model).tolist()) == sorted(KEY)
    power = embedding_frequency_power(model)
    share = power / power.sum()
    assert torch.allclose(share[[k - 1 for k in KEY]], torch.full((3,), 1 / 3, dtype=share.dtype))


def test_the_residual_stream_at_equals_is_a_function_of_the_sum(config, forward):
    resid = forward[2].double()  # (p², d_model)
    a, b = modadd.pairs(config.p)
    s = (a + b) % config.p
    for v in range(config.p):
        block = resid[s == v]
        assert (block - block[0]).abs().max() < 1e-5


def test_no_relu_sits_near_its_kink(forward):
    pre = forward[1]
    assert pre.abs().min() >= KINK_MARGIN_MIN


def test_the_equals_row_of_the_unembedding_is_unused(config, model, tokens):
    p = config.p
    assert not model.unembed.weight[p:].any()
    with torch.no_grad():
        assert model(tokens).shape[-1] == p


def test_each_ring_is_almost_a_pure_sinusoid_of_the_sum():
    p = 29
    for shift in hand_built.RING_SHIFTS:
        profile = hand_built.ring_profile(p, shift)
        power = torch.fft.rfft(profile - profile.mean()).abs().square()
        assert power[1] / power.sum() >= 0.994


def test_invalid_requests_are_refused(config):
    with pytest.raises(ValueError, match="at most"):
        modadd.fourier_transformer(config, key=range(1, 9))
    with pytest.raises(ValueError, match="distinct"):
        modadd.fourier_transformer(config, key=(3, 3))
    with pytest.raises(ValueError, match="d_mlp"):
        modadd.fourier_transformer(config.replace(d_mlp=128), key=KEY)
    with pytest.raises(ValueError, match="arch"):
        modadd.fourier_transformer(modadd.preset("lin2025_mlp"), key=KEY)


def test_the_docstring_example_runs():
    assert doctest.testmod(hand_built).failed == 0
