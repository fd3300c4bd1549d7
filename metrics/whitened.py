r"""The whitened (canonical) eNTK: the eNTK measured in the metric that gradient noise defines.

The design notes pair the eNTK Θ = J Jᵀ with the gradient-noise covariance C of the same
parameters. Given a PSD metric on parameters written through a factor, :math:`M = S S^\top`
with S (P, r) and often r ≪ P, the whitened kernel is the eNTK of the map z ↦ f(θ + S z):

.. math::  K_w = (J S)(J S)^\top = J M J^\top, \qquad
           \Theta_w = (J S)^\top (J S) = S^\top J^\top J S \quad (r \times r),

its data-space and parameter-space forms. With M = C, one SGD step of rate η and batch B moves
the outputs, to first order, by a noise whose covariance is (η²/B) J C Jᵀ; with an Adam-style
preconditioner D = diag(d), updates u = D g have covariance D C D and M = D C D
(:func:`noise_factor`).

Readouts follow ``metrics.entk``: ``"full"`` gives (N, N, C, C), an int, ``"sum"`` or a callable
one (N, N) kernel, and ``"trace"`` the class average :math:`\frac1C\sum_c A_c A_c^\top` with
A = J S and A_c its rows of output c. The parameter-space form divides by the number of readouts
R for ``"trace"`` (and by 1 otherwise), so that tr Θ_w = tr K_w always. What else holds:

* ``"full"`` and single readouts: Θ_w and the flattened K_w = A Aᵀ share their nonzero
  eigenvalues; an eigenvector u of Θ_w maps to the parameter direction v = S u and to the
  data-space eigenvector J v = A u of K_w with the same eigenvalue.
* ``"trace"`` with C > 1: C·Θ_w shares its nonzero eigenvalues with the flattened full kernel
  A Aᵀ, and C·K_w is the sum of that kernel's C diagonal (N, N) blocks. Hence tr K_w = tr Θ_w
  and the spectrum of K_w is weakly majorised by C·λ(Θ_w): for every i,
  :math:`\sum_{j \le i} \lambda_j(K_w) \le C \sum_{j \le i} \lambda_j(\Theta_w)` (Ky Fan),
  in particular λ₁(K_w) ≤ C·λ₁(Θ_w). Single eigenvalues need not match or interlace (K_w can
  have rank up to C·r), and the images J v are not eigenvectors of K_w. For C = 1 the two
  spectra coincide.

Everything is computed from A = J S (R·N, r), built column block by column block through
``EntkOperator.matvec_jacobian``; no P × P matrix is formed.

Example — with S = I the whitened kernel is the plain eNTK::

    >>> import torch
    >>> from metrics.entk import entk
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    >>> net, x = net.double(), torch.randn(5, 3, dtype=torch.float64)
    >>> P = sum(p.numel() for p in net.parameters())
    >>> K = WhitenedKernel(net, x, torch.eye(P, dtype=torch.float64)).data_kernel()
    >>> torch.allclose(K, entk(net, x))
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from metrics.entk import Output
from metrics.noise import GradientNoise, unflatten
from metrics.operators import EntkOperator

Layout = Sequence[tuple[str, Sequence[int]]]


def noise_factor(
    noise: GradientNoise, preconditioner: Tensor | None = None, *, centered: bool = True
) -> Tensor:
    """A factor S (P, N), float64, of the gradient-noise metric: S Sᵀ = C (``centered``) or the
    second moment E[g gᵀ]; rows follow ``noise.layout``.

    ``preconditioner`` d (P,), positive, gives S = diag(d) S₀ and S Sᵀ = D C D, the covariance
    of preconditioned updates u = D g. For Adam, d = 1 / (√v̂ + ε) with v̂ = exp_avg_sq / (1 − β₂ᵗ)
    from the optimizer state, concatenated (flattened) in the layout's order.
    """
    G = noise.G - noise.mean() if centered else noise.G  # (N, P)
    S = G.T / noise.n_examples**0.5
    if preconditioner is None:
        return S
    d = torch.as_tensor(preconditioner).double()
    if d.shape != (noise.n_params,):
        raise ValueError(
            f"preconditioner must have shape ({noise.n_params},), one entry per parameter, "
            f"got {tuple(d.shape)}"
        )
    if not torch.isfinite(d).all() or not (d > 0).all():
        raise ValueError("preconditioner must be finite and positive")
    return d[:, None] * S


@dataclass(frozen=True)
class WhitenedEigenpairs:
    """Top-k eigenpairs of Θ_w (decreasing ``values`` (k,)) with their orthonormal eigenvectors
    ``coefficients`` u (r, k), parameter directions ``directions`` v = S u (P, k) and data-space
    images ``images`` J v = A u (R·N, k), channel-major rows r·N + x, with ‖J v‖² = λ (R·λ
    for averaged readouts)."""

    values: Tensor
    coefficients: Tensor
    directions: Tensor
    images: Tensor


class WhitenedKernel:
    """The whitened eNTK of ``model`` on ``inputs`` (N, ...) in the metric S Sᵀ (module docstring).

    Args:
        model: the network (copied by ``EntkOperator``; it is not modified).
        inputs: (N, ...) inputs.
        factor: S (P, r); its rows follow the parameter order of ``groups`` (default: all
            trainable parameters in ``model.named_parameters()`` order), each tensor flattened —
            the layout of a :class:`metrics.GradientNoise` built with the same ``params``.
        layout: the factor's (name, shape) rows (e.g. ``noise.layout``); checked against the
            model's parameters when given.
        output: the readout, as in ``metrics.entk`` (``"trace"`` is the class average).
        groups: restrict to parameter groups, as in ``metrics.entk``.
        block: columns of S pushed through J at a time.
        dtype: arithmetic precision.

    ``A`` (R·N, r) holds J S; ``names`` and ``param_shapes`` the parameter layout.
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: Tensor,
        factor: Tensor,
        *,
        layout: Layout | None = None,
        output: Output = "trace",
        groups: Mapping[str, Sequence[str]] | None = None,
        block: int = 256,
        dtype: torch.dtype = torch.float64,
    ):
        if not isinstance(block, int) or block <= 0:
            raise ValueError(f"block must be a positive int, got block={block!r}")
        self.average = not (isinstance(output, str) and output == "full")
        trace = isinstance(output, str) and output == "trace"
        op = EntkOperator(
            model, inputs, output="full" if trace else output, groups=groups, dtype=dtype
        )
        self.names, self.param_shapes = op.names, op.param_shapes
        self.N, self.R = op.N, op.R
        expected = [(n, tuple(s)) for n, s in op.param_shapes.items()]
        if layout is not None and [(n, tuple(s)) for n, s in layout] != expected:
            raise ValueError(
                f"layout must match the model's parameters in order, {expected}; got "
                f"{[(n, tuple(s)) for n, s in layout]} (pass groups= to select parameters)"
            )
        if factor.dim() != 2 or factor.shape[0] != op.n_params:
            raise ValueError(
                f"factor must have shape ({op.n_params}, r), one row per parameter of "
                f"{op.names}, got {tuple(factor.shape)}"
            )
        if not torch.isfinite(factor).all():
            raise ValueError("factor contains NaN or Inf")
        self.S = factor.detach().to(dtype)
        order = [(n, op.param_shapes[n]) for n in self.names]
        columns = [
            op.matvec_jacobian(unflatten(self.S[:, start : start + block], order))  # (R·N, b)
            for start in range(0, self.S.shape[1], block)
        ]
        self.A = torch.cat(columns, dim=1)

    def data_kernel(self) -> Tensor:
        """K_w: (N, N, R, R) for ``"full"``, else (N, N) averaged over the R readouts."""
        A = self.A.reshape(self.R, self.N, -1)  # (R, N, r)
        if not self.average:
            return torch.einsum("cnk,dmk->nmcd", A, A)
        return torch.einsum("cnk,cmk->nm", A, A) / self.R

    def parameter_kernel(self) -> Tensor:
        """Θ_w = Sᵀ Jᵀ J S (r, r), divided by R unless ``"full"``."""
        return self.A.T @ self.A / (self.R if self.average else 1)

    def eigenpairs(self, k: int) -> WhitenedEigenpairs:
        """The ``k`` largest eigenpairs of Θ_w, 1 ≤ k ≤ min(R·N, r), via the SVD of A."""
        limit = min(self.A.shape)
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= limit:
            raise ValueError(f"k must be an int in 1..{limit}, got k={k!r}")
        _, sigma, Wt = torch.linalg.svd(self.A, full_matrices=False)
        u = Wt[:k].T  # (r, k)
        values = sigma[:k] ** 2 / (self.R if self.average else 1)
        return WhitenedEigenpairs(values, u, self.S @ u, self.A @ u)
