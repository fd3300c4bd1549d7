"""The testbed contract: what every testbed offers, in one shape, so that claims, leaderboard
tasks and the command lines never need to know which testbed they hold.

A testbed is one package with one :class:`Testbed` object (found through
:func:`testbeds.get`). It offers:

* ``name``, ``presets`` (name → frozen ``Config``) and :meth:`Testbed.preset`;
* :meth:`Testbed.train` — cached, resumable training through :class:`testbeds.loop.TrainLoop`,
  returning a :class:`~testbeds.runs.Run` that knows its preset;
* :meth:`Testbed.probe` — the inputs kernels and ground truth are evaluated on, as a
  :class:`Probe`: inputs, targets, per-example loss, readout and which rows are training rows;
* :meth:`Testbed.training_set` — the examples the run was trained on, as a :class:`Probe`;
* :meth:`Testbed.units` and :meth:`Testbed.activations` — the hidden units (for unit kernels,
  coalitions and clustering) and their activations;
* :meth:`Testbed.ground_truth` — the known answer, one :class:`GroundTruth` per testbed;
* ``hand_built`` — name → constructor of a network whose answer is known (planted positives).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import UnionType
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from testbeds.runs import Run

Loss = Callable[[Tensor, Tensor], Tensor]
UnitSpec = Mapping[str, tuple[int, int | list[int]]]


def choose(value: Any, options: Iterable[str], what: str) -> str:
    """``value`` if it is one of ``options``, else a ``ValueError`` naming ``what``, the
    allowed values and the closest match ("did you mean …")."""
    options = sorted(options)
    if isinstance(value, str) and value in options:
        return value
    close = difflib.get_close_matches(str(value), options, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"{what} must be one of {options}, got {what}={value!r}{hint}")


def preset_name(presets: Mapping[str, Any], config: Any) -> str:
    """The name of the preset equal to ``config``, else ``custom-<config hash>``."""
    from testbeds.runs import config_hash

    for name, candidate in presets.items():
        if candidate == config:
            return name
    return f"custom-{config_hash(config)}"


def resolve_config(
    config: Any, presets: Mapping[str, Any], types: type | tuple[type, ...], testbed: str
) -> tuple[Any, str]:
    """(config, preset name) from a config object or a preset name; anything else is a
    ``ValueError`` naming the allowed types and presets."""
    if isinstance(config, str):
        return presets[choose(config, presets, "preset")], config
    types = types if isinstance(types, tuple) else (types,)
    if not isinstance(config, types):
        names = " or ".join(f"testbeds.{testbed}.{t.__name__}" for t in types)
        raise ValueError(
            f"config must be a {names} or a preset name ({sorted(presets)}), "
            f"got {type(config).__name__}"
        )
    return config, preset_name(presets, config)


def _describe(hint: Any) -> str:
    if hint is type(None):
        return "None"
    if hint is bool:
        return "True or False"
    if hint is int:
        return "an int"
    if hint is float:
        return "a finite number"
    if hint is str:
        return "a string"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (UnionType, typing.Union):
        return " or ".join(_describe(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a tuple of {_plural(args[0])}"
        return f"a tuple of {len(args)} ({', '.join(_describe(a) for a in args)})"
    return f"a {getattr(hint, '__name__', hint)}"


def _plural(hint: Any) -> str:
    return {int: "ints", float: "finite numbers", str: "strings", bool: "bools"}.get(
        hint, _describe(hint)
    )


def _matches(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        )
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (UnionType, typing.Union):
        return any(_matches(value, a) for a in args)
    if origin is tuple:
        if not isinstance(value, tuple | list):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(
            _matches(v, a) for v, a in zip(value, args, strict=True)
        )
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def check_field_types(config: Any, skip: Iterable[str] = ()) -> None:
    """Raise a ``ValueError`` naming the first field of the dataclass ``config`` whose value does
    not have its annotated type: ints are ints (not bools), numbers are finite ints or floats
    (no NaN, no infinity, no strings), tuples have their element types. Testbed configs call it
    first in ``__post_init__``; ``skip`` names fields they check themselves."""
    hints = typing.get_type_hints(type(config))
    skipped = set(skip)
    for item in dataclasses.fields(config):
        if item.name in skipped:
            continue
        value = getattr(config, item.name)
        hint = hints[item.name]
        if not _matches(value, hint):
            raise ValueError(
                f"{item.name} must be {_describe(hint)}, got {item.name}={value!r} "
                f"({type(value).__name__})"
            )


def identity_readout(model: nn.Module) -> nn.Module:
    return model


class PerExampleLoss(nn.Module):
    """A model and its loss as one network: row indices (n,) → per-example loss (n, 1).

    The eNTK of this network (``"sum"`` reduction) over ``torch.arange(N)`` is the loss-gradient
    Gram ⟨∇θ ℓ(x_i), ∇θ ℓ(x_j)⟩; the engine computes it with its structured per-layer products
    instead of materialising N × P per-example gradients.
    """

    def __init__(self, model: nn.Module, probe: Probe):
        super().__init__()
        self.model, self.probe = model, probe

    def forward(self, rows: Tensor) -> Tensor:
        inputs = self.probe.loss_inputs[rows]
        return self.probe.loss(self.model(inputs), self.probe.targets[rows])[:, None]


@dataclass(frozen=True)
class Probe:
    """Examples of a testbed, with everything needed to read a model on them.

    Attributes:
        inputs: (N, …) the model inputs that kernels and ground truth are evaluated on.
        targets: (N, …) what the loss compares the model's outputs against.
        loss: ``loss(model(loss_inputs), targets) -> (N,)`` per-example training loss; its
            mean is the training loss. ``vmap``-safe.
        readout: ``readout(model)`` is the network whose outputs kernels differentiate (the
            model itself, or e.g. the language model's next-token log-probabilities).
        loss_inputs: the model inputs of the loss (default: ``inputs``; the language model's
            loss reads every prefix of a prompt).
        train_rows: indices of the rows that are training examples of the run (all of them for
            a training set; the training split of a probe over all inputs).
        names: optional labels of the rows' latent factors (e.g. ``{"topic": …}``).
    """

    inputs: Tensor
    targets: Tensor
    loss: Loss
    readout: Callable[[nn.Module], nn.Module] = identity_readout
    loss_inputs: Tensor | None = None
    train_rows: Tensor | None = None
    names: Mapping[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.loss_inputs is None:
            object.__setattr__(self, "loss_inputs", self.inputs)
        if len(self.loss_inputs) != len(self.targets):
            raise ValueError(
                f"loss_inputs and targets must have one row per example, got "
                f"{len(self.loss_inputs)} and {len(self.targets)}"
            )

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def rows(self) -> Tensor:
        """``arange(N)``: the input of :meth:`loss_model`."""
        return torch.arange(len(self.targets), device=self.targets.device)

    def loss_model(self, model: nn.Module) -> PerExampleLoss:
        """``model`` and the loss as one network over row indices (:class:`PerExampleLoss`)."""
        return PerExampleLoss(model, self)

    def per_example_loss(self, model: nn.Module) -> Tensor:
        """The per-example loss of every row, (N,)."""
        return self.loss(model(self.loss_inputs), self.targets)

    def subset(self, rows: Tensor) -> Probe:
        """The probe restricted to ``rows`` (training rows are not carried over)."""
        return Probe(
            inputs=self.inputs[rows],
            targets=self.targets[rows],
            loss=self.loss,
            readout=self.readout,
            loss_inputs=self.loss_inputs[rows],
            names={k: v[rows] for k, v in self.names.items()},
        )

    def to(self, device: str | torch.device) -> Probe:
        """The same probe with every tensor on ``device``."""

        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        return Probe(
            inputs=self.inputs.to(device),
            targets=self.targets.to(device),
            loss=self.loss,
            readout=self.readout,
            loss_inputs=move(self.loss_inputs),
            train_rows=move(self.train_rows),
            names={k: v.to(device) for k, v in self.names.items()},
        )


@dataclass(frozen=True)
class GroundTruth:
    """The known answer of a testbed at one model, in one form for every testbed.

    Attributes:
        input_labels: name → (N,) integer labels of the probe inputs (e.g. ``"sum"``,
            ``"topic"``): partitions a method can be scored against.
        input_directions: name → (N, k) data-space directions the network is known to use
            (e.g. the Fourier features of the key frequencies, the feature indicators).
        unit_labels: name → (U,) integer labels of the hidden units (e.g. each neuron's key
            frequency); ``-1`` marks a unit that carries no label.
        values: other named facts (key frequencies, represented features, accuracies …).
    """

    input_labels: Mapping[str, Tensor] = field(default_factory=dict)
    input_directions: Mapping[str, Tensor] = field(default_factory=dict)
    unit_labels: Mapping[str, Tensor] = field(default_factory=dict)
    values: Mapping[str, Any] = field(default_factory=dict)


class Testbed(ABC):
    """The contract every testbed implements (module docstring). Subclasses set ``name``,
    ``summary``, ``config_type``, ``presets`` and ``hand_built`` and implement the methods."""

    name: str = ""
    summary: str = ""
    config_type: type = object
    presets: Mapping[str, Any] = {}
    hand_built: Mapping[str, Callable[..., nn.Module]] = {}

    def __repr__(self) -> str:
        return f"<testbed {self.name!r}: {len(self.presets)} presets>"

    def preset(self, name: str, **overrides: Any) -> Any:
        """The named preset, optionally with fields replaced (validated again)."""
        config = self.presets[choose(name, self.presets, "preset")]
        return config.replace(**overrides) if overrides else config

    def preset_name(self, config: Any) -> str:
        """The name of the preset equal to ``config``, else ``custom-<config hash>``."""
        return preset_name(self.presets, config)

    def resolve(self, config: Any) -> tuple[Any, str]:
        """(config, preset name) from a config object or a preset name."""
        return resolve_config(config, self.presets, self.config_type, self.name)

    # --- what each testbed implements ------------------------------------------------
    @abstractmethod
    def train(self, config: Any, seed: int = 0, **options: Any) -> Run:
        """Train ``config`` (a Config or a preset name) from ``seed``, or load it from the run
        cache. Options: ``device`` (default ``$NTKBENCH_DEVICE``), ``cache``, ``force``."""

    @abstractmethod
    def probe(self, run: Run) -> Probe:
        """The probe set of a run: every input kernels and ground truth are read on."""

    @abstractmethod
    def training_set(self, run: Run) -> Probe:
        """The examples the run was trained on, with their training targets and loss."""

    @abstractmethod
    def units(self, model: nn.Module) -> list[UnitSpec]:
        """The hidden units (parameter slices, :func:`metrics.entk.hidden_units` format) used
        for unit kernels, coalitions and clustering."""

    @abstractmethod
    def activations(self, model: nn.Module, inputs: Tensor) -> Tensor:
        """The hidden representation (N, d) a method reads on model inputs: the units'
        activations where units are neurons of one layer (then in the order of :meth:`units`),
        else the testbed's documented representation (the language model's last residual)."""

    @abstractmethod
    def ground_truth(self, run: Run, model: nn.Module | None = None) -> GroundTruth:
        """The known answer at ``model`` (default: the run's final model)."""
