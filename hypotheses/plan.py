"""What each claim module needs computed before it can judge: the inputs of ``ntkbench run``.

:func:`runs` lists, for a claim module, every training run it reads (built from the module's own
constants and helpers, so a seed or preset changed there changes the plan too);
:func:`trajectories` lists the cached per-checkpoint computations that several claims share
(:func:`hypotheses.trajectories.trajectory`). :func:`leaderboard.graph.build` turns them into
training and trajectory jobs that run before the claim modules' jobs.

Presets are resolved through :mod:`hypotheses.tier`, and the claim modules' seed constants
follow it, so under the quick tier the same functions name the smoke-sized runs on one seed.

A claim module that trains a run this plan does not name still works: the run trains inside its
claim job, and ``ntkbench run`` reports it (``trained inside``), so the plan can be completed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import testbeds
from hypotheses import tier
from testbeds.runs import config_hash

ROOT = Path(__file__).resolve().parent


@dataclass(frozen=True)
class RunRequest:
    """One training run: ``train(config, seed)`` of testbed ``testbed``, where ``train`` is the
    testbed's registered ``train`` (``stage=""``) or the function ``stage`` of its package
    (``"train_rl"``, ``"train_sft"``, ``"train_continue"`` of ``testbeds.lm``). ``config`` is a
    config object or a preset name."""

    testbed: str
    config: Any
    seed: int
    stage: str = ""

    def function(self) -> Callable:
        bed = testbeds.get(self.testbed)
        if not self.stage:
            return bed.train
        module = importlib.import_module(type(bed).__module__.rsplit(".", 1)[0])
        return getattr(module, self.stage)

    def resolved(self) -> Any:
        """The config; a preset name is read through :func:`hypotheses.tier.preset` (its smoke
        variant under the quick tier)."""
        if isinstance(self.config, str):
            return tier.preset(self.testbed, self.config)
        return self.config

    def upstream(self) -> list[RunRequest]:
        """The runs this stage trains from, same seed: RL and continued pretraining start from
        the pretraining run of their ``base``, SFT reads its RL run's probe KL (and that run's
        pretraining run). As jobs they run first, so no two jobs train one run side by side."""
        config = self.resolved()
        if self.stage in ("train_rl", "train_continue"):
            base = config.base if self.stage == "train_rl" else config.rl.base
            return [RunRequest(self.testbed, base, self.seed)]
        if self.stage == "train_sft":
            return [RunRequest(self.testbed, config.rl, self.seed, "train_rl")]
        return []

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.testbed, self.stage, config_hash(self.resolved()), self.seed)

    @property
    def label(self) -> str:
        config = self.resolved()
        try:
            name = tier.preset_name(self.testbed, config)
        except (ValueError, KeyError):
            name = ""
        name = name or f"custom-{config_hash(config)}"
        stage = f" {self.stage.removeprefix('train_')}" if self.stage else ""
        return f"{self.testbed}{stage} {name} seed {self.seed}"

    def train(self):
        return self.function()(self.resolved(), self.seed)


@dataclass(frozen=True)
class TrajectoryRequest:
    """The cached per-checkpoint frame of one run (:func:`hypotheses.trajectories.trajectory`)."""

    run: RunRequest
    preset: str

    @property
    def label(self) -> str:
        quick = " (quick)" if tier.quick() else ""
        return f"trajectory {self.preset}{quick} seed {self.run.seed}"

    def compute(self) -> None:
        from hypotheses.trajectories import trajectory

        trajectory(self.run.train(), self.preset)


# modules whose seeds or presets claim modules import
SEED_HELPERS = ("trajectories", "circuit_depth", "tms_kernels", "test_h3_memorisation_noise")
TIER_MARK = "_ntkbench_tier"  # the tier a module was last (re)loaded under, set here


def _load(name: str):
    """``hypotheses.<name>``, reloaded unless this module last loaded it under the current tier
    (its seeds and presets are read at import: :mod:`hypotheses.tier`)."""
    module = importlib.import_module(f"hypotheses.{name}")
    now = tier.current()
    if getattr(module, TIER_MARK, None) != now:
        module = importlib.reload(module)
        setattr(module, TIER_MARK, now)
    return module


def _claim(name: str):
    """The claim module ``name`` with its seeds and presets of the current tier (the helpers it
    imports them from first)."""
    for helper in SEED_HELPERS:
        _load(helper)
    return _load(name)


def _modadd(presets, seeds) -> list[RunRequest]:
    return [RunRequest("modadd", p, s) for p in presets for s in seeds]


def _h1():
    m = _claim("test_h1_fourier_circuits")
    seeds = tuple(m.SEEDS) + tuple(m.CONFIRMATORY_SEEDS)
    return _modadd((m.MLP_PRESET, m.TRANSFORMER_PRESET), seeds)


def _h1d():
    m = _claim("test_h1d_transformer")
    return _modadd((m.TRANSFORMER_PRESET, m.NANDA_PRESET), m.SEEDS)


def _lm_rl(module: str, replicated: bool):
    from testbeds import lm

    m = _claim(module)
    out = []
    for seed in m.SEEDS:
        config = tier.preset(lm, m.RL_PRESET)
        out.append(RunRequest("lm", config.base, seed))
        out.append(RunRequest("lm", tier.preset(lm, m.CONTINUE_PRESET), seed, "train_continue"))
        if replicated:
            for r in m.REPLICATES:
                rl = config.replace(replicate=r)
                out.append(RunRequest("lm", rl, seed, "train_rl"))
                sft = tier.preset(lm, m.SFT_PRESET, rl=rl)
                out.append(RunRequest("lm", sft, seed, "train_sft"))
        else:
            out.append(RunRequest("lm", config, seed, "train_rl"))
            out.append(RunRequest("lm", tier.preset(lm, m.SFT_PRESET), seed, "train_sft"))
    return out


def _h3(module: str):
    m = _claim(module)
    return _modadd((m.PRESET,), m.SEEDS)


def _h4(module: str):
    m = _claim(module)
    testbeds_of = _claim("test_h4_kernel_rank").TESTBEDS
    return [RunRequest(testbeds_of[p][0], p, s) for p in testbeds_of for s in m.SEEDS]


def _h5():
    m = _claim("test_h5_grokking_spectrum")
    configs = (m.config(), m.config(m.CONTROL_TRAIN_FRACTION))
    return [RunRequest("modadd", c, s) for c in configs for s in m.SEEDS]


def _h6():
    m = _claim("test_h6_cka_cca")
    return _modadd(m.PRESETS, m.SEEDS)


def _h7():
    m = _claim("test_h7_circuit_depth")
    return _modadd((m.PRESET, m.TRANSFORMER), m.SEEDS)


def _h7_prime():
    m = _claim("test_h7_resolution_depth")
    return _modadd((*m.PRESETS, m.PAIRWISE), m.SEEDS)


def _h8():
    m = _claim("test_h8_policing")
    return _modadd(m.PRESETS, m.SEEDS)


def _h8_prime():
    m = _claim("test_h8_police_power")
    return _modadd(m.PRESETS, sorted({*m.SEEDS, m.POWER_SEED}))


def _tms():
    m = _claim("tms_kernels")
    return [RunRequest("tms", p, s) for p in m.PRESETS for s in m.V2_SEEDS]


def _large():
    m = _claim("test_large_p113")
    return [RunRequest("modadd", m.config(), s) for s in m.SEEDS]


# claim module (file name) → the runs it reads
RUNS: dict[str, Callable[[], list[RunRequest]]] = {
    "test_h1_fourier_circuits.py": _h1,
    "test_h1d_transformer.py": _h1d,
    "test_h2_rl_stationarity.py": lambda: _lm_rl("test_h2_rl_stationarity", replicated=False),
    "test_h2_replicated_rl.py": lambda: _lm_rl("test_h2_replicated_rl", replicated=True),
    "test_h3_memorisation_noise.py": lambda: _h3("test_h3_memorisation_noise"),
    "test_h3b_censored_half_lives.py": lambda: _h3("test_h3b_censored_half_lives"),
    "test_h4_kernel_rank.py": lambda: _h4("test_h4_kernel_rank"),
    "test_h4_rank_above_random_move.py": lambda: _h4("test_h4_rank_above_random_move"),
    "test_h5_grokking_spectrum.py": _h5,
    "test_h6_cka_cca.py": _h6,
    "test_h7_circuit_depth.py": _h7,
    "test_h7_resolution_depth.py": _h7_prime,
    "test_h8_policing.py": _h8,
    "test_h8_police_power.py": _h8_prime,
    "test_t1_tms_cliffs.py": _tms,
    "test_t2_tms_eigenspaces.py": _tms,
    "test_large_p113.py": _large,
}
# claim module → the claim modules whose stored computations it reads, so the graph runs it
# after them: T2 reads the spectra and alignments T1 stores (hypotheses.tms_kernels.stored)
AFTER: dict[str, tuple[str, ...]] = {
    "test_t2_tms_eigenspaces.py": ("test_t1_tms_cliffs.py",),
}
# claim modules that read the shared per-checkpoint frames of hypotheses.trajectories
TRAJECTORY_READERS = ("test_h4_kernel_rank.py", "test_h6_cka_cca.py")


def claim_modules(root: Path = ROOT) -> list[Path]:
    """Every claim module (``hypotheses/test_*.py``), sorted."""
    return sorted(root.glob("test_*.py"))


def runs(module: str | Path) -> list[RunRequest]:
    """The runs a claim module reads ([] for a module the plan does not know)."""
    name = Path(module).name
    return RUNS[name]() if name in RUNS else []


def after(module: str | Path) -> tuple[str, ...]:
    """The claim modules (file names) whose stored computations ``module`` reads."""
    return AFTER.get(Path(module).name, ())


def trajectories(module: str | Path) -> list[TrajectoryRequest]:
    """The shared per-checkpoint frames a claim module reads."""
    if Path(module).name not in TRAJECTORY_READERS:
        return []
    from hypotheses.trajectories import PLANS, SEEDS

    bed = _claim("test_h4_kernel_rank").TESTBEDS
    wanted = PLANS if Path(module).name != "test_h6_cka_cca.py" else _claim("test_h6_cka_cca")
    presets = list(PLANS) if wanted is PLANS else list(wanted.PRESETS)
    return [TrajectoryRequest(RunRequest(bed[p][0], p, s), p) for p in presets for s in SEEDS]
