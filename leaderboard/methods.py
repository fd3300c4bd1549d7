"""Built-in leaderboard methods. Each takes a :class:`leaderboard.api.Problem` and returns
directions ``(rows, k)`` or labels ``(rows,)``; the docstring says what it computes and whom it
follows.

Kernels over inputs are the class-averaged trace eNTK (``metrics.entk``, dense eigh); kernels
over flattened (input, channel) rows are the flattened eNTK (``metrics.EntkOperator``,
unscaled, Lanczos top-k).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.cluster import KMeans, SpectralClustering
from torch import Tensor

from leaderboard.api import NotApplicable, Problem, register_method
from metrics.clustering import spectral_partition
from metrics.curvature import GaussNewtonOperator
from metrics.eigensolvers import top_eigenpairs
from metrics.entk import entk, parameter_groups, unit_gram
from metrics.noise import GradientNoise, per_example_gradients, unflatten
from metrics.operators import EntkOperator
from metrics.spectra import eigh_sorted
from metrics.whitened import WhitenedKernel, noise_factor

LIN2025 = "Lin 2025, Feature Identification via the Empirical NTK (arXiv 2510.00468)"
QDG_MAX_ROWS = 5000  # the angular-similarity matrix is rows × rows, dense
QDG_CHUNK = 128  # examples per vmap(grad) call
LAPLACIAN_POOL = 2  # entk_laplacian rotates the top (POOL·k + 1) eigenvectors
DEGENERATE_FRACTION = 0.25  # stage-1 values closer than this × the graph's gap are degenerate


def _directions_only(problem: Problem, name: str) -> None:
    if problem.kind != "directions":
        raise NotApplicable(f"{name} returns data-space directions, not a partition")


def kernel_top(problem: Problem, n: int, groups=None) -> tuple[Tensor, Tensor]:
    """Top-n eigenpairs (values (n,), vectors (rows, n)) of the problem's eNTK restricted to
    ``groups``: the trace kernel over inputs, the flattened kernel over (input, channel)."""
    if problem.over == "flattened":
        op = EntkOperator(problem.model, problem.inputs, output="full", groups=groups)
        pairs = top_eigenpairs(op, n, seed=problem.seed)
        return pairs.values, pairs.vectors
    K = entk(problem.model, problem.inputs, output="trace", groups=groups)
    values, vectors = eigh_sorted(K)
    return values[:n], vectors[:, :n]


@register_method("entk_trace", source=LIN2025)
def entk_trace(problem: Problem) -> Tensor | np.ndarray:
    """Top-k eigenvectors of the full eNTK (all parameters); for a partition of hidden units,
    spectral clustering (k clusters) of the double-centred unit-kernel similarity."""
    if problem.kind == "partition" and problem.over != "units":
        raise NotApplicable("entk_trace partitions hidden units, not inputs")
    if problem.over == "units":
        gram = unit_gram(problem.model, problem.inputs, problem.units)
        labels, _ = spectral_partition(gram.similarity(center=True), problem.k, seed=problem.seed)
        return labels
    return kernel_top(problem, problem.k)[1]


@register_method("entk_layerwise", source=LIN2025 + ", layerwise eNTK (Sec. 4)")
def entk_layerwise(problem: Problem) -> Tensor:
    """Top-k eigenvectors of one layer's eNTK. The layer (parameter group, one per module) is
    chosen without ground truth: the one whose spectrum has the sharpest cliff right after the
    budget, λ_k / λ_{k+1} largest, i.e. whose top-k eigenspace is best separated."""
    _directions_only(problem, "entk_layerwise")
    if problem.k + 1 >= problem.rows:
        raise NotApplicable("the budget leaves no eigenvalue after k to compare")
    best, best_ratio = None, -1.0
    for group, members in parameter_groups(problem.model).items():
        values, vectors = kernel_top(problem, problem.k + 1, {group: members})
        ratio = float(values[problem.k - 1] / values[problem.k].clamp_min(1e-300))
        if ratio > best_ratio:
            best, best_ratio = vectors[:, : problem.k], ratio
    return best


@register_method(
    "entk_laplacian",
    source=LIN2025 + ", graph-smoothness rotation of a cliff's eigenvectors (v4)",
)
def entk_laplacian(problem: Problem) -> Tensor:
    """Rotate the top (2k + 1) eigenvectors V of the trace eNTK by graph smoothness and keep the
    k smoothest along the target family's graph.

    Two-stage diagonalisation: stage 1 diagonalises Vᵀ L_t V, L_t the Laplacian of the cycles
    along which the target quantity is constant (its null space is the functions of the target);
    stage 2 diagonalises the partner Laplacian (a ↔ b, sum ↔ difference) inside each group of
    stage-1 values that are degenerate (closer than a quarter of L_t's smallest non-zero
    eigenvalue), which splits a family into its frequencies. Needs ``problem.graphs`` and
    ``problem.target`` (modular addition provides both).
    """
    if problem.over != "inputs" or problem.kind != "directions":
        raise NotApplicable("entk_laplacian returns directions over inputs")
    if not problem.graphs or problem.target not in (problem.graphs or {}):
        raise NotApplicable("entk_laplacian needs input graphs and a target family")
    partners = {"a": "b", "b": "a", "sum": "difference", "difference": "sum"}
    pool = min(problem.rows - 1, LAPLACIAN_POOL * problem.k + 1)
    _, V = kernel_top(problem, pool)
    L1 = problem.graphs[problem.target]
    mu1, R1 = torch.linalg.eigh(V.T @ L1 @ V)  # ascending smoothness along the target graph
    graph_values = torch.linalg.eigvalsh(L1)
    tol = DEGENERATE_FRACTION * graph_values[graph_values > 1e-9].min()
    W = V @ R1
    partner = problem.graphs.get(partners.get(problem.target, ""))
    if partner is not None:
        start = 0
        for i in range(1, pool + 1):
            if i == pool or mu1[i] - mu1[i - 1] > tol:
                block = W[:, start:i]
                _, R2 = torch.linalg.eigh(block.T @ partner @ block)
                W[:, start:i] = block @ R2
                start = i
    return W[:, : problem.k]


@register_method(
    "qdg",
    source="Michaud et al. 2023, The Quantization Model of Neural Scaling (quanta discovery "
    "from gradients)",
)
def qdg(problem: Problem) -> np.ndarray:
    """Quanta discovery from gradients: per-example loss gradients, cosine-normalised; affinity
    1 − arccos(cos)/π (angular similarity); sklearn SpectralClustering into k clusters of
    inputs. On a directions task the clusters are scored through their indicator vectors."""
    if problem.over != "inputs":
        raise NotApplicable("qdg clusters inputs by their loss gradients")
    if problem.rows > QDG_MAX_ROWS:
        raise NotApplicable(f"qdg's dense affinity needs rows ≤ {QDG_MAX_ROWS}")
    G, _ = per_example_gradients(
        problem.model, problem.loss, problem.inputs, problem.targets, chunk_size=QDG_CHUNK
    )
    G = G.double()
    G = G / G.norm(dim=1, keepdim=True).clamp_min(1e-300)
    cos = (G @ G.T).clamp(-1.0, 1.0)
    affinity = (1.0 - torch.arccos(cos) / torch.pi).numpy()
    clustering = SpectralClustering(
        n_clusters=problem.k, affinity="precomputed", random_state=problem.seed
    )
    return clustering.fit_predict(affinity)


def data_images(problem: Problem, images: Tensor) -> Tensor:
    """Directions in the problem's row space from data-space images J v (R·N, k) of parameter
    directions (channel-major rows). Flattened problems take them as they are. Over inputs,
    each image is an (N, R) block; the k directions are the top-k left singular vectors of the
    N × (k·R) matrix of all blocks' columns — the k input directions that carry most of the
    images' energy."""
    if problem.over == "flattened":
        return images.double()
    N, k = problem.rows, images.shape[1]
    blocks = images.double().reshape(-1, N, k).permute(1, 2, 0).reshape(N, -1)  # (N, k·R)
    U, S, _ = torch.linalg.svd(blocks, full_matrices=False)
    out = torch.zeros(N, problem.k, dtype=torch.float64)
    keep = min(problem.k, int((S > S[0] * 1e-10).sum()) if S.numel() and S[0] > 0 else 0)
    out[:, :keep] = U[:, :keep]
    return out


def _parameter_method(problem: Problem, name: str) -> None:
    _directions_only(problem, name)
    if problem.over not in ("inputs", "flattened"):
        raise NotApplicable(f"{name} maps parameter directions to inputs, not to {problem.over}")


@register_method(
    "gauss_newton_top",
    source="top Gauss–Newton eigenvectors mapped to data space as J v (curvature directions)",
)
def gauss_newton_top(problem: Problem) -> Tensor:
    """Top-k eigenvectors v of the Gauss–Newton matrix G = (1/N) Σ J_nᵀ H_n J_n of the
    problem's loss on its inputs (Lanczos, matrix-free), mapped to data space as J v."""
    _parameter_method(problem, "gauss_newton_top")
    G = GaussNewtonOperator(problem.model, problem.loss, problem.inputs, problem.targets)
    if problem.k >= G.shape[0] - 1:
        raise NotApplicable("the budget is not below the parameter count")
    probe = torch.randn(G.shape[0], 1, generator=problem.generator("gn-probe"), dtype=torch.float64)
    if not G.matmat(probe).abs().max() > 0:  # e.g. a log-likelihood read from log-probabilities
        raise NotApplicable("the loss is linear in the model's outputs: its Gauss–Newton is zero")
    V = top_eigenpairs(G, problem.k, seed=problem.seed, tol=1e-6).vectors
    return data_images(problem, G.jacobian.matvec_jacobian(unflatten(V, G.layout)))


def _gradient_noise(problem: Problem) -> GradientNoise:
    return GradientNoise.from_model(
        problem.model, problem.loss, problem.inputs, problem.targets, chunk_size=QDG_CHUNK
    )


@register_method(
    "grad_cov_top",
    source="top eigenvectors of the gradient-noise covariance C mapped to data space as J v",
)
def grad_cov_top(problem: Problem) -> Tensor:
    """Top-k eigenvectors v of the per-example gradient covariance C = E[g gᵀ] − ḡ ḡᵀ on the
    problem's inputs (from the N × N Gram of centred gradients), mapped to data space as J v."""
    _parameter_method(problem, "grad_cov_top")
    noise = _gradient_noise(problem)
    Gc = noise.G - noise.mean()
    values, U = eigh_sorted(Gc @ Gc.T / noise.n_examples)
    k = min(problem.k, int((values > values[0] * 1e-12).sum()))
    V = Gc.T @ U[:, :k] / (values[:k] * noise.n_examples).sqrt()  # orthonormal (P, k)
    op = EntkOperator(problem.model, problem.inputs, output="full")
    return data_images(problem, op.matvec_jacobian(unflatten(V, noise.layout)))


@register_method(
    "whitened_entk",
    source="eNTK whitened by the gradient noise (design notes' canonical kernel), Jv images",
)
def whitened_entk(problem: Problem) -> Tensor:
    """Top-k parameter-space eigenvectors v = S u of the noise-whitened kernel Sᵀ JᵀJ S with
    S Sᵀ = C (per-example loss-gradient covariance on the problem's inputs), mapped to data
    space as J v."""
    _parameter_method(problem, "whitened_entk")
    noise = _gradient_noise(problem)
    kernel = WhitenedKernel(
        problem.model, problem.inputs, noise_factor(noise), layout=noise.layout, output="full"
    )
    k = min(problem.k, kernel.A.shape[1])
    return data_images(problem, kernel.eigenpairs(k).images)


@register_method(
    "activation_pca",
    source="principal components of hidden activations, the baseline of Lin 2025 v4",
)
def activation_pca(problem: Problem) -> Tensor | np.ndarray:
    """Top-k principal components of the hidden activations: left singular vectors of the
    column-centred activation matrix (zero columns past its rank). For a partition of hidden
    units, k-means of the units' profiles projected on the top-k components."""
    if problem.activations is None:
        raise NotApplicable("the testbed defines no hidden activations")
    if problem.kind == "partition" and problem.over != "units":
        raise NotApplicable("activation_pca partitions hidden units, not inputs")
    with torch.no_grad():
        A = problem.activations(problem.model, problem.inputs).double()
    A = A - A.mean(0, keepdim=True)
    U, S, Vh = torch.linalg.svd(A, full_matrices=False)
    rank = int((S > S[0] * 1e-10).sum()) if S.numel() and S[0] > 0 else 0
    if problem.over == "units":
        embedding = (Vh[: min(problem.k, rank)].T * S[: min(problem.k, rank)]).numpy()
        kmeans = KMeans(n_clusters=problem.k, n_init=10, random_state=problem.seed)
        return kmeans.fit_predict(embedding)
    out = torch.zeros(problem.rows, problem.k, dtype=torch.float64)
    keep = min(problem.k, rank)
    out[:, :keep] = U[:, :keep]
    return out


@register_method("random", source="chance baseline: seeded Gaussian directions / uniform labels")
def random(problem: Problem) -> Tensor:
    """k seeded Gaussian directions, or uniform random labels in k clusters."""
    generator = problem.generator("random")
    if problem.kind == "partition":
        return torch.randint(0, problem.k, (problem.rows,), generator=generator)
    return torch.randn(problem.rows, problem.k, generator=generator, dtype=torch.float64)
