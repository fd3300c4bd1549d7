"""Hessian and Gauss–Newton operators and Hutchinson traces against brute-force float64
references: ``torch.autograd.functional.hessian`` of the flat-parameter loss, Jᵀ H_z J from the
full Jacobian, dense eigendecompositions and exact traces."""

from __future__ import annotations

import copy
import doctest

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

import metrics.curvature
from metrics.curvature import (
    GaussNewtonOperator,
    gauss_newton_operator,
    hessian_operator,
    hutchinson_trace,
)
from metrics.eigensolvers import top_eigenpairs

N, D, C = 12, 3, 3
BATCH = 5  # batches of 5, 5, 2: the operators must sum unequal mini-batches correctly
LOSSES = ("mse", "cross_entropy")
TOL = {"rtol": 1e-10, "atol": 1e-12}


def mlp(seed: int = 0, linear: bool = False) -> nn.Module:
    """float32 tanh MLP with 45 parameters, or a linear model with 12."""
    torch.manual_seed(seed)
    if linear:
        return nn.Linear(D, C)
    return nn.Sequential(nn.Linear(D, 6), nn.Tanh(), nn.Linear(6, C))


def data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(N, D, generator=generator), torch.randint(0, C, (N,), generator=generator)


def flat_model(model: nn.Module, x: torch.Tensor):
    """θ (P,) and the map θ ↦ z (N, C), float64, through a float64 copy of ``model``."""
    net = copy.deepcopy(model).double()
    shapes = {n: p.shape for n, p in net.named_parameters()}
    theta = torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    def outputs(flat: torch.Tensor) -> torch.Tensor:
        pieces = flat.split([s.numel() for s in shapes.values()])
        params = {n: t.reshape(s) for (n, s), t in zip(shapes.items(), pieces, strict=True)}
        return functional_call(net, params, (x.double(),))

    return theta, outputs


def mean_loss(name: str, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if name == "mse":  # the repo's convention: a mean over N·C entries
        return nn.functional.mse_loss(z, nn.functional.one_hot(y, C).to(z.dtype))
    return nn.functional.cross_entropy(z, y)


def reference_hessian(model, loss, x, y) -> torch.Tensor:
    theta, outputs = flat_model(model, x)
    return torch.autograd.functional.hessian(lambda t: mean_loss(loss, outputs(t), y), theta)


def reference_gauss_newton(model, loss, x, y) -> torch.Tensor:
    theta, outputs = flat_model(model, x)
    J = jacrev(outputs)(theta)  # (N, C, P)
    if loss == "mse":
        Hz = 2 / (N * C) * torch.eye(C, dtype=torch.float64).expand(N, C, C)
    else:
        p = outputs(theta).softmax(-1)  # (N, C)
        Hz = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]) / N
    return torch.einsum("nap,nab,nbq->pq", J, Hz, J)


def test_docstring_example():
    assert doctest.testmod(metrics.curvature).failed == 0


@pytest.mark.parametrize("loss", LOSSES)
def test_hessian_matches_autograd_over_batches(loss):
    model, (x, y) = mlp(), data()
    op = hessian_operator(model, loss, x, y, batch_size=BATCH)
    assert op.shape == (45, 45)
    H = op.dense(block=7)
    torch.testing.assert_close(H, reference_hessian(model, loss, x, y), **TOL)
    torch.testing.assert_close(hessian_operator(model, loss, x, y).dense(), H, **TOL)
    assert [n for n, _ in op.layout] == [n for n, _ in model.named_parameters()]


@pytest.mark.parametrize("loss", LOSSES)
def test_gauss_newton_matches_jacobian_reference(loss):
    model, (x, y) = mlp(1), data(1)
    G = gauss_newton_operator(model, loss, x, y, batch_size=BATCH).dense()
    torch.testing.assert_close(G, reference_gauss_newton(model, loss, x, y), **TOL)
    torch.testing.assert_close(G, G.T, rtol=0, atol=1e-14)
    assert torch.linalg.eigvalsh(G).min() > -1e-12
    # the residual term is not negligible on this model: G differs from the Hessian
    H = hessian_operator(model, loss, x, y, batch_size=BATCH).dense()
    assert (H - G).abs().max() > 1e-3


def test_gauss_newton_is_the_hessian_of_a_linear_model_under_mse():
    model, (x, y) = mlp(2, linear=True), data(2)
    G = gauss_newton_operator(model, "mse", x, y, batch_size=BATCH).dense()
    H = hessian_operator(model, "mse", x, y, batch_size=BATCH).dense()
    torch.testing.assert_close(G, H, **TOL)


@pytest.mark.parametrize("loss", LOSSES)
def test_loss_modules_match_strings(loss):
    model, (x, y) = mlp(), data()
    if loss == "mse":
        module, targets = nn.MSELoss(), nn.functional.one_hot(y, C).float()
    else:
        module, targets = nn.CrossEntropyLoss(), y
    for build in (hessian_operator, gauss_newton_operator):
        torch.testing.assert_close(
            build(model, module, x, targets, batch_size=BATCH).dense(),
            build(model, loss, x, y).dense(),
            **TOL,
        )


def test_matmat_block_equals_columns_and_counts():
    model, (x, y) = mlp(), data()
    op = hessian_operator(model, "cross_entropy", x, y, batch_size=BATCH)
    V = torch.randn(45, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    block = op.matmat(V)
    assert block.shape == (45, 4) and block.dtype == torch.float64
    columns = torch.stack([op.matmat(V[:, i]) for i in range(4)], 1)
    assert op.matmat(V[:, 0]).shape == (45,)
    torch.testing.assert_close(block, columns, **TOL)
    assert op.matvecs == 4 + 4 + 1
    assert op.matmat(V.float()).dtype == torch.float64


@pytest.mark.parametrize("build", [hessian_operator, gauss_newton_operator])
def test_lanczos_top_eigenpairs_match_dense_reference(build):
    model, (x, y) = mlp(3), data(3)
    reference = (reference_hessian if build is hessian_operator else reference_gauss_newton)(
        model, "cross_entropy", x, y
    )
    values, vectors = torch.linalg.eigh(reference)
    values, vectors = values.flip(0)[:4], vectors.flip(1)[:, :4]
    op = build(model, "cross_entropy", x, y, batch_size=BATCH)
    pairs = top_eigenpairs(op, 4, method="lanczos", tol=1e-12)
    torch.testing.assert_close(pairs.values, values, rtol=1e-8, atol=0)
    cosines = (pairs.vectors * vectors).sum(0).abs()
    torch.testing.assert_close(cosines, torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-8)
    assert pairs.matvecs > 0


def test_params_subset_is_the_sub_block_in_the_given_order():
    model, (x, y) = mlp(), data()
    full = hessian_operator(model, "mse", x, y, batch_size=BATCH)
    offsets, start = {}, 0
    for name, shape in full.layout:
        offsets[name] = torch.arange(start, start + shape.numel())
        start += shape.numel()
    names = ["2.weight", "0.bias"]
    sub = hessian_operator(model, "mse", x, y, params=names, batch_size=BATCH)
    assert sub.layout == [("2.weight", torch.Size([3, 6])), ("0.bias", torch.Size([6]))]
    index = torch.cat([offsets[n] for n in names])
    torch.testing.assert_close(sub.dense(), full.dense()[index][:, index], **TOL)


def test_hutchinson_on_dense_psd_matrix():
    generator = torch.Generator().manual_seed(0)
    B = torch.randn(30, 30, generator=generator, dtype=torch.float64)
    A = B @ B.T
    state = torch.get_rng_state()
    estimate, se = hutchinson_trace(A, 200, seed=1)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    assert 0 < se and abs(estimate - A.trace().item()) < 5 * se
    assert hutchinson_trace(A, 200, seed=1) == (estimate, se)
    assert hutchinson_trace(A, 200, seed=2)[0] != estimate
    normal, se_normal = hutchinson_trace(A, 200, seed=1, distribution="normal")
    assert normal != estimate and abs(normal - A.trace().item()) < 5 * se_normal
    # Rademacher vectors are exact on a diagonal matrix
    assert hutchinson_trace(torch.diag(torch.arange(5.0)), 3) == (10.0, 0.0)


def test_hutchinson_on_gauss_newton_operator():
    model, (x, y) = mlp(), data()
    op = gauss_newton_operator(model, "cross_entropy", x, y, batch_size=BATCH)
    exact = reference_gauss_newton(model, "cross_entropy", x, y).trace().item()
    estimate, se = op.trace(100, seed=3)
    assert op.matvecs == 100
    assert abs(estimate - exact) < 5 * se
    assert op.trace(100, seed=3) == (estimate, se)
    assert op.trace(100, seed=4) != (estimate, se)


def test_model_is_left_untouched():
    model, (x, y) = mlp(), data()
    model.train()
    before = copy.deepcopy(model.state_dict())
    op = hessian_operator(model, "cross_entropy", x, y, batch_size=BATCH)
    op.dense()
    op.trace(3)
    assert model.training
    for name, tensor in model.state_dict().items():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, before[name])
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"loss": "l1"}, "loss"),
        ({"loss": nn.L1Loss()}, "loss"),
        ({"loss": nn.MSELoss(reduction="none")}, "loss"),
        ({"params": ["nope"]}, "params"),
        ({"params": []}, "params"),
        ({"targets": torch.zeros(N - 1, dtype=torch.long)}, "targets"),
        ({"targets": torch.full((N,), C)}, "targets"),
        ({"targets": torch.zeros(N)}, "targets"),
        ({"batch_size": 0}, "batch_size"),
        ({"dtype": torch.long}, "dtype"),
    ],
)
def test_bad_inputs_name_the_field(kwargs, field):
    x, y = data()
    args = {"model": mlp(), "loss": "mse", "inputs": x, "targets": y, **kwargs}
    with pytest.raises(ValueError, match=field):
        hessian_operator(**args)


def test_bad_operator_calls_raise(monkeypatch):
    model, (x, y) = mlp(), data()
    op = gauss_newton_operator(model, "mse", x, y)
    with pytest.raises(ValueError, match="V must have shape"):
        op.matmat(torch.zeros(44))
    for bad in (0, -1, 2.0):
        with pytest.raises(ValueError, match="num_matvecs"):
            hutchinson_trace(op, bad)
    with pytest.raises(ValueError, match="distribution"):
        hutchinson_trace(op, 2, distribution="uniform")
    with pytest.raises(ValueError, match="square"):
        hutchinson_trace(torch.zeros(3, 4), 2)
    monkeypatch.setattr(metrics.curvature, "DENSE_MAX_PARAMS", 10)
    with pytest.raises(ValueError, match="dense\\(\\) builds at most 10"):
        op.dense()


def per_example(name: str):
    if name == "mse":
        classes = torch.arange(C)  # one_hot is not vmap-safe; a comparison is
        return lambda z, y: ((z - (y[:, None] == classes).to(z.dtype)) ** 2).mean(-1)
    return lambda z, y: nn.functional.cross_entropy(z, y, reduction="none")


@pytest.mark.parametrize("loss", LOSSES)
def test_generic_gauss_newton_agrees_with_curvlinops_and_reference(loss):
    model, (x, y) = mlp(), data()
    generic = GaussNewtonOperator(model, per_example(loss), x, y)
    eye = torch.eye(generic.shape[0], dtype=torch.float64)
    dense = generic.matmat(eye)
    torch.testing.assert_close(dense, reference_gauss_newton(model, loss, x, y), **TOL)
    torch.testing.assert_close(dense, gauss_newton_operator(model, loss, x, y).dense(), **TOL)
    v = torch.randn(generic.shape[0], dtype=torch.float64)
    torch.testing.assert_close(generic.matmat(v), dense @ v, **TOL)
    assert [n for n, _ in generic.layout] == [n for n, _ in model.named_parameters()]


def test_generic_gauss_newton_on_a_loss_curvlinops_lacks():
    """An importance-weighted squared error (the TMS loss shape): G = Jᵀ diag(2w/(N·C)) J."""
    model, (x, _) = mlp(1), data(1)
    target = torch.randn(N, C, dtype=torch.float64)
    w = torch.tensor([1.0, 0.5, 0.1], dtype=torch.float64)
    generic = GaussNewtonOperator(model, lambda z, t: (w * (z - t) ** 2).mean(-1), x, target)
    theta, outputs = flat_model(model, x)
    J = jacrev(outputs)(theta)
    reference = torch.einsum("nap,a,naq->pq", J, 2 * w / (N * C), J)
    torch.testing.assert_close(
        generic.matmat(torch.eye(len(theta), dtype=torch.float64)), reference, **TOL
    )
    top = top_eigenpairs(generic, 3)
    torch.testing.assert_close(
        top.values, torch.linalg.eigvalsh(reference).flip(0)[:3], rtol=1e-8, atol=1e-12
    )
