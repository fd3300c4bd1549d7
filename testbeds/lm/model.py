"""A tiny decoder-only transformer, in one readable file.

Pre-LayerNorm blocks of causal multi-head attention and a GELU MLP, learned token and
position embeddings, an untied unembedding. LayerNorms have no learned gain or bias, so every
parameter lives in an ``nn.Linear`` or ``nn.Embedding`` module and the eNTK engine can use its
structured per-layer products for all of them.

:class:`LastTokenLogProbs` wraps a model so that its output is the next-token
log-distribution at the last position, (N, V) — the readout the claims' kernels use.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Block(nn.Module):
    """x ← x + Attn(LN(x)); x ← x + MLP(LN(x))."""

    def __init__(self, d_model: int, n_heads: int, d_mlp: int):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.W_Q = nn.Linear(d_model, d_model, bias=False)
        self.W_K = nn.Linear(d_model, d_model, bias=False)
        self.W_V = nn.Linear(d_model, d_model, bias=False)
        self.W_O = nn.Linear(d_model, d_model, bias=False)
        self.mlp_in = nn.Linear(d_model, d_mlp)
        self.mlp_out = nn.Linear(d_mlp, d_model)

    def attention(self, x: Tensor, queries: int | None = None) -> Tensor:
        """Causal self-attention of ``x`` (N, T, d_model); with ``queries``, only the last
        ``queries`` positions' outputs are formed (the others are W_O(0)), see :meth:`mix`."""
        n, t, d = x.shape  # (N, T, d_model)
        heads = (n, t, self.n_heads, self.d_head)
        q = self.W_Q(x).view(heads)
        k = self.W_K(x).view(heads)
        v = self.W_V(x).view(heads)
        return self.W_O(self.mix(q, k, v, queries))

    def mix(self, q: Tensor, k: Tensor, v: Tensor, queries: int | None = None) -> Tensor:
        """The heads' outputs (N, T, d_model) from queries, keys and values (N, T, H, d_head).

        With ``queries`` = m, the attention pattern is formed for the last m query rows only and
        is 0 elsewhere. The products keep their shapes and the softmax is taken row by row, so
        those rows are bit for bit those of the whole pattern: on the CPU a softmax over fewer
        than 16 (float32) keys runs element by element and dominated the cost of decoding."""
        n, t = q.shape[:2]
        scores = torch.einsum("nqhd,nkhd->nhqk", q, k) / math.sqrt(self.d_head)  # (N, H, T, T)
        future = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
        if queries is None or queries >= t:
            pattern = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
        else:
            rows = slice(t - queries, t)
            pattern = torch.zeros_like(scores)
            pattern[:, :, rows] = (
                scores[:, :, rows].masked_fill(future[rows], float("-inf")).softmax(dim=-1)
            )
        return torch.einsum("nhqk,nkhd->nqhd", pattern, v).reshape(n, t, -1)

    def forward(self, x: Tensor, queries: int | None = None) -> Tensor:
        x = x + self.attention(F.layer_norm(x, x.shape[-1:]), queries)
        return x + self.mlp_out(F.gelu(self.mlp_in(F.layer_norm(x, x.shape[-1:]))))

    def extend(self, x: Tensor, cache: dict[str, Tensor]) -> Tensor:
        """:meth:`forward` of the last positions ``x`` (N, t, d_model) of a sequence whose
        earlier positions' queries, keys and values are in ``cache`` (updated in place).

        Only the new positions go through the projections and the MLP; the attention
        products keep the whole sequence's shapes, as in :meth:`forward` (the pattern is formed
        for the new rows only, :meth:`mix`), so that the
        new positions' outputs equal those of the whole sequence's forward pass, bit for bit
        wherever the projections give each row the same bits whatever the number of rows
        (trainable weights on MKL's CPU GEMM; see ``sample_continuations``)."""
        h = F.layer_norm(x, x.shape[-1:])
        for name, proj in (("q", self.W_Q), ("k", self.W_K), ("v", self.W_V)):
            new = proj(h)
            cache[name] = new if name not in cache else torch.cat([cache[name], new], dim=1)
        n, t, _ = cache["q"].shape
        heads = (n, t, self.n_heads, self.d_head)
        q, k, v = (cache[name].view(heads) for name in "qkv")
        z = self.mix(q, k, v, queries=x.shape[1])
        x = x + self.W_O(z[:, t - x.shape[1] :])
        return x + self.mlp_out(F.gelu(self.mlp_in(F.layer_norm(x, x.shape[-1:]))))


class TinyLM(nn.Module):
    """Tokens (N, T) with T ≤ context → next-token logits (N, T, V)."""

    def __init__(
        self, vocab: int, context: int, d_model: int, n_heads: int, n_layers: int, d_mlp: int
    ):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.vocab, self.context = vocab, context
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, d_mlp) for _ in range(n_layers))
        self.unembed = nn.Linear(d_model, vocab, bias=False)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """GPT-2's initialisation: N(0, 0.02²) weights, residual-output projections scaled by
        1/√(2·n_layers), zero biases."""
        scaled = 0.02 / math.sqrt(2 * len(self.blocks))
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                std = scaled if name.endswith(("W_O.weight", "mlp_out.weight")) else 0.02
                nn.init.normal_(p, 0.0, std, generator=generator)

    def residual(self, tokens: Tensor, last_only: bool = False) -> Tensor:
        """Final normalised residual stream (N, T, d_model). With ``last_only`` the last block
        forms attention for the last position only (:meth:`Block.mix`): that position's row is
        the same, bit for bit, and the other rows are not the model's."""
        if tokens.shape[-1] > self.context:
            raise ValueError(
                f"sequences are at most context={self.context} tokens, got {tokens.shape[-1]}"
            )
        positions = torch.arange(tokens.shape[-1], device=tokens.device).expand_as(tokens)
        x = self.embed(tokens) + self.pos(positions)  # (N, T, d_model)
        for i, block in enumerate(self.blocks):
            x = block(x, 1 if last_only and i == len(self.blocks) - 1 else None)
        return F.layer_norm(x, x.shape[-1:])

    def forward(self, tokens: Tensor) -> Tensor:
        return self.unembed(self.residual(tokens))

    def last_logits(self, tokens: Tensor) -> Tensor:
        """``self(tokens)[:, -1]`` (N, V), bit for bit, from one whole forward pass whose last
        block forms attention for the last position only. Every product keeps the shape of
        the whole pass, so the result does not depend on whether the weights are trainable;
        for sampling from frozen weights, not for gradients."""
        return self.unembed(self.residual(tokens, last_only=True))[:, -1]

    def next_token_logits(self, tokens: Tensor, caches: list[dict[str, Tensor]]) -> Tensor:
        """``self(tokens)[:, -1]`` (N, V) for a sequence grown by appending tokens: ``caches``
        (one dict per block, empty at first) keep what earlier calls computed, so each call
        runs the projections and MLPs on the new positions only. The full forward pass's
        last position (see :meth:`Block.extend`); for sampling, not for gradients."""
        seen = caches[0]["q"].shape[1] if caches and caches[0] else 0
        new = tokens[:, seen:]
        if tokens.shape[-1] > self.context:
            raise ValueError(
                f"sequences are at most context={self.context} tokens, got {tokens.shape[-1]}"
            )
        positions = torch.arange(seen, tokens.shape[-1], device=tokens.device).expand_as(new)
        x = self.embed(new) + self.pos(positions)
        while len(caches) < len(self.blocks):
            caches.append({})
        for block, cache in zip(self.blocks, caches, strict=True):
            x = block.extend(x, cache)
        return self.unembed(F.layer_norm(x[:, -1], x.shape[-1:]))


class LastTokenLogProbs(nn.Module):
    """``model`` read out as log P(next token | prompt) at the last position, (N, V)."""

    def __init__(self, model: TinyLM):
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor) -> Tensor:
        return torch.log_softmax(self.model(tokens)[:, -1], dim=-1)
