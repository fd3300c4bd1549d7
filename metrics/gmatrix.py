r"""The trait × trait G-matrix of a model's "phenotype" readouts.

A *trait* is a scalar, differentiable readout of a model, :math:`t_a(\theta)` — a mean output
over a fixed batch, a mean softmax probability, a loss on a probe set. With the trait Jacobian
:math:`J_T = \partial t / \partial \theta \in \mathbb{R}^{K \times P}` and a PSD matrix
:math:`M` on parameter space,

.. math:: G = J_T \, M \, J_T^\top \in \mathbb{R}^{K \times K}, \qquad
    G_{ab} = \langle \nabla t_a, M \nabla t_b \rangle,

the covariance of the traits under a parameter perturbation :math:`\delta\theta` with covariance
:math:`M` (to first order): :math:`\operatorname{Cov}(J_T \delta\theta) = J_T M J_T^\top`. The
name is the quantitative-genetics one (Lande 1979, "Quantitative genetic analysis of
multivariate evolution, applied to brain:body size allometry", *Evolution* 33(1)): traits with a
large :math:`G_{ab}` cannot be moved independently. Natural choices of :math:`M` are the identity
(plain gradient steps, :math:`G = J_T J_T^\top`) and the gradient-noise covariance :math:`C` of
:class:`metrics.GradientNoise` (what SGD noise does to the traits).

* :func:`trait_jacobian` — :math:`J_T` (and the trait values) of a model, rows laid out like
  :func:`metrics.per_example_gradients` so :func:`metrics.noise.unflatten` maps them to tensors.
* :func:`g_matrix` — :math:`G` for :math:`M` = identity, a :class:`~metrics.GradientNoise`
  (without forming the :math:`P \times P` covariance), a dense matrix or a matrix-free operator.
* :class:`GMatrix` — its eigendecomposition, trait correlations, trait modules (spectral
  clustering of :math:`|\text{correlation}|`) and top-:math:`k` overlaps between two G-matrices.

Example — two traits that share one parameter::

    >>> import torch
    >>> J = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    >>> g_matrix(J).tolist()
    [[2.0, 1.0], [1.0, 2.0]]
    >>> round(GMatrix.from_matrix(g_matrix(J), ["a", "b"]).correlation()[0, 1].item(), 12)
    0.5
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from metrics.clustering import spectral_partition
from metrics.noise import GradientNoise
from metrics.spectra import eigh_sorted, normalized_overlap

__all__ = ["TraitJacobian", "trait_jacobian", "g_matrix", "GMatrix"]

Traits = Callable[[nn.Module], Tensor]

_SYMMETRY_RTOL = 1e-8  # relative to max |G_ab|; G from g_matrix is symmetric to round-off


@dataclass(frozen=True)
class TraitJacobian:
    """Gradients of K traits with respect to P parameters.

    Attributes:
        J: :math:`\\partial t_a / \\partial \\theta_j`, float64 ``Tensor (K, P)``; a parameter a
            trait does not depend on has a zero column.
        values: The trait values :math:`t_a(\\theta)`, float64 ``Tensor (K,)``.
        layout: ``(name, shape)`` of each parameter tensor in column order, as in
            :func:`metrics.per_example_gradients`; ``unflatten(J.T, layout)`` gives, for each
            name, the per-trait gradients ``(K, *shape)``.
    """

    J: Tensor
    values: Tensor
    layout: list[tuple[str, torch.Size]]


def _drop_zero_gradients(grad_inputs: tuple, grad_outputs: tuple) -> tuple:
    """Autograd node hook: an all-zero gradient leaving the node becomes undefined (None), and
    the backward formulas of the branch behind it skip their work instead of carrying zeros.
    What reaches the parameters is unchanged: the dropped terms only ever added zeros."""
    return tuple(g if g is None or bool(g.any()) else None for g in grad_inputs)


def trait_jacobian(
    model: nn.Module, traits: Traits, params: Sequence[str] | None = None
) -> TraitJacobian:
    """Jacobian of ``traits(model)`` with respect to the model's parameters.

    One reverse-mode pass per trait (``torch.autograd.grad`` on a shared graph), so any
    differentiable ``traits`` works — softmax, attention, several forward passes — without
    needing to be ``vmap``-able. Each pass does the work of only the branches of the graph
    that its trait depends on (zero gradients out of the node that assembles the traits are
    dropped), so a battery of traits computed separately and concatenated costs about one
    backward pass through each trait's own computation. The gradients are taken in the
    model's dtype and returned in float64; ``traits`` must be deterministic (put dropout
    models in ``eval()`` mode).

    Args:
        model: The network; its parameters and their ``.grad`` are not modified.
        traits: ``traits(model) -> Tensor (K,)``, calling the model itself.
        params: Names of the parameters to differentiate, in this order (default: all trainable
            parameters in ``named_parameters`` order).

    Returns:
        A :class:`TraitJacobian` with ``J`` (K, P), ``values`` (K,) and the column layout.
    """
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    names = list(named) if params is None else list(params)
    unknown = [n for n in names if n not in named]
    if unknown:
        raise ValueError(f"unknown params {unknown}; trainable parameters: {sorted(named)}")
    if not names:
        raise ValueError("params must name at least one trainable parameter, got none")
    if len(set(names)) != len(names):
        raise ValueError(f"params must not repeat a name, got {names}")
    tensors = [named[n] for n in names]

    with torch.enable_grad():
        values = traits(model)
        if not isinstance(values, Tensor) or values.ndim != 1 or values.numel() == 0:
            shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise ValueError(f"traits(model) must return a Tensor of shape (K,), got {shape}")
        if not torch.isfinite(values).all():
            raise ValueError(f"traits(model) must be finite, got {values.tolist()}")
        P = sum(p.numel() for p in tensors)
        J = torch.zeros(len(values), P, dtype=torch.float64, device=values.device)
        if values.requires_grad:
            # Trait a's pass sends a one-hot gradient into the node that assembled the traits
            # (a cat or stack, typically): without the hook, the zero slices of the other
            # traits would be carried back through their whole branches, adding exact zeros.
            values.grad_fn.register_hook(_drop_zero_gradients)
            for a in range(len(values)):
                grads = torch.autograd.grad(
                    values[a], tensors, retain_graph=a < len(values) - 1, allow_unused=True
                )
                J[a] = torch.cat(
                    [
                        torch.zeros(p.numel(), dtype=torch.float64, device=J.device)
                        if g is None
                        else g.detach().reshape(-1).to(J)
                        for p, g in zip(tensors, grads, strict=True)
                    ]
                )
    layout = [(n, named[n].shape) for n in names]
    return TraitJacobian(J=J, values=values.detach().to(torch.float64), layout=layout)


def g_matrix(J: Tensor, M: GradientNoise | Tensor | object | None = None) -> Tensor:
    r""":math:`G = J M J^\top` (module docstring), float64 and exactly symmetric.

    Args:
        J: Trait Jacobian, ``Tensor (K, P)`` (e.g. ``trait_jacobian(...).J``); its columns must
            follow the same parameter layout as ``M``.
        M: The parameter-space matrix:

            * ``None`` — the identity, :math:`G = J J^\top`;
            * a :class:`~metrics.GradientNoise` — its covariance :math:`C`, computed as the
              population covariance of the projected gradients :math:`Z = G_\text{ex} J^\top`
              ``(N, K)``, :math:`\frac1N \sum_i (z_i - \bar z)(z_i - \bar z)^\top`, the same
              normalisation as :meth:`~metrics.GradientNoise.covariance`, never forming
              :math:`C` (P, P);
            * a dense ``Tensor (P, P)``;
            * any operator with ``matmat(V (P, m)) -> (P, m)`` (and, optionally, ``shape``),
              e.g. :meth:`~metrics.GradientNoise.covariance_operator` or a curvature operator.

    Returns:
        :math:`G`, float64 ``Tensor (K, K)``.
    """
    if not isinstance(J, Tensor) or J.ndim != 2 or J.shape[0] == 0:
        shape = tuple(J.shape) if isinstance(J, Tensor) else type(J).__name__
        raise ValueError(f"J must be a Tensor of shape (K ≥ 1, P), got {shape}")
    J = J.detach().to(torch.float64)
    P = J.shape[1]
    if M is None:
        G = J @ J.T
    elif isinstance(M, GradientNoise):
        if M.n_params != P:
            raise ValueError(f"M (GradientNoise) has {M.n_params} parameters but J has P={P}")
        Z = M.G.to(J.device) @ J.T  # (N, K)
        Z = Z - Z.mean(0, keepdim=True)
        G = Z.T @ Z / M.n_examples
    elif isinstance(M, Tensor):
        if M.shape != (P, P):
            raise ValueError(f"M must have shape (P, P) = ({P}, {P}), got {tuple(M.shape)}")
        G = J @ M.detach().to(J) @ J.T
    elif callable(getattr(M, "matmat", None)):
        shape = getattr(M, "shape", None)
        if shape is not None and tuple(shape) != (P, P):
            raise ValueError(f"M must have shape (P, P) = ({P}, {P}), got {tuple(shape)}")
        MJt = M.matmat(J.T)
        if not isinstance(MJt, Tensor) or MJt.shape != (P, J.shape[0]):
            got = tuple(MJt.shape) if isinstance(MJt, Tensor) else type(MJt).__name__
            raise ValueError(f"M.matmat(J.T) must return shape ({P}, {J.shape[0]}), got {got}")
        G = J @ MJt.detach().to(J)
    else:
        raise TypeError(
            "M must be None, a GradientNoise, a Tensor (P, P) or an operator with matmat, "
            f"got {type(M).__name__}"
        )
    return (G + G.T) / 2


@dataclass(frozen=True)
class GMatrix:
    """A G-matrix with its trait names and eigendecomposition; build with :meth:`from_matrix`.

    Attributes:
        matrix: :math:`G`, symmetric float64 ``Tensor (K, K)``.
        names: The trait names, in row order.
        eigenvalues: Decreasing, float64 ``Tensor (K,)``.
        eigenvectors: Column ``i`` belongs to ``eigenvalues[i]``, float64 ``Tensor (K, K)``.
    """

    matrix: Tensor
    names: tuple[str, ...]
    eigenvalues: Tensor
    eigenvectors: Tensor

    @classmethod
    def from_matrix(cls, G: Tensor, names: Sequence[str]) -> GMatrix:
        """Wrap a G-matrix ``Tensor (K, K)`` (e.g. from :func:`g_matrix`) and K distinct names."""
        if not isinstance(G, Tensor) or G.ndim != 2 or G.shape[0] != G.shape[1] or len(G) == 0:
            shape = tuple(G.shape) if isinstance(G, Tensor) else type(G).__name__
            raise ValueError(f"G must be a non-empty square Tensor (K, K), got {shape}")
        G = G.detach().to(torch.float64)
        if not torch.isfinite(G).all():
            raise ValueError("G must be finite")
        scale, asymmetry = G.abs().max().item(), (G - G.T).abs().max().item()
        if asymmetry > _SYMMETRY_RTOL * scale:
            raise ValueError(f"G must be symmetric, got max |G - G^T| = {asymmetry:.3e}")
        names = tuple(names)
        if len(names) != len(G) or len(set(names)) != len(names):
            raise ValueError(f"names must be {len(G)} distinct trait names, got {list(names)}")
        G = (G + G.T) / 2
        eigenvalues, eigenvectors = eigh_sorted(G)
        return cls(matrix=G, names=names, eigenvalues=eigenvalues, eigenvectors=eigenvectors)

    def correlation(self) -> Tensor:
        r"""Trait correlations :math:`G_{ab} / \sqrt{G_{aa} G_{bb}}`, float64 ``Tensor (K, K)``.

        A trait with :math:`G_{aa} \leq 0` (no variance under :math:`M`) gets a zero row and
        column, its diagonal entry included; every other diagonal entry is 1.
        """
        variance = torch.diagonal(self.matrix)
        defined = variance > 0
        inv_sd = torch.where(defined, variance.clamp_min(1e-300).rsqrt(), 0.0)
        R = (inv_sd[:, None] * self.matrix * inv_sd[None, :]).clamp(-1.0, 1.0)
        R.diagonal().copy_(defined.to(R.dtype))
        return R

    def clusters(self, n_clusters: int | None = None, *, seed: int = 0) -> Tensor:
        """Trait modules: spectral clustering of the affinity :math:`|\\text{correlation}|`.

        Args:
            n_clusters: Number of modules, ``1..K``; ``None`` reads it off the largest
                Laplacian eigengap in ``2..K // 2`` (:func:`metrics.clustering.eigengap_k`),
                which needs K ≥ 4 traits.
            seed: Seed of the k-means step.

        Returns:
            int64 labels ``Tensor (K,)``.
        """
        K = len(self.names)
        if n_clusters is None and K < 4:
            raise ValueError(f"n_clusters must be given for fewer than 4 traits, got K={K}")
        if n_clusters is not None and (
            isinstance(n_clusters, bool)
            or not isinstance(n_clusters, int)
            or not 1 <= n_clusters <= K
        ):
            raise ValueError(f"n_clusters must be None or an int in 1..K={K}, got {n_clusters!r}")
        if n_clusters == 1:
            return torch.zeros(K, dtype=torch.int64)
        labels, _ = spectral_partition(self.correlation().abs(), n_clusters, seed=seed)
        return torch.as_tensor(labels, dtype=torch.int64)

    def top_overlap(self, other: GMatrix, k: int) -> float:
        r"""Normalised overlap :math:`\lVert V_k^\top W_k \rVert_F^2 / k` of the top-:math:`k`
        eigenvectors of two G-matrices over the same traits, in :math:`[0, 1]`; :math:`k/K` is
        the chance level (:func:`metrics.overlap_chance`).
        """
        if not isinstance(other, GMatrix):
            raise TypeError(f"other must be a GMatrix, got {type(other).__name__}")
        if other.names != self.names:
            raise ValueError(
                f"names must match to compare G-matrices, got {list(self.names)} "
                f"and {list(other.names)}"
            )
        K = len(self.names)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < K:
            raise ValueError(f"k must be an int in 1..K-1={K - 1}, got k={k!r}")
        return normalized_overlap(self.eigenvectors[:, :k], other.eigenvectors[:, :k])
