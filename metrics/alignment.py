r"""Per-channel blocks of the flattened eNTK and their centred alignment with a feature.

For a model with outputs y_1 … y_C on inputs x_1 … x_N, the flattened eNTK over (channel,
input) pairs (channel-major, ``metrics.operators``) has the diagonal block of channel c

.. math::  K_{cc}(x, x') = \sum_i \frac{\partial y_c(x)}{\partial\theta_i}
           \frac{\partial y_c(x')}{\partial\theta_i} = (J_c J_c^\top)(x, x'),

an N×N kernel: how a gradient step on channel c's output at x' moves that output at x.
:func:`channel_blocks` returns these blocks for every channel (or a chosen few) without
forming the off-diagonal blocks.

The centred kernel–target alignment (Cortes, Mohri & Rostamizadeh 2012, "Algorithms for
Learning Kernels Based on Centered Alignment", JMLR 13) of a kernel K (N, N) with a target
t (N,) is

.. math::  \rho = \frac{\tilde t^\top \tilde K \tilde t}{\lVert\tilde K\rVert_F\,
           \lVert\tilde t\rVert^2}, \qquad \tilde K = H K H,\ \tilde t = H t,\
           H = I - \mathbf{1}\mathbf{1}^\top / N,

i.e. the cosine between H K H and the rank-one kernel t̃ t̃ᵀ (‖t̃ t̃ᵀ‖_F = ‖t̃‖²). For a
positive semi-definite K it lies in [0, 1] (Cauchy–Schwarz); it is 1 when K̃ ∝ t̃ t̃ᵀ.
:func:`centered_alignment` returns 0 where it is undefined (K̃ = 0 or t̃ = 0): such a kernel
sees nothing of the target.

Example — a kernel built from the target itself is perfectly aligned::

    >>> import torch
    >>> t = torch.rand(6, dtype=torch.float64)
    >>> round(centered_alignment(torch.outer(t, t) + 3.0, t).item(), 12)
    1.0
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from metrics.entk import DEFAULT_JACOBIAN_BYTES
from metrics.jacobians import generic_jacobians


def channel_blocks(
    model: nn.Module,
    inputs: Tensor,
    channels: Sequence[int] | None = None,
    *,
    max_jacobian_bytes: int = DEFAULT_JACOBIAN_BYTES,
) -> Tensor:
    """Diagonal blocks K_cc = J_c J_cᵀ of the flattened eNTK of all trainable parameters.

    Args:
        model: the network (copied to float64); outputs (n, ...) are flattened to (n, C).
        inputs: (N, ...) inputs.
        channels: output indices c (default all C), in the order returned.
        max_jacobian_bytes: memory bound for one chunk of per-example Jacobians (chunk · R · P
            float64 numbers, R = len(channels)); chunks beyond it are recomputed.

    Returns:
        float64 Tensor (R, N, N): block r is the kernel of output ``channels[r]``.
    """
    model64 = copy.deepcopy(model).double().eval()
    x = inputs.double() if inputs.is_floating_point() else inputs
    with torch.no_grad():
        n_outputs = model64(x[:1]).reshape(1, -1).shape[1]
    if channels is None:
        channels = range(n_outputs)
    channels = [int(c) for c in channels]
    if not channels or not all(0 <= c < n_outputs for c in channels):
        raise ValueError(
            f"channels must be a non-empty list of output indices in 0..{n_outputs - 1}, "
            f"got channels={channels}"
        )
    index = torch.tensor(channels)
    names = [n for n, p in model64.named_parameters() if p.requires_grad]
    P = sum(p.numel() for p in model64.parameters() if p.requires_grad)
    R, N = len(channels), len(x)
    chunk = max(1, max_jacobian_bytes // (R * P * 8))

    def readout(z: Tensor) -> Tensor:
        return z.reshape(len(z), -1)[:, index]

    def jacobians(start: int):
        for s, J in generic_jacobians(model64, x[start:], readout, names, chunk):
            yield start + s, J.transpose(0, 1)  # (R, n, P)

    K = torch.zeros(R, N, N, dtype=torch.float64)
    for si, Ji in jacobians(0):
        ei = si + Ji.shape[1]
        K[:, si:ei, si:ei] = Ji @ Ji.transpose(1, 2)
        if ei < N:
            for sj, Jj in jacobians(ei):
                block = Ji @ Jj.transpose(1, 2)
                ej = sj + Jj.shape[1]
                K[:, si:ei, sj:ej] = block
                K[:, sj:ej, si:ei] = block.transpose(1, 2)
    return K


def centered_alignment(kernels: Tensor, targets: Tensor) -> Tensor:
    """Centred kernel–target alignment ρ of each kernel with its target (module docstring).

    Args:
        kernels: (N, N) or a batch (B, N, N) of symmetric kernels.
        targets: (N,) or (B, N), one target per kernel.

    Returns:
        float64 Tensor () or (B,); 0 where K̃ = 0 or t̃ = 0.
    """
    K = torch.as_tensor(kernels).double()
    t = torch.as_tensor(targets).double()
    single = K.dim() == 2
    if single:
        K, t = K[None], t[None]
    if K.dim() != 3 or K.shape[1] != K.shape[2] or t.shape != K.shape[:2]:
        raise ValueError(
            "kernels must be (N, N) or (B, N, N) and targets (N,) or (B, N) to match, got "
            f"kernels {tuple(torch.as_tensor(kernels).shape)} and targets "
            f"{tuple(torch.as_tensor(targets).shape)}"
        )
    if not (torch.isfinite(K).all() and torch.isfinite(t).all()):
        raise ValueError("kernels and targets must be finite")
    Kc = K - K.mean(1, keepdim=True) - K.mean(2, keepdim=True) + K.mean((1, 2), keepdim=True)
    tc = t - t.mean(1, keepdim=True)
    numerator = torch.einsum("bn,bnm,bm->b", tc, Kc, tc)
    denominator = torch.linalg.matrix_norm(Kc) * tc.pow(2).sum(1)
    rho = torch.where(
        denominator > 0, numerator / denominator.clamp_min(1e-300), torch.zeros_like(numerator)
    )
    return rho[0] if single else rho
