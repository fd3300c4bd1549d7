"""H6 — CKA and CCA agree on gradient kernels.

Claim (design notes §4: "I need to actually understand whether CKA and CCA agree here before
leaning on either"): on the layerwise forward kernels F^ℓ, backward kernels B^ℓ and eNTK blocks
Θ^ℓ (``metrics.layer_kernels``), linear CKA and SVCCA similarity rank pairs of kernels alike.

Pre-registered in issue 7; seeds 0, 1, 2; every seed must pass.

* For ``lin2025_mlp`` (layers ``layer1``, ``layer2``) and ``lin2025_transformer`` (embed,
  W_Q, W_K, W_V, W_O, mlp_in, mlp_out, unembed), at every checkpoint of H4's grid (39 and 14
  checkpoints) and for every pair among {F^ℓ, B^ℓ, Θ^ℓ} over all layers: linear CKA (biased
  HSIC) and SVCCA (top directions explaining 99% of the variance, mean canonical
  correlation), both on the class-averaged (trace) kernels over all p² inputs.
* Statistic: Kendall τ between the CKA and the SVCCA values of all (checkpoint, pair) items of
  one run; criterion τ ≥ 0.6.
* Kernels that are constant across inputs have no centred variance, so neither similarity is
  defined and their pairs are left out: the output layer's B (its sensitivity is the identity)
  in both networks, and the transformer's W_Q forward kernel (the query reads the "=" position,
  whose residual stream is the same for every input). Their count is recorded.
* Negative control (recorded): τ after shuffling the SVCCA values across items (seeded), ≈ 0.
  The test suite checks that independent random similarity scores give τ ≈ 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import kendalltau

from hypotheses import tier
from hypotheses.trajectories import SEEDS, plots_dir, trajectory
from testbeds import modadd
from testbeds.trajectory import plot_trajectory

GATING_CLAIMS = ("H6",)  # see tests/test_gate.py
PRESETS = ("lin2025_mlp", "lin2025_transformer")
# Pre-registered threshold (issue 7, "H6 CKA and CCA agree on gradient kernels").
H6_KENDALL_MIN = 0.6
SHUFFLE_SEED = 6000  # + seed


def paired_similarities(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (step, pair) with columns ``cka`` and ``svcca``."""
    rows = frame[frame["metric"].str.startswith(("cka/", "svcca/"))]
    kind = rows["metric"].str.split("/", n=1).str[0]
    pair = rows["metric"].str.split("/", n=1).str[1]
    wide = rows.assign(kind=kind, pair=pair).pivot_table(
        index=["step", "pair"], columns="kind", values="value"
    )
    return wide.dropna().reset_index()


def kendall(a, b) -> float:
    return float(kendalltau(a, b).statistic)


def per_checkpoint_tau(items: pd.DataFrame) -> pd.Series:
    return items.groupby("step").apply(
        lambda g: kendall(g["cka"], g["svcca"]), include_groups=False
    )


def plot(frame: pd.DataFrame, run, preset: str, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [m.split("/", 1)[1] for m in frame["metric"].unique() if m.startswith("erank_layer/")]
    metrics = set(frame["metric"])
    fb = [f"cka/F/{x}|B/{x}" for x in layers if f"cka/F/{x}|B/{x}" in metrics]
    bb = [
        f"cka/B/{a}|B/{b}"
        for a, b in zip(layers, layers[1:], strict=False)
        if f"cka/B/{a}|B/{b}" in metrics
    ]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    common = dict(runs=[run], accuracy="test_acc", logx=True)
    plot_trajectory(frame, fb, ax=axes[0], title="CKA(F^ℓ, B^ℓ)", **common)
    if bb:
        plot_trajectory(frame, bb, ax=axes[1], title="CKA(B^ℓ, B^ℓ') adjacent layers", **common)
    items = paired_similarities(frame)
    axes[2].scatter(items["cka"], items["svcca"], s=4, c=np.log1p(items["step"]), cmap="viridis")
    axes[2].set_xlabel("linear CKA")
    axes[2].set_ylabel("SVCCA (99%)")
    axes[2].set_title("every (checkpoint, pair); colour = log(1 + step)", fontsize=9)
    fig.suptitle(f"H6 {preset} seed {run.seed}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("preset", PRESETS)
def test_h6_cka_and_cca_agree(preset, seed, record):
    config = tier.preset(modadd, preset)
    run = modadd.train(config, seed)
    frame = trajectory(run, preset)
    items = paired_similarities(frame)
    tau = kendall(items["cka"], items["svcca"])
    shuffled = np.random.default_rng(SHUFFLE_SEED + seed).permutation(items["svcca"].to_numpy())
    control = kendall(items["cka"], shuffled)
    by_step = per_checkpoint_tau(items)

    out = plots_dir("H6")
    items.to_csv(out / f"{preset}_seed{seed}.csv", index=False)
    plot(frame, run, preset, out / f"{preset}_seed{seed}.png")

    constant = sorted(
        {m.split("/", 1)[1] for m in frame["metric"].unique() if m.startswith("constant/")}
    )
    extra = {
        "items": len(items),
        "pairs": int(items["pair"].nunique()),
        "checkpoints": int(items["step"].nunique()),
        "constant_kernels": constant,
        "median_tau_per_checkpoint": float(by_step.median()),
        "min_tau_per_checkpoint": float(by_step.min()),
        "svcca_at_least_0.99": float((items["svcca"] >= 0.99).mean()),
        "median_cka": float(items["cka"].median()),
        "median_svcca": float(items["svcca"].median()),
    }
    record(
        claim="H6",
        testbed="modadd",
        preset=preset,
        seed=seed,
        config=config,
        statistic="kendall_tau_cka_svcca",
        value=tau,
        threshold=H6_KENDALL_MIN,
        comparison=">=",
        control_value=control,
        chance=0.0,
        extra=extra,
    )
    record.assert_passed(extra)
