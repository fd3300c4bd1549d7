"""Layer kernels against hooked activations, per-example autograd and the eNTK engine."""

from __future__ import annotations

import copy
import doctest
import importlib

import pytest
import torch
from torch import nn

from metrics.entk import entk
from metrics.layer_kernels import layer_kernels
from testbeds.modadd.models import ModAddMLP, ModAddTransformer
from testbeds.modadd.train import pairs

RTOL = 1e-10
P, WIDTH = 5, 16


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.7)
    return model


def _cases():
    g = torch.Generator().manual_seed(0)
    mlp = nn.Sequential(
        nn.Linear(5, 7, bias=True),
        nn.Tanh(),
        nn.Linear(7, 6, bias=False),
        nn.Tanh(),
        nn.Linear(6, 3),
    )
    return {
        "mlp": (_randomise(mlp.double(), 1), torch.randn(9, 5, generator=g, dtype=torch.float64)),
        "modadd_mlp": (
            _randomise(ModAddMLP(P, WIDTH).double(), 2),
            ModAddMLP.encode(*pairs(P), P).double(),
        ),
        "transformer": (
            _randomise(ModAddTransformer(P, d_model=8, n_heads=2, d_mlp=16).double(), 3),
            torch.stack([*pairs(P), torch.full((P * P,), P)], 1),
        ),
    }


CASES = _cases()
DENSE = ["mlp", "modadd_mlp"]

# output argument → the readout of one example's outputs (1, C) as a vector (R,)
READOUTS = {
    "trace": ("trace", lambda z: z.reshape(-1)),
    "sum": ("sum", lambda z: z.sum().reshape(1)),
    "index": (1, lambda z: z.reshape(-1)[1:2]),
    "callable": (lambda z: torch.logsumexp(z, -1), lambda z: torch.logsumexp(z, -1)),
}


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def bruteforce(model, x, names, readout) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """name → (F, B) from forward-hooked inputs and per-example, per-readout autograd
    gradients with respect to every call's output, one example at a time."""
    modules = dict(model.named_modules())
    H = {name: [] for name in names}  # per example: (T, d_in)
    G = {name: [] for name in names}  # per example: (R, T·d_out)
    for xi in x:
        calls = {name: [] for name in names}
        hooks = [
            modules[name].register_forward_hook(
                lambda m, inp, out, name=name, calls=calls: calls[name].append((inp[0], out))
            )
            for name in names
        ]
        try:
            y = readout(model(xi[None]))  # (R,)
        finally:
            for hook in hooks:
                hook.remove()
        for name in names:
            module = modules[name]
            if isinstance(module, nn.Embedding):
                h = [
                    nn.functional.one_hot(inp.reshape(-1), module.num_embeddings).double()
                    for inp, _ in calls[name]
                ]
            else:
                h = [inp.reshape(-1, inp.shape[-1]) for inp, _ in calls[name]]
            H[name].append(torch.cat(h).detach())
            outs = [out for _, out in calls[name]]
            per_readout = [torch.autograd.grad(yr, outs, retain_graph=True) for yr in y]
            G[name].append(
                torch.stack([torch.cat([g.reshape(-1) for g in gs]) for gs in per_readout])
            )
    kernels = {}
    for name in names:
        h, g = torch.stack(H[name]), torch.stack(G[name])
        kernels[name] = (
            torch.einsum("itd,jtd->ij", h, h),
            torch.einsum("ird,jrd->ij", g, g) / g.shape[1],
        )
    return kernels


@pytest.mark.parametrize("output", sorted(READOUTS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_and_backward_kernels_match_bruteforce(case, output):
    model, x = CASES[case]
    arg, readout = READOUTS[output]
    kernels = layer_kernels(model, x, output=arg)
    expected = bruteforce(model, x, list(kernels), readout)
    for name, k in kernels.items():
        F, B = expected[name]
        assert rel(k.forward, F) <= RTOL, name
        assert rel(k.backward, B) <= RTOL, name
        assert k.forward.dtype == k.backward.dtype == k.ntk.dtype == torch.float64


def test_default_layers_and_closed_forms_of_the_modadd_mlp():
    """One-hot pairs: F¹ counts shared operands. The output layer's sensitivities are
    e_c / width, so B² = 1/width² for the class average and p/width² for the sum."""
    model, x = CASES["modadd_mlp"]
    a, b = pairs(P)
    shared = (a[:, None] == a).double() + (b[:, None] == b).double()
    trace = layer_kernels(model, x)
    total = layer_kernels(model, x, output="sum")
    assert list(trace) == ["layer1", "layer2"]
    assert torch.equal(trace["layer1"].forward, shared)
    ones = torch.ones(P * P, P * P, dtype=torch.float64)
    assert rel(trace["layer2"].backward, ones / WIDTH**2) <= RTOL
    assert rel(total["layer2"].backward, ones * P / WIDTH**2) <= RTOL


@pytest.mark.parametrize("output", ["trace", "sum"])
@pytest.mark.parametrize("case", DENSE)
def test_dense_layer_ntk_is_forward_times_backward(case, output):
    model, x = CASES[case]
    kernels = layer_kernels(model, x, output=output)
    engine = entk(model, x, output=output, by_layer=True)
    assert list(kernels) == list(engine)
    for name, k in kernels.items():
        assert k.positions == 1
        assert rel(k.ntk, engine[name]) <= RTOL, name
        assert rel(k.factorised(), k.ntk) <= RTOL, name
    if case == "mlp":
        assert [k.bias for k in kernels.values()] == [True, False, True]
        weight_only = entk(model, x, output=output, by_layer=True, groups={"w": ["0.weight"]})
        assert rel(kernels["0"].forward * kernels["0"].backward, weight_only["w"]) <= RTOL


def test_multi_position_layers_are_not_forward_times_backward():
    """Keys and values see the three tokens (a, b, =): the kernel has cross-position terms
    that F ∘ B lacks, while layers at the "=" position alone still factorise."""
    model, tokens = CASES["transformer"]
    kernels = layer_kernels(model, tokens)
    assert list(kernels) == ["embed", "W_Q", "W_K", "W_V", "W_O", "mlp_in", "mlp_out", "unembed"]
    for name in ("W_K", "W_V"):
        k = kernels[name]
        assert k.positions == 3
        assert rel(k.ntk, entk(model, tokens, by_layer=True, groups={name: [name]})[name]) <= RTOL
        assert rel(k.factorised(), k.ntk) > 1e-2, name
    for name in ("W_Q", "W_O", "mlp_in", "mlp_out", "unembed"):
        assert kernels[name].positions == 1
        assert rel(kernels[name].factorised(), kernels[name].ntk) <= RTOL, name
    same_tokens = (tokens[:, None, :] == tokens[None, :, :]).sum(-1).double()
    assert torch.equal(kernels["embed"].forward, same_tokens)
    pos = entk(model, tokens, by_layer=True, groups={"pos": ["pos"]})["pos"]
    assert rel(sum(k.ntk for k in kernels.values()) + pos, entk(model, tokens)) <= RTOL


def test_selected_layers_and_float32():
    model, x = CASES["mlp"]
    reference = layer_kernels(model, x)
    picked = layer_kernels(copy.deepcopy(model).float(), x.float(), layers=["4", "0"])
    assert list(picked) == ["4", "0"]
    for name, k in picked.items():
        assert k.ntk.dtype == torch.float32
        assert rel(k.ntk.double(), reference[name].ntk) <= 1e-5
        assert rel(k.backward.double(), reference[name].backward) <= 1e-5


class TiedEmbedding(nn.Module):
    """An embedding whose weight is also the unembedding, used outside any module."""

    def __init__(self, vocab=6, d=4):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.mix = nn.Linear(d, d)

    def forward(self, tokens):  # (N, T) -> (N, vocab)
        return torch.tanh(self.mix(self.embed(tokens))).mean(1) @ self.embed.weight.T


@pytest.mark.parametrize(
    "model, inputs, kwargs, match",
    [
        (*CASES["mlp"], {"layers": ["nope"]}, r"allowed: \['0', '2', '4'\]"),
        (*CASES["mlp"], {"layers": ["1"]}, r"got \['1'\]; allowed"),
        (*CASES["mlp"], {"output": "full"}, "output must be 'trace', 'sum'"),
        (*CASES["mlp"], {"output": 7}, "output index must be in 0..2"),
        (
            TiedEmbedding(),
            torch.randint(0, 6, (5, 3)),
            {"layers": ["embed"]},
            r"allowed: \['mix'\]",
        ),
    ],
)
def test_bad_arguments_raise_clear_errors(model, inputs, kwargs, match):
    with pytest.raises(ValueError, match=match):
        layer_kernels(model, inputs, **kwargs)


def test_weight_used_outside_its_module_is_left_out_by_default():
    assert list(layer_kernels(TiedEmbedding(), torch.randint(0, 6, (5, 3)))) == ["mix"]


def test_doctests():
    # the package exports the function under the module's name, so fetch the module itself
    module = importlib.import_module("metrics.layer_kernels")
    assert doctest.testmod(module).failed == 0
