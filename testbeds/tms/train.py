"""Data and training loop of the Toy Models of Superposition testbed.

Train (or load from the cache) one preset from the shell::

    python -m testbeds.tms lin2025_tms_m10_s0.9 --seed 0
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from testbeds.runs import PartialSaver, Run, RunStore, cached_run
from testbeds.tms.config import Config
from testbeds.tms.models import TMSModel

TESTBED = "tms"
CODE_PATHS = tuple(sorted(Path(__file__).parent.glob("*.py")))
REPRESENTED_NORM = 0.75  # feature i is represented when ‖W_i‖² = (WᵀW)_ii ≥ this (Lin 2025)
EVAL_POINTS = 4096  # size of the held-out evaluation batch for data="fresh"


def importances(config: Config) -> Tensor:
    """I_i = importance_decay ** i, shape (n,)."""
    return config.importance_decay ** torch.arange(config.n_features, dtype=torch.float32)


def sample_features(
    n_points: int, n_features: int, sparsity: tuple[float, ...], generator: torch.Generator
) -> Tensor:
    """(n_points, I, n) inputs: each feature is 0 with probability S (per instance), else
    U[0, 1]."""
    shape = (n_points, len(sparsity), n_features)
    values = torch.rand(shape, generator=generator)
    keep = torch.rand(shape, generator=generator) >= torch.tensor(sparsity)[None, :, None]
    return values * keep


def dataset(config: Config, seed: int) -> Tensor:
    """The fixed dataset of a ``data="fixed"`` config (or the probe set of a ``"fresh"`` one):
    (n_points, I, n), drawn from ``seed``; rows scaled to unit L2 norm when ``normalize``
    (rows with no active feature stay zero)."""
    generator = torch.Generator().manual_seed(seed)
    x = sample_features(config.n_points, config.n_features, config.sparsity, generator)
    if config.normalize:
        norms = x.norm(dim=-1, keepdim=True)
        x = torch.where(norms > 0, x / norms.clamp_min(1e-30), x)
    return x


def probe_inputs(config: Config, seed: int) -> Tensor:
    """Inputs on which kernels and ground truth are evaluated: the fixed dataset (the training
    set of a ``"fixed"`` config), (N, n) for one instance and (N, I, n) otherwise."""
    x = dataset(config, seed)
    return x[:, 0] if config.n_instances == 1 else x


def loss_per_instance(config: Config, model: TMSModel, x: Tensor) -> Tensor:
    """Importance-weighted reconstruction error Σ_i I_i (x_i − y_i)², averaged over the batch,
    per instance: (I,)."""
    error = (x - model(x)) ** 2 * importances(config).to(x)
    return error.sum(-1).mean(0)


def represented(model: TMSModel, threshold: float = REPRESENTED_NORM) -> Tensor:
    """Boolean (I, n): feature j is represented in instance i when ‖W[i, :, j]‖² ≥ threshold."""
    return model.W.detach().pow(2).sum(1) >= threshold


def _train(config: Config, seed: int, store: RunStore | None) -> dict[str, Any]:
    torch.set_flush_denormal(True)  # weight decay drives weights into denormals: 3-4x slower
    fixed = config.data == "fixed"
    data = dataset(config, seed)
    eval_x = (
        data
        if fixed
        else sample_features(
            EVAL_POINTS,
            config.n_features,
            config.sparsity,
            torch.Generator().manual_seed(seed + 3),
        )
    )
    batches = torch.Generator().manual_seed(seed + 2)  # fresh batches / minibatch order
    model = config.build_model()
    model.reset_parameters(torch.Generator().manual_seed(seed + 1))
    if config.optimizer == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    else:
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
    keep = set(config.checkpoint_steps)
    checkpoints: dict[int, dict[str, Tensor]] = {}
    log: dict[str, list] = {}
    start, seconds = 0, 0.0

    resumed = store.load_partial() if store is not None else None
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        batches.set_state(resumed["generator"])
        checkpoints = {int(k): v for k, v in resumed["checkpoints"].items()}
        log, start, seconds = resumed["log"], resumed["step"], resumed["seconds"]

    saver = PartialSaver(store)
    clock = time.perf_counter()
    batch = config.batch_size or config.n_points
    I = config.n_instances
    bar = tqdm(
        range(start, config.steps + 1),
        initial=start,
        total=config.steps + 1,
        desc=f"{TESTBED} n={config.n_features} m={config.n_hidden} seed={seed}",
        disable=None,
    )
    for step in bar:
        if step in keep:
            checkpoints[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if step % config.log_every == 0 or step == config.steps:
            with torch.no_grad():
                losses = loss_per_instance(config, model, eval_x)
            counts = represented(model).sum(1)
            row: dict[str, float] = {"step": step, "loss": losses.sum().item()}
            if I == 1:
                row["represented"] = int(counts[0])
            else:
                for i in range(I):
                    row[f"loss_{i}"] = losses[i].item()
                    row[f"represented_{i}"] = int(counts[i])
            for key, value in row.items():
                log.setdefault(key, []).append(value)
            bar.set_postfix(loss=row["loss"], refresh=False)
        if step == config.steps:
            break
        if fixed and batch == config.n_points:
            x = data
        elif fixed:
            x = data[torch.randint(config.n_points, (batch,), generator=batches)]
        else:
            x = sample_features(batch, config.n_features, config.sparsity, batches)
        loss = loss_per_instance(config, model, x).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        saver.maybe_save(
            lambda step=step: {
                "step": step + 1,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "generator": batches.get_state(),
                "checkpoints": checkpoints,
                "log": log,
                "seconds": seconds + time.perf_counter() - clock,
            }
        )
    bar.close()
    return {
        "checkpoints": checkpoints,
        "log": log,
        "seconds": seconds + time.perf_counter() - clock,
    }


def train(config: Config, seed: int = 0, *, cache: bool = True, force: bool = False) -> Run:
    """Train ``config`` from ``seed`` (or load it from the run cache) and return the Run.

    Deterministic for a given (config, seed, torch version): the dataset, the initialisation
    and the batches all come from the seed.
    """
    if not isinstance(config, Config):
        raise ValueError(f"config must be a testbeds.tms.Config, got {type(config).__name__}")
    return cached_run(TESTBED, config, seed, _train, CODE_PATHS, cache=cache, force=force)
