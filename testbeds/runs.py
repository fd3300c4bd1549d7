"""Training runs and their on-disk cache.

A :class:`Run` is what ``train(config, seed)`` of every testbed returns: model checkpoints at
chosen steps, a per-step log and provenance. Runs are cached on disk under a key that hashes
the testbed name, the config, the seed and the source code of the testbed, so that editing a
training loop invalidates its runs and nothing else does.

Cache rules (DESIGN.md, "Testbed"):

* writes are atomic (temporary file + ``os.replace``), so a reader never sees half a file;
* a per-key file lock makes concurrent requests (pytest-xdist workers, two shells) train once;
  the others wait and load the result;
* an unreadable cache file is discarded with a warning and the run is retrained;
* long training saves a resumable partial state every ``PARTIAL_SAVE_SECONDS``; an interrupted
  run continues from it and produces the same checkpoints as an uninterrupted one. Saving is
  best-effort: a failed save (full disk) warns and training continues;
* a run that diverged (non-finite final weights or training loss, :func:`divergence`) raises
  :class:`DivergedRun` and is never cached.

The cache lives in ``$NTKBENCH_CACHE`` (default ``~/.cache/ntkbench``). A run trained on another
machine (a GPU) loads here when asked for by the device kind it was trained on
(``trained_on=`` or ``$NTKBENCH_TRAINED_ON``, :func:`cached_run`); such a request never trains.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import platform
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

CACHE_ENV = "NTKBENCH_CACHE"
TRAINED_ON_ENV = "NTKBENCH_TRAINED_ON"  # the device kind of runs trained on another machine
CACHE_FORMAT = 1
PARTIAL_SAVE_SECONDS = 30.0


def cache_dir() -> Path:
    """The run cache folder: ``$NTKBENCH_CACHE`` or ``~/.cache/ntkbench``."""
    root = os.environ.get(CACHE_ENV)
    return Path(root) if root else Path.home() / ".cache" / "ntkbench"


def _canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(_canonical_json(dataclasses.asdict(config)))


def config_hash(config: Any) -> str:
    """Short content hash of a config dataclass (seed not included)."""
    return hashlib.sha256(_canonical_json(config_dict(config)).encode()).hexdigest()[:16]


def code_hash(paths: Sequence[Path]) -> str:
    """Hash of the source files that define a testbed (its training code and models)."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def git_sha() -> str:
    """The commit of the working tree this package runs from, or ``"unknown"``."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    """Versions of the interpreter and the packages that decide the numbers."""
    import numpy
    import scipy
    import sklearn

    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "sklearn": sklearn.__version__,
        "pandas": pd.__version__,
    }


def default_checkpoints(epochs: int, n_log: int = 20, n_linear: int = 20) -> tuple[int, ...]:
    """Checkpoint epochs: initialisation, ``n_log`` log-spaced and ``n_linear + 1`` evenly
    spaced epochs up to the end — dense early, where grokking and feature onset happen."""
    if epochs < 1:
        raise ValueError(f"epochs must be ≥ 1, got epochs={epochs}")
    steps = {0, epochs}
    for i in range(n_log):
        steps.add(round(epochs ** (i / max(n_log - 1, 1))))
    for i in range(n_linear + 1):
        steps.add(round(epochs * i / n_linear))
    return tuple(sorted(s for s in steps if 0 <= s <= epochs))


@dataclass
class Run:
    """A finished training run.

    Attributes:
        testbed: registry name of the testbed (e.g. ``"modadd"``).
        config: the testbed's frozen ``Config``.
        seed: the training seed.
        checkpoints: step → ``state_dict`` (CPU tensors); step 0 is initialisation.
        log: one row per logged step (columns depend on the testbed).
        meta: provenance — ``config_hash``, ``code_hash``, ``git_sha``, ``versions``,
            ``seconds`` (training time), ``created_at``.
        from_cache: whether this object was loaded rather than trained in this process.
        stage: the training stage of a multi-stage testbed (``"rl"``, ``"sft"`` …), else "".
        preset: the name of the preset the config came from (``custom-<config hash>`` for a
            config that is not a preset).
    """

    testbed: str
    config: Any
    seed: int
    checkpoints: dict[int, dict[str, torch.Tensor]]
    log: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)
    from_cache: bool = False
    stage: str = ""
    preset: str = ""

    @property
    def steps(self) -> list[int]:
        return sorted(self.checkpoints)

    @property
    def final_step(self) -> int:
        return self.steps[-1]

    @property
    def device(self) -> str:
        """The device kind the run was trained on (``"cpu"``, ``"cuda:<GPU name>"``)."""
        return self.meta.get("device", "cpu")

    def model_at(self, step: int, device: str | torch.device = "cpu") -> nn.Module:
        """A fresh model (eval mode) on ``device`` holding the weights of checkpoint ``step``."""
        if step not in self.checkpoints:
            raise ValueError(f"no checkpoint at step={step}; available steps: {self.steps}")
        model = self.config.build_model()
        model.load_state_dict(self.checkpoints[step])
        return model.to(device).eval()

    def final_model(self, device: str | torch.device = "cpu") -> nn.Module:
        return self.model_at(self.final_step, device)


class RunStore:
    """Files of one cached run: the finished run, its resumable partial state and its lock."""

    def __init__(self, root: Path, key: str):
        self.root = root
        self.key = key
        self.path = root / f"{key}.pt"
        self.partial_path = root / f"{key}.partial.pt"
        self.lock_path = root / f"{key}.lock"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _write(self, path: Path, payload: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                torch.save(payload, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _read(self, path: Path) -> dict[str, Any] | None:
        if not path.exists():
            return None
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(payload, dict) or payload.get("format") != CACHE_FORMAT:
                raise ValueError(f"unexpected cache format in {path}")
            return payload
        except Exception as err:  # any unreadable file is discarded, never a crash
            warnings.warn(
                f"discarding unreadable cache file {path} ({type(err).__name__}: {err})",
                stacklevel=3,
            )
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return None

    def load(self) -> dict[str, Any] | None:
        return self._read(self.path)

    def save(self, payload: dict[str, Any]) -> None:
        self._write(self.path, {**payload, "format": CACHE_FORMAT})

    def load_partial(self) -> dict[str, Any] | None:
        return self._read(self.partial_path)

    def save_partial(self, state: dict[str, Any]) -> None:
        self._write(self.partial_path, {**state, "format": CACHE_FORMAT})

    def drop_partial(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.partial_path.unlink()


class PartialSaver:
    """Saves a resumable training state at most every ``interval`` seconds."""

    def __init__(self, store: RunStore | None, interval: float | None = None):
        self.store = store
        self.interval = PARTIAL_SAVE_SECONDS if interval is None else interval
        self._last = time.monotonic()

    def maybe_save(self, make_state: Callable[[], dict[str, Any]]) -> None:
        """Save now if ``interval`` seconds have passed since the last attempt. The save is
        best-effort: a failure to write (full disk, a folder gone read-only) is a warning and
        training goes on; the next attempt comes an interval later."""
        if self.store is None or time.monotonic() - self._last < self.interval:
            return
        try:
            self.store.save_partial(make_state())
        except OSError as err:
            warnings.warn(
                f"could not save the resumable state to {self.store.partial_path} "
                f"({err.strerror or type(err).__name__}); training continues without it",
                stacklevel=2,
            )
        self._last = time.monotonic()


class DivergedRun(RuntimeError):
    """Training ended with non-finite weights or a non-finite final training loss; the run is
    not cached."""


LOSS_COLUMNS = ("train_loss", "loss", "objective")  # the training loss, by testbed log


def divergence(payload: dict[str, Any]) -> str | None:
    """Why a trained payload is not a valid run — its last checkpoint holds a non-finite
    weight, or the last logged value of its training loss (the first of ``LOSS_COLUMNS`` in
    the log) is not finite — or None when it is valid."""
    checkpoints = payload["checkpoints"]
    if checkpoints:
        last = max(checkpoints, key=int)
        for name, tensor in checkpoints[last].items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                return f"{name} has non-finite values at step {last}"
    log = payload["log"]
    for column in LOSS_COLUMNS:
        if column in log:
            logged = [v for v in log[column] if v is not None and not math.isnan(v)]
            if not logged:
                return f"{column} was never finite"
            if not math.isfinite(logged[-1]):
                return f"the final {column} is {logged[-1]}"
            break
    return None


class RunNotCached(LookupError):
    """A run asked for by the device kind it was trained on elsewhere (``trained_on``) is not in
    the cache; it is never trained in its place."""


def stored_metas(namespace: str) -> list[dict[str, Any]]:
    """The ``meta`` of every finished run cached under ``runs/<namespace>`` (unreadable files
    are skipped). Tensors are memory-mapped, not read."""
    metas = []
    for path in sorted((cache_dir() / "runs" / namespace).glob("*.pt")):
        if path.name.endswith(".partial.pt"):
            continue
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            metas.append(dict(payload["meta"]))
        except Exception:  # a file being written or damaged: it is not a run to list
            continue
    return metas


def _not_cached(
    namespace: str,
    label: str,
    config: Any,
    seed: int,
    kind: str,
    chash: str,
    library: dict[str, str],
) -> RunNotCached:
    """The one-line error for a ``trained_on`` run missing from the cache, listing the device
    kinds cached for the same config and seed (and whether their code or versions differ)."""
    found = set()
    for meta in stored_metas(namespace):
        if meta.get("seed") != seed or meta.get("config_hash") != config_hash(config):
            continue
        notes = []
        if meta.get("code_hash") != chash:
            notes.append("other code")
        other = meta.get("versions", {})
        notes.extend(f"{k} {other.get(k)}" for k in library if other.get(k) != library[k])
        found.add(repr(meta.get("device", "cpu")) + (f" ({', '.join(notes)})" if notes else ""))
    return RunNotCached(
        f"no {namespace} run {label!r} seed {seed} trained on {kind!r} in {cache_dir()} "
        f"(for this code and these library versions), and such a run is not trained here; "
        f"device kinds cached for this config and seed: {', '.join(sorted(found)) or 'none'}"
    )


def _load_other_versions(
    namespace: str, stage: str, config: Any, seed: int, kind: str, chash: str
) -> dict[str, Any] | None:
    """A run trained on device kind ``kind`` with this code, config and seed whose library
    versions differ from this machine's (a GPU machine's torch build is not the CPU build):
    it loads, since loading needs no training; the newest one when there are several. Its
    ``meta`` keeps the versions and device it was trained with."""
    matches = [
        m
        for m in stored_metas(namespace)
        if m.get("device") == kind
        and m.get("seed") == seed
        and m.get("stage", "") == stage
        and m.get("code_hash") == chash
        and m.get("config_hash") == config_hash(config)
    ]
    for meta in sorted(matches, key=lambda m: m.get("created_at", ""), reverse=True):
        payload = RunStore(cache_dir() / "runs" / namespace, meta["cache_key"]).load()
        if payload is not None:
            return payload
    return None


TrainFn = Callable[[Any, int, RunStore | None, torch.device], dict[str, Any]]


def cached_run(
    testbed: str,
    config: Any,
    seed: int,
    train_fn: TrainFn,
    modules: Sequence[str],
    *,
    stage: str = "",
    preset: str = "",
    device: str | torch.device | None = None,
    cache: bool = True,
    force: bool = False,
    trained_on: str | None = None,
) -> Run:
    """Load the run of ``(testbed, stage, config, seed, device kind)`` from the cache, or train
    and cache it.

    ``train_fn(config, seed, store, device)`` returns a payload with ``checkpoints`` (step →
    state_dict), ``log`` (column → list) and ``seconds``; it trains through
    :class:`testbeds.loop.TrainLoop`, which resumes from ``store``'s partial state. The cache
    key hashes the testbed, stage, config, seed, device kind, library versions and the source
    of ``modules`` and of every project module they import (:func:`testbeds.sources.source_hash`).
    ``force=True`` retrains and overwrites; ``cache=False`` trains without touching disk.

    ``trained_on`` (default ``$NTKBENCH_TRAINED_ON``) names the device kind of a run trained on
    another machine and copied here (``"cuda:NVIDIA H200"``, see :attr:`Run.device`): the key
    is computed with that kind and the run loads with its checkpoints on the CPU. A run with the
    same code, config, seed and device kind but other library versions (the GPU machine's torch
    build) loads too; its ``meta`` says which versions trained it. When ``trained_on`` differs
    from this machine's kind the run is only loaded, never trained: a missing run raises
    :class:`RunNotCached`, listing the device kinds cached for the config and seed.
    """
    from testbeds.loop import device_kind, resolve_device
    from testbeds.sources import source_hash

    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got seed={seed!r}")
    where = resolve_device(device)
    if trained_on is None:
        trained_on = os.environ.get(TRAINED_ON_ENV, "").strip() or None
    if trained_on is not None and (not isinstance(trained_on, str) or not trained_on.strip()):
        raise ValueError(
            f"trained_on must be a device kind such as 'cpu' or 'cuda:<GPU name>', "
            f"got trained_on={trained_on!r}"
        )
    kind = device_kind(where)
    load_only = trained_on is not None and trained_on != kind
    if load_only:
        if not cache or force:
            raise ValueError(
                f"trained_on={trained_on!r} loads a run trained on another device and never "
                f"trains; it cannot be combined with cache={cache} or force={force}"
            )
        kind = trained_on
    cfg = config_dict(config)
    chash = source_hash(*modules)
    library = versions()
    namespace = f"{testbed}_{stage}" if stage else testbed
    key = hashlib.sha256(
        _canonical_json(
            {
                "testbed": namespace,
                "config": cfg,
                "seed": seed,
                "code": chash,
                "device": kind,
                "versions": library,
            }
        ).encode()
    ).hexdigest()[:24]
    meta = {
        "config_hash": config_hash(config),
        "code_hash": chash,
        "cache_key": key,
        "git_sha": git_sha(),
        "versions": library,
        "device": kind,
    }

    def build(payload: dict[str, Any], from_cache: bool) -> Run:
        checkpoints = {int(k): v for k, v in payload["checkpoints"].items()}
        return Run(
            testbed=testbed,
            config=config,
            seed=seed,
            checkpoints=dict(sorted(checkpoints.items())),
            log=pd.DataFrame(payload["log"]),
            meta={"cache_key": key, **payload["meta"]},
            from_cache=from_cache,
            stage=stage,
            preset=preset or f"custom-{config_hash(config)}",
        )

    def train_payload(store: RunStore | None) -> dict[str, Any]:
        started = datetime.now(UTC).isoformat(timespec="seconds")
        out = train_fn(config, seed, store, where)
        reason = divergence(out)
        if reason is not None:
            if store is not None:
                store.drop_partial()
            raise DivergedRun(
                f"{namespace} run {preset or config_hash(config)!r} seed {seed} diverged: "
                f"{reason}; it is not cached (try a smaller lr)"
            )
        out["meta"] = {
            **meta,
            "testbed": testbed,
            "stage": stage,
            "seed": seed,
            "config": cfg,
            "seconds": out.pop("seconds"),
            "created_at": started,
        }
        return out

    if not cache:
        return build(train_payload(None), from_cache=False)

    store = RunStore(cache_dir() / "runs" / namespace, key)
    with store.locked():
        payload = None if force else store.load()
        if payload is not None:
            return build(payload, from_cache=True)
        if load_only:
            payload = _load_other_versions(namespace, stage, config, seed, kind, chash)
            if payload is not None:
                return build(payload, from_cache=True)
            label = preset or f"custom-{config_hash(config)}"
            raise _not_cached(namespace, label, config, seed, kind, chash, library)
        if force:
            store.drop_partial()
        payload = train_payload(store)
        try:
            store.save(payload)
        except OSError as err:  # the run is trained: hand it back rather than lose it
            warnings.warn(
                f"could not cache the run in {store.path} "
                f"({err.strerror or type(err).__name__}); it is returned uncached",
                stacklevel=2,
            )
            return build(payload, from_cache=False)
        store.drop_partial()
        return build(payload, from_cache=False)
