"""Shared computations of the TMS claims T1, T2 (v1, superseded) and T1′, T2′ (v2).

For a ``lin2025_tms_*`` preset and seed: the trained run, its fixed dataset (the probe set)
and the ground truth of the trained network.

* v1 (T1, T2): the top 2n eigenpairs of the importance-rescaled flattened eNTK
  K_β = D^{β/2} Θ D^{β/2} (channel-major (input, channel) rows; ``metrics.operators``) of the
  trained network, of the same network at initialisation, and of the hand-built identity
  solution with m = n (``testbeds.tms.identity_solution(n, n)``: every feature represented,
  exact 0/1 weights, no gate on a kink) on the same inputs.
* v2 (T1′, T2′): the per-channel alignments ρ_c of the (c, c) blocks of the unscaled
  flattened eNTK with the channels' own features (:func:`feature_alignments`), for the trained
  network, the network at initialisation and four hand-built networks at the preset's size
  (:data:`PLANTED`); the count of features the eNTK sees (:func:`alignment_count`) and the
  AUROC of ρ for "channel c is represented" (:func:`represented_auroc`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from functools import lru_cache

import pytest
import torch
from sklearn.metrics import roc_auc_score

from hypotheses import tier
from leaderboard.records import results_dir
from metrics.alignment import centered_alignment
from metrics.eigensolvers import Eigenpairs, top_eigenpairs
from metrics.operators import EntkOperator, channel_scale
from metrics.spectra import largest_cliff, spectral_cliffs
from testbeds import tms
from testbeds.runs import cache_dir, config_hash
from testbeds.sources import source_hash

PRESETS = ("lin2025_tms_m10_s0.3", "lin2025_tms_m10_s0.9", "lin2025_tms_m40_s0.9")
SEEDS = tier.seeds(0, 1, 2)
BETA = 1.0  # the pre-registered importance rescaling ("β = 1 principled")
REPORTED_BETA = 0.3  # "β = 0.3 also reported" (not gating)
UNSCALED_BETA = 0.0  # the plain flattened eNTK, whose spectrum Lin 2025 plots (not gating)
MODELS = ("trained", "init", "planted")
# every (preset, seed) in its own xdist group, so that T1 and T2 share one worker's spectra
CASES = [
    pytest.param(preset, seed, marks=pytest.mark.xdist_group(f"tms-{preset}-{seed}"))
    for preset in PRESETS
    for seed in SEEDS
]


@dataclass(frozen=True)
class Setting:
    config: tms.Config
    run: object  # testbeds.runs.Run
    inputs: torch.Tensor  # (N, n) the fixed dataset
    truth: tms.GroundTruth  # of the trained network

    @property
    def n(self) -> int:
        return self.config.n_features


@lru_cache(maxsize=16)
def setting(preset: str, seed: int) -> Setting:
    config = tier.preset(tms, preset)
    run = tms.train(config, seed)
    inputs = tms.probe_inputs(config, seed)
    return Setting(config, run, inputs, tms.ground_truth(run.final_model(), inputs))


def model_of(s: Setting, which: str) -> tms.TMSModel:
    if which == "trained":
        return s.run.final_model()
    if which == "init":
        return s.run.model_at(0)
    if which == "planted":
        return tms.identity_solution(s.n, s.n)
    raise ValueError(f"which must be one of {MODELS}, got which={which!r}")


def kernel_operator(model: tms.TMSModel, inputs: torch.Tensor, config: tms.Config, beta: float):
    """K_β of ``model`` on ``inputs`` as a matrix-free operator."""
    scale = channel_scale(tms.importances(config), len(inputs), beta)
    return EntkOperator(model, inputs, scale=scale)


def stored(kind: str, preset: str, seed: int, *args, compute):
    """``compute()``, kept on disk under ``$NTKBENCH_CACHE/tms-kernels``: T1 and T2 read the
    same spectra and alignments, and the job graph runs T2 after T1
    (:data:`hypotheses.plan.AFTER`), so T2 reads T1's. The key holds the kind, the resolved
    preset's config, the seed, the arguments and the source of this module and every project
    module it imports."""
    payload = json.dumps(
        [kind, config_hash(tier.preset(tms, preset)), seed, [repr(a) for a in args],
         source_hash(__name__)],
    )  # fmt: skip
    key = hashlib.sha256(payload.encode()).hexdigest()[:24]
    path = cache_dir() / "tms-kernels" / f"{kind}-{key}.pt"
    if path.exists():
        try:
            return torch.load(path, weights_only=True)
        except Exception:  # a damaged file: computed again
            pass
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_suffix(f".{os.getpid()}.part")
    torch.save(value, part)
    os.replace(part, path)  # atomic: a reader sees the whole file or none
    return value


@lru_cache(maxsize=64)
def spectrum(preset: str, seed: int, which: str, beta: float) -> Eigenpairs:
    """Top 2n eigenpairs of K_β for the trained / init / planted network of (preset, seed);
    stored for T2 (:func:`stored`) except the unscaled one (β = 0), which T1 alone reads."""

    def compute() -> dict:
        s = setting(preset, seed)
        op = kernel_operator(model_of(s, which), s.inputs, s.config, beta)
        pairs = top_eigenpairs(op, 2 * s.n)
        return {"values": pairs.values, "vectors": pairs.vectors, "method": pairs.method,
                "matvecs": pairs.matvecs}  # fmt: skip

    if beta == UNSCALED_BETA:
        return Eigenpairs(**compute())
    return Eigenpairs(**stored("spectrum", preset, seed, which, beta, compute=compute))


# ---- T1 ---------------------------------------------------------------------------------------
def cliff_position(values: torch.Tensor, n: int) -> int:
    """Position of the largest λ_i/λ_{i+1} among the top 2n eigenvalues (number above it)."""
    return largest_cliff(values, top=2 * n)


def cliff_match(position: int, represented: int, total: int) -> tuple[int, str]:
    """Distance from the position to the nearer of the two counts, and which one it is
    ("represented" on a tie)."""
    d_rep, d_tot = abs(position - represented), abs(position - total)
    return (d_rep, "represented") if d_rep <= d_tot else (d_tot, "total")


# ---- T2 ---------------------------------------------------------------------------------------
def feature_overlap(vectors: torch.Tensor, truth: tms.GroundTruth, center: bool = False) -> float:
    """Normalised overlap of the top r = (number of represented features) vectors with the
    span of the represented features' indicator columns (``tms.feature_recovery``);
    ``center=True`` removes the per-channel input mean from both sides first (diagnostic)."""
    return tms.feature_recovery(vectors[:, : truth.n_represented], truth, center=center)[0]


def channel_baseline(truth: tms.GroundTruth) -> torch.Tensor:
    """Directions that know only which channels carry represented features: for each
    represented feature j, the all-ones vector on channel j's block. (N·n, r)."""
    N, n = truth.n_inputs, truth.n_features
    blocks = torch.zeros(n, N, n, dtype=torch.float64)
    idx = torch.arange(n)
    blocks[idx, :, idx] = 1.0
    return blocks.reshape(n * N, n)[:, truth.represented]


# ---- T1′ and T2′ (claims v2, part 1) --------------------------------------------------------
V2_SEEDS = tier.seeds(0, 1, 2, 3, 4, 5)
# never looked at before v2 was registered (SCIENCE.md rule 10)
CONFIRMATORY_SEEDS = tier.seeds(3, 4, 5)
DIAGNOSTIC_NOTE = "seed spent diagnosing v1; not confirmatory"
PLANTED_NOTE = "hand-built networks on this seed's inputs; never gating here (tests/ gate them)"
PLANTED = ("identity_dead", "identity_alive", "antipodal_dead", "antipodal_alive")
V2_CASES = [
    pytest.param(preset, seed, marks=pytest.mark.xdist_group(f"tms-{preset}-{seed}"))
    for preset in PRESETS
    for seed in V2_SEEDS
]


def role_of(seed: int) -> dict[str, str]:
    """Record role and note of a v2 seed: gating on the confirmatory seeds, else diagnostic."""
    if seed in CONFIRMATORY_SEEDS:
        return {"role": "gating", "note": ""}
    return {"role": "diagnostic", "note": DIAGNOSTIC_NOTE}


def planted_model(config: tms.Config, kind: str) -> tms.TMSModel:
    """A hand-built network at the preset's size (n, m), ``kind`` one of :data:`PLANTED`.

    Identity: the m most important features, one hidden dimension each (r = m). Antipodal:
    P = min(m, ⌊(n − 1)/2⌋) pairs, so that at least one channel stays unrepresented (T2′'s
    AUROC needs both classes and T1′'s position ranges over 1 … n − 1): 10 pairs (r = 20) at
    m = 10, 24 pairs (r = 48) at m = 40. Unrepresented channels dead or alive
    (``testbeds.tms.hand_built``).
    """
    if kind not in PLANTED:
        raise ValueError(f"kind must be one of {PLANTED}, got kind={kind!r}")
    solution, unrepresented = kind.split("_")
    n, m = config.n_features, config.n_hidden
    if solution == "identity":
        return tms.identity_solution(n, m, unrepresented)
    return tms.antipodal_solution(n, m, unrepresented, n_pairs=min(m, (n - 1) // 2))


def feature_alignments(model: tms.TMSModel, inputs: torch.Tensor) -> torch.Tensor:
    """ρ_c for every output channel c, (n,) float64: the centred alignment
    (``metrics.alignment.centered_alignment``) of the (c, c) block of the unscaled flattened
    eNTK of all parameters (W and b) over ``inputs`` (N, n) with the feature column x_{·c}.
    ρ_c = 0 where the block is zero after centring (a dead channel: no gradient reaches it).

    The blocks come from the model's closed form (``TMSModel.channel_blocks``, ~10× faster),
    which equals ``metrics.alignment.channel_blocks`` (per-example Jacobians) to round-off
    (``tests/test_tms.py``)."""
    return centered_alignment(model.channel_blocks(inputs), inputs.T)


def alignment_count(rho: torch.Tensor) -> int:
    """T1′'s count: sort ρ decreasingly; the position i (number of channels above the drop) of
    the largest ratio ρ_(i)/ρ_(i+1), i = 1 … n − 1 (the top n are all n channels).

    Values below 10⁻¹² ρ_(1) — the zeros of dead channels, and negative round-off (a block is
    positive semi-definite, so ρ ≥ 0) — are raised to 10⁻¹² ρ_(1), the floor of
    ``metrics.spectra.spectral_cliffs``: the drop from the last positive ρ to a zero is then
    a ratio of about 10¹² and a run of zeros gives ratios of 1. Ties go to the smallest i; if
    no ρ is positive the count is 0.
    """
    values = torch.sort(rho.double(), descending=True).values
    if not values[0] > 0:
        return 0
    return largest_cliff(values, top=len(values))


def represented_auroc(rho: torch.Tensor, represented: torch.Tensor) -> float:
    """T2′'s score: AUROC of ρ_c for "channel c is represented" (ties count ½; chance 0.5);
    NaN when every channel is in one class."""
    labels = represented.bool().numpy()
    if labels.all() or not labels.any():
        return math.nan
    return float(roc_auc_score(labels, rho.double().numpy()))


@lru_cache(maxsize=32)
def preset_inputs(preset: str, seed: int) -> torch.Tensor:
    """The preset's fixed dataset of ``seed`` (N, n), without training anything."""
    return tms.probe_inputs(tier.preset(tms, preset), seed)


@lru_cache(maxsize=256)
def alignments(preset: str, seed: int, which: str) -> torch.Tensor:
    """ρ (n,) of the trained / init network of (preset, seed), or of a hand-built network
    (:data:`PLANTED`, no training needed) on the seed's inputs."""

    def compute() -> torch.Tensor:
        if which in PLANTED:
            model = planted_model(tier.preset(tms, preset), which)
        else:
            model = model_of(setting(preset, seed), which)
        return feature_alignments(model, preset_inputs(preset, seed))

    return stored("alignments", preset, seed, which, compute=compute)


def planted_truth(preset: str, seed: int, kind: str) -> tms.GroundTruth:
    return tms.ground_truth(
        planted_model(tier.preset(tms, preset), kind), preset_inputs(preset, seed)
    )


# ---- plot -------------------------------------------------------------------------------------
def plot_spectrum(preset: str, seed: int) -> str:
    """Save the top-2n spectrum of K_β (trained and init) with the represented count, n and the
    largest cliff marked; returns the file path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = setting(preset, seed)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    index = torch.arange(1, 2 * s.n + 1)
    for which, style in (("trained", "o-"), ("init", "x--")):
        values = spectrum(preset, seed, which, BETA).values
        ax.semilogy(index, values / values[0], style, ms=3, lw=1, label=f"{which} (β = {BETA:g})")
    values = spectrum(preset, seed, "trained", BETA).values
    position = cliff_position(values, s.n)
    ax.axvline(s.truth.n_represented + 0.5, color="C2", lw=1.2, label="represented features")
    ax.axvline(s.n + 0.5, color="C3", lw=1.2, label="all features n")
    ax.axvline(position + 0.5, color="k", ls=":", lw=1.2, label="largest cliff (trained)")
    ratios = spectral_cliffs(values, top=2 * s.n)
    ax.set_title(f"{preset} seed {seed}: largest λ_i/λ_(i+1) = {ratios.max():.2f} at {position}")
    ax.set_xlabel("eigenvalue index i")
    ax.set_ylabel("λ_i / λ_1")
    ax.legend(fontsize=8)
    return save_figure(fig, f"t1_{preset}_seed{seed}.png")


def save_figure(fig, name: str) -> str:
    """Write ``fig`` to ``results/plots/<name>``, close it and return the path."""
    import matplotlib.pyplot as plt

    out = results_dir() / "plots" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return str(out)


def plot_alignments(preset: str, seed: int) -> str:
    """Save the sorted ρ of the trained network, the network at initialisation and the
    hand-built identity (dead) on the seed's inputs, with r and T1′'s count marked; returns the
    file path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = setting(preset, seed)
    floor = 1e-6  # zeros (dead channels) drawn at the floor of the log axis
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    index = torch.arange(1, s.n + 1)
    for which, style in (("trained", "o-"), ("init", "x--"), ("identity_dead", ".:")):
        rho = torch.sort(alignments(preset, seed, which), descending=True).values
        ax.semilogy(index, rho.clamp_min(floor), style, ms=3, lw=1, label=which)
    position = alignment_count(alignments(preset, seed, "trained"))
    ax.axvline(s.truth.n_represented + 0.5, color="C2", lw=1.2, label="represented r (trained)")
    ax.axvline(position + 0.5, color="k", ls=":", lw=1.2, label="largest ratio (trained)")
    ax.set_title(f"{preset} seed {seed}: T1′ count {position}, r = {s.truth.n_represented}")
    ax.set_xlabel("channel rank i (by ρ)")
    ax.set_ylabel("ρ_(i)")
    ax.legend(fontsize=8)
    return save_figure(fig, f"t1v2_{preset}_seed{seed}.png")
