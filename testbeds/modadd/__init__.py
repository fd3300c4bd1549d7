"""Modular addition: quadratic MLP (Gromov 2023) and one-layer transformer (Nanda et al. 2023).

>>> from testbeds import modadd
>>> run = modadd.train(modadd.preset("lin2025_mlp"), seed=0)   # cached after the first call
>>> model = run.final_model()
>>> truth = modadd.ground_truth(model)                          # named arrays over all p² pairs
"""

from testbeds.modadd.config import PRESETS, Config, preset
from testbeds.modadd.ground_truth import (
    CLEAR_CONCENTRATION,
    FAMILIES,
    GENERALISING_IPR,
    KEY_FREQUENCY_FACTOR,
    RESTRICTED_LOSS_END_FRACTION,
    NeuronFrequencies,
    circuit_formation_phase,
    circuit_norm,
    embedding_frequency_power,
    fourier_families,
    fourier_family,
    frequency_power,
    gromov_solution,
    ground_truth,
    key_frequencies,
    memorisation_solution,
    mlp_neuron_mask,
    neuron_frequencies,
    progress_curve,
    progress_measures,
    restrict_to_frequencies,
    sum_frequency_split,
)
from testbeds.modadd.hand_built import fourier_transformer
from testbeds.modadd.models import ModAddMLP, ModAddTransformer
from testbeds.modadd.spec import testbed  # noqa: E402  (the contract object)
from testbeds.modadd.train import (
    SLOW_CPU_MIN_P,
    TESTBED,
    SlowOnCPU,
    continue_training,
    corrupted_labels,
    corruption_ground_truth,
    evaluation_groups,
    labels,
    pairs,
    per_example_loss,
    probe_inputs,
    split,
    train,
)

__all__ = [
    "testbed",
    # configuration
    "Config",
    "PRESETS",
    "preset",
    # models and data
    "ModAddMLP",
    "ModAddTransformer",
    "pairs",
    "labels",
    "probe_inputs",
    "split",
    "corrupted_labels",
    "evaluation_groups",
    "per_example_loss",
    # training
    "TESTBED",
    "train",
    "continue_training",
    "SlowOnCPU",
    "SLOW_CPU_MIN_P",
    # ground truth
    "FAMILIES",
    "fourier_family",
    "fourier_families",
    "restrict_to_frequencies",
    "frequency_power",
    "embedding_frequency_power",
    "key_frequencies",
    "neuron_frequencies",
    "NeuronFrequencies",
    "ground_truth",
    "gromov_solution",
    "memorisation_solution",
    "fourier_transformer",
    "corruption_ground_truth",
    "mlp_neuron_mask",
    "circuit_norm",
    "GENERALISING_IPR",
    "KEY_FREQUENCY_FACTOR",
    "CLEAR_CONCENTRATION",
    # progress measures (Nanda et al. 2023)
    "sum_frequency_split",
    "progress_measures",
    "progress_curve",
    "circuit_formation_phase",
    "RESTRICTED_LOSS_END_FRACTION",
]
