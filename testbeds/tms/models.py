"""The toy model of Elhage et al. (2022), several independent instances side by side."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class TMSModel(nn.Module):
    """``n_instances`` independent models h = W x, y = ReLU(Wᵀ h + b).

    Parameters: ``W`` (I, m, n) — column ``W[i, :, j]`` is feature j's direction in instance
    i's hidden space — and ``b`` (I, n). Inputs (B, I, n) give outputs (B, I, n); a
    single-instance model also takes (B, n) and returns (B, n).
    """

    def __init__(self, n_features: int, n_hidden: int, n_instances: int = 1):
        super().__init__()
        self.n_features, self.n_hidden, self.n_instances = n_features, n_hidden, n_instances
        self.W = nn.Parameter(torch.empty(n_instances, n_hidden, n_features))
        self.b = nn.Parameter(torch.zeros(n_instances, n_features))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Xavier-normal W per instance (std √(2 / (m + n))) and zero bias, as in Elhage
        et al.'s notebook."""
        std = math.sqrt(2.0 / (self.n_hidden + self.n_features))
        with torch.no_grad():
            self.W.copy_(torch.randn(self.W.shape, generator=generator) * std)
            self.b.zero_()

    def hidden(self, x: Tensor) -> Tensor:
        """h = W x: (B, I, n) → (B, I, m), or (B, n) → (B, m) for one instance."""
        squeeze = self._check(x)
        h = torch.einsum("imn,bin->bim", self.W, x.unsqueeze(1) if squeeze else x)
        return h.squeeze(1) if squeeze else h

    def preactivation(self, x: Tensor) -> Tensor:
        """p = Wᵀ W x + b, the input of the ReLU: (B, I, n) → (B, I, n), or (B, n) → (B, n).
        Channel c's *gate* (the ReLU's derivative) is on where p_c > 0."""
        squeeze = self._check(x)
        x = x.unsqueeze(1) if squeeze else x
        h = torch.einsum("imn,bin->bim", self.W, x)
        p = torch.einsum("imn,bim->bin", self.W, h) + self.b
        return p.squeeze(1) if squeeze else p

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.preactivation(x))

    def channel_blocks(self, x: Tensor) -> Tensor:
        r"""The diagonal blocks of the flattened eNTK of a single-instance model, in closed form.

        For inputs X (N, n), H = X Wᵀ (N, m), pre-activations p = H W + b and gates
        g_c(x) = [p_c(x) > 0] (torch's ReLU′(0) = 0), the gradient of y_c = ReLU(p_c) is
        g_c(x) (∂p_c/∂W = (Wx) e_cᵀ + W_c xᵀ, ∂p_c/∂b = e_c), so the (c, c) block of the
        flattened eNTK of (W, b) is

        .. math::  K_{cc}(x, x') = g_c(x)\,g_c(x')\,\bigl[h\cdot h' + (h\cdot W_c)\,x'_c
                   + (h'\cdot W_c)\,x_c + \lVert W_c\rVert^2\,x\cdot x' + 1\bigr],

        with h = W x. The same blocks as ``metrics.alignment.channel_blocks`` (tested), without
        per-example Jacobians. Returns float64 (n, N, N).
        """
        if self.n_instances != 1 or x.dim() != 2 or x.shape[1] != self.n_features:
            raise ValueError(
                f"channel_blocks needs a single-instance model and inputs (N, {self.n_features}), "
                f"got {self.n_instances} instances and inputs {tuple(x.shape)}"
            )
        W, b, X = self.W.detach()[0].double(), self.b.detach()[0].double(), x.detach().double()
        H = X @ W.T  # (N, m)
        U = H @ W  # (N, n): column c is h · W_c
        gates = (U + b > 0).double()  # (N, n)
        shared = H @ H.T + 1.0  # (N, N)
        inner = X @ X.T  # (N, N)
        norms = W.pow(2).sum(0)  # (n,)
        out = torch.empty(self.n_features, len(X), len(X), dtype=torch.float64)
        for c in range(self.n_features):
            cross = torch.outer(U[:, c], X[:, c])
            K = shared + cross + cross.T + norms[c] * inner
            out[c] = K * torch.outer(gates[:, c], gates[:, c])
        return out

    def _check(self, x: Tensor) -> bool:
        I, n = self.n_instances, self.n_features
        if x.dim() == 2 and I == 1 and x.shape[1] == n:
            return True
        if x.dim() == 3 and x.shape[1:] == (I, n):
            return False
        single = f" or (B, {n})" if I == 1 else ""
        raise ValueError(f"inputs must have shape (B, {I}, {n}){single}, got {tuple(x.shape)}")

    def instance(self, i: int) -> TMSModel:
        """A single-instance copy of instance ``i`` (parameters copied, not shared)."""
        if not 0 <= i < self.n_instances:
            raise ValueError(f"instance must be in 0..{self.n_instances - 1}, got instance={i}")
        single = TMSModel(self.n_features, self.n_hidden, 1).to(self.W)
        with torch.no_grad():
            single.W.copy_(self.W[i : i + 1])
            single.b.copy_(self.b[i : i + 1])
        return single

    @classmethod
    def from_weights(cls, W: Tensor, b: Tensor | None = None) -> TMSModel:
        """A single-instance model with the given W (m, n) and bias b (n,) (default 0)."""
        if W.dim() != 2:
            raise ValueError(f"W must have shape (m, n), got {tuple(W.shape)}")
        m, n = W.shape
        if b is not None and b.shape != (n,):
            raise ValueError(f"b must have shape ({n},), got {tuple(b.shape)}")
        model = cls(n, m, 1).to(W.dtype)
        with torch.no_grad():
            model.W.copy_(W[None])
            model.b.copy_(b[None] if b is not None else torch.zeros(1, n, dtype=W.dtype))
        return model
