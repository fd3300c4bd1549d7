"""H7 — circuit depth rises over training.

Claim (design notes §3): "Early in training, single-parameter attributions dominate… Later,
attribution mass flows up the hierarchy as higher-order coalitions become load-bearing."

Object. For each pair of consecutive checkpoints (t, t+1), the coalition game of the update,
v(S) = L(θ_t) − L(θ_t + Δθ_S) on the training loss, is decomposed along a fixed binary tree
over the hidden neurons into the leaves' values and the interactions
I(node) = v(A ∪ B) − v(A) − v(B) (:mod:`metrics.coalitions`). The depth profile is the share of
Σ|terms| at each height; its centre of mass is the attribution height. Trees, players and
checkpoint pairs are described in :mod:`hypotheses.coalitions` (eNTK tree built at the final
checkpoint and held fixed; 14 consecutive pairs from initialisation to the end).

Pre-registered in the coalition issue; ``lin2025_mlp``; 3 seeds; every seed must pass.

* H7a: Spearman ρ(step, share of Σ|terms| at height ≥ 1) ≥ 0.8 for the eNTK tree, and the
  share of the final pair ≥ 2× that of the first pair. Recorded beside it: the same ρ for
  the random tree.
* H7b: the final pair's attribution height of the eNTK tree ≥ 1.2× that of the random tree
  (the control).
* Recorded, not gating: the same curves for the Gauss–Newton and whitened-kernel trees, and
  for ``lin2025_transformer`` (heads and MLP neurons as units); plotted in
  ``results/plots/h7_*.png``.

**Superseded by H7′** (``test_h7_resolution_depth.py``): on ``lin2025_mlp`` the game is exactly
pairwise (third-order Möbius dividends are 0), so higher-order coalitions cannot become
load-bearing there, every balanced tree has the same depth profile, and grouping interacting
units *lowers* the attribution height. Still computed and recorded (role "superseded"); it no
longer gates.
"""

from __future__ import annotations

import re

import pytest
from scipy.stats import spearmanr

from hypotheses import tier
from hypotheses.coalitions import TREE_KINDS, depth_profiles, series, unit_trees
from hypotheses.trajectories import SEEDS, plots_dir
from leaderboard.records import results_dir
from testbeds import modadd
from testbeds.trajectory import metric_series

GATING_CLAIMS = ()  # see tests/test_gate.py
SUPERSEDED_CLAIMS = ("H7",)  # by H7′, test_h7_resolution_depth.py
V1_NOTE = "v1 — a pairwise game on lin2025_mlp; the statistic cannot see the tree (see H7′)"

# Pre-registered thresholds (coalition issue, "Claim H7").
H7A_SPEARMAN_MIN = 0.8
H7A_GROWTH_MIN = 2.0
H7B_HEIGHT_RATIO_MIN = 1.2
PRESET = "lin2025_mlp"
TRANSFORMER = "lin2025_transformer"


def depth_verdict(frame) -> dict[str, dict[str, float]]:
    """Per tree: ρ(step, interaction share), last / first share, first and last values."""
    out = {}
    for kind in TREE_KINDS:
        share, height = series(frame, kind, "share"), series(frame, kind, "height")
        out[kind] = {
            "spearman": float(spearmanr(share.index, share.values).statistic),
            "growth": float(share.iloc[-1] / share.iloc[0]) if share.iloc[0] > 0 else float("inf"),
            "share_first": float(share.iloc[0]),
            "share_last": float(share.iloc[-1]),
            "height_first": float(height.iloc[0]),
            "height_last": float(height.iloc[-1]),
        }
    return out


def plot(frame, run, preset: str, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5))
    for kind in TREE_KINDS:
        for ax, stat in ((axes[0, 0], "share"), (axes[0, 1], "height")):
            s = series(frame, kind, stat)
            ax.plot(s.index, s.values, "o-", ms=3, label=f"{kind} tree")
    axes[0, 0].set_ylabel("share of Σ|terms| at height ≥ 1")
    axes[0, 1].set_ylabel("attribution height")
    for ax in axes[0]:
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlabel("first epoch of the checkpoint pair")
        twin = ax.twinx()
        twin.plot(run.log["epoch"], run.log["test_acc"], color="0.6", lw=1)
        twin.set_ylabel("test accuracy (grey)")
        twin.set_ylim(0, 1.02)
    axes[0, 0].legend(fontsize=8)
    for ax, kind in ((axes[1, 0], "entk"), (axes[1, 1], "random")):
        pattern = re.compile(rf"^{kind}/h(\d+)$")
        heights = {int(p.group(1)): m for m in frame["metric"].unique() if (p := pattern.match(m))}
        names = [heights[h] for h in sorted(heights)]
        grid = np.stack([metric_series(frame, m).values for m in names])  # (heights, pairs)
        steps = metric_series(frame, names[0]).index
        image = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis", vmin=0)
        ax.set_xticks(range(len(steps)), [str(s) for s in steps], rotation=90, fontsize=7)
        ax.set_xlabel("first epoch of the checkpoint pair")
        ax.set_ylabel("tree height")
        ax.set_title(f"depth profile, {kind} tree (share of Σ|terms|)", fontsize=9)
        fig.colorbar(image, ax=ax)
    fig.suptitle(f"H7 {preset} seed {run.seed}: attribution over the unit hierarchy", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save(frame, run, preset: str) -> None:
    frame.to_csv(plots_dir("H7") / f"{preset}_seed{run.seed}.csv", index=False)
    plots = results_dir() / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    plot(frame, run, preset, plots / f"h7_{preset}_seed{run.seed}.png")


def extra_of(frame, verdict, trees) -> dict:
    v_units = metric_series(frame, "v_units")
    return {
        "pairs": int(frame["step"].nunique()),
        "first_steps": [int(s) for s in v_units.index],
        "trees": {
            kind: {k: round(v, 4) for k, v in values.items()} for kind, values in verdict.items()
        },
        "max_abs_residual": max(
            float(series(frame, kind, "residual").abs().max()) for kind in TREE_KINDS
        ),
        "v_units_first_last": [float(v_units.iloc[0]), float(v_units.iloc[-1])],
        "units": trees["entk"].n_leaves,
    }


def record_verdict(record, verdict, extra, common, growth: bool) -> None:
    """H7a's ρ (and, with ``growth``, its last / first share) and H7b's height ratio, each
    with the random tree's value beside it; judged against its threshold unless ``common``
    records diagnostics (``kind="diagnostic"``: values without a verdict)."""
    judged = common.get("kind", "claim") == "claim"
    entk, random = verdict["entk"], verdict["random"]
    rows = [
        ("spearman_step_interaction_share", entk["spearman"], H7A_SPEARMAN_MIN, random["spearman"])
    ]
    if growth:
        rows.append(
            ("interaction_share_last_over_first", entk["growth"], H7A_GROWTH_MIN, random["growth"])
        )
    rows.append(
        (
            "attribution_height_entk_over_random",
            entk["height_last"] / random["height_last"],
            H7B_HEIGHT_RATIO_MIN,
            random["height_last"],
        )
    )
    for statistic, value, threshold, control in rows:
        criterion = dict(threshold=threshold, comparison=">=") if judged else {}
        record(
            statistic=statistic,
            value=value,
            control_value=control,
            extra=extra,
            **criterion,
            **common,
        )


@pytest.mark.parametrize("seed", SEEDS)
def test_h7_circuit_depth_rises(seed, record):
    config = tier.preset(modadd, PRESET)
    run = modadd.train(config, seed)
    trees = unit_trees(run)
    frame = depth_profiles(run, trees)
    verdict = depth_verdict(frame)
    save(frame, run, PRESET)
    extra = extra_of(frame, verdict, trees)
    common = dict(
        claim="H7",
        testbed=modadd.TESTBED,
        preset=PRESET,
        seed=seed,
        config=config,
        role="superseded",
        note=V1_NOTE,
    )
    record_verdict(record, verdict, extra, common, growth=True)
    record.assert_passed(extra)


@pytest.mark.parametrize("seed", SEEDS)
def test_h7_transformer_recorded(seed, record):
    """The same statistics on the transformer; recorded and plotted, not asserted."""
    config = tier.preset(modadd, TRANSFORMER)
    run = modadd.train(config, seed)
    trees = unit_trees(run)
    frame = depth_profiles(run, trees)
    verdict = depth_verdict(frame)
    save(frame, run, TRANSFORMER)
    extra = extra_of(frame, verdict, trees)
    v_update = metric_series(frame, "v_update")
    extra["v_update_first_last"] = [float(v_update.iloc[0]), float(v_update.iloc[-1])]
    common = dict(
        claim="H7",
        testbed=modadd.TESTBED,
        preset=TRANSFORMER,
        seed=seed,
        config=config,
        kind="diagnostic",
        role="diagnostic",
        note="transformer: recorded and plotted, never gating",
    )
    record_verdict(record, verdict, extra, common, growth=False)
