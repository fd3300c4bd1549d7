"""Data, split and training loop of the modular-addition testbed.

Train (or load from the cache) one preset from the shell::

    python -m testbeds modadd lin2025_mlp --seed 0

``nanda2023`` (p = 113, 40 000 full-batch epochs) is meant for a GPU (``NTKBENCH_DEVICE=cuda``):
on the CPU it trains only when allowed explicitly (:data:`SLOW_CPU_ENV`, ``allow_slow_cpu``).
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Callable
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from testbeds.loop import DEVICE_ENV, TrainLoop
from testbeds.loop import generator as derived_generator
from testbeds.modadd.config import PRESETS, Config, resolve_config
from testbeds.modadd.ground_truth import GENERALISING_IPR, neuron_frequencies
from testbeds.modadd.models import ModAddMLP
from testbeds.runs import Run, RunStore, cached_run

TESTBED = "modadd"
MODULES = ("testbeds.modadd",)  # the run key hashes this package and what it imports

# A config is slow on the CPU when it is a transformer with p ≥ SLOW_CPU_MIN_P: nanda2023 (p = 113,
# 40 000 full-batch epochs) took about NANDA2023_CPU_MINUTES on a 2-core CPU, while every preset
# at p = 29 trains in minutes. Training such a config on the CPU needs SLOW_CPU_ENV=1 or
# ``allow_slow_cpu=True``; a cached run loads without either.
SLOW_CPU_MIN_P = 113
NANDA2023_CPU_MINUTES = 43.0  # measured: nanda2023 seed 0 on the project's 2-core CPU
SLOW_CPU_ENV = "NTKBENCH_ALLOW_SLOW_CPU"


class SlowOnCPU(RuntimeError):
    """Training a config that is slow on the CPU (:data:`SLOW_CPU_MIN_P`) was not allowed."""


def cpu_minutes(config: Config) -> float:
    """Estimated CPU training time in minutes: nanda2023's measured time scaled by the number of
    training examples processed (epochs × training pairs) and by d_model · d_mlp."""
    ref = PRESETS["nanda2023"]
    work = config.epochs * config.n_train * config.d_model * config.d_mlp
    ref_work = ref.epochs * ref.n_train * ref.d_model * ref.d_mlp
    return NANDA2023_CPU_MINUTES * work / ref_work


def slow_on_cpu(config: Config) -> bool:
    """Whether ``config`` trains too slowly for the CPU by default (the rule of
    :data:`SLOW_CPU_MIN_P`)."""
    return config.arch == "transformer" and config.p >= SLOW_CPU_MIN_P


def _check_cpu_time(config: Config, name: str, device: torch.device, allow: bool) -> None:
    """Raise :class:`SlowOnCPU` before a slow config trains on the CPU without permission."""
    if device.type != "cpu" or not slow_on_cpu(config):
        return
    if allow or os.environ.get(SLOW_CPU_ENV, "").strip() == "1":
        return
    raise SlowOnCPU(
        f"{TESTBED} preset {name!r} (transformer, p={config.p}, {config.epochs} epochs) would "
        f"train on the CPU for about {cpu_minutes(config):.0f} minutes; run it on a GPU "
        f"({DEVICE_ENV}=cuda) or allow the CPU run ({SLOW_CPU_ENV}=1 or allow_slow_cpu=True)"
    )


def pairs(p: int) -> tuple[Tensor, Tensor]:
    """All p² operand pairs in canonical order: index i = a·p + b. Two (p²,) long tensors."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    return a.reshape(-1), b.reshape(-1)


def labels(p: int) -> Tensor:
    """(a + b) mod p for every pair, shape (p²,)."""
    a, b = pairs(p)
    return (a + b) % p


def probe_inputs(config: Config) -> Tensor:
    """Model inputs for all p² pairs in canonical order: (p², 2p) one-hot pairs for the MLP,
    (p², 3) tokens (a, b, =) for the transformer."""
    a, b = pairs(config.p)
    if config.arch == "mlp":
        return ModAddMLP.encode(a, b, config.p)
    return torch.stack([a, b, torch.full_like(a, config.p)], dim=1)


def split(config: Config, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded train/test split: (train indices, test indices) into the canonical order."""
    perm = torch.randperm(config.n_pairs, generator=derived_generator(seed, "split"))
    return perm[: config.n_train].sort().values, perm[config.n_train :].sort().values


def corrupted_labels(config: Config, seed: int) -> tuple[Tensor, Tensor]:
    """Labels the network is trained on and which of them are corrupted (Doshi et al. 2023).

    ``config.n_corrupted`` training pairs, drawn from the seed, get (a + b + r) mod p with r
    uniform in 1 … p − 1 (a uniformly random *wrong* label). Returns the labels of all p² pairs
    in canonical order (test pairs keep the true label) and the boolean corrupted mask (p²,).
    """
    y = labels(config.p)
    mask = torch.zeros(config.n_pairs, dtype=torch.bool)
    if config.n_corrupted:
        train_idx, _ = split(config, seed)
        generator = derived_generator(seed, "corruption")
        pick = train_idx[torch.randperm(len(train_idx), generator=generator)[: config.n_corrupted]]
        shift = torch.randint(1, config.p, (len(pick),), generator=generator)
        y = y.clone()
        y[pick] = (y[pick] + shift) % config.p
        mask[pick] = True
    return y, mask


def evaluation_groups(config: Config, seed: int) -> dict[str, tuple[Tensor, Tensor]]:
    """Named example groups of the log: name → (indices, labels scored against).

    ``train`` (the labels trained on, corrupted ones included) and ``test`` always; with label
    noise also ``clean`` (uncorrupted training pairs), ``corrupted`` (corrupted pairs against
    their corrupted label: memorised) and ``corrupted_true`` (the same pairs against the true
    sum: the rule overrides the memorised label).
    """
    train_idx, test_idx = split(config, seed)
    y_true = labels(config.p)
    y, mask = corrupted_labels(config, seed)
    groups = {"train": (train_idx, y), "test": (test_idx, y_true)}
    if config.n_corrupted:
        bad = mask.nonzero().flatten()
        groups["clean"] = (train_idx[~mask[train_idx]], y)
        groups["corrupted"] = (bad, y)
        groups["corrupted_true"] = (bad, y_true)
    return groups


def corruption_ground_truth(model: nn.Module, config: Config, seed: int) -> dict[str, Any]:
    """Ground truth of a corrupted-label run (Doshi et al. 2023) at one checkpoint.

    Returns ``corrupted`` (p²,) bool and ``train_labels`` (p²,) (the labels trained on), per
    hidden neuron ``neuron_ipr`` (m,) and ``neuron_generalising`` (m,) bool (IPR of the neuron's
    weight Fourier power ≥ ``GENERALISING_IPR``; the rest are memorising), and ``accuracy``:
    name → accuracy on each group of :func:`evaluation_groups` (``corrupted`` = memorised).
    """
    y, mask = corrupted_labels(config, seed)
    neurons = neuron_frequencies(model)
    with torch.no_grad():
        predicted = model(probe_inputs(config).to(next(model.parameters()).dtype)).argmax(-1)
    accuracy = {
        name: (predicted[ids] == target[ids]).double().mean().item()
        for name, (ids, target) in evaluation_groups(config, seed).items()
    }
    return {
        "corrupted": mask,
        "train_labels": y,
        "neuron_ipr": neurons.ipr,
        "neuron_generalising": neurons.ipr >= GENERALISING_IPR,
        "accuracy": accuracy,
    }


def continue_training(
    model: nn.Module,
    config: Config,
    seed: int,
    *,
    steps: int,
    batch_size: int | None,
    track: Callable[[nn.Module], dict[str, float]],
    track_every: int = 1,
) -> pd.DataFrame:
    """Train a copy of ``model`` for ``steps`` more optimizer steps on the run's training labels.

    A fresh AdamW with the config's learning rate, betas and weight decay; minibatches of
    ``batch_size`` (None = full batch) are drawn without replacement in seeded passes over the
    training set, so two calls with the same arguments give the same trajectory. ``track(model)``
    is evaluated at step 0 and every ``track_every`` steps; returns a frame with a ``step``
    column and one column per tracked name.
    """
    if not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"steps must be a positive int, got steps={steps!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size <= 0):
        raise ValueError(
            f"batch_size must be None (full batch) or a positive int, got {batch_size!r}"
        )
    model = copy.deepcopy(model).train()
    x, y = probe_inputs(config), corrupted_labels(config, seed)[0]
    train_idx, _ = split(config, seed)
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
    )
    batches = derived_generator(seed, "continue/batches")
    label = "full batch" if batch_size is None else f"batch {batch_size}"
    loop = TrainLoop(
        None,
        model,
        optimizer,
        generators={"batches": batches},
        total=steps,
        desc=f"{TESTBED} continue ({label})",
    )
    queue = train_idx[:0]
    for step in loop:
        if step % track_every == 0 or step == steps:
            with torch.no_grad():
                loop.append({"step": step, **track(model)})
        if step == steps:
            break
        if batch_size is None:
            ids = train_idx
        else:
            if len(queue) < batch_size:
                fresh = train_idx[torch.randperm(len(train_idx), generator=batches)]
                queue = torch.cat([queue, fresh])
            ids, queue = queue[:batch_size], queue[batch_size:]
        ids = ids.to(device)
        loss = _loss(config, model(x[ids]), y[ids])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return pd.DataFrame(loop.log)


def per_example_loss(config: Config) -> Callable[[Tensor, Tensor], Tensor]:
    """The config's training loss per example, ``loss(logits (n, p), labels (n,)) -> (n,)``;
    its mean over examples is the training loss. ``vmap``-safe (for per-example gradients)."""
    if config.loss == "mse":
        classes = torch.arange(config.p)

        def mse(logits: Tensor, targets: Tensor) -> Tensor:
            one_hot = (targets[:, None] == classes).to(logits)  # F.one_hot is not vmap-safe
            return (logits - one_hot).pow(2).mean(-1)

        return mse

    def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits, targets, reduction="none")

    return cross_entropy


def _loss(config: Config, logits: Tensor, targets: Tensor) -> Tensor:
    """The training loss: the mean of :func:`per_example_loss`."""
    return per_example_loss(config)(logits, targets).mean()


@torch.no_grad()
def _evaluate(
    config: Config, model: nn.Module, x: Tensor, groups: dict[str, tuple[Tensor, Tensor]]
):
    logits = model(x)
    row: dict[str, float] = {}
    for name, (ids, y) in groups.items():
        row[f"{name}_loss"] = _loss(config, logits[ids], y[ids]).item()
        row[f"{name}_acc"] = (logits[ids].argmax(-1) == y[ids]).float().mean().item()
    return row


def _train(
    config: Config,
    seed: int,
    store: RunStore | None,
    device: torch.device,
    *,
    name: str = "",
    allow_slow_cpu: bool = False,
) -> dict:
    _check_cpu_time(config, name, device, allow_slow_cpu)  # runs on a cache miss only
    x, y = probe_inputs(config).to(device), corrupted_labels(config, seed)[0].to(device)
    train_idx, _ = split(config, seed)
    groups = {
        name: (ids.to(device), labels.to(device))
        for name, (ids, labels) in evaluation_groups(config, seed).items()
    }
    batches = derived_generator(seed, "batches")
    model = config.build_model()
    model.reset_parameters(derived_generator(seed, "init"))
    model.to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
    )
    warmup = config.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0
    )
    loop = TrainLoop(
        store,
        model,
        optimizer,
        scheduler=scheduler,
        generators={"batches": batches},
        total=config.epochs,
        keep=config.checkpoint_epochs,
        desc=f"{TESTBED} {config.arch} p={config.p} seed={seed}",
    )
    batch = config.batch_size or len(train_idx)
    for epoch in loop:
        loop.checkpoint(epoch)
        if epoch % config.log_every == 0 or epoch == config.epochs:
            row = _evaluate(config, model, x, groups)
            loop.append({"epoch": epoch, **row})
            loop.postfix(train_acc=row["train_acc"], test_acc=row["test_acc"])
        if epoch == config.epochs:
            break
        order = train_idx[torch.randperm(len(train_idx), generator=batches)].to(device)
        for i in range(0, len(order), batch):
            ids = order[i : i + batch]
            loss = _loss(config, model(x[ids]), y[ids])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        loop.save_partial(epoch + 1)
    return loop.payload()


def train(
    config: Config | str,
    seed: int = 0,
    *,
    device: str | torch.device | None = None,
    cache: bool = True,
    force: bool = False,
    trained_on: str | None = None,
    allow_slow_cpu: bool = False,
) -> Run:
    """Train ``config`` (a Config or a preset name) from ``seed`` (or load it from the run
    cache) and return the Run.

    Deterministic for a given (config, seed, device kind, library versions): the split, the
    initialisation and the minibatch order all come from the seed. ``device`` defaults to
    ``$NTKBENCH_DEVICE`` (``cpu``). ``trained_on`` (default ``$NTKBENCH_TRAINED_ON``) loads a
    run trained on another device kind and copied here, never training it
    (:func:`testbeds.runs.cached_run`). A config that is slow on the CPU (:func:`slow_on_cpu`,
    e.g. ``nanda2023``) raises :class:`SlowOnCPU` instead of training on the CPU unless
    ``allow_slow_cpu=True`` or ``$NTKBENCH_ALLOW_SLOW_CPU=1``; loading it from the cache needs
    neither.
    """
    config, name = resolve_config(config)
    train_fn = functools.partial(_train, name=name, allow_slow_cpu=allow_slow_cpu)
    return cached_run(
        TESTBED,
        config,
        seed,
        train_fn,
        MODULES,
        preset=name,
        device=device,
        cache=cache,
        force=force,
        trained_on=trained_on,
    )
