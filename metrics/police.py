r"""Police sectors: parameter groups that carry no mean gradient and exist to cancel another
group's gradient noise through the loss curvature.

Sectors are disjoint groups of a network's parameters, given as bool masks (S, P) over the
flattened parameter vector. With per-example loss gradients :math:`g_n \in \mathbb{R}^P`
(n = 1..N), their mean :math:`\bar g`, H the Hessian of the mean loss over the N examples and
:math:`g_P` the entries of g in sector P:

.. math::  s_P = \frac{\lVert \bar g_P \rVert^2}{\lVert \bar g \rVert^2}, \qquad
           c_{PQ} = \frac{\lVert C_{PQ} \rVert_F}
                         {\sqrt{\lVert C_{PP} \rVert_F\, \lVert C_{QQ} \rVert_F}}, \qquad
           \kappa_{PQ} = \frac1N \sum_n g_{nP}^\top H_{PQ}\, g_{nQ},

the mean-gradient share (0 if :math:`\bar g = 0`), the coupling of the gradient noise, with
:math:`C_{PQ} = \frac1N \sum_n (g_{nP} - \bar g_P)(g_{nQ} - \bar g_Q)^\top` the population
cross-covariance, and the curvature coupling (κ_PQ = κ_QP as H is symmetric; its sign is what
matters). By Cauchy–Schwarz c ∈ [0, 1]; c_PP = 1, and c_PQ = 0 (P ≠ Q) when C_PP or C_QQ is 0.

With :math:`\tilde G` the centred gradients (N, P) and :math:`K_P = \tilde G_P \tilde G_P^\top`
(N × N), :math:`\lVert C_{PQ} \rVert_F^2 = \langle K_P, K_Q \rangle_F / N^2`, so c_PQ² is the
cosine between the data-space Grams K_P and K_Q. That form costs S N² memory and is used when
N does not exceed the number of sectored parameters; otherwise the parameter-space blocks of
:math:`\tilde G^\top \tilde G` are used. κ takes one batch of Hessian-vector products per
sector Q — the vectors :math:`g_n` masked to Q — which gives the whole column κ_{·Q}; the
expectation over n may be restricted to a subset of examples (H stays the Hessian of the mean
loss over all of them).

A sector P is a *police sector* of Q ≠ P when

.. math::  s_P \le s_{\max}, \qquad c_{PQ} \ge c_{\min}, \qquad \kappa_{PQ} < 0:

it has (almost) no mean gradient, its noise moves with Q's, and the curvature turns the two
against each other — a step along g_P undoes part of the loss change a step along g_Q makes.

Example — sector 1 has zero mean gradient, moves in lockstep against sector 0, and H couples
them positively, so it polices sector 0::

    >>> import torch
    >>> G = torch.tensor([[2.0, -1.0], [0.0, 1.0]], dtype=torch.float64)
    >>> sectors = torch.tensor([[True, False], [False, True]])
    >>> H = torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    >>> scores = police_scores(G, sectors, lambda V: V @ H)
    >>> scores.share.tolist(), scores.coupling[0, 1].item(), scores.curvature[1, 0].item()
    ([1.0, 0.0], 1.0, -0.5)
    >>> scores.police(share_max=0.01, coupling_min=0.5)
    [(1, 0)]
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Real

import pandas as pd
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vmap

from metrics.noise import Loss, per_example_gradients

Hvp = Callable[[Tensor], Tensor]


def _check_threshold(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {name}={value!r}")
    return float(value)


@dataclass(frozen=True)
class PoliceScores:
    """Police-sector scores of S sectors (module docstring), float64.

    ``share`` (S,) s_P; ``coupling`` (S, S) c_PQ, symmetric, diagonal 1; ``curvature`` (S, S)
    κ_PQ (row P, column Q).
    """

    share: Tensor
    coupling: Tensor
    curvature: Tensor

    def partner(self) -> Tensor:
        """(S,) long: the Q ≠ P maximising c_PQ (the first on ties)."""
        others = self.coupling.clone()
        others.fill_diagonal_(-math.inf)
        return others.argmax(1)

    def _flags(self, share_max: float, coupling_min: float) -> Tensor:
        """(S, S) bool: P (row) is police of Q (column)."""
        share_max = _check_threshold("share_max", share_max)
        coupling_min = _check_threshold("coupling_min", coupling_min)
        S = len(self.share)
        off_diagonal = ~torch.eye(S, dtype=torch.bool)
        return (
            (self.share <= share_max)[:, None]
            & (self.coupling >= coupling_min)
            & (self.curvature < 0)
            & off_diagonal
        )

    def police(self, share_max: float, coupling_min: float) -> list[tuple[int, int]]:
        """(P, Q) pairs, sorted, with s_P ≤ ``share_max``, c_PQ ≥ ``coupling_min``, κ_PQ < 0."""
        flags = self._flags(share_max, coupling_min)
        return [(int(p), int(q)) for p, q in flags.nonzero().tolist()]

    def table(self, share_max: float, coupling_min: float) -> pd.DataFrame:
        """One row per sector: ``sector``, ``share`` s_P, ``partner`` (the Q maximising c_PQ),
        ``coupling`` c with that partner, ``curvature`` κ with it, ``sign`` of that κ (−1/0/+1)
        and ``police`` (some Q ≠ P meets the three conditions, not necessarily the partner)."""
        flags = self._flags(share_max, coupling_min)
        partner = self.partner()
        rows = torch.arange(len(self.share))
        kappa = self.curvature[rows, partner]
        return pd.DataFrame(
            {
                "sector": rows.tolist(),
                "share": self.share.tolist(),
                "partner": partner.tolist(),
                "coupling": self.coupling[rows, partner].tolist(),
                "curvature": kappa.tolist(),
                "sign": torch.sign(kappa).long().tolist(),
                "police": flags.any(1).tolist(),
            }
        )


def _coupling(centred: Tensor, sectors: Tensor) -> Tensor:
    """c (S, S) from centred gradients (N, P) and disjoint masks (S, P), both as validated."""
    N = centred.shape[0]
    if N <= int(sectors.sum()):
        grams = torch.stack([centred[:, m] @ centred[:, m].T for m in sectors])  # (S, N, N)
        flat = grams.reshape(len(sectors), -1)
        inner = flat @ flat.T  # ⟨K_P, K_Q⟩ = N² ‖C_PQ‖_F²
    else:
        columns = torch.cat([m.nonzero()[:, 0] for m in sectors])
        labels = torch.cat([torch.full((int(m.sum()),), i) for i, m in enumerate(sectors)])
        Gs = centred[:, columns]
        onehot = nn.functional.one_hot(labels, len(sectors)).to(centred.dtype)  # (P_s, S)
        inner = onehot.T @ (Gs.T @ Gs) ** 2 @ onehot  # block sums of squares = N² ‖C_PQ‖_F²
    inner = inner.clamp(min=0)
    norms = inner.diagonal().sqrt()  # N ‖C_PP‖_F
    scale = norms[:, None] * norms[None, :]
    cosine = torch.where(scale > 0, inner / scale.where(scale > 0, 1), 0)
    coupling = cosine.clamp(0, 1).sqrt()
    coupling.fill_diagonal_(1)
    return coupling


def police_scores(
    gradients: Tensor,
    sectors: Tensor,
    hvp: Hvp,
    *,
    curvature_examples: Tensor | None = None,
) -> PoliceScores:
    """Share, coupling and curvature coupling of ``sectors`` (module docstring).

    Args:
        gradients: per-example loss gradients G (N, P), N ≥ 1.
        sectors: (S, P) bool, S ≥ 2 nonempty, disjoint masks; parameters in no sector count
            only in ‖ḡ‖² and H.
        hvp: V (k, P) ↦ H V (k, P) row by row, H the Hessian of the mean loss over the N
            examples (:func:`loss_hvp`; any symmetric matrix for planted cases).
        curvature_examples: example indices (n,) over which κ's mean is taken (default all);
            the HVP batches are (n, P) each, one per sector.

    Returns:
        :class:`PoliceScores`, float64.
    """
    if gradients.dim() != 2 or gradients.shape[0] < 1:
        raise ValueError(f"gradients must have shape (N ≥ 1, P), got {tuple(gradients.shape)}")
    if not torch.isfinite(gradients).all():
        raise ValueError("gradients contain NaN or Inf")
    N, P = gradients.shape
    if sectors.dtype != torch.bool or sectors.dim() != 2 or sectors.shape[1] != P:
        raise ValueError(
            f"sectors must be a bool matrix (S, P={P}), one mask per sector, got "
            f"{sectors.dtype} of shape {tuple(sectors.shape)}"
        )
    if len(sectors) < 2:
        raise ValueError(f"sectors must hold at least 2 masks, got {len(sectors)}")
    if not sectors.any(1).all():
        empty = (~sectors.any(1)).nonzero()[:, 0].tolist()
        raise ValueError(f"sectors must be nonempty; sectors {empty} select no parameter")
    if (sectors.sum(0) > 1).any():
        shared = (sectors.sum(0) > 1).nonzero()[:, 0].tolist()
        raise ValueError(f"sectors must be disjoint; parameters {shared[:10]} lie in several")
    if curvature_examples is None:
        examples = torch.arange(N)
    else:
        examples = torch.as_tensor(curvature_examples)
        if (
            examples.dim() != 1
            or len(examples) == 0
            or examples.dtype.is_floating_point
            or examples.dtype == torch.bool
            or not ((examples >= 0) & (examples < N)).all()
        ):
            raise ValueError(
                f"curvature_examples must be a nonempty 1-D tensor of example indices in "
                f"0..{N - 1}, got {examples.dtype} of shape {tuple(examples.shape)}"
            )
    G = gradients.detach().double()
    mean = G.mean(0)
    total = mean.square().sum()
    blocks = torch.stack([mean[m].square().sum() for m in sectors])
    share = blocks / total if total > 0 else torch.zeros_like(blocks)
    coupling = _coupling(G - mean, sectors)
    chosen = G[examples]  # (n, P)
    masks = sectors.to(G.dtype)
    columns = []
    for m in sectors:
        V = chosen * m
        HV = hvp(V)
        if HV.shape != V.shape:
            raise ValueError(
                f"hvp must map vectors (k, P) to (k, P), got {tuple(HV.shape)} for {tuple(V.shape)}"
            )
        columns.append(masks @ (HV.double() * chosen).sum(0) / len(examples))  # κ_{·Q}
    return PoliceScores(share, coupling, torch.stack(columns, dim=1))


def loss_hvp(
    model: nn.Module, loss: Loss, inputs: Tensor, targets: Tensor, *, chunk_size: int = 64
) -> Hvp:
    """Hessian-vector products of the mean loss over ``inputs``, ``targets`` (N, ...) each.

    The Hessian is taken w.r.t. the trainable parameters in ``model.named_parameters()`` order,
    each flattened — the columns of :func:`metrics.noise.per_example_gradients`. The returned
    function maps V (k, P) to H V (k, P) in the model's dtype, by forward-over-reverse
    differentiation (``jvp`` of ``grad``) vmapped over ``chunk_size`` vectors at a time; the
    model is not modified. ``loss(outputs (n, ...), targets (n, ...)) -> (n,)``.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, got chunk_size={chunk_size!r}")
    if len(inputs) != len(targets):
        raise ValueError(f"inputs ({len(inputs)}) and targets ({len(targets)}) differ in length")
    fixed = {n: p.detach() for n, p in model.named_parameters()}
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    shapes = [fixed[n].shape for n in names]
    sizes = [fixed[n].numel() for n in names]
    theta = torch.cat([fixed[n].reshape(-1) for n in names])

    def mean_loss(flat: Tensor) -> Tensor:
        params = {n: t.view(s) for n, t, s in zip(names, flat.split(sizes), shapes, strict=True)}
        value = loss(functional_call(model, {**fixed, **params}, (inputs,)), targets)
        if value.shape != (len(inputs),):
            raise ValueError(
                f"loss must return one value per example, got shape {tuple(value.shape)} "
                f"for {len(inputs)}"
            )
        return value.mean()

    def one(v: Tensor) -> Tensor:
        return jvp(grad(mean_loss), (theta,), (v,))[1]

    batched = vmap(one)

    def hvp(V: Tensor) -> Tensor:
        if V.dim() != 2 or V.shape[1] != len(theta):
            raise ValueError(f"V must have shape (k, P={len(theta)}), got {tuple(V.shape)}")
        V = V.to(theta.dtype)
        with warnings.catch_warnings():  # torch's first jvp loads jit-scripted decompositions
            warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")
            chunks = [batched(V[i : i + chunk_size]) for i in range(0, len(V), chunk_size)]
        return torch.cat(chunks)

    return hvp


def police_scores_for(
    model: nn.Module,
    loss: Loss,
    inputs: Tensor,
    targets: Tensor,
    sectors: Tensor,
    *,
    curvature_examples: Tensor | None = None,
    chunk_size: int = 64,
) -> PoliceScores:
    """:func:`police_scores` of ``model`` on ``inputs``, ``targets`` (N, ...): per-example
    gradients from :func:`metrics.noise.per_example_gradients`, H V from :func:`loss_hvp`
    (``chunk_size`` vectors at a time); ``sectors`` (S, P) over that parameter layout."""
    gradients, _ = per_example_gradients(model, loss, inputs, targets)
    hvp = loss_hvp(model, loss, inputs, targets, chunk_size=chunk_size)
    return police_scores(gradients, sectors, hvp, curvature_examples=curvature_examples)
