"""Gradient-noise statistics against brute-force float64 references and planted cases."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from torch import nn

import metrics.noise
from metrics.eigensolvers import top_eigenpairs
from metrics.noise import GradientNoise, per_example_gradients


def tiny(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x = torch.randn(40, 3, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 2, (40,), generator=generator)

    def loss(z, t):
        return nn.functional.cross_entropy(z, t, reduction="none")

    return model, loss, x, y


def brute_force_gradients(model, loss, x, y) -> torch.Tensor:
    rows = []
    for i in range(len(x)):
        model.zero_grad()
        loss(model(x[i : i + 1]), y[i : i + 1]).sum().backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    return torch.stack(rows)


def test_docstring_example():
    assert doctest.testmod(metrics.noise).failed == 0


def test_per_example_gradients_match_autograd_loop():
    model, loss, x, y = tiny()
    G, layout = per_example_gradients(model, loss, x, y, chunk_size=7)
    torch.testing.assert_close(G, brute_force_gradients(model, loss, x, y), rtol=1e-12, atol=1e-14)
    assert [name for name, _ in layout] == [n for n, _ in model.named_parameters()]
    sub, _ = per_example_gradients(model, loss, x, y, params=["2.bias"])
    torch.testing.assert_close(sub, G[:, -2:])
    with pytest.raises(ValueError, match="unknown params"):
        per_example_gradients(model, loss, x, y, params=["nope"])


def test_covariance_identity_and_operators():
    model, loss, x, y = tiny(1)
    noise = GradientNoise.from_model(model, loss, x, y)
    G = brute_force_gradients(model, loss, x, y).numpy()
    reference = np.cov(G, rowvar=False, ddof=0)
    np.testing.assert_allclose(noise.covariance().numpy(), reference, atol=1e-14)
    mean = G.mean(0)
    np.testing.assert_allclose(
        noise.covariance().numpy(), G.T @ G / len(G) - np.outer(mean, mean), atol=1e-14
    )
    V = torch.randn(noise.n_params, 3, dtype=torch.float64)
    torch.testing.assert_close(noise.covariance_operator().matmat(V), noise.covariance() @ V)
    torch.testing.assert_close(noise.second_moment_operator().matmat(V), noise.second_moment() @ V)
    top = top_eigenpairs(noise.covariance_operator(), 3)
    dense = torch.linalg.eigvalsh(noise.covariance()).flip(0)[:3]
    torch.testing.assert_close(top.values, dense, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(noise.gsnr().numpy(), mean**2 / G.var(0), rtol=1e-10)
    # dense blocks of a parameter subset, as a mask or as indices
    cols = torch.tensor([0, 3, 5])
    mask = torch.zeros(noise.n_params, dtype=torch.bool)
    mask[cols] = True
    for subset in (cols, mask):
        np.testing.assert_allclose(
            noise.covariance(subset).numpy(), reference[np.ix_(cols, cols)], atol=1e-14
        )
        np.testing.assert_allclose(
            noise.second_moment(subset).numpy(), (G.T @ G / len(G))[np.ix_(cols, cols)]
        )
    with pytest.raises(ValueError, match="subset"):
        noise.covariance(torch.tensor([noise.n_params]))


def test_minibatch_mean_covariance_is_c_over_b():
    """Sampled: B examples drawn independently; every entry of the sample covariance of the
    batch means must be within 5 standard errors (estimated from the same S samples) of C/B."""
    model, loss, x, y = tiny(2)
    noise = GradientNoise.from_model(model, loss, x, y, params=["2.weight", "2.bias"])
    B, S = 8, 20000
    generator = torch.Generator().manual_seed(0)
    idx = torch.randint(0, noise.n_examples, (S, B), generator=generator)
    means = noise.G[idx].mean(1)  # (S, P)
    centred = means - means.mean(0)
    products = centred[:, :, None] * centred[:, None, :]  # (S, P, P)
    sample = products.sum(0) / (S - 1)
    stderr = products.std(0) / S**0.5
    deviation = (sample - noise.covariance() / B).abs()
    assert (deviation <= 5 * stderr + 1e-15).all(), (deviation / stderr).max()
    # and it is not C (a wrong scaling would be caught)
    assert ((sample - noise.covariance()).abs() > 5 * stderr).any()


def test_snr_planted_noise_block_and_random_splits():
    generator = torch.Generator().manual_seed(3)
    N, P = 400, 40
    coherent = 1.0 + 0.5 * torch.randn(N, P // 2, generator=generator, dtype=torch.float64)
    pure_noise = torch.randn(N, P // 2, generator=generator, dtype=torch.float64)
    pure_noise -= pure_noise.mean(0)  # zero mean gradient, same noise scale class
    noise = GradientNoise(torch.cat([coherent, pure_noise], 1))
    first = torch.arange(P) < P // 2
    assert noise.snr(first) > 100 * noise.snr(~first)
    assert noise.snr(~first) == pytest.approx(0.0, abs=1e-20)
    # B scales the noise term only
    assert noise.snr(first, batch_size=4) == pytest.approx(4 * noise.snr(first))
    # an orthonormal basis of coordinates gives the same value as the mask
    U = torch.eye(P, dtype=torch.float64)[:, first]
    assert noise.snr(U) == pytest.approx(noise.snr(first))
    # random splits of a homogeneous block: SNR ratio ≈ 1
    homogeneous = GradientNoise(coherent)
    ratios = []
    for s in range(20):
        perm = torch.randperm(P // 2, generator=torch.Generator().manual_seed(s))
        mask = torch.zeros(P // 2, dtype=torch.bool)
        mask[perm[: P // 4]] = True
        ratios.append(homogeneous.snr(mask) / homogeneous.snr(~mask))
    assert 1 / 1.5 <= float(np.median(ratios)) <= 1.5


def test_bad_inputs_name_the_field():
    noise = GradientNoise(torch.ones(3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="batch_size"):
        noise.snr(torch.ones(2, dtype=torch.bool), batch_size=0)
    with pytest.raises(ValueError, match="orthonormal"):
        noise.snr(torch.ones(2, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="NaN"):
        GradientNoise(torch.full((2, 2), float("nan")))


def test_unflatten_follows_the_layout():
    from metrics.noise import unflatten

    layout = [("w", torch.Size([2, 3])), ("b", torch.Size([2]))]
    V = torch.arange(16.0).reshape(8, 2)
    blocks = unflatten(V, layout)
    assert torch.equal(blocks["w"][1], V[:6, 1].reshape(2, 3))
    assert torch.equal(blocks["b"][0], V[6:, 0])
    with pytest.raises(ValueError, match="shape"):
        unflatten(V[:7], layout)
