"""CPU against GPU, side by side: training time and H1 values of the same preset and seed.

    python benchmarks/gpu_check.py                  # lin2025_mlp and nanda2023 on cpu and cuda
    python benchmarks/gpu_check.py --quick          # tiny configs, for a dry run anywhere

For each network it trains the run on every device asked for (``--devices``, default
``cpu cuda``; ``nanda2023`` only on cuda unless ``--nanda-on-cpu``, since it takes about 45
minutes per seed on 2 CPU cores), then computes H1's statistics on the same device: H1a/H1b on
``lin2025_mlp`` and H1d's key-sum overlap on the transformer. It prints one line per
(network, device) and the largest absolute difference between devices, and writes
``gpu_check.json`` to ``--out``. Runs go to the run cache (GPU runs are cached apart).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hypotheses.test_h1_fourier_circuits import (  # noqa: E402
    h1a_statistics,
    h1b_statistics,
    mlp_layer_kernels,
)
from hypotheses.test_h1d_transformer import key_sum_overlap, unembed_kernel  # noqa: E402
from testbeds import DEVICE_ENV, modadd  # noqa: E402


def mlp_values(run) -> dict[str, float]:
    kernels = mlp_layer_kernels(run.final_model())
    return {
        **{f"H1a/{k}": v for k, v in h1a_statistics(kernels, run.config.p).items()},
        **{f"H1b/{k}": v for k, v in h1b_statistics(kernels, run.config.p).items()},
    }


def transformer_values(run) -> dict[str, float]:
    model = run.final_model()
    key = modadd.key_frequencies(model)
    return {
        "H1d/key_sum_overlap": key_sum_overlap(unembed_kernel(model), key, run.config.p),
        "test_acc": float(run.log["test_acc"].iloc[-1]),
    }


def check(name: str, config, devices: list[str], values, seed: int) -> list[dict]:
    rows = []
    for device in devices:
        os.environ[DEVICE_ENV] = device
        clock = time.perf_counter()
        run = modadd.train(config, seed, device=device)
        trained = time.perf_counter() - clock
        clock = time.perf_counter()
        out = values(run)
        row = {
            "network": name,
            "device": run.device,
            "train_seconds": run.meta["seconds"],
            "from_cache": run.from_cache,
            "load_or_train_seconds": trained,
            "claim_seconds": time.perf_counter() - clock,
            "values": out,
        }
        rows.append(row)
        shown = ", ".join(f"{k}={v:.4f}" for k, v in out.items())
        print(f"{name} on {run.device}: trained in {run.meta['seconds']:.1f} s; {shown}")
    if len(rows) > 1:
        diff = max(abs(rows[0]["values"][k] - rows[1]["values"][k]) for k in rows[0]["values"])
        print(f"{name}: largest |{rows[0]['device']} − {rows[1]['device']}| = {diff:.2e}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny configs (a dry run)")
    parser.add_argument("--nanda-on-cpu", action="store_true")
    parser.add_argument("--out", default="results")
    args = parser.parse_args()
    if args.quick:
        mlp = modadd.preset("lin2025_mlp", epochs=20, checkpoints=(0, 20))
        nanda = modadd.preset("nanda2023_p29", epochs=20, log_every=10, checkpoints=(0, 20))
    else:
        mlp, nanda = modadd.preset("lin2025_mlp"), modadd.preset("nanda2023")
    nanda_devices = [d for d in args.devices if d != "cpu" or args.nanda_on_cpu or args.quick]
    if args.nanda_on_cpu:  # asked for: the p = 113 preset refuses a silent 45-minute CPU run
        os.environ["NTKBENCH_ALLOW_SLOW_CPU"] = "1"
    rows = check("lin2025_mlp", mlp, args.devices, mlp_values, args.seed)
    rows += check("nanda2023", nanda, nanda_devices, transformer_values, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
