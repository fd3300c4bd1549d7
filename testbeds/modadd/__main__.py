"""Train (or load from the cache) a modular-addition preset:
``python -m testbeds.modadd lin2025_mlp --seed 0 [--force]``."""

import argparse

from testbeds.modadd.config import PRESETS, preset
from testbeds.modadd.train import train

parser = argparse.ArgumentParser(prog="python -m testbeds.modadd", description=__doc__)
parser.add_argument("preset", choices=sorted(PRESETS))
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--force", action="store_true", help="retrain even if the run is cached")
args = parser.parse_args()
run = train(preset(args.preset), args.seed, force=args.force)
last = run.log.iloc[-1]
print(
    f"{args.preset} seed={args.seed}: train_acc={last.train_acc:.3f} test_acc={last.test_acc:.3f} "
    f"({run.meta['seconds']:.1f}s training, loaded from cache: {run.from_cache})"
)
