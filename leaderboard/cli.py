"""The ``ntkbench`` command.

    ntkbench [--device cpu|cuda|auto] COMMAND …
    ntkbench leaderboard [--testbeds …] [--tasks …] [--methods …] [--seeds N] [--plugin FILE]
                         [--wandb offline|online|disabled] [--force] [--timeout S] [--no-plots]
    ntkbench report [--check [--strict]] [--records FILE] [--root DIR] [FILE …]
    ntkbench list [--plugin FILE]

``--device`` sets ``NTKBENCH_DEVICE`` (where training, kernels, claims and tasks run) for the
command; without it the environment decides.

``leaderboard`` scores the methods on the tasks (training comes from the run cache, scores from
the score cache unless ``--force``), writes ``results/leaderboard.{csv,md}``,
``results/claims.md`` and ``results/report.html``, then logs one W&B run (offline by default).
Its exit status is 0 when every method ran or was not applicable, 1 when any failed, 2 for
bad arguments — never set by W&B.

``report`` regenerates the results tables in ``README.md`` and ``docs/`` from the records
(:mod:`leaderboard.generate`); ``report --check`` exits 1, naming the files, blocks and claims,
when a committed table was made from records whose code has changed since.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import uuid
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path

import torch

import testbeds
from leaderboard import api, generate, report
from leaderboard.records import claims_frame, markdown, read, records_path, results_dir
from leaderboard.runner import BUILTIN_TIMEOUT, evaluate
from leaderboard.table import aggregate, leaderboard_display, leaderboard_frame
from leaderboard.wandb_log import MODES, log_run
from testbeds.runs import git_sha

BASELINES = ("random", "activation_pca")  # always run, so every table has its reference rows
DEFAULT_SEEDS = 3


def suite_version() -> str:
    try:
        return package_version("ntkbench")
    except PackageNotFoundError:
        return "unknown"


def _load(plugins: list[str]) -> list[str]:
    """Built-ins, entry points and plug-in files; returns warnings (broken entry points)."""
    api.load_builtins()
    warnings = [
        f"entry point {name!r} failed to load: {error}"
        for name, error in api.load_entry_points().items()
        if error
    ]
    for plugin in plugins:
        api.load_plugin(plugin)
    return warnings


def _claims_listing(root: Path = Path("hypotheses")) -> list[tuple[str, str]]:
    """(file, first docstring line) of every claim file, read without importing it."""
    out = []
    for path in sorted(root.glob("test_*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        out.append((path.name, doc.splitlines()[0] if doc else ""))
    return out


def cmd_list(args: argparse.Namespace) -> int:
    for warning in _load(args.plugin):
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


def _select(args: argparse.Namespace, parser: argparse.ArgumentParser):
    try:
        testbeds = api.resolve(
            args.testbeds, {t.testbed: t for t in api.TASKS.values()}, "testbeds"
        )
        task_names = api.resolve(args.tasks, api.TASKS, "tasks")
        tasks = [api.TASKS[n] for n in task_names if api.TASKS[n].testbed in testbeds]
        methods = api.resolve(args.methods, api.METHODS, "methods")
    except ValueError as error:
        parser.error(str(error))
    if not tasks:
        parser.error(f"no task matches --testbeds {args.testbeds} and --tasks {args.tasks}")
    methods += [b for b in BASELINES if b not in methods and b in api.METHODS]
    return tasks, [api.METHODS[m] for m in methods]


def cmd_leaderboard(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.seeds < 1:
        parser.error(f"--seeds must be ≥ 1, got {args.seeds}")
    if args.timeout is not None and args.timeout <= 0:
        parser.error(f"--timeout must be a positive number of seconds, got {args.timeout}")
    try:
        warnings = _load(args.plugin)
    except Exception as error:  # noqa: BLE001 - a broken plug-in is a usage error
        parser.error(f"could not load plug-in: {type(error).__name__}: {error}")
    tasks, methods = _select(args, parser)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    torch.set_flush_denormal(True)
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S-") + uuid.uuid4().hex[:6]
    seeds = list(range(args.seeds))
    records = evaluate(
        tasks,
        methods,
        seeds,
        run_id=run_id,
        force=args.force,
        timeout=args.timeout,
        progress=not args.quiet,
    )

    out = results_dir()
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    table = leaderboard_frame(records)
    display = leaderboard_display(records)
    table.to_csv(out / "leaderboard.csv")
    (out / "leaderboard.md").write_text(markdown(display) + "\n", encoding="utf-8")
    claims = claims_frame(read())
    (out / "claims.md").write_text(
        (markdown(claims.drop(columns=["seeds"])) if len(claims) else "(no claim records)") + "\n",
        encoding="utf-8",
    )
    parts = aggregate(records)
    images = {"leaderboard_heatmap": report.heatmap(parts, plots / "leaderboard_heatmap.png")}
    if not args.no_plots and any(t.preset == report.SPECTRUM_PRESET for t in tasks):
        images["mlp_spectrum"] = report.spectrum_plot(plots / "mlp_spectrum.png")
        images["mlp_overlap_vs_epoch"] = report.overlap_curve(
            plots / "mlp_overlap_vs_epoch.png", progress=not args.quiet
        )
    for path in sorted(plots.glob("*.png")):
        images.setdefault(path.stem, path)
    failed = [r for r in records if r.status == "failed"]
    notes = [
        f"suite {suite_version()}; methods {', '.join(m.name for m in methods)}; "
        f"seeds {seeds}; run {run_id}",
        *(f"failed: {r.method} on {r.task} seed {r.seed}: {r.error}" for r in failed),
    ]
    report.write_html(
        out / "report.html", leaderboard=display, claims=claims, images=images, notes=notes
    )

    summary = {
        f"{task}/{method}": float(parts["mean"].at[method, task])
        for task in parts["mean"].columns
        for method in parts["mean"].index
    }
    summary.update({f"{m}/borda_rank": float(r) for m, r in parts["summary"]["Borda rank"].items()})
    config = {
        "methods": [m.name for m in methods],
        "tasks": [t.name for t in tasks],
        "testbeds": sorted({t.testbed for t in tasks}),
        "seeds": seeds,
        "git_sha": git_sha(),
        "run_id": run_id,
    }
    wandb_dir, wandb_error = log_run(
        mode=args.wandb,
        version=suite_version(),
        config=config,
        leaderboard=table,
        claims=claims,
        summary=summary,
        images=images,
        records=records_path(),
    )

    print(markdown(display))
    for r in failed:
        print(f"FAILED {r.method} on {r.task} seed {r.seed}: {r.error}", file=sys.stderr)
    print(f"\nwrote {out / 'leaderboard.md'}, {out / 'leaderboard.csv'}, {out / 'report.html'}")
    if wandb_error:
        print(wandb_error, file=sys.stderr)
    elif wandb_dir:
        print(
            f"W&B {args.wandb} run in {wandb_dir}"
            + (f" (upload later with: wandb sync {wandb_dir})" if args.wandb == "offline" else "")
        )
    return 1 if failed else 0


def cmd_report(args: argparse.Namespace) -> int:
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
        help=f"methods to run (default: all; {', '.join(BASELINES)} always run)",
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
        "--wandb", choices=MODES, default="offline", help="W&B mode (default offline)"
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
    board.add_argument("--quiet", action="store_true", help="no progress bars")
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
    return main


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.device is not None:
        os.environ[DEVICE_ENV] = args.device
    if args.command == "list":
        return cmd_list(args)
    if args.command == "report":
        return cmd_report(args)
    return cmd_leaderboard(args, args.subparser)


if __name__ == "__main__":
    sys.exit(main())
