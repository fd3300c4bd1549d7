"""The eNTK engine against the routes public eNTK code takes, and against an earlier revision of
itself, side by side in one run.

    python benchmarks/bench_engine.py                       # the CPU table (about 10 minutes)
    python benchmarks/bench_engine.py --baseline 7b87ed9     # also the engine at that revision
    python benchmarks/bench_engine.py --device cuda --p113-sizes 128 1024 4096 12769 \
        --max-memory 3000000000                              # the H200 rows, tiled to 3 GB

Rows (networks at initialisation, seed 0; every row in its own subprocess so that its peak
memory is its own):

* ``lin2025_mlp`` and ``lin2025_transformer`` at p = 29 (all 841 inputs): the class-averaged
  (trace) kernel and the layerwise (by-layer) kernels from :func:`metrics.entk.entk`, and from
  the **Jacobian-contraction route**: per-layer ``vmap(jacrev)`` Jacobians (N, C, P_layer),
  contracted to the trace kernel J Jᵀ / C layer by layer;
* ``nanda2023`` at p = 113: the trace kernel of the first N inputs from the engine, and from
  the **seed paper's approach**: ``vmap(jacrev)`` Jacobians and an ``einsum`` to the full
  N × N × C × C kernel, then its class average.

Engine times are the median of ``--repeats`` calls after one warm-up call; the routes it is
compared with are timed once after a warm-up on 8 inputs. Memory is the peak minus what was
resident (CPU: VmHWM − VmRSS; GPU: the allocator's peak minus its allocation) just before the
timed calls. Every row's kernel is checked against the engine's before a ratio is reported.
With ``--baseline REV`` the engine rows are also run with ``metrics/`` as it was at git
revision REV. Writes ``results/bench_engine.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_entk import _rss_kib  # VmRSS / VmHWM of this process, KiB

ROOT = Path(__file__).resolve().parent.parent


def _network(preset: str, device: str):
    from testbeds import modadd

    config = modadd.preset(preset)
    model = config.build_model()
    model.reset_parameters(torch.Generator().manual_seed(0))
    return model.to(device).eval(), modadd.probe_inputs(config).to(device)


def _layer_of(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else name


def jacobian_route(model, x, chunk: int = 128) -> dict[str, torch.Tensor]:
    """Per-layer vmap(jacrev) Jacobians, contracted to each layer's trace kernel."""
    from torch.func import functional_call, jacrev, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}
    kernels: dict[str, torch.Tensor] = {}
    for name in params:
        others = {k: v for k, v in params.items() if k != name}

        def f(theta, xi, others=others):
            return functional_call(model, {**others, **theta}, (xi[None],))[0]

        J = torch.cat(
            [
                vmap(jacrev(f), in_dims=(None, 0))({name: params[name]}, x[i : i + chunk])[
                    name
                ].flatten(2)
                for i in range(0, len(x), chunk)
            ]
        )  # (N, C, P)
        flat = J.reshape(len(x), -1)
        layer = _layer_of(name)
        kernel = flat @ flat.T / J.shape[1]
        kernels[layer] = kernels[layer] + kernel if layer in kernels else kernel
    return kernels


def seed_paper_route(model, x) -> torch.Tensor:
    """vmap(jacrev) Jacobians of all parameters, einsum to N × N × C × C, class average."""
    from torch.func import functional_call, jacrev, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}

    def f(theta, xi):
        return functional_call(model, theta, (xi[None],))[0]

    jac = vmap(jacrev(f), in_dims=(None, 0))(params, x)
    full = sum(
        torch.einsum("nap,mbp->nmab", J.flatten(2), J.flatten(2)) for J in jac.values()
    )  # (N, N, C, C)
    return torch.einsum("nmcc->nm", full) / full.shape[-1]


MAX_MEMORY: int | None = None  # the engine's budget (``--max-memory``); None: its default


def _engine(by_layer: bool):
    def run(model, x):
        from metrics.entk import entk

        if MAX_MEMORY is None:  # an earlier revision may not know the argument
            return entk(model, x, output="trace", by_layer=by_layer)
        return entk(model, x, output="trace", by_layer=by_layer, max_memory=MAX_MEMORY)

    return run


ROUTES = {
    "engine": _engine(False),
    "engine_by_layer": _engine(True),
    "jacobian": jacobian_route,
    "seed_paper": seed_paper_route,
}


def _peak_start(device: str) -> int:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    return _rss_kib("VmRSS") * 1024


def _peak_extra(device: str, start: int) -> int:
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start
    return _rss_kib("VmHWM") * 1024 - start


def _measure(args) -> None:
    global MAX_MEMORY
    MAX_MEMORY = args.max_memory
    torch.set_num_threads(args.threads)
    model, x = _network(args.preset, args.device)
    x = x[: args.n]
    route = args.inner
    fn = ROUTES[route]
    fn(model, x if route.startswith("engine") else x[:8])  # warm-up
    start = _peak_start(args.device)
    times = []
    for _ in range(args.repeats):
        clock = time.perf_counter()
        out = fn(model, x)
        if args.device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - clock)
    peak = _peak_extra(args.device, start)
    if isinstance(out, dict):
        out = {k: v.double().cpu() for k, v in out.items()}
        out["__sum__"] = sum(out.values())
    else:
        out = {"__sum__": out.double().cpu()}
    torch.save(out, args.out)
    print(json.dumps({"seconds": statistics.median(times), "all": times, "peak_bytes": peak}))


def _run(route, preset, n, repeats, args, tmp: Path, pythonpath: str | None = None) -> dict:
    out = tmp / f"{route}-{preset}-{n}-{pythonpath is not None}.pt"
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    cmd = [sys.executable, __file__, "--inner", route, "--preset", preset, "--n", str(n)]
    cmd += ["--repeats", str(repeats), "--out", str(out), "--device", args.device]
    cmd += ["--threads", str(args.threads)]
    if args.max_memory is not None and pythonpath is None:
        cmd += ["--max-memory", str(args.max_memory)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{route} {preset} N={n} failed:\n{proc.stderr[-3000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**row, "kernels": torch.load(out)}


def _baseline_tree(rev: str, tmp: Path) -> str:
    """``metrics/`` at git revision ``rev`` in a folder that goes first on PYTHONPATH."""
    where = tmp / "baseline"
    where.mkdir()
    archive = subprocess.run(
        ["git", "archive", rev, "metrics"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    return str(where)


def _agree(a: dict, b: dict) -> float:
    ref = b["__sum__"]
    return ((a["__sum__"] - ref).norm() / ref.norm()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inner", choices=sorted(ROUTES))
    parser.add_argument("--preset", default="lin2025_mlp")
    parser.add_argument("--n", type=int, default=841)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-memory", type=int, help="the engine's max_memory (bytes)")
    parser.add_argument("--baseline", help="git revision whose metrics/ to time as well")
    parser.add_argument("--p113-sizes", type=int, nargs="*", default=[128, 1024])
    parser.add_argument("--reference-sizes", type=int, nargs="*", default=[16, 32])
    args = parser.parse_args()
    if args.inner:
        _measure(args)
        return

    rows = []

    def row(name, route, preset, n, repeats, reference=None, **extra):
        result = _run(route, preset, n, repeats, args, tmp, extra.pop("pythonpath", None))
        entry = {
            "network": preset,
            "N": n,
            "route": name,
            "seconds": result["seconds"],
            "all_seconds": result["all"],
            "peak_mib": result["peak_bytes"] / 2**20,
        }
        if reference is not None:
            entry["relative_difference"] = _agree(result["kernels"], reference["kernels"])
        rows.append(entry)
        shown = f"{name:34} {preset:20} N={n:<6} {entry['seconds']:9.3f} s"
        print(f"{shown} {entry['peak_mib']:9.0f} MiB", flush=True)
        return result

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        base = _baseline_tree(args.baseline, tmp) if args.baseline else None
        for preset in ("lin2025_mlp", "lin2025_transformer"):
            engine = row("engine, trace", "engine", preset, 841, args.repeats)
            row("engine, by layer", "engine_by_layer", preset, 841, args.repeats, engine)
            if base:
                row(f"engine at {args.baseline}, trace", "engine", preset, 841, args.repeats,
                    engine, pythonpath=base)  # fmt: skip
                row(f"engine at {args.baseline}, by layer", "engine_by_layer", preset, 841,
                    args.repeats, engine, pythonpath=base)  # fmt: skip
            row("Jacobian contraction (per layer)", "jacobian", preset, 841, 1, engine)
        for n in sorted(set(args.p113_sizes) | set(args.reference_sizes)):
            engine = row("engine, trace", "engine", "nanda2023", n, args.repeats)
            if base:
                row(f"engine at {args.baseline}, trace", "engine", "nanda2023", n, args.repeats,
                    engine, pythonpath=base)  # fmt: skip
            if n in args.reference_sizes:
                row("seed paper (N×N×C×C einsum)", "seed_paper", "nanda2023", n, 1, engine)
    out = ROOT / "results" / "bench_engine.json"
    out.parent.mkdir(exist_ok=True)
    meta = {"device": args.device, "threads": args.threads, "torch": torch.__version__}
    if args.device == "cuda":
        meta["gpu"] = torch.cuda.get_device_name()
    out.write_text(json.dumps({**meta, "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
