"""Train (or load from the cache) one preset of any testbed and print its last log row::

python -m testbeds modadd lin2025_mlp --seed 0 [--device cpu|cuda|auto] [--force]
python -m testbeds list
"""

from __future__ import annotations

import argparse
import os
import sys

import testbeds
from testbeds.loop import DEVICE_ENV, DEVICES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbeds", description=__doc__.split("::")[0])
    parser.add_argument("testbed", help=f"one of {list(testbeds.names())}, or 'list'")
    parser.add_argument("preset", nargs="?", help="a preset of the testbed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=DEVICES, help=f"default ${DEVICE_ENV} or cpu")
    parser.add_argument("--force", action="store_true", help="retrain even if the run is cached")
    args = parser.parse_args(argv)
    try:
        if args.testbed == "list":
            for name in testbeds.names():
                bed = testbeds.get(name)
                print(f"{name}: {bed.summary}")
                for preset in bed.presets:
                    print(f"  {preset}")
            return 0
        bed = testbeds.get(args.testbed)
        if args.preset is None:
            parser.error(f"a preset is needed; {bed.name} has {list(bed.presets)}")
        if args.device:
            os.environ[DEVICE_ENV] = args.device
        run = bed.train(args.preset, args.seed, force=args.force)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    last = run.log.ffill().iloc[-1]
    shown = ", ".join(f"{k}={v:.4g}" for k, v in last.items() if isinstance(v, float))
    print(
        f"{bed.name} {run.preset} seed={run.seed} on {run.device}: {shown} "
        f"({run.meta['seconds']:.1f} s training, from cache: {run.from_cache})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
