"""Top eigenpairs of large symmetric PSD operators without a dense eigendecomposition.

:func:`top_eigenpairs` takes anything with a ``shape`` and a ``matmat(V)`` (an
``metrics.operators.EntkOperator``, a :class:`DenseOperator`) or a square tensor, and returns
the k largest eigenvalues (decreasing) with orthonormal eigenvectors, in float64:

* ``"lanczos"`` (default) — implicitly restarted Lanczos, ``scipy.sparse.linalg.eigsh`` on a
  ``LinearOperator`` (ARPACK), started from a seeded vector so results are reproducible;
* ``"dense"`` — ``torch.linalg.eigh`` of the materialised matrix: the reference, small sizes.

Lanczos needs memory O(size · k) beyond the operator; no size × size matrix is formed. Block
LOBPCG (``scipy.sparse.linalg.lobpcg``) was tried and left out: on flattened eNTKs, whose rank
(at most the parameter count) is often below three times the block size, its Rayleigh–Ritz
step breaks down and it returns its first iterate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import Tensor

from metrics.spectra import eigh_sorted

METHODS = ("lanczos", "dense")


class DenseOperator:
    """A dense symmetric matrix behind the operator interface (``shape``, ``matmat``)."""

    def __init__(self, K: Tensor):
        if K.dim() != 2 or K.shape[0] != K.shape[1]:
            raise ValueError(f"K must be a square matrix, got shape {tuple(K.shape)}")
        self.K = K.detach().double()
        self.shape = tuple(self.K.shape)
        self.matvecs = 0

    def matmat(self, V: Tensor) -> Tensor:
        self.matvecs += V.shape[1] if V.dim() == 2 else 1
        return self.K @ V.double()

    def dense(self) -> Tensor:
        return self.K


@dataclass(frozen=True)
class Eigenpairs:
    """The k largest eigenvalues (decreasing, float64 (k,)), their orthonormal eigenvectors
    (float64 (size, k)), the method and the number of operator applications it took."""

    values: Tensor
    vectors: Tensor
    method: str
    matvecs: int


def _as_operator(operator):
    if isinstance(operator, Tensor):
        return DenseOperator(operator)
    if not hasattr(operator, "shape") or not hasattr(operator, "matmat"):
        raise ValueError("operator must be a square tensor or have .shape and .matmat(V)")
    return operator


def top_eigenpairs(
    operator,
    k: int,
    *,
    method: str = "lanczos",
    tol: float = 1e-10,
    maxiter: int | None = None,
    seed: int = 0,
) -> Eigenpairs:
    """The ``k`` largest eigenpairs of a symmetric PSD operator (module docstring).

    Args:
        operator: square tensor, or object with ``shape`` and ``matmat``.
        k: number of eigenpairs, 1 ≤ k < size (Lanczos needs k < size − 1).
        method: ``"lanczos"`` or ``"dense"``.
        tol: relative accuracy of the Lanczos eigenvalues (ARPACK's ``tol``).
        maxiter: cap on Lanczos restarts (default: ARPACK's).
        seed: seed of the Lanczos starting vector.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got method={method!r}")
    op = _as_operator(operator)
    size = op.shape[0]
    limit = size - 1 if method == "lanczos" else size
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k < limit:
        raise ValueError(f"k must be an int in 1..{limit - 1} for method={method!r}, got k={k!r}")
    before = getattr(op, "matvecs", 0)
    if method == "dense":
        K = op.dense() if hasattr(op, "dense") else op.matmat(torch.eye(size, dtype=torch.float64))
        values, vectors = eigh_sorted(K, ridge=0.0)
        values, vectors = values[:k], vectors[:, :k]
    else:

        def apply(V: np.ndarray) -> np.ndarray:
            out = op.matmat(torch.from_numpy(np.ascontiguousarray(V, dtype=np.float64)))
            return out.detach().double().numpy()

        linear = LinearOperator(
            (size, size),
            matvec=lambda v: apply(v.reshape(-1, 1)).reshape(-1),
            matmat=apply,
            dtype=np.float64,
        )
        v0 = np.random.default_rng(seed).standard_normal(size)
        vals, vecs = eigsh(linear, k=k, which="LA", tol=tol, maxiter=maxiter, v0=v0)
        order = np.argsort(vals)[::-1]
        values = torch.from_numpy(np.ascontiguousarray(vals[order]))
        vectors = torch.from_numpy(np.ascontiguousarray(vecs[:, order]))
    return Eigenpairs(values, vectors, method, getattr(op, "matvecs", 0) - before)
