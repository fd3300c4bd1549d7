"""The two modular-addition networks, each in a few readable lines.

* :class:`ModAddMLP` — Gromov (2023), "Grokking modular arithmetic": one hidden layer,
  f(x) = (1/n) W₂ φ(W₁ x / √(2p)), φ(u) = u² (or ReLU), x = concat(one_hot(a), one_hot(b)).
* :class:`ModAddTransformer` — Nanda et al. (2023), "Progress measures for grokking": one
  attention layer (causal, no LayerNorm) and one ReLU MLP over tokens (a, b, =); with
  keywords, the variant of Lin (2025)'s code (no MLP biases, p + 1 unembedding rows, its
  initial scales).

Parameters live in ``nn.Linear`` / ``nn.Embedding`` modules wherever the maths allows, so the
eNTK engine can use its structured per-layer products; the positional embedding is a plain
``nn.Parameter`` and goes through the engine's generic path.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

INITS = ("nanda", "lin2025")  # ModAddTransformer's initial scales (its reset_parameters)


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

    def hidden(self, x: Tensor) -> Tensor:
        """Hidden-neuron activations (N, n)."""
        u = self.layer1(x) / math.sqrt(2 * self.p)  # (N, n) pre-activations
        return u * u if self.activation == "quadratic" else torch.relu(u)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer2(self.hidden(x)) / self.width  # (N, p)

    @staticmethod
    def encode(a: Tensor, b: Tensor, p: int) -> Tensor:
        """concat(one_hot(a), one_hot(b)) as float32, shape (N, 2p)."""
        eye = torch.eye(p)
        return torch.cat([eye[a], eye[b]], dim=-1)


class ModAddTransformer(nn.Module):
    """One-layer transformer. Tokens (N, 3) = (a, b, p) where p is the "=" token → logits (N, p).

    Two variants of one architecture, chosen by keyword:

    * Nanda et al. (2023) (the defaults): MLP biases, an unembedding W_U with p rows, weights
      N(0, 1/d_model) (``init="nanda"``).
    * Lin (2025)'s code (arXiv 2510.00468, Table 2): no MLP biases (``mlp_bias=False``), W_U
      with p + 1 rows, one per token, "=" included (``unembed_eq=True``), and the MLP's input
      weights N(0, 1/d_mlp) (``init="lin2025"``).

    ``forward`` returns the first p logits, the answers 0 … p − 1; the "=" row of W_U is read by
    nothing (the paper's loss and accuracy read ``logits[:, :p]``), so training, the eNTK
    readouts, the leaderboard and the claims all see the same p outputs, and that row gets no
    gradient (weight decay alone shrinks it). :meth:`token_logits` returns every row.

    Only the "=" position is read out and no later layer follows the MLP, so attention is
    computed for that query alone and the MLP is applied to that position alone; the logits
    are identical to running every position with a causal mask.
    """

    def __init__(
        self,
        p: int,
        d_model: int,
        n_heads: int,
        d_mlp: int,
        *,
        mlp_bias: bool = True,
        unembed_eq: bool = False,
        init: str = "nanda",
    ):
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got init={init!r}")
        self.p, self.d_model, self.n_heads, self.d_mlp = p, d_model, n_heads, d_mlp
        self.d_head = d_model // n_heads
        self.init = init
        self.embed = nn.Embedding(p + 1, d_model)  # W_E; token p is "="
        self.pos = nn.Parameter(torch.zeros(3, d_model))  # W_pos
        self.W_Q = nn.Linear(d_model, d_model, bias=False)
        self.W_K = nn.Linear(d_model, d_model, bias=False)
        self.W_V = nn.Linear(d_model, d_model, bias=False)
        self.W_O = nn.Linear(d_model, d_model, bias=False)
        self.mlp_in = nn.Linear(d_model, d_mlp, bias=mlp_bias)
        self.mlp_out = nn.Linear(d_mlp, d_model, bias=mlp_bias)
        self.unembed = nn.Linear(d_model, p + 1 if unembed_eq else p, bias=False)  # W_U

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Every weight N(0, 1/d_model) except: W_U N(0, 1/rows of W_U) (1/p, or 1/(p + 1)
        with the "=" row), and with ``init="lin2025"`` the MLP's input weights N(0, 1/d_mlp).
        Biases (if any) start at zero."""
        std = 1.0 / math.sqrt(self.d_model)
        mlp_in_std = 1.0 / math.sqrt(self.d_mlp) if self.init == "lin2025" else std
        unembed_std = 1.0 / math.sqrt(self.unembed.out_features)
        for weight, scale in (
            (self.embed.weight, std),
            (self.pos, std),
            (self.W_Q.weight, std),
            (self.W_K.weight, std),
            (self.W_V.weight, std),
            (self.W_O.weight, std),
            (self.mlp_in.weight, mlp_in_std),
            (self.mlp_out.weight, std),
            (self.unembed.weight, unembed_std),
        ):
            nn.init.normal_(weight, 0.0, scale, generator=generator)
        for layer in (self.mlp_in, self.mlp_out):
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def _mixed(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """The residual stream at "=" before attention (N, d_model) and the heads' mixed values
        there, z (N, d_model): head h's are columns h·d_head … (h + 1)·d_head − 1."""
        n, t = tokens.shape  # (N, 3)
        x = self.embed(tokens) + self.pos[:t]  # (N, T, d_model) residual stream
        heads = (n, t, self.n_heads, self.d_head)
        q = self.W_Q(x[:, -1]).view(n, self.n_heads, self.d_head)  # (N, H, d_head) at "="
        k = self.W_K(x).view(heads)  # (N, T, H, d_head)
        v = self.W_V(x).view(heads)  # (N, T, H, d_head)
        scores = torch.einsum("nhd,nthd->nht", q, k) / math.sqrt(self.d_head)  # (N, H, T)
        pattern = scores.softmax(dim=-1)  # the last query attends to every position (causal)
        z = torch.einsum("nht,nthd->nhd", pattern, v).reshape(n, self.d_model)  # (N, d_model)
        return x[:, -1], z

    def _attend(self, tokens: Tensor) -> Tensor:
        """Residual stream at "=" after the attention layer, shape (N, d_model)."""
        x, z = self._mixed(tokens)
        return x + self.W_O(z)

    def heads(self) -> list[dict[str, tuple[int, list[int]]]]:
        """Each attention head's parameters as ``{name: (axis, indices)}``: its rows of W_Q,
        W_K, W_V and its columns of W_O."""
        out = []
        for h in range(self.n_heads):
            block = list(range(h * self.d_head, (h + 1) * self.d_head))
            head = {f"{m}.weight": (0, block) for m in ("W_Q", "W_K", "W_V")}
            out.append({**head, "W_O.weight": (1, block)})
        return out

    def head_outputs(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """The residual stream at "=" before attention (N, d_model) and what each head writes
        into it (N, H, d_model); :meth:`_attend` is their sum, up to rounding."""
        x, z = self._mixed(tokens)
        n = len(z)
        W_O = self.W_O.weight.view(self.d_model, self.n_heads, self.d_head)
        return x, torch.einsum("nhe,dhe->nhd", z.view(n, self.n_heads, self.d_head), W_O)

    def neuron_activations(self, tokens: Tensor) -> Tensor:
        """Post-ReLU MLP activations at "=", shape (N, d_mlp)."""
        return torch.relu(self.mlp_in(self._attend(tokens)))

    def token_logits(self, tokens: Tensor) -> Tensor:
        """Every row of W_U read at "=", shape (N, p) or (N, p + 1) with the "=" row."""
        resid = self._attend(tokens)  # (N, d_model)
        resid = resid + self.mlp_out(torch.relu(self.mlp_in(resid)))  # (N, d_model)
        return self.unembed(resid)  # (N, rows of W_U)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.token_logits(tokens)[:, : self.p]  # (N, p): the answers 0 … p − 1
