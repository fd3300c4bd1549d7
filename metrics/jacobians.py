"""Per-example derivatives of a readout of a model, without the N·C·P Jacobian.

Two paths, chosen per parameter:

* **Structured** (Novak et al. 2022, "Fast Finite Width Neural Tangent Kernel"). For a weight
  used by ``nn.Linear`` or ``nn.Embedding`` modules the per-example gradient of readout r is
  a sum of outer products over the module's calls and positions t,

  .. math::  \\partial y_r(x) / \\partial W = \\sum_t Y_{t r}(x) \\otimes X_t(x),

  with X the module input (one-hot tokens for an embedding, ones for a bias) and Y the
  gradient of y_r with respect to the module output. Storing X (N, T, d_in) and
  Y (N, T, R, d_out) costs N·T·(d_in + R·d_out) numbers instead of N·R·d_in·d_out.
  Each structured parameter is verified once against autograd's batch gradient; a parameter
  that is also used outside its modules fails the check and takes the generic path.
  For an embedding, X is one-hot and :attr:`Factors.ids` keeps the token indices, which lets
  kernels skip the token pairs that never match.
* **Positional** (``positional=True``). A plain 2-D parameter P (T_max, d) added position-wise
  to the output of such a module (``embed(tokens) + pos[:T]``, a learned positional embedding)
  has per-example gradient Σ_t e_t ⊗ Y_t with the module's output cotangents Y: an embedding
  of positions, with ids t. A candidate module call is accepted only when it reproduces
  autograd's gradient, like every structured factor.
* **Generic**: ``torch.func.vmap(jacrev(...))`` over chunks of inputs for every other parameter,
  so memory is bounded by ``chunk · R · P_group``.

Both assume the model treats examples independently (no batch statistics).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

Readout = Callable[[Tensor], Tensor]  # (n, C) model outputs -> (n, R) readouts


@dataclass
class Factors:
    """Per-example gradient factors of one parameter.

    ``X`` (N, T, d_x) and ``Y`` (N, T, R, d_y): the gradient of readout r at input n is
    Σ_t Y[n, t, r] ⊗ X[n, t], laid out as (d_y, d_x) when ``y_rows`` (``nn.Linear``: weight
    rows are outputs) and as (d_x, d_y) otherwise (``nn.Embedding``: rows are tokens).
    """

    X: Tensor
    Y: Tensor
    y_rows: bool
    ids: Tensor | None = None  # (N, T) indices when X is one-hot (an embedding), else None

    def gradient(self, weights: Tensor) -> Tensor:
        """Σ_{n, r} weights[n, r] ∂y_r(x_n)/∂θ in the parameter's layout (before squeezing)."""
        mixed = torch.einsum("ntry,nr->nty", self.Y, weights)  # contract readouts first
        g = torch.einsum("nty,ntx->yx", mixed, self.X)
        return g if self.y_rows else g.T


def _module_factor_roles(model: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    """id(parameter) → the (module, role) pairs through which Linear/Embedding use it."""
    roles: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in model.modules():
        if type(module) in (nn.Linear, nn.Embedding):
            for role in ("weight", "bias"):
                param = getattr(module, role, None)
                if isinstance(param, nn.Parameter):
                    roles.setdefault(id(param), []).append((module, role))
    return roles


def _x_factor(module: nn.Module, role: str, inp: Tensor, n: int) -> Tensor:
    if isinstance(module, nn.Embedding):
        return nn.functional.one_hot(inp.reshape(n, -1), module.num_embeddings).float()
    if role == "bias":
        return inp.new_ones(n, inp[..., 0].numel() // n, 1)
    return inp.reshape(n, -1, inp.shape[-1])  # (n, T, d_in)


def _ids(module: nn.Module, inp: Tensor, n: int) -> Tensor | None:
    return inp.reshape(n, -1) if isinstance(module, nn.Embedding) else None


def _positional_candidates(
    params: dict[str, Tensor], names: Sequence[str], calls: list, n: int
) -> dict[str, list[int]]:
    """Plain 2-D parameters (T_max, d) → the module calls with an output (n, T ≤ T_max, d)."""
    out = {}
    for name in names:
        shape = params[name].shape
        if len(shape) != 2:
            continue
        fits = [
            i
            for i, (_, _, o) in enumerate(calls)
            if o.dim() == 3
            and o.shape[0] == n
            and o.shape[1] <= shape[0]
            and o.shape[2] == shape[1]
        ]
        if fits:
            out[name] = fits
    return out


def _after_call(grads, calls, R: int, n: int, i: int, t_max: int) -> Factors:
    """The positional factor (T_max rows) of a parameter added to the output of call i."""
    g, out = grads[i], calls[i][2]
    return _positional_factor(g.reshape(R, n, -1, out.shape[-1]).permute(1, 2, 0, 3), t_max)


def _positional_factor(Y: Tensor, t_max: int) -> Factors:
    n, T = Y.shape[:2]
    ids = torch.arange(T, device=Y.device).expand(n, T)
    X = nn.functional.one_hot(ids, t_max).to(Y.dtype)
    return Factors(X, Y, y_rows=False, ids=ids)


def structured_factors(
    model: nn.Module,
    inputs: Tensor,
    readout: Readout,
    names: Sequence[str],
    chunk_size: int,
    positional: bool = False,
) -> tuple[dict[str, Factors], list[str]]:
    """Structured factors of the parameters ``names`` that qualify, over all ``inputs``.

    ``positional=True`` also looks for positional parameters (module docstring) among the
    parameters that no ``nn.Linear`` / ``nn.Embedding`` uses.
    Returns (factors by parameter name, names that must take the generic path).
    """
    params = dict(model.named_parameters())
    roles = _module_factor_roles(model)
    candidates = {}
    for name in names:
        uses = roles.get(id(params[name]), [])
        embedding = [isinstance(m, nn.Embedding) for m, _ in uses]
        if uses and len(set(embedding)) == 1:
            candidates[name] = uses
    generic = [name for name in names if name not in candidates]
    unowned = [name for name in generic if positional and id(params[name]) not in roles]
    if not candidates and not unowned:
        return {}, generic

    modules = {id(m): m for uses in candidates.values() for m, _ in uses}
    if unowned:
        modules.update({id(m): m for m in model.modules() if type(m) in (nn.Linear, nn.Embedding)})
    if not modules:
        return {}, generic
    chosen: dict[str, int] = {}  # positional parameter → index of the module call it follows
    parts: dict[str, list[tuple[Tensor, Tensor]]] = {name: [] for name in candidates}
    verified = False
    for start in range(0, len(inputs), chunk_size):
        chunk = inputs[start : start + chunk_size]
        n = len(chunk)
        calls: list[tuple[nn.Module, Tensor, Tensor]] = []
        hooks = [
            m.register_forward_hook(
                lambda mod, inp, out, calls=calls: calls.append((mod, inp[0], out))
            )
            for m in modules.values()
        ]
        try:
            with torch.enable_grad():
                y = readout(model(chunk))  # (n, R)
        finally:
            for hook in hooks:
                hook.remove()
        R = y.shape[1]
        outs = [out for _, _, out in calls]
        batch_first = {id(m) for m, _, out in calls if out.shape[0] == n}
        for name, uses in list(candidates.items()):
            if any(id(m) not in batch_first for m, _ in uses):
                del candidates[name], parts[name]
                generic.append(name)
        cotangents = torch.eye(R, dtype=y.dtype, device=y.device)[:, None, :].expand(R, n, R)
        grads = torch.autograd.grad(
            y,
            outs,
            grad_outputs=cotangents,
            is_grads_batched=True,
            retain_graph=not verified,
            allow_unused=True,
            materialize_grads=True,
        )  # each (R, n, *out_shape)
        per_call = {}
        for (module, inp, out), g in zip(calls, grads, strict=True):
            if id(module) not in batch_first:  # its parameters took the generic path above
                continue
            Y = g.reshape(R, n, -1, out.shape[-1]).permute(1, 2, 0, 3)  # (n, T, R, d_out)
            per_call.setdefault(id(module), []).append((inp.detach(), Y))
        for name, uses in candidates.items():
            for module, role in uses:
                for inp, Y in per_call.get(id(module), []):
                    X = _x_factor(module, role, inp, n).to(Y.dtype)
                    parts[name].append((start, X, Y, _ids(module, inp, n)))
        call_Y = functools.partial(_after_call, grads, calls, R, n)
        if not verified:
            generic += _verify(model, y, candidates, parts, start)
            for name in generic:
                candidates.pop(name, None)
                parts.pop(name, None)
            for name, options in _positional_candidates(params, unowned, calls, n).items():
                for i in options:
                    trial = {name: [(None, "positional")]}
                    trial_parts = {name: [(start, *_fields(call_Y(i, params[name].shape[0])))]}
                    if not _verify(model, y, trial, trial_parts, start):
                        chosen[name] = i
                        break
            generic = [name for name in generic if name not in chosen]
            verified = True
        for name, i in chosen.items():
            parts.setdefault(name, []).append((start, *_fields(call_Y(i, params[name].shape[0]))))

    factors = {}
    n_chunks = len(range(0, len(inputs), chunk_size))
    for name in [*candidates, *chosen]:
        by_start: dict[int, list[tuple]] = {}
        for start, X, Y, ids in parts[name]:
            by_start.setdefault(start, []).append((X, Y, ids))
        calls_per_chunk = {len(c) for c in by_start.values()}
        if len(by_start) != n_chunks or len(calls_per_chunk) != 1:
            generic.append(name)  # never called, or called a data-dependent number of times
            continue
        X = _cat([_cat([c[0] for c in chunk], dim=1) for chunk in by_start.values()], dim=0)
        Y = _cat([_cat([c[1] for c in chunk], dim=1) for chunk in by_start.values()], dim=0)
        ids = None
        if all(c[2] is not None for chunk in by_start.values() for c in chunk):
            ids = _cat([_cat([c[2] for c in chunk], dim=1) for chunk in by_start.values()], dim=0)
        embedding = name in chosen or isinstance(candidates[name][0][0], nn.Embedding)
        factors[name] = Factors(X, Y, y_rows=not embedding, ids=ids)
    return factors, generic


def _fields(f: Factors) -> tuple:
    return f.X, f.Y, f.ids


def _cat(tensors: list[Tensor], dim: int) -> Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=dim)


def _verify(model, y, candidates, parts, start) -> list[str]:
    """Names whose factors do not reproduce autograd's gradient of a random readout mix."""
    params = dict(model.named_parameters())
    names = list(candidates)
    if not names:
        return []
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(0)).to(y)
    true = torch.autograd.grad(
        (y * weights).sum(), [params[n] for n in names], allow_unused=True, retain_graph=True
    )
    tol = 1e-4 if y.dtype != torch.float64 else 1e-9
    failed = []
    for name, g_true in zip(names, true, strict=True):
        module = candidates[name][0][0]
        y_rows = module is not None and not isinstance(module, nn.Embedding)
        g = sum(Factors(X, Y, y_rows).gradient(weights) for s, X, Y, _ in parts[name] if s == start)
        g_true = torch.zeros_like(params[name]) if g_true is None else g_true
        err = (g.reshape(g_true.shape) - g_true).norm()
        if err > tol * max(g_true.norm().item(), 1e-30) + 1e-30:
            failed.append(name)
    return failed


def generic_jacobians(
    model: nn.Module,
    inputs: Tensor,
    readout: Readout,
    names: Sequence[str],
    chunk_size: int,
) -> Iterator[tuple[int, Tensor]]:
    """Per-example Jacobians of the readouts w.r.t. the parameters ``names``, chunk by chunk.

    Yields (start index, Tensor (n, R, P)) with P = Σ numel over ``names`` in that order.
    """
    params = dict(model.named_parameters())
    sub = {name: params[name].detach() for name in names}

    def f(theta: dict[str, Tensor], x: Tensor) -> Tensor:
        return readout(functional_call(model, theta, (x[None],)))[0]  # (R,)

    jac = vmap(jacrev(f), in_dims=(None, 0))
    for start in range(0, len(inputs), chunk_size):
        blocks = jac(sub, inputs[start : start + chunk_size])
        n = len(inputs[start : start + chunk_size])
        yield (
            start,
            torch.cat(
                [blocks[name].reshape(n, blocks[name].shape[1], -1) for name in names], dim=-1
            ),
        )
