"""Ground truth of the modular-addition testbed.

Everything is indexed over all p² inputs in canonical order (i = a·p + b) and frequencies are
1-based, k = 1 … K with K = (p − 1)/2.

* Fourier feature families (Nanda et al. 2023; Lin 2025): for v ∈ {a, b, a+b, a−b} (mod p) the
  columns cos(2πk·v/p), sin(2πk·v/p), k = 1 … K — a (p², p − 1) float64 matrix, zero-mean and
  orthogonal over the p² inputs.
* Key frequencies of a trained network, read from its token embedding (the transformer's W_E,
  the MLP's first-layer columns) as in Nanda et al. 2023.
* Each hidden neuron's dominant frequency (argmax of its Fourier power) and its Fourier
  concentration, so neurons without a clear frequency can be set aside.
* :func:`gromov_solution` — Gromov (2023)'s analytic weights for the quadratic MLP, a planted
  positive whose circuits are known without training.
* :func:`memorisation_solution` — Gromov's circuit plus one hand-built memorising neuron pair
  per corrupted training label, the planted positive of the corrupted-label claims.
* Progress measures of Nanda et al. (2023) for the transformer: restricted and excluded loss
  (:func:`progress_measures`) along a run (:func:`progress_curve`), and the circuit-formation
  phase they delimit (:func:`circuit_formation_phase`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from testbeds.modadd.config import Config
from testbeds.modadd.models import ModAddMLP, ModAddTransformer

FAMILIES = ("a", "b", "sum", "difference")

# A frequency is "key" when its share of the embedding's non-constant Fourier power is at least
# KEY_FREQUENCY_FACTOR times the uniform share 1/K. Fixed before any run was trained.
KEY_FREQUENCY_FACTOR = 2.0
# A neuron has a "clear" dominant frequency when that frequency carries at least this fraction
# of its non-constant Fourier power (a strict majority). Fixed before any run was trained.
CLEAR_CONCENTRATION = 0.5
# A neuron is "generalising" (periodic) when the inverse participation ratio of its Fourier power
# is at least GENERALISING_IPR, i.e. its power is spread over at most 1/0.5 = 2 effective
# frequencies; below that it is "memorising" (Doshi et al. 2023). Fixed before any corrupted-label
# run was trained.
GENERALISING_IPR = 0.5
# Circuit formation ends at the first checkpoint whose restricted loss is below this fraction of
# its value at the first checkpoint; it starts at the checkpoint, up to that end, where the
# excluded loss is lowest (where it starts rising). Nanda et al. (2023) read both phase
# boundaries off the curves by eye; these are the fixed rules used here instead.
RESTRICTED_LOSS_END_FRACTION = 0.1
PROGRESS_COLUMNS = ("train_loss", "test_loss", "restricted_loss", "excluded_loss")


def n_frequencies(p: int) -> int:
    return (p - 1) // 2


def fourier_family(p: int, family: str) -> Tensor:
    """Fourier features of one family over all p² inputs, shape (p², p − 1), float64.

    Columns alternate cos, sin for k = 1 … (p − 1)/2.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got family={family!r}")
    if p < 3 or p % 2 == 0:
        raise ValueError(f"p must be an odd integer ≥ 3 for Fourier families, got p={p}")
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    v = {"a": a, "b": b, "sum": (a + b) % p, "difference": (a - b) % p}[family]
    k = torch.arange(1, n_frequencies(p) + 1, dtype=torch.float64)
    angle = 2 * math.pi * v[:, None].double() * k[None, :] / p  # (p², K)
    return torch.stack([angle.cos(), angle.sin()], dim=-1).reshape(p * p, -1)


def fourier_families(p: int) -> dict[str, Tensor]:
    """All four families: name → (p², p − 1) float64."""
    return {name: fourier_family(p, name) for name in FAMILIES}


def restrict_to_frequencies(features: Tensor, frequencies: Tensor | list[int]) -> Tensor:
    """Columns of a family matrix (cos/sin interleaved) at the given 1-based frequencies,
    shape (p², 2·len(frequencies))."""
    cols = [c for k in frequencies for c in (2 * (int(k) - 1), 2 * (int(k) - 1) + 1)]
    return features[:, cols]


def frequency_power(signal: Tensor) -> Tensor:
    """Fourier power of real signals over Z_p along the last axis at k = 1 … (p − 1)/2.

    Shape (..., p) → (..., K); the k and p − k components are combined.
    """
    p = signal.shape[-1]
    spectrum = torch.fft.rfft(signal.double(), dim=-1)[..., 1 : n_frequencies(p) + 1]
    return 2 * spectrum.abs().square()


def embedding_frequency_power(model: nn.Module) -> Tensor:
    """Fourier power of the token embedding per frequency, summed over embedding dimensions
    (and over both operand slots for the MLP), shape (K,)."""
    if isinstance(model, ModAddMLP):
        w = model.layer1.weight.detach()  # (n, 2p): columns embed a then b
        p = model.p
        return frequency_power(w[:, :p]).sum(0) + frequency_power(w[:, p:]).sum(0)
    if isinstance(model, ModAddTransformer):
        return frequency_power(model.embed.weight.detach()[: model.p].T).sum(0)
    raise ValueError(f"model must be ModAddMLP or ModAddTransformer, got {type(model).__name__}")


def key_frequencies(model: nn.Module, factor: float = KEY_FREQUENCY_FACTOR) -> Tensor:
    """1-based frequencies whose share of the embedding's Fourier power is ≥ factor / K,
    sorted by decreasing power; shape (|K|,), long."""
    power = embedding_frequency_power(model)
    share = power / power.sum()
    order = torch.argsort(share, descending=True)
    return order[share[order] >= factor / len(share)] + 1


@dataclass(frozen=True)
class NeuronFrequencies:
    """Per-neuron Fourier summary: ``dominant`` (m,) long 1-based frequency, ``concentration``
    (m,) float64 share of non-constant power at it, ``clear`` (m,) bool, and ``ipr`` (m,) the
    inverse participation ratio Σ_k P_k² / (Σ_k P_k)² of the power P_k over frequencies
    k = 1 … K (1 for a single frequency, 1/K for power spread evenly; Doshi et al. 2023)."""

    dominant: Tensor
    concentration: Tensor
    clear: Tensor
    ipr: Tensor

    @classmethod
    def from_power(
        cls, power: Tensor, total: Tensor, threshold: float = CLEAR_CONCENTRATION
    ) -> NeuronFrequencies:
        top, arg = power.max(dim=-1)
        tiny = torch.finfo(total.dtype).tiny
        concentration = top / total.clamp_min(tiny)
        ipr = power.square().sum(-1) / power.sum(-1).square().clamp_min(tiny)
        return cls(arg + 1, concentration, concentration >= threshold, ipr)


def mlp_neuron_frequencies(model: ModAddMLP, threshold: float = CLEAR_CONCENTRATION):
    """Dominant frequency of each hidden neuron of the MLP from its weights: the Fourier power
    of its incoming a-weights, incoming b-weights and outgoing weights, summed."""
    p = model.p
    w1 = model.layer1.weight.detach()  # (n, 2p)
    w2 = model.layer2.weight.detach().T  # (n, p)
    power = frequency_power(w1[:, :p]) + frequency_power(w1[:, p:]) + frequency_power(w2)
    return NeuronFrequencies.from_power(power, power.sum(-1), threshold)


def activation_neuron_frequencies(acts: Tensor, threshold: float = CLEAR_CONCENTRATION):
    """Dominant frequency of neurons from their activations over all pairs.

    ``acts`` (p², m) in canonical order. The 2-D Fourier power at frequency k collects the
    components (±k, 0), (0, ±k), (±k, ±k) — the terms of cos/sin(k·a), (k·b), (k(a ± b));
    the concentration divides by all non-constant power, so mixed-frequency terms lower it.
    """
    p = math.isqrt(acts.shape[0])
    grid = acts.double().reshape(p, p, -1)
    spec = torch.fft.fft2(grid - grid.mean((0, 1)), dim=(0, 1)).abs().square()  # (p, p, m)
    power = []
    for k in range(1, n_frequencies(p) + 1):
        idx = {(u % p, v % p) for u in (0, k, -k) for v in (0, k, -k) if (u, v) != (0, 0)}
        power.append(sum(spec[u, v] for u, v in idx))
    power = torch.stack(power, dim=-1)  # (m, K)
    return NeuronFrequencies.from_power(power, spec.sum((0, 1)), threshold)


def neuron_frequencies(model: nn.Module, threshold: float = CLEAR_CONCENTRATION):
    """Dominant frequency per hidden neuron: from weights for the MLP (as in Gromov 2023),
    from MLP activations at "=" over all pairs for the transformer (as in Nanda et al. 2023)."""
    if isinstance(model, ModAddMLP):
        return mlp_neuron_frequencies(model, threshold)
    if isinstance(model, ModAddTransformer):
        a, b = torch.meshgrid(torch.arange(model.p), torch.arange(model.p), indexing="ij")
        tokens = torch.stack([a.reshape(-1), b.reshape(-1), torch.full((model.p**2,), model.p)], 1)
        with torch.no_grad():
            acts = model.neuron_activations(tokens)
        return activation_neuron_frequencies(acts, threshold)
    raise ValueError(f"model must be ModAddMLP or ModAddTransformer, got {type(model).__name__}")


def ground_truth(model: nn.Module) -> dict[str, Tensor]:
    """Named ground-truth arrays of a modular-addition network.

    Returns ``fourier_a``, ``fourier_b``, ``fourier_sum``, ``fourier_difference`` (each
    (p², p − 1) float64), ``key_frequencies`` (|K|,), ``neuron_frequency`` (m,),
    ``neuron_concentration`` (m,), ``neuron_clear`` (m,) bool, ``neuron_ipr`` (m,) and
    ``neuron_generalising`` (m,) bool (IPR ≥ ``GENERALISING_IPR``).
    """
    families = {f"fourier_{name}": mat for name, mat in fourier_families(model.p).items()}
    neurons = neuron_frequencies(model)
    return {
        **families,
        "key_frequencies": key_frequencies(model),
        "neuron_frequency": neurons.dominant,
        "neuron_concentration": neurons.concentration,
        "neuron_clear": neurons.clear,
        "neuron_ipr": neurons.ipr,
        "neuron_generalising": neurons.ipr >= GENERALISING_IPR,
    }


def mlp_neuron_mask(model: ModAddMLP, neurons: Tensor) -> Tensor:
    """Parameter mask (P,) of hidden neurons' incoming and outgoing weights — a circuit's
    parameter subspace — in ``named_parameters()`` order (layer1.weight (n, 2p) flattened, then
    layer2.weight (p, n) flattened). ``neurons``: bool (n,) or neuron indices."""
    if not isinstance(model, ModAddMLP):
        raise ValueError(f"model must be ModAddMLP, got {type(model).__name__}")
    pick = torch.zeros(model.width, dtype=torch.bool)
    pick[neurons] = True
    incoming = pick[:, None].expand(model.width, 2 * model.p)
    outgoing = pick[None, :].expand(model.p, model.width)
    return torch.cat([incoming.flatten(), outgoing.flatten()])


def circuit_norm(model: ModAddMLP, neurons: Tensor) -> float:
    """Euclidean norm of the neurons' incoming and outgoing weights (one circuit)."""
    w = torch.cat([p.detach().flatten() for p in model.parameters()])
    return w[mlp_neuron_mask(model, neurons)].double().norm().item()


def gromov_solution(p: int, width: int, seed: int = 0) -> ModAddMLP:
    """Gromov (2023)'s analytic solution of the quadratic MLP, built by hand.

    Neuron j gets frequency σ_j (frequencies dealt out in turn, so each gets ≈ width/K neurons)
    and random phases φ_j, ψ_j:  W₁[j, a] = cos(2πσ_j a/p + φ_j),  W₁[j, p + b] =
    cos(2πσ_j b/p + ψ_j),  W₂[q, j] = cos(2πσ_j q/p + φ_j + ψ_j). The cross term of the square,
    cos(θ(a+b) + φ + ψ), times W₂ averages over the phases to cos(θ(a + b − q)), which peaks
    at q = a + b. A common scale makes the mean correct-class logit 1.
    """
    if width < n_frequencies(p):
        raise ValueError(f"width must be ≥ (p-1)/2 = {n_frequencies(p)}, got width={width}")
    generator = torch.Generator().manual_seed(seed)
    sigma = (torch.arange(width) % n_frequencies(p) + 1).double()  # (n,)
    phi, psi = 2 * math.pi * torch.rand(2, width, generator=generator, dtype=torch.float64)
    v = torch.arange(p, dtype=torch.float64)
    theta = 2 * math.pi * sigma[:, None] * v[None, :] / p  # (n, p)
    w_a = torch.cos(theta + phi[:, None])
    w_b = torch.cos(theta + psi[:, None])
    w_out = torch.cos(theta + (phi + psi)[:, None]).T  # (p, n): product term peaks at q = a + b
    model = ModAddMLP(p, width, "quadratic").double()
    with torch.no_grad():
        model.layer1.weight.copy_(torch.cat([w_a, w_b], dim=1))
        model.layer2.weight.copy_(w_out)
        a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
        a, b = a.reshape(-1), b.reshape(-1)
        logits = model(ModAddMLP.encode(a, b, p).double())
        scale = logits[torch.arange(p * p), (a + b) % p].mean() ** (-1 / 3)
        model.layer1.weight.mul_(scale)
        model.layer2.weight.mul_(scale)
    return model.float()


def memorisation_solution(
    config: Config,
    seed: int,
    *,
    logit_scale: float = 1.0,
    memorised_margin: float = 2.0,
    phase_seed: int = 0,
) -> ModAddMLP:
    """A quadratic MLP that generalises *and* memorises every corrupted label, built by hand.

    For a corrupted-label config (``label_noise`` > 0, e.g. ``doshi2023_mlp``) and the run seed
    that fixes which training labels are corrupted (:func:`~testbeds.modadd.corrupted_labels`):

    * the **generalising circuit** is :func:`gromov_solution` on the first n − 2M neurons (M
      corrupted examples), rescaled so that its mean correct-class logit is ``logit_scale``;
    * the **memorising circuit** is one pair of neurons (j₊, j₋) per corrupted example
      (aᵢ, bᵢ) with label yᵢ: W₁[j±, aᵢ] = 1, W₁[j±, p + bᵢ] = ±1, W₂[yᵢ, j±] = ±β. Its
      contribution to logit yᵢ is β (u₊² − u₋²)/n = 4β δ(a, aᵢ) δ(b, bᵢ) / (2p n): exactly zero
      on every other input, and on its own example just enough to put logit yᵢ
      ``memorised_margin`` × ``logit_scale`` above the generalising circuit's best logit.

    What is known without training: accuracy 1.0 on clean training, test and corrupted
    (memorised) examples; the first n − 2M neurons carry one frequency each (Fourier IPR 1,
    "generalising") and the last 2M carry delta weights (IPR 1/K, "memorising"); each memorising
    pair's per-example gradients are non-zero only on the 2p − 1 inputs that share an operand
    with its example, while the generalising circuit's are non-zero on every input. Quadratic
    units have no kinks. The planted positive of claim H3a.
    """
    from testbeds.modadd.train import corrupted_labels, pairs  # train imports this module

    if config.arch != "mlp" or config.activation != "quadratic":
        raise ValueError(
            f"config must be the quadratic MLP, got arch={config.arch!r}, "
            f"activation={config.activation!r}"
        )
    if config.label_noise <= 0:
        raise ValueError(f"label_noise must be > 0, got label_noise={config.label_noise}")
    p, width = config.p, config.width
    labels, corrupted = corrupted_labels(config, seed)
    memorised = torch.nonzero(corrupted).flatten()
    general = width - 2 * len(memorised)
    if general < n_frequencies(p):
        raise ValueError(
            f"width must be ≥ 2·(corrupted examples) + (p-1)/2 = "
            f"{2 * len(memorised) + n_frequencies(p)}, got width={width}"
        )
    gromov = gromov_solution(p, general, seed=phase_seed).double()
    # ModAddMLP divides by its width: rescale the Gromov weights (cubic in the logit) to width n
    factor = (width / general * logit_scale) ** (1 / 3)
    w1 = torch.zeros(width, 2 * p, dtype=torch.float64)
    w2 = torch.zeros(p, width, dtype=torch.float64)
    w1[:general] = gromov.layer1.weight * factor
    w2[:, :general] = gromov.layer2.weight * factor
    model = ModAddMLP(p, width, "quadratic").double()
    a, b = pairs(p)
    with torch.no_grad():
        model.layer1.weight.copy_(w1)
        model.layer2.weight.copy_(w2)
        rule = model(ModAddMLP.encode(a, b, p).double())  # (p², p) the generalising logits
    for j, i in enumerate(memorised.tolist()):
        # raise logit yᵢ to the rule's best logit plus the margin, on example i alone
        peak = rule[i].max() - rule[i, labels[i]] + memorised_margin * logit_scale
        beta = peak * width * 2 * p / 4  # 4β/(2p·n) = peak
        for sign, unit in ((1.0, general + 2 * j), (-1.0, general + 2 * j + 1)):
            w1[unit, a[i]] = 1.0
            w1[unit, p + b[i]] = sign
            w2[labels[i], unit] = sign * beta
    model = ModAddMLP(p, width, "quadratic")
    with torch.no_grad():
        model.layer1.weight.copy_(w1)
        model.layer2.weight.copy_(w2)
    return model


def _key_list(key: Sequence[int] | Tensor, p: int) -> list[int]:
    frequencies = [int(k) for k in key]
    if len(set(frequencies)) != len(frequencies):
        raise ValueError(f"key must be distinct frequencies, got key={frequencies}")
    if any(not 1 <= k <= n_frequencies(p) for k in frequencies):
        raise ValueError(
            f"key frequencies must lie in 1 … (p − 1)/2 = {n_frequencies(p)}, got key={frequencies}"
        )
    return frequencies


def sum_frequency_split(logits: Tensor, key: Sequence[int] | Tensor) -> tuple[Tensor, Tensor]:
    r"""Restricted and excluded logits: the parts of ``logits`` along and off the key
    frequencies of a + b, over the input axis.

    ``logits`` (p², C) over all pairs in canonical order. With F the (p², 2|K|) columns
    cos(ω_k(a + b)), sin(ω_k(a + b)) for k ∈ ``key`` (ω_k = 2πk/p) and P the orthogonal
    projection onto span{1, F}, each output column z gives

    .. math::  z_{\text{restricted}} = P z, \qquad
               z_{\text{excluded}} = z - F (F^\top F)^{-1} F^\top z,

    so the excluded logits keep the constant (mean) along with every other direction. The
    columns of F are orthogonal with squared norm p²/2 over the full grid. Both (p², C) float64.
    An empty ``key`` (a network without key frequencies) restricts to the mean and excludes
    nothing.
    """
    n = logits.shape[0]
    p = math.isqrt(n)
    if p * p != n:
        raise ValueError(f"logits must have p² rows (all pairs), got {n} rows")
    features = restrict_to_frequencies(fourier_family(p, "sum"), _key_list(key, p))  # (p², 2|K|)
    z = logits.double()
    along = features @ (features.T @ z) * (2.0 / n)  # (p², C) the key-frequency part
    mean = z.mean(0, keepdim=True)  # (1, C)
    return mean + along, z - along


@torch.no_grad()
def progress_measures(
    model: nn.Module, config: Config, seed: int, key: Sequence[int] | Tensor | None = None
) -> dict[str, Any]:
    """Nanda et al. (2023)'s progress measures of a modular-addition transformer at one
    checkpoint, in float64 cross-entropy over all p² pairs in canonical order.

    * ``train_loss`` — the loss on the run's training split (the labels it was trained on),
      ``test_loss`` on its test split (:func:`~testbeds.modadd.evaluation_groups`);
    * ``restricted_loss`` — the loss of the restricted logits (:func:`sum_frequency_split`:
      only the constant and cos/sin(ω_k(a + b)) at the key frequencies kept over the input
      axis) on the **test** split: how well the Fourier circuit alone generalises;
    * ``excluded_loss`` — the loss of the excluded logits (those directions removed) on the
      **training** split: how well the network fits its training data without the circuit.

    The splits follow the paper's code (restricted loss on the test pairs, excluded loss on the
    training pairs). The paper projects the MLP neuron activations before the unembedding; here
    the projection is applied to the logits, which differs only by the key-frequency part of the
    attention's direct path to the logits. ``key=None`` uses the model's own
    :func:`key_frequencies`; ``key_frequencies`` in the result is the tuple used.
    """
    from testbeds.modadd.train import evaluation_groups, probe_inputs  # train imports this module

    if not isinstance(model, ModAddTransformer) or config.arch != "transformer":
        raise ValueError(
            f"progress measures are defined for the transformer, got model "
            f"{type(model).__name__} and arch={config.arch!r}"
        )
    if model.p != config.p:
        raise ValueError(f"model.p={model.p} does not match config.p={config.p}")
    frequencies = tuple(_key_list(key_frequencies(model) if key is None else key, config.p))
    device = next(model.parameters()).device
    logits = model(probe_inputs(config).to(device)).double().cpu()  # (p², p)
    restricted, excluded = sum_frequency_split(logits, frequencies)
    groups = evaluation_groups(config, seed)

    def loss(z: Tensor, group: str) -> float:
        ids, y = groups[group]
        return F.cross_entropy(z[ids], y[ids]).item()

    return {
        "train_loss": loss(logits, "train"),
        "test_loss": loss(logits, "test"),
        "restricted_loss": loss(restricted, "test"),
        "excluded_loss": loss(excluded, "train"),
        "key_frequencies": frequencies,
    }


def progress_curve(run: Any, key: Sequence[int] | Tensor | None = None) -> pd.DataFrame:
    """:func:`progress_measures` at every checkpoint of a transformer run: one row per
    checkpoint with columns ``epoch``, then ``PROGRESS_COLUMNS``.

    The key frequencies are the same at every checkpoint: ``key``, or by default those of the
    run's **final** checkpoint (as in Nanda et al. 2023); they are in
    ``curve.attrs["key_frequencies"]``.
    """
    if key is None:
        key = key_frequencies(run.final_model())
    frequencies = tuple(_key_list(key, run.config.p))
    rows = []
    for step in run.steps:
        measures = progress_measures(run.model_at(step), run.config, run.seed, frequencies)
        rows.append({"epoch": step, **{name: measures[name] for name in PROGRESS_COLUMNS}})
    curve = pd.DataFrame(rows, columns=["epoch", *PROGRESS_COLUMNS])
    curve.attrs["key_frequencies"] = frequencies
    return curve


def circuit_formation_phase(curve: pd.DataFrame) -> tuple[int, int]:
    """(start epoch, end epoch) of the circuit-formation phase of a :func:`progress_curve`.

    * end — the first epoch at which ``restricted_loss`` is below
      ``RESTRICTED_LOSS_END_FRACTION`` (10%) of its value at the first checkpoint;
    * start — the epoch, among checkpoints up to the end, at which ``excluded_loss`` is lowest:
      where it starts rising as the Fourier circuit takes over the training fit.

    Raises ``ValueError`` when a column is missing, or when the restricted loss never falls
    below the end threshold (circuit formation has not ended within the curve).
    """
    missing = [c for c in ("epoch", "restricted_loss", "excluded_loss") if c not in curve]
    if missing or curve.empty:
        raise ValueError(
            f"curve must have rows and the columns epoch, restricted_loss, excluded_loss; "
            f"missing {missing or 'rows'}"
        )
    curve = curve.sort_values("epoch")
    epochs = curve["epoch"].to_numpy()
    restricted = curve["restricted_loss"].to_numpy()
    threshold = RESTRICTED_LOSS_END_FRACTION * restricted[0]
    below = (restricted < threshold).nonzero()[0]
    if not len(below):
        raise ValueError(
            f"restricted_loss never falls below {RESTRICTED_LOSS_END_FRACTION:.0%} of its value "
            f"at the first checkpoint (epoch {epochs[0]}: {restricted[0]:.4g}, threshold "
            f"{threshold:.4g}; lowest {restricted.min():.4g}), so circuit formation has no end "
            f"within epochs {epochs[0]}–{epochs[-1]}"
        )
    end = int(below[0])
    start = int(curve["excluded_loss"].to_numpy()[: end + 1].argmin())
    return int(epochs[start]), int(epochs[end])
