r"""A one-layer modular-addition transformer with hand-written weights (a planted positive).

:func:`fourier_transformer` writes every weight of a :class:`ModAddTransformer` so that the
network adds modulo p through known Fourier frequencies K, with no training and no random
numbers. With ω_k = 2πk/p, tokens (a, b, "=") and s = a + b:

1. **Embedding.** Token t < p is embedded as (cos ω_k t, sin ω_k t)_{k ∈ K} in 2|K| residual
   directions E; "=" is a single direction Q (the stream's constant); position 0 and 1 get one
   direction each, position 2 none. The embedding's Fourier power is 1/|K| at each k ∈ K and 0
   elsewhere, so :func:`key_frequencies` returns K.
2. **Attention.** Head 0 (head 1) queries Q at "=" and keys position 0's (1's) direction with
   score ``ATTENTION_LOGIT`` = 40, so it puts weight 1 − 2e^{-40} on a (on b). Its value reads
   E and its output writes e(a) into directions A (e(b) into B). Heads 2, … write nothing.
3. **MLP, sum rings.** For each k ∈ K and each shift τ ∈ ``RING_SHIFTS`` = (0, 7), p neurons
   α ∈ Z_p (a *ring*) with pre-activation

   .. math::  u_{α}(a, b) = \cos(ω_k(a + α) + π/p) + \cos(ω_k(b − α) + π/p + 2πτ/p) + c,

   c = ``RING_OFFSET`` = −0.63, read from A, B and Q. Summed over the ring, the outputs depend
   on (a, b) only through s, *exactly*: substituting α' = a + α,

   .. math::  \sum_{α} \mathrm{ReLU}(u_α(a, b)) = R(k s + τ),\qquad
              R(v) = \sum_{α' ∈ Z_p} \mathrm{ReLU}\big(\cos(2π(α' + ½)/p)
                     + \cos(2π(v − α' + ½)/p) + c\big),

   (relabelling α' → k⁻¹α' mod p turns frequency k into 1). R is one fixed function on Z_p:
   99.47% of its non-constant power lies in its fundamental, the rest in harmonics 2, 3, ….
   Every ring neuron writes to two directions C_k, S_k with weights chosen (a 2×2 solve on
   R's fundamental) so that C_k carries cos ω_k s and S_k carries sin ω_k s, each plus the
   rings' harmonics (sum modes at frequencies jk mod p, j ≥ 2). Every ring pre-activation is
   cos(2π(α+½)/p) + cos(2π(β+½)/p) + c for integers α, β; no such sum of cosines lies in
   (0.589, 0.672), so c = −0.63 keeps each one at least 0.0407 from the ReLU's kink (the
   half-step phase π/p and c were chosen, among offsets whose R is ≥ 99% fundamental, for the
   widest margin).
4. **MLP, clean-up.** One neuron per direction of A and B reads it plus 2·Q (pre-activation in
   [1, 3]) and writes −1 times itself back, cancelling what the attention wrote; one neuron
   reads Q (pre-activation 1) and writes the constants that make A, B, C_k, S_k zero-mean.
   Unused neurons read −Q (pre-activation −1) and write nothing. No MLP bias is used (any
   bias is zero), so the construction is the same with or without them.
5. **Unembedding.** Row c < p of W_U reads γ(cos ω_k c, sin ω_k c) from (C_k, S_k), so

   .. math::  \mathrm{logit}_c = γ \sum_{k ∈ K} \cos ω_k(s − c) + \text{(harmonics)},

   which peaks at c = s; a p + 1-th row (for "=") is zero.

What is known: the residual stream at "=" after the MLP is Q plus zero-mean functions of s
alone in C_k, S_k (A and B cancel to round-off), so the unembedding kernel of the summed logits
depends on (a, b) only through a + b mod p; its top 2|K| + 1 eigenvectors are the constant and
the sum modes at K up to the rings' harmonics. For p = 29, K = (4, 5, 7) (chosen because
Σ_k cos ω_k d ≤ |K| − 1.83 for every d ≠ 0, the largest such margin for |K| = 3), in float32:
accuracy 1.0 on all p² pairs, key frequencies K, H1d's statistic 0.995, smallest |ReLU
pre-activation| 0.0407.

>>> from testbeds import modadd
>>> model = modadd.fourier_transformer(modadd.preset("lin2025_transformer"), key=(4, 5, 7))
>>> sorted(modadd.key_frequencies(model).tolist())
[4, 5, 7]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from testbeds.modadd.config import Config
from testbeds.modadd.ground_truth import n_frequencies
from testbeds.modadd.models import ModAddTransformer

DEFAULT_KEY = (4, 5, 7)  # max over d ≠ 0 of Σ_k cos(2πkd/29) is 1.17, the lowest for |K| = 3
ATTENTION_LOGIT = 40.0  # score of the attended position; the others get weight e^{-40}
RING_SHIFTS = (0, 7)  # two rings per frequency, a quarter period (7/29 of a turn) apart
RING_OFFSET = -0.63  # c: the ring's pre-activations avoid (−0.041, 0.042) (docstring, 3.)
CLEANUP_OFFSET = 2.0  # cancelling neurons read x + 2 with |x| ≤ 1: pre-activation in [1, 3]
LOGIT_SCALE = 5.0  # γ


def ring_profile(p: int, shift: int = 0) -> torch.Tensor:
    """R(v + shift) for v ∈ Z_p: the summed output of one ring at frequency 1, (p,) float64."""
    v = torch.arange(p, dtype=torch.float64)[:, None]  # (p, 1)
    alpha = torch.arange(p, dtype=torch.float64)[None, :]  # (1, p)
    u = (
        torch.cos(2 * math.pi * (alpha + 0.5) / p)
        + torch.cos(2 * math.pi * (v + shift - alpha + 0.5) / p)
        + RING_OFFSET
    )  # (p, p)
    return torch.relu(u).sum(-1)


def fourier_transformer(
    config: Config, key: Sequence[int] = DEFAULT_KEY, logit_scale: float = LOGIT_SCALE
) -> ModAddTransformer:
    """The hand-built transformer of the module docstring, in ``config``'s architecture
    (``config.build_model()``: its p, d_model, n_heads, d_mlp, MLP biases and W_U rows),
    float32.

    Needs d_model ≥ 8|K| + 3, n_heads ≥ 2, d_head ≥ 2|K| and d_mlp ≥ |K|(2p + 4) + 1, and
    |K| ≤ (p − 1)/4 so that each k ∈ K passes :func:`key_frequencies`' share threshold.
    """
    if config.arch != "transformer":
        raise ValueError(f"config.arch must be 'transformer', got arch={config.arch!r}")
    p, d_model, n_heads, d_mlp = config.p, config.d_model, config.n_heads, config.d_mlp
    key = [int(k) for k in key]
    n_key = len(key)
    if not key or len(set(key)) != n_key or not all(1 <= k <= n_frequencies(p) for k in key):
        raise ValueError(f"key must be distinct frequencies in 1..{n_frequencies(p)}, got {key}")
    if 4 * n_key > p - 1:
        raise ValueError(f"key must have at most (p-1)/4 = {(p - 1) // 4} frequencies, got {key}")
    d_head = d_model // n_heads
    needs = {
        "d_model": (d_model, 8 * n_key + 3),
        "n_heads": (n_heads, 2),
        "d_head": (d_head, 2 * n_key),
        "d_mlp": (d_mlp, n_key * (2 * p + 4) + 1),
    }
    for name, (have, need) in needs.items():
        if have < need:
            raise ValueError(f"{name} must be ≥ {need} for |K| = {n_key}, got {name}={have}")

    # residual directions
    width = 2 * n_key
    E, A, B, S = (torch.arange(width) + i * width for i in range(4))  # (2|K|,) each
    Q, POS0, POS1 = 4 * width, 4 * width + 1, 4 * width + 2

    model = config.build_model().double()
    for parameter in model.parameters():
        parameter.data.zero_()
    t = torch.arange(p, dtype=torch.float64)
    omega = [2 * math.pi * k / p for k in key]

    # 1. embedding
    W_E = model.embed.weight.data  # (p + 1, d_model)
    for i, w in enumerate(omega):
        W_E[:p, E[2 * i]] = torch.cos(w * t)
        W_E[:p, E[2 * i + 1]] = torch.sin(w * t)
    W_E[p, Q] = 1.0
    model.pos.data[0, POS0] = 1.0
    model.pos.data[1, POS1] = 1.0

    # 2. attention: head h attends to position h and copies E into A (h = 0) or B (h = 1)
    q_weight = ATTENTION_LOGIT * math.sqrt(d_head)  # score = q·k / √d_head
    for head, (position, target) in enumerate([(POS0, A), (POS1, B)]):
        first = head * d_head
        model.W_Q.weight.data[first, Q] = q_weight
        model.W_K.weight.data[first, position] = 1.0
        value = first + torch.arange(width)  # (2|K|,) value coordinates of this head
        model.W_V.weight.data[value, E] = 1.0
        model.W_O.weight.data[target, value] = 1.0

    # 3. sum rings: fundamentals of the two shifted profiles → weights giving cos, sin
    profiles = torch.stack([ring_profile(p, tau) for tau in RING_SHIFTS])  # (2, p)
    basis = torch.stack([torch.cos(2 * math.pi * t / p), torch.sin(2 * math.pi * t / p)])
    fundamentals = profiles @ basis.T * (2 / p)  # (2 rings, [cos, sin] coefficients)
    mix = torch.linalg.solve(
        fundamentals.T, torch.eye(2, dtype=torch.float64)
    )  # (2 rings, [C, S] targets)
    means = profiles.mean(-1)  # (2,) constant part of each ring's summed output
    W_in, W_out = model.mlp_in.weight.data, model.mlp_out.weight.data  # (d_mlp, d), (d, d_mlp)
    alpha = torch.arange(p, dtype=torch.float64)
    neuron = 0
    constants = torch.zeros(d_model, dtype=torch.float64)  # what the constant neuron writes
    for i, w in enumerate(omega):
        cos_a, sin_a, cos_b, sin_b = A[2 * i], A[2 * i + 1], B[2 * i], B[2 * i + 1]
        out = [S[2 * i], S[2 * i + 1]]  # C_k, S_k
        for r, tau in enumerate(RING_SHIFTS):
            rows = neuron + torch.arange(p)
            phase_a = w * alpha + math.pi / p  # cos(ω(a + α) + π/p)
            phase_b = -w * alpha + math.pi / p + 2 * math.pi * tau / p
            W_in[rows, cos_a], W_in[rows, sin_a] = torch.cos(phase_a), -torch.sin(phase_a)
            W_in[rows, cos_b], W_in[rows, sin_b] = torch.cos(phase_b), -torch.sin(phase_b)
            W_in[rows, Q] = RING_OFFSET
            for j in range(2):
                W_out[out[j], rows] = mix[r, j]
                constants[out[j]] -= mix[r, j] * means[r]
            neuron += p

    # 4. clean-up: cancel A and B, and the constants
    for direction in torch.cat([A, B]).tolist():
        W_in[neuron, direction] = 1.0
        W_in[neuron, Q] = CLEANUP_OFFSET
        W_out[direction, neuron] = -1.0
        constants[direction] += CLEANUP_OFFSET
        neuron += 1
    W_in[neuron, Q] = 1.0
    W_out[:, neuron] = constants
    W_in[neuron + 1 :, Q] = -1.0  # unused neurons: pre-activation −1, no output

    # 5. unembedding: row c reads γ(cos ω_k c, sin ω_k c); an "=" row stays zero
    W_U = model.unembed.weight.data  # (p or p + 1, d_model)
    for i, w in enumerate(omega):
        W_U[:p, S[2 * i]] = logit_scale * torch.cos(w * t)
        W_U[:p, S[2 * i + 1]] = logit_scale * torch.sin(w * t)
    return model.float()
