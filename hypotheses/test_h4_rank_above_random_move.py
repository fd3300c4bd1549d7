"""H4′ — kernel rank climbs during training, above what a random move of the same size does
(claims v2, part 2).

H4 (``test_h4_kernel_rank.py``, superseded) asks erank(end) / erank(init) ≥ 1.5 of the
cosine-normalised trace eNTK. Its own control — the initial network moved by a Gaussian random
direction with, tensor by tensor, the norm of the whole training update — raised the erank
1.5–3.8× on seeds 0–2: the registered ratio sits inside the noise floor (SCIENCE.md rule 8).

**H4′ (exploratory; pre-registered in the claims-v2 part-2 issue).**

* Testbeds and probe sets as H4 (``hypotheses/trajectories.py``): ``lin2025_mlp``,
  ``lin2025_transformer``, ``lin2025_tms_m10_s0.9`` and ``lm_pretrain``; the checkpoints of
  H4's plan (every checkpoint of the MLP and TMS runs, every third plus the last of the
  transformer and LM runs).
* Confirmatory seeds 3, 4, 5 (seeds 0–2 were looked at for v1).
* Statistic: the Roy–Vetterli effective rank of the cosine-normalised trace eNTK on the probe
  set at each checkpoint (H4's ``cosine_erank``, one function for the trajectory and the
  control).
* Criteria (both on every seed): Spearman ρ(step, erank) ≥ 0.8, and
  erank(end)/erank(init) ≥ 1.5 × the same ratio for the random move of equal per-tensor norm,
  i.e. erank(end) / erank(moved) ≥ 1.5 (recorded as ``erank_end_over_random_move``; the control
  value beside it is the random move's own ratio erank(moved) / erank(init)).

Role: exploratory. No hand-built training trajectory is known whose erank climbs by 1.5× more
than a random move of the same per-tensor norm, so the statistic has no planted positive
(SCIENCE.md rule 6) and cannot gate.
"""

from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr

import testbeds
from hypotheses import tier
from hypotheses.compute import to_device
from hypotheses.test_h4_kernel_rank import PERTURBATION_SEED, TESTBEDS
from hypotheses.trajectories import (
    PLANS,
    cosine_effective_rank,
    plots_dir,
    probe_for,
    thinned,
)
from metrics.entk import entk
from testbeds import lm
from testbeds.contract import Probe
from testbeds.trajectory import map_checkpoints, metric_series

GATING_CLAIMS = ()  # see tests/test_gate.py
EXPLORATORY_CLAIMS = ("H4′",)

SEEDS = tier.seeds(3, 4, 5)  # confirmatory: v1 was looked at on 0, 1, 2
# Pre-registered (claims v2, part 2, "H4′"): H4's thresholds, the ratio relative to its control.
SPEARMAN_MIN = 0.8
RELATIVE_RATIO_MIN = 1.5
NOTE = "no hand-built trajectory that outruns a random move exists (exploratory)"


def cosine_erank(model, probe: Probe) -> float:
    """Effective rank of the cosine-normalised trace eNTK of ``model`` on the probe set,
    formed on the compute device."""
    readout, inputs = to_device(probe.readout(model), probe.inputs)
    K = entk(readout, inputs, output="trace").cpu()
    return cosine_effective_rank(K)  # = rank_statistics(K, {}, None)["erank"]


def erank_trajectory(run, preset: str):
    """Cosine erank at H4's checkpoints of ``run`` (cached per checkpoint)."""
    every, _ = PLANS[preset]
    steps = thinned(run.steps, every) if every > 1 else run.steps
    probe = probe_for(run)
    return map_checkpoints(
        run, lambda model, step: cosine_erank(model, probe), name="cosine-erank",
        steps=steps, preset=preset,
    )  # fmt: skip


def h4_v2_statistics(run, preset: str, seed: int) -> dict[str, float]:
    """Spearman ρ, the end/init ratio, the random move's ratio and their quotient."""
    erank = metric_series(erank_trajectory(run, preset), "cosine-erank")
    moved = lm.random_perturbation(
        run.model_at(0), run.final_model(), torch.Generator().manual_seed(PERTURBATION_SEED + seed)
    )
    moved_erank = cosine_erank(moved, probe_for(run))
    init, end = float(erank.iloc[0]), float(erank.iloc[-1])
    return {
        "spearman": float(spearmanr(erank.index, erank.values).statistic),
        "erank_init": init,
        "erank_end": end,
        "erank_moved": moved_erank,
        "end_over_init": end / init,
        "moved_over_init": moved_erank / init,
        "end_over_moved": end / moved_erank,
        "checkpoints": int(len(erank)),
    }


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("preset", list(TESTBEDS))
def test_h4_v2_rank_climbs_above_a_random_move(preset, seed, record):
    name, _ = TESTBEDS[preset]
    run = testbeds.get(name).train(tier.preset(name, preset), seed)
    stats = h4_v2_statistics(run, preset, seed)
    erank_trajectory(run, preset).to_csv(
        plots_dir("H4_v2") / f"{preset}_seed{seed}.csv", index=False
    )
    common = dict(
        claim="H4′", testbed=name, preset=preset, seed=seed, config=run.config,
        role="exploratory", note=NOTE, extra=stats,
    )  # fmt: skip
    record(
        statistic="spearman_step_erank", value=stats["spearman"], threshold=SPEARMAN_MIN,
        comparison=">=", **common,
    )  # fmt: skip
    record(
        statistic="erank_end_over_random_move", value=stats["end_over_moved"],
        threshold=RELATIVE_RATIO_MIN, comparison=">=", control_value=stats["moved_over_init"],
        chance=1.0, **common,
    )  # fmt: skip
    record.assert_passed(stats)
