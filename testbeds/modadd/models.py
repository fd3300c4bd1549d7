"""The two modular-addition networks, each in a few readable lines.

* :class:`ModAddMLP` — Gromov (2023), "Grokking modular arithmetic": one hidden layer,
  f(x) = (1/n) W₂ φ(W₁ x / √(2p)), φ(u) = u² (or ReLU), x = concat(one_hot(a), one_hot(b)).
* :class:`ModAddTransformer` — Nanda et al. (2023), "Progress measures for grokking": one
  attention layer (causal, no LayerNorm) and one ReLU MLP over tokens (a, b, =).

Parameters live in ``nn.Linear`` / ``nn.Embedding`` modules wherever the maths allows, so the
eNTK engine can use its structured per-layer products; the positional embedding is a plain
``nn.Parameter`` and goes through the engine's generic path.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class ModAddMLP(nn.Module):
    """Gromov's two-layer network. Input (N, 2p) one-hot pairs → logits (N, p)."""

    def __init__(self, p: int, width: int, activation: str = "quadratic"):
        super().__init__()
        self.p, self.width, self.activation = p, width, activation
        self.layer1 = nn.Linear(2 * p, width, bias=False)  # first layer  W₁ (n, 2p)
        self.layer2 = nn.Linear(width, p, bias=False)  # output layer W₂ (p, n)

    def reset_parameters(self, generator: torch.Generator) -> None:
        for layer in (self.layer1, self.layer2):
            nn.init.normal_(layer.weight, 0.0, 1.0, generator=generator)

    def forward(self, x: Tensor) -> Tensor:
        u = self.layer1(x) / math.sqrt(2 * self.p)  # (N, n) pre-activations
        h = u * u if self.activation == "quadratic" else torch.relu(u)  # (N, n)
        return self.layer2(h) / self.width  # (N, p)

    @staticmethod
    def encode(a: Tensor, b: Tensor, p: int) -> Tensor:
        """concat(one_hot(a), one_hot(b)) as float32, shape (N, 2p)."""
        eye = torch.eye(p)
        return torch.cat([eye[a], eye[b]], dim=-1)


class ModAddTransformer(nn.Module):
    """One-layer transformer. Tokens (N, 3) = (a, b, p) where p is the "=" token → logits (N, p).

    Only the "=" position is read out and no later layer follows the MLP, so attention is
    computed for that query alone and the MLP is applied to that position alone; the logits
    are identical to running every position.
    """

    def __init__(self, p: int, d_model: int, n_heads: int, d_mlp: int):
        super().__init__()
        self.p, self.d_model, self.n_heads, self.d_mlp = p, d_model, n_heads, d_mlp
        self.d_head = d_model // n_heads
        self.embed = nn.Embedding(p + 1, d_model)  # W_E; token p is "="
        self.pos = nn.Parameter(torch.zeros(3, d_model))  # W_pos
        self.W_Q = nn.Linear(d_model, d_model, bias=False)
        self.W_K = nn.Linear(d_model, d_model, bias=False)
        self.W_V = nn.Linear(d_model, d_model, bias=False)
        self.W_O = nn.Linear(d_model, d_model, bias=False)
        self.mlp_in = nn.Linear(d_model, d_mlp)
        self.mlp_out = nn.Linear(d_mlp, d_model)
        self.unembed = nn.Linear(d_model, p, bias=False)  # W_U

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Nanda et al.'s initialisation: N(0, 1/d_model) weights, N(0, 1/p) unembedding,
        zero biases."""
        std = 1.0 / math.sqrt(self.d_model)
        for weight in (
            self.embed.weight,
            self.pos,
            self.W_Q.weight,
            self.W_K.weight,
            self.W_V.weight,
            self.W_O.weight,
            self.mlp_in.weight,
            self.mlp_out.weight,
        ):
            nn.init.normal_(weight, 0.0, std, generator=generator)
        nn.init.normal_(self.unembed.weight, 0.0, 1.0 / math.sqrt(self.p), generator=generator)
        nn.init.zeros_(self.mlp_in.bias)
        nn.init.zeros_(self.mlp_out.bias)

    def _attend(self, tokens: Tensor) -> Tensor:
        """Residual stream at "=" after the attention layer, shape (N, d_model)."""
        n, t = tokens.shape  # (N, 3)
        x = self.embed(tokens) + self.pos[:t]  # (N, T, d_model) residual stream
        heads = (n, t, self.n_heads, self.d_head)
        q = self.W_Q(x[:, -1]).view(n, self.n_heads, self.d_head)  # (N, H, d_head) at "="
        k = self.W_K(x).view(heads)  # (N, T, H, d_head)
        v = self.W_V(x).view(heads)  # (N, T, H, d_head)
        scores = torch.einsum("nhd,nthd->nht", q, k) / math.sqrt(self.d_head)  # (N, H, T)
        pattern = scores.softmax(dim=-1)  # the last query attends to every position (causal)
        z = torch.einsum("nht,nthd->nhd", pattern, v).reshape(n, self.d_model)  # (N, d_model)
        return x[:, -1] + self.W_O(z)

    def neuron_activations(self, tokens: Tensor) -> Tensor:
        """Post-ReLU MLP activations at "=", shape (N, d_mlp)."""
        return torch.relu(self.mlp_in(self._attend(tokens)))

    def forward(self, tokens: Tensor) -> Tensor:
        resid = self._attend(tokens)  # (N, d_model)
        resid = resid + self.mlp_out(torch.relu(self.mlp_in(resid)))  # (N, d_model)
        return self.unembed(resid)  # (N, p)
