"""Per-channel eNTK blocks and the centred kernel–target alignment, against brute-force
float64 references: the full flattened kernel from ``torch.func.jacrev`` then sliced, and the
alignment from explicit centring matrices and loops."""

from __future__ import annotations

import doctest

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

import metrics.alignment
from metrics import centered_alignment, channel_blocks
from testbeds.tms import TMSModel


def full_flattened_kernel(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """(C·N, C·N) channel-major J Jᵀ from one ``jacrev`` of all outputs on all inputs."""
    model = model.double()
    params = {n: p.detach() for n, p in model.named_parameters()}
    x = inputs.double()

    def outputs(theta):
        return functional_call(model, theta, (x,)).reshape(len(x), -1).T.reshape(-1)  # (C·N,)

    jac = jacrev(outputs)(params)
    J = torch.cat([j.reshape(j.shape[0], -1) for j in jac.values()], 1)  # (C·N, P)
    return J @ J.T


def tms_model() -> TMSModel:
    model = TMSModel(6, 3)
    model.reset_parameters(torch.Generator().manual_seed(2))
    with torch.no_grad():
        model.b.copy_(torch.linspace(-0.2, 0.3, 6)[None])
    return model


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))


CASES = [
    {"model": tms_model, "inputs": lambda g: torch.rand(9, 6, generator=g), "C": 6},
    {"model": mlp, "inputs": lambda g: torch.randn(7, 4, generator=g), "C": 3},
]


@pytest.fixture(params=CASES, ids=["tms", "mlp"])
def case(request):
    g = torch.Generator().manual_seed(0)
    return request.param["model"](), request.param["inputs"](g), request.param["C"]


def test_channel_blocks_are_the_diagonal_blocks_of_the_full_kernel(case):
    model, x, C = case
    N = len(x)
    full = full_flattened_kernel(model, x)
    blocks = channel_blocks(model, x)
    assert blocks.shape == (C, N, N) and blocks.dtype == torch.float64
    for c in range(C):
        rows = slice(c * N, (c + 1) * N)
        torch.testing.assert_close(blocks[c], full[rows, rows], rtol=1e-10, atol=1e-12)
    picked = channel_blocks(model, x, channels=[2, 0])
    torch.testing.assert_close(picked, blocks[[2, 0]], rtol=1e-12, atol=1e-14)


def test_channel_blocks_in_chunks_match_one_pass(case):
    model, x, _ = case
    P = sum(p.numel() for p in model.parameters())
    chunked = channel_blocks(model, x, channels=[0, 1], max_jacobian_bytes=2 * 3 * P * 8)
    torch.testing.assert_close(chunked, channel_blocks(model, x, channels=[0, 1]))


def test_channel_blocks_validate_channels():
    with pytest.raises(ValueError, match=r"channels must be .* in 0\.\.5"):
        channel_blocks(tms_model(), torch.rand(4, 6), channels=[6])
    with pytest.raises(ValueError, match="channels must be a non-empty list"):
        channel_blocks(tms_model(), torch.rand(4, 6), channels=[])


def brute_alignment(K: torch.Tensor, t: torch.Tensor) -> float:
    N = len(t)
    H = torch.eye(N, dtype=torch.float64) - torch.full((N, N), 1.0 / N, dtype=torch.float64)
    Kc, tc = H @ K.double() @ H, H @ t.double()
    num = sum(tc[i] * Kc[i, j] * tc[j] for i in range(N) for j in range(N))
    frob = sum(Kc[i, j] ** 2 for i in range(N) for j in range(N)) ** 0.5
    return float(num / (frob * sum(v**2 for v in tc)))


def test_centered_alignment_matches_the_definition():
    g = torch.Generator().manual_seed(1)
    A = torch.randn(3, 8, 5, generator=g, dtype=torch.float64)
    K = A @ A.transpose(1, 2)
    t = torch.rand(3, 8, generator=g, dtype=torch.float64)
    rho = centered_alignment(K, t)
    assert rho.shape == (3,)
    for b in range(3):
        assert rho[b].item() == pytest.approx(brute_alignment(K[b], t[b]), rel=1e-12)
        assert centered_alignment(K[b], t[b]).item() == pytest.approx(rho[b].item(), rel=1e-14)
    assert ((rho >= 0) & (rho <= 1)).all()


def test_centered_alignment_invariances_and_edge_cases():
    g = torch.Generator().manual_seed(2)
    t = torch.rand(10, generator=g, dtype=torch.float64)
    tt = torch.outer(t, t)
    # a kernel built from the target is perfectly aligned, whatever constant it carries
    assert centered_alignment(tt + 5.0, t).item() == pytest.approx(1.0, abs=1e-12)
    A = torch.randn(10, 4, generator=g, dtype=torch.float64)
    K = A @ A.T
    base = centered_alignment(K, t).item()
    assert centered_alignment(7.0 * K, 3.0 * t + 2.0).item() == pytest.approx(base, rel=1e-12)
    # a kernel orthogonal to the centred target sees nothing of it
    tc = t - t.mean()
    u = torch.randn(10, generator=g, dtype=torch.float64)
    u = u - u.mean()
    u = u - (u @ tc) / (tc @ tc) * tc
    assert centered_alignment(torch.outer(u, u), t).item() == pytest.approx(0.0, abs=1e-12)
    # undefined cases are 0: a zero (or constant) kernel, a constant target
    assert centered_alignment(torch.zeros(10, 10), t).item() == 0.0
    assert centered_alignment(torch.ones(10, 10), t).item() == 0.0
    assert centered_alignment(K, torch.full((10,), 0.3)).item() == 0.0
    with pytest.raises(ValueError, match="kernels must be"):
        centered_alignment(K, t[:9])
    with pytest.raises(ValueError, match="finite"):
        centered_alignment(K, torch.full((10,), float("nan")))


def test_doctest():
    assert doctest.testmod(metrics.alignment).failed == 0
