"""Data, split and training loop of the modular-addition testbed.

Train (or load from the cache) one preset from the shell::

    python -m testbeds.modadd lin2025_mlp --seed 0
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from testbeds.modadd.config import Config
from testbeds.modadd.models import ModAddMLP
from testbeds.runs import PartialSaver, Run, RunStore, cached_run

TESTBED = "modadd"
CODE_PATHS = tuple(sorted(Path(__file__).parent.glob("*.py")))


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
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(config.n_pairs, generator=generator)
    return perm[: config.n_train].sort().values, perm[config.n_train :].sort().values


def _loss(config: Config, logits: Tensor, targets: Tensor) -> Tensor:
    if config.loss == "mse":
        return F.mse_loss(logits, F.one_hot(targets, config.p).to(logits.dtype))
    return F.cross_entropy(logits, targets)


@torch.no_grad()
def _evaluate(config: Config, model: nn.Module, x: Tensor, y: Tensor, idx: dict[str, Tensor]):
    logits = model(x)
    row: dict[str, float] = {}
    for name, ids in idx.items():
        row[f"{name}_loss"] = _loss(config, logits[ids], y[ids]).item()
        row[f"{name}_acc"] = (logits[ids].argmax(-1) == y[ids]).float().mean().item()
    return row


def _train(config: Config, seed: int, store: RunStore | None) -> dict[str, Any]:
    torch.set_flush_denormal(True)  # weight decay drives weights into denormals: 3-4x slower
    x, y = probe_inputs(config), labels(config.p)
    train_idx, test_idx = split(config, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    model = config.build_model()
    model.reset_parameters(generator)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
    )
    warmup = config.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0
    )
    keep = set(config.checkpoint_epochs)
    checkpoints: dict[int, dict[str, Tensor]] = {}
    log: dict[str, list] = {}
    start, seconds = 0, 0.0

    resumed = store.load_partial() if store is not None else None
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        generator.set_state(resumed["generator"])
        checkpoints = {int(k): v for k, v in resumed["checkpoints"].items()}
        log, start, seconds = resumed["log"], resumed["epoch"], resumed["seconds"]

    saver = PartialSaver(store)
    clock = time.perf_counter()
    batch = config.batch_size or len(train_idx)
    bar = tqdm(
        range(start, config.epochs + 1),
        initial=start,
        total=config.epochs + 1,
        desc=f"{TESTBED} {config.arch} p={config.p} seed={seed}",
        disable=None,
    )
    for epoch in bar:
        if epoch in keep:
            checkpoints[epoch] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if epoch % config.log_every == 0 or epoch == config.epochs:
            row = _evaluate(config, model, x, y, {"train": train_idx, "test": test_idx})
            for key, value in {"epoch": epoch, **row}.items():
                log.setdefault(key, []).append(value)
            bar.set_postfix(train_acc=row["train_acc"], test_acc=row["test_acc"], refresh=False)
        if epoch == config.epochs:
            break
        order = train_idx[torch.randperm(len(train_idx), generator=generator)]
        for i in range(0, len(order), batch):
            ids = order[i : i + batch]
            loss = _loss(config, model(x[ids]), y[ids])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        saver.maybe_save(
            lambda epoch=epoch: {
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generator": generator.get_state(),
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

    Deterministic for a given (config, seed, torch version): the split, the initialisation and
    the minibatch order all come from the seed.
    """
    if not isinstance(config, Config):
        raise ValueError(f"config must be a testbeds.modadd.Config, got {type(config).__name__}")
    return cached_run(TESTBED, config, seed, _train, CODE_PATHS, cache=cache, force=force)
