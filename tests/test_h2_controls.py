"""Falsifiability of the H2 statistics (SCIENCE.md §2) on a real kernel: the trace eNTK of a
small language model's last-position log-probabilities.

Planted positive: the kernel with its top-16 eigenvalues scaled (eigenvectors kept) passes H2a
and H2b. Negative controls: a Haar-random rotation of the kernel fails H2a; the unchanged
kernel fails H2b (nothing retuned). For H2d, a G-matrix whose top eigenvalue is scaled passes
both H2d criteria, and a random rotation fails the overlap.
"""

from __future__ import annotations

import math

import torch

from hypotheses.test_h2_rl_stationarity import (
    H2A_OVERLAP_MIN,
    H2B_MEDIAN_ABS_LOG_RATIO_MIN,
    H2D_OVERLAP_MIN,
    H2D_TOP,
    H2D_TOP_CHANGE_MIN,
    K_TOP,
)
from metrics.entk import entk
from metrics.gmatrix import GMatrix
from metrics.stationarity import eigenspace_stationarity, random_rotation, scale_spectrum
from testbeds import lm


def _kernel() -> torch.Tensor:
    lang = lm.Language()
    model = lm.TinyLM(lang.vocab_size, 24, 16, 2, 1, 32)
    model.reset_parameters(torch.Generator().manual_seed(0))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(10.0)
    prompts = lm.probe_prompts(lang).tokens[::2]  # 128 prompts
    return entk(lm.LastTokenLogProbs(model), prompts, output="trace").double()


def test_planted_retuning_passes_h2a_and_h2b_and_rotation_fails():
    K = _kernel()
    factors = torch.tensor([1.25, 0.8] * (K_TOP // 2), dtype=torch.float64)
    planted = eigenspace_stationarity(K, scale_spectrum(K, factors, K_TOP), K_TOP)
    assert planted.overlap >= H2A_OVERLAP_MIN
    assert planted.median_abs_log_ratio >= H2B_MEDIAN_ABS_LOG_RATIO_MIN
    unchanged = eigenspace_stationarity(K, K, K_TOP)
    assert unchanged.median_abs_log_ratio < H2B_MEDIAN_ABS_LOG_RATIO_MIN  # H2b can fail
    rotated = eigenspace_stationarity(
        K, random_rotation(K, torch.Generator().manual_seed(0)), K_TOP
    )
    assert rotated.overlap < H2A_OVERLAP_MIN  # H2a can fail
    assert rotated.overlap < 3 * rotated.chance


def test_h2d_planted_g_matrix_and_rotation():
    g = torch.Generator().manual_seed(1)
    J = torch.randn(14, 40, generator=g, dtype=torch.float64)
    G = J @ J.T
    names = [f"t{i}" for i in range(14)]
    before = GMatrix.from_matrix(G, names)
    scaled = GMatrix.from_matrix(scale_spectrum(G, 1.5, 1), names)
    assert before.top_overlap(scaled, H2D_TOP) >= H2D_OVERLAP_MIN
    change = scaled.eigenvalues[0] / before.eigenvalues[0] - 1
    assert abs(change.item()) >= H2D_TOP_CHANGE_MIN
    rotated = GMatrix.from_matrix(random_rotation(G, g), names)
    assert before.top_overlap(rotated, H2D_TOP) < H2D_OVERLAP_MIN


# ---- H2′: the gap position, ψ, the rescaled control and the bootstrap interval (unit tests of
# arithmetic on hand-made kernels; H2′ has no hand-built network and is exploratory) -----------
def _spectrum_kernel(eigenvalues, seed=0) -> torch.Tensor:
    n = len(eigenvalues)
    q, _ = torch.linalg.qr(
        torch.randn(n, n, generator=torch.Generator().manual_seed(seed)).double()
    )
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T


def test_gap_position_is_the_largest_consecutive_eigenvalue_ratio():
    from hypotheses.test_h2_replicated_rl import gap_position

    lam = [10.0, 9.0, 8.5, 2.0, 1.9, 1.8] + [1.0 - 0.01 * i for i in range(40)]
    k, ratio = gap_position(_spectrum_kernel(lam))
    assert k == 3 and abs(ratio - 8.5 / 2.0) < 1e-9
    # a larger ratio beyond position 32 is not looked at
    far = [1.0 - 0.001 * i for i in range(34)] + [0.001] + [0.0009] * 5
    assert gap_position(_spectrum_kernel(far))[0] <= 32


def test_psi_is_rotation_per_squared_relative_change_and_the_rescaling_matches_sizes():
    from hypotheses.test_h2_replicated_rl import psi, relative_change, rescaled

    K = _spectrum_kernel([5.0, 4.0, 3.0, 0.5, 0.4, 0.3, 0.2, 0.1])
    retuned = scale_spectrum(K, [1.3, 0.8, 1.1], 3)  # eigenvectors kept: no rotation at all
    stats = psi(K, retuned, 3)
    assert abs(stats["overlap"] - 1.0) < 1e-10 and stats["psi"] < 1e-8
    noise = K + 0.3 * _spectrum_kernel([1.0] * 4 + [-1.0] * 4, seed=5)
    assert psi(K, noise, 3)["psi"] > 1e-3
    for rel in (0.01, 0.2):
        assert abs(relative_change(K, rescaled(K, noise, rel)) - rel) < 1e-12
    expected = (1 - eigenspace_stationarity(K, noise, 3).overlap) / relative_change(K, noise) ** 2
    assert abs(psi(K, noise, 3)["psi"] - expected) < 1e-12


def test_bootstrap_interval_of_a_median_ratio():
    from hypotheses.test_h2_replicated_rl import bootstrap_ratio_interval

    g = torch.Generator().manual_seed(0)
    low, high = bootstrap_ratio_interval([0.1, 0.12, 0.11], [1.0, 0.9, 1.1], g)
    assert 0.09 <= low <= high <= 0.134  # extreme resamples: 0.1 / 1.1 and 0.12 / 0.9
    low, high = bootstrap_ratio_interval([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], g)
    assert low == high == 1.0
    again = bootstrap_ratio_interval(
        [0.1, 0.5, 2.0], [1.0, 0.2, 3.0], torch.Generator().manual_seed(3)
    )
    assert again == bootstrap_ratio_interval(
        [0.1, 0.5, 2.0], [1.0, 0.2, 3.0], torch.Generator().manual_seed(3)
    )
    assert again[0] < 1 < again[1]  # overlapping arms: the interval straddles 1


def test_h2_v2_verdicts_read_the_replicates():
    import pandas as pd

    from hypotheses.test_h2_replicated_rl import verdicts

    rows = [
        {"condition": "continue", "replicate": 0, "psi": 2.0, "overlap": 0.9,
         "trait_overlap": 0.99, "trait_top_change": 0.01}
    ]  # fmt: skip
    for r, (p_rl, p_sft, p_rand) in enumerate([(0.1, 1.0, 1.0), (0.2, 2.0, 0.8), (0.3, 1.5, 1.2)]):
        rows += [
            {"condition": "rl", "replicate": r, "psi": p_rl, "overlap": 0.96 + 0.01 * r,
             "median_abs_log_ratio": 0.1 * (r + 1), "trait_overlap": 0.95 - 0.01 * r,
             "trait_top_change": 0.2 + r},
            {"condition": "sft", "replicate": r, "psi": p_sft, "overlap": 0.8},
            {"condition": "random", "replicate": r, "psi": 9.0, "median_abs_log_ratio": 0.01},
            {"condition": "random_rescaled", "replicate": r, "psi": p_rand},
        ]  # fmt: skip
    v = verdicts(pd.DataFrame(rows), seed=3)
    assert v["h2a_min_overlap_rl"] == 0.96 and abs(v["h2a_psi_ratio_random"] - 0.2) < 1e-12
    assert abs(v["h2b_rl"] - 0.1) < 1e-12 and v["h2b_random"] == 0.01  # every run: min, max
    assert abs(v["h2c_psi_ratio_sft"] - 0.2 / 1.5) < 1e-12 and v["h2c_interval_high"] < 1
    assert abs(v["h2d_min_trait_overlap"] - 0.93) < 1e-12 and v["h2d_min_trait_top_change"] == 0.2
    assert v["h2d_continue_trait_overlap"] == 0.99 and v["h2d_continue_trait_top_change"] == 0.01


def test_h2_v2_end_to_end_on_tiny_runs(tmp_path, monkeypatch):
    import dataclasses

    from hypotheses import test_h2_replicated_rl as h2v2
    from testbeds import runs
    from tests.test_lm import TINY_RL

    monkeypatch.setenv(runs.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("NTKBENCH_RESULTS", str(tmp_path / "results"))
    tiny = {
        "lm_rl": TINY_RL,
        "lm_sft": lm.SFTConfig(rl=TINY_RL, candidates=4, lr=1e-3, check_every=1),
        "lm_continue": lm.ContinueConfig(rl=TINY_RL),
    }
    monkeypatch.setattr(  # the claim reads its presets through hypotheses.tier
        h2v2.tier,
        "preset",
        lambda bed, name, **kw: dataclasses.replace(tiny[name], **kw) if kw else tiny[name],
    )
    a = h2v2.analyse(seed=0)
    frame = a["frame"]
    assert 1 <= a["k_star"] <= 32 and a["gap"] >= 1
    counts = frame.groupby("condition").size().to_dict()
    assert counts == {"continue": 1, "rl": 3, "sft": 3, "random": 3, "random_rescaled": 3}
    rl = frame[frame.condition == "rl"].reset_index()
    scaled = frame[frame.condition == "random_rescaled"].reset_index()
    assert (abs(rl.rel_change - scaled.rel_change) < 1e-9).all()  # the same size of change
    assert rl.probe_kl.nunique() == 3  # three different replicates
    v = h2v2.verdicts(frame, seed=0)
    assert all(torch.isfinite(torch.tensor(x)) for x in v.values())
    assert a["n_traits"] == len(lm.trait_battery(TINY_RL.base.language).names)
    assert not math.isnan(frame.loc[0, "trait_overlap"])  # the continued-pretraining control
    assert (tmp_path / "results" / "h2_v2" / "seed0.csv").exists()
