r"""The empirical neural tangent kernel, in data space and parameter space.

For a model f(x; θ) with C outputs and readouts y_r = ρ(f(x))_r (the outputs themselves, their
sum, one of them, or any scalar phenotype), the eNTK restricted to a parameter group g is

.. math::  \Theta^{g}_{rs}(x, x') = \sum_{i \in g}
           \frac{\partial y_r(x)}{\partial\theta_i}\frac{\partial y_s(x')}{\partial\theta_i},

and the full kernel is the sum over groups. ``output`` picks the reduction:

* ``"trace"`` — class average :math:`\frac1C\sum_c \Theta_{cc}`, an (N, N) kernel;
* ``"sum"`` — the kernel of :math:`\sum_c f_c`, (N, N);
* ``"full"`` — every class pair, (N, N, C, C);
* an ``int`` c — the kernel of output c, (N, N);
* a callable ρ mapping outputs (n, C) to one scalar per example (n,) — a loss, a probe, a
  score — giving its (N, N) kernel.

Parameters of ``nn.Linear`` / ``nn.Embedding`` modules use structured per-layer products
(Novak et al. 2022): Θ = Σ_{t,t'} (X_t X_{t'}ᵀ) ∘ (Y_t Y_{t'}ᵀ); the N·C·P Jacobian is never
formed. Other parameters use chunked ``torch.func`` Jacobians with bounded memory.

Example — the kernel of a two-layer network is the sum of its layers' kernels::

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    >>> x = torch.randn(4, 3)
    >>> layers = entk(net, x, by_layer=True)
    >>> list(layers)
    ['0', '2']
    >>> torch.allclose(sum(layers.values()), entk(net, x), atol=1e-6)
    True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain

import torch
from torch import Tensor, nn

from metrics.jacobians import Factors, Readout, generic_jacobians, structured_factors

OUTPUTS = ("trace", "sum", "full")
Output = str | int | Callable[[Tensor], Tensor]
UnitSpec = Mapping[str, tuple[int, int | Sequence[int]]]

DEFAULT_CHUNK = 1024
DEFAULT_JACOBIAN_BYTES = 2**28


def readout_for(output: Output, n_outputs: int | None = None) -> tuple[Readout, bool]:
    """The readout map (n, C) → (n, R) for ``output`` and whether the kernel keeps the (R, R)
    axes (``"full"``) instead of averaging over them."""
    if isinstance(output, str) and output in OUTPUTS:
        if output == "sum":
            return (lambda z: z.reshape(len(z), -1).sum(-1, keepdim=True)), False
        return (lambda z: z.reshape(len(z), -1)), output == "full"
    if isinstance(output, int) and not isinstance(output, bool):
        if n_outputs is not None and not 0 <= output < n_outputs:
            raise ValueError(f"output index must be in 0..{n_outputs - 1}, got output={output}")
        return (lambda z: z.reshape(len(z), -1)[:, output : output + 1]), False
    if callable(output) and not isinstance(output, str):

        def phenotype(z: Tensor) -> Tensor:
            value = output(z)
            if value.shape != (len(z),):
                raise ValueError(
                    f"a callable output must map outputs {tuple(z.shape)} to shape "
                    f"({len(z)},), one scalar per example; got {tuple(value.shape)}"
                )
            return value[:, None]

        return phenotype, False
    raise ValueError(
        f"output must be one of {OUTPUTS}, an int class index or a callable readout, "
        f"got output={output!r}"
    )


def parameter_groups(
    model: nn.Module, groups: Mapping[str, Sequence[str]] | None = None
) -> dict[str, list[str]]:
    """Resolve parameter groups to parameter names.

    Default: one group per module holding parameters directly, named by its qualified name
    (a parameter of the root module forms its own group). A user group lists parameter names
    or module names (a module stands for all its parameters). Groups must not overlap.
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if groups is None:
        out: dict[str, list[str]] = {}
        for name in params:
            owner, _, leaf = name.rpartition(".")
            out.setdefault(owner or leaf, []).append(name)
        return out
    out, seen = {}, {}
    for group, members in groups.items():
        if isinstance(members, str):
            members = [members]
        names = []
        for member in members:
            match = [n for n in params if n == member or n.startswith(member + ".")]
            if not match:
                raise ValueError(
                    f"group {group!r}: {member!r} is neither a trainable parameter nor a module "
                    f"with parameters; parameters are {sorted(params)}"
                )
            names += match
        for name in names:
            if name in seen and seen[name] != group:
                raise ValueError(
                    f"groups must not overlap: {name!r} is in {seen[name]!r} and {group!r}"
                )
            seen[name] = group
        out[group] = list(dict.fromkeys(names))
    return out


def _position_grams(F: Tensor, kind: str) -> dict[tuple[int, int], Tensor]:
    """Grams between positions t ≤ s of a factor: X (N, T, d) → (N, N); Y (N, T, R, d) →
    (N, N) averaged over readouts (``kind="mean"``) or (N, N, R, R) (``kind="full"``)."""
    n, T = F.shape[:2]
    if kind == "x":
        flat = [F[:, t] for t in range(T)]  # (N, d)
    elif kind == "mean":
        flat = [F[:, t].reshape(n, -1) for t in range(T)]  # (N, R·d)
    else:
        flat = [F[:, t] for t in range(T)]  # (N, R, d)
    grams = {}
    for t in range(T):
        for s in range(t, T):
            if kind == "full":
                grams[t, s] = torch.einsum("nrd,msd->nmrs", flat[t], flat[s])
            elif kind == "mean":
                grams[t, s] = flat[t] @ flat[s].T / F.shape[2]
            else:
                grams[t, s] = flat[t] @ flat[s].T
    return grams


def _hadamard_sum(gx: dict, gy: dict, full: bool) -> Tensor:
    """Σ_{t,s} gx[t,s] ∘ gy[t,s] over all position pairs, using the symmetry of t ↔ s."""
    total = None
    for (t, s), a in gx.items():
        term = a[:, :, None, None] * gy[t, s] if full else a * gy[t, s]
        if s != t:
            term = term + (term.permute(1, 0, 3, 2) if full else term.T)
        total = term if total is None else total + term
    return total


def _structured_kernel(f: Factors, full: bool) -> Tensor:
    return _hadamard_sum(
        _position_grams(f.X, "x"), _position_grams(f.Y, "full" if full else "mean"), full
    )


def _generic_kernel(model, inputs, readout, names, full, R, max_bytes) -> Tensor:
    """Σ over chunk pairs of J_i J_jᵀ; chunks beyond the memory budget are recomputed."""
    P = sum(dict(model.named_parameters())[n].numel() for n in names)
    itemsize = next(model.parameters()).element_size()
    chunk = max(1, max_bytes // max(1, R * P * itemsize))
    N = len(inputs)
    K = inputs.new_zeros((N, N, R, R) if full else (N, N), dtype=next(model.parameters()).dtype)
    for si, Ji in generic_jacobians(model, inputs, readout, names, chunk):
        ei = si + len(Ji)
        rest = (
            (ei + s, J) for s, J in generic_jacobians(model, inputs[ei:], readout, names, chunk)
        )
        for sj, Jj in chain([(si, Ji)], rest):
            ej = sj + len(Jj)
            if full:
                block = torch.einsum("nrp,msp->nmrs", Ji, Jj)
                K[si:ei, sj:ej] = block
                K[sj:ej, si:ei] = block.permute(1, 0, 3, 2)
            else:
                block = Ji.reshape(len(Ji), -1) @ Jj.reshape(len(Jj), -1).T / R
                K[si:ei, sj:ej] = block
                K[sj:ej, si:ei] = block.T
    return K


def _prepare(model: nn.Module, inputs: Tensor, output: Output):
    param = next(model.parameters())
    inputs = inputs.to(param.device)
    if inputs.is_floating_point():
        inputs = inputs.to(param.dtype)
    with torch.no_grad():
        z = model(inputs[:1])
    readout, full = readout_for(output, z.reshape(1, -1).shape[1])
    return inputs, readout, full, readout(z).shape[1]


def entk(
    model: nn.Module,
    inputs: Tensor,
    *,
    output: Output = "trace",
    by_layer: bool = False,
    groups: Mapping[str, Sequence[str]] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    max_jacobian_bytes: int = DEFAULT_JACOBIAN_BYTES,
) -> Tensor | dict[str, Tensor]:
    """The empirical NTK of ``model`` on ``inputs`` (N, ...).

    Args:
        output: the reduction over outputs (module docstring).
        by_layer: return an ordered dict group name → kernel (whose sum is the full kernel)
            instead of the sum.
        groups: group name → parameter or module names (default: one group per module).
            Only parameters in some group contribute.
        chunk_size: inputs per forward/backward pass on the structured path.
        max_jacobian_bytes: memory bound for a chunk of generic per-example Jacobians.

    Returns:
        Tensor (N, N), or (N, N, C, C) for ``output="full"`` (dtype of the model), or a dict
        of those when ``by_layer``.
    """
    inputs, readout, full, R = _prepare(model, inputs, output)
    resolved = parameter_groups(model, groups)
    names = [n for members in resolved.values() for n in members]
    factors, generic = structured_factors(model, inputs, readout, names, chunk_size)
    kernels: dict[str, Tensor] = {}
    for group, members in resolved.items():
        parts = [_structured_kernel(factors[n], full) for n in members if n in factors]
        slow = [n for n in members if n in generic]
        if slow:
            parts.append(_generic_kernel(model, inputs, readout, slow, full, R, max_jacobian_bytes))
        kernels[group] = sum(parts[1:], parts[0]).detach()
    if by_layer:
        return kernels
    values = list(kernels.values())
    return sum(values[1:], values[0])


def entk_parameter_block(
    model: nn.Module,
    inputs: Tensor,
    params: Sequence[str] | str,
    *,
    output: Output = "trace",
    max_jacobian_bytes: int = DEFAULT_JACOBIAN_BYTES,
) -> Tensor:
    r"""The parameter-space eNTK block :math:`J_g^\top J_g` of a parameter group, (P_g, P_g).

    Rows of J_g are (input, readout) pairs; ``"trace"`` divides by the number of outputs C so
    that :math:`\mathrm{tr}(J_g^\top J_g) = \mathrm{tr}\,\Theta^g` for the trace kernel. ``params``
    lists parameter or module names; coordinates follow that order, each tensor flattened.
    """
    inputs, readout, full, R = _prepare(model, inputs, output)
    names = parameter_groups(model, {"block": params})["block"]
    P = sum(dict(model.named_parameters())[n].numel() for n in names)
    itemsize = next(model.parameters()).element_size()
    chunk = max(1, max_jacobian_bytes // max(1, R * P * itemsize))
    block = None
    for _, J in generic_jacobians(model, inputs, readout, names, chunk):
        J = J.reshape(-1, P)
        block = J.T @ J if block is None else block + J.T @ J
    return (block if full else block / R).detach()


def hidden_units(model: nn.Module, incoming: str, outgoing: str) -> list[dict]:
    """Units of a hidden layer between two ``nn.Linear`` modules: unit j owns row j of
    ``incoming.weight`` (and ``incoming.bias[j]``) and column j of ``outgoing.weight``."""
    modules = dict(model.named_modules())
    for name in (incoming, outgoing):
        if not isinstance(modules.get(name), nn.Linear):
            raise ValueError(
                f"{name!r} must name an nn.Linear module of the model; modules: "
                f"{[n for n, m in modules.items() if isinstance(m, nn.Linear)]}"
            )
    width = modules[incoming].out_features
    if modules[outgoing].in_features != width:
        raise ValueError(
            f"{outgoing!r} takes {modules[outgoing].in_features} inputs but "
            f"{incoming!r} has {width} outputs"
        )
    units = []
    for j in range(width):
        unit = {f"{incoming}.weight": (0, j), f"{outgoing}.weight": (1, j)}
        if modules[incoming].bias is not None:
            unit[f"{incoming}.bias"] = (0, j)
        units.append(unit)
    return units


class _UnitKernels:
    """Data-space kernels Θ_j of single units (their parameter entries alone)."""

    def __init__(self, factors: dict[str, Factors], ndims: dict[str, int], full: bool):
        self.factors, self.ndims, self.full = factors, ndims, full
        self._gx: dict[str, dict] = {}
        self._gy: dict[str, dict] = {}

    def gx(self, name: str) -> dict:
        if name not in self._gx:
            self._gx[name] = _position_grams(self.factors[name].X, "x")
        return self._gx[name]

    def gy(self, name: str) -> dict:
        if name not in self._gy:
            kind = "full" if self.full else "mean"
            self._gy[name] = _position_grams(self.factors[name].Y, kind)
        return self._gy[name]

    def __call__(self, unit: UnitSpec) -> Tensor:
        total = None
        for name, (axis, index) in unit.items():
            f, ndim = self.factors[name], self.ndims[name]
            if axis not in range(ndim):
                raise ValueError(f"unit axis for {name!r} must be in 0..{ndim - 1}, got {axis}")
            index = [index] if isinstance(index, int) else list(index)
            selects_y = (axis == 0) == f.y_rows
            if selects_y:
                kind = "full" if self.full else "mean"
                term = _hadamard_sum(
                    self.gx(name), _position_grams(f.Y[..., index], kind), self.full
                )
            else:
                term = _hadamard_sum(
                    _position_grams(f.X[..., index], "x"), self.gy(name), self.full
                )
            total = term if total is None else total + term
        return total


def unit_kernels(
    model: nn.Module,
    inputs: Tensor,
    units: Sequence[UnitSpec],
    *,
    output: Output = "trace",
    chunk_size: int = DEFAULT_CHUNK,
) -> Callable[[UnitSpec], Tensor]:
    """A function unit → Θ_unit, the data-space kernel of that unit's parameters alone.

    A unit maps parameter names to ``(axis, index)``: the entries of that parameter whose
    ``axis`` coordinate is ``index`` (an int or a list). Only ``nn.Linear`` / ``nn.Embedding``
    parameters are supported here.
    """
    inputs, readout, full, _ = _prepare(model, inputs, output)
    params = dict(model.named_parameters())
    names = list(dict.fromkeys(n for unit in units for n in unit))
    unknown = [n for n in names if n not in params]
    if unknown:
        raise ValueError(f"unknown parameters in units: {unknown}; parameters: {sorted(params)}")
    factors, generic = structured_factors(model, inputs, readout, names, chunk_size)
    if generic:
        raise ValueError(
            f"unit kernels need parameters of nn.Linear/nn.Embedding modules; "
            f"{generic} are used otherwise"
        )
    return _UnitKernels(factors, {n: params[n].dim() for n in names}, full)


@dataclass
class UnitGram:
    """Frobenius inner products of unit kernels, with what centring needs.

    ``gram`` (U, U) holds ⟨Θ_j, Θ_k⟩_F, ``row_sums`` (U, ·) the Θ_j 1 over the second input
    axis (flattened with any readout axes), ``totals`` (U, ·) the 1ᵀ Θ_j 1. Double centring
    needs no second pass: ⟨HΘ_jH, HΘ_kH⟩ = ⟨Θ_j, Θ_k⟩ − (2/N)⟨Θ_j1, Θ_k1⟩ + (1/N²) (1ᵀΘ_j1)(1ᵀΘ_k1).
    """

    gram: Tensor
    row_sums: Tensor
    totals: Tensor
    n_inputs: int

    def similarity(self, center: bool = False) -> Tensor:
        """Normalised similarity S (U, U), float64; zero rows for units with a zero kernel."""
        G = self.gram
        if center:
            n = self.n_inputs
            G = G - (2 / n) * self.row_sums @ self.row_sums.T + self.totals @ self.totals.T / n**2
        norms = G.diagonal().clamp_min(0).sqrt()
        scale = torch.where(norms > 0, 1 / norms, torch.zeros_like(norms))
        return G * scale[:, None] * scale[None, :]


def unit_gram(
    model: nn.Module,
    inputs: Tensor,
    units: Sequence[UnitSpec],
    *,
    output: Output = "trace",
    chunk_size: int = DEFAULT_CHUNK,
    max_block_bytes: int = 2**30,
) -> UnitGram:
    """Inner products of all unit kernels (:func:`unit_kernels`), ``max_block_bytes`` of
    kernels at a time. (N, N) kernels are packed as their upper triangle with off-diagonal
    entries scaled by √2, which preserves inner products at half the cost."""
    kernel = unit_kernels(model, inputs, units, output=output, chunk_size=chunk_size)
    U, N = len(units), len(inputs)
    first = kernel(units[0])
    square = first.dim() == 2
    if square:
        rows, cols = torch.triu_indices(N, N, device=first.device)
        weight = torch.full(rows.shape, 2**0.5, dtype=first.dtype, device=first.device)
        weight[rows == cols] = 1.0
    size = weight.numel() if square else first.numel()
    per_block = max(1, max_block_bytes // (size * first.element_size()))
    row_sums, totals = [], []

    def block(start: int, keep_sums: bool) -> Tensor:
        packed = []
        for unit in units[start : start + per_block]:
            K = kernel(unit)
            if keep_sums:
                row_sums.append(K.sum(1).reshape(-1).double().cpu())
                totals.append(K.sum((0, 1)).reshape(-1).double().cpu())
            packed.append(K[rows, cols] * weight if square else K.reshape(-1))
        return torch.stack(packed)

    gram = torch.zeros(U, U, dtype=torch.float64)
    starts = list(range(0, U, per_block))
    for i, si in enumerate(starts):
        Ki = block(si, keep_sums=True)
        for sj in starts[i:]:
            Kj = Ki if sj == si else block(sj, keep_sums=False)
            g = (Ki @ Kj.T).double().cpu()
            gram[si : si + len(Ki), sj : sj + len(Kj)] = g
            gram[sj : sj + len(Kj), si : si + len(Ki)] = g.T
    return UnitGram(gram, torch.stack(row_sums), torch.stack(totals), N)


def unit_similarity(
    model: nn.Module,
    inputs: Tensor,
    units: Sequence[UnitSpec],
    *,
    output: Output = "trace",
    center: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
    max_block_bytes: int = 2**30,
) -> Tensor:
    r"""Unit-similarity matrix S (U, U), float64, for circuit clustering.

    .. math::  S_{jk} = \frac{\langle\Theta_j, \Theta_k\rangle_F}
                              {\lVert\Theta_j\rVert_F\,\lVert\Theta_k\rVert_F}

    with Θ_j the data-space kernel of unit j's parameters alone (:func:`unit_kernels`). For
    ``output="full"`` this equals the normalised energy ‖J_jᵀ J_k‖_F² of the (j, k) block of the
    parameter-space eNTK; for ``"trace"`` the kernels are class-averaged first.
    ``center=True`` double-centres each Θ_j over the inputs first (Θ ↦ HΘH, H = I − 11ᵀ/N,
    as in CKA), which removes the constant mode that all units share. Units whose kernel is
    zero get zero similarity. Use :func:`unit_gram` to get both variants from one pass.
    """
    gram = unit_gram(
        model, inputs, units, output=output, chunk_size=chunk_size, max_block_bytes=max_block_bytes
    )
    return gram.similarity(center)
