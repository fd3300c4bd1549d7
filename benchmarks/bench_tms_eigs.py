"""Top eigenpairs of the flattened TMS eNTK: matrix-free Lanczos vs dense eigh, in one run.

The kernel is K_β (β = 1) of the trained ``lin2025_tms_m40_s0.9`` network (seed 0): (N·C)² with
C = 50 output channels.

* **full size** (N = 500, a 25 000 × 25 000 kernel): the top ``k`` = 80 eigenpairs with
  :class:`metrics.operators.EntkOperator` + :func:`metrics.eigensolvers.top_eigenpairs`
  (Lanczos). The target is ≤ 60 s on 2 cores; the dense kernel would take 5 GB and its
  eigendecomposition is not attempted.
* **side by side** (the first ``--subset`` inputs, default 100: a 5000 × 5000 kernel): the dense
  route (build the kernel with ``metrics.entk`` + ``torch.linalg.eigh``) and the matrix-free
  route on the same kernel, with their agreement (largest relative eigenvalue error and the
  overlap of the leading eigenvectors up to the last well-separated eigenvalue).

    python benchmarks/bench_tms_eigs.py     # prints a table, writes results/bench_tms_eigs.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from metrics.eigensolvers import top_eigenpairs
from metrics.operators import EntkOperator, channel_scale, flattened_entk
from metrics.spectra import normalized_overlap
from testbeds import tms

ROOT = Path(__file__).resolve().parent.parent
PRESET = "lin2025_tms_m40_s0.9"


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=80)
    parser.add_argument("--subset", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    config = tms.preset(PRESET)
    model = tms.train(config, args.seed).final_model()
    inputs = tms.probe_inputs(config, args.seed)
    weights = tms.importances(config)

    def matrix_free(x):
        op = EntkOperator(model, x, scale=channel_scale(weights, len(x), 1.0))
        return top_eigenpairs(op, args.k)

    full, full_seconds = _timed(lambda: matrix_free(inputs))

    sub = inputs[: args.subset]
    iterative, iterative_seconds = _timed(lambda: matrix_free(sub))

    def dense():
        K = flattened_entk(model, sub, scale=channel_scale(weights, len(sub), 1.0))
        return top_eigenpairs(K, args.k, method="dense")

    reference, dense_seconds = _timed(dense)
    rel_error = float(((iterative.values - reference.values).abs() / reference.values[0]).max())
    gaps = reference.values[:-1] / reference.values[1:]
    separated = int(torch.nonzero(gaps > 1.01).max()) + 1
    overlap = normalized_overlap(iterative.vectors[:, :separated], reference.vectors[:, :separated])

    result = {
        "preset": PRESET,
        "seed": args.seed,
        "k": args.k,
        "threads": torch.get_num_threads(),
        "full": {
            "size": len(inputs) * config.n_features,
            "lanczos_seconds": round(full_seconds, 2),
            "matvecs": full.matvecs,
            "target_seconds": 60,
        },
        "subset": {
            "inputs": len(sub),
            "size": len(sub) * config.n_features,
            "dense_seconds": round(dense_seconds, 2),
            "lanczos_seconds": round(iterative_seconds, 2),
            "speedup": round(dense_seconds / iterative_seconds, 1),
            "max_relative_eigenvalue_error": rel_error,
            "leading_separated": separated,
            "leading_overlap": overlap,
        },
    }
    print(
        f"full   {result['full']['size']}²: Lanczos top {args.k} in {full_seconds:.1f} s "
        f"({full.matvecs} kernel-vector products; target ≤ 60 s)\n"
        f"subset {result['subset']['size']}²: dense {dense_seconds:.1f} s, Lanczos "
        f"{iterative_seconds:.1f} s → {result['subset']['speedup']}×; eigenvalue error "
        f"{rel_error:.1e} of λ_max, overlap of the top {separated} = {overlap:.6f}"
    )
    out = ROOT / "results" / "bench_tms_eigs.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
