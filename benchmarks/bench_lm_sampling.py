"""Sampling continuations from the language model: incremental decoding against a whole
forward pass per token, in one run.

The model is the pretrained ``lm_pretrain`` network (seed 0, trained if not cached). Each size
is sampled ``--repeats`` times by both routes, interleaved, on one thread (as a job-graph
worker runs); the table gives the medians, their ratio and whether the tokens are the same.
128 sequences is an RL step (16 prompts × 8), 1024 the probe-prompt KL (256 × 4).

    python benchmarks/bench_lm_sampling.py   # prints a table, writes results/bench_lm_sampling.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from testbeds import lm
from testbeds.lm.train import probe_prompts

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 1024])
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    config = lm.preset("lm_rl")
    model = lm.train(config.base, 0).final_model()  # trainable weights, as a policy's
    prompts = probe_prompts(config.base.language, config.prompt_len).tokens
    rows = []
    for n in args.sizes:
        x = prompts.repeat(-(-n // len(prompts)), 1)[:n]
        times: dict[bool, list[float]] = {False: [], True: []}
        same = True
        for rep in range(args.repeats):
            out = {}
            for incremental in (False, True):
                g = torch.Generator().manual_seed(rep)
                start = time.perf_counter()
                out[incremental] = lm.sample_continuations(model, x, config.gen_len, g, incremental)
                times[incremental].append(time.perf_counter() - start)
            same &= torch.equal(out[False], out[True])
        whole, fast = statistics.median(times[False]), statistics.median(times[True])
        rows.append(
            {"sequences": n, "whole_s": whole, "incremental_s": fast, "ratio": whole / fast,
             "same_tokens": same}
        )  # fmt: skip
    print("| sequences | whole forward per token | incremental | ratio | same tokens |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['sequences']} | {r['whole_s']:.3f} s | {r['incremental_s']:.3f} s | "
            f"{r['ratio']:.2f}× | {'yes' if r['same_tokens'] else 'no'} |"
        )
    out = ROOT / "results" / "bench_lm_sampling.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "torch": torch.__version__}, indent=2) + "\n")


if __name__ == "__main__":
    main()
