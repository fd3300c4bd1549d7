"""Train (or load from the cache) a TMS preset:
``python -m testbeds.tms lin2025_tms_m10_s0.9 --seed 0 [--force]``."""

import argparse

from testbeds.tms.config import PRESETS, preset
from testbeds.tms.train import represented, train

parser = argparse.ArgumentParser(prog="python -m testbeds.tms", description=__doc__)
parser.add_argument("preset", choices=sorted(PRESETS))
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--force", action="store_true", help="retrain even if the run is cached")
args = parser.parse_args()
run = train(preset(args.preset), args.seed, force=args.force)
counts = represented(run.final_model()).sum(1).tolist()
print(
    f"{args.preset} seed={args.seed}: final loss {run.log['loss'].iloc[-1]:.4g}, represented "
    f"features per instance {counts} ({run.meta['seconds']:.1f}s training, loaded from cache: "
    f"{run.from_cache})"
)
