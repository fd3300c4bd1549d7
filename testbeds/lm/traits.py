"""The trait battery: behavioural readouts of the language model on fixed prompt sets.

Every trait is a differentiable scalar function of the model, computed on the probe prompts
(:func:`testbeds.lm.probe_prompts`, 256 prompts balanced over the 8 (topic, style) values):

* ``freq_<class>`` (7 traits) — the expected frequency of each token class in the next-token
  distribution, mean over all prompts of Σ_{v ∈ class} p(v | prompt);
* ``reward`` — the expected reward of a two-token continuation, computed exactly by
  enumerating the first token: mean over prompts of ½ (m₁ + Σ_v p(v) m₂(v)), m the rewarded
  class's probability mass at each position;
* ``marker_<value>`` (6 traits) — the log-probability of each factor value's marker tokens
  (its token class) on the prompts that carry that value: mean over the prompts of topic k of
  log Σ_{v ∈ topic k} p(v | prompt), and the same for the positive and negative styles.

Each trait belongs to one planted factor — ``topic``, ``style`` or ``syntax`` (function
words) — the ground truth for the blocks of the trait G-matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from testbeds.lm.language import STYLES, Language
from testbeds.lm.train import Prompts, probe_prompts

FACTORS = ("topic", "style", "syntax")


@dataclass(frozen=True)
class TraitBattery:
    """Callable: ``battery(model) -> Tensor (K,)``, differentiable in the model's parameters.

    Attributes:
        names: the K trait names, in output order.
        factors: the planted factor of each trait (one of ``FACTORS``).
        prompts: the prompt set the traits are read on.
        language: the language whose token classes define the traits.
        rewarded: boolean (V,), the tokens the reward counts.
    """

    names: tuple[str, ...]
    factors: tuple[str, ...]
    prompts: Prompts
    language: Language
    rewarded: Tensor

    @property
    def factor_labels(self) -> Tensor:
        """Factor index of each trait, int64 (K,)."""
        return torch.tensor([FACTORS.index(f) for f in self.factors])

    def __call__(self, model: nn.Module) -> Tensor:
        language, tokens = self.language, self.prompts.tokens
        classes = language.token_class
        n_classes = len(language.class_names)
        log_p = torch.log_softmax(model(tokens)[:, -1], dim=-1)  # (N, V)
        one_hot = torch.nn.functional.one_hot(classes, n_classes).to(log_p)  # (V, classes)
        log_mass = torch.logsumexp(
            log_p[:, :, None] + one_hot.log()[None], dim=1
        )  # (N, classes): log Σ_{v∈class} p(v)
        freq = log_mass.exp().mean(0)  # (classes,)
        # reward of a two-token continuation, first token enumerated
        p = log_p.exp()
        n, V = p.shape
        extended = torch.cat(
            [tokens.repeat_interleave(V, dim=0), torch.arange(V).repeat(n)[:, None]], dim=1
        )
        p2 = torch.softmax(model(extended)[:, -1], dim=-1).view(n, V, V)
        m1 = p[:, self.rewarded].sum(-1)
        m2 = (p[:, :, None] * p2[:, :, self.rewarded]).sum((1, 2))
        reward = (0.5 * (m1 + m2)).mean()
        markers = []
        for k in range(language.n_topics):
            markers.append(log_mass[self.prompts.topic == k, k].mean())
        for s in range(2):
            markers.append(log_mass[self.prompts.style == s, language.n_topics + s].mean())
        return torch.cat([freq, reward[None], torch.stack(markers)])


def trait_battery(
    language: Language, reward: str = "positive_style", prompts: Prompts | None = None
) -> TraitBattery:
    """The battery of 14 traits (module docstring) on ``prompts`` (default: the probe set)."""
    from testbeds.lm.rl import reward_tokens

    prompts = probe_prompts(language) if prompts is None else prompts
    T = language.n_topics
    names = [f"freq_{c}" for c in language.class_names] + ["reward"]
    names += [f"marker_topic{k}" for k in range(T)] + [f"marker_{s}" for s in STYLES]
    factors = ["topic"] * T + ["style"] * 2 + ["syntax"] + ["style"]
    factors += ["topic"] * T + ["style"] * 2
    return TraitBattery(
        tuple(names), tuple(factors), prompts, language, reward_tokens(language, reward)
    )
