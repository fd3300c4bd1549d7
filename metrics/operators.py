r"""The eNTK over (input, readout) pairs as a matrix-free operator, and its dense reference.

For readouts y_r(x) of a model (its outputs, or any readout ``metrics.entk`` accepts except the
class average), the *flattened* eNTK is the (N·R) × (N·R) matrix

.. math::  \Theta_{(r, x), (s, x')} = \sum_i \frac{\partial y_r(x)}{\partial\theta_i}
           \frac{\partial y_s(x')}{\partial\theta_i} = (J J^\top)_{(r, x), (s, x')},

laid out **channel-major**: row ``r · N + x`` (readout r's rows form one block of N). With a
row scaling s (for instance s = I_r^{β/2}, the importance rescaling of Lin 2025) the operator
is K = diag(s) J Jᵀ diag(s).

:class:`EntkOperator` applies K to a block of vectors without forming K or the N·R·P
Jacobian: K V = s ∘ J (Jᵀ (s ∘ V)). Jᵀ and J come from the structured per-layer factors of
``metrics.jacobians`` for ``nn.Linear`` / ``nn.Embedding`` parameters (Jᵀv = Σ_t Y_tᵀ v ⊗ X_t,
J u = Σ_t Y_t · (u X_t)) and from ``torch.func`` vector–Jacobian and Jacobian–vector products
for every other parameter. Top eigenpairs then come from ``metrics.eigensolvers``.

Example — the operator agrees with the dense flattened kernel::

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    >>> x = torch.randn(5, 3)
    >>> op = EntkOperator(net, x)
    >>> K = flattened_entk(net, x)
    >>> V = torch.randn(10, 3, dtype=torch.float64)
    >>> torch.allclose(op.matmat(V), K @ V)
    True
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from functools import partial

import torch
from torch import Tensor, nn
from torch.func import functional_call, linearize, vjp, vmap

from metrics.entk import DEFAULT_CHUNK, Output, _prepare, entk, parameter_groups
from metrics.jacobians import structured_factors

DENSE_MAX_ROWS = 20_000  # EntkOperator.dense() refuses larger kernels (20 000² float64 = 3.2 GB)


def channel_scale(weights: Tensor, n_inputs: int, beta: float = 1.0) -> Tensor:
    """Row scaling s = w_r^{β/2} over the channel-major (readout, input) rows, shape (R·N,).

    With w the feature importances, diag(s) Θ diag(s) = D^{β/2} Θ D^{β/2} is the importance-
    rescaled kernel K_β of Lin 2025 (β = 1 principled; β = 0 leaves Θ unchanged).
    """
    weights = torch.as_tensor(weights, dtype=torch.float64)
    if weights.dim() != 1 or not (weights > 0).all() or not torch.isfinite(weights).all():
        raise ValueError("weights must be a 1-D tensor of positive finite numbers, one per readout")
    if not isinstance(n_inputs, int) or n_inputs <= 0:
        raise ValueError(f"n_inputs must be a positive int, got n_inputs={n_inputs!r}")
    return weights.pow(beta / 2).repeat_interleave(n_inputs)


def flatten_full(K: Tensor) -> Tensor:
    """(N, N, R, R) kernel of every readout pair (``entk(..., output="full")``) → the
    channel-major (R·N, R·N) matrix."""
    if K.dim() != 4 or K.shape[0] != K.shape[1] or K.shape[2] != K.shape[3]:
        raise ValueError(f"K must have shape (N, N, R, R), got {tuple(K.shape)}")
    N, R = K.shape[0], K.shape[2]
    return K.permute(2, 0, 3, 1).reshape(R * N, R * N)


def flattened_entk(
    model: nn.Module,
    inputs: Tensor,
    *,
    scale: Tensor | None = None,
    groups: Mapping[str, Sequence[str]] | None = None,
) -> Tensor:
    """The dense flattened eNTK diag(s) Θ diag(s) of all outputs, (C·N, C·N) channel-major, in
    float64 (the model is copied to float64). For small N·C; :class:`EntkOperator` otherwise."""
    model64 = copy.deepcopy(model).double()
    x = inputs.double() if inputs.is_floating_point() else inputs
    K = flatten_full(entk(model64, x, output="full", groups=groups))
    if scale is not None:
        s = _check_scale(scale, K.shape[0])
        K = s[:, None] * K * s[None, :]
    return K


def _check_scale(scale: Tensor, rows: int) -> Tensor:
    s = torch.as_tensor(scale, dtype=torch.float64)
    if s.shape != (rows,) or not torch.isfinite(s).all():
        raise ValueError(f"scale must be a finite tensor of shape ({rows},), got {tuple(s.shape)}")
    return s


class EntkOperator:
    """Matrix-free K = diag(s) J Jᵀ diag(s) of a model's readouts on ``inputs``.

    Args:
        model: the network; copied (to ``dtype``), so later changes to it do not leak in.
        inputs: (N, ...) inputs.
        output: ``"full"`` (every output, the flattened eNTK), ``"sum"``, an int output index or
            a callable readout (see ``metrics.entk``). The class average ``"trace"`` is not a
            Gram matrix of one Jacobian; use ``"full"``.
        scale: optional row scaling s, shape (R·N,) (e.g. :func:`channel_scale`).
        groups: restrict to parameter groups, as in ``metrics.entk.entk`` (default: all).
        chunk_size: inputs per forward/backward pass.
        dtype: arithmetic precision (float64 by default, so that small eigenvalues far below
            the largest one are resolved).

    ``shape`` is (R·N, R·N); ``matmat(V)`` applies K to V (R·N, b); ``rmatvec_jacobian`` and
    ``matvec_jacobian`` expose Jᵀ and J; ``dense()`` builds K column by column (tests).
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: Tensor,
        *,
        output: Output = "full",
        scale: Tensor | None = None,
        groups: Mapping[str, Sequence[str]] | None = None,
        chunk_size: int = DEFAULT_CHUNK,
        dtype: torch.dtype = torch.float64,
    ):
        if isinstance(output, str) and output == "trace":
            raise ValueError(
                "output='trace' (the class average) is not supported by EntkOperator; "
                "use output='full', 'sum', an int or a callable readout"
            )
        if not isinstance(chunk_size, int) or chunk_size <= 0:
            raise ValueError(f"chunk_size must be a positive int, got chunk_size={chunk_size!r}")
        self.model = copy.deepcopy(model).to(dtype).eval()
        self.inputs, self.readout, _, R = _prepare(self.model, inputs, output)
        self.N, self.R = len(self.inputs), R
        self.shape = (self.N * R, self.N * R)
        self.dtype = dtype
        self.chunk_size = chunk_size
        resolved = parameter_groups(self.model, groups)
        self.names = [n for members in resolved.values() for n in members]
        params = dict(self.model.named_parameters())
        self.param_shapes = {n: params[n].shape for n in self.names}
        self.n_params = sum(params[n].numel() for n in self.names)
        self.factors, generic = structured_factors(
            self.model, self.inputs, self.readout, self.names, chunk_size
        )
        self.generic = [n for n in self.names if n in generic]
        self._fixed = {n: p.detach() for n, p in params.items()}
        # generic parameters: linearise each chunk once; every product then replays the
        # recorded graphs (a pullback for Jᵀ, a pushforward for J) instead of re-running the model
        self._chunks = []
        if self.generic:
            theta = {n: self._fixed[n] for n in self.generic}
            for start in range(0, self.N, chunk_size):
                x = self.inputs[start : start + chunk_size]
                f = partial(self._forward, x=x)
                _, pullback = vjp(f, theta)
                with warnings.catch_warnings():  # torch-internal notices from tracing `linearize`
                    warnings.filterwarnings("ignore", message="Attempted to insert a get_attr")
                    warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")
                    _, push = linearize(f, theta)
                self._chunks.append((start, len(x), pullback, push))
        self.scale = None if scale is None else _check_scale(scale, self.shape[0]).to(dtype)
        self.matvecs = 0  # number of vectors K has been applied to

    # -- layout ---------------------------------------------------------------------------
    def _to_batch(self, V: Tensor) -> Tensor:
        """(R·N, b) channel-major → (b, N, R)."""
        return V.reshape(self.R, self.N, -1).permute(2, 1, 0)

    def _from_batch(self, Z: Tensor) -> Tensor:
        """(b, N, R) → (R·N, b) channel-major."""
        return Z.permute(2, 1, 0).reshape(self.R * self.N, -1)

    def _forward(self, theta: dict[str, Tensor], *, x: Tensor) -> Tensor:
        return self.readout(functional_call(self.model, {**self._fixed, **theta}, (x,)))

    # -- J and Jᵀ -------------------------------------------------------------------------
    def rmatvec_jacobian(self, V: Tensor) -> dict[str, Tensor]:
        """Jᵀ V for V (R·N, b): parameter name → (b, *parameter shape)."""
        Vb = self._to_batch(V.to(self.dtype))
        out: dict[str, Tensor] = {}
        for name, f in self.factors.items():
            mixed = torch.einsum("ntry,bnr->bnty", f.Y, Vb)
            g = torch.einsum("bnty,ntx->byx", mixed, f.X)
            g = g if f.y_rows else g.transpose(1, 2)
            out[name] = g.reshape(len(Vb), *self.param_shapes[name])
        for start, n, pullback, _ in self._chunks:
            block = Vb[:, start : start + n]
            if len(Vb) == 1:
                grads = {k: g[None] for k, g in pullback(block[0])[0].items()}
            else:
                (grads,) = vmap(pullback)(block)
            for name, g in grads.items():
                out[name] = out[name] + g if name in out else g
        return out

    def matvec_jacobian(self, U: Mapping[str, Tensor]) -> Tensor:
        """J U for a block of parameter-space vectors (name → (b, *shape)): (R·N, b)."""
        b = len(next(iter(U.values())))
        Z = self.inputs.new_zeros((b, self.N, self.R), dtype=self.dtype)
        for name, f in self.factors.items():
            d_y, d_x = f.Y.shape[-1], f.X.shape[-1]
            if f.y_rows:  # nn.Linear: rows are outputs
                u = U[name].reshape(b, d_y, d_x)
            else:  # nn.Embedding: rows are tokens
                u = U[name].reshape(b, d_x, d_y).transpose(1, 2)
            ux = torch.einsum("byx,ntx->bnty", u, f.X)
            Z = Z + torch.einsum("ntry,bnty->bnr", f.Y, ux)
        tangents = {n: U[n].to(self.dtype) for n in self.generic}
        for start, n, _, push in self._chunks:
            if b == 1:
                Z[:, start : start + n] += push({k: t[0] for k, t in tangents.items()})[None]
            else:
                Z[:, start : start + n] += vmap(push)(tangents)
        return self._from_batch(Z)

    # -- the kernel -----------------------------------------------------------------------
    def matmat(self, V: Tensor) -> Tensor:
        """K V for V (R·N,) or (R·N, b), returned in the operator's dtype and V's shape."""
        vector = V.dim() == 1
        V = V.to(self.dtype).reshape(self.shape[0], -1)
        if self.scale is not None:
            V = self.scale[:, None] * V
        out = self.matvec_jacobian(self.rmatvec_jacobian(V))
        if self.scale is not None:
            out = self.scale[:, None] * out
        self.matvecs += V.shape[1]
        return out[:, 0] if vector else out

    def dense(self, block: int = 256) -> Tensor:
        """K as a dense (R·N, R·N) matrix, built from ``block`` columns at a time."""
        rows = self.shape[0]
        if rows > DENSE_MAX_ROWS:
            raise ValueError(
                f"dense() builds at most {DENSE_MAX_ROWS} rows, this operator has {rows}; "
                "use metrics.eigensolvers.top_eigenpairs"
            )
        eye = torch.eye(rows, dtype=self.dtype)
        return torch.cat([self.matmat(eye[:, i : i + block]) for i in range(0, rows, block)], 1)

    def trace(self) -> float:
        """tr K = Σ_rows s² ‖J row‖², from one pass of Jᵀ over the rows in blocks."""
        return self.diagonal().sum().item()

    def diagonal(self, block: int = 256) -> Tensor:
        """diag K (R·N,): s_i² ‖∂y_i/∂θ‖², from Jᵀ applied to blocks of unit vectors."""
        rows = self.shape[0]
        out = torch.empty(rows, dtype=self.dtype)
        for i in range(0, rows, block):
            E = torch.zeros(rows, min(block, rows - i), dtype=self.dtype)
            E[torch.arange(i, i + E.shape[1]), torch.arange(E.shape[1])] = 1
            grads = self.rmatvec_jacobian(E)
            out[i : i + E.shape[1]] = sum(
                g.reshape(len(g), -1).pow(2).sum(1) for g in grads.values()
            )
        if self.scale is not None:
            out = out * self.scale**2
        return out
