r"""The loss Hessian and the Gauss–Newton matrix as matrix-free operators, and trace estimates.

For a model z = f(x; θ) with C outputs, P parameters and the full-data loss

.. math::  L(\theta) = \frac1N \sum_{n=1}^N \ell(f(x_n; \theta), y_n),

with J_n = ∂f(x_n)/∂θ (C × P) and H_n = ∇²_z ℓ (C × C), the Hessian splits as

.. math::  \nabla^2 L = \underbrace{\frac1N \sum_n J_n^\top H_n J_n}_{G \text{ (Gauss–Newton)}}
           + \frac1N \sum_n \sum_c \frac{\partial \ell}{\partial z_c}\, \nabla^2_\theta f_c(x_n).

The second term weighs each output's curvature by its residual; it vanishes for a model linear
in θ and at a perfect fit. G is symmetric positive semi-definite whenever ℓ is convex in z:
for ``"mse"`` (this repo's ``F.mse_loss(z, one_hot(y))``, a mean over N·C entries) H_n = 2/C · I,
for ``"cross_entropy"`` H_n = diag(p_n) − p_n p_nᵀ with p_n = softmax(z_n).

:func:`hessian_operator` and :func:`gauss_newton_operator` return a :class:`CurvatureOperator`
(``shape``, ``matmat``, ``dense``, ``trace``), usable by :func:`metrics.top_eigenpairs`. The
products come from curvlinops (F. Dangel et al., github.com/f-dangel/curvlinops):
``HessianLinearOperator`` (Hessian-vector products by forward-over-reverse differentiation)
and ``GGNLinearOperator`` (Jᵀ H J v), each summing mini-batches of ``batch_size`` with weight
B/N so that the result is ∇²L of the full-data mean. Written here: the float64 copy of the
model, the loss conventions, input checks, the flat column layout and :func:`hutchinson_trace`.

curvlinops' GGN needs the loss as a torch criterion (``nn.MSELoss``, ``nn.CrossEntropyLoss``…).
For any other per-example loss ℓ(z, y) — an importance-weighted MSE, a probe's score —
:class:`GaussNewtonOperator` builds G from the eNTK engine's J and Jᵀ products
(``metrics.operators.EntkOperator``) and per-example output Hessians H_n = ∇²_z ℓ computed by
``torch.func.hessian``; tests check that the two agree where both apply.

Example — a linear model under MSE, where ∇²L = 2/(N·C) · I_C ⊗ XᵀX::

    >>> import torch
    >>> x = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    >>> y = torch.tensor([0, 1, 2, 0, 1, 2])
    >>> net = torch.nn.Linear(4, 3, bias=False)
    >>> H = hessian_operator(net, "mse", x, y, batch_size=4).dense()
    >>> X = x.double()
    >>> torch.allclose(H, 2 / (6 * 3) * torch.kron(torch.eye(3, dtype=torch.float64), X.T @ X))
    True
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.func import hessian, vmap

from metrics.eigensolvers import DenseOperator
from metrics.noise import unflatten
from metrics.operators import EntkOperator


@contextmanager
def _quiet_jit():
    """Silence the ``torch.jit.script`` deprecation notices raised when curvlinops imports
    ``linear_operator`` and when torch first loads its forward-mode decompositions."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")
        yield


def _linear_operators():
    """curvlinops' Hessian and GGN operator classes, imported on first use so that the rest of
    ``metrics`` loads where curvlinops is not installed."""
    with _quiet_jit():
        from curvlinops import GGNLinearOperator, HessianLinearOperator
    return HessianLinearOperator, GGNLinearOperator


if TYPE_CHECKING:
    from curvlinops import GGNLinearOperator, HessianLinearOperator

LOSSES = ("mse", "cross_entropy")
DISTRIBUTIONS = ("rademacher", "normal")
DENSE_MAX_PARAMS = 20_000  # dense() refuses larger operators (20 000² float64 = 3.2 GB)
TRACE_BLOCK = 32  # random vectors per matmat in hutchinson_trace


class CurvatureOperator:
    """A P × P curvature matrix behind the operator interface, columns laid out as ``layout``.

    ``matmat(V)`` applies it to V (P,) or (P, b) in the operator's dtype and returns float64 of
    V's shape on V's device; ``matvecs`` counts the vectors applied; ``linop`` is the wrapped
    curvlinops operator.
    """

    def __init__(
        self, linop: HessianLinearOperator | GGNLinearOperator, layout: list[tuple[str, torch.Size]]
    ):
        self.linop = linop
        self.layout = layout
        self.shape = tuple(linop.shape)
        self.dtype = linop.dtype
        self.matvecs = 0

    def matmat(self, V: Tensor) -> Tensor:
        """The matrix times V (P,) or (P, b), float64 of V's shape."""
        P = self.shape[0]
        if V.dim() not in (1, 2) or V.shape[0] != P:
            raise ValueError(f"V must have shape ({P},) or ({P}, b), got {tuple(V.shape)}")
        with _quiet_jit():
            out = self.linop @ V.detach().to(self.linop.device, self.dtype)
        self.matvecs += 1 if V.dim() == 1 else V.shape[1]
        return out.to(V.device, torch.float64)

    def dense(self, block: int = 256) -> Tensor:
        """The matrix (P, P) in float64, built from ``block`` identity columns at a time."""
        P = self.shape[0]
        if P > DENSE_MAX_PARAMS:
            raise ValueError(
                f"dense() builds at most {DENSE_MAX_PARAMS} parameters, this operator has {P}; "
                "use metrics.eigensolvers.top_eigenpairs or hutchinson_trace"
            )
        eye = torch.eye(P, dtype=torch.float64)
        return torch.cat([self.matmat(eye[:, i : i + block]) for i in range(0, P, block)], 1)

    def trace(
        self, num_matvecs: int, seed: int = 0, distribution: str = "rademacher"
    ) -> tuple[float, float]:
        """Hutchinson estimate of the trace and its standard error (:func:`hutchinson_trace`)."""
        return hutchinson_trace(self, num_matvecs, seed=seed, distribution=distribution)


def hessian_operator(
    model: nn.Module,
    loss: str | nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    params: Sequence[str] | None = None,
    batch_size: int = 256,
    dtype: torch.dtype = torch.float64,
) -> CurvatureOperator:
    """The Hessian ∇²L (P, P) of the full-data mean loss (module docstring).

    Args:
        model: the network, copied to ``dtype`` in eval mode; the original is left untouched.
        loss: ``"mse"`` or ``"cross_entropy"`` with integer class targets (N,), or an
            ``nn.MSELoss`` / ``nn.CrossEntropyLoss`` with targets already in its form (its
            ``reduction``, ``"mean"`` or ``"sum"``, sets the normalisation).
        inputs, targets: the N examples, (N, ...) each; floating inputs are cast to ``dtype``.
        params: parameter names, in column order (default: all trainable, in model order);
            each tensor is flattened row-major.
        batch_size: examples per forward/backward pass (does not change the result).
        dtype: arithmetic precision (float64 so that Lanczos reaches tight tolerances).
    """
    hessian_class, _ = _linear_operators()
    return _build(hessian_class, model, loss, inputs, targets, params, batch_size, dtype)


def gauss_newton_operator(
    model: nn.Module,
    loss: str | nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    params: Sequence[str] | None = None,
    batch_size: int = 256,
    dtype: torch.dtype = torch.float64,
) -> CurvatureOperator:
    """The Gauss–Newton matrix G = (1/N) Σ J_nᵀ H_n J_n (P, P); arguments as
    :func:`hessian_operator`."""
    _, ggn_class = _linear_operators()
    return _build(ggn_class, model, loss, inputs, targets, params, batch_size, dtype)


class GaussNewtonOperator:
    """G = (1/N) Σ_n J_nᵀ H_n J_n for any per-example loss, H_n = ∇²_z ℓ(f(x_n), y_n).

    Args:
        model: the network (copied to ``dtype`` by the eNTK operator; the original is untouched).
        loss: per-example loss ``loss(outputs (n, C), targets (n, ...)) -> (n,)``, twice
            differentiable in the outputs and ``vmap``-safe (no ``.item()`` or
            ``F.one_hot``; compare with ``torch.arange(C)`` instead).
        inputs, targets: the N examples.
        groups: restrict to parameter groups as in ``metrics.entk`` (default: all parameters).
        dtype: arithmetic precision.

    ``shape`` (P, P), ``matmat(V)``, ``matvecs``, ``layout`` (columns: the parameters in the
    eNTK operator's order, each flattened), ``jacobian`` (the underlying
    :class:`~metrics.operators.EntkOperator`, rows channel-major) and ``output_hessians`` (N, C, C).
    """

    def __init__(
        self,
        model: nn.Module,
        loss,
        inputs: Tensor,
        targets: Tensor,
        *,
        groups=None,
        dtype: torch.dtype = torch.float64,
    ):
        if len(inputs) == 0 or len(inputs) != len(targets):
            raise ValueError(
                f"inputs and targets must hold the same number (≥ 1) of examples, "
                f"got {len(inputs)} inputs and {len(targets)} targets"
            )
        self.jacobian = EntkOperator(model, inputs, output="full", groups=groups, dtype=dtype)
        op = self.jacobian
        with torch.no_grad():
            z = op.model(op.inputs).reshape(op.N, -1)  # (N, C)

        def one(zn: Tensor, yn: Tensor) -> Tensor:
            value = loss(zn[None], yn[None])
            if value.shape != (1,):
                raise ValueError(
                    f"loss must return one value per example, got {tuple(value.shape)}"
                )
            return value[0]

        with _quiet_jit():  # forward-mode (jacfwd) loads torch's decompositions on first use
            self.output_hessians = vmap(hessian(one))(z, targets).detach()  # (N, C, C)
        self.layout = [(n, op.param_shapes[n]) for n in op.names]
        P = op.n_params
        self.shape = (P, P)
        self.dtype = dtype
        self.matvecs = 0

    def matmat(self, V: Tensor) -> Tensor:
        """G V for V (P,) or (P, b), float64 of V's shape."""
        P = self.shape[0]
        if V.dim() not in (1, 2) or V.shape[0] != P:
            raise ValueError(f"V must have shape ({P},) or ({P}, b), got {tuple(V.shape)}")
        vector = V.dim() == 1
        V = V.detach().to(self.dtype).reshape(P, -1)
        op = self.jacobian
        Z = op._to_batch(op.matvec_jacobian(unflatten(V, self.layout)))  # (b, N, C)
        HZ = torch.einsum("nrs,bns->bnr", self.output_hessians.to(self.dtype), Z) / op.N
        grads = op.rmatvec_jacobian(op._from_batch(HZ))
        out = torch.cat([grads[n].reshape(V.shape[1], -1) for n, _ in self.layout], 1).T
        self.matvecs += V.shape[1]
        return (out[:, 0] if vector else out).double()


def _build(cls, model, loss, inputs, targets, params, batch_size, dtype) -> CurvatureOperator:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got dtype={dtype!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got batch_size={batch_size!r}")
    if len(inputs) == 0 or len(inputs) != len(targets):
        raise ValueError(
            f"inputs and targets must hold the same number (≥ 1) of examples, "
            f"got {len(inputs)} inputs and {len(targets)} targets"
        )
    net = copy.deepcopy(model).to(dtype).eval()
    named = {n: p for n, p in net.named_parameters() if p.requires_grad}
    names = list(named) if params is None else list(params)
    unknown = [n for n in names if n not in named]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(
            f"params must be distinct trainable parameter names, got {names}"
            f" (unknown: {unknown}); trainable parameters: {list(named)}"
        )
    device = next(iter(named.values())).device
    x = inputs.to(device, dtype) if inputs.is_floating_point() else inputs.to(device)
    loss_func, y = _loss_and_targets(net, loss, x, targets.to(device), dtype)
    data = list(zip(x.split(batch_size), y.split(batch_size), strict=True))
    # the data are fixed tensors and the copy is in eval mode, so curvlinops' determinism probe
    # (two extra passes, drawing from the global RNG) is skipped; num_data saves a count pass
    linop = cls(
        net,
        loss_func,
        [named[n] for n in names],
        data,
        check_deterministic=False,
        num_data=len(x),
    )
    return CurvatureOperator(linop, [(n, named[n].shape) for n in names])


def _loss_and_targets(
    net: nn.Module, loss: str | nn.Module, x: Tensor, targets: Tensor, dtype: torch.dtype
) -> tuple[nn.Module, Tensor]:
    """The curvlinops criterion and the targets in its form."""
    if isinstance(loss, nn.MSELoss | nn.CrossEntropyLoss):
        if loss.reduction not in ("mean", "sum"):
            raise ValueError(f"loss must reduce by 'mean' or 'sum', got {loss.reduction!r}")
        if getattr(loss, "weight", None) is not None and loss.reduction == "mean":
            raise ValueError("loss: class weights with reduction='mean' are not supported")
        return loss, targets.to(dtype) if targets.is_floating_point() else targets
    if not isinstance(loss, str) or loss not in LOSSES:
        raise ValueError(
            f"loss must be one of {LOSSES} or an nn.MSELoss / nn.CrossEntropyLoss, got {loss!r}"
        )
    with torch.no_grad():
        out = net(x[:1])
    if out.dim() != 2:
        raise ValueError(f"loss={loss!r} needs outputs (N, C), got {tuple(out.shape)} for N=1")
    C = out.shape[1]
    if targets.dim() != 1 or targets.is_floating_point() or targets.dtype == torch.bool:
        raise ValueError(f"targets must be integer class labels (N,) for loss={loss!r}")
    if targets.min() < 0 or targets.max() >= C:
        lo, hi = targets.min().item(), targets.max().item()
        raise ValueError(f"targets must lie in 0..{C - 1}, got values in {lo}..{hi}")
    if loss == "mse":
        return nn.MSELoss(reduction="mean"), nn.functional.one_hot(targets, C).to(dtype)
    return nn.CrossEntropyLoss(reduction="mean"), targets


def hutchinson_trace(
    operator, num_matvecs: int, *, seed: int = 0, distribution: str = "rademacher"
) -> tuple[float, float]:
    r"""Girard–Hutchinson estimate of tr A and its standard error (Girard 1989, "A fast
    'Monte-Carlo cross-validation' procedure"; Hutchinson 1989, "A stochastic estimator of the
    trace of the influence matrix for Laplacian smoothing splines").

    With m vectors v_i of i.i.d. entries (E[v vᵀ] = I), q_i = v_iᵀ A v_i is unbiased for tr A;
    the estimate is mean(q) and the standard error std(q) / √m (sample std; nan for m = 1).
    For symmetric A, Rademacher vectors give Var q = 2 Σ_{i≠j} A_ij² (Gaussian ones 2 ‖A‖_F²),
    so they are exact on diagonal matrices.

    The vectors come from a ``torch.Generator`` seeded with ``seed``: the result is
    reproducible and the global RNG is untouched. (``curvlinops.hutchinson_trace`` draws from
    the global RNG, returns no standard error and needs m < P, hence these few lines.)

    Args:
        operator: square tensor, or object with ``shape`` and ``matmat``.
        num_matvecs: number of random vectors m ≥ 1, applied ``TRACE_BLOCK`` at a time.
        seed: seed of the random vectors.
        distribution: ``"rademacher"`` (±1) or ``"normal"``.
    """
    if isinstance(operator, Tensor):
        operator = DenseOperator(operator)
    if not hasattr(operator, "shape") or not hasattr(operator, "matmat"):
        raise ValueError("operator must be a square tensor or have .shape and .matmat(V)")
    P = operator.shape[0]
    if tuple(operator.shape) != (P, P):
        raise ValueError(f"operator must be square, got shape {tuple(operator.shape)}")
    if not isinstance(num_matvecs, int) or isinstance(num_matvecs, bool) or num_matvecs <= 0:
        raise ValueError(f"num_matvecs must be a positive int, got num_matvecs={num_matvecs!r}")
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    generator = torch.Generator().manual_seed(seed)
    quadratic = []
    for start in range(0, num_matvecs, TRACE_BLOCK):
        b = min(TRACE_BLOCK, num_matvecs - start)
        if distribution == "rademacher":
            V = torch.randint(0, 2, (P, b), generator=generator).double().mul_(2).sub_(1)
        else:
            V = torch.randn(P, b, generator=generator, dtype=torch.float64)
        quadratic.append((V * operator.matmat(V).double().cpu()).sum(0))  # (b,)
    q = torch.cat(quadratic)
    se = q.std(correction=1).item() / num_matvecs**0.5 if num_matvecs > 1 else float("nan")
    return q.mean().item(), se
