"""Configuration and named presets of the modular-addition testbed.

All p² pairs (a, b) with label (a + b) mod p; a seeded train/test split. Two architectures:
the one-hidden-layer quadratic MLP of Gromov (2023) and the one-layer transformer of
Nanda et al. (2023), the latter also in the variant of Lin (2025)'s code. Presets are named
after the paper whose setting they reproduce.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import nn

from testbeds import contract
from testbeds.contract import choose
from testbeds.modadd.models import INITS  # the transformer's initial scales
from testbeds.runs import default_checkpoints

ARCHS = ("mlp", "transformer")
ACTIVATIONS = ("quadratic", "relu")
LOSSES = ("mse", "cross_entropy")


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


@dataclass(frozen=True)
class Config:
    """One modular-addition training setting. Fields not used by ``arch`` are ignored."""

    arch: str = "mlp"  # "mlp" (Gromov 2023) or "transformer" (Nanda et al. 2023)
    p: int = 29  # modulus; odd prime so that the Fourier ground truth is defined
    train_fraction: float = 0.7  # fraction of the p² pairs used for training
    # fraction ξ of training labels replaced by a uniformly random wrong label (Doshi et al. 2023)
    label_noise: float = 0.0
    # --- quadratic MLP: concat(one_hot(a), one_hot(b)) -> Linear(2p, width)/sqrt(2p) -> act
    #     -> Linear(width, p)/width; all weights N(0, 1), no biases
    width: int = 512  # hidden neurons n
    activation: str = "quadratic"  # "quadratic" (x²) or "relu"
    loss: str = "mse"  # "mse" on one-hot targets or "cross_entropy"
    # --- one-layer transformer over tokens (a, b, =); no LayerNorm; logits read at "="
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    mlp_bias: bool = True  # biases in the MLP's two layers (Nanda et al.); Lin 2025's code: none
    # W_U also has a row for the "=" token, p + 1 rows (Lin 2025's code); the network's output,
    # and so every loss, accuracy and readout, is its first p logits either way
    unembed_eq: bool = False
    # initial scales: "nanda" = every weight N(0, 1/d_model), W_U N(0, 1/rows of W_U);
    # "lin2025" = the same but the MLP's input weights N(0, 1/d_mlp)
    init: str = "nanda"
    # --- optimisation: AdamW
    lr: float = 0.05
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int | None = None  # None = full batch
    warmup_steps: int = 0  # linear learning-rate warm-up over this many optimizer steps
    epochs: int = 500
    checkpoints: tuple[int, ...] | None = None  # epochs to keep; None = default_checkpoints
    log_every: int = 1  # evaluate train/test loss and accuracy every this many epochs

    def __post_init__(self) -> None:
        def fail(name: str, allowed: str) -> None:
            raise ValueError(f"{name} must be {allowed}, got {name}={getattr(self, name)!r}")

        contract.check_field_types(self)
        if self.arch not in ARCHS:
            fail("arch", f"one of {ARCHS}")
        if not isinstance(self.p, int) or self.p < 3 or not is_prime(self.p):
            fail("p", "an odd prime ≥ 3 (the Fourier ground truth needs it)")
        if not 0.0 < self.train_fraction < 1.0:
            fail("train_fraction", "in the open interval (0, 1)")
        if not 1 <= self.n_train <= self.n_pairs - 1:
            fail(
                "train_fraction",
                f"such that the training and test sets are both non-empty: round(train_fraction"
                f" · p²) = {self.n_train} of p² = {self.n_pairs} pairs",
            )
        if not 0.0 <= self.label_noise < 1.0:
            fail("label_noise", "in [0, 1)")
        for name in ("width", "d_model", "n_heads", "d_mlp", "epochs", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                fail(name, "a positive int")
        if self.d_model % self.n_heads:
            fail("n_heads", f"a divisor of d_model={self.d_model}")
        if self.activation not in ACTIVATIONS:
            fail("activation", f"one of {ACTIVATIONS}")
        if self.loss not in LOSSES:
            fail("loss", f"one of {LOSSES}")
        for name in ("mlp_bias", "unembed_eq"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "True or False")
        if self.init not in INITS:
            fail("init", f"one of {INITS}")
        if self.arch == "transformer" and self.loss != "cross_entropy":
            fail("loss", "'cross_entropy' for arch='transformer'")
        if not self.lr > 0:
            fail("lr", "> 0")
        if not self.weight_decay >= 0:
            fail("weight_decay", "≥ 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            fail("betas", "a pair in [0, 1)")
        if self.batch_size is not None and (
            not isinstance(self.batch_size, int) or self.batch_size <= 0
        ):
            fail("batch_size", "None (full batch) or a positive int")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            fail("warmup_steps", "a non-negative int")
        if self.checkpoints is not None:
            steps = tuple(self.checkpoints)
            if not steps or any(not isinstance(s, int) or not 0 <= s <= self.epochs for s in steps):
                fail("checkpoints", f"None or a non-empty tuple of ints in 0..epochs={self.epochs}")
            object.__setattr__(self, "checkpoints", tuple(sorted(set(steps))))
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))

    @property
    def n_pairs(self) -> int:
        return self.p * self.p

    @property
    def n_train(self) -> int:
        return round(self.train_fraction * self.n_pairs)

    @property
    def n_corrupted(self) -> int:
        """Training examples whose label is corrupted: round(label_noise · n_train)."""
        return round(self.label_noise * self.n_train)

    @property
    def checkpoint_epochs(self) -> tuple[int, ...]:
        return (
            self.checkpoints if self.checkpoints is not None else default_checkpoints(self.epochs)
        )

    def replace(self, **changes) -> Config:
        return dataclasses.replace(self, **changes)

    def build_model(self) -> nn.Module:
        """An untrained model for this config (weights from torch's global RNG; ``train``
        initialises them from the seed)."""
        from testbeds.modadd.models import ModAddMLP, ModAddTransformer

        if self.arch == "mlp":
            return ModAddMLP(self.p, self.width, self.activation)
        return ModAddTransformer(
            self.p,
            self.d_model,
            self.n_heads,
            self.d_mlp,
            mlp_bias=self.mlp_bias,
            unembed_eq=self.unembed_eq,
            init=self.init,
        )


PRESETS: dict[str, Config] = {
    # Gromov 2023 quadratic MLP in the setting of Lin 2025 (arXiv 2510.00468), Table 1.
    "lin2025_mlp": Config(
        arch="mlp",
        p=29,
        width=512,
        train_fraction=0.7,
        lr=0.05,
        weight_decay=0.01,
        betas=(0.9, 0.999),
        epochs=500,
    ),
    # The one-layer transformer of Lin 2025 v3, Table 2, as in the paper's code: no MLP biases,
    # p + 1 unembedding rows (the loss and accuracy read the first p logits), MLP input weights
    # N(0, 1/d_mlp) and W_U N(0, 1/(p + 1)); the other weights N(0, 1/d_model).
    "lin2025_transformer": Config(
        arch="transformer",
        p=29,
        d_model=64,
        n_heads=4,
        d_mlp=256,
        mlp_bias=False,
        unembed_eq=True,
        init="lin2025",
        loss="cross_entropy",
        train_fraction=0.5,
        lr=3e-4,
        weight_decay=1.0,
        betas=(0.9, 0.999),
        batch_size=64,
        epochs=4000,
        log_every=10,
    ),
    # Nanda et al. 2023's transformer (MLP biases, p unembedding rows, their initial scales)
    # trained in the setting of Lin 2025 v3, Table 2: every other field as lin2025_transformer.
    "nanda2023_p29": Config(
        arch="transformer",
        p=29,
        d_model=64,
        n_heads=4,
        d_mlp=256,
        loss="cross_entropy",
        train_fraction=0.5,
        lr=3e-4,
        weight_decay=1.0,
        betas=(0.9, 0.999),
        batch_size=64,
        epochs=4000,
        log_every=10,
    ),
    # Doshi et al. 2023, "To grok or not to grok": the quadratic MLP with ξ = 10% of the training
    # labels corrupted, in the coexistence phase of their phase diagram — the network fits every
    # corrupted label and still generalises (test accuracy ≥ 0.96 at epoch 600 on seeds 0-2).
    # Cross-entropy and a 90% train split make the rule form before the corrupted labels are all
    # memorised; checkpoints every 5 epochs locate the first one that fits every label (H3).
    "doshi2023_mlp": Config(
        arch="mlp",
        p=29,
        width=512,
        loss="cross_entropy",
        train_fraction=0.9,
        label_noise=0.1,
        lr=0.05,
        weight_decay=0.1,
        betas=(0.9, 0.999),
        epochs=600,
        checkpoints=tuple(range(0, 601, 5)),
    ),
    # Nanda et al. 2023, "Progress measures for grokking via mechanistic interpretability":
    # full batch, 10-step warm-up, 40k epochs.
    "nanda2023": Config(
        arch="transformer",
        p=113,
        d_model=128,
        n_heads=4,
        d_mlp=512,
        loss="cross_entropy",
        train_fraction=0.3,
        lr=1e-3,
        weight_decay=1.0,
        betas=(0.9, 0.98),
        warmup_steps=10,
        epochs=40000,
        log_every=100,
    ),
}


def preset(name: str, **overrides) -> Config:
    """The named preset, optionally with fields replaced (validated again)."""
    config = PRESETS[choose(name, PRESETS, "preset")]
    return config.replace(**overrides) if overrides else config


def resolve_config(config: Config | str) -> tuple[Config, str]:
    """(config, preset name) from a Config or a preset name."""
    return contract.resolve_config(config, PRESETS, Config, "modadd")
