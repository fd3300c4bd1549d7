"""Pure computations on models, batches and matrices: kernels, operators and spectra.

Every public name of the submodules listed in ``_EXPORTS`` can be imported from here
(``from metrics import effective_rank``); it is loaded from its submodule the first time it is
asked for. So ``import metrics.spectra`` runs ``metrics/spectra.py`` and what it imports, not
the whole package, and a cache key follows that (:mod:`testbeds.sources`): a computation whose
code imports ``metrics.spectra`` is recomputed when that file changes, not when
``metrics/coalitions.py`` does. Code that takes names from ``metrics`` itself depends on every
module in it. :func:`~metrics.entk.entk` shares its name with its submodule and is bound here
at import.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from metrics.entk import entk as entk  # the name of its own submodule: bound here

_EXPORTS: dict[str, tuple[str, ...]] = {
    "metrics.alignment": ("centered_alignment", "channel_blocks"),
    "metrics.coalitions": (
        "TreeDecomposition",
        "UpdateGame",
        "all_coalitions",
        "lattice_values",
        "mobius_transform",
        "parameter_masks",
        "tree_decomposition",
        "tree_decompositions",
        "winter_value",
    ),
    "metrics.curvature": (
        "CurvatureOperator",
        "GaussNewtonOperator",
        "gauss_newton_operator",
        "hessian_operator",
        "hutchinson_trace",
    ),
    "metrics.eigensolvers": ("DenseOperator", "Eigenpairs", "top_eigenpairs"),
    "metrics.entk": (
        "UnitGram",
        "entk_parameter_block",
        "hidden_units",
        "parameter_groups",
        "unit_gram",
        "unit_kernels",
        "unit_similarity",
    ),
    "metrics.gmatrix": ("GMatrix", "TraitJacobian", "g_matrix", "trait_jacobian"),
    "metrics.hierarchy": (
        "Tree",
        "agglomerative_tree",
        "block_energy_similarity",
        "gauss_newton_factor",
        "output_jacobian",
        "spectral_bisection",
        "whitened_unit_similarity",
    ),
    "metrics.layer_kernels": ("LayerKernels", "layer_kernels"),
    "metrics.noise": ("GradientNoise", "per_example_gradients"),
    "metrics.operators": ("EntkOperator", "channel_scale", "flatten_full", "flattened_entk"),
    "metrics.police": ("PoliceScores", "loss_hvp", "police_scores", "police_scores_for"),
    "metrics.similarity": (
        "canonical_correlations",
        "center_gram",
        "hsic",
        "kernel_svcca",
        "kernel_svcca_basis",
        "linear_cka",
        "linear_cka_features",
        "linear_cka_matrix",
        "svcca",
        "svcca_of_bases",
    ),
    "metrics.spectra": (
        "cosine_normalize",
        "effective_rank",
        "eigh_sorted",
        "largest_cliff",
        "normalized_overlap",
        "orthonormal_basis",
        "overlap_chance",
        "participation_ratio",
        "principal_angles",
        "spectral_cliffs",
        "stable_rank",
        "subspace_overlap",
    ),
    "metrics.stationarity": (
        "Stationarity",
        "eigenspace_stationarity",
        "random_rotation",
        "scale_spectrum",
    ),
    "metrics.whitened": ("WhitenedEigenpairs", "WhitenedKernel", "noise_factor"),
}
_SOURCE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(["entk", *_SOURCE])


def __getattr__(name: str) -> Any:
    """A public name of a submodule, or a submodule (``metrics.spectra``), loaded on first use."""
    if name in _SOURCE:
        value = getattr(importlib.import_module(_SOURCE[name]), name)
    elif not name.startswith("_") and name in _submodules():
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_submodules()})


def _submodules() -> set[str]:
    return {path.stem for path in Path(__file__).parent.glob("*.py") if path.stem != "__init__"}
