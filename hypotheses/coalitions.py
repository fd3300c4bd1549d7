"""Shared computations of the coalition claims H7 (circuit depth) and H8 (policing circuits).

Players are parameter units: for the quadratic MLP its hidden neurons (row j of ``layer1`` and
column j of ``layer2``); for the transformer its attention heads (their rows of W_Q, W_K, W_V
and columns of W_O) and its MLP neurons (row j of ``mlp_in``, and its bias j where the
network has MLP biases, column j of ``mlp_out``). The transformer's embeddings, positional
embedding and unembedding belong to no unit; they stay at θ_t in every coalition, and the loss
decrease of the whole update is recorded beside v(all units).

Trees are built once per run, at its final checkpoint, and held fixed (:func:`unit_trees`,
cached on disk with the trajectory cache):

* ``entk`` — recursive spectral bisection of the eNTK unit similarity S (class-averaged trace
  kernels over all p² input pairs, double-centred; :func:`metrics.entk.unit_similarity`);
* ``gauss_newton`` — of the normalised Gauss–Newton block energies ‖G_jk‖²/(‖G_jj‖‖G_kk‖) of
  the training loss, G on ``CURVATURE_EXAMPLES`` training examples (all readouts);
* ``whitened`` — of the unit similarity of the noise-whitened kernel J C Jᵀ, C the per-example
  gradient covariance of the training loss over the whole training set, J on the same
  ``CURVATURE_EXAMPLES`` examples;
* ``random`` — the control: a balanced tree over a random permutation of the units.

Every tree is balanced (sibling subtrees differ by at most one unit), so heights mean the same
in all four. Coalition values are those of :class:`metrics.coalitions.UpdateGame` on the
training set with the labels trained on (corrupted ones included), in float64.

Checkpoint pairs: (t_k, t_{k+1}) for every third k of the run's 39 checkpoints and the last
pair, 14 consecutive pairs from initialisation to the end.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

import testbeds
from metrics.coalitions import UpdateGame, parameter_masks, tree_decompositions
from metrics.entk import UnitSpec, unit_similarity
from metrics.hierarchy import (
    Tree,
    block_energy_similarity,
    gauss_newton_factor,
    output_jacobian,
    spectral_bisection,
    whitened_unit_similarity,
)
from metrics.noise import GradientNoise
from metrics.whitened import noise_factor
from testbeds.runs import Run
from testbeds.trajectory import map_checkpoints, metric_series

TREE_KINDS = ("entk", "gauss_newton", "whitened", "random")
CURVATURE_EXAMPLES = 32  # training examples of the Gauss–Newton and whitened unit kernels
CURVATURE_SEED = 7000  # + seed: which training examples
RANDOM_TREE_SEED = 8000  # + seed: the control tree
PAIR_EVERY = 3  # every third consecutive checkpoint pair, plus the last one


def players(model: nn.Module) -> list[UnitSpec]:
    """The units of a modular-addition network (module docstring): the testbed's units."""
    return testbeds.get("modadd").units(model)


def training_set(run: Run):
    """(per-example loss, inputs, targets) of the run's training loss."""
    train = testbeds.of(run).training_set(run)
    return train.loss, train.loss_inputs, train.targets


def similarity(model: nn.Module, run: Run, kind: str) -> torch.Tensor:
    """The unit similarity (U, U) behind one kind of tree (module docstring)."""
    units = players(model)
    if kind == "entk":
        return unit_similarity(model, testbeds.of(run).probe(run).inputs, units, center=True)
    loss, x, y = training_set(run)
    model = model.double()
    x = x.double() if x.is_floating_point() else x
    generator = torch.Generator().manual_seed(CURVATURE_SEED + run.seed)
    sub = torch.randperm(len(x), generator=generator)[:CURVATURE_EXAMPLES]
    J = output_jacobian(model, x[sub])  # (n, R, P)
    masks = parameter_masks(model, units)
    if kind == "gauss_newton":
        factor = gauss_newton_factor(model, loss, x[sub], y[sub], J)
        return block_energy_similarity(factor, masks, max_block_bytes=2**30)
    if kind == "whitened":
        noise = GradientNoise.from_model(model, loss, x, y)
        return whitened_unit_similarity(J, noise_factor(noise), masks)
    raise ValueError(f"kind must be one of {TREE_KINDS}, got kind={kind!r}")


def unit_trees(run: Run, kinds: tuple[str, ...] = TREE_KINDS) -> dict[str, Tree]:
    """The run's trees, built at its final checkpoint; all but the random one are cached with
    the trajectories."""
    unknown = [k for k in kinds if k not in TREE_KINDS]
    if unknown:
        raise ValueError(f"kinds must be among {TREE_KINDS}, got {unknown}")
    U = len(players(run.final_model()))
    trees = {}
    for kind in kinds:
        if kind == "random":
            generator = torch.Generator().manual_seed(RANDOM_TREE_SEED + run.seed)
            trees[kind] = Tree.random(U, generator)
            continue

        def encoded(model, step, kind=kind):
            tree = spectral_bisection(similarity(model, run, kind))
            return {
                f"{i}/{side}": float(c)
                for i, pair in enumerate(tree.children)
                for side, c in zip("lr", pair, strict=True)
            }

        frame = map_checkpoints(
            run,
            encoded,
            name=f"coalition-tree-{kind}",
            version=str(CURVATURE_EXAMPLES),
            steps=[run.steps[-1]],
            progress=False,
        )
        values = dict(zip(frame["metric"], frame["value"], strict=True))
        children = tuple((int(values[f"{i}/l"]), int(values[f"{i}/r"])) for i in range(U - 1))
        trees[kind] = Tree(U, children)
    return trees


def pair_starts(run: Run) -> list[int]:
    """First steps of the checkpoint pairs (module docstring)."""
    starts = run.steps[:-1][::PAIR_EVERY]
    return sorted({*starts, run.steps[-2]})


def next_step(run: Run, step: int) -> int:
    return run.steps[run.steps.index(step) + 1]


def depth_profiles(run: Run, trees: dict[str, Tree] | None = None, workers: int = 1):
    """Tidy frame of every pair's depth profile per tree: ``<tree>/share`` (interactions of
    height ≥ 1), ``<tree>/height`` (attribution height), ``<tree>/h<k>`` (share at height k),
    ``<tree>/residual``; ``v_units`` = v(all units) and ``v_update`` = the loss decrease of
    the whole update. Indexed by the pair's first step."""
    trees = unit_trees(run) if trees is None else trees
    loss, x, y = training_set(run)

    def metric(model, step):
        after = run.checkpoints[next_step(run, step)]
        game = UpdateGame(model, loss, x, y, run.checkpoints[step], after, players(model))
        parts = tree_decompositions(game, trees)
        model.load_state_dict(after)
        with torch.no_grad():
            after_loss = loss(model.double()(x.double() if x.is_floating_point() else x), y)
        out = {"v_units": parts["random"].total, "v_update": game.base - float(after_loss.mean())}
        for kind, part in parts.items():
            out[f"{kind}/share"] = part.interaction_share()
            out[f"{kind}/height"] = part.attribution_height()
            out[f"{kind}/residual"] = part.residual()
            out.update({f"{kind}/h{h}": float(s) for h, s in enumerate(part.profile())})
        return out

    return map_checkpoints(
        run,
        metric,
        name="coalition-depth",
        steps=pair_starts(run),
        workers=workers,
    )


def series(frame, kind: str, statistic: str):
    return metric_series(frame, f"{kind}/{statistic}")


def sectors(tree: Tree, level: int, units: Sequence[UnitSpec], model: nn.Module) -> torch.Tensor:
    """Bool (S, P): the parameters of each sector (node) at ``level`` of the tree."""
    masks = parameter_masks(model, units)
    return torch.stack([masks[tree.members(node)].any(0) for node in tree.level(level)])
