"""The eNTK engine against brute-force float64 Jacobian contractions on tiny models."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from metrics.entk import (
    entk,
    entk_parameter_block,
    hidden_units,
    parameter_groups,
    unit_kernels,
    unit_similarity,
)
from testbeds.modadd.models import ModAddMLP, ModAddTransformer

RTOL = 1e-6


class TiedLM(nn.Module):
    """Embedding tied to the unembedding, plus a Conv1d (generic path) and a plain Parameter."""

    def __init__(self, vocab=6, d=5):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.conv = nn.Conv1d(d, d, kernel_size=2)
        self.scale = nn.Parameter(torch.ones(d))
        self.mix = nn.Linear(d, d)

    def forward(self, tokens):  # (N, T) -> (N, vocab)
        h = self.embed(tokens)  # (N, T, d)
        h = torch.tanh(self.conv(h.transpose(1, 2))).transpose(1, 2)  # (N, T-1, d)
        h = self.mix(h * self.scale).mean(1)  # (N, d)
        return h @ self.embed.weight.T  # tied unembedding, used outside any module


class SharedLinear(nn.Module):
    """One Linear applied twice (weight sharing across calls) with a tanh between."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.lin(torch.tanh(self.lin(x)))))


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.7)
    return model


def _cases():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, 5, (7,), generator=g), torch.randint(0, 5, (7,), generator=g)
    return {
        "mlp_quadratic": (ModAddMLP(5, 6), ModAddMLP.encode(a, b, 5)),
        "mlp_relu": (ModAddMLP(5, 6, "relu"), ModAddMLP.encode(a, b, 5)),
        "transformer": (
            ModAddTransformer(5, 8, 2, 12),
            torch.stack([a, b, torch.full_like(a, 5)], 1),
        ),
        "generic_tied": (TiedLM(), torch.randint(0, 6, (7, 4), generator=g)),
        "shared_linear": (SharedLinear(), torch.randn(7, 4, generator=g)),
    }


CASES = _cases()


def brute_jacobians(model, x, readout):
    """name → (N, R, P) per-example Jacobians by vmap(jacrev), float64."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def f(theta, xi):
        return readout(functional_call(model, theta, (xi[None],)))[0]

    J = vmap(jacrev(f), in_dims=(None, 0))(params, x)
    return {k: v.reshape(v.shape[0], v.shape[1], -1) for k, v in J.items()}


def brute_kernel(J: dict, names, output: str) -> torch.Tensor:
    full = sum(torch.einsum("nrp,msp->nmrs", J[n], J[n]) for n in names)
    if output == "full":
        return full
    return torch.einsum("nmrr->nm", full) / full.shape[-1]


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(params=sorted(CASES))
def case(request):
    model, x = CASES[request.param]
    model = _randomise(model.double(), seed=1)
    return request.param, model, x.double() if x.is_floating_point() else x


@pytest.mark.parametrize("output", ["trace", "full", "sum", 1, "callable"])
def test_entk_matches_bruteforce(case, output):
    _, model, x = case
    if output == "callable":
        readout = lambda z: torch.logsumexp(z, -1)[:, None]  # noqa: E731
        arg = lambda z: torch.logsumexp(z, -1)  # noqa: E731
    elif output == "sum":
        readout, arg = (lambda z: z.sum(-1, keepdim=True)), "sum"
    elif isinstance(output, int):
        readout, arg = (lambda z: z[:, 1:2]), 1
    else:
        readout, arg = (lambda z: z), output
    J = brute_jacobians(model, x, readout)
    expected = brute_kernel(J, list(J), "full" if output == "full" else "trace")
    assert rel(entk(model, x, output=arg), expected) <= RTOL


@pytest.mark.parametrize("output", ["trace", "full"])
def test_by_layer_matches_bruteforce_and_sums_to_full(case, output):
    _, model, x = case
    J = brute_jacobians(model, x, lambda z: z)
    layers = entk(model, x, output=output, by_layer=True)
    groups = parameter_groups(model)
    assert list(layers) == list(groups)
    for name, kernel in layers.items():
        assert rel(kernel, brute_kernel(J, groups[name], output)) <= RTOL, name
    assert rel(sum(layers.values()), entk(model, x, output=output)) <= RTOL


def test_small_chunks_and_generic_memory_budget_give_the_same_kernel(case):
    _, model, x = case
    reference = entk(model, x, by_layer=True)
    chunked = entk(model, x, by_layer=True, chunk_size=3, max_jacobian_bytes=200)
    for name in reference:
        assert rel(chunked[name], reference[name]) <= RTOL, name


def test_custom_groups_select_and_sum_parameters():
    model = _randomise(ModAddTransformer(5, 8, 2, 12).double(), 2)
    x = CASES["transformer"][1]
    J = brute_jacobians(model, x, lambda z: z)
    groups = {"attention": ["W_Q", "W_K", "W_V", "W_O"], "embeddings": ["embed.weight", "pos"]}
    layers = entk(model, x, by_layer=True, groups=groups)
    names = {
        "attention": [f"{m}.weight" for m in groups["attention"]],
        "embeddings": ["embed.weight", "pos"],
    }
    for group, kernel in layers.items():
        assert rel(kernel, brute_kernel(J, names[group], "trace")) <= RTOL
    assert rel(entk(model, x, groups=groups), sum(layers.values())) <= RTOL


def test_parameter_used_outside_its_module_is_detected():
    """The tied embedding is also used by a matmul outside nn.Embedding; the structured path
    alone would miss that use. The engine must notice and still be exact."""
    model = _randomise(TiedLM().double(), 3)
    x = CASES["generic_tied"][1]
    J = brute_jacobians(model, x, lambda z: z)
    assert (
        rel(entk(model, x, by_layer=True)["embed"], brute_kernel(J, ["embed.weight"], "trace"))
        <= RTOL
    )


def test_parameters_of_an_unused_module_get_a_zero_kernel():
    model = _randomise(ModAddMLP(5, 6).double(), 9)
    model.spare = nn.Linear(3, 3).double()  # registered but never called in forward
    x = CASES["mlp_quadratic"][1].double()
    layers = entk(model, x, by_layer=True)
    assert torch.equal(layers["spare"], torch.zeros(7, 7, dtype=torch.float64))
    assert rel(layers["layer1"] + layers["layer2"], entk(model, x)) <= RTOL


def test_float32_model_agrees_with_float64_reference():
    model, x = CASES["mlp_quadratic"]
    model = _randomise(model.double(), 4)
    expected = entk(model, x.double())
    got = entk(model.float(), x.float())
    assert got.dtype == torch.float32
    assert rel(got.double(), expected) <= 1e-5


def test_parameter_block_matches_bruteforce():
    model = _randomise(ModAddMLP(5, 6).double(), 5)
    x = CASES["mlp_quadratic"][1].double()
    J = brute_jacobians(model, x, lambda z: z)
    Jg = torch.cat([J["layer1.weight"], J["layer2.weight"]], -1).reshape(-1, 60 + 30)
    block = entk_parameter_block(model, x, ["layer1", "layer2"])
    assert rel(block, Jg.T @ Jg / 5) <= RTOL
    assert (
        rel(
            entk_parameter_block(model, x, "layer2", output="full"),
            J["layer2.weight"].reshape(-1, 30).T @ J["layer2.weight"].reshape(-1, 30),
        )
        <= RTOL
    )
    # the trace identity: tr(JᵀJ) = tr Θ for the trace kernel
    assert torch.isclose(block.trace(), entk(model, x).trace(), rtol=1e-10)


def _bruteforce_unit_kernels(model, x, width, output):
    J = brute_jacobians(model, x, lambda z: z)
    p = model.p
    w1 = J["layer1.weight"].reshape(len(x), p, width, 2 * p)
    w2 = J["layer2.weight"].reshape(len(x), p, p, width)
    kernels = []
    for j in range(width):
        g = torch.cat([w1[:, :, j, :], w2[:, :, :, j]], dim=-1)  # (N, R, P_j)
        full = torch.einsum("nrp,msp->nmrs", g, g)
        kernels.append(full if output == "full" else torch.einsum("nmrr->nm", full) / p)
    return kernels


@pytest.mark.parametrize("output", ["trace", "full"])
def test_unit_similarity_matches_bruteforce(output):
    model = _randomise(ModAddMLP(5, 6).double(), 6)
    x = CASES["mlp_quadratic"][1].double()
    kernels = _bruteforce_unit_kernels(model, x, 6, output)
    flat = torch.stack([k.reshape(-1) for k in kernels])
    gram = flat @ flat.T
    expected = gram / gram.diagonal().sqrt()[:, None] / gram.diagonal().sqrt()[None, :]
    units = hidden_units(model, "layer1", "layer2")
    S = unit_similarity(model, x, units, output=output, max_block_bytes=1000)
    assert (S - expected).abs().max() <= 1e-10
    kernel_of = unit_kernels(model, x, units, output=output)
    assert rel(kernel_of(units[2]), kernels[2]) <= RTOL


def test_full_unit_similarity_is_parameter_space_block_energy():
    """⟨Θ_j, Θ_k⟩_F = ‖J_jᵀ J_k‖_F² with rows over (input, output) pairs."""
    model = _randomise(ModAddMLP(5, 6).double(), 7)
    x = CASES["mlp_quadratic"][1].double()
    J = brute_jacobians(model, x, lambda z: z)
    w1 = J["layer1.weight"].reshape(-1, 6, 10)
    w2 = J["layer2.weight"].reshape(-1, 5, 6)
    Jj = [torch.cat([w1[:, j], w2[:, :, j]], -1) for j in range(6)]  # (N·R, P_j)
    energy = torch.tensor([[(a.T @ b).square().sum() for b in Jj] for a in Jj])
    expected = energy / energy.diagonal().sqrt()[:, None] / energy.diagonal().sqrt()[None, :]
    S = unit_similarity(model, x, hidden_units(model, "layer1", "layer2"), output="full")
    assert (S - expected).abs().max() <= 1e-10


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"output": "diag"}, "output must be one of"),
        ({"output": 9}, "output index must be in 0..4"),
        ({"output": lambda z: z}, "one scalar per example"),
        ({"groups": {"g": ["nope"]}}, "neither a trainable parameter nor a module"),
        ({"groups": {"g": ["layer1"], "h": ["layer1.weight"]}}, "must not overlap"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    model, x = CASES["mlp_quadratic"]
    with pytest.raises(ValueError, match=match):
        entk(model, x, **kwargs)


def test_hidden_units_rejects_non_linear_modules():
    model = ModAddTransformer(5, 8, 2, 12)
    with pytest.raises(ValueError, match="must name an nn.Linear"):
        hidden_units(model, "embed", "unembed")


def test_centred_unit_similarity_matches_bruteforce():
    model = _randomise(ModAddMLP(5, 6).double(), 8)
    x = CASES["mlp_quadratic"][1].double()
    H = torch.eye(len(x), dtype=torch.float64) - 1 / len(x)
    kernels = [H @ k @ H for k in _bruteforce_unit_kernels(model, x, 6, "trace")]
    flat = torch.stack([k.reshape(-1) for k in kernels])
    gram = flat @ flat.T
    expected = gram / gram.diagonal().sqrt()[:, None] / gram.diagonal().sqrt()[None, :]
    S = unit_similarity(model, x, hidden_units(model, "layer1", "layer2"), center=True)
    assert (S - expected).abs().max() <= 1e-10
