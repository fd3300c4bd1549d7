"""Testbeds: models, data, training and ground truth, each behind one contract.

>>> import testbeds
>>> testbeds.names()
('lm', 'modadd', 'tms')
>>> bed = testbeds.get("modadd")                      # a testbeds.contract.Testbed
>>> run = bed.train("lin2025_mlp", seed=0)           # cached after the first call
>>> probe = bed.probe(run)                           # inputs, targets, loss, readout …
>>> truth = bed.ground_truth(run)                    # one GroundTruth type for every testbed

The registry is lazy: a testbed package is imported the first time it is asked for. Built-in
testbeds are listed below; third-party packages add theirs through the ``ntkbench.testbeds``
entry-point group (value ``"package.module:testbed_object"``), and code can add one at run
time with :func:`register`.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from testbeds.contract import GroundTruth, Probe, Testbed, choose
from testbeds.loop import DEVICE_ENV, TrainLoop, resolve_device
from testbeds.runs import Run, cache_dir, config_hash

ENTRY_POINT_GROUP = "ntkbench.testbeds"
BUILTIN = {
    "lm": "testbeds.lm.spec:testbed",
    "modadd": "testbeds.modadd.spec:testbed",
    "tms": "testbeds.tms.spec:testbed",
}
_registered: dict[str, Testbed | str] = {}


def _sources() -> dict[str, Testbed | str]:
    found: dict[str, Testbed | str] = dict(BUILTIN)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry.name, entry.value)
    found.update(_registered)
    return found


def names() -> tuple[str, ...]:
    """Every testbed name: built-in, installed through entry points, and registered."""
    return tuple(sorted(_sources()))


def register(testbed: Testbed) -> Testbed:
    """Add (or replace) a testbed object at run time; returns it."""
    if not isinstance(testbed, Testbed):
        raise ValueError(f"testbed must be a testbeds.Testbed, got {type(testbed).__name__}")
    if not testbed.name or not isinstance(testbed.name, str):
        raise ValueError(f"a testbed needs a non-empty str name, got name={testbed.name!r}")
    _registered[testbed.name] = testbed
    return testbed


def get(name: str) -> Testbed:
    """The testbed called ``name``; an unknown name is a ValueError listing the known ones and
    the closest match."""
    sources = _sources()
    source = sources[choose(name, sources, "testbed")]
    if isinstance(source, Testbed):
        return source
    module, _, attribute = source.partition(":")
    testbed = getattr(importlib.import_module(module), attribute)
    if not isinstance(testbed, Testbed) or testbed.name != name:
        raise ValueError(f"{source!r} must be a testbeds.Testbed named {name!r}, got {testbed!r}")
    return testbed


def of(run: Run) -> Testbed:
    """The testbed a run belongs to."""
    return get(run.testbed)


__all__ = [
    "DEVICE_ENV",
    "GroundTruth",
    "Probe",
    "Run",
    "Testbed",
    "TrainLoop",
    "cache_dir",
    "config_hash",
    "get",
    "names",
    "of",
    "register",
    "resolve_device",
]
