"""The eNTK engine against brute-force float64 Jacobian contractions on tiny models."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from metrics.entk import (
    _dense_kernel,
    _onehot_kernel,
    entk,
    entk_parameter_block,
    hidden_units,
    parameter_groups,
    unit_kernels,
    unit_similarity,
)
from metrics.entk import tile_size as entk_tile_size
from metrics.jacobians import Factors, structured_factors
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


# --- tiles, one-hot factors and positional parameters ---------------------------------------


class GatedPositions(nn.Module):
    """A (T, d) parameter multiplied into the embedding output: not additive, so it must take
    the generic path; ``pos`` is added and qualifies as a positional factor."""

    def __init__(self, vocab=5, d=4, T=3):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(T + 1, d))  # one spare row, never used
        self.gate = nn.Parameter(torch.ones(T, d))
        self.out = nn.Linear(d, 3)

    def forward(self, tokens):
        T = tokens.shape[1]
        h = (self.embed(tokens) + self.pos[:T]) * self.gate[:T]
        return self.out(torch.tanh(h).sum(1))


@pytest.mark.parametrize("tile", [1, 2, 3, 5])
@pytest.mark.parametrize("output", ["trace", "full", "sum"])
def test_tiled_kernels_equal_untiled(case, output, tile, monkeypatch):
    _, model, x = case
    reference = entk(model, x, output=output, by_layer=True)
    engine = importlib.import_module("metrics.entk")  # the package re-exports entk()

    monkeypatch.setattr(engine, "tile_size", lambda *args: tile)
    tiled = entk(model, x, output=output, by_layer=True)
    assert list(tiled) == list(reference)
    for name in reference:
        torch.testing.assert_close(tiled[name], reference[name], rtol=1e-10, atol=1e-10)


def test_small_memory_budget_tiles_and_agrees(monkeypatch):
    model = _randomise(ModAddTransformer(5, 8, 2, 12).double(), 6)
    x = CASES["transformer"][1]
    reference = entk(model, x, output="full")
    engine = importlib.import_module("metrics.entk")  # the package re-exports entk()

    sizes = []
    real = engine.tile_size
    monkeypatch.setattr(engine, "tile_size", lambda *a: sizes.append(real(*a)) or sizes[-1])
    budgets = [2**k for k in range(12, 30)]
    for budget in budgets:  # from one input per tile to the whole kernel at once
        tiled = entk(model, x, output="full", max_memory=budget)
        torch.testing.assert_close(tiled, reference, rtol=1e-10, atol=1e-10)
    assert sizes[0] == 1 and sizes[-1] == len(x) and any(1 < b < len(x) for b in sizes)
    assert sizes == sorted(sizes)


def test_tile_size_is_the_largest_that_fits_the_budget():
    for per_example, R, full, budget in [(1000, 7, False, 10**6), (50, 3, True, 123_457)]:
        b = entk_tile_size(per_example, 10**6, R, full, 8, budget)
        block = 6 * 8 * (R * R if full else 1)
        assert 4 * b * per_example + block * b * b <= budget
        assert 4 * (b + 1) * per_example + block * (b + 1) ** 2 > budget
    assert entk_tile_size(10**9, 50, 3, False, 8, 10) == 1  # never below one input
    assert entk_tile_size(1, 50, 3, False, 8, 10**12) == 50  # never above N
    with pytest.raises(ValueError, match="max_memory must be a positive int"):
        entk(*CASES["mlp_quadratic"], max_memory=0)


def test_positional_parameter_is_structured_and_gated_one_is_generic():
    model = _randomise(GatedPositions().double(), 7)
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 5, (9, 3), generator=g)
    x[:, 1] = x[:, 0]  # the same token twice in one example: index-matching must accumulate
    names = [n for n, _ in model.named_parameters()]
    factors, generic = structured_factors(model, x, lambda z: z, names, 4, positional=True)
    assert "pos" in factors and factors["pos"].ids is not None
    assert "gate" in generic and "gate" not in factors
    J = brute_jacobians(model, x, lambda z: z)
    layers = entk(model, x, output="full", by_layer=True)
    for group, members in parameter_groups(model).items():
        assert rel(layers[group], brute_kernel(J, members, "full")) <= RTOL, group


@pytest.mark.parametrize("full", [False, True])
def test_index_matching_equals_dense_position_pairs(full):
    g = torch.Generator().manual_seed(11)
    V, R, d = 4, 3, 5

    def factor(n, T):
        ids = torch.randint(0, V, (n, T), generator=g)
        X = nn.functional.one_hot(ids, V).double()
        return Factors(X, torch.randn(n, T, R, d, generator=g, dtype=torch.float64), False, ids)

    a, b = factor(6, 4), factor(5, 4)
    for other in (None, b):
        torch.testing.assert_close(
            _onehot_kernel(a, other, full), _dense_kernel(a, other, full), rtol=1e-12, atol=1e-12
        )


@pytest.mark.gpu
def test_tiled_kernel_peak_memory_on_gpu_is_output_plus_budget():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from testbeds import modadd

    config = modadd.preset("lin2025_transformer")
    model = config.build_model()
    model.reset_parameters(torch.Generator().manual_seed(0))
    model = model.cuda().eval()
    x = modadd.probe_inputs(config).cuda()
    reference = entk(model, x)
    budget = 64 * 2**20
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    tiled = entk(model, x, max_memory=budget)
    peak = torch.cuda.max_memory_allocated() - base
    assert peak <= tiled.numel() * tiled.element_size() + budget
    torch.testing.assert_close(tiled, reference, rtol=1e-4, atol=1e-5)
