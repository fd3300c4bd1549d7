"""The whitened eNTK against brute-force float64 Jacobians, the plain eNTK and planted metrics."""

from __future__ import annotations

import doctest

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

import metrics.whitened
from metrics.entk import entk
from metrics.noise import GradientNoise
from metrics.operators import flatten_full
from metrics.whitened import WhitenedKernel, noise_factor

TOL = {"rtol": 1e-10, "atol": 1e-12}
OUTPUTS = ["full", "trace", 1, "sum"]


class Gained(nn.Module):
    """Linear–tanh–gain–linear: ``gain`` is a bare parameter (the generic Jacobian path)."""

    def __init__(self, n_out: int = 2):
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(3, 5), nn.Linear(5, n_out)
        self.gain = nn.Parameter(torch.randn(5))

    def forward(self, x):
        return self.lin2(torch.tanh(self.lin1(x)) * self.gain)


def make(kind: str = "mlp", seed: int = 0, n: int = 10, n_out: int = 2):
    torch.manual_seed(seed)
    if kind == "mlp":
        model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, n_out))
    else:
        model = Gained(n_out)
    return model.double(), torch.randn(n, 3, dtype=torch.float64)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def jacobian(model, x) -> torch.Tensor:
    """Dense J (C·N, P), channel-major rows c·N + x, parameters flattened in model order."""
    params = dict(model.named_parameters())
    sizes = [p.numel() for p in params.values()]

    def f(flat):
        parts = flat.split(sizes)
        theta = {n: t.reshape(p.shape) for (n, p), t in zip(params.items(), parts, strict=True)}
        return functional_call(model, theta, (x,))  # (N, C)

    flat = torch.cat([p.detach().reshape(-1) for p in params.values()])
    J = jacrev(f)(flat)  # (N, C, P)
    return J.permute(1, 0, 2).reshape(-1, J.shape[-1])


def reference_kernel(J, M, output, C: int) -> torch.Tensor:
    """J M Jᵀ in entk's readout conventions."""
    J3 = J.reshape(C, -1, J.shape[-1])  # (C, N, P)
    if output == "full":
        return torch.einsum("cnp,pq,dmq->nmcd", J3, M, J3)
    if output == "trace":
        return torch.einsum("cnp,pq,cmq->nm", J3, M, J3) / C
    row = J3.sum(0) if output == "sum" else J3[output]
    return row @ M @ row.T


def random_factor(model, r: int = 7, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n_params(model), r, generator=generator, dtype=torch.float64)


def test_docstring_example():
    assert doctest.testmod(metrics.whitened).failed == 0


def test_noise_factor_reproduces_covariance_and_preconditioned_covariance():
    model, x = make()
    y = torch.randint(0, 2, (len(x),), generator=torch.Generator().manual_seed(0))

    def loss(z, t):
        return nn.functional.cross_entropy(z, t, reduction="none")

    noise = GradientNoise.from_model(model, loss, x, y)
    S = noise_factor(noise)
    assert S.shape == (noise.n_params, noise.n_examples)
    torch.testing.assert_close(S @ S.T, noise.covariance(), **TOL)
    S2 = noise_factor(noise, centered=False)
    torch.testing.assert_close(S2 @ S2.T, noise.second_moment(), **TOL)
    d = torch.rand(noise.n_params, dtype=torch.float64) + 0.1
    Sd = noise_factor(noise, d)
    torch.testing.assert_close(Sd @ Sd.T, torch.diag(d) @ noise.covariance() @ torch.diag(d))
    # end to end: rows follow noise.layout, and the kernel is J C Jᵀ
    wk = WhitenedKernel(model, x, S, layout=noise.layout, output="full")
    reference = reference_kernel(jacobian(model, x), noise.covariance(), "full", 2)
    torch.testing.assert_close(wk.data_kernel(), reference, **TOL)
    with pytest.raises(ValueError, match="preconditioner must have shape"):
        noise_factor(noise, d[:-1])
    with pytest.raises(ValueError, match="preconditioner must be finite and positive"):
        noise_factor(noise, -d)


@pytest.mark.parametrize("kind", ["mlp", "gained"])
@pytest.mark.parametrize("output", OUTPUTS)
def test_data_kernel_is_J_M_Jt(kind, output):
    model, x = make(kind)
    S = random_factor(model)
    K = WhitenedKernel(model, x, S, output=output, block=3).data_kernel()
    torch.testing.assert_close(K, reference_kernel(jacobian(model, x), S @ S.T, output, 2), **TOL)


@pytest.mark.parametrize("kind", ["mlp", "gained"])
@pytest.mark.parametrize("output", OUTPUTS)
def test_identity_factor_is_plain_entk(kind, output):
    model, x = make(kind)
    eye = torch.eye(n_params(model), dtype=torch.float64)
    K = WhitenedKernel(model, x, eye, output=output).data_kernel()
    torch.testing.assert_close(K, entk(model, x, output=output), **TOL)


@pytest.mark.parametrize("kind", ["mlp", "gained"])
def test_parameter_kernel_and_its_spectrum(kind):
    model, x = make(kind)
    S, J, C = random_factor(model, r=30), jacobian(model, x), 2
    gram = S.T @ J.T @ J @ S  # (r, r)
    full = WhitenedKernel(model, x, S, output="full")
    torch.testing.assert_close(full.parameter_kernel(), gram, **TOL)
    # "full": nonzero eigenvalues of Sᵀ JᵀJ S equal those of the flattened J M Jᵀ
    rank = min(S.shape[1], C * len(x))
    top_param = torch.linalg.eigvalsh(full.parameter_kernel()).flip(0)[:rank]
    top_data = torch.linalg.eigvalsh(flatten_full(full.data_kernel())).flip(0)[:rank]
    torch.testing.assert_close(top_param, top_data, **TOL)
    # "trace": Θ_w = gram / C with equal trace; C·Θ_w shares the spectrum of the full kernel,
    # C·K_w is the sum of its diagonal blocks, and K_w's spectrum is weakly majorised by C·λ(Θ_w)
    trace = WhitenedKernel(model, x, S, output="trace")
    theta, K = trace.parameter_kernel(), trace.data_kernel()
    torch.testing.assert_close(theta, gram / C, **TOL)
    torch.testing.assert_close(theta.trace(), K.trace(), **TOL)
    lam_theta = torch.linalg.eigvalsh(theta).flip(0)
    torch.testing.assert_close(C * lam_theta[:rank], top_data, **TOL)
    full_flat = flatten_full(full.data_kernel())
    n = len(x)
    blocks = sum(full_flat[c * n : (c + 1) * n, c * n : (c + 1) * n] for c in range(C))
    torch.testing.assert_close(K, blocks / C, **TOL)
    lam_K = torch.linalg.eigvalsh(K).flip(0)
    assert (lam_K.cumsum(0) <= C * lam_theta[:n].cumsum(0) + 1e-10).all()


def test_trace_kernel_eigenvalues_do_not_interlace():
    model, x = make()
    wk = WhitenedKernel(model, x, random_factor(model, r=1), output="trace")
    assert torch.linalg.matrix_rank(wk.parameter_kernel()) == 1
    assert torch.linalg.matrix_rank(wk.data_kernel()) == 2  # λ₂(K_w) > 0 = C·λ₂(Θ_w)


def test_trace_spectra_agree_for_one_output():
    model, x = make("gained", n_out=1)
    wk = WhitenedKernel(model, x, random_factor(model, r=30), output="trace")
    n = len(x)
    top_param = torch.linalg.eigvalsh(wk.parameter_kernel()).flip(0)[:n]
    torch.testing.assert_close(top_param, torch.linalg.eigvalsh(wk.data_kernel()).flip(0), **TOL)


@pytest.mark.parametrize("output", ["full", "trace"])
def test_eigenpairs_map_through_S_and_J(output):
    model, x = make("gained")
    S, J, k = random_factor(model, r=12), jacobian(model, x), 5
    wk = WhitenedKernel(model, x, S, output=output)
    pairs = wk.eigenpairs(k)
    theta = wk.parameter_kernel()
    torch.testing.assert_close(pairs.values, torch.linalg.eigvalsh(theta).flip(0)[:k], **TOL)
    u = pairs.coefficients
    torch.testing.assert_close(u.T @ u, torch.eye(k, dtype=torch.float64), **TOL)
    torch.testing.assert_close(theta @ u, u * pairs.values, **TOL)
    torch.testing.assert_close(pairs.directions, S @ u, **TOL)
    torch.testing.assert_close(pairs.images, J @ pairs.directions, **TOL)
    torch.testing.assert_close(pairs.images, wk.A @ u, **TOL)
    if output == "full":  # J v is an eigenvector of the flattened data-space kernel
        K = flatten_full(wk.data_kernel())
        torch.testing.assert_close(K @ pairs.images, pairs.images * pairs.values, **TOL)
    with pytest.raises(ValueError, match="k must be an int in 1..12"):
        wk.eigenpairs(13)


def test_zero_metric_on_a_group_leaves_the_other_groups_eNTK():
    model, x = make()
    P1 = sum(p.numel() for p in model[0].parameters())
    P2 = sum(p.numel() for p in model[2].parameters())
    S = torch.cat([torch.zeros(P1, P2), torch.eye(P2)]).double()  # M = 0 on layer 0
    for output in ["full", "trace"]:
        expected = entk(model, x, output=output, groups={"l2": ["2"]})
        K = WhitenedKernel(model, x, S, output=output).data_kernel()
        torch.testing.assert_close(K, expected, **TOL)
        eye = torch.eye(P2, dtype=torch.float64)
        restricted = WhitenedKernel(model, x, eye, output=output, groups={"l2": ["2"]})
        torch.testing.assert_close(restricted.data_kernel(), expected, **TOL)


def test_bad_inputs_name_the_field():
    model, x = make("gained")
    S = random_factor(model)
    with pytest.raises(ValueError, match=r"factor must have shape \(37, r\)"):
        WhitenedKernel(model, x, S[:-1])
    with pytest.raises(ValueError, match="factor must have shape"):
        WhitenedKernel(model, x, S[:, 0])
    bad = S.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="factor contains NaN or Inf"):
        WhitenedKernel(model, x, bad)
    layout = [(n, p.shape) for n, p in model.named_parameters()]
    WhitenedKernel(model, x, S, layout=layout)
    with pytest.raises(ValueError, match="layout must match"):
        WhitenedKernel(model, x, S, layout=layout[::-1])
    with pytest.raises(ValueError, match="layout must match"):
        WhitenedKernel(model, x, S, layout=[("theta", torch.Size([37]))])
    with pytest.raises(ValueError, match="block must be a positive int"):
        WhitenedKernel(model, x, S, block=0)


def test_model_is_not_modified():
    model, x = make("gained")
    model = model.float()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    WhitenedKernel(model, x.float(), random_factor(model).float(), output="full").eigenpairs(3)
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32
        assert torch.equal(p.detach(), before[name])
