"""H2 — under KL-regularised RL the eNTK's eigenvectors hold still while its eigenvalues retune.

Claim (design notes): "If KL-regularized RL is an eigenvalue operation, projecting a trait
G-matrix through pretraining vs through RL should show the eigenvectors holding still while
only the eigenvalues retune."

Testbed: the small language model (``testbeds.lm``). ``lm_pretrain`` is the reference;
``lm_rl`` fine-tunes it with KL-regularised policy gradient (β = 0.1, reward = the fraction of
generated tokens in the positive-style class); controls: ``lm_sft`` (reward-weighted SFT on the
reference's samples, stopped at the RL run's probe KL), ``lm_continue`` (continued pretraining
for the RL run's 300 steps) and a Gaussian weight perturbation with the RL update's norm,
tensor by tensor.

Kernel: the trace eNTK of the next-token log-probabilities at the last position of the 256
fixed probe prompts (their first 8 tokens), full model, (256, 256); k = 16.

Pre-registered in the small-LM issue; 3 seeds; pass means every seed passes. **Superseded**
by H2′ (``test_h2_replicated_rl.py``, claims v2 part 2): k = 16 sits where the spectrum has no
gap, so any kernel change rotates the top-16 space, and one RL and one SFT run per seed give no
noise estimate. Still computed and recorded (role "superseded"); it no longer gates.

* H2a stationarity: normalised overlap ‖U_kᵀ U'_k‖²_F / k of the top-16 eigenvectors before
  and after RL ≥ 0.90. Negative control: the same statistic after a Haar-random rotation of
  the after-RL kernel (chance k/N = 0.0625).
* H2b eigenvalues move: median over i ≤ 16 of |log(λ'_i / λ_i)|, λ'_i = u_iᵀ K_RL u_i the
  after-RL Rayleigh quotient of before-RL eigenvector i, ≥ 0.05. Control beside it: the same
  statistic for the random perturbation of the same norm.
* H2c RL versus SFT at matched KL: overlap(RL) − overlap(SFT) ≥ 0.05. Beside it: the
  random-perturbation overlap (control value) and the continued-pretraining overlap (extra).
* H2d traits: the trait G-matrix G = J_T J_Tᵀ (M = I) of the 14-trait battery
  (``testbeds.lm.trait_battery``): normalised overlap of the top-3 eigenvectors before and
  after RL ≥ 0.90, and the top eigenvalue changes by ≥ 10%: |λ'_1/λ_1 − 1| ≥ 0.10, λ'_1 the
  after-RL G's own top eigenvalue (the most literal reading of "the top eigenvalue changes").
  Controls beside them: continued pretraining. Recorded, not gating: the same with M = C, the
  covariance of per-sequence pretraining-loss gradients on 256 held-out sequences, and the ARI
  of the G-matrix's trait clusters against the planted factors (topic, style, syntax).
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import adjusted_rand_score

from hypotheses import tier
from leaderboard.records import results_dir
from metrics.entk import entk
from metrics.gmatrix import GMatrix, g_matrix, trait_jacobian
from metrics.noise import GradientNoise
from metrics.stationarity import Stationarity, eigenspace_stationarity, random_rotation
from testbeds import lm

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

GATING_CLAIMS = ()  # see tests/test_gate.py
SUPERSEDED_CLAIMS = ("H2a", "H2b", "H2c", "H2d")  # by H2a′–H2d′, test_h2_replicated_rl.py
V1_NOTE = "v1 — k = 16 sits in no spectral gap; one run per arm (see H2′)"
SEEDS = tier.seeds(0, 1, 2)
RL_PRESET, SFT_PRESET, CONTINUE_PRESET = "lm_rl", "lm_sft", "lm_continue"

# Pre-registered (small-LM issue, "Claim H2").
K_TOP = 16
H2A_OVERLAP_MIN = 0.90
H2B_MEDIAN_ABS_LOG_RATIO_MIN = 0.05
H2C_MARGIN_MIN = 0.05
H2D_TOP = 3
H2D_OVERLAP_MIN = 0.90
H2D_TOP_CHANGE_MIN = 0.10
NOISE_SEQUENCES = 256  # held-out sequences whose loss gradients define C (M = C, not gating)
PERTURBATION_SEED = 9  # the random perturbation is drawn from seed + 9
ROTATION_SEED = 11  # the Haar rotation of the H2a control from seed + 11

CONDITIONS = ("rl", "sft", "continue", "random")


@dataclass
class Analysis:
    seed: int
    stationarity: dict[str, Stationarity]
    rotated_overlap: float
    kl: dict[str, float]
    sft_matched: bool
    g_identity: dict[str, GMatrix]
    g_noise: dict[str, GMatrix]
    factors: torch.Tensor
    logs: dict[str, pd.DataFrame]


def sequence_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy per sequence: outputs (n, L, V), targets (n, L) → (n,)."""
    return F.cross_entropy(outputs.transpose(1, 2), targets, reduction="none").mean(-1)


def analyse(seed: int) -> Analysis:
    config = tier.preset(lm, RL_PRESET)
    base_run = lm.train(config.base, seed)
    runs = {
        "rl": lm.train_rl(config, seed),
        "sft": lm.train_sft(tier.preset(lm, SFT_PRESET), seed),
        "continue": lm.train_continue(tier.preset(lm, CONTINUE_PRESET), seed),
    }
    before = base_run.final_model()
    models = {name: run.final_model() for name, run in runs.items()}
    models["random"] = lm.random_perturbation(
        before, models["rl"], torch.Generator().manual_seed(seed + PERTURBATION_SEED)
    )
    prompts = lm.probe_prompts(config.base.language, config.prompt_len).tokens

    def kernel(model) -> torch.Tensor:
        return entk(lm.LastTokenLogProbs(model), prompts, output="trace").double()

    K0 = kernel(before)
    kernels = {name: kernel(m) for name, m in models.items()}
    stationarity = {name: eigenspace_stationarity(K0, K, K_TOP) for name, K in kernels.items()}
    rotated = random_rotation(kernels["rl"], torch.Generator().manual_seed(seed + ROTATION_SEED))
    rotated_overlap = eigenspace_stationarity(K0, rotated, K_TOP).overlap
    # the trained stages logged their final probe KL (lm.probe_kl, fixed seed); SFT's last row
    # holds the KL of the checkpoint it kept
    sft_last = runs["sft"].log.iloc[-1]
    kl = {
        "rl": float(runs["rl"].log["probe_kl"].dropna().iloc[-1]),
        "sft": float(sft_last["final_kl"]),
        "continue": float(runs["continue"].log["probe_kl"].dropna().iloc[-1]),
        "random": lm.probe_kl(models["random"], before, config)[0],
    }

    battery = lm.trait_battery(config.base.language, config.reward)
    held_out = lm.eval_sequences(config.base, seed)[:NOISE_SEQUENCES]
    g_identity, g_noise = {}, {}
    for name, model in (("before", before), ("rl", models["rl"]), ("continue", models["continue"])):
        J = trait_jacobian(model, battery).J
        noise = GradientNoise.from_model(model, sequence_loss, held_out[:, :-1], held_out[:, 1:])
        g_identity[name] = GMatrix.from_matrix(g_matrix(J), battery.names)
        g_noise[name] = GMatrix.from_matrix(g_matrix(J, noise), battery.names)
    logs = {"pretrain": base_run.log, **{name: run.log for name, run in runs.items()}}
    analysis = Analysis(
        seed,
        stationarity,
        rotated_overlap,
        kl,
        bool(sft_last["matched"]),
        g_identity,
        g_noise,
        battery.factor_labels,
        logs,
    )
    save_outputs(analysis)
    return analysis


def save_outputs(a: Analysis) -> None:
    out = results_dir() / "h2"
    out.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "seed": a.seed,
            "condition": name,
            "probe_kl": a.kl[name],
            "overlap": s.overlap,
            "median_abs_log_ratio": s.median_abs_log_ratio,
            "top_eigenvalue_change": s.top_eigenvalue_change,
        }
        for name, s in a.stationarity.items()
    ]
    pd.DataFrame(rows).to_csv(out / f"seed{a.seed}_kernels.csv", index=False)
    plot(a, out / f"seed{a.seed}.png")


def plot(a: Analysis, path) -> None:
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    pre = a.logs["pretrain"]
    axes[0].semilogy(pre.step, pre.gap.clip(lower=1e-4))
    axes[0].axhline(0.05, color="grey", lw=0.5, ls="--")
    axes[0].set(
        xlabel="pretraining step",
        ylabel="held-out loss − optimum (nats/token)",
        title=f"pretraining, seed {a.seed}",
    )
    rl = a.logs["rl"].dropna(subset=["reward"])
    axes[1].plot(rl.step, rl.reward, lw=0.6, alpha=0.4, color="C0")
    axes[1].plot(rl.step, rl.reward.rolling(10, min_periods=1).mean(), color="C0", label="reward")
    axes[1].set(xlabel="RL step", ylabel="reward (positive-style fraction)", title="RL")
    twin = axes[1].twinx()
    twin.plot(rl.step, rl.kl.rolling(10, min_periods=1).mean(), color="C3", label="KL (batch)")
    twin.set_ylabel("KL(π‖π_ref), nats per continuation", color="C3")
    for name, color in (("rl", "C0"), ("sft", "C1"), ("continue", "C2")):
        log = a.logs[name].dropna(subset=["probe_kl"])
        axes[2].plot(log.step, log.probe_kl, color=color, label=name)
    axes[2].set(
        xlabel="step",
        ylabel="probe KL (nats per continuation)",
        title="KL on the 256 probe prompts",
    )
    axes[2].legend(fontsize=7)
    lam = a.stationarity["rl"].eigenvalues
    index = torch.arange(1, K_TOP + 1)
    axes[3].semilogy(index, lam, "k.-", label="before")
    for name, color in zip(CONDITIONS, ("C0", "C1", "C2", "C4"), strict=True):
        s = a.stationarity[name]
        axes[3].semilogy(
            index, s.rayleigh, ".", color=color, label=f"{name}: overlap {s.overlap:.3f}"
        )
    axes[3].set(
        xlabel="eigenvector i of the before-RL kernel",
        ylabel="λ_i, Rayleigh quotient",
        title="top-16 trace-eNTK spectrum",
    )
    axes[3].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _extra(a: Analysis, statistic: str) -> dict[str, float]:
    return {
        **{f"{statistic}_{name}": getattr(s, statistic) for name, s in a.stationarity.items()},
        **{f"probe_kl_{name}": a.kl[name] for name in CONDITIONS},
        "sft_matched": a.sft_matched,
    }


def record_h2a_eigenvectors_hold_still(a: Analysis, record) -> None:
    seed = a.seed
    s = a.stationarity["rl"]
    record(
        claim="H2a",
        testbed=lm.TESTBED,
        preset=RL_PRESET,
        seed=seed,
        config=tier.preset(lm, RL_PRESET),
        role="superseded",
        note=V1_NOTE,
        statistic="top16_entk_overlap_before_after_rl",
        value=s.overlap,
        threshold=H2A_OVERLAP_MIN,
        comparison=">=",
        control_value=a.rotated_overlap,
        chance=s.chance,
        extra={**_extra(a, "overlap"), "control": "Haar-random rotation of the after-RL kernel"},
    )


def record_h2b_eigenvalues_retune(a: Analysis, record) -> None:
    seed = a.seed
    s = a.stationarity["rl"]
    record(
        claim="H2b",
        testbed=lm.TESTBED,
        preset=RL_PRESET,
        seed=seed,
        config=tier.preset(lm, RL_PRESET),
        role="superseded",
        note=V1_NOTE,
        statistic="median_abs_log_rayleigh_ratio_rl",
        value=s.median_abs_log_ratio,
        threshold=H2B_MEDIAN_ABS_LOG_RATIO_MIN,
        comparison=">=",
        control_value=a.stationarity["random"].median_abs_log_ratio,
        extra={
            **_extra(a, "median_abs_log_ratio"),
            "log_ratios_rl": [round(v, 5) for v in s.log_ratios.tolist()],
            "control": "random perturbation with the RL update's per-tensor norm",
        },
    )


def record_h2c_rl_preserves_more_than_sft(a: Analysis, record) -> None:
    seed = a.seed
    overlap = {name: s.overlap for name, s in a.stationarity.items()}
    record(
        claim="H2c",
        testbed=lm.TESTBED,
        preset=RL_PRESET,
        seed=seed,
        config=tier.preset(lm, RL_PRESET),
        role="superseded",
        note=V1_NOTE,
        statistic="overlap_rl_minus_overlap_sft",
        value=overlap["rl"] - overlap["sft"],
        threshold=H2C_MARGIN_MIN,
        comparison=">=",
        control_value=overlap["random"],
        extra={
            **_extra(a, "overlap"),
            "kl_ratio_sft_over_rl": a.kl["sft"] / a.kl["rl"],
            "control": "overlap after the random perturbation of the RL update's norm",
        },
    )


def _trait_statistics(G: dict[str, GMatrix], after: str, factors) -> dict[str, float]:
    before = G["before"]
    return {
        "overlap": before.top_overlap(G[after], H2D_TOP),
        "change": abs(G[after].eigenvalues[0].item() / before.eigenvalues[0].item() - 1),
        "ari_before": adjusted_rand_score(factors.numpy(), before.clusters().numpy()),
        "ari_after": adjusted_rand_score(factors.numpy(), G[after].clusters().numpy()),
    }


def record_h2d_trait_g_matrix(a: Analysis, record) -> None:
    seed = a.seed
    stats = {
        (m, after): _trait_statistics(G, after, a.factors)
        for m, G in (("identity", a.g_identity), ("noise", a.g_noise))
        for after in ("rl", "continue")
    }
    extra = {f"{key}_{m}_{after}": v for (m, after), d in stats.items() for key, v in d.items()}
    extra["top_eigenvalues_identity"] = {
        name: [round(v, 5) for v in G.eigenvalues[:5].tolist()] for name, G in a.g_identity.items()
    }
    common = dict(
        claim="H2d",
        testbed=lm.TESTBED,
        preset=RL_PRESET,
        seed=seed,
        config=tier.preset(lm, RL_PRESET),
        role="superseded",
        note=V1_NOTE,
        extra=extra,
    )
    main = stats["identity", "rl"]
    control = stats["identity", "continue"]
    record(
        **common,
        statistic="trait_g_top3_overlap_before_after_rl",
        value=main["overlap"],
        threshold=H2D_OVERLAP_MIN,
        comparison=">=",
        control_value=control["overlap"],
        chance=H2D_TOP / len(a.factors),
    )
    record(
        **common,
        statistic="trait_g_top_eigenvalue_relative_change_rl",
        value=main["change"],
        threshold=H2D_TOP_CHANGE_MIN,
        comparison=">=",
        control_value=control["change"],
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_h2_rl_is_an_eigenvalue_operation(seed, record):
    """One test per seed: the runs and kernels are shared by H2a–H2d (one Record each, two for
    H2d); the test fails naming every criterion that is missed."""
    a = analyse(seed)
    record_h2a_eigenvectors_hold_still(a, record)
    record_h2b_eigenvalues_retune(a, record)
    record_h2c_rl_preserves_more_than_sft(a, record)
    record_h2d_trait_g_matrix(a, record)
    record.assert_passed()
