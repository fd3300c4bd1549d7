"""Pretraining of the small language model, its data and its probe prompts.

Train (or load from the cache) from the shell::

    python -m testbeds lm lm_pretrain --seed 0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from testbeds.lm.config import Config, resolve_config
from testbeds.lm.language import Language
from testbeds.loop import TrainLoop
from testbeds.loop import generator as derived_generator
from testbeds.runs import Run, RunStore, cached_run

TESTBED = "lm"
MODULES = ("testbeds.lm",)  # the run key hashes this package and what it imports
PROBE_PER_LATENT = 32  # 8 (topic, style) combinations × 32 = 256 probe prompts
PROBE_PROMPT_LEN = 8
PROBE_SEED = 90_210  # the probe prompts are the same for every training seed


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


def sequence_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    """The testbed's loss per example: mean next-token cross-entropy of each sequence,
    logits (n, L, V) against tokens (n, L) → (n,)."""
    return F.cross_entropy(outputs.transpose(1, 2), targets, reduction="none").mean(-1)


def next_token_loss(model: nn.Module, tokens: Tensor) -> Tensor:
    """:func:`sequence_loss` of every sequence, (n,): positions 2..L predicted from their
    prefixes."""
    return sequence_loss(model(tokens[:, :-1]), tokens[:, 1:])


def optimal_loss(language: Language, tokens: Tensor) -> Tensor:
    """The Bayes-optimal predictor's mean next-token loss on each sequence, float64 (n,)."""
    return -language.continuation_log_prob(tokens) / (tokens.shape[1] - 1)


def eval_sequences(config: Config, seed: int) -> Tensor:
    """Held-out sequences of a run, (eval_sequences, context), drawn from the seed's "eval"
    generator."""
    g = derived_generator(seed, "eval")
    return config.language.sample(config.eval_sequences, config.context, g)[0]


def learning_rate(config: Config, step: int) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``lr · min_lr_fraction``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(config.steps - config.warmup_steps, 1)
    cos = 0.5 * (1 + math.cos(math.pi * (step - config.warmup_steps) / span))
    return config.lr * (config.min_lr_fraction + (1 - config.min_lr_fraction) * cos)


def _train(config: Config, seed: int, store: RunStore | None, device: torch.device) -> dict:
    language = config.language
    held_out = eval_sequences(config, seed).to(device)
    floor = optimal_loss(language, held_out.cpu()).to(device)  # (n,), paired with the model's
    batches = derived_generator(seed, "batches")
    model = config.build_model()
    model.reset_parameters(derived_generator(seed, "init"))
    model.to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.98)
    )
    loop = TrainLoop(
        store,
        model,
        optimizer,
        generators={"batches": batches},
        total=config.steps,
        keep=config.checkpoint_steps,
        desc=f"{TESTBED} pretrain seed={seed}",
    )
    for step in loop:
        loop.checkpoint(step)
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
            loop.append(row)
            loop.postfix(gap=row["gap"])
        if step == config.steps:
            break
        tokens = language.sample(config.batch_size, config.context, batches)[0].to(device)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        loss = next_token_loss(model, tokens).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loop.save_partial(step + 1)
    return loop.payload()


def train(
    config: Config | str,
    seed: int = 0,
    *,
    device: str | torch.device | None = None,
    cache: bool = True,
    force: bool = False,
) -> Run:
    """Pretrain ``config`` (a Config or a preset name) from ``seed`` (or load it from the run
    cache) and return the Run. ``device`` defaults to ``$NTKBENCH_DEVICE`` (``cpu``).

    The log has the held-out loss, the Bayes-optimal loss on the same sequences and their
    paired difference ``gap`` (nats/token above the optimum) with its standard error.
    """
    config, name = resolve_config(config, Config)
    return cached_run(
        TESTBED, config, seed, _train, MODULES, preset=name, device=device, cache=cache, force=force
    )
