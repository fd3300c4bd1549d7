"""Train (or load from the cache) a stage of the language-model testbed:
``python -m testbeds.lm lm_rl --seed 0 [--force]`` (lm_pretrain, lm_rl, lm_sft, lm_continue)."""

import argparse

from testbeds.lm.config import PRESETS, Config, ContinueConfig, RLConfig, preset
from testbeds.lm.rl import train_continue, train_rl, train_sft
from testbeds.lm.train import train

parser = argparse.ArgumentParser(prog="python -m testbeds.lm", description=__doc__)
parser.add_argument("preset", choices=sorted(PRESETS))
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--force", action="store_true", help="retrain even if the run is cached")
args = parser.parse_args()
config = preset(args.preset)
if isinstance(config, Config):
    run = train(config, args.seed, force=args.force)
    last = run.log.iloc[-1]
    summary = (
        f"held-out loss {last['loss']:.4f}, {last['gap']:.4f} ± {last['gap_se']:.4f} "
        "nats/token above the optimum"
    )
elif isinstance(config, RLConfig):
    run = train_rl(config, args.seed, force=args.force)
    kl = run.log["probe_kl"].dropna().iloc[-1]
    reward = run.log["reward"].dropna().tail(20).mean()
    summary = f"final probe KL {kl:.3f} nats, reward over the last 20 steps {reward:.3f}"
elif isinstance(config, ContinueConfig):
    run = train_continue(config, args.seed, force=args.force)
    summary = f"final probe KL {run.log['probe_kl'].dropna().iloc[-1]:.3f} nats"
else:
    run = train_sft(config, args.seed, force=args.force)
    last = run.log.iloc[-1]
    summary = (
        f"KL {last['final_kl']:.3f} vs RL {last['target_kl']:.3f} nats, "
        f"matched={bool(last['matched'])}"
    )
print(
    f"{args.preset} seed={args.seed}: {summary} ({run.meta['seconds']:.1f}s training, "
    f"loaded from cache: {run.from_cache})"
)
