"""Shared per-checkpoint computations of the trajectory claims H4, H5 and H6.

Each claim maps a metric over the checkpoints of cached runs with
:func:`testbeds.trajectory.map_checkpoints`, which caches every checkpoint's values, so a second
``make run`` recomputes nothing. H4 and H6 read the same per-checkpoint computation on the
modular-addition runs (:func:`layer_kernel_metrics`): whichever check asks first computes it, the
other waits for it and reads the cache.

Probe sets (fixed before any value was seen, issue 7): modular addition, all p² pairs;
TMS, the run's fixed dataset; the language model, the 256 probe prompts
(``testbeds.lm.probe_prompts``), read out as log P(next token | prompt) at the last position.

Checkpoints. Every checkpoint of the run where one checkpoint costs under a second
(``lin2025_mlp``, TMS: 39 checkpoints from initialisation to the end). For
``lin2025_transformer`` and LM pretraining, where the kernels of one checkpoint take seconds,
every third of the run's 39 checkpoints plus the last (14 checkpoints, initialisation and the
end included), so that the claims fit their time budget.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import combinations

import torch
from torch import Tensor, nn

import testbeds
from hypotheses import tier
from hypotheses.compute import on_cpu, to_device
from leaderboard.records import results_dir
from metrics.entk import entk
from metrics.layer_kernels import layer_kernels
from metrics.similarity import (
    SVCCA_VARIANCE,
    center_gram,
    kernel_svcca_basis,
    linear_cka_matrix,
    svcca_of_bases,
)
from metrics.spectra import cosine_normalize, effective_rank, participation_ratio
from testbeds.contract import Probe
from testbeds.runs import Run
from testbeds.trajectory import map_checkpoints

SEEDS = tier.seeds(0, 1, 2)
SPARSE_TMS_PRESET = "lin2025_tms_m10_s0.9"  # m = 10 < n = 50 with S = 0.9: superposition
LM_PRESET = "lm_pretrain"
THIN_EVERY = 3  # transformer and LM: every third checkpoint (plus the last)
# preset → (every how many checkpoints, which per-checkpoint computation). "layer-kernels"
# also computes H6's kernel similarities, so H4 and H6 share one cached computation.
PLANS = {
    "lin2025_mlp": (1, "layer-kernels"),
    "lin2025_transformer": (THIN_EVERY, "layer-kernels"),
    SPARSE_TMS_PRESET: (1, "ranks"),
    LM_PRESET: (THIN_EVERY, "ranks"),
}


def probe_for(run: Run) -> Probe:
    """The probe set of a run's testbed (module docstring), from the testbed contract. The
    loss-gradient Gram uses the training loss: modular addition, every pair with its true
    label; TMS, the importance-weighted reconstruction error of the fixed dataset; the language
    model, the next-token loss of the probe prompts' own tokens 2 … 8."""
    return testbeds.of(run).probe(run)


def thinned(steps: Sequence[int], every: int = THIN_EVERY) -> list[int]:
    """Every ``every``-th step from the first, plus the last."""
    return sorted({*steps[::every], steps[-1]})


# ----------------------------------------------------------------------------- H4 ranks
def _eigvals(K: Tensor) -> Tensor:
    """Eigenvalues of a kernel computed in the model's float32; negatives of float32
    round-off size (≈ 1e-6 of the largest) are set to zero."""
    return torch.linalg.eigvalsh(K.double()).clamp_min(0.0)


def cosine_effective_rank(kernel: Tensor) -> float:
    """:func:`rank_statistics`' ``erank`` alone: the effective rank of the cosine-normalised
    kernel (without the other statistics' spectra)."""
    return effective_rank(_eigvals(cosine_normalize(kernel)))


def rank_statistics(
    kernel: Tensor, layers: dict[str, Tensor], loss_gram: Tensor | None
) -> dict[str, float]:
    """H4's per-checkpoint values from the trace eNTK, its layers' kernels and the per-example
    loss-gradient Gram (N, N):

    * ``erank`` — Roy–Vetterli effective rank of the cosine-normalised kernel (primary);
    * ``participation_ratio`` of the cosine-normalised kernel;
    * ``erank_raw`` / ``participation_ratio_raw`` — the same of the unnormalised kernel;
    * ``erank_loss_gradient`` — of the loss-gradient Gram G Gᵀ (unnormalised);
    * ``erank_layer/<name>`` — of each layer's cosine-normalised kernel.
    """
    cos = _eigvals(cosine_normalize(kernel))
    raw = _eigvals(kernel)
    out = {
        "erank": effective_rank(cos),
        "participation_ratio": participation_ratio(cos),
        "erank_raw": effective_rank(raw),
        "participation_ratio_raw": participation_ratio(raw),
    }
    if loss_gram is not None:
        out["erank_loss_gradient"] = effective_rank(_eigvals(loss_gram))
    for name, K in layers.items():
        if K.diagonal().max() > 0:
            out[f"erank_layer/{name}"] = effective_rank(_eigvals(cosine_normalize(K)))
    return out


def loss_gradient_gram(model: nn.Module, probe: Probe) -> Tensor:
    """⟨∇θ ℓ(x), ∇θ ℓ(x')⟩ over the probe's examples, (N, N), computed on the compute
    device (``model`` and ``probe`` are moved there)."""
    model, rows = to_device(model, probe.rows)
    probe = probe.to(rows.device)
    return entk(probe.loss_model(model), rows, output="sum").cpu()


def rank_metrics(probe: Probe) -> Callable[[nn.Module, int], dict[str, float]]:
    """The H4 metric of one probe set (TMS and LM runs)."""

    def metric(model: nn.Module, step: int) -> dict[str, float]:
        readout, inputs = to_device(probe.readout(model), probe.inputs)
        layers = on_cpu(entk(readout, inputs, output="trace", by_layer=True))
        kernel = sum(layers.values())
        return rank_statistics(kernel, layers, loss_gradient_gram(model, probe))

    return metric


# ------------------------------------------------------------------- H6 F, B, Θ similarity
KINDS = ("F", "B", "Θ")


def kernel_family(model: nn.Module, inputs: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """The forward, backward and eNTK kernels of every dense/embedding layer, keyed
    ``"<kind>/<layer>"``, and the full trace eNTK (those layers plus any other parameter)."""
    per_layer = layer_kernels(model, inputs, output="trace")
    kernels = {}
    for name, k in per_layer.items():
        kernels[f"F/{name}"] = k.forward.double()
        kernels[f"B/{name}"] = k.backward.double()
        kernels[f"Θ/{name}"] = k.ntk.double()
    covered = {
        f"{layer}.{n}" if layer else n
        for layer in per_layer
        for n, _ in model.get_submodule(layer).named_parameters()
    }
    rest = [n for n, p in model.named_parameters() if p.requires_grad and n not in covered]
    full = sum(kernels[f"Θ/{name}"] for name in per_layer)
    if rest:
        full = full + entk(model, inputs, output="trace", groups={"rest": rest}).double()
    return kernels, full


CONSTANT_RTOL = 1e-5  # centred / raw Frobenius norm below this: a constant kernel (float32)


def is_constant(K: Tensor) -> bool:
    """Whether a kernel is constant across inputs up to float32 round-off: ‖HKH‖_F ≤
    1e-5 ‖K‖_F. The output layer's backward kernel is (its sensitivity is the identity)."""
    return bool(center_gram(K).norm() <= CONSTANT_RTOL * K.double().norm())


def pair_similarities(kernels: dict[str, Tensor]) -> dict[str, float]:
    """Linear CKA and SVCCA (99% variance) of every pair of kernels, keyed
    ``cka/<a>|<b>`` and ``svcca/<a>|<b>``, plus each kernel's SVCCA dimension
    (``svcca_dim/<name>``). Constant kernels have no centred variance, so CKA and CCA are
    undefined for them: they are marked ``constant/<name>`` = 1 and their pairs left out."""
    out = {f"constant/{name}": 1.0 for name, K in kernels.items() if is_constant(K)}
    varied = {name: K for name, K in kernels.items() if f"constant/{name}" not in out}
    bases = {name: kernel_svcca_basis(K, variance=SVCCA_VARIANCE) for name, K in varied.items()}
    names = list(varied)
    cka = linear_cka_matrix([varied[name] for name in names])
    for (i, a), (j, b) in combinations(enumerate(names), 2):
        out[f"cka/{a}|{b}"] = cka[i, j].item()
        out[f"svcca/{a}|{b}"] = svcca_of_bases(bases[a], bases[b])
    for name, U in bases.items():
        out[f"svcca_dim/{name}"] = float(U.shape[1])
    return out


def layer_kernel_metrics(probe: Probe) -> Callable[[nn.Module, int], dict[str, float]]:
    """H4's rank statistics and H6's pair similarities of one checkpoint, from one computation
    of the layer kernels (forward, backward and eNTK of every dense/embedding layer)."""

    def metric(model: nn.Module, step: int) -> dict[str, float]:
        kernels, full = on_cpu(kernel_family(*to_device(model, probe.inputs)))
        layers = {k.split("/", 1)[1]: K for k, K in kernels.items() if k.startswith("Θ/")}
        out = rank_statistics(full, layers, loss_gradient_gram(model, probe))
        out.update(pair_similarities(kernels))
        return out

    return metric


def trajectory(run: Run, preset: str):
    """The per-checkpoint frame of a run for H4 (and H6), cached; what is computed, and on
    which checkpoints, is the preset's entry in :data:`PLANS`."""
    if preset not in PLANS:
        raise ValueError(f"preset must be one of {sorted(PLANS)} (PLANS), got preset={preset!r}")
    every, kind = PLANS[preset]
    steps = thinned(run.steps, every) if every > 1 else run.steps
    metric = layer_kernel_metrics if kind == "layer-kernels" else rank_metrics
    return map_checkpoints(run, metric(probe_for(run)), name=kind, steps=steps, preset=preset)


def plots_dir(claim: str):
    out = results_dir() / claim.lower()
    out.mkdir(parents=True, exist_ok=True)
    return out
