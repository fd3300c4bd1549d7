"""H4 — kernel rank climbs during training.

Claim (design notes §4): "watch learning happen as samples become mutually dissimilar and the
kernel rank climbs". Published work points the other way for the raw kernel: tangent kernels
become *more* anisotropic during training (Baratin et al. 2021, "Implicit regularization via
neural feature alignment"; Atanasov et al. 2022, "Neural networks as kernel learners: the
silent alignment effect"); the secondary curves show where the two pictures differ.

Pre-registered in issue 7; seeds 0, 1, 2; a testbed passes only if every seed passes.

* Statistic: the Roy–Vetterli effective rank of the cosine-normalised trace eNTK on the
  testbed's fixed probe set (``hypotheses/trajectories.py``: all p² pairs, the TMS fixed
  dataset, the 256 LM probe prompts) at checkpoints from initialisation to the end (39 for
  ``lin2025_mlp`` and TMS, 14 for ``lin2025_transformer`` and LM pretraining).
* Criterion per testbed (``lin2025_mlp``, ``lin2025_transformer``, the sparse TMS preset
  ``lin2025_tms_m10_s0.9`` — m = 10 hidden dimensions for n = 50 features at S = 0.9, the
  superposition regime — and ``lm_pretrain``): Spearman ρ(step, erank) ≥ 0.8 and
  erank(end) / erank(init) ≥ 1.5.
* Negative control (recorded as the ratio's control value): the initial network moved by a
  Gaussian random direction with, tensor by tensor, the norm of the whole training update
  (``testbeds.lm.random_perturbation``): the same distance travelled without learning.
* **Superseded** by H4′ (``test_h4_rank_above_random_move.py``, claims v2 part 2): the random
  move raises the erank 1.5–3.8× on seeds 0–2, so the ratio threshold sits inside its noise
  floor. Still computed and recorded (role "superseded"); it no longer gates.
* Secondary, recorded and plotted, not gating: the raw kernel's effective rank, the
  loss-gradient Gram's, every layer's (cosine-normalised), and participation ratios.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr

import testbeds
from hypotheses import tier
from hypotheses.trajectories import (
    LM_PRESET,
    SEEDS,
    SPARSE_TMS_PRESET,
    plots_dir,
    probe_for,
    rank_statistics,
    trajectory,
)
from metrics.entk import entk
from testbeds import lm
from testbeds.trajectory import metric_series, plot_trajectory

GATING_CLAIMS = ()  # see tests/test_gate.py
SUPERSEDED_CLAIMS = ("H4",)  # by H4′, test_h4_rank_above_random_move.py
V1_NOTE = "v1 — its random-move control meets the ratio threshold (see H4′)"

# Pre-registered thresholds (issue 7, "H4 kernel rank climbs").
H4_SPEARMAN_MIN = 0.8
H4_RATIO_MIN = 1.5
PERTURBATION_SEED = 4000  # + seed: the random-direction control

# preset → (testbed, the log column drawn on the plots' second axis)
TESTBEDS = {
    "lin2025_mlp": ("modadd", "test_acc"),
    "lin2025_transformer": ("modadd", "test_acc"),
    SPARSE_TMS_PRESET: ("tms", "loss"),
    LM_PRESET: ("lm", "gap"),
}


def rank_verdict(frame: pd.DataFrame) -> dict[str, float]:
    """Spearman ρ(step, erank) and erank(end) / erank(init) of one run's frame."""
    erank = metric_series(frame, "erank")
    rho = spearmanr(erank.index, erank.values).statistic
    return {"spearman": float(rho), "ratio": float(erank.iloc[-1] / erank.iloc[0])}


def cosine_erank(model, probe) -> float:
    """H4's primary statistic of one model on the probe set."""
    K = entk(probe.readout(model), probe.inputs, output="trace")
    return rank_statistics(K, {}, None)["erank"]


def plot(frame: pd.DataFrame, run, preset: str, secondary_axis: str, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 7))
    common = dict(runs=[run], accuracy=secondary_axis, logx=True)
    plot_trajectory(frame, "erank", ax=axes[0, 0], title="erank, cosine-normalised", **common)
    plot_trajectory(
        frame,
        ["erank_raw", "erank_loss_gradient"],
        ax=axes[0, 1],
        title="erank: raw kernel, loss-gradient Gram",
        **common,
    )
    plot_trajectory(
        frame,
        ["participation_ratio", "participation_ratio_raw"],
        ax=axes[1, 0],
        title="participation ratio: cosine-normalised, raw",
        **common,
    )
    layers = sorted(m for m in frame["metric"].unique() if m.startswith("erank_layer/"))
    plot_trajectory(
        frame, layers, ax=axes[1, 1], title="erank of each layer (cosine)", logx=True, logy=True
    )
    fig.suptitle(f"H4 {preset} seed {run.seed}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("preset", list(TESTBEDS))
def test_h4_kernel_rank_climbs(preset, seed, record):
    name, secondary_axis = TESTBEDS[preset]
    run = testbeds.get(name).train(tier.preset(name, preset), seed)
    config = run.config
    frame = trajectory(run, preset)
    verdict = rank_verdict(frame)

    probe = probe_for(run)
    moved = lm.random_perturbation(
        run.model_at(0),
        run.final_model(),
        torch.Generator().manual_seed(PERTURBATION_SEED + seed),
    )
    init = metric_series(frame, "erank").iloc[0]
    control_ratio = cosine_erank(moved, probe) / init

    out = plots_dir("H4")
    frame.to_csv(out / f"{preset}_seed{seed}.csv", index=False)
    plot(frame, run, preset, secondary_axis, out / f"{preset}_seed{seed}.png")

    last = {
        m: float(metric_series(frame, m).iloc[-1] / metric_series(frame, m).iloc[0])
        for m in frame["metric"].unique()
    }
    extra = {
        "checkpoints": int(frame["step"].nunique()),
        "erank_init": float(init),
        "erank_end": float(metric_series(frame, "erank").iloc[-1]),
        "end_over_init": {k: round(v, 4) for k, v in sorted(last.items())},
    }
    common = dict(
        claim="H4", testbed=name, preset=preset, seed=seed, config=config, role="superseded",
        note=V1_NOTE,
    )  # fmt: skip
    record(
        statistic="spearman_step_erank",
        value=verdict["spearman"],
        threshold=H4_SPEARMAN_MIN,
        comparison=">=",
        extra=extra,
        **common,
    )
    record(
        statistic="erank_end_over_init",
        value=verdict["ratio"],
        threshold=H4_RATIO_MIN,
        comparison=">=",
        control_value=control_ratio,
        extra=extra,
        **common,
    )
    record.assert_passed(extra)
