"""Testbeds: models, data, training and ground truth. Each testbed is a subpackage with a
``Config`` (named presets), ``train(config, seed) -> Run`` and its ground-truth arrays."""

from testbeds.runs import Run, cache_dir, config_hash

__all__ = ["Run", "cache_dir", "config_hash"]
