import torch

from leaderboard import NotApplicable, register_method


@register_method("input_gram", source="baseline: eigenvectors of the raw input Gram matrix")
def input_gram(problem):
    """Top-k eigenvectors of X Xᵀ over the probe inputs; ignores the trained network."""
    if problem.kind != "directions" or problem.over != "inputs":
        raise NotApplicable("returns directions over inputs only")
    X = problem.inputs.reshape(len(problem.inputs), -1).double()
    _, vectors = torch.linalg.eigh(X @ X.T)  # ascending eigenvalues
    return vectors[:, -problem.k :]  # (rows, k)
