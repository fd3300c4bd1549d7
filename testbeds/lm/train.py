"""Pretraining of the small language model, its data and its probe prompts.

Train (or load from the cache) from the shell::

    python -m testbeds.lm lm_pretrain --seed 0
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from testbeds.lm.config import Config
from testbeds.lm.language import Language
from testbeds.runs import PartialSaver, Run, RunStore, cached_run

TESTBED = "lm"
CODE_PATHS = tuple(sorted(Path(__file__).parent.glob("*.py")))
PROBE_PER_LATENT = 32  # 8 (topic, style) combinations × 32 = 256 probe prompts
PROBE_PROMPT_LEN = 8
PROBE_SEED = 90_210  # the probe prompts are the same for every training seed
EVAL_SEED_OFFSET = 3


@dataclass(frozen=True)
class Prompts:
    """Prompts with their latent factors: tokens int64 (N, L), topic (N,), style (N,)
    (style 0 = positive)."""

    tokens: Tensor
    topic: Tensor
    style: Tensor

    def __len__(self) -> int:
        return len(self.tokens)


def probe_prompts(language: Language, length: int = PROBE_PROMPT_LEN) -> Prompts:
    """The fixed probe set: 256 prompts of ``length`` tokens, 32 for each of the 8 (topic,
    style) combinations, ordered topic-major, the same for every training seed."""
    tokens, topic, style = language.sample_balanced(
        PROBE_PER_LATENT, length, torch.Generator().manual_seed(PROBE_SEED)
    )
    return Prompts(tokens, topic, style)


def next_token_loss(model: nn.Module, tokens: Tensor) -> Tensor:
    """Mean next-token cross-entropy of every sequence, (n,): positions 2..L predicted from
    their prefixes."""
    logits = model(tokens[:, :-1])  # (n, L−1, V)
    nll = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")
    return nll.mean(-1)


def optimal_loss(language: Language, tokens: Tensor) -> Tensor:
    """The Bayes-optimal predictor's mean next-token loss on each sequence, float64 (n,)."""
    return -language.continuation_log_prob(tokens) / (tokens.shape[1] - 1)


def eval_sequences(config: Config, seed: int) -> Tensor:
    """Held-out sequences of a run, (eval_sequences, context), drawn from ``seed + 3``."""
    g = torch.Generator().manual_seed(seed + EVAL_SEED_OFFSET)
    return config.language.sample(config.eval_sequences, config.context, g)[0]


def learning_rate(config: Config, step: int) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``lr · min_lr_fraction``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(config.steps - config.warmup_steps, 1)
    cos = 0.5 * (1 + math.cos(math.pi * (step - config.warmup_steps) / span))
    return config.lr * (config.min_lr_fraction + (1 - config.min_lr_fraction) * cos)


def _train(config: Config, seed: int, store: RunStore | None) -> dict[str, Any]:
    torch.set_flush_denormal(True)
    language = config.language
    held_out = eval_sequences(config, seed)
    floor = optimal_loss(language, held_out)  # (n,), paired with the model's loss
    batches = torch.Generator().manual_seed(seed + 2)
    model = config.build_model()
    model.reset_parameters(torch.Generator().manual_seed(seed + 1))
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.98)
    )
    keep = set(config.checkpoint_steps)
    checkpoints: dict[int, dict[str, Tensor]] = {}
    log: dict[str, list] = {}
    start, seconds = 0, 0.0
    resumed = store.load_partial() if store is not None else None
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        batches.set_state(resumed["generator"])
        checkpoints = {int(k): v for k, v in resumed["checkpoints"].items()}
        log, start, seconds = resumed["log"], resumed["step"], resumed["seconds"]

    saver = PartialSaver(store)
    clock = time.perf_counter()
    bar = tqdm(
        range(start, config.steps + 1),
        initial=start,
        total=config.steps + 1,
        desc=f"{TESTBED} pretrain seed={seed}",
        disable=None,
    )
    for step in bar:
        if step in keep:
            checkpoints[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if step % config.log_every == 0 or step == config.steps:
            with torch.no_grad():
                loss = next_token_loss(model.eval(), held_out).double()
            model.train()
            gap = loss - floor
            row = {
                "step": step,
                "loss": loss.mean().item(),
                "optimal": floor.mean().item(),
                "gap": gap.mean().item(),
                "gap_se": (gap.std() / math.sqrt(len(gap))).item(),
                "lr": learning_rate(config, min(step, config.steps - 1)),
            }
            for key, value in row.items():
                log.setdefault(key, []).append(value)
            bar.set_postfix(gap=row["gap"], refresh=False)
        if step == config.steps:
            break
        tokens = language.sample(config.batch_size, config.context, batches)[0]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        loss = next_token_loss(model, tokens).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        saver.maybe_save(
            lambda step=step: {
                "step": step + 1,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "generator": batches.get_state(),
                "checkpoints": checkpoints,
                "log": log,
                "seconds": seconds + time.perf_counter() - clock,
            }
        )
    bar.close()
    return {
        "checkpoints": checkpoints,
        "log": log,
        "seconds": seconds + time.perf_counter() - clock,
    }


def train(config: Config, seed: int = 0, *, cache: bool = True, force: bool = False) -> Run:
    """Pretrain ``config`` from ``seed`` (or load it from the run cache) and return the Run.

    The log has the held-out loss, the Bayes-optimal loss on the same sequences and their
    paired difference ``gap`` (nats/token above the optimum) with its standard error.
    """
    if not isinstance(config, Config):
        raise ValueError(f"config must be a testbeds.lm.Config, got {type(config).__name__}")
    return cached_run(TESTBED, config, seed, _train, CODE_PATHS, cache=cache, force=force)
