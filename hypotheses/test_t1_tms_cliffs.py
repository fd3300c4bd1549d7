"""T1 — spectral cliffs of the eNTK count the features of a toy model of superposition.

Claim (Lin 2025, "Feature Identification via the Empirical NTK", arXiv 2510.00468, v1–v3): in
the Toy Models of Superposition (Elhage et al. 2022) trained on a fixed dataset, the spectrum
of the flattened eNTK has a cliff at the number of features the model represents, or at the
total number of features.

Pre-registered in the TMS issue; presets ``lin2025_tms_m10_s0.3``, ``lin2025_tms_m10_s0.9``,
``lin2025_tms_m40_s0.9`` (n = 50); 3 seeds; pass means every (preset, seed) passes.

Statistic. K_β = D^{β/2} Θ D^{β/2} with β = 1 (D = the importances I_c = 0.8^c over output
channels), the flattened eNTK over (input, channel) pairs of the 500 training inputs at the end
of training. The position of the largest λ_i/λ_{i+1} among the top 2n eigenvalues (the number
of eigenvalues above it) must equal the number of represented features r (‖W_j‖² ≥ 0.75) or
n = 50, within ±2. The record keeps which count it matched and both counts.

Control. The same network at initialisation: its position must *not* be within ±2 of the
trained network's r.

Recorded, not gating: the position at β = 0.3 (the issue's second β) and at β = 0 (the plain
flattened eNTK, whose spectrum Lin 2025 plots), and the position of the hand-built orthogonal
solution on the same inputs (every feature represented, so both counts are n). The top-2n
spectrum with the counts marked is saved as ``results/plots/t1_<preset>_seed<seed>.png``.
"""

from __future__ import annotations

import pytest

from hypotheses.tms_kernels import (
    BETA,
    CASES,
    REPORTED_BETA,
    UNSCALED_BETA,
    cliff_match,
    cliff_position,
    plot_spectrum,
    setting,
    spectrum,
)

# Pre-registered (TMS issue, "T1 cliffs count features").
T1_TOLERANCE = 2  # |position − count| ≤ 2 for r or n
T1_CONTROL_MIN_DISTANCE = 3  # at initialisation: |position − r_trained| > 2


@pytest.mark.parametrize("preset, seed", CASES)
def test_t1_cliff_counts_features(preset, seed, record):
    s = setting(preset, seed)
    n, r = s.n, s.truth.n_represented
    position = cliff_position(spectrum(preset, seed, "trained", BETA).values, n)
    distance, matched = cliff_match(position, r, n)
    init_position = cliff_position(spectrum(preset, seed, "init", BETA).values, n)
    control = abs(init_position - r)
    extra = {
        "position": position,
        "represented": r,
        "total": n,
        "matched": matched if distance <= T1_TOLERANCE else "none",
        "init_position": init_position,
        "position_beta_0.3": cliff_position(
            spectrum(preset, seed, "trained", REPORTED_BETA).values, n
        ),
        "position_beta_0": cliff_position(
            spectrum(preset, seed, "trained", UNSCALED_BETA).values, n
        ),
        "planted_position": cliff_position(spectrum(preset, seed, "planted", BETA).values, n),
        "final_loss": float(s.run.log["loss"].iloc[-1]),
        "plot": plot_spectrum(preset, seed),
    }
    common = dict(claim="T1", testbed="tms", preset=preset, seed=seed, config=s.config)
    record(
        statistic="cliff_distance_to_nearer_count",
        value=distance,
        threshold=T1_TOLERANCE,
        comparison="<=",
        control_value=control,
        extra=extra,
        **common,
    )
    record(
        statistic="control_init_cliff_distance_to_represented",
        value=control,
        threshold=T1_CONTROL_MIN_DISTANCE,
        comparison=">=",
        extra=extra,
        **common,
    )
    record.assert_passed(extra)
