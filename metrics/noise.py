r"""Per-example loss gradients and the gradient-noise statistics they define.

With :math:`g_i = \nabla_\theta \ell(x_i, y_i)` the loss gradient of example i (N examples,
P parameters):

.. math::  \bar g = \frac1N \sum_i g_i, \qquad
           S = \frac1N \sum_i g_i g_i^\top = \mathbb{E}[g g^\top], \qquad
           C = S - \bar g \bar g^\top,

the mean gradient, the second moment and the (population) covariance of one example's
gradient. A minibatch mean of B examples drawn independently has covariance C / B.

* Signal-to-noise ratio of a parameter subspace (projector P, e.g. one circuit's weights):
  :math:`\mathrm{SNR}_P = \lVert P \bar g\rVert^2 / (\mathrm{tr}(P C P) / B)` — the squared
  mean gradient in the subspace over the minibatch noise in it.
* Per-parameter gradient signal-to-noise ratio (GSNR, Liu et al. 2020, "Understanding Why
  Neural Networks Generalize Well Through GSNR of Parameters"): :math:`r_j = \bar g_j^2 /
  C_{jj}`.

:class:`GradientNoise` holds the gradients (N, P) and offers each statistic densely (small P)
and C, S as matrix-free operators (``shape``, ``matmat``), usable by
:func:`metrics.top_eigenpairs`. Example — the covariance of a planted gradient set::

    >>> import torch
    >>> G = torch.tensor([[1.0, 0.0], [3.0, 0.0]], dtype=torch.float64)
    >>> noise = GradientNoise(G)
    >>> noise.mean().tolist(), noise.covariance().tolist()
    ([2.0, 0.0], [[1.0, 0.0], [0.0, 0.0]])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

Loss = Callable[[Tensor, Tensor], Tensor]


def per_example_gradients(
    model: nn.Module,
    loss: Loss,
    inputs: Tensor,
    targets: Tensor,
    *,
    params: Sequence[str] | None = None,
    chunk_size: int = 256,
) -> tuple[Tensor, list[tuple[str, torch.Size]]]:
    """Loss gradients of every example, ``vmap(grad)`` over chunks of ``chunk_size``.

    Args:
        model: the network; its parameters are not modified.
        loss: per-example loss ``loss(outputs (n, ...), targets (n, ...)) -> (n,)``.
        inputs, targets: the examples, (N, ...) each.
        params: parameter names to differentiate, in this order (default: all trainable).

    Returns:
        G (N, P) in the model's dtype, with columns in the order of ``params`` (each tensor
        flattened), and the (name, shape) layout of the columns.
    """
    if not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, got chunk_size={chunk_size!r}")
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    names = list(named) if params is None else list(params)
    unknown = [n for n in names if n not in named]
    if unknown:
        raise ValueError(f"unknown params {unknown}; trainable parameters: {sorted(named)}")
    if len(inputs) != len(targets):
        raise ValueError(f"inputs ({len(inputs)}) and targets ({len(targets)}) differ in length")
    fixed = {n: p.detach() for n, p in model.named_parameters()}

    def one(theta: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        out = functional_call(model, {**fixed, **theta}, (x[None],))
        value = loss(out, y[None])
        if value.shape != (1,):
            raise ValueError(
                f"loss must return one value per example, got shape {tuple(value.shape)} for 1"
            )
        return value[0]

    grad_fn = vmap(grad(one), in_dims=(None, 0, 0))
    theta = {n: fixed[n] for n in names}
    rows = []
    for start in range(0, len(inputs), chunk_size):
        g = grad_fn(theta, inputs[start : start + chunk_size], targets[start : start + chunk_size])
        rows.append(torch.cat([g[n].reshape(len(g[n]), -1) for n in names], dim=1))
    layout = [(n, named[n].shape) for n in names]
    return torch.cat(rows).detach(), layout


def unflatten(V: Tensor, layout: Sequence[tuple[str, torch.Size]]) -> dict[str, Tensor]:
    """Columns of V (P, b) laid out as ``layout`` → parameter name → (b, *shape): the block
    form ``metrics.operators.EntkOperator.matvec_jacobian`` takes."""
    total = sum(int(torch.Size(shape).numel()) for _, shape in layout)
    if V.dim() != 2 or V.shape[0] != total:
        raise ValueError(f"V must have shape ({total}, b) for this layout, got {tuple(V.shape)}")
    out, start = {}, 0
    for name, shape in layout:
        size = int(torch.Size(shape).numel())
        out[name] = V[start : start + size].T.reshape(V.shape[1], *shape)
        start += size
    return out


class _Moment:
    """Matrix-free S or C of a GradientNoise: ``shape`` and ``matmat``."""

    def __init__(self, G: Tensor, mean: Tensor | None):
        self.G, self.mean_ = G, mean
        self.shape = (G.shape[1], G.shape[1])
        self.matvecs = 0

    def matmat(self, V: Tensor) -> Tensor:
        V = V.to(self.G.dtype)
        out = self.G.T @ (self.G @ V) / len(self.G)
        if self.mean_ is not None:
            out = out - self.mean_[:, None] * (self.mean_ @ V)[None, :]
        self.matvecs += V.shape[1]
        return out


class GradientNoise:
    """Statistics of per-example gradients G (N, P) (module docstring), float64.

    Build it from a model with :meth:`from_model`, or from any gradient matrix (planted cases).
    """

    def __init__(self, G: Tensor, layout: list[tuple[str, torch.Size]] | None = None):
        if G.dim() != 2 or len(G) < 1:
            raise ValueError(f"G must have shape (N ≥ 1, P), got {tuple(G.shape)}")
        if not torch.isfinite(G).all():
            raise ValueError("per-example gradients contain NaN or Inf")
        self.G = G.double()
        self.layout = layout or [("theta", torch.Size([G.shape[1]]))]

    @classmethod
    def from_model(cls, model, loss, inputs, targets, **kwargs) -> GradientNoise:
        """Per-example gradients of ``model`` (see :func:`per_example_gradients`)."""
        return cls(*per_example_gradients(model, loss, inputs, targets, **kwargs))

    @property
    def n_examples(self) -> int:
        return self.G.shape[0]

    @property
    def n_params(self) -> int:
        return self.G.shape[1]

    def slices(self) -> dict[str, slice]:
        """Column range of every parameter tensor in the layout."""
        out, start = {}, 0
        for name, shape in self.layout:
            size = int(torch.Size(shape).numel())
            out[name] = slice(start, start + size)
            start += size
        return out

    def mean(self) -> Tensor:
        """ḡ (P,)."""
        return self.G.mean(0)

    def _columns(self, subset: Tensor | None) -> Tensor:
        if subset is None:
            return self.G
        if subset.dtype == torch.bool:
            if subset.shape != (self.n_params,):
                raise ValueError(
                    f"subset mask must have shape ({self.n_params},), got {subset.shape}"
                )
            return self.G[:, subset]
        if subset.dim() != 1 or not ((subset >= 0) & (subset < self.n_params)).all():
            raise ValueError(f"subset must be a bool mask or indices in 0..{self.n_params - 1}")
        return self.G[:, subset]

    def second_moment(self, subset: Tensor | None = None) -> Tensor:
        """S = E[g gᵀ], dense: (P, P), or the block of a parameter ``subset`` (bool mask (P,)
        or column indices) — the way to get dense blocks when P is large."""
        G = self._columns(subset)
        return G.T @ G / self.n_examples

    def covariance(self, subset: Tensor | None = None) -> Tensor:
        """C = E[g gᵀ] − ḡ ḡᵀ, dense: (P, P), or the block of a parameter ``subset``."""
        g = self._columns(subset).mean(0)
        return self.second_moment(subset) - torch.outer(g, g)

    def second_moment_operator(self) -> _Moment:
        """S as a matrix-free operator (P, P)."""
        return _Moment(self.G, None)

    def covariance_operator(self) -> _Moment:
        """C as a matrix-free operator (P, P)."""
        return _Moment(self.G, self.mean())

    def variance(self) -> Tensor:
        """diag C (P,)."""
        return self.G.var(0, correction=0)

    def gsnr(self, eps: float = 1e-300) -> Tensor:
        """Per-parameter GSNR ḡ_j² / C_jj (P,) (Liu et al. 2020); parameters whose gradient
        never varies get +inf if their mean is non-zero and 0 otherwise."""
        g2, var = self.mean().square(), self.variance()
        out = g2 / var.clamp_min(eps)
        return torch.where(var > 0, out, torch.where(g2 > 0, torch.inf, 0.0))

    def snr(self, subspace: Tensor, batch_size: int = 1) -> float:
        """SNR_P = ‖P ḡ‖² / (tr(P C P) / B) of a subspace.

        ``subspace`` is a boolean mask (P,) of coordinates (P projects onto them) or an
        orthonormal basis (P, k) (P = U Uᵀ).
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got batch_size={batch_size!r}")
        if subspace.dtype == torch.bool:
            if subspace.shape != (self.n_params,):
                raise ValueError(f"mask must have shape ({self.n_params},), got {subspace.shape}")
            signal = self.mean()[subspace].square().sum()
            noise = self.variance()[subspace].sum()
        else:
            U = subspace.double()
            if U.dim() != 2 or U.shape[0] != self.n_params:
                raise ValueError(f"basis must have shape ({self.n_params}, k), got {U.shape}")
            eye = torch.eye(U.shape[1], dtype=U.dtype)
            if not torch.allclose(U.T @ U, eye, atol=1e-8):
                raise ValueError("basis columns must be orthonormal")
            projected = self.G @ U  # (N, k)
            signal = projected.mean(0).square().sum()
            noise = projected.var(0, correction=0).sum()
        if noise <= 0:
            return float("inf") if signal > 0 else float("nan")
        return float(signal / (noise / batch_size))
