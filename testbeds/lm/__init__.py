"""A small language model on a synthetic topic-and-style language, with KL-regularised RL.

>>> from testbeds import lm
>>> config = lm.preset("lm_rl")                          # RLConfig; config.base pretrains
>>> base = lm.train(config.base, seed=0)                 # cached after the first call
>>> tuned = lm.train_rl(config, seed=0)                  # reward: positive-style tokens
>>> probe = lm.probe_prompts(config.base.language)       # 256 prompts with their latents
>>> lm.probe_kl(tuned.final_model(), base.final_model(), config)   # (KL, s.e.) in nats
"""

from testbeds.lm.config import (
    PRESETS,
    REWARDS,
    Config,
    ContinueConfig,
    RLConfig,
    SFTConfig,
    preset,
)
from testbeds.lm.language import Language
from testbeds.lm.model import LastTokenLogProbs, TinyLM
from testbeds.lm.rl import (
    continuation_log_probs,
    next_token_kl,
    policy_gradient_loss,
    probe_kl,
    random_perturbation,
    reward_tokens,
    sample_continuations,
    sequence_kl,
    token_log_probs,
    train_continue,
    train_rl,
    train_sft,
    trait_reward,
)
from testbeds.lm.spec import testbed  # noqa: E402  (the contract object)
from testbeds.lm.train import (
    TESTBED,
    Prompts,
    eval_sequences,
    next_token_loss,
    optimal_loss,
    probe_prompts,
    sequence_loss,
    train,
)
from testbeds.lm.traits import FACTORS, TraitBattery, trait_battery

__all__ = [
    "testbed",
    # configuration
    "Config",
    "RLConfig",
    "SFTConfig",
    "ContinueConfig",
    "PRESETS",
    "REWARDS",
    "preset",
    # the language and its ground truth
    "Language",
    "Prompts",
    "probe_prompts",
    "optimal_loss",
    "eval_sequences",
    # the model
    "TinyLM",
    "LastTokenLogProbs",
    "next_token_loss",
    "sequence_loss",
    # training stages
    "TESTBED",
    "train",
    "train_rl",
    "train_sft",
    "train_continue",
    "random_perturbation",
    # RL pieces
    "reward_tokens",
    "trait_reward",
    "sample_continuations",
    "continuation_log_probs",
    "token_log_probs",
    "next_token_kl",
    "sequence_kl",
    "probe_kl",
    "policy_gradient_loss",
    # traits
    "FACTORS",
    "TraitBattery",
    "trait_battery",
]
