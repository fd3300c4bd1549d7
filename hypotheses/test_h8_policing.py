"""H8 — policing circuits exist.

Claim (design notes §6): a *police sector* P for a sector Q has E[g_P] ≈ 0, Cov(g_P, g_Q) ≠ 0,
and per-example gradients anti-aligned with Q's through the curvature, E[g_Pᵀ H_PQ g_Q] < 0.

Detector (:mod:`metrics.police`) over the sectors of one tree level, with per-example gradients
g_n of the training loss on the training set (labels as trained, corrupted ones included) and
H the Hessian of that loss: the mean-gradient share s_P = ‖ḡ_P‖² / ‖ḡ‖², the coupling
c_PQ = ‖Cov(g_P, g_Q)‖_F / √(‖C_PP‖_F ‖C_QQ‖_F) and the sign of
κ_PQ = E_n[g_nPᵀ H_PQ g_nQ]. The expectation in κ is taken over ``CURVATURE_EXAMPLES``
training examples drawn with a fixed seed (H is always the Hessian of the whole training loss):
one Hessian-vector product per example and sector.

Sectors: level 3 (8 sectors of 64 neurons) of the eNTK tree of :mod:`hypotheses.coalitions`,
built at the final checkpoint. Negative control, recorded beside: the same detector on random
sector labels (level 3 of a balanced random tree).

Pre-registered in the coalition issue; ``lin2025_mlp`` and the corrupted-label preset
``doshi2023_mlp``, trained (final checkpoint); 3 seeds; every seed must pass: at least one
sector with s_P ≤ 0.01, c_PQ ≥ 0.5 with some Q and κ_PQ < 0 for that Q. Every sector's
(s_P, best c_PQ, sign of κ there) table is recorded per seed (``results/h8/``).

**Superseded by H8′** (``test_h8_police_power.py``): random sector labellings meet
c_PQ ≥ 0.5 (0.91–0.96), and the detector's power on a police circuit inside a sector was never
shown. Still computed and recorded (role "superseded"); it no longer gates.
"""

from __future__ import annotations

import pytest
import torch

from hypotheses import tier
from hypotheses.coalitions import players, sectors, training_set, unit_trees
from hypotheses.trajectories import SEEDS, plots_dir
from metrics.hierarchy import Tree
from metrics.police import police_scores_for
from testbeds import modadd

GATING_CLAIMS = ()  # see tests/test_gate.py
SUPERSEDED_CLAIMS = ("H8",)  # by H8′, test_h8_police_power.py
V1_NOTE = "v1 — random labellings meet its coupling threshold; power never shown (see H8′)"

# Pre-registered thresholds (coalition issue, "Claim H8").
H8_SHARE_MAX = 0.01
H8_COUPLING_MIN = 0.5
H8_LEVEL = 3  # 8 sectors
H8_MIN_POLICE = 1
PRESETS = ("lin2025_mlp", "doshi2023_mlp")
CURVATURE_EXAMPLES = 128
CURVATURE_SEED = 9000  # + seed
CONTROL_SEED = 9500  # + seed: the random sector labels


def scores(run, tree: Tree):
    model = run.final_model()
    loss, x, y = training_set(run)
    generator = torch.Generator().manual_seed(CURVATURE_SEED + run.seed)
    subset = torch.randperm(len(x), generator=generator)[:CURVATURE_EXAMPLES]
    masks = sectors(tree, H8_LEVEL, players(model), model)
    return police_scores_for(model, loss, x, y, masks, curvature_examples=subset)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("preset", PRESETS)
def test_h8_police_sectors_exist(preset, seed, record):
    config = tier.preset(modadd, preset)
    run = modadd.train(config, seed)
    tree = unit_trees(run, ("entk",))["entk"]
    U = tree.n_leaves
    real = scores(run, tree)
    control_tree = Tree.random(U, torch.Generator().manual_seed(CONTROL_SEED + seed))
    control = scores(run, control_tree)

    table = real.table(H8_SHARE_MAX, H8_COUPLING_MIN)
    control_table = control.table(H8_SHARE_MAX, H8_COUPLING_MIN)
    out = plots_dir("H8")
    table.to_csv(out / f"{preset}_seed{seed}.csv", index=False)
    control_table.to_csv(out / f"{preset}_seed{seed}_random_labels.csv", index=False)
    extra = {
        "sectors": [
            {k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in row.items()}
            for row in table.to_dict("records")
        ],
        "control_sectors": [
            {k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in row.items()}
            for row in control_table.to_dict("records")
        ],
        "min_share": float(real.share.min()),
        "epoch": run.steps[-1],
        "curvature_examples": CURVATURE_EXAMPLES,
    }
    record(
        claim="H8",
        testbed=modadd.TESTBED,
        preset=preset,
        seed=seed,
        config=config,
        statistic="police_sectors_at_level_3",
        value=len({p for p, _ in real.police(H8_SHARE_MAX, H8_COUPLING_MIN)}),
        threshold=H8_MIN_POLICE,
        comparison=">=",
        control_value=len({p for p, _ in control.police(H8_SHARE_MAX, H8_COUPLING_MIN)}),
        extra=extra,
        role="superseded",
        note=V1_NOTE,
    )
