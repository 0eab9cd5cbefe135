"""Configuration: dataset facts, typed job configs with the paper's defaults, YAML defaults, CLI overrides."""

from __future__ import annotations

from typing import NamedTuple


class ConfigError(ValueError):
    """A bad configuration value or key; the message names it."""


class DatasetInfo(NamedTuple):
    num_classes: int
    image_size: int


DATASETS = {
    "cifar10": DatasetInfo(10, 32),
    "cifar100": DatasetInfo(100, 32),
    "svhn": DatasetInfo(10, 32),
    "imagenet": DatasetInfo(1000, 224),
    "digits": DatasetInfo(10, 32),
    "synthetic": DatasetInfo(10, 32),
}
