"""The language-model testbed as a :class:`testbeds.contract.Testbed`.

One testbed, four stages: pretraining (``Config``), KL-regularised RL (``RLConfig``), SFT at
matched KL (``SFTConfig``) and continued pretraining (``ContinueConfig``). :meth:`LM.train`
picks the stage from the config's type.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from metrics.entk import hidden_units
from testbeds.contract import GroundTruth, Probe, Testbed
from testbeds.lm.config import PRESETS, Config, ContinueConfig, RLConfig, SFTConfig
from testbeds.lm.model import LastTokenLogProbs, TinyLM
from testbeds.lm.rl import train_continue, train_rl, train_sft
from testbeds.lm.train import TESTBED, eval_sequences, probe_prompts, sequence_loss, train
from testbeds.runs import Run

STAGES = {Config: train, RLConfig: train_rl, SFTConfig: train_sft, ContinueConfig: train_continue}


def base_config(config: Any) -> Config:
    """The pretraining config under any stage's config."""
    while not isinstance(config, Config):
        config = config.base if isinstance(config, RLConfig) else config.rl
    return config


class LM(Testbed):
    name = TESTBED
    summary = "a small transformer LM on a synthetic topic-and-style language; RL, SFT, controls"
    config_type = (Config, RLConfig, SFTConfig, ContinueConfig)
    presets = PRESETS
    hand_built: dict = {}

    def train(self, config: Any, seed: int = 0, **options: Any) -> Run:
        config, _ = self.resolve(config)
        return STAGES[type(config)](config, seed, **options)

    def _prompts(self, tokens: Tensor, topic: Tensor, style: Tensor, train_rows=None) -> Probe:
        return Probe(
            inputs=tokens,
            targets=tokens[:, 1:],
            loss=sequence_loss,
            readout=LastTokenLogProbs,
            loss_inputs=tokens[:, :-1],
            train_rows=train_rows,
            names={"topic": topic, "style": style},
        )

    def probe(self, run: Run) -> Probe:
        """The 256 probe prompts (8 tokens, 32 per (topic, style)), read out as
        log P(next token | prompt) at the last position; the loss is the next-token loss of
        their own tokens 2 … 8. Training draws fresh sequences, so no row is a training row."""
        prompts = probe_prompts(base_config(run.config).language)
        return self._prompts(prompts.tokens, prompts.topic, prompts.style)

    def training_set(self, run: Run) -> Probe:
        """Training draws fresh sequences every step; this is the run's fixed sample of that
        distribution (its held-out evaluation sequences, never trained on)."""
        config = base_config(run.config)
        tokens = eval_sequences(config, run.seed)
        unknown = torch.full((len(tokens),), -1)
        return self._prompts(tokens, unknown, unknown)

    def units(self, model: TinyLM) -> list[dict]:
        """The MLP neurons of every block, block by block."""
        return [
            unit
            for i in range(len(model.blocks))
            for unit in hidden_units(model, f"blocks.{i}.mlp_in", f"blocks.{i}.mlp_out")
        ]

    def activations(self, model: nn.Module, inputs: Tensor) -> Tensor:
        """The final normalised residual stream at the last position, (N, d_model)."""
        model = model.model if isinstance(model, LastTokenLogProbs) else model
        return model.residual(inputs)[:, -1]

    def ground_truth(self, run: Run, model: nn.Module | None = None) -> GroundTruth:
        """The latent topic and style of every probe prompt (the language's generative
        factors)."""
        prompts = probe_prompts(base_config(run.config).language)
        return GroundTruth(input_labels={"topic": prompts.topic, "style": prompts.style})


testbed = LM()
__all__ = ["LM", "base_config", "testbed"]
