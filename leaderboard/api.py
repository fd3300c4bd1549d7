"""The leaderboard's two registries: methods (what finds features) and tasks (what scores them).

A **method** is a callable ``method(problem) -> output`` registered under a name:

* ``problem`` is a :class:`Problem`: a trained model, the testbed's probe inputs, the budget
  ``k`` and what the task asks for (``kind``/``over``/``rows``), plus optional context a
  method may use (per-example loss, hidden activations, hidden units, input-structure graphs).
  It never contains the ground truth.
* ``output`` is either **directions** — a float array ``(problem.rows, problem.k)`` of
  data-space directions (rows are inputs, or (input, channel) pairs for flattened kernels) —
  or a **partition** — integer labels ``(problem.rows,)`` with at most ``k`` distinct values
  (over inputs, or over hidden units). A partition of the rows of a directions task is scored
  through its cluster indicator vectors.
* A method that cannot handle a problem raises :class:`NotApplicable`; the result is shown as
  missing. Anything else it raises, a timeout, a wrong shape, NaN or Inf is recorded as a
  failure with its message.

Register a method with the decorator (in this package), from a plug-in file
(``ntkbench leaderboard --plugin my_method.py``) or from an installed package through the
``ntkbench.methods`` entry-point group (the entry point names a module that registers on import,
or a callable registered under the entry point's name)::

    from leaderboard import register_method

    @register_method("my_method", source="me et al. 2026")
    def my_method(problem):
        ...

A **task** (one per testbed setting and question) builds the problem for a seed, holds the
ground truth, and scores an output in [0, 1] next to its chance level.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from testbeds.sources import source_hash

KINDS = ("directions", "partition")
OVER = ("inputs", "flattened", "units")
ENTRY_POINT_GROUP = "ntkbench.methods"
DEFAULT_TIMEOUT = 600.0  # seconds per (method, task, seed) unless the method sets its own


class NotApplicable(Exception):  # noqa: N818 - a status, not an error
    """Raised by a method for a problem it does not handle (shown as missing, not failed)."""


@dataclass(frozen=True)
class Problem:
    """What a method sees for one (task, seed).

    Attributes:
        model: the trained network (float32, eval mode, CPU unless a device was chosen).
        inputs: probe inputs ``(N, ...)`` in the testbed's canonical order.
        k: the budget: number of directions, or the maximum number of clusters.
        kind: ``"directions"`` or ``"partition"`` — what the task scores.
        over: what the rows are: ``"inputs"`` (N rows), ``"flattened"`` (N·C rows, channel-major
            (input, channel) pairs: row c·N + x) or ``"units"`` (hidden units).
        rows: the number of rows an output must have.
        targets: training targets of the probe inputs (for a loss).
        loss: per-example loss ``loss(outputs (n, C), targets (n, ...)) -> (n,)``.
        term_loss: for flattened problems, the per-(input, channel) loss terms
            ``(outputs (n, C), targets) -> (n, C)``; None otherwise.
        activations: ``activations(model, inputs)`` hidden activations: ``(rows, H)`` in the
            row space of an inputs/flattened problem; ``(N, U)`` for a units problem, one
            column per unit in the order of ``units``. None if the testbed defines none.
        units: hidden units as :func:`metrics.entk.unit_kernels` specs (for ``over="units"``).
        graphs: input-structure graphs, name → Laplacian ``(N, N)`` (domain knowledge about the
            inputs, not about the trained network), or None.
        target: the name of the feature family the task asks about (e.g. ``"sum"``), for
            methods that use ``graphs``; None if the task does not name one.
        seed: the testbed seed; use :meth:`generator` for randomness.
        task: the task's name.
    """

    model: nn.Module
    inputs: Tensor
    k: int
    kind: str
    over: str
    rows: int
    targets: Tensor
    loss: Callable[[Tensor, Tensor], Tensor]
    term_loss: Callable[[Tensor, Tensor], Tensor] | None = None
    activations: Callable[[nn.Module, Tensor], Tensor] | None = None
    units: list | None = None
    graphs: dict[str, Tensor] | None = None
    target: str | None = None
    seed: int = 0
    task: str = ""

    def on(self, device: str | torch.device) -> Problem:
        """A copy with its own copy of the model, the model and the tensors on ``device``."""
        return dataclasses.replace(
            self,
            model=copy.deepcopy(self.model).to(device),
            inputs=self.inputs.to(device),
            targets=self.targets.to(device),
            graphs=None
            if self.graphs is None
            else {k: g.to(device) for k, g in self.graphs.items()},
        )

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got kind={self.kind!r}")
        if self.over not in OVER:
            raise ValueError(f"over must be one of {OVER}, got over={self.over!r}")
        if not 1 <= self.k <= self.rows:
            raise ValueError(f"k must be in 1..rows={self.rows}, got k={self.k}")

    def generator(self, salt: str = "") -> torch.Generator:
        """A torch generator seeded from (seed, task, salt): reproducible, distinct per task."""
        digest = hashlib.sha256(f"{self.seed}/{self.task}/{salt}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


@dataclass(frozen=True)
class Method:
    """A registered method: ``fn(problem) -> directions | labels``."""

    name: str
    fn: Callable[[Problem], Any]
    source: str  # the paper or code it follows
    description: str = ""
    timeout: float | None = None  # seconds; None = the runner's default
    origin: str = "builtin"  # "builtin", "plugin:<file>" or "entry-point:<name>"

    def code_hash(self) -> str:
        """:func:`testbeds.sources.source_hash` of the method: the module (or plug-in file) that
        defines it and every project module that imports, transitively. Editing the method or
        any helper it imports invalidates its cached scores."""
        return source_hash(self.fn)


@dataclass(frozen=True)
class Task:
    """A scoring task: ``setup(seed) -> (problem, truth)`` and
    ``score(output, truth, problem) -> (score in [0, 1], chance, extra)``.

    ``output`` is a float64 tensor ``(rows, j ≤ k)`` of directions for ``kind="directions"``
    (a partition is converted to indicators before scoring) or int64 labels ``(rows,)`` for
    ``kind="partition"``.
    """

    name: str  # "<testbed setting>.<question>", e.g. "modadd_mlp.sum_family"
    testbed: str
    preset: str
    kind: str
    over: str
    description: str
    config: Any  # the testbed config (hashed into records)
    setup: Callable[[int], tuple[Problem, Any]]
    score: Callable[[Tensor, Any, Problem], tuple[float, float, dict]]
    version: int = 1  # an input of the scoring other than its code (code is hashed)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got kind={self.kind!r}")
        if self.over not in OVER:
            raise ValueError(f"over must be one of {OVER}, got over={self.over!r}")

    def code_hash(self) -> str:
        """Hash of the task's version and :func:`testbeds.sources.source_hash` of the modules
        that define ``setup`` and ``score`` with their project imports (editing the task or a
        helper it imports invalidates its cached scores)."""
        code = source_hash(self.setup, self.score)
        return hashlib.sha256(f"{self.version}\n{code}".encode()).hexdigest()[:16]


METHODS: dict[str, Method] = {}
TASKS: dict[str, Task] = {}
_LOADING_ORIGIN = ["builtin"]


def register_method(
    name: str,
    *,
    source: str,
    description: str = "",
    timeout: float | None = None,
    replace: bool = False,
) -> Callable[[Callable], Callable]:
    """Decorator registering ``fn(problem)`` as method ``name`` (see the module docstring).

    ``source`` cites what the method follows; ``timeout`` (seconds) overrides the runner's
    per-method budget. Registering an existing name raises unless ``replace=True``.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"method name must be a Python identifier, got name={name!r}")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got timeout={timeout}")

    def decorate(fn: Callable) -> Callable:
        if not callable(fn):
            raise TypeError(f"method {name!r} must be callable, got {type(fn).__name__}")
        if name in METHODS and not replace and METHODS[name].fn is not fn:
            raise ValueError(
                f"method {name!r} is already registered (from {METHODS[name].origin}); "
                "pick another name or pass replace=True"
            )
        doc = description or (inspect.getdoc(fn) or "").split("\n\n")[0].replace("\n", " ")
        METHODS[name] = Method(name, fn, source, doc, timeout, _LOADING_ORIGIN[-1])
        return fn

    return decorate


def register_task(task: Task) -> Task:
    """Add a task to the registry (names are unique)."""
    if task.name in TASKS and TASKS[task.name] is not task:
        raise ValueError(f"task {task.name!r} is already registered")
    TASKS[task.name] = task
    return task


def load_plugin(path: str | Path) -> list[str]:
    """Import a plug-in file that registers methods; returns the names it added."""
    path = Path(path)
    if not path.is_file() or path.suffix != ".py":
        raise ValueError(f"plugin must be an existing .py file, got plugin={str(path)!r}")
    before = set(METHODS)
    module_name = "ntkbench_plugin_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    _LOADING_ORIGIN.append(f"plugin:{path}")
    try:
        spec.loader.exec_module(module)
    finally:
        _LOADING_ORIGIN.pop()
    return sorted(set(METHODS) - before)


def load_entry_points(group: str = ENTRY_POINT_GROUP) -> dict[str, str]:
    """Load every installed ``ntkbench.methods`` entry point.

    An entry point naming a module registers its methods on import; one naming a callable that
    is not yet registered is registered under the entry point's name. Returns entry point name
    → "" on success or the error message (a broken package never stops the others).
    """
    status: dict[str, str] = {}
    for ep in entry_points(group=group):
        _LOADING_ORIGIN.append(f"entry-point:{ep.name}")
        try:
            obj = ep.load()
            registered = {m.fn for m in METHODS.values()}
            if callable(obj) and not inspect.ismodule(obj) and obj not in registered:
                source = getattr(obj, "__source__", f"entry point {ep.value}")
                register_method(ep.name, source=source)(obj)
            status[ep.name] = ""
        except Exception as error:  # noqa: BLE001 - reported, never fatal
            status[ep.name] = f"{type(error).__name__}: {error}"
        finally:
            _LOADING_ORIGIN.pop()
    return status


def resolve(names: list[str] | None, registry: dict[str, Any], what: str) -> list[str]:
    """Validate names against a registry (None = all, in registry order)."""
    if names is None:
        return list(registry)
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; valid {what}: {sorted(registry)}")
    return list(dict.fromkeys(names))


def load_builtins() -> None:
    """Import the built-in methods and tasks (idempotent)."""
    importlib.import_module("leaderboard.methods")
    importlib.import_module("leaderboard.tasks")
