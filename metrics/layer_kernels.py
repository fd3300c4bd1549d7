r"""Layerwise forward and backward kernels, and when a layer's eNTK block is their product.

For a layer ℓ (an ``nn.Linear`` or ``nn.Embedding`` module) called at positions t (all its
calls and sequence positions for one example) with input :math:`h_t^{\ell-1}(x)` (one-hot
tokens for an embedding) and output sensitivities
:math:`\delta_{tr}(x) = \partial y_r(x) / \partial z_t^\ell(x)`, where :math:`z^\ell` is the
module's output (the pre-activation of ℓ) and :math:`y_r` are the readouts of
:func:`metrics.entk.entk`,

.. math::

    F^\ell(x, x') = \sum_t \langle h_t^{\ell-1}(x), h_t^{\ell-1}(x') \rangle, \qquad
    B^\ell(x, x') = \frac1R \sum_r \sum_t \langle \delta_{tr}(x), \delta_{tr}(x') \rangle,

with R = C outputs for ``output="trace"`` and R = 1 for ``"sum"``, an int class index or a
callable readout. For an embedding, F counts the positions at which x and x' hold the same
token. Any scaling the model applies after the module (1/√fan-in, 1/width) is part of δ, so it
lands in B.

The layer's eNTK block (weight, and bias with a constant input 1) is

.. math::

    \Theta^\ell(x, x') = \frac1R \sum_r \sum_{t,s}
        \langle h_t^{\ell-1}(x), h_s^{\ell-1}(x') \rangle\,
        \langle \delta_{tr}(x), \delta_{sr}(x') \rangle .

For a layer used once at one position (T = 1, a dense layer on a vector) the double sum has a
single term, so

.. math::

    \Theta^\ell_W = F^\ell \circ B^\ell, \qquad
    \Theta^\ell_{W,b} = (F^\ell + 1) \circ B^\ell,

the finite-width form of the layerwise NTK recursion (Jacot et al. 2018, "Neural Tangent
Kernel"). For T > 1 the kernel is :math:`\sum_{t,s} (X_t X_s^\top) \circ (Y_t Y_s^\top)`
(Novak et al. 2022), whose cross-position terms t ≠ s make it differ from
:math:`F \circ B = \sum_{t,s} (X_t X_t^\top) \circ (Y_s Y_s^\top)` in general (attention keys
and values, embeddings of a sequence, a layer applied twice). :attr:`LayerKernels.positions`
says which case applies; :attr:`LayerKernels.ntk` is always the exact block: for T = 1 it
is computed through the identity, for T > 1 through the engine's structured product (the tests
check both against :func:`metrics.entk.entk`).

Example — Gromov's modular-addition MLP on one-hot pairs: the first layer's forward kernel
counts shared operands, and the output layer's backward kernel is the constant 1/width²
(its sensitivities are e_c / width)::

    >>> import torch
    >>> from testbeds.modadd import ModAddMLP, pairs
    >>> a, b = pairs(5)
    >>> kernels = layer_kernels(ModAddMLP(p=5, width=16), ModAddMLP.encode(a, b, 5))
    >>> list(kernels)
    ['layer1', 'layer2']
    >>> shared = (a[:, None] == a).float() + (b[:, None] == b).float()
    >>> torch.equal(kernels["layer1"].forward, shared)
    True
    >>> torch.allclose(kernels["layer2"].backward, torch.full((25, 25), 1 / 16**2))
    True
    >>> torch.allclose(kernels["layer2"].ntk, kernels["layer2"].factorised(), atol=1e-7)
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from metrics.entk import DEFAULT_CHUNK, Output, _prepare, _structured_kernel, entk
from metrics.jacobians import structured_factors

LAYER_TYPES = (nn.Linear, nn.Embedding)


@dataclass
class LayerKernels:
    """Forward, backward and eNTK kernels of one layer over N inputs.

    ``forward`` F (N, N), ``backward`` B (N, N), ``ntk`` Θ^ℓ (N, N) of the module's weight and
    bias; ``positions`` T, the module's calls × positions per example; ``bias`` whether Θ^ℓ
    includes a trainable bias.
    """

    forward: Tensor
    backward: Tensor
    ntk: Tensor
    positions: int
    bias: bool

    def factorised(self) -> Tensor:
        """(F + 1) ∘ B with a bias, F ∘ B without, (N, N); equals ``ntk`` when T = 1."""
        return (self.forward + 1 if self.bias else self.forward) * self.backward


def _layer_modules(model: nn.Module) -> dict[str, tuple[str, str | None]]:
    """Module name → (weight name, bias name or None) for every ``nn.Linear`` /
    ``nn.Embedding`` whose weight is a trainable parameter registered under that module."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    layers = {}
    for name, module in model.named_modules():
        if type(module) not in LAYER_TYPES:
            continue
        prefix = f"{name}." if name else ""
        if params.get(prefix + "weight") is not module.weight:
            continue
        bias = getattr(module, "bias", None)
        trainable_bias = bias is not None and params.get(prefix + "bias") is bias
        layers[name] = (prefix + "weight", prefix + "bias" if trainable_bias else None)
    return layers


def _check_output(output: Output) -> None:
    if isinstance(output, str) and output == "full":
        raise ValueError(
            "layer kernels average over readouts: output must be 'trace', 'sum', an int class "
            "index or a callable readout, got output='full'"
        )


def layer_kernels(
    model: nn.Module,
    inputs: Tensor,
    *,
    output: Output = "trace",
    layers: Sequence[str] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
) -> dict[str, LayerKernels]:
    """Forward kernel F, backward kernel B and eNTK block Θ^ℓ of layers of ``model``.

    Args:
        inputs: (N, ...) model inputs.
        output: the readout reduction of :func:`metrics.entk.entk`, except ``"full"``.
        layers: qualified names of ``nn.Linear`` / ``nn.Embedding`` modules. Default: every
            such module whose weight is used only through its module a fixed number of times
            per example, in module order.
        chunk_size: inputs per forward/backward pass.

    Returns:
        Layer name → :class:`LayerKernels`, tensors detached in the model's dtype.
    """
    _check_output(output)
    modules = _layer_modules(model)
    if layers is None:
        requested = list(modules)
    else:
        requested = [layers] if isinstance(layers, str) else list(dict.fromkeys(layers))
        unknown = [name for name in requested if name not in modules]
        if unknown:
            raise ValueError(
                f"layers must name nn.Linear / nn.Embedding modules with a trainable weight, "
                f"got {unknown}; allowed: {list(modules)}"
            )
    inputs, readout, _, _ = _prepare(model, inputs, output)
    weights = [modules[name][0] for name in requested]
    biases = [modules[name][1] for name in requested if modules[name][1] is not None]
    factors, _ = structured_factors(model, inputs, readout, weights + biases, chunk_size)
    names = [name for name in requested if modules[name][0] in factors]
    if layers is not None and len(names) < len(requested):
        everything, _ = structured_factors(
            model, inputs, readout, [w for w, _ in modules.values()], chunk_size
        )
        raise ValueError(
            f"the weights of {[n for n in requested if n not in names]} are used outside their "
            f"module or a data-dependent number of times, so they have no forward/backward "
            f"kernels; allowed: {[n for n, (w, _) in modules.items() if w in everything]}"
        )
    if not names:
        return {}
    kernels = {}
    for name in names:
        weight, bias = modules[name]
        f = factors[weight]
        n, T, R = f.Y.shape[:3]
        X = f.X.reshape(n, -1)  # (N, T·d_in)
        Y = f.Y.reshape(n, -1)  # (N, T·R·d_out)
        forward, backward = X @ X.T, Y @ Y.T / R
        # Θ^ℓ: for T = 1 the identity above is exact and reuses F and B; for T > 1 the engine's
        # structured product over position pairs. A bias that did not qualify for the
        # structured path (used elsewhere too) goes through the engine's generic path.
        if T == 1:
            ntk = forward * backward
            if bias in factors:
                ntk = ntk + backward
        else:
            ntk = _structured_kernel(f, full=False)
            if bias in factors:
                ntk = ntk + _structured_kernel(factors[bias], full=False)
        if bias is not None and bias not in factors:
            ntk = ntk + entk(
                model, inputs, output=output, groups={"bias": [bias]}, chunk_size=chunk_size
            )
        kernels[name] = LayerKernels(
            forward=forward.detach(),
            backward=backward.detach(),
            ntk=ntk.detach(),
            positions=T,
            bias=bias is not None,
        )
    return kernels
