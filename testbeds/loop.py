"""The one training loop every training and fine-tuning stage runs in, and the device it runs on.

:class:`TrainLoop` owns the bookkeeping that every stage shares: checkpoints at chosen steps, a
NaN-padded per-step log, a resumable partial state saved every ``PARTIAL_SAVE_SECONDS`` (model,
optimizer, scheduler, random generators, checkpoints, log, elapsed time and any stage-specific
``extra`` state, in one format), a tqdm bar, and flush-denormal on the CPU. A stage writes only
its own step::

    loop = TrainLoop(store, model, optimizer, generators={"batches": batches},
                     total=config.steps, keep=config.checkpoint_steps, desc="tms seed=0")
    for step in loop:                      # resumes after the last saved step
        loop.checkpoint(step)              # kept when step is in ``keep``
        loop.append({"step": step, "loss": ...})
        if step == loop.total:
            break
        ...                                # one optimizer step
        loop.save_partial(step + 1)        # at most every PARTIAL_SAVE_SECONDS
    return loop.payload()

Random generators are derived from the run's seed and a purpose name (:func:`generator`), so
two purposes, or two seeds, never share a stream (``seed + 1``-style offsets made seed s's
second stream seed s + 1's first).

Devices. ``NTKBENCH_DEVICE`` (or ``--device`` on the command lines) is ``cpu`` (the default),
``cuda`` or ``auto`` (cuda when available). Generators always live on the CPU, so the data a run
sees does not depend on the device; only the arithmetic does. The device kind is part of every
run's cache key, so GPU runs are cached apart from CPU runs.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from testbeds.runs import PartialSaver, RunStore

DEVICE_ENV = "NTKBENCH_DEVICE"
DEVICES = ("cpu", "cuda", "auto")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The device to compute on: ``device`` if given, else ``$NTKBENCH_DEVICE``, else the CPU.

    ``"auto"`` is cuda when available, else the CPU. Asking for cuda where there is none is an
    error that says so, never a silent fall-back.
    """
    if isinstance(device, torch.device):
        name = device.type
    else:
        name = device if device is not None else os.environ.get(DEVICE_ENV, "cpu")
        name = str(name).strip().lower() or "cpu"
    base = name.split(":", 1)[0]
    if base not in DEVICES:
        source = "device" if device is not None else DEVICE_ENV
        raise ValueError(f"{source} must be one of {DEVICES}, got {name!r}")
    if base == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if base == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {name!r} was asked for (argument or {DEVICE_ENV}) but this torch "
            f"({torch.__version__}) sees no CUDA device; use 'cpu' or 'auto'"
        )
    return torch.device(name)


def device_kind(device: torch.device) -> str:
    """What a run's numbers depend on about the device: ``"cpu"`` or ``"cuda:<GPU name>"``."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return device.type


def generator(seed: int, purpose: str) -> torch.Generator:
    """A CPU generator for one purpose of one seeded run ("init", "batches", "split" …).

    Its state is a hash of (seed, purpose), so every (seed, purpose) pair has its own stream.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got seed={seed!r}")
    if not isinstance(purpose, str) or not purpose:
        raise ValueError(f"purpose must be a non-empty str, got purpose={purpose!r}")
    digest = hashlib.sha256(f"ntkbench/{seed}/{purpose}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def cpu_state(model: nn.Module) -> dict[str, Tensor]:
    """A detached CPU copy of a model's ``state_dict`` (what checkpoints store)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


class TrainLoop:
    """Checkpoints, log, resume and progress of one training stage (module docstring).

    Args:
        store: the run's cache files, or None (no partial saves, no resume).
        model: the model being trained (already on its device).
        optimizer: its optimizer; ``scheduler`` an optional learning-rate scheduler.
        generators: name → CPU generator; their states are saved and restored.
        total: the last step; iteration runs from the resumed step to ``total`` inclusive.
        keep: the steps whose weights :meth:`checkpoint` stores.
        desc: the progress bar's label.
        first: the first step of a fresh run (0; the SFT stage starts at 1).
    """

    def __init__(
        self,
        store: RunStore | None,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        generators: dict[str, torch.Generator],
        total: int,
        keep: Iterable[int] = (),
        desc: str = "",
        scheduler: Any = None,
        first: int = 0,
    ):
        if next(model.parameters()).device.type == "cpu":
            torch.set_flush_denormal(True)  # weight decay drives weights into denormals: 3-4x
        self.store, self.model, self.optimizer = store, model, optimizer
        self.scheduler, self.generators = scheduler, generators
        self.total, self.keep, self.desc = total, set(keep), desc
        self.checkpoints: dict[int, dict[str, Tensor]] = {}
        self.log: dict[str, list] = {}
        self.extra: dict[str, Any] = {}
        self.start, self.seconds = first, 0.0
        resumed = store.load_partial() if store is not None else None
        if resumed is not None:
            model.load_state_dict(resumed["model"])
            optimizer.load_state_dict(resumed["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(resumed["scheduler"])
            for name, g in generators.items():
                g.set_state(resumed["generators"][name])
            self.checkpoints = {int(k): v for k, v in resumed["checkpoints"].items()}
            self.log, self.start = resumed["log"], resumed["step"]
            self.seconds, self.extra = resumed["seconds"], resumed["extra"]
        self._saver = PartialSaver(store)
        self._clock = time.perf_counter()
        self._bar: Any = None

    def __iter__(self) -> Iterator[int]:
        self._bar = tqdm(
            range(self.start, self.total + 1),
            initial=self.start,
            total=self.total + 1,
            desc=self.desc,
            disable=None,
        )
        try:
            yield from self._bar
        finally:
            self._bar.close()

    def postfix(self, **values: float) -> None:
        """Show ``values`` next to the progress bar."""
        if self._bar is not None:
            self._bar.set_postfix(values, refresh=False)

    def elapsed(self) -> float:
        """Training seconds so far, across resumes."""
        return self.seconds + time.perf_counter() - self._clock

    def checkpoint(self, step: int, *, force: bool = False) -> None:
        """Store the model's weights (CPU copy) at ``step`` when it is kept (or ``force``)."""
        if force or step in self.keep:
            self.checkpoints[step] = cpu_state(self.model)

    def append(self, row: dict[str, float]) -> None:
        """Add one log row; columns missing from it (or from earlier rows) are NaN."""
        rows = len(next(iter(self.log.values()))) if self.log else 0
        for key in row:
            self.log.setdefault(key, [math.nan] * rows)
        for key, values in self.log.items():
            values.append(row.get(key, math.nan))

    def save_partial(self, next_step: int) -> None:
        """Save the resumable state (at most every ``PARTIAL_SAVE_SECONDS``); a resumed loop
        starts at ``next_step``."""
        self._saver.maybe_save(
            lambda: {
                "step": next_step,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
                "generators": {n: g.get_state() for n, g in self.generators.items()},
                "checkpoints": self.checkpoints,
                "log": self.log,
                "seconds": self.elapsed(),
                "extra": self.extra,
            }
        )

    def payload(self) -> dict[str, Any]:
        """What the run cache stores: checkpoints, log and training seconds."""
        return {
            "checkpoints": dict(sorted(self.checkpoints.items())),
            "log": self.log,
            "seconds": self.elapsed(),
        }
