"""T1′ — the eNTK's per-channel blocks count the features of a toy model of superposition
(T1, the spectral-cliff version, is kept beside it, superseded).

Claim (Lin 2025, "Feature Identification via the Empirical NTK", arXiv 2510.00468, v1–v3): in
the Toy Models of Superposition (Elhage et al. 2022) trained on a fixed dataset, the flattened
eNTK tells how many features the model represents.

**T1′ (gating; claims v2, part 1).** Presets ``lin2025_tms_m10_s0.3``, ``lin2025_tms_m10_s0.9``,
``lin2025_tms_m40_s0.9`` (n = 50, the fixed 500-input dataset); confirmatory seeds 3, 4, 5
(seeds 0, 1, 2 were looked at while diagnosing T1 and are recorded with role "diagnostic").
Statistic: per output channel c, ρ_c = t_cᵀ K̃_cc t_c / (‖K̃_cc‖_F ‖t_c‖²), with K_cc the (c, c)
block of the unscaled flattened eNTK of all parameters over the 500 inputs, double-centred over
inputs, and t_c the centred feature column x_{·c} (``tms_kernels.feature_alignments``). The
count is the position of the largest ratio ρ_(i)/ρ_(i+1) in the decreasing order, i = 1 … n − 1
(``tms_kernels.alignment_count``). Pass: |count − r| ≤ 2 on every confirmatory seed of each
preset, r = number of represented features (‖W_j‖² ≥ 0.75). Control: the same network at
initialisation, whose count must *not* be within ±2 of the trained r. Planted: the hand-built
identity and antipodal networks at the preset's size, unrepresented channels dead and alive
(``tms_kernels.planted_model``), count = r exactly — recorded per seed here (never gating)
and asserted in ``tests/test_tms_claims.py``.

Readings fixed before any T1′ value was seen: ρ_c = 0 where K̃_cc = 0 (a dead channel gets
no gradient) or t_c is constant; since every block is positive semi-definite, ρ ∈ [0, 1] and
a negative value can only be round-off; values below 10⁻¹² ρ_(1) are raised to that floor
(as for eigenvalue cliffs in ``metrics.spectra``), so a dead channel's zero makes a ratio of
about 10¹² and a run of zeros ratios of 1; "among the top n" covers all n channels, so the
count ranges over 1 … n − 1; ties go to the smallest i.

**T1 (v1, superseded: it fails its planted positive).** Pre-registered in the TMS issue;
seeds 0, 1, 2. K_β = D^{β/2} Θ D^{β/2} with β = 1 (D = the importances I_c = 0.8^c over output
channels), the flattened eNTK over (input, channel) pairs of the 500 training inputs at the end
of training. The position of the largest λ_i/λ_{i+1} among the top 2n eigenvalues (the number
of eigenvalues above it) must equal the number of represented features r or n = 50, within ±2,
and the initialisation's position must not be within ±2 of r. Recorded beside it: the
position at β = 0.3 and β = 0, and that of the hand-built identity with m = n (every feature
represented, so both counts are n). The top-2n spectrum with the counts marked is saved as
``results/plots/t1_<preset>_seed<seed>.png``; the sorted ρ of T1′ as
``results/plots/t1v2_<preset>_seed<seed>.png``.
"""

from __future__ import annotations

import pytest

from hypotheses.tms_kernels import (
    BETA,
    CASES,
    PLANTED,
    PLANTED_NOTE,
    REPORTED_BETA,
    UNSCALED_BETA,
    V2_CASES,
    alignment_count,
    alignments,
    cliff_match,
    cliff_position,
    planted_truth,
    plot_alignments,
    plot_spectrum,
    role_of,
    setting,
    spectrum,
)
from leaderboard.records import SUPERSEDED_V1

GATING_CLAIMS = ("T1′",)
SUPERSEDED_CLAIMS = ("T1",)

# Pre-registered (claims v2, part 1, "T1′ how many features the eNTK sees").
T1V2_TOLERANCE = 2  # |count − r| ≤ 2 on every confirmatory seed
T1V2_CONTROL_MIN_DISTANCE = 3  # at initialisation: |count − r_trained| > 2
T1V2_PLANTED_DISTANCE = 0  # hand-built identity / antipodal networks: count = r exactly

# Pre-registered (TMS issue, "T1 cliffs count features"); superseded by T1′.
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
    common = dict(
        claim="T1",
        testbed="tms",
        preset=preset,
        seed=seed,
        config=s.config,
        role="superseded",
        note=SUPERSEDED_V1,
    )
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


def planted_counts(preset: str, seed: int) -> dict[str, dict[str, int]]:
    """T1′'s count and r of each hand-built network on the seed's inputs."""
    out = {}
    for kind in PLANTED:
        r = planted_truth(preset, seed, kind).n_represented
        out[kind] = {"count": alignment_count(alignments(preset, seed, kind)), "represented": r}
    return out


@pytest.mark.parametrize("preset, seed", V2_CASES)
def test_t1v2_alignment_counts_features(preset, seed, record):
    s = setting(preset, seed)
    r = s.truth.n_represented
    rho = alignments(preset, seed, "trained")
    count = alignment_count(rho)
    init_count = alignment_count(alignments(preset, seed, "init"))
    control = abs(init_count - r)
    planted = planted_counts(preset, seed)
    planted_distance = max(abs(p["count"] - p["represented"]) for p in planted.values())
    ranked = sorted(rho.tolist(), reverse=True)
    extra = {
        "count": count,
        "represented": r,
        "init_count": init_count,
        "largest_ratio": ranked[count - 1] / ranked[count] if count and ranked[count] > 0 else None,
        "rho": [round(v, 5) for v in rho.tolist()],
        "planted": planted,
        "final_loss": float(s.run.log["loss"].iloc[-1]),
        "plot": plot_alignments(preset, seed),
    }
    common = dict(claim="T1′", testbed="tms", preset=preset, seed=seed, config=s.config)
    record(
        statistic="alignment_count_distance_to_represented",
        value=abs(count - r),
        threshold=T1V2_TOLERANCE,
        comparison="<=",
        control_value=control,
        extra=extra,
        **common,
        **role_of(seed),
    )
    record(
        statistic="control_init_alignment_count_distance_to_represented",
        value=control,
        threshold=T1V2_CONTROL_MIN_DISTANCE,
        comparison=">=",
        extra=extra,
        **common,
        **role_of(seed),
    )
    record(
        statistic="planted_alignment_count_max_distance",
        value=planted_distance,
        threshold=T1V2_PLANTED_DISTANCE,
        comparison="<=",
        extra=extra,
        role="diagnostic",
        note=PLANTED_NOTE,
        **common,
    )
    record.assert_passed(extra)
