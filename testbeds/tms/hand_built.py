r"""Hand-built toy models of superposition whose answer is known (the planted positives).

Two exact solutions of the model h = W x, y = ReLU(p), p = Wᵀ W x + b, at any size (the
``lin2025_tms_*`` presets have n = 50 features and m = 10 or 40 hidden dimensions):

* :func:`identity_solution` — each represented feature gets a hidden dimension of its own:
  W (m, n) is an exact 0/1 embedding (column ``features[k]`` is the unit vector e_k), so
  p_c = x_c + b_c. Represented: ``features`` (default the m most important, 0 … m − 1),
  r = min(m, n), ‖W_c‖² = 1 and dimensionality 1.
* :func:`antipodal_solution` — the sparse-regime solution of Elhage et al. (2022): features
  2k and 2k + 1 share hidden dimension k with opposite signs (W_{2k} = e_k, W_{2k+1} = −e_k),
  so p_{2k} = x_{2k} − x_{2k+1} + b. Represented: features 0 … 2P − 1 for P pairs (default
  P = min(m, ⌊n/2⌋)), r = 2P, ‖W_c‖² = 1 and dimensionality exactly 1/2.

Every weight is 0 or ±1, so the products and sums of the forward pass are exact: a
pre-activation is never a round-off residue (the earlier seeded random rotation left every
absent feature's pre-activation at ±10⁻⁸, so its ReLU derivative was a coin flip).

Channels and gates (the gate of channel c is p_c > 0):

* **represented** channels get the bias ``REPRESENTED_BIAS`` = −10⁻⁶. With a zero bias an
  absent feature's pre-activation would be exactly 0.0 — not round-off, but the ReLU's kink,
  where the derivative is a convention (torch uses 0). The small negative bias moves every such
  pre-activation to exactly −10⁻⁶, so the gate is off there without a convention, and it
  stays below the smallest non-zero feature value of the presets' inputs (6.0·10⁻⁶ over
  seeds 0–5; checked in ``tests/test_tms.py``), so the identity's gate is on exactly where
  x_c > 0. The eNTK equals that of the zero-bias network under torch's convention ReLU′(0) = 0
  (the gates and W are the same; the gradients do not depend on b's value). The output is
  x_c − 10⁻⁶ instead of x_c. An antipodal channel's gate is on where x_{2k} > x_{2k+1} + 10⁻⁶:
  exactly where its feature is non-zero on inputs without its partner, and decided by the
  larger of the two where both are active (about 1% of inputs per pair at S = 0.9).
* **unrepresented** channels have W_c = 0, so p_c = b_c exactly; ``unrepresented="dead"``
  gives b_c = ``DEAD_BIAS`` = −0.02 (gate never on: y_c = 0 and no gradient reaches the
  channel), ``"alive"`` gives b_c = ``ALIVE_BIAS`` = +0.02 (gate always on: y_c = 0.02, and
  the bias and W's column c still get gradient; any positive value gives the same eNTK).

Example — the identity reconstructs its represented features::

    >>> import torch
    >>> model = identity_solution(5, 3, unrepresented="dead")
    >>> x = torch.tensor([[0.5, 0.0, 0.25, 1.0, 0.75]])
    >>> torch.allclose(model(x), torch.tensor([[0.5, 0.0, 0.25, 0.0, 0.0]]), atol=1e-5)
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from testbeds.tms.models import TMSModel

REPRESENTED_BIAS = -1e-6  # below the smallest non-zero feature of the presets' inputs (6.0e-6)
DEAD_BIAS = -0.02  # unrepresented channel, gate never on
ALIVE_BIAS = 0.02  # unrepresented channel, gate always on
UNREPRESENTED = ("dead", "alive")


def _bias(n_features: int, represented: Tensor, unrepresented: str) -> Tensor:
    if unrepresented not in UNREPRESENTED:
        raise ValueError(
            f"unrepresented must be one of {UNREPRESENTED}, got unrepresented={unrepresented!r}"
        )
    other = DEAD_BIAS if unrepresented == "dead" else ALIVE_BIAS
    b = torch.full((n_features,), other)
    b[represented] = REPRESENTED_BIAS
    return b


def _check_sizes(n_features: int, n_hidden: int) -> None:
    for name, value in (("n_features", n_features), ("n_hidden", n_hidden)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {name}={value!r}")


def identity_solution(
    n_features: int,
    n_hidden: int,
    unrepresented: str = "dead",
    features: Sequence[int] | None = None,
) -> TMSModel:
    """W (m, n) with W[k, features[k]] = 1 and zeros elsewhere: every feature in ``features``
    (default 0 … min(m, n) − 1, the most important ones) has a hidden dimension of its own.

    Represented count r = len(features); y_c = x_c − 10⁻⁶ where x_c > 0 and 0 elsewhere for a
    represented c; unrepresented channels are ``"dead"`` or ``"alive"`` (module docstring).
    """
    _check_sizes(n_features, n_hidden)
    if features is None:
        features = range(min(n_hidden, n_features))
    features = [int(f) for f in features]
    if (
        not features
        or len(features) > n_hidden
        or len(set(features)) != len(features)
        or not all(0 <= f < n_features for f in features)
    ):
        raise ValueError(
            f"features must be 1..{n_hidden} distinct indices in 0..{n_features - 1}, "
            f"got features={features}"
        )
    W = torch.zeros(n_hidden, n_features)
    W[torch.arange(len(features)), torch.tensor(features)] = 1.0
    return TMSModel.from_weights(W, _bias(n_features, torch.tensor(features), unrepresented))


def antipodal_solution(
    n_features: int,
    n_hidden: int,
    unrepresented: str = "dead",
    n_pairs: int | None = None,
) -> TMSModel:
    """W (m, n) with W[k, 2k] = 1 and W[k, 2k + 1] = −1 for k < ``n_pairs`` (default
    min(m, ⌊n/2⌋)): features 0 … 2·n_pairs − 1 are represented as antipodal pairs, two per
    hidden dimension, each with dimensionality 1/2.

    Represented count r = 2·n_pairs; unrepresented channels are ``"dead"`` or ``"alive"``
    (module docstring).
    """
    _check_sizes(n_features, n_hidden)
    most = min(n_hidden, n_features // 2)
    if n_pairs is None:
        n_pairs = most
    if not isinstance(n_pairs, int) or isinstance(n_pairs, bool) or not 1 <= n_pairs <= most:
        raise ValueError(
            f"n_pairs must be an int in 1..min(n_hidden, n_features // 2) = {most}, "
            f"got n_pairs={n_pairs!r}"
        )
    W = torch.zeros(n_hidden, n_features)
    k = torch.arange(n_pairs)
    W[k, 2 * k] = 1.0
    W[k, 2 * k + 1] = -1.0
    return TMSModel.from_weights(W, _bias(n_features, torch.arange(2 * n_pairs), unrepresented))


def partner(feature: int) -> int:
    """The other feature of an antipodal pair: 2k ↔ 2k + 1."""
    return feature ^ 1
