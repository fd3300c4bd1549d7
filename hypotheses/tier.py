"""Tiers of a claims run: ``default`` (the registered claims), ``quick`` (a smoke run) and
``large`` (p = 113, a GPU).

The tier is ``$NTKBENCH_TIER`` (default ``default``); ``ntkbench run --tier`` and
``make run TIER=…`` set it. It is read when a claim module is imported.

The quick tier checks that every claim computes end to end, in minutes, and never says
whether a claim holds:

* every seed tuple of a claim module, ``seeds(3, 4, 5)``, becomes its first seed (replicate
  indices too: H2′ runs one RL and one SFT replicate);
* every preset becomes its smoke-sized variant, :func:`smoke`, which claims read through
  :func:`preset`: modular addition at p = 13 with a 128-neuron MLP and a quarter of the
  transformer's epochs; the language model at half its width with a tenth of the pretraining,
  RL and continued-pretraining steps and 20 SFT steps of 8 candidates; toy models of
  superposition on 100 points for 1000 steps; every run keeps 10 checkpoints;
* every record it writes has role ``"smoke"`` (never a verdict; its registered role is kept in
  ``extra["registered_role"]``), and records go to ``results/quick/`` unless
  ``$NTKBENCH_RESULTS`` says otherwise.

The smoke sizes are not a registered design: a quick run's values say that the code runs, not
what the network learned.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

TIER_ENV = "NTKBENCH_TIER"
TIERS = ("default", "quick", "large")
QUICK_RESULTS = "results/quick"  # where a quick run's records go unless NTKBENCH_RESULTS is set
SMOKE_NOTE = "quick tier: smoke-sized run on one seed, not a verdict"

# smoke sizes (see the module docstring)
MODADD_P = 13
MODADD_WIDTH = 128
TRANSFORMER_EPOCH_FRACTION = 4  # a quarter of the epochs
LM_STEP_FRACTION = 10  # a tenth of the pretraining, RL and continued-pretraining steps
LM_D_MODEL, LM_D_MLP = 32, 128
SFT_STEPS, SFT_CANDIDATES = 20, 8
TMS_POINTS, TMS_STEPS = 100, 1000
# checkpoints of every smoke run: initialisation, 5 log-spaced and 6 evenly spaced steps
CHECKPOINTS_LOG, CHECKPOINTS_LINEAR = 5, 5


def current() -> str:
    """The tier of this process: ``$NTKBENCH_TIER``, else ``"default"``; an unknown name is a
    ``ValueError`` naming the allowed ones."""
    value = os.environ.get(TIER_ENV, "").strip() or "default"
    if value not in TIERS:
        raise ValueError(f"{TIER_ENV} must be one of {list(TIERS)}, got {TIER_ENV}={value!r}")
    return value


@contextmanager
def using(name: str) -> Iterator[None]:
    """``$NTKBENCH_TIER`` set to ``name`` inside the block (restored after it)."""
    if name not in TIERS:
        raise ValueError(f"tier must be one of {list(TIERS)}, got tier={name!r}")
    before = os.environ.get(TIER_ENV)
    os.environ[TIER_ENV] = name
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(TIER_ENV, None)
        else:
            os.environ[TIER_ENV] = before


def quick() -> bool:
    return current() == "quick"


def seeds(*registered: int) -> tuple[int, ...]:
    """The registered seeds, or under the quick tier the first of them."""
    if not registered:
        raise ValueError("seeds needs at least one seed")
    return registered[:1] if quick() else tuple(registered)


def _bed(testbed: Any):
    """The :class:`testbeds.contract.Testbed` of a name, a testbed package or the object."""
    import types

    import testbeds

    if isinstance(testbed, types.ModuleType):
        testbed = testbed.__name__.rsplit(".", 1)[-1]
    return testbeds.get(testbed) if isinstance(testbed, str) else testbed


def preset(testbed: Any, name: str, **overrides: Any) -> Any:
    """``testbed``'s preset ``name`` (a testbed name or object), under the quick tier its
    :func:`smoke` variant, with ``overrides`` replaced last."""
    bed = _bed(testbed)
    config = bed.preset(name)
    if not quick():
        return dataclasses.replace(config, **overrides) if overrides else config
    config = smoke(config)
    for field in ("epochs", "steps"):  # a new length gets the smoke checkpoints of its own
        if field in overrides and "checkpoints" not in overrides and hasattr(config, "checkpoints"):
            overrides = {**overrides, "checkpoints": _checkpoints(overrides[field])}
    return dataclasses.replace(config, **overrides) if overrides else config


def _checkpoints(steps: int) -> tuple[int, ...]:
    from testbeds.runs import default_checkpoints

    return default_checkpoints(steps, CHECKPOINTS_LOG, CHECKPOINTS_LINEAR)


def _schedule(config: Any, field: str, steps: int) -> dict[str, Any]:
    """``field`` set to ``steps`` (at least 10) with the smoke checkpoints."""
    steps = max(10, steps)
    return {field: steps, "checkpoints": _checkpoints(steps)}


def smoke(config: Any) -> Any:
    """The smoke-sized variant of a testbed config (module docstring); any other object is a
    ``TypeError``."""
    from testbeds import lm, modadd, tms

    if isinstance(config, modadd.Config):
        changes: dict[str, Any] = {"p": MODADD_P}
        if config.arch == "mlp":
            changes["width"] = min(config.width, MODADD_WIDTH)
            changes.update(_schedule(config, "epochs", config.epochs))
        else:
            changes.update(_schedule(config, "epochs", config.epochs // TRANSFORMER_EPOCH_FRACTION))
        return config.replace(**changes)
    if isinstance(config, lm.Config):
        changes = _schedule(config, "steps", config.steps // LM_STEP_FRACTION)
        changes.update(
            d_model=min(config.d_model, LM_D_MODEL),
            d_mlp=min(config.d_mlp, LM_D_MLP),
            warmup_steps=min(config.warmup_steps, changes["steps"] // 10),
            log_every=max(1, min(config.log_every, changes["steps"] // 5)),
            eval_sequences=min(config.eval_sequences, 256),
        )
        return dataclasses.replace(config, **changes)
    if isinstance(config, lm.RLConfig):
        changes = _schedule(config, "steps", config.steps // LM_STEP_FRACTION)
        changes["log_every"] = max(1, min(config.log_every, changes["steps"] // 5))
        return dataclasses.replace(config, base=smoke(config.base), **changes)
    if isinstance(config, lm.SFTConfig):
        return dataclasses.replace(
            config,
            rl=smoke(config.rl),
            max_steps=min(config.max_steps, SFT_STEPS),
            candidates=min(config.candidates, SFT_CANDIDATES),
        )
    if isinstance(config, lm.ContinueConfig):
        return dataclasses.replace(config, rl=smoke(config.rl))
    if isinstance(config, tms.Config):
        changes = _schedule(config, "steps", min(config.steps, TMS_STEPS))
        if config.data == "fixed":
            changes["n_points"] = min(config.n_points, TMS_POINTS)
        return config.replace(**changes)
    raise TypeError(f"no smoke size for a {type(config).__name__}")


def preset_name(testbed: Any, config: Any) -> str:
    """The preset name of ``config``: ``"<name>"`` for a preset, ``"<name> (quick)"`` for a
    preset's smoke variant, else the testbed's own ``custom-<hash>``."""
    bed = _bed(testbed)
    for name, candidate in bed.presets.items():
        if candidate == config:
            return name
    for name, candidate in bed.presets.items():
        try:
            if smoke(candidate) == config:
                return f"{name} (quick)"
        except (TypeError, ValueError):
            continue
    return bed.preset_name(config)
