"""Configurations and presets of the small-language-model testbed.

Four stages, each a frozen dataclass trained by its own function into a cached ``Run``:

* :class:`Config` — pretraining a :class:`~testbeds.lm.model.TinyLM` by next-token
  prediction on fresh samples of the synthetic :class:`~testbeds.lm.language.Language`;
* :class:`RLConfig` — KL-regularised policy-gradient fine-tuning of the pretrained model
  against itself frozen as the reference, reward = a trait defined by the ground truth;
* :class:`SFTConfig` — supervised fine-tuning on the reference's own best-of-G samples, stopped
  when KL(π‖π_ref) on the probe prompts matches the RL run's final KL (control for H2);
* :class:`ContinueConfig` — continued pretraining for the RL run's number of steps (drift with
  no reward; control for H2).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from torch import nn

from testbeds import contract
from testbeds.contract import choose
from testbeds.lm.language import Language
from testbeds.runs import default_checkpoints

REWARDS = ("positive_style", "negative_style")


def _fail(obj, name: str, allowed: str) -> None:
    raise ValueError(f"{name} must be {allowed}, got {name}={getattr(obj, name)!r}")


def _positive_ints(obj, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            _fail(obj, name, "a positive int")


def _checkpoints(obj, steps: int) -> None:
    if obj.checkpoints is None:
        return
    values = tuple(obj.checkpoints)
    if not values or any(
        not isinstance(s, int) or isinstance(s, bool) or not 0 <= s <= steps for s in values
    ):
        _fail(obj, "checkpoints", f"None or a non-empty tuple of ints in 0..{steps}")
    object.__setattr__(obj, "checkpoints", tuple(sorted(set(values))))


@dataclass(frozen=True)
class Config:
    """Pretraining: a TinyLM on fresh batches of the language, AdamW with warm-up and cosine
    decay."""

    language: Language = field(default_factory=Language)
    context: int = 24  # sequence length of pretraining = the model's context
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    d_mlp: int = 256
    lr: float = 3e-3
    min_lr_fraction: float = 0.1  # cosine decay from lr to lr · this at the last step
    warmup_steps: int = 100
    weight_decay: float = 0.01
    batch_size: int = 64  # sequences per step
    steps: int = 1500
    checkpoints: tuple[int, ...] | None = None  # steps to keep; None = default_checkpoints
    log_every: int = 100
    eval_sequences: int = 2048  # held-out sequences for the loss and its gap to the optimum

    def __post_init__(self) -> None:
        if not isinstance(self.language, Language):
            _fail(self, "language", "a testbeds.lm.Language")
        contract.check_field_types(self)
        _positive_ints(
            self,
            (
                "context",
                "d_model",
                "n_heads",
                "n_layers",
                "d_mlp",
                "batch_size",
                "steps",
                "log_every",
                "eval_sequences",
            ),
        )
        if self.context < 2:
            _fail(self, "context", "≥ 2")
        if self.d_model % self.n_heads:
            _fail(self, "n_heads", f"a divisor of d_model={self.d_model}")
        if not self.lr > 0:
            _fail(self, "lr", "> 0")
        if not 0 <= self.min_lr_fraction <= 1:
            _fail(self, "min_lr_fraction", "in [0, 1]")
        if not isinstance(self.warmup_steps, int) or not 0 <= self.warmup_steps <= self.steps:
            _fail(self, "warmup_steps", f"an int in 0..steps={self.steps}")
        if not self.weight_decay >= 0:
            _fail(self, "weight_decay", "≥ 0")
        _checkpoints(self, self.steps)

    @property
    def vocab_size(self) -> int:
        return self.language.vocab_size

    @property
    def checkpoint_steps(self) -> tuple[int, ...]:
        return self.checkpoints if self.checkpoints is not None else default_checkpoints(self.steps)

    def replace(self, **changes) -> Config:
        return dataclasses.replace(self, **changes)

    def build_model(self) -> nn.Module:
        from testbeds.lm.model import TinyLM

        return TinyLM(
            self.vocab_size, self.context, self.d_model, self.n_heads, self.n_layers, self.d_mlp
        )


@dataclass(frozen=True)
class RLConfig:
    """KL-regularised policy gradient from the pretrained ``base`` model.

    Each step samples ``prompts_per_step`` prompts (the first ``prompt_len`` tokens of fresh
    sequences) and ``group_size`` continuations of ``gen_len`` tokens per prompt from π, and
    follows the gradient of E[r] − β·KL(π‖π_ref) (see :func:`testbeds.lm.rl.policy_gradient_loss`).
    """

    base: Config = field(default_factory=Config)
    reward: str = "positive_style"  # fraction of generated tokens in that style class
    beta: float = 0.1  # KL coefficient β
    steps: int = 300
    prompts_per_step: int = 16
    group_size: int = 8  # continuations per prompt; the baseline is the group's leave-one-out mean
    prompt_len: int = 8
    gen_len: int = 8
    lr: float = 3e-4  # Adam
    checkpoints: tuple[int, ...] | None = None
    log_every: int = 10  # probe-prompt KL every this many steps (training stats every step)
    probe_samples: int = 4  # continuations per probe prompt for the probe KL
    # replicates of one pretrained seed: r > 0 samples other prompts and continuations (its SFT
    # control, an SFTConfig holding this RLConfig, samples its own too); 0 = the original runs
    replicate: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.base, Config):
            _fail(self, "base", "a testbeds.lm.Config")
        contract.check_field_types(self)
        if self.reward not in REWARDS:
            _fail(self, "reward", f"one of {REWARDS}")
        _positive_ints(
            self,
            ("steps", "prompts_per_step", "prompt_len", "gen_len", "log_every", "probe_samples"),
        )
        if self.replicate < 0:
            _fail(self, "replicate", "a non-negative int")
        if not isinstance(self.group_size, int) or self.group_size < 2:
            _fail(self, "group_size", "an int ≥ 2 (the baseline leaves one sample out)")
        if self.prompt_len + self.gen_len > self.base.context:
            _fail(
                self, "gen_len", f"≤ context − prompt_len = {self.base.context - self.prompt_len}"
            )
        if not self.beta >= 0:
            _fail(self, "beta", "≥ 0")
        if not self.lr > 0:
            _fail(self, "lr", "> 0")
        _checkpoints(self, self.steps)

    @property
    def checkpoint_steps(self) -> tuple[int, ...]:
        if self.checkpoints is not None:
            return self.checkpoints
        return default_checkpoints(self.steps, n_log=0, n_linear=10)

    def replace(self, **changes) -> RLConfig:
        return dataclasses.replace(self, **changes)

    def build_model(self) -> nn.Module:
        return self.base.build_model()


@dataclass(frozen=True)
class SFTConfig:
    """Reward-weighted supervised fine-tuning, stopped at the KL of the ``rl`` run (same seed).

    Each step samples prompts and ``candidates`` continuations per prompt from the frozen
    reference and takes an Adam step on their negative log-likelihood weighted, within each
    prompt, by softmax(r / τ) with τ = ``temperature_ratio`` · β of the RL run. As the number
    of candidates grows the fixed point is π_ref · exp(r/τ) / Z, which lies beyond the RL
    optimum π_ref · exp(r/β) / Z for τ < β, so the KL on the way there crosses the RL run's.
    Every ``check_every`` steps the probe KL is measured; training stops at the first check
    whose KL is ≥ the RL run's final probe KL, and of that check and the one before it the one
    closer to the target is kept (``matched`` in the log says whether it lies within
    ±``tolerance``)."""

    rl: RLConfig = field(default_factory=RLConfig)
    candidates: int = 32
    temperature_ratio: float = 0.5
    lr: float = 1e-4
    max_steps: int = 1000
    check_every: int = 2
    tolerance: float = 0.1

    def __post_init__(self) -> None:
        if not isinstance(self.rl, RLConfig):
            _fail(self, "rl", "a testbeds.lm.RLConfig")
        contract.check_field_types(self)
        _positive_ints(self, ("max_steps", "check_every"))
        if not isinstance(self.candidates, int) or self.candidates < 2:
            _fail(self, "candidates", "an int ≥ 2")
        if not self.temperature_ratio > 0:
            _fail(self, "temperature_ratio", "> 0")
        if not self.lr > 0:
            _fail(self, "lr", "> 0")
        if not 0 < self.tolerance < 1:
            _fail(self, "tolerance", "in (0, 1)")

    def replace(self, **changes) -> SFTConfig:
        return dataclasses.replace(self, **changes)

    def build_model(self) -> nn.Module:
        return self.rl.base.build_model()


@dataclass(frozen=True)
class ContinueConfig:
    """Continued pretraining from the RL run's starting point for the RL run's number of
    steps, with its optimizer (Adam, same learning rate) on fresh pretraining batches."""

    rl: RLConfig = field(default_factory=RLConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.rl, RLConfig):
            _fail(self, "rl", "a testbeds.lm.RLConfig")

    def build_model(self) -> nn.Module:
        return self.rl.base.build_model()


PRESETS: dict[str, Config | RLConfig | SFTConfig | ContinueConfig] = {
    "lm_pretrain": Config(),
    "lm_rl": RLConfig(),
    "lm_sft": SFTConfig(),
    "lm_continue": ContinueConfig(),
}


def preset(name: str, **overrides):
    """The named preset (a Config, RLConfig, SFTConfig or ContinueConfig), optionally with
    fields replaced (validated again)."""
    config = PRESETS[choose(name, PRESETS, "preset")]
    return dataclasses.replace(config, **overrides) if overrides else config


def resolve_config(config, types: type | tuple[type, ...]) -> tuple:
    """(config, preset name) from a config of ``types`` or a preset name of one."""
    config, name = contract.resolve_config(config, PRESETS, types, "lm")
    types = types if isinstance(types, tuple) else (types,)
    if not isinstance(config, types):
        wanted = " or ".join(t.__name__ for t in types)
        raise ValueError(
            f"preset {name!r} is a {type(config).__name__}; this stage needs a {wanted}"
        )
    return config, name
