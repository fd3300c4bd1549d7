"""Data and training loop of the Toy Models of Superposition testbed.

Train (or load from the cache) one preset from the shell::

    python -m testbeds tms lin2025_tms_m10_s0.9 --seed 0
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from testbeds.loop import TrainLoop
from testbeds.loop import generator as derived_generator
from testbeds.runs import Run, RunStore, cached_run
from testbeds.tms.config import Config, resolve_config
from testbeds.tms.models import TMSModel

TESTBED = "tms"
MODULES = ("testbeds.tms",)  # the run key hashes this package and what it imports
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
    (n_points, I, n), drawn from the seed's "data" generator; rows scaled to unit L2 norm when
    ``normalize`` (rows with no active feature stay zero)."""
    generator = derived_generator(seed, "data")
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


def reconstruction_loss(config: Config) -> Callable[[Tensor, Tensor], Tensor]:
    """The testbed's loss per example: ``loss(outputs, targets)`` = the importance-weighted
    squared error Σ_i I_i (y_i − x_i)² over the last (feature) axis. ``vmap``-safe."""
    weights = importances(config)

    def loss(outputs: Tensor, targets: Tensor) -> Tensor:
        return ((outputs - targets) ** 2 * weights.to(outputs)).sum(-1)

    return loss


def loss_per_instance(config: Config, model: TMSModel, x: Tensor) -> Tensor:
    """The training loss of each instance, (I,): :func:`reconstruction_loss` of x averaged
    over the batch."""
    return reconstruction_loss(config)(model(x), x).mean(0)


def represented(model: TMSModel, threshold: float = REPRESENTED_NORM) -> Tensor:
    """Boolean (I, n): feature j is represented in instance i when ‖W[i, :, j]‖² ≥ threshold."""
    return model.W.detach().pow(2).sum(1) >= threshold


def _train(config: Config, seed: int, store: RunStore | None, device: torch.device) -> dict:
    fixed = config.data == "fixed"
    data = dataset(config, seed).to(device)
    eval_x = (
        data
        if fixed
        else sample_features(
            EVAL_POINTS,
            config.n_features,
            config.sparsity,
            derived_generator(seed, "eval"),
        ).to(device)
    )
    batches = derived_generator(seed, "batches")  # fresh batches / minibatch order
    model = config.build_model()
    model.reset_parameters(derived_generator(seed, "init"))
    model.to(device)
    if config.optimizer == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    else:
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
    loop = TrainLoop(
        store,
        model,
        optimizer,
        generators={"batches": batches},
        total=config.steps,
        keep=config.checkpoint_steps,
        desc=f"{TESTBED} n={config.n_features} m={config.n_hidden} seed={seed}",
    )
    batch = config.batch_size or config.n_points
    I = config.n_instances
    for step in loop:
        loop.checkpoint(step)
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
            loop.append(row)
            loop.postfix(loss=row["loss"])
        if step == config.steps:
            break
        if fixed and batch == config.n_points:
            x = data
        elif fixed:
            x = data[torch.randint(config.n_points, (batch,), generator=batches).to(device)]
        else:
            x = sample_features(batch, config.n_features, config.sparsity, batches).to(device)
        loss = loss_per_instance(config, model, x).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loop.save_partial(step + 1)
    return loop.payload()


def train(
    config: Config | str,
    seed: int = 0,
    *,
    device: str | torch.device | None = None,
    cache: bool = True,
    force: bool = False,
) -> Run:
    """Train ``config`` (a Config or a preset name) from ``seed`` (or load it from the run
    cache) and return the Run.

    Deterministic for a given (config, seed, device kind, library versions): the dataset, the
    initialisation and the batches all come from the seed. ``device`` defaults to
    ``$NTKBENCH_DEVICE`` (``cpu``).
    """
    config, name = resolve_config(config)
    return cached_run(
        TESTBED, config, seed, _train, MODULES, preset=name, device=device, cache=cache, force=force
    )
