"""The Toy Models of Superposition testbed as a :class:`testbeds.contract.Testbed`."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from testbeds.contract import GroundTruth, Probe, Testbed
from testbeds.runs import Run
from testbeds.tms.config import PRESETS, Config
from testbeds.tms.ground_truth import ground_truth
from testbeds.tms.hand_built import antipodal_solution, identity_solution
from testbeds.tms.models import TMSModel
from testbeds.tms.train import TESTBED, probe_inputs, reconstruction_loss, train


def _single(model: TMSModel) -> TMSModel:
    if model.n_instances != 1:
        raise ValueError(
            f"the testbed contract reads single-instance models; this one has "
            f"n_instances={model.n_instances} (use model.instance(i))"
        )
    return model


class TMS(Testbed):
    name = TESTBED
    summary = "Toy Models of Superposition: n sparse features through m < n hidden dimensions"
    config_type = Config
    presets = PRESETS
    hand_built = {"identity_solution": identity_solution, "antipodal_solution": antipodal_solution}

    def train(self, config: Config | str, seed: int = 0, **options: Any) -> Run:
        return train(config, seed, **options)

    def _probe(self, run: Run) -> Probe:
        config = run.config
        if config.n_instances != 1:
            raise ValueError(
                f"the testbed contract reads single-instance configs; this one has "
                f"n_instances={config.n_instances}"
            )
        x = probe_inputs(config, run.seed)
        fixed = config.data == "fixed"
        return Probe(
            inputs=x,
            targets=x,
            loss=reconstruction_loss(config),
            train_rows=torch.arange(len(x)) if fixed else None,
        )

    def probe(self, run: Run) -> Probe:
        """The run's fixed dataset (its training set for ``data="fixed"``), reconstructed
        under the importance-weighted squared error."""
        return self._probe(run)

    def training_set(self, run: Run) -> Probe:
        """The fixed dataset; for ``data="fresh"`` a fixed sample of the training distribution."""
        return self._probe(run)

    def units(self, model: TMSModel) -> list[dict]:
        """The m hidden dimensions (row j of W, shared by the encoder and the decoder)."""
        model = _single(model)
        return [{"W": (1, [j])} for j in range(model.n_hidden)]

    def activations(self, model: TMSModel, inputs: Tensor) -> Tensor:
        """Hidden activations h = W x, (N, m)."""
        return _single(model).hidden(inputs)

    def ground_truth(self, run: Run, model: TMSModel | None = None) -> GroundTruth:
        """The features' directions and norms, which are represented (‖W_j‖² ≥ 0.75), their
        dimensionality, and as directions the indicators of the represented features over
        the N·n channel-major (input, channel) rows."""
        model = _single(run.final_model() if model is None else model)
        truth = ground_truth(model, probe_inputs(run.config, run.seed))
        return GroundTruth(
            input_directions={"represented_features": truth.represented_indicators()},
            values={
                "directions": truth.directions,
                "norms": truth.norms,
                "represented": truth.represented,
                "dimensionality": truth.dimensionality,
                "n_represented": truth.n_represented,
                "features": truth,
            },
        )


testbed = TMS()
__all__ = ["TMS", "testbed"]
