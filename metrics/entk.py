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

import math
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


def _dense_kernel(fa: Factors, fb: Factors | None, full: bool) -> Tensor:
    """Σ_{t,s} (Xa_t Xb_sᵀ) ∘ (Ya_t Yb_sᵀ), one position pair at a time; ``fb=None`` means
    fb = fa, where the pairs t > s are the transposes of the pairs t < s."""
    sym = fb is None
    fb = fa if sym else fb
    R = fa.Y.shape[2]
    if not full:  # each position's (N, R·d) rows, copied once rather than once per pair
        ya = [fa.Y[:, t].reshape(len(fa.Y), -1) for t in range(fa.Y.shape[1])]
        yb = ya if sym else [fb.Y[:, s].reshape(len(fb.Y), -1) for s in range(fb.Y.shape[1])]
    total = None
    for t in range(fa.X.shape[1]):
        for s in range(t, fb.X.shape[1]) if sym else range(fb.X.shape[1]):
            gx = fa.X[:, t] @ fb.X[:, s].T
            if full:
                term = gx[:, :, None, None] * torch.einsum("nrd,msd->nmrs", fa.Y[:, t], fb.Y[:, s])
            else:
                term = gx * (ya[t] @ yb[s].T / R)
            if sym and s != t:
                term = term + (term.permute(1, 0, 3, 2) if full else term.T)
            total = term if total is None else total + term
    return total


def _rows_by_id(ids: Tensor, V: int) -> list[Tensor]:
    """For each id v < V, the flat (example·position) rows holding it."""
    flat = ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=V).tolist()
    return list(torch.split(order, counts))


def _is_range(index: Tensor, n: int) -> bool:
    return len(index) == n and bool((index == torch.arange(n, device=index.device)).all())


def _onehot_kernel(fa: Factors, fb: Factors | None, full: bool) -> Tensor:
    """The same sum for one-hot X (``ids`` set): only (x, t), (x', s) holding the same index
    contribute, so each index v adds Ya[rows v] Yb[rows v]ᵀ at the rows' examples."""
    sym = fb is None
    fb = fa if sym else fb
    (na, ta), (nb, tb) = fa.ids.shape, fb.ids.shape
    R = fa.Y.shape[2]
    V = int(max(fa.ids.max(), fb.ids.max())) + 1
    ya, yb = fa.Y.reshape(na * ta, R, -1), fb.Y.reshape(nb * tb, R, -1)
    device = fa.Y.device
    ea = torch.arange(na, device=device).repeat_interleave(ta)
    eb = torch.arange(nb, device=device).repeat_interleave(tb)
    rows_a = _rows_by_id(fa.ids, V)
    rows_b = rows_a if sym else _rows_by_id(fb.ids, V)
    K = fa.Y.new_zeros((na, nb, R, R) if full else (na, nb))
    for ra, rb in zip(rows_a, rows_b, strict=True):
        if not len(ra) or not len(rb):
            continue
        if full:
            block = torch.einsum("ird,jsd->ijrs", ya[ra], yb[rb])
        else:
            block = ya[ra].reshape(len(ra), -1) @ yb[rb].reshape(len(rb), -1).T / R
        rows, cols = ea[ra], eb[rb]
        if _is_range(rows, na) and _is_range(cols, nb):  # an index every example holds once
            K += block
        else:
            K.index_put_((rows[:, None], cols[None, :]), block, accumulate=True)
    return K


def _structured_kernel(f: Factors, full: bool, other: Factors | None = None) -> Tensor:
    """The kernel block between the inputs of ``f`` and those of ``other`` (default: ``f``'s
    own, symmetric) of one structured parameter. One-hot factors take the index-matching path
    when it multiplies fewer rows than the dense position pairs."""
    if f.ids is not None and (other is None or other.ids is not None):
        g = f if other is None else other
        V = int(max(f.ids.max(), g.ids.max())) + 1
        matched = (
            torch.bincount(f.ids.reshape(-1), minlength=V).double()
            @ torch.bincount(g.ids.reshape(-1), minlength=V).double()
        ).item()
        T, S = f.ids.shape[1], g.ids.shape[1]
        pairs = T * (T + 1) / 2 if other is None else T * S
        if matched < pairs * len(f.ids) * len(g.ids):
            return _onehot_kernel(f, other, full)
    return _dense_kernel(f, other, full)


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
            block = _jacobian_block(Ji, Jj, full)
            K[si:ei, sj:ej] = block
            K[sj:ej, si:ei] = block.permute(1, 0, 3, 2) if full else block.T
    return K


def _jacobian_block(Ja: Tensor, Jb: Tensor, full: bool) -> Tensor:
    if full:
        return torch.einsum("nrp,msp->nmrs", Ja, Jb)
    return Ja.reshape(len(Ja), -1) @ Jb.reshape(len(Jb), -1).T / Ja.shape[1]


def _prepare(model: nn.Module, inputs: Tensor, output: Output):
    param = next(model.parameters())
    inputs = inputs.to(param.device)
    if inputs.is_floating_point():
        inputs = inputs.to(param.dtype)
    with torch.no_grad():
        z = model(inputs[:1])
    readout, full = readout_for(output, z.reshape(1, -1).shape[1])
    return inputs, readout, full, readout(z).shape[1]


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device``: the CUDA allocator's free memory, else the host's
    MemAvailable (Linux), else 8 GiB."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


DEFAULT_MEMORY_FRACTION = 0.5  # the default budget: this share of the device's free memory


@dataclass
class _Tile:
    """The inputs of one row or column tile and what its kernel blocks need."""

    inputs: Tensor
    factors: dict[str, Factors]
    generic: list[str]
    jacobians: dict[tuple[str, ...], Tensor]


class _Plan:
    """How ``entk`` forms one call's kernels: tile size, factor computation, block sums."""

    def __init__(self, model, inputs, readout, names, full, R, chunk_size, max_jacobian_bytes):
        self.model, self.readout, self.names = model, readout, names
        self.full, self.R = full, R
        self.chunk_size, self.max_jacobian_bytes = chunk_size, max_jacobian_bytes

    def tile(self, inputs: Tensor) -> _Tile:
        factors, generic = structured_factors(
            self.model, inputs, self.readout, self.names, self.chunk_size, positional=True
        )
        return _Tile(inputs, factors, generic, {})

    def bytes_per_example(self, x: Tensor) -> int:
        """Bytes of factors and generic Jacobians per input, from one forward pass on ``x``
        (one input): every ``nn.Linear`` / ``nn.Embedding`` call holds X (T·d_in, one-hot
        width for an embedding) and Y (T·R·d_out) per input; every parameter outside those
        modules is counted as generic (R·P per input)."""
        calls = []
        hooks = [
            m.register_forward_hook(lambda mod, inp, out: calls.append((mod, inp[0], out)))
            for m in self.model.modules()
            if type(m) in (nn.Linear, nn.Embedding)
        ]
        try:
            with torch.no_grad():
                self.model(x)
        finally:
            for hook in hooks:
                hook.remove()
        itemsize = next(self.model.parameters()).element_size()
        size, owned = 0, set()
        for module, inp, out in calls:
            owned.update(id(p) for p in module.parameters())
            width = module.num_embeddings if isinstance(module, nn.Embedding) else inp.shape[-1]
            positions = out[..., 0].numel()
            size += positions * (width + 1 + self.R * out.shape[-1]) * itemsize
        params = dict(self.model.named_parameters())
        P = sum(params[n].numel() for n in self.names if id(params[n]) not in owned)
        return size + self.R * P * itemsize

    def _jacobian(self, tile: _Tile, slow: list[str]) -> Tensor:
        key = tuple(slow)
        if key not in tile.jacobians:
            parts = [
                J
                for _, J in generic_jacobians(
                    self.model, tile.inputs, self.readout, slow, len(tile.inputs)
                )
            ]
            tile.jacobians[key] = parts[0]
        return tile.jacobians[key]

    def block(self, members: list[str], a: _Tile, b: _Tile | None) -> Tensor:
        """The kernel block of one group between tiles a and b (b=None: a with itself)."""
        parts = [
            _structured_kernel(a.factors[n], self.full, None if b is None else b.factors[n])
            for n in members
            if n in a.factors
        ]
        slow = [n for n in members if n in a.generic]
        if slow and b is None:
            parts.append(
                _generic_kernel(
                    self.model,
                    a.inputs,
                    self.readout,
                    slow,
                    self.full,
                    self.R,
                    self.max_jacobian_bytes,
                )
            )
        elif slow:
            parts.append(
                _jacobian_block(self._jacobian(a, slow), self._jacobian(b, slow), self.full)
            )
        return sum(parts[1:], parts[0]).detach()


def tile_size(
    per_example: int, n_inputs: int, R: int, full: bool, itemsize: int, budget: int
) -> int:
    """The largest tile b ≤ N for which two tiles of factors (2·b·per_example bytes, doubled
    for autograd's intermediates while they are formed) and six (b, b) blocks (position-pair
    products, index tensors and their sum) fit into ``budget`` bytes; at least 1."""
    block = 6 * itemsize * (R * R if full else 1)
    linear = 4 * per_example
    b = int((-linear + math.sqrt(linear**2 + 4 * block * max(budget, 0))) / (2 * block))
    return max(1, min(n_inputs, b))


def entk(
    model: nn.Module,
    inputs: Tensor,
    *,
    output: Output = "trace",
    by_layer: bool = False,
    groups: Mapping[str, Sequence[str]] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    max_jacobian_bytes: int = DEFAULT_JACOBIAN_BYTES,
    max_memory: int | None = None,
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
        max_memory: bytes the computation may use besides its output (default: half the
            device's free memory, :func:`free_memory`). When the whole computation does not
            fit, the output is formed in row × column tiles (:func:`tile_size`): the factors
            of one row tile are kept while those of each column tile are recomputed, so
            nothing of size N × N exists but the output. Tiled and untiled kernels agree to
            rounding (the sums run in another order), not bit for bit.

    Returns:
        Tensor (N, N), or (N, N, C, C) for ``output="full"`` (dtype of the model), or a dict
        of those when ``by_layer``.
    """
    if max_memory is not None and (
        not isinstance(max_memory, int) or isinstance(max_memory, bool) or max_memory <= 0
    ):
        raise ValueError(
            f"max_memory must be a positive int (bytes), got max_memory={max_memory!r}"
        )
    inputs, readout, full, R = _prepare(model, inputs, output)
    resolved = parameter_groups(model, groups)
    names = [n for members in resolved.values() for n in members]
    plan = _Plan(model, inputs, readout, names, full, R, chunk_size, max_jacobian_bytes)
    N = len(inputs)
    budget = (
        max_memory
        if max_memory is not None
        else int(DEFAULT_MEMORY_FRACTION * free_memory(inputs.device))
    )
    itemsize = next(model.parameters()).element_size()
    b = tile_size(plan.bytes_per_example(inputs[:1]), N, R, full, itemsize, budget)
    if b >= N:
        whole = plan.tile(inputs)
        kernels = {group: plan.block(members, whole, None) for group, members in resolved.items()}
    else:
        shape = (N, N, R, R) if full else (N, N)
        dtype = next(model.parameters()).dtype
        kernels = {group: inputs.new_zeros(shape, dtype=dtype) for group in resolved}
        starts = list(range(0, N, b))
        for i, a0 in enumerate(starts):
            rows = plan.tile(inputs[a0 : a0 + b])
            for b0 in starts[i:]:
                cols = None if b0 == a0 else plan.tile(inputs[b0 : b0 + b])
                for group, members in resolved.items():
                    block = plan.block(members, rows, cols)
                    kernels[group][a0 : a0 + b, b0 : b0 + b] = block
                    if cols is not None:
                        back = block.permute(1, 0, 3, 2) if full else block.T
                        kernels[group][b0 : b0 + b, a0 : a0 + b] = back
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
