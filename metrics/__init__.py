"""Pure computations on models, batches and matrices: kernels, operators and spectra."""

from metrics.alignment import centered_alignment, channel_blocks
from metrics.coalitions import (
    TreeDecomposition,
    UpdateGame,
    all_coalitions,
    lattice_values,
    mobius_transform,
    parameter_masks,
    tree_decomposition,
    tree_decompositions,
    winter_value,
)
from metrics.curvature import (
    CurvatureOperator,
    GaussNewtonOperator,
    gauss_newton_operator,
    hessian_operator,
    hutchinson_trace,
)
from metrics.eigensolvers import DenseOperator, Eigenpairs, top_eigenpairs
from metrics.entk import (
    UnitGram,
    entk,
    entk_parameter_block,
    hidden_units,
    parameter_groups,
    unit_gram,
    unit_kernels,
    unit_similarity,
)
from metrics.gmatrix import GMatrix, TraitJacobian, g_matrix, trait_jacobian
from metrics.hierarchy import (
    Tree,
    agglomerative_tree,
    block_energy_similarity,
    gauss_newton_factor,
    output_jacobian,
    spectral_bisection,
    whitened_unit_similarity,
)
from metrics.layer_kernels import LayerKernels, layer_kernels
from metrics.noise import GradientNoise, per_example_gradients
from metrics.operators import EntkOperator, channel_scale, flatten_full, flattened_entk
from metrics.police import PoliceScores, loss_hvp, police_scores, police_scores_for
from metrics.similarity import (
    canonical_correlations,
    center_gram,
    hsic,
    kernel_svcca,
    kernel_svcca_basis,
    linear_cka,
    linear_cka_features,
    linear_cka_matrix,
    svcca,
    svcca_of_bases,
)
from metrics.spectra import (
    cosine_normalize,
    effective_rank,
    eigh_sorted,
    largest_cliff,
    normalized_overlap,
    orthonormal_basis,
    overlap_chance,
    participation_ratio,
    principal_angles,
    spectral_cliffs,
    stable_rank,
    subspace_overlap,
)
from metrics.stationarity import (
    Stationarity,
    eigenspace_stationarity,
    random_rotation,
    scale_spectrum,
)
from metrics.whitened import WhitenedEigenpairs, WhitenedKernel, noise_factor

__all__ = [
    # the eNTK
    "entk",
    "entk_parameter_block",
    "parameter_groups",
    "hidden_units",
    "unit_kernels",
    "unit_similarity",
    "unit_gram",
    "UnitGram",
    # matrix-free flattened eNTK and top-k eigenpairs
    "EntkOperator",
    "flattened_entk",
    "flatten_full",
    "channel_scale",
    "top_eigenpairs",
    "Eigenpairs",
    "DenseOperator",
    # per-example gradients and gradient noise
    "per_example_gradients",
    "GradientNoise",
    # curvature: Hessian and Gauss–Newton operators, trace estimates
    "hessian_operator",
    "gauss_newton_operator",
    "CurvatureOperator",
    "GaussNewtonOperator",
    "hutchinson_trace",
    # the noise-whitened eNTK
    "noise_factor",
    "WhitenedKernel",
    "WhitenedEigenpairs",
    # spectra and subspaces
    "eigh_sorted",
    "spectral_cliffs",
    "largest_cliff",
    "orthonormal_basis",
    "subspace_overlap",
    "normalized_overlap",
    "overlap_chance",
    "principal_angles",
    "cosine_normalize",
    "effective_rank",
    "participation_ratio",
    "stable_rank",
    # eigenspace stationarity of a kernel, with its controls
    "eigenspace_stationarity",
    "Stationarity",
    "random_rotation",
    "scale_spectrum",
    # layerwise forward and backward kernels
    "layer_kernels",
    "LayerKernels",
    # representational similarity: CKA, CCA, SVCCA
    "center_gram",
    "hsic",
    "linear_cka",
    "linear_cka_features",
    "linear_cka_matrix",
    "canonical_correlations",
    "svcca",
    "kernel_svcca",
    "kernel_svcca_basis",
    "svcca_of_bases",
    # trees over parameter units and the similarities they are built from
    "Tree",
    "spectral_bisection",
    "agglomerative_tree",
    "block_energy_similarity",
    "gauss_newton_factor",
    "output_jacobian",
    "whitened_unit_similarity",
    # coalition games of a training update: tree decomposition, Winter value, Möbius transform
    "UpdateGame",
    "parameter_masks",
    "tree_decomposition",
    "tree_decompositions",
    "TreeDecomposition",
    "winter_value",
    "mobius_transform",
    "all_coalitions",
    "lattice_values",
    # police sectors
    "police_scores",
    "police_scores_for",
    "loss_hvp",
    "PoliceScores",
    # the trait × trait G-matrix
    "trait_jacobian",
    "TraitJacobian",
    "g_matrix",
    "GMatrix",
    # per-channel eNTK blocks and their centred alignment with a feature
    "channel_blocks",
    "centered_alignment",
]
