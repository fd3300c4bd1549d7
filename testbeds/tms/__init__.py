"""Toy Models of Superposition (Elhage et al. 2022) with its ground-truth features.

>>> from testbeds import tms
>>> config = tms.preset("lin2025_tms_m10_s0.9")
>>> run = tms.train(config, seed=0)                   # cached after the first call
>>> x = tms.probe_inputs(config, seed=0)              # the fixed dataset, (500, 50)
>>> truth = tms.ground_truth(run.final_model(), x)    # directions, represented, indicators …
>>> planted = tms.antipodal_solution(50, 10, unrepresented="dead")  # hand-built, r = 20
"""

from testbeds.tms.config import PRESETS, Config, preset
from testbeds.tms.ground_truth import (
    GroundTruth,
    center_blocks,
    dimensionality,
    feature_indicators,
    feature_recovery,
    flat_index,
    ground_truth,
    indicator_basis,
    matched_cosines,
)
from testbeds.tms.hand_built import (
    ALIVE_BIAS,
    DEAD_BIAS,
    REPRESENTED_BIAS,
    UNREPRESENTED,
    antipodal_solution,
    identity_solution,
    partner,
)
from testbeds.tms.models import TMSModel
from testbeds.tms.spec import testbed  # noqa: E402  (the contract object)
from testbeds.tms.train import (
    REPRESENTED_NORM,
    TESTBED,
    dataset,
    importances,
    loss_per_instance,
    probe_inputs,
    reconstruction_loss,
    represented,
    sample_features,
    train,
)

__all__ = [
    "testbed",
    # configuration
    "Config",
    "PRESETS",
    "preset",
    # model and data
    "TMSModel",
    "importances",
    "sample_features",
    "dataset",
    "probe_inputs",
    "loss_per_instance",
    "reconstruction_loss",
    # training
    "TESTBED",
    "train",
    # ground truth
    "REPRESENTED_NORM",
    "represented",
    "GroundTruth",
    "ground_truth",
    "dimensionality",
    "feature_indicators",
    "indicator_basis",
    "center_blocks",
    "flat_index",
    # hand-built solutions (planted positives)
    "identity_solution",
    "antipodal_solution",
    "partner",
    "UNREPRESENTED",
    "REPRESENTED_BIAS",
    "DEAD_BIAS",
    "ALIVE_BIAS",
    # scoring
    "feature_recovery",
    "matched_cosines",
]
