r"""A synthetic topic-and-style language whose every statistic is known.

Each sequence draws two latent factors once, before its first token:

* a **topic** t ∈ {0, …, T−1}, uniform, and
* a **style** s ∈ {positive, negative}, positive with probability ``p_positive``,

independently. Tokens come in classes: T topic classes, a positive and a negative style class
and one class of function words. A hidden *slot* (function, topic or style) follows a Markov
chain with transition matrix A; a function slot emits a function word, a topic slot a word of
topic t (with probability ``1 − topic_leak``; otherwise a word of a uniformly chosen other
topic), a style slot a word of style s (with probability ``1 − style_leak``; otherwise of the
other style). Within a class, word frequencies φ are drawn once from a Dirichlet. Each factor
shifts the emission probabilities of its own token classes only.

Because each token's class names the slot that emitted it, the process given (t, s) is a
Markov chain over tokens,

.. math::  P(x_i \mid x_{i-1}, t, s) = A_{\mathrm{slot}(x_{i-1}),\,\mathrm{slot}(x_i)}\;
           e_{t,s}(x_i),

and the probability of a whole sequence is an exact 2T-term mixture over (t, s). So the
Bayes-optimal next-token loss of a context-limited model — the floor under any language
model's held-out loss — is computed from the generator: :meth:`Language.log_prob` scores
sequences exactly and :meth:`Language.entropy_rate` averages it over samples (with its
standard error), next to the asymptotic rate given the latents.

The language is fixed by ``Language.seed``; training seeds change the samples, not the
language.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from testbeds.contract import check_field_types

SLOTS = ("function", "topic", "style")
FUNCTION, TOPIC, STYLE = range(3)
STYLES = ("positive", "negative")


@dataclass(frozen=True)
class Language:
    """The generator of the synthetic language (see the module docstring)."""

    n_topics: int = 4  # T
    topic_words: int = 6  # tokens per topic class
    style_words: int = 6  # tokens per style class (positive and negative)
    function_words: int = 12
    topic_leak: float = 0.1  # P(topic slot emits a word of another topic)
    style_leak: float = 0.2  # P(style slot emits a word of the other style)
    p_positive: float = 0.5  # P(style = positive)
    concentration: float = 2.0  # Dirichlet concentration of within-class word frequencies
    transition_concentration: float = 4.0  # Dirichlet concentration of the rows of A
    seed: int = 0  # draws φ and A; fixed across training seeds

    def __post_init__(self) -> None:
        def fail(name: str, allowed: str) -> None:
            raise ValueError(f"{name} must be {allowed}, got {name}={getattr(self, name)!r}")

        check_field_types(self)
        if not isinstance(self.n_topics, int) or self.n_topics < 2:
            fail("n_topics", "an int ≥ 2")
        for name in ("topic_words", "style_words", "function_words"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                fail(name, "a positive int")
        if not 0.0 <= self.topic_leak < 1.0:
            fail("topic_leak", "in [0, 1)")
        if not 0.0 <= self.style_leak < 0.5:
            fail("style_leak", "in [0, 0.5) so that the style stays identifiable")
        if not 0.0 < self.p_positive < 1.0:
            fail("p_positive", "in (0, 1)")
        for name in ("concentration", "transition_concentration"):
            if not getattr(self, name) > 0:
                fail(name, "> 0")
        if not isinstance(self.seed, int) or self.seed < 0:
            fail("seed", "a non-negative int")

    # ------------------------------------------------------------------ vocabulary
    @property
    def vocab_size(self) -> int:
        return self.n_topics * self.topic_words + 2 * self.style_words + self.function_words

    @property
    def n_latents(self) -> int:
        """Number of (topic, style) combinations, 2T; latent index = 2·topic + style."""
        return 2 * self.n_topics

    @property
    def class_names(self) -> tuple[str, ...]:
        """Token class names, in class-index order: topics, positive, negative, function."""
        return (*(f"topic{k}" for k in range(self.n_topics)), *STYLES, "function")

    @cached_property
    def token_class(self) -> Tensor:
        """Class index of every token, int64 (V,): topic k → k, positive → T, negative → T+1,
        function → T+2. Tokens are laid out class by class in that order."""
        sizes = [self.topic_words] * self.n_topics + [self.style_words] * 2 + [self.function_words]
        return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))

    @cached_property
    def token_slot(self) -> Tensor:
        """Slot that emits each token, int64 (V,): 0 function, 1 topic, 2 style."""
        T = self.n_topics
        cls = self.token_class
        return torch.where(cls < T, TOPIC, torch.where(cls < T + 2, STYLE, FUNCTION))

    def class_tokens(self, name: str) -> Tensor:
        """Token ids of a class by name (e.g. ``"positive"``, ``"topic2"``), int64."""
        if name not in self.class_names:
            raise ValueError(f"class must be one of {self.class_names}, got class={name!r}")
        return torch.nonzero(self.token_class == self.class_names.index(name)).flatten()

    # ------------------------------------------------------------------ the generator
    @cached_property
    def _tables(self) -> dict[str, Tensor]:
        g = torch.Generator().manual_seed(self.seed)
        V, T = self.vocab_size, self.n_topics

        def dirichlet(n: int, alpha: float) -> Tensor:
            x = torch._standard_gamma(torch.full((n,), alpha, dtype=torch.float64), generator=g)
            return x / x.sum()

        transition = torch.stack([dirichlet(3, self.transition_concentration) for _ in SLOTS])
        phi = torch.zeros(V, dtype=torch.float64)  # within-class word frequencies
        for c in range(T + 3):
            idx = torch.nonzero(self.token_class == c).flatten()
            phi[idx] = dirichlet(len(idx), self.concentration)
        # emission e_{t,s}(x) given the slot of x, for every latent (2T, V)
        cls = self.token_class
        emission = torch.zeros(self.n_latents, V, dtype=torch.float64)
        for t in range(T):
            for s in range(2):
                topic_weight = torch.where(
                    cls == t,
                    torch.tensor(1.0 - self.topic_leak, dtype=torch.float64),
                    torch.tensor(self.topic_leak / (T - 1), dtype=torch.float64),
                )
                style_weight = torch.where(
                    cls == T + s,
                    torch.tensor(1.0 - self.style_leak, dtype=torch.float64),
                    torch.tensor(self.style_leak, dtype=torch.float64),
                )
                weight = torch.where(
                    cls < T, topic_weight, torch.where(cls < T + 2, style_weight, 1.0)
                )
                emission[2 * t + s] = weight * phi
        # stationary slot distribution: left eigenvector of A for eigenvalue 1
        values, vectors = torch.linalg.eig(transition.T)
        stationary = vectors[:, torch.argmin((values - 1).abs())].real
        stationary = stationary / stationary.sum()
        prior = torch.tensor(
            [
                (1.0 / T) * (self.p_positive if s == 0 else 1 - self.p_positive)
                for t in range(T)
                for s in range(2)
            ],
            dtype=torch.float64,
        )
        slot = self.token_slot
        # next[z, prev_slot, x] = A[prev_slot, slot(x)] · e_z(x); first[z, x] = π(slot(x)) e_z(x)
        nxt = transition[:, slot][None] * emission[:, None, :]
        first = stationary[slot][None] * emission
        return {
            "transition": transition,
            "stationary": stationary,
            "phi": phi,
            "emission": emission,
            "prior": prior,
            "next": nxt,
            "first": first,
        }

    @property
    def transition(self) -> Tensor:
        """Slot transition matrix A (3, 3), rows (function, topic, style) sum to 1."""
        return self._tables["transition"]

    @property
    def emission(self) -> Tensor:
        """e_z(x), float64 (2T, V): probability of token x given its slot, for latent z."""
        return self._tables["emission"]

    @property
    def prior(self) -> Tensor:
        """P(latent z), float64 (2T,), z = 2·topic + style (style 0 = positive)."""
        return self._tables["prior"]

    def sample(
        self, n: int, length: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``n`` sequences of ``length`` tokens: (tokens int64 (n, L), topic (n,), style (n,)),
        style 0 = positive. Latents are drawn first, then tokens left to right."""
        if n < 1 or length < 1:
            raise ValueError(f"n and length must be ≥ 1, got n={n}, length={length}")
        tables = self._tables
        z = torch.multinomial(tables["prior"], n, replacement=True, generator=generator)
        return self._continue(
            torch.multinomial(tables["first"][z], 1, generator=generator), z, length, generator
        )

    def sample_balanced(
        self, per_latent: int, length: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Like :meth:`sample` with exactly ``per_latent`` sequences of every (topic, style),
        ordered by latent (topic-major)."""
        z = torch.arange(self.n_latents).repeat_interleave(per_latent)
        first = torch.multinomial(self._tables["first"][z], 1, generator=generator)
        return self._continue(first, z, length, generator)

    def _continue(self, first: Tensor, z: Tensor, length: int, generator: torch.Generator):
        tokens = [first[:, 0]]
        nxt = self._tables["next"]
        slot = self.token_slot
        for _ in range(length - 1):
            rows = nxt[z, slot[tokens[-1]]]  # (n, V)
            tokens.append(torch.multinomial(rows, 1, generator=generator)[:, 0])
        return torch.stack(tokens, 1), z // 2, z % 2

    # ------------------------------------------------------------------ exact likelihood
    def latent_log_likelihood(self, tokens: Tensor) -> Tensor:
        """log P(x_1:L, z) for every latent z, float64 (n, 2T)."""
        tables = self._tables
        tokens = torch.as_tensor(tokens)
        if tokens.dim() != 2 or tokens.dtype != torch.int64:
            raise ValueError(
                f"tokens must be int64 (n, L), got {tokens.dtype} {tuple(tokens.shape)}"
            )
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise ValueError(f"tokens must lie in 0..{self.vocab_size - 1}")
        logp = tables["prior"].log()[None] + tables["first"].log().T[tokens[:, 0]]  # (n, 2T)
        if tokens.shape[1] > 1:
            prev = self.token_slot[tokens[:, :-1]]  # (n, L−1)
            log_next = tables["next"].log()  # (2T, 3, V)
            steps = log_next[:, prev, tokens[:, 1:]]  # (2T, n, L−1)
            logp = logp + steps.sum(-1).T
        return logp

    def log_prob(self, tokens: Tensor) -> Tensor:
        """Exact log P(x_1:L) of each sequence, float64 (n,)."""
        return torch.logsumexp(self.latent_log_likelihood(tokens), dim=1)

    @property
    def first_token(self) -> Tensor:
        """Marginal distribution of the first token, float64 (V,)."""
        return self.prior @ self._tables["first"]

    def continuation_log_prob(self, tokens: Tensor) -> Tensor:
        """Exact log P(x_2:L | x_1) of each sequence, float64 (n,): what a next-token predictor
        that sees the sequence so far is scored on."""
        return self.log_prob(tokens) - self.first_token.log()[tokens[:, 0]]

    def next_token_log_probs(self, tokens: Tensor) -> Tensor:
        """Bayes-optimal log P(x_{i+1} | x_1:i) at every prefix, float64 (n, L, V): row i is
        the prediction after i + 1 tokens (the same target convention as the model)."""
        tables = self._tables
        n, L = tokens.shape
        out = torch.empty(n, L, self.vocab_size, dtype=torch.float64)
        logp = tables["prior"].log()[None] + tables["first"].log().T[tokens[:, 0]]
        log_next = tables["next"].log()  # (2T, 3, V)
        for i in range(L):
            posterior = torch.log_softmax(logp, dim=1)  # log P(z | x_1:i+1), (n, 2T)
            rows = log_next[:, self.token_slot[tokens[:, i]]].transpose(0, 1)  # (n, 2T, V)
            out[:, i] = torch.logsumexp(posterior[:, :, None] + rows, dim=1)
            if i + 1 < L:
                logp = logp + rows[torch.arange(n), :, tokens[:, i + 1]]
        return out

    def entropy_rate(self, length: int, n: int = 20_000, seed: int = 12_345) -> tuple[float, float]:
        """Bayes-optimal next-token loss of a model that sees the sequence so far, averaged over
        positions 2..``length``: E[−log P(x_2:L | x_1)] / (L − 1), in nats/token, estimated from
        ``n`` exact sequence likelihoods. Returns (estimate, standard error)."""
        if length < 2:
            raise ValueError(f"length must be ≥ 2, got length={length}")
        tokens, _, _ = self.sample(n, length, torch.Generator().manual_seed(seed))
        per_token = -self.continuation_log_prob(tokens) / (length - 1)
        return per_token.mean().item(), (per_token.std() / math.sqrt(n)).item()

    def asymptotic_entropy_rate(self) -> float:
        """Entropy rate of an infinitely long sequence, nats/token: the latents become known,
        so it is Σ_z P(z) Σ_slot π(slot) H(x_next | slot, z), computed exactly."""
        tables = self._tables
        nxt = tables["next"]  # (2T, 3, V)
        entropy = -(nxt * nxt.clamp_min(1e-300).log()).sum(-1)  # (2T, 3)
        return float((tables["prior"][:, None] * tables["stationary"][None] * entropy).sum())
