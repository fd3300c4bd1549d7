"""Configuration and named presets of the Toy Models of Superposition testbed.

The model of Elhage et al. (2022): n features compressed into m < n hidden dimensions and read
back out, h = W x, y = ReLU(Wᵀ h + b), trained on the importance-weighted reconstruction
error Σ_i I_i (x_i − y_i)². Feature i of an input is 0 with probability S (the sparsity) and
U[0, 1] otherwise; importance I_i = decay^i.

Two data regimes:

* ``data="fresh"`` — a new batch every step (Elhage et al. 2022); one *instance* (an
  independent model) per entry of ``sparsity``, all trained in one loop;
* ``data="fixed"`` — a fixed dataset of ``n_points`` inputs drawn once from the seed, each row
  optionally scaled to unit L2 norm, trained full batch (Lin 2025).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import nn

from testbeds import contract
from testbeds.contract import choose
from testbeds.runs import default_checkpoints

DATA = ("fresh", "fixed")
OPTIMIZERS = ("adam", "adamw")


@dataclass(frozen=True)
class Config:
    """One TMS training setting."""

    n_features: int = 50  # n
    n_hidden: int = 10  # m
    sparsity: tuple[float, ...] = (0.9,)  # S per instance: P(feature is 0); one model each
    importance_decay: float = 0.8  # I_i = importance_decay ** i, i = 0 … n − 1
    data: str = "fixed"  # "fresh" batches every step or a "fixed" dataset
    n_points: int = 500  # size of the fixed dataset (data="fixed")
    normalize: bool = True  # scale each fixed-dataset row to unit L2 norm (all-zero rows stay 0)
    batch_size: int | None = None  # fresh: batch per step (required); fixed: None = full batch
    optimizer: str = "adam"  # "adam" or "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0  # AdamW's decoupled weight decay (ignored by "adam")
    steps: int = 5000  # optimizer steps (full-batch epochs for data="fixed")
    checkpoints: tuple[int, ...] | None = None  # steps to keep; None = default_checkpoints
    log_every: int = 10  # evaluate the loss and the represented-feature count this often

    def __post_init__(self) -> None:
        def fail(name: str, allowed: str) -> None:
            raise ValueError(f"{name} must be {allowed}, got {name}={getattr(self, name)!r}")

        contract.check_field_types(self, skip=("sparsity",))  # a number or a sequence, below
        for name in ("n_features", "n_hidden", "n_points", "steps", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                fail(name, "a positive int")
        sparsity = self.sparsity
        if isinstance(sparsity, int | float):
            sparsity = (sparsity,)
        try:
            sparsity = tuple(float(s) for s in sparsity)
        except (TypeError, ValueError):
            fail("sparsity", "a non-empty tuple of probabilities in [0, 1)")
        if not sparsity or not all(0.0 <= s < 1.0 for s in sparsity):
            fail("sparsity", "a non-empty tuple of probabilities in [0, 1)")
        object.__setattr__(self, "sparsity", sparsity)
        if not 0.0 < self.importance_decay <= 1.0:
            fail("importance_decay", "in (0, 1]")
        if self.data not in DATA:
            fail("data", f"one of {DATA}")
        if self.optimizer not in OPTIMIZERS:
            fail("optimizer", f"one of {OPTIMIZERS}")
        if not isinstance(self.normalize, bool):
            fail("normalize", "a bool")
        if self.batch_size is not None and (
            not isinstance(self.batch_size, int) or self.batch_size <= 0
        ):
            fail("batch_size", "None or a positive int")
        if self.data == "fresh" and self.batch_size is None:
            fail("batch_size", "a positive int when data='fresh'")
        if self.data == "fixed" and self.batch_size is not None and self.batch_size > self.n_points:
            fail("batch_size", f"None or at most n_points={self.n_points}")
        if not self.lr > 0:
            fail("lr", "> 0")
        if not self.weight_decay >= 0:
            fail("weight_decay", "≥ 0")
        if self.checkpoints is not None:
            steps = tuple(self.checkpoints)
            if not steps or any(
                not isinstance(s, int) or isinstance(s, bool) or not 0 <= s <= self.steps
                for s in steps
            ):
                fail("checkpoints", f"None or a non-empty tuple of ints in 0..steps={self.steps}")
            object.__setattr__(self, "checkpoints", tuple(sorted(set(steps))))

    @property
    def n_instances(self) -> int:
        return len(self.sparsity)

    @property
    def checkpoint_steps(self) -> tuple[int, ...]:
        return self.checkpoints if self.checkpoints is not None else default_checkpoints(self.steps)

    def replace(self, **changes) -> Config:
        return dataclasses.replace(self, **changes)

    def build_model(self) -> nn.Module:
        """An untrained model (``train`` initialises it from the seed)."""
        from testbeds.tms.models import TMSModel

        return TMSModel(self.n_features, self.n_hidden, self.n_instances)


def _elhage_sparsities(n_instances: int = 10) -> tuple[float, ...]:
    # the feature probabilities of Elhage et al.'s notebook, 20^-linspace(0, 1, 10)
    return tuple(round(1.0 - 20.0 ** (-i / (n_instances - 1)), 6) for i in range(n_instances))


PRESETS: dict[str, Config] = {
    # Elhage et al. 2022, "Toy Models of Superposition", the introductory experiment: five
    # features, two hidden dimensions, ten sparsity levels from dense (S = 0) to S = 0.95.
    "elhage2022": Config(
        n_features=5,
        n_hidden=2,
        sparsity=_elhage_sparsities(),
        importance_decay=0.9,
        data="fresh",
        batch_size=1024,
        optimizer="adamw",
        lr=1e-3,
        weight_decay=0.01,  # torch's AdamW default, which the notebook uses
        steps=10_000,
        log_every=100,
    ),
    # Lin 2025 (arXiv 2510.00468), TMS setting: n = 50, a fixed set of 500 unit-norm inputs,
    # I_i = 0.8^i, Adam lr 1e-3, 5000 full-batch epochs; three (m, S) pairs.
    "lin2025_tms_m10_s0.3": Config(n_hidden=10, sparsity=(0.3,)),
    "lin2025_tms_m10_s0.9": Config(n_hidden=10, sparsity=(0.9,)),
    "lin2025_tms_m40_s0.9": Config(n_hidden=40, sparsity=(0.9,)),
}


def preset(name: str, **overrides) -> Config:
    """The named preset, optionally with fields replaced (validated again)."""
    config = PRESETS[choose(name, PRESETS, "preset")]
    return config.replace(**overrides) if overrides else config


def resolve_config(config: Config | str) -> tuple[Config, str]:
    """(config, preset name) from a Config or a preset name."""
    return contract.resolve_config(config, PRESETS, Config, "tms")
