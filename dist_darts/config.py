"""Configuration: dataset facts, typed job configs with the paper's defaults, YAML defaults, CLI overrides.

Precedence, lowest first: dataclass defaults (the DARTS paper's CIFAR settings), the dataset's preset (ImageNet
retraining), the YAML file given with --config, then the flags given on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from typing import NamedTuple

import yaml


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
    "folder": DatasetInfo(0, 224),  # classes counted from the folder
    "digits": DatasetInfo(10, 32),
    "synthetic": DatasetInfo(10, 32),
}
DATA_BACKENDS = ("auto", "torch", "dali-cpu", "dali-gpu", "synthetic")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def opt(default, help: str, choices=None, **kw):
    """A config field with its --help text (and allowed values)."""
    return field(default=default, metadata={"help": help, "choices": choices}, **kw)


@dataclass
class CommonConfig:
    """Fields shared by search and retrain: data, run folder, precision, distribution."""

    dataset: str = opt("cifar10", "data set", choices=tuple(DATASETS))
    data_dir: str | None = opt(None, "data set folder (not needed for digits and synthetic)")
    data_backend: str = opt("auto", "data pipeline: auto = dali-gpu with a GPU and DALI, else torch",
                            choices=DATA_BACKENDS)
    download: bool = opt(False, "download the data set with torchvision when missing (needs a network)")
    workers: int = opt(4, "data loading workers per rank")
    seed: int = opt(2, "random seed (model init and data split are identical on every rank)")
    output: str = opt("runs/job", "run folder: config, logs, TensorBoard events, checkpoints, results")
    resume: bool = opt(False, "continue from the latest checkpoint in the run folder")
    device: str = opt("auto", "auto = cuda:LOCAL_RANK when CUDA is available, else cpu", choices=("auto", "cpu", "cuda"))
    precision: str = opt("auto", "auto = bf16 autocast on GPU, fp32 on CPU; fp16 uses a gradient scaler",
                         choices=PRECISIONS)
    channels_last: bool = opt(True, "channels_last memory format (faster on GPU and CPU)")
    compile: bool = opt(False, "torch.compile the network")
    sync_bn: bool = opt(False, "SyncBatchNorm across ranks (GPU only): BN statistics over the global batch")
    deterministic: bool = opt(False, "deterministic algorithms (exact resume and reruns; slower)")
    steps_per_epoch: int = opt(0, "cap on steps per epoch (0 = whole epoch); for demos and tests")
    checkpoint_steps: int = opt(0, "also checkpoint every N steps inside an epoch (0 = at epoch ends only)")
    log_interval: int = opt(50, "steps between log lines and TensorBoard scalars")

    def __post_init__(self):
        if self.dataset not in ("digits", "synthetic") and not self.data_dir and not self.download:
            raise ConfigError(f"data-dir: the {self.dataset} data set needs --data-dir (or --download with a network)")
        check_ranges(self, minimum=0, names=("workers", "steps_per_epoch", "checkpoint_steps", "learning_rate",
                                             "weight_decay", "grad_clip"))
        check_ranges(self, minimum=1, names=("epochs", "batch_size", "layers", "init_channels", "log_interval"))


def check_ranges(cfg, minimum, names) -> None:
    for name in names:
        if getattr(cfg, name) is not None and getattr(cfg, name) < minimum:
            raise ConfigError(f"{name.replace('_', '-')}: must be >= {minimum}, got {getattr(cfg, name)}")


@dataclass
class SearchConfig(CommonConfig):
    """DARTS search; defaults are the paper's CIFAR-10 settings."""

    output: str = opt("runs/search", "run folder: config, logs, TensorBoard events, checkpoints, genotypes")
    epochs: int = opt(50, "search epochs")
    batch_size: int = opt(64, "batch size per rank (the global batch is this times the world size)")
    train_portion: float = opt(0.5, "share of the training set used for weights; the rest trains the alphas")
    layers: int = opt(8, "cells in the supernet")
    init_channels: int = opt(16, "initial channels C")
    learning_rate: float = opt(0.025, "weights: initial SGD learning rate (cosine schedule)")
    learning_rate_min: float = opt(0.001, "weights: final learning rate of the cosine schedule")
    momentum: float = opt(0.9, "weights: SGD momentum")
    weight_decay: float = opt(3e-4, "weights: weight decay")
    grad_clip: float = opt(5.0, "weights: gradient norm clipping")
    arch_learning_rate: float = opt(3e-4, "alphas: Adam learning rate")
    arch_weight_decay: float = opt(1e-3, "alphas: Adam weight decay")
    arch_beta1: float = opt(0.5, "alphas: Adam beta1")
    arch_beta2: float = opt(0.999, "alphas: Adam beta2")
    unrolled: bool = opt(False, "second-order DARTS (unrolled virtual step); default first order")
    partial_channels: int = opt(1, "PC-DARTS channel proportion K (1 = off; PC-DARTS uses 4)")

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < self.train_portion < 1.0:
            raise ConfigError(f"train-portion: must be between 0 and 1, got {self.train_portion}")
        if self.partial_channels < 1:
            raise ConfigError(f"partial-channels: must be >= 1, got {self.partial_channels}")
        if self.layers < 3:  # cells layers//3 and 2*layers//3 reduce: fewer than 3 leave no normal cell to search
            raise ConfigError(f"layers: a search needs >= 3 cells (a normal one besides the two reductions), "
                              f"got {self.layers}")


@dataclass
class RetrainConfig(CommonConfig):
    """Training a genotype from scratch; defaults are the paper's CIFAR-10 settings."""

    output: str = opt("runs/retrain", "run folder: config, logs, TensorBoard events, checkpoints, metrics.json")
    genotype: str = opt("DARTS_V2", "published name, genotype JSON or NNI architecture-dict JSON")
    epochs: int = opt(600, "training epochs")
    batch_size: int = opt(96, "batch size per rank (the global batch is this times the world size)")
    layers: int = opt(20, "cells")
    init_channels: int = opt(36, "initial channels C")
    learning_rate: float = opt(0.025, "initial SGD learning rate, for a global batch of --base-batch-size")
    base_batch_size: int = opt(0, "global batch the learning rate is meant for; a larger global batch scales it "
                                  "linearly (0 = no scaling)")
    warmup_epochs: int = opt(0, "linear learning-rate warm-up epochs")
    lr_schedule: str = opt("cosine", "learning-rate schedule", choices=("cosine", "step"))
    learning_rate_min: float = opt(0.0, "final learning rate of the cosine schedule")
    lr_decay: float = opt(0.97, "step schedule: learning rate factor per epoch")
    momentum: float = opt(0.9, "SGD momentum")
    weight_decay: float = opt(3e-4, "weight decay")
    grad_clip: float = opt(5.0, "gradient norm clipping")
    auxiliary: bool = opt(True, "auxiliary head after the second reduction cell")
    auxiliary_weight: float = opt(0.4, "weight of the auxiliary loss")
    cutout: int = opt(16, "Cutout square length (0 = off); a bare --cutout means 16")
    drop_path_prob: float = opt(0.2, "drop path probability, ramped linearly from 0 over the epochs")
    label_smoothing: float = opt(0.0, "label smoothing of the training loss")
    ema_decay: float = opt(0.0, "exponential moving average of the weights (0 = off, e.g. 0.9999)")

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.drop_path_prob < 1.0:
            raise ConfigError(f"drop-path-prob: must be in [0, 1), got {self.drop_path_prob}")
        check_ranges(self, minimum=0, names=("cutout", "warmup_epochs", "base_batch_size"))
        if not 0.0 <= self.label_smoothing < 1.0 or not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError("label-smoothing and ema-decay must be in [0, 1)")


@dataclass
class EvaluateConfig:
    """Evaluating a checkpoint on a data set's test (or val) split."""

    checkpoint: str = opt("", "a retrain checkpoint (runs/.../checkpoints/best.pt), or weights saved by the original "
                              "DARTS code or NNI together with --genotype")
    dataset: str | None = opt(None, "data set (default: the checkpoint's)", choices=tuple(DATASETS))
    data_dir: str | None = opt(None, "data set folder (default: the checkpoint's)")
    data_backend: str = opt("auto", "data pipeline", choices=DATA_BACKENDS)
    download: bool = opt(False, "download the data set with torchvision when missing (needs a network)")
    batch_size: int = opt(128, "batch size per rank")
    workers: int = opt(4, "data loading workers per rank")
    output: str | None = opt(None, "folder for metrics.json, config.yaml and log.txt (default: evaluate/NAME in the "
                                   "checkpoint's run folder, NAME the checkpoint's file name without suffix)")
    genotype: str | None = opt(None, "for a plain state dict: its genotype (name or JSON)")
    layers: int | None = opt(None, "for a plain state dict: its cells (default: the paper's, 20; ImageNet 14)")
    init_channels: int | None = opt(None, "for a plain state dict: its initial channels C (default: the paper's, "
                                          "36; ImageNet 48)")
    device: str = opt("auto", "auto = cuda:LOCAL_RANK when CUDA is available, else cpu", choices=("auto", "cpu", "cuda"))
    precision: str = opt("auto", "auto = bf16 autocast on GPU, fp32 on CPU", choices=PRECISIONS)
    channels_last: bool = opt(True, "channels_last memory format (faster on GPU and CPU)")
    seed: int = opt(0, "seed (evaluation draws no random numbers)")
    compile: bool = opt(False, "torch.compile the network")
    sync_bn: bool = opt(False, "unused in evaluation (BN uses running statistics)")
    deterministic: bool = opt(False, "deterministic algorithms")

    def __post_init__(self):
        if not self.checkpoint:
            raise ConfigError("checkpoint: --checkpoint FILE is required")
        check_ranges(self, minimum=1, names=("batch_size", "layers", "init_channels"))
        if self.output is None:
            parent = os.path.dirname(os.path.abspath(self.checkpoint))
            run_dir = os.path.dirname(parent) if os.path.basename(parent) == "checkpoints" else parent
            # a folder of its own: the retrain's metrics.json and config.yaml stay as they are
            self.output = os.path.join(run_dir, "evaluate", os.path.splitext(os.path.basename(self.checkpoint))[0])


# Flags of `sweep` that are handed on to every search and retrain it runs.
SWEEP_SHARED = ("dataset", "data_dir", "data_backend", "download", "workers", "device", "precision", "batch_size",
                "layers", "init_channels", "steps_per_epoch", "checkpoint_steps", "log_interval", "deterministic")


@dataclass
class SweepConfig:
    """The DARTS authors' protocol as one job: seeded searches, short selection retrains, the winner's retrain."""

    seeds: str = opt("4", "N seeds (0..N-1) or a comma-separated list of seeds")
    workers_per_trial: int = opt(1, "DDP workers (ranks) per search and selection trial")
    final_workers: int = opt(0, "DDP workers of each final retrain (0 = workers-per-trial)")
    gpus_per_worker: float = opt(0.0, "GPUs per worker (0 = train on CPU)")
    cpus_per_worker: float = opt(1.0, "CPUs per worker (fractions are fine on a small CPU box)")
    max_concurrent_trials: int = opt(0, "trials at a time (0 = as many as the resources allow)")
    max_failures: int = opt(2, "retries of a failed trial; each retry resumes from its last checkpoint")
    search_epochs: int = opt(50, "epochs of each search")
    select_epochs: int = opt(20, "epochs of each selection retrain (the DARTS authors used 20)")
    final_epochs: int = opt(600, "epochs of the winner's final retrain")
    repeats: int = opt(1, "final retrains of the winner, each with its own seed (mean and std are reported)")
    output: str = opt("runs/sweep", "sweep folder: search/, select/, final/, ray/ and report.json, report.md")
    resume: bool = opt(False, "continue a sweep whose driver died: finished trials are not run again")
    address: str | None = opt(None, "an existing Ray cluster (e.g. ray://host:10001 or auto); default: start a "
                                    "private local one with the CPUs and GPUs there are")
    search: str | None = opt(None, "YAML file of search settings (any `search` key)")
    retrain: str | None = opt(None, "YAML file of retrain settings (any `retrain` key) for selection and final")
    # handed on to every stage when given; unset ones keep the stage's YAML value or the job's default
    dataset: str | None = opt(None, "data set", choices=tuple(DATASETS))
    data_dir: str | None = opt(None, "data set folder")
    data_backend: str | None = opt(None, "data pipeline", choices=DATA_BACKENDS)
    download: bool | None = opt(None, "download the data set when missing (needs a network)")
    workers: int | None = opt(None, "data loading workers per rank")
    device: str | None = opt(None, "auto = GPU when the trial got one", choices=("auto", "cpu", "cuda"))
    precision: str | None = opt(None, "precision", choices=PRECISIONS)
    batch_size: int | None = opt(None, "batch size per rank")
    layers: int | None = opt(None, "cells (search and retrain alike; e.g. for tiny demos)")
    init_channels: int | None = opt(None, "initial channels (search and retrain alike)")
    steps_per_epoch: int | None = opt(None, "cap on steps per epoch (demos and tests)")
    checkpoint_steps: int | None = opt(None, "checkpoint every N steps inside an epoch too")
    log_interval: int | None = opt(None, "steps between log lines")
    deterministic: bool | None = opt(None, "deterministic algorithms")

    def __post_init__(self):
        self.seed_list()
        check_ranges(self, minimum=1, names=("workers_per_trial", "search_epochs", "select_epochs", "final_epochs",
                                             "repeats"))
        check_ranges(self, minimum=0, names=("final_workers", "gpus_per_worker", "max_concurrent_trials",
                                             "max_failures"))
        if self.cpus_per_worker <= 0:
            raise ConfigError(f"cpus-per-worker: must be > 0, got {self.cpus_per_worker}")

    def seed_list(self) -> list[int]:
        try:
            parts = [int(p) for p in str(self.seeds).split(",") if p.strip()]
        except ValueError:
            raise ConfigError(f"seeds: a number or a comma-separated list of integers, got {self.seeds!r}") from None
        seeds = list(range(parts[0])) if len(parts) == 1 and "," not in str(self.seeds) else parts
        if not seeds or len(set(seeds)) != len(seeds):
            raise ConfigError(f"seeds: need at least one seed and no repeats, got {self.seeds!r}")
        return seeds

    def shared(self) -> dict:
        """The settings handed on to every stage (those left unset keep each job's own default)."""
        return {k: getattr(self, k) for k in SWEEP_SHARED if getattr(self, k) is not None}


# The paper's ImageNet (mobile setting) recipe, applied under the YAML file and the flags.
RETRAIN_PRESETS = {
    "imagenet": dict(layers=14, init_channels=48, batch_size=128, learning_rate=0.1, weight_decay=3e-5,
                     lr_schedule="step", lr_decay=0.97, label_smoothing=0.1, epochs=250, cutout=0, drop_path_prob=0.0),
}


def _field_type(cls, f):
    hint = typing.get_type_hints(cls)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else hint


def _coerce(cls, f, value, source):
    kind = _field_type(cls, f)
    name = f.name.replace("_", "-")
    if value is None:
        if f.default is None:
            return None
        raise ConfigError(f"{name} ({source}): needs a {kind.__name__}, got nothing")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "yes", "1", "on"):
            return True
        if str(value).lower() in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"{name} ({source}): needs true or false, got {value!r}")
    try:
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        out = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} ({source}): needs a {kind.__name__}, got {value!r}") from None
    choices = f.metadata.get("choices")
    if choices and out not in choices:
        raise ConfigError(f"{name} ({source}): {out!r} is not one of {', '.join(map(str, choices))}")
    return out


def load_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} does not exist")
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path}: bad YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of keys to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def build(cls, yaml_values: dict | None = None, overrides: dict | None = None, source: str = "config"):
    """A config of type cls from YAML values and explicit overrides, checked field by field."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for where, given in ((source, yaml_values or {}), ("command line", overrides or {})):
        for key, value in given.items():
            if key not in fields:
                raise ConfigError(f"unknown key '{key.replace('_', '-')}' in {where}")
            values[key] = _coerce(cls, fields[key], value, where)
    if cls is RetrainConfig:
        preset = RETRAIN_PRESETS.get(values.get("dataset", fields["dataset"].default), {})
        values = {**preset, **values}
    return cls(**values)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save(cfg, path: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
    os.replace(tmp, path)


def add_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """One kebab-case flag per field (plus its underscore spelling, as the original DARTS scripts use).

    Defaults are suppressed so that only the flags actually given override the YAML file.
    """
    parser.add_argument("--config", help="YAML file of defaults (keys are the flag names); flags override it")
    group = parser.add_argument_group(f"{cls.__name__} options (default values in brackets)")
    for f in dataclasses.fields(cls):
        kind = _field_type(cls, f)
        flags = [f"--{f.name.replace('_', '-')}"] + ([f"--{f.name}"] if "_" in f.name else [])
        help_text = f"{f.metadata['help']} [{f.default}]"
        if kind is bool:
            group.add_argument(*flags, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=help_text)
        elif f.name == "cutout":  # the original's bare --cutout switch still works
            group.add_argument(*flags, type=int, nargs="?", const=16, default=argparse.SUPPRESS, help=help_text)
        else:
            group.add_argument(*flags, type=str, default=argparse.SUPPRESS, metavar=f.name.upper(),
                               choices=f.metadata.get("choices"), help=help_text)


def from_args(cls, args: argparse.Namespace):
    """The config for a parsed command line: YAML file (if --config) then the explicitly given flags."""
    names = {f.name for f in dataclasses.fields(cls)}
    overrides = {k: v for k, v in vars(args).items() if k in names}
    yaml_values = load_yaml(args.config) if getattr(args, "config", None) else {}
    return build(cls, yaml_values, overrides, source=args.config or "config")
