"""Structured eNTK vs the plain Jacobian approach, side by side in one run.

On the ``lin2025_mlp`` model (p = 29, n = 512, all 841 inputs) both compute the class-averaged
layerwise kernels:

* **plain** — what public eNTK code typically does: ``vmap(jacrev(f))`` over the inputs gives
  the (N, C, P) Jacobian of each layer, ``einsum`` over parameters gives the full N×N×C×C
  kernel, which is then averaged over classes;
* **ntkbench** — :func:`metrics.entk.entk` with ``output="trace", by_layer=True``.

Each approach runs in its own subprocess so that its peak resident memory (VmHWM) is its own;
memory is reported as the peak minus the resident size just before the computation. The
kernels are checked to agree before any ratio is reported.

    python benchmarks/bench_entk.py            # prints a table, writes results/bench_entk.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _model_and_inputs():
    from testbeds import modadd

    config = modadd.preset("lin2025_mlp")
    model = config.build_model()
    model.reset_parameters(torch.Generator().manual_seed(0))
    return model.eval(), modadd.probe_inputs(config)


def plain_layerwise_trace(model, inputs):
    """The plain approach: full per-example Jacobians, full N×N×C×C kernel, then the trace."""
    from torch.func import functional_call, jacrev, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}

    def f(theta, x):
        return functional_call(model, theta, (x[None],))[0]

    jac = vmap(jacrev(f), in_dims=(None, 0))(params, inputs)  # name -> (N, C, *shape)
    kernels = {}
    for name, J in jac.items():
        J = J.flatten(2)  # (N, C, P_layer)
        full = torch.einsum("nap,mbp->nmab", J, J)  # (N, N, C, C)
        kernels[name.rsplit(".", 1)[0]] = torch.einsum("nmcc->nm", full) / full.shape[-1]
    return kernels


def structured_layerwise_trace(model, inputs):
    from metrics.entk import entk

    return entk(model, inputs, output="trace", by_layer=True)


def _measure(which: str, repeats: int, out: Path) -> None:
    model, inputs = _model_and_inputs()
    fn = {"plain": plain_layerwise_trace, "structured": structured_layerwise_trace}[which]
    if which == "structured":
        fn(model, inputs)  # warm-up: first-call allocations and library initialisation
    before = _rss_kib("VmRSS")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        kernels = fn(model, inputs)
        times.append(time.perf_counter() - start)
    peak = _rss_kib("VmHWM")
    torch.save({k: v.double() for k, v in kernels.items()}, out)
    print(
        json.dumps(
            {
                "seconds": min(times),
                "all_seconds": times,
                "peak_extra_mib": (peak - before) / 1024,
                "peak_rss_mib": peak / 1024,
            }
        )
    )


def _run(which: str, repeats: int, tmp: Path) -> dict:
    out = tmp / f"{which}.pt"
    proc = subprocess.run(
        [sys.executable, __file__, "--inner", which, "--repeats", str(repeats), "--out", str(out)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "kernels": torch.load(out)}


def main() -> None:
    parser = argparse.ArgumentParser(description="structured vs plain eNTK on lin2025_mlp")
    parser.add_argument("--inner", choices=["plain", "structured"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.inner:
        _measure(args.inner, args.repeats, args.out)
        return

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        plain = _run("plain", 1, Path(tmp))
        fast = _run("structured", 5, Path(tmp))
    err = max(
        ((fast["kernels"][k] - plain["kernels"][k]).norm() / plain["kernels"][k].norm()).item()
        for k in plain["kernels"]
    )
    result = {
        "model": "lin2025_mlp at initialisation (p=29, n=512, N=841 inputs, C=29)",
        "threads": torch.get_num_threads(),
        "plain_seconds": plain["seconds"],
        "structured_seconds": fast["seconds"],
        "speedup": plain["seconds"] / fast["seconds"],
        "plain_peak_extra_mib": plain["peak_extra_mib"],
        "structured_peak_extra_mib": fast["peak_extra_mib"],
        "memory_ratio": plain["peak_extra_mib"] / fast["peak_extra_mib"],
        "max_relative_difference": err,
    }
    print(f"{'':12}{'seconds':>12}{'peak extra MiB':>16}")
    print(f"{'plain':12}{plain['seconds']:12.3f}{plain['peak_extra_mib']:16.0f}")
    print(f"{'ntkbench':12}{fast['seconds']:12.4f}{fast['peak_extra_mib']:16.0f}")
    print(
        f"speed-up {result['speedup']:.0f}x, memory {result['memory_ratio']:.1f}x less, "
        f"kernels agree to {err:.1e} (relative)"
    )
    out = ROOT / "results" / "bench_entk.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
