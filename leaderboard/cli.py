"""The ``ntkbench`` command.

    ntkbench [--device cpu|cuda|auto] COMMAND …
    ntkbench leaderboard [--testbeds …] [--tasks …] [--methods …] [--compare …] [--seeds N]
                         [--plugin FILE] [--name RUN] [--wandb offline|online|disabled]
                         [--force] [--timeout S] [--no-plots] [--quiet]
    ntkbench report [--check [--strict]] [--records FILE] [--root DIR] [FILE …]
    ntkbench list [--plugin FILE]
    ntkbench run [--tier quick|default|large] [--executor local|slurm] [--jobs N] [--claims FILE …]
                 [--select EXPR] [--no-leaderboard] [--slurm-config FILE] [--partition P]
                 [--time-min M] [--cpus-per-task C] [--gpus G] [--wandb MODE] [--dry-run]

``--device`` sets ``NTKBENCH_DEVICE`` (where training, kernels, claims and tasks run) for the
command; without it the environment decides.

``leaderboard`` scores the methods on the tasks (training comes from the run cache, scores from
the score cache unless ``--force``), writes ``results/leaderboard.{csv,md}``,
``results/claims.md`` and ``results/report.html``, then logs one W&B run (``--wandb``, else
``$WANDB_MODE``, else offline). A run restricted to some methods, tasks, seeds or a plug-in
writes its tables to ``results/leaderboard-<run>.{md,csv,html}`` instead (``<run>``: ``--name``,
else the methods and tasks it was restricted to), never over the full ones. With ``--plugin``
and no ``--methods`` the plug-in's methods run, ranked against the cached scores of every other
method on the same tasks and seeds (``--compare`` names methods to compare with instead; those
are computed where not cached). Its exit status is 0 when every method ran or was not
applicable, 1 when any failed, 2 for bad arguments or a folder that cannot be written — never
set by W&B. When stderr is not a terminal, one line per finished evaluation replaces the
progress bar.

``run`` computes everything a tier needs as a graph of jobs (:mod:`leaderboard.graph`:
training runs, shared trajectories, claim modules, leaderboard tasks), each result in its cache,
on a local process pool (``--jobs``, default one per core) or a SLURM cluster
(``--executor slurm``, through submitit; the cache must be on a shared filesystem). It prints one
line per finished job (a bar on a terminal), logs one W&B group with one run per job kind, and
exits 1 when a job failed. ``pytest hypotheses/`` and ``ntkbench leaderboard`` then only read
and judge.

``report`` regenerates the results tables in ``README.md`` and ``docs/`` from the records
(:mod:`leaderboard.generate`); ``report --check`` exits 1, naming the files, blocks and claims,
when a committed table was made from records whose code has changed since.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path

import pandas as pd
import torch

import testbeds
from leaderboard import api, generate, report
from leaderboard.folders import check_folders
from leaderboard.records import (
    RESULTS_ENV,
    Record,
    claim_records,
    claims_frame,
    from_row,
    markdown,
    read,
    records_path,
    results_dir,
)
from leaderboard.runner import BUILTIN_TIMEOUT, _cached, cache_key, evaluate
from leaderboard.table import aggregate, leaderboard_display, leaderboard_frame
from leaderboard.wandb_log import MODES, log_graph, log_run
from testbeds.runs import git_sha

BASELINES = ("random", "activation_pca")  # always run, so every table has its reference rows
DEFAULT_SEEDS = 3


def suite_version() -> str:
    try:
        return package_version("ntkbench")
    except PackageNotFoundError:
        return "unknown"


def _load(plugins: list[str]) -> tuple[list[str], list[str]]:
    """Built-ins, entry points and plug-in files; returns (warnings about broken entry points,
    the names the plug-in files registered)."""
    api.load_builtins()
    warnings = [
        f"entry point {name!r} failed to load: {error}"
        for name, error in api.load_entry_points().items()
        if error
    ]
    registered = []
    for plugin in plugins:
        registered += api.load_plugin(plugin)
    return warnings, registered


def _plugin_error(error: BaseException) -> str:
    """One line for a plug-in that could not be loaded."""
    text = " ".join(str(error).split())
    return f"could not load plug-in: {type(error).__name__}: {text}".rstrip(": ")


def _claims_listing(root: Path = Path("hypotheses")) -> list[tuple[str, str]]:
    """(file, first docstring line) of every claim file, read without importing it."""
    out = []
    for path in sorted(root.glob("test_*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        out.append((path.name, doc.splitlines()[0] if doc else ""))
    return out


def cmd_list(args: argparse.Namespace) -> int:
    try:
        warnings, _ = _load(args.plugin)
    except (Exception, SystemExit) as error:  # noqa: BLE001 - a broken plug-in is a usage error
        print(f"ntkbench list: error: {_plugin_error(error)}", file=sys.stderr)
        return 2
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print("testbeds and presets:")
    for name in testbeds.names():
        print(f"  {name}: {', '.join(testbeds.get(name).presets)}")
    print("\nmethods:")
    for method in api.METHODS.values():
        print(f"  {method.name:16s} [{method.origin}] {method.source}")
    print("\ntasks:")
    for task in api.TASKS.values():
        print(f"  {task.name:36s} {task.kind:10s} {task.description}")
    print("\nclaims (hypotheses/):")
    claims = _claims_listing()
    for file, line in claims:
        print(f"  {file:36s} {line}")
    if not claims:
        print("  (run from the repository root to list them)")
    return 0


def _select(args: argparse.Namespace, parser: argparse.ArgumentParser, plugged: list[str]):
    """(tasks, methods to run, methods to compare with or None for "every cached one")."""
    try:
        testbeds = api.resolve(
            args.testbeds, {t.testbed: t for t in api.TASKS.values()}, "testbeds"
        )
        task_names = api.resolve(args.tasks, api.TASKS, "tasks")
        tasks = [api.TASKS[n] for n in task_names if api.TASKS[n].testbed in testbeds]
        if args.methods is None and plugged:
            methods = list(plugged)  # a plug-in run: its methods, compared with the cached rest
        else:
            methods = api.resolve(args.methods, api.METHODS, "methods")
        compare = (
            None if args.compare is None else api.resolve(args.compare, api.METHODS, "methods")
        )
    except ValueError as error:
        parser.error(str(error))
    if not tasks:
        parser.error(f"no task matches --testbeds {args.testbeds} and --tasks {args.tasks}")
    methods += [b for b in BASELINES if b not in methods and b in api.METHODS]
    if compare is not None:
        methods += [m for m in compare if m not in methods]
    return tasks, [api.METHODS[m] for m in methods], compare


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_.")[:80] or "subset"


def run_name(args: argparse.Namespace, plugged: list[str]) -> str | None:
    """The name of a restricted run's files (``leaderboard-<run>.md``); None for the full
    default run (every method and task, the default seeds), which writes ``leaderboard.md``."""
    if args.name:
        return _slug(args.name)
    restricted = args.plugin or args.methods or args.tasks or args.testbeds or args.compare
    if not restricted and args.seeds == DEFAULT_SEEDS:
        return None
    parts = []
    methods = args.methods or plugged
    if methods:
        parts.append("+".join(methods))
    if args.testbeds:
        parts.append("+".join(args.testbeds))
    if args.tasks:
        parts.append("+".join(args.tasks) if len(args.tasks) <= 2 else f"{len(args.tasks)}-tasks")
    if args.compare and not methods:
        parts.append("+".join(args.compare))
    if args.seeds != DEFAULT_SEEDS:
        parts.append(f"{args.seeds}-seeds")
    return _slug("-".join(parts))


def _keys(tasks, methods, seeds) -> dict[tuple[str, str, int], str]:
    """The score cache key of every (method, task, seed), as the runner computes it
    (:func:`leaderboard.runner.cache_key`). A combination whose key cannot be computed (its
    task cannot be set up) has none; the runner records that failure."""
    out = {}
    for task in tasks:
        for seed in seeds:
            for m in methods:
                try:
                    out[m.name, task.name, seed] = cache_key(m, task, seed)
                except Exception:  # noqa: BLE001 - left to the runner, which records it
                    break
    return out


def cached_scores(tasks, methods, seeds, path: Path | None = None) -> list[Record]:
    """The score cache's records of ``methods`` on ``tasks`` and ``seeds`` (what the runner
    would reuse); combinations that are not cached are left out, never computed."""
    cache = _cached(Path(path) if path is not None else records_path())
    keys = _keys(tasks, methods, seeds)
    records = []
    for task in tasks:
        for m in methods:
            for seed in seeds:
                row = cache.get(keys.get((m.name, task.name, seed)))
                if row is not None:
                    records.append(from_row(row))
    return records


class ProgressLines:
    """One line on ``stream`` per evaluation this run appends to the records file (the runner
    appends each as soon as it is finished): ``[i/total] method on task seed s: ok 0.734 (2.1 s)``.
    Used when stderr is not a terminal, where a progress bar shows nothing until the end."""

    def __init__(self, path: Path, run_id: str, total: int, stream=None, every: float = 0.5):
        self.path, self.run_id, self.total = Path(path), run_id, total
        self.stream = stream if stream is not None else sys.stderr
        self.every = every
        self.offset = self.path.stat().st_size if self.path.exists() else 0
        self.done = 0
        self._partial = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> ProgressLines:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()

    def _watch(self) -> None:
        while not self._stop.wait(self.every):
            self.poll()

    def poll(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        self.offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()  # an unfinished line waits for the next poll
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if row.get("run_id") != self.run_id or not row.get("method"):
                continue
            self.done += 1
            status = row.get("status", "ok")
            value = row.get("value")
            shown = f"ok {value:.3f}" if status == "ok" and value is not None else status
            if status == "failed" and row.get("error"):
                shown += f": {row['error'][:120]}"
            print(
                f"[{self.done}/{self.total}] {row['method']} on {row['task']} seed {row['seed']}: "
                f"{shown} ({row.get('seconds', 0.0):.1f} s)",
                file=self.stream,
                flush=True,
            )


def wandb_mode(flag: str | None) -> str:
    """``--wandb`` when given, else ``$WANDB_MODE`` (``dryrun`` is offline), else offline."""
    if flag is not None:
        return flag
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env == "dryrun":
        return "offline"
    return env if env in MODES else "offline"


def numeric_claims(records: pd.DataFrame) -> pd.DataFrame:
    """The current claim records (:func:`leaderboard.generate.current`: the newest per claim,
    preset, statistic and seed, whatever its role) with the value, control, chance and
    threshold as numbers (the W&B claims table)."""
    columns = ["claim", "preset", "statistic", "role", "seed", "value", "control_value"]
    columns += ["chance", "comparison", "threshold", "passed", "note"]
    from leaderboard.generate import current

    recent = current(claim_records(records)) if len(records) else pd.DataFrame()
    if recent.empty:
        return pd.DataFrame(columns=columns)
    frame = recent.reindex(columns=columns).sort_values(["claim", "preset", "statistic", "seed"])
    for column in ("value", "control_value", "chance", "threshold"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame["seed"] = frame["seed"].astype(int)
    return frame.reset_index(drop=True)


def cmd_leaderboard(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.seeds < 1:
        parser.error(f"--seeds must be ≥ 1, got {args.seeds}")
    if args.timeout is not None and args.timeout <= 0:
        parser.error(f"--timeout must be a positive number of seconds, got {args.timeout}")
    problem = check_folders()
    if problem:
        print(f"ntkbench leaderboard: error: {problem}", file=sys.stderr)
        return 2
    try:
        warnings, plugged = _load(args.plugin)
    except (Exception, SystemExit) as error:  # noqa: BLE001 - a broken plug-in is a usage error
        parser.error(_plugin_error(error))
    tasks, methods, compare = _select(args, parser, plugged)
    name = run_name(args, plugged)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    torch.set_flush_denormal(True)
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S-") + uuid.uuid4().hex[:6]
    seeds = list(range(args.seeds))
    terminal = sys.stderr.isatty()
    path = records_path()
    others = []
    if compare is None and not args.force:
        running = {m.name for m in methods}
        rest = [m for m in api.METHODS.values() if m.name not in running]
        others = cached_scores(tasks, rest, seeds, path)
    total = len(tasks) * len(seeds) * len(methods)
    cached = 0 if args.force else len(cached_scores(tasks, methods, seeds, path))
    if not args.quiet:
        compared = sorted({r.method for r in others})
        print(
            f"{total} evaluations of {len(methods)} methods on {len(tasks)} tasks and "
            f"{len(seeds)} seeds: {cached} cached, {total - cached} to compute"
            + (f"; compared with the cached scores of {', '.join(compared)}" if compared else ""),
            file=sys.stderr,
            flush=True,
        )
    watch = ProgressLines(path, run_id, total - cached) if not (args.quiet or terminal) else None
    try:
        if watch is not None:
            watch.__enter__()
        records = evaluate(
            tasks,
            methods,
            seeds,
            run_id=run_id,
            force=args.force,
            timeout=args.timeout,
            progress=terminal and not args.quiet,
        )
    finally:
        if watch is not None:
            watch.__exit__(None, None, None)
    records = records + others

    out = results_dir()
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    stem = "leaderboard" if name is None else f"leaderboard-{name}"
    files = {
        "md": out / f"{stem}.md",
        "csv": out / f"{stem}.csv",
        "html": out / ("report.html" if name is None else f"{stem}.html"),
    }
    if name is None:
        heatmap_path = plots / "leaderboard_heatmap.png"
    else:  # kept out of plots/*.png, which every report embeds
        (plots / "runs").mkdir(exist_ok=True)
        heatmap_path = plots / "runs" / f"{stem}_heatmap.png"
    table = leaderboard_frame(records)
    display = leaderboard_display(records)
    table.to_csv(files["csv"])
    files["md"].write_text(markdown(display) + "\n", encoding="utf-8")
    all_records = read()
    claims = claims_frame(all_records)
    (out / "claims.md").write_text(
        (markdown(claims.drop(columns=["seeds"])) if len(claims) else "(no claim records)") + "\n",
        encoding="utf-8",
    )
    parts = aggregate(records)
    images = {"leaderboard_heatmap": report.heatmap(parts, heatmap_path)}
    if not args.no_plots and any(t.preset == report.SPECTRUM_PRESET for t in tasks):
        images["mlp_spectrum"] = report.spectrum_plot(plots / "mlp_spectrum.png")
        images["mlp_overlap_vs_epoch"] = report.overlap_curve(
            plots / "mlp_overlap_vs_epoch.png", progress=terminal and not args.quiet
        )
    for image in sorted(plots.glob("*.png")):
        images.setdefault(image.stem, image)
    failed = [r for r in records if r.status == "failed"]
    notes = [
        f"suite {suite_version()}; methods {', '.join(m.name for m in methods)}; "
        f"seeds {seeds}; run {run_id}",
        *(
            [f"compared with the cached scores of {', '.join(sorted({r.method for r in others}))}"]
            if others
            else []
        ),
        *(f"failed: {r.method} on {r.task} seed {r.seed}: {r.error}" for r in failed),
    ]
    report.write_html(files["html"], leaderboard=display, claims=claims, images=images, notes=notes)

    summary = {
        f"{task}/{method}": float(parts["mean"].at[method, task])
        for task in parts["mean"].columns
        for method in parts["mean"].index
    }
    summary.update({f"{m}/borda_rank": float(r) for m, r in parts["summary"]["Borda rank"].items()})
    config = {
        "methods": [m.name for m in methods],
        "compared": sorted({r.method for r in others}),
        "tasks": [t.name for t in tasks],
        "testbeds": sorted({t.testbed for t in tasks}),
        "seeds": seeds,
        "git_sha": git_sha(),
        "run_id": run_id,
        "run": name or "full",
    }
    mode = wandb_mode(args.wandb)
    wandb_dir, wandb_error = log_run(
        mode=mode,
        version=suite_version(),
        config=config,
        leaderboard=table,
        claims=numeric_claims(all_records),
        summary=summary,
        images=images,
        records=path,
    )

    print(markdown(display))
    for r in failed:
        print(f"FAILED {r.method} on {r.task} seed {r.seed}: {r.error}", file=sys.stderr)
    print(f"\nwrote {files['md']}, {files['csv']}, {files['html']}")
    if wandb_error:
        print(wandb_error, file=sys.stderr)
    elif wandb_dir:
        print(
            f"W&B {mode} run in {wandb_dir}"
            + (f" (upload later with: wandb sync {wandb_dir})" if mode == "offline" else "")
        )
    return 1 if failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    if not args.check:
        problem = check_folders(cache=False)
        if problem:
            print(f"ntkbench report: error: {problem}", file=sys.stderr)
            return 2
    return generate.main(
        root=Path(args.root),
        records_file=Path(args.records) if args.records else records_path(),
        files=args.files,
        check_only=args.check,
        strict=args.strict,
    )


DEVICE_ENV = "NTKBENCH_DEVICE"
DEVICES = ("cpu", "cuda", "auto")


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="ntkbench", description=__doc__.split("\n\n")[0])
    main.add_argument(
        "--device",
        choices=DEVICES,
        help=f"where to compute: sets {DEVICE_ENV} for this command (default: the environment's, "
        "else cpu)",
    )
    sub = main.add_subparsers(dest="command", required=True)
    board = sub.add_parser("leaderboard", help="score methods on tasks; write tables and report")
    board.add_argument("--testbeds", nargs="+", help="only tasks of these testbeds")
    board.add_argument("--tasks", nargs="+", help="only these tasks (default: all)")
    board.add_argument(
        "--methods",
        nargs="+",
        help=f"methods to run (default: the --plugin files' methods, else all; "
        f"{', '.join(BASELINES)} always run)",
    )
    board.add_argument(
        "--compare",
        nargs="+",
        metavar="METHOD",
        help="methods to rank against, computed where not cached (default: every other method "
        "with cached scores on these tasks and seeds, read from the score cache)",
    )
    board.add_argument(
        "--name",
        help="the run's name: a restricted run writes results/leaderboard-<name>.{md,csv,html} "
        "(default: the methods and tasks it was restricted to)",
    )
    board.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, help="seeds 0..N-1 (default 3)")
    board.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="FILE",
        help="a .py file registering methods",
    )
    board.add_argument(
        "--wandb", choices=MODES, help="W&B mode (default: $WANDB_MODE, else offline)"
    )
    board.add_argument("--force", action="store_true", help="recompute cached scores")
    board.add_argument(
        "--timeout",
        type=float,
        default=api.DEFAULT_TIMEOUT,
        help="hard limit in seconds per (plug-in method, task, seed), each in its own process, "
        f"unless a method sets its own (default {api.DEFAULT_TIMEOUT:g}; built-in methods run "
        f"in process with {BUILTIN_TIMEOUT:g})",
    )
    board.add_argument("--no-plots", action="store_true", help="skip the eNTK spectrum plots")
    board.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bars (or, without a terminal, progress lines)",
    )
    board.set_defaults(subparser=board)
    listing = sub.add_parser("list", help="testbeds, presets, methods, tasks and claims")
    listing.add_argument("--plugin", action="append", default=[], metavar="FILE")
    tables = sub.add_parser(
        "report",
        help="regenerate the results tables in README.md and docs/ from the records",
        description="Regenerate every generated block (between <!-- ntkbench:begin … --> and "
        "<!-- ntkbench:end … -->) in README.md and docs/**/*.md from the records; prose "
        "outside the blocks is kept. With --check, regenerate nothing and exit 1 when a block "
        "was made from records whose code has changed since.",
    )
    tables.add_argument("files", nargs="*", help="only these files (relative to --root)")
    tables.add_argument(
        "--check",
        action="store_true",
        help="exit 1, naming files and claims, when a block's records came from other code",
    )
    tables.add_argument(
        "--strict",
        action="store_true",
        help="with --check: a block that was never generated fails too",
    )
    tables.add_argument("--records", help="records file (default results/records.jsonl)")
    tables.add_argument("--root", default=".", help="repository root (default .)")
    run = sub.add_parser(
        "run",
        help="compute a tier's runs, trajectories, claims and leaderboard scores as a job graph",
    )
    run.add_argument(
        "--tier",
        choices=("quick", "default", "large"),
        help="(default: $NTKBENCH_TIER, else default) quick: every claim on one seed and "
        "smoke-sized presets, never a verdict (records in results/quick/); default: the CPU "
        "claims and the leaderboard; large: p = 113 (GPU)",
    )
    run.add_argument(
        "--executor",
        choices=("local", "slurm"),
        default="local",
        help="local process pool (default) or SLURM job arrays through submitit",
    )
    run.add_argument("--jobs", type=int, help="local workers (default: one per core)")
    run.add_argument(
        "--claims",
        nargs="+",
        metavar="FILE",
        help="only these claim modules (file names in hypotheses/)",
    )
    run.add_argument(
        "--select", metavar="EXPR", help="a pytest -k expression: only the claim checks it selects"
    )
    run.add_argument("--no-leaderboard", action="store_true", help="skip the leaderboard tasks")
    run.add_argument(
        "--seeds", type=int, default=DEFAULT_SEEDS, help="leaderboard seeds 0..N-1 (default 3)"
    )
    run.add_argument(
        "--slurm-config",
        metavar="FILE",
        help="JSON file of SLURM options (partition, time_min, cpus_per_task, "
        "gpus_per_node, mem_gb, array_parallelism, extra)",
    )
    run.add_argument("--partition", help="SLURM partition")
    run.add_argument("--time-min", type=int, help="SLURM time limit per job, minutes")
    run.add_argument("--cpus-per-task", type=int, help="SLURM CPUs per job (its threads)")
    run.add_argument("--gpus", type=int, help="SLURM GPUs per job")
    run.add_argument("--wandb", choices=MODES, help="W&B mode (default: $WANDB_MODE, else offline)")
    run.add_argument("--dry-run", action="store_true", help="list the jobs and exit")
    run.set_defaults(subparser=run)
    return main


def cmd_run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from leaderboard import graph

    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs must be ≥ 1, got {args.jobs}")
    if args.seeds < 1:
        parser.error(f"--seeds must be ≥ 1, got {args.seeds}")
    graph.importable()
    from hypotheses.tier import QUICK_RESULTS, TIER_ENV

    chosen = os.environ.get(TIER_ENV, "").strip()
    if chosen and args.tier and chosen != args.tier:
        parser.error(f"--tier {args.tier} contradicts {TIER_ENV}={chosen}; unset one of them")
    args.tier = args.tier or chosen or "default"
    if args.tier not in graph.TIERS:
        parser.error(f"{TIER_ENV} must be one of {list(graph.TIERS)}, got {TIER_ENV}={chosen!r}")
    os.environ[TIER_ENV] = args.tier
    if args.tier == "quick" and not os.environ.get(RESULTS_ENV, "").strip():
        os.environ[RESULTS_ENV] = QUICK_RESULTS  # a smoke run never mixes with the verdicts
    problem = check_folders()
    if problem:
        print(f"ntkbench run: error: {problem}", file=sys.stderr)
        return 2
    try:
        jobs = graph.build(
            args.tier,
            claims=args.claims,
            leaderboard=not args.no_leaderboard,
            select=args.select or "",
            seeds=args.seeds,
        )
    except ValueError as error:
        parser.error(str(error))
    kinds = pd.Series([j.kind for j in jobs]).value_counts().to_dict() if jobs else {}
    summary = ", ".join(f"{kinds[k]} {k}" for k in graph.KINDS if k in kinds)
    if args.dry_run:
        for level, members in enumerate(graph.levels(jobs)):
            for job in members:
                needs = f" (needs {len(job.needs)})" if job.needs else ""
                print(f"{level} {job.kind:10} {job.name}{needs}")
        print(f"{len(jobs)} jobs: {summary}")
        return 0
    try:
        if args.executor == "slurm":
            overrides = dict(
                partition=args.partition,
                time_min=args.time_min,
                cpus_per_task=args.cpus_per_task,
                gpus_per_node=args.gpus,
            )
            options = (
                graph.SlurmOptions.from_file(args.slurm_config, **overrides)
                if args.slurm_config
                else graph.SlurmOptions(**{k: v for k, v in overrides.items() if v is not None})
            )
            executor = graph.SlurmExecutor(options)
        else:
            executor = graph.LocalExecutor(args.jobs)
    except (RuntimeError, ValueError, OSError) as error:
        print(f"ntkbench run: error: {error}", file=sys.stderr)
        return 2
    where = (
        f"{executor.jobs} local workers × {executor.threads} threads"
        if args.executor == "local"
        else "SLURM job arrays"
    )
    print(
        f"ntkbench run ({args.tier} tier): {len(jobs)} jobs ({summary}) on {where}",
        file=sys.stderr,
        flush=True,
    )
    started = time.perf_counter()
    run_id, outcomes = graph.run_graph(jobs, executor)
    seconds = time.perf_counter() - started
    counts = pd.Series([o.status for o in outcomes]).value_counts().to_dict() if outcomes else {}
    print(
        f"ntkbench run {run_id}: {len(outcomes)} jobs in {seconds:.0f} s "
        f"({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}); logs in "
        f"{graph.graph_dir() / run_id}",
        file=sys.stderr,
    )
    mode = wandb_mode(args.wandb)
    dirs, error = log_graph(
        mode=mode,
        run_id=run_id,
        outcomes=[o.__dict__ for o in outcomes],
        config={
            "tier": args.tier,
            "executor": args.executor,
            "git_sha": git_sha(),
            "seconds": seconds,
            "jobs": len(jobs),
        },
    )
    if error:
        print(error, file=sys.stderr)
    elif dirs:
        print(
            f"W&B {mode} group graph-{run_id}: {len(dirs)} runs in {Path(dirs[0]).parent}",
            file=sys.stderr,
        )
    return 1 if counts.get("failed") else 0


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.device is not None:
        os.environ[DEVICE_ENV] = args.device
    if args.command == "list":
        return cmd_list(args)
    if args.command == "report":
        return cmd_report(args)
    if args.command == "run":
        return cmd_run(args, args.subparser)
    return cmd_leaderboard(args, args.subparser)


if __name__ == "__main__":
    sys.exit(main())
