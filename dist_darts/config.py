"""Configuration: dataset facts, typed job configs with the paper's defaults, YAML defaults, CLI overrides.

Precedence, lowest first: dataclass defaults (the DARTS paper's CIFAR settings), the dataset's preset (ImageNet
retraining), the YAML file given with --config, then the flags given on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import yaml

from . import method_table
from .errors import ConfigError
from .runfolder import atomic_write, default_evaluate_output
from . import spaces


class DatasetInfo(NamedTuple):
    num_classes: int
    image_size: int


DATASETS = {
    "cifar10": DatasetInfo(10, 32),
    "cifar100": DatasetInfo(100, 32),
    "svhn": DatasetInfo(10, 32),
    "imagenet": DatasetInfo(1000, 224),
    "imagenet16-120": DatasetInfo(120, 16),  # NAS-Bench-201's: Downsampled ImageNet 16x16, its first 120 classes
    "folder": DatasetInfo(0, 224),  # classes counted from the folder
    "digits": DatasetInfo(10, 32),
    "photos": DatasetInfo(10, 32),
    "synthetic": DatasetInfo(10, 32),
}
TEXT_DATASETS = ("pydoc", "ptb", "wt2", "text")  # the recurrent space's corpora; pydoc is embedded (no files)
DATA_BACKENDS = ("auto", "torch", "dali-cpu", "dali-gpu", "synthetic")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SCALING_RULES = ("none", "linear", "sqrt")
ARCH_SCALING_RULES = SCALING_RULES + ("adam-sqrt",)  # the alphas' Adam may also scale its betas and epsilon
WEIGHT_OPTIMIZERS = ("sgd", "lars", "lamb")
ADAM_EPS = 1e-8  # torch.optim.Adam's default, the alphas' epsilon at the base batch
MAX_ONE_MINUS_BETA2 = 0.1  # adam-sqrt's cap on 1 - beta2 x k: beta2 stays >= 0.9, well above beta1^2


GROUPS = ("data", "model", "optimiser", "schedule", "augmentation", "architecture search", "distributed",
          "runtime")


def opt(default, help: str, group: str, choices=None, **kw):
    """A config field with its --help text, its --help group and (optionally) its allowed values."""
    assert group in GROUPS, group
    return field(default=default, metadata={"help": help, "group": group, "choices": choices}, **kw)


@dataclass
class RunConfig:
    """Where and how any job runs: run folder, seed, device, precision."""
    run_kind = "job"

    output: str | None = opt(None, "run folder: config, logs, TensorBoard events, checkpoints, results (default: a "
                                   "new runs/KIND/DATE-TIME per run)", "runtime")
    seed: int = opt(2, "random seed (model init and data split are identical on every rank)", "runtime")
    device: str = opt("auto", "auto = cuda:LOCAL_RANK when CUDA is available, else cpu", "runtime",
                      choices=("auto", "cpu", "cuda"))
    precision: str = opt("auto", "autocast precision of training and evaluation: auto = bf16 on GPU, fp32 on CPU",
                         "runtime", choices=PRECISIONS[:3])
    compile: bool = opt(False, "torch.compile the network", "runtime")
    deterministic: bool = opt(False, "deterministic algorithms (exact reruns; slower)", "runtime")

    def __post_init__(self):
        check_types(self)
        check_ranges(self, minimum=0, names=("seed",))


@dataclass
class DataConfig:
    """Which images and how they are fed, and the memory format they run in."""

    dataset: str = opt("cifar10", "data set", "data", choices=tuple(DATASETS))
    data_dir: str | None = opt(None, "data set folder (not needed for digits and synthetic)", "data")
    data_backend: str = opt("auto", "data pipeline: auto = dali-gpu with a GPU and DALI, else torch", "data",
                            choices=DATA_BACKENDS)
    download: bool = opt(False, "download the data set with torchvision when missing (needs a network)", "data")
    workers: int = opt(4, "data loading workers per rank", "data")
    batch_size: int = opt(64, "images per step on EACH rank (the global batch is this times the world size; "
                              "--space rnn's --batch-size counts over all ranks instead)", "data")
    image_size: int = opt(0, "image side in pixels; 0 = the data set's own (an image folder: the size its images "
                             "share, 224 for ImageNet or mixed sizes)", "data")
    channels_last: bool = opt(True, "channels_last memory format for weights and activations (faster on GPU and "
                                    "CPU; images only, so --space rnn has no such flag)", "runtime")

    def __post_init__(self):
        check_ranges(self, minimum=0, names=("workers", "image_size"))
        check_ranges(self, minimum=1, names=("batch_size",))


def check_resume_has_output(cfg) -> None:
    """--resume names the folder to continue: without --output each (re)start would begin a new dated one."""
    if cfg.resume and cfg.output is None:
        raise ConfigError("resume: needs --output, the run folder to continue (without it every run starts a new "
                          f"runs/{cfg.run_kind}/DATE-TIME folder)")


@dataclass
class JobConfig(DataConfig, RunConfig):
    """What a training job (search or retrain) adds: resume, progress, SyncBN, epochs, the network's size, SGD,
    in-epoch checkpoints."""

    resume: bool = opt(False, "continue from the latest checkpoint in the run folder", "runtime")
    overwrite: bool = opt(False, "delete what an earlier run left in --output, then start over (a non-empty run "
                                 "folder is refused otherwise)", "runtime")
    log_interval: int = opt(50, "steps between progress lines and TensorBoard step scalars", "runtime")
    sync_bn: bool | None = opt(None, "BatchNorm statistics over all ranks' batches (SyncBatchNorm on GPUs, an "
                                     "all-reduced BatchNorm on CPU ranks); unset = on for NCCL searches of "
                                     "several ranks, and for other NCCL jobs of several ranks with fewer than 32 "
                                     "images per rank", "distributed")

    epochs: int = opt(50, "epochs", "schedule")
    layers: int = opt(8, "cells (the search's supernet or the evaluation network)", "model")
    init_channels: int = opt(16, "initial channels C", "model")
    learning_rate: float = opt(0.025, "initial SGD learning rate", "optimiser")
    momentum: float = opt(0.9, "SGD momentum", "optimiser")
    weight_decay: float = opt(3e-4, "weight decay", "optimiser")
    grad_clip: float = opt(5.0, "gradient norm clipping", "optimiser")
    steps_per_epoch: int = opt(0, "cap on steps per epoch (0 = whole epoch); for demos and tests", "schedule")
    checkpoint_steps: int = opt(0, "also checkpoint every N steps inside an epoch (0 = at epoch ends only)",
                                "runtime")
    stop_after_step: int = opt(0, "end the job after its Nth optimiser step, counted over all epochs, with a "
                                  "checkpoint there (exit 0; --resume goes on): a time-boxed run (0 = run to the "
                                  "end)", "runtime")

    def __post_init__(self):
        RunConfig.__post_init__(self)
        DataConfig.__post_init__(self)
        if self.dataset not in ("digits", "photos", "synthetic") and not self.data_dir and not self.download:
            raise ConfigError(f"data-dir: the {self.dataset} data set needs --data-dir (or --download with a network)")
        check_resume_has_output(self)
        check_ranges(self, minimum=0, names=("steps_per_epoch", "checkpoint_steps", "stop_after_step", "learning_rate",
                                             "weight_decay", "grad_clip"))
        check_ranges(self, minimum=1, names=("epochs", "layers", "init_channels", "log_interval"))
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"momentum: must be in [0, 1), got {self.momentum}")


def scaling_factor(rule: str, global_batch: int, base_batch: int) -> float:
    """The learning-rate multiplier of a scaling rule: 1, global/base, or its square root."""
    ratio = global_batch / base_batch
    return {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[rule]


def search_rates(cfg: SearchConfig, world_size: int) -> dict:
    """The global batch, the learning rates, the alphas' Adam betas and epsilon and the epochs a search runs with
    on world_size ranks (config.yaml's resolved section).

    adam-sqrt (Malladi et al. 2022, the square-root rule for Adam): at k = global / base batch, the rate times
    sqrt(k), 1 - beta2 times k (capped at MAX_ONE_MINUS_BETA2), epsilon over sqrt(k); beta1 stays."""
    global_batch = cfg.batch_size * world_size * cfg.accumulate
    k = global_batch / cfg.base_batch_size
    w = scaling_factor(cfg.lr_scaling, global_batch, cfg.base_batch_size)
    adam_sqrt = cfg.arch_lr_scaling == "adam-sqrt"
    a = scaling_factor("sqrt" if adam_sqrt else cfg.arch_lr_scaling, global_batch, cfg.base_batch_size)
    beta2 = 1 - min((1 - cfg.arch_beta2) * k, MAX_ONE_MINUS_BETA2) if adam_sqrt else cfg.arch_beta2
    epochs = max(1, round(cfg.epochs * scaling_factor(cfg.epoch_scaling, global_batch, cfg.base_batch_size)))
    # a tenth of the epochs: at 8x linear rates kept 0.74x without one (the issue), 0.98x with one (docs/large-batch.md)
    warmup = resolved_warmup(cfg.warmup_epochs, max(1, epochs // 10), global_batch, cfg.base_batch_size, w, epochs)
    return {"global_batch": global_batch, "learning_rate": cfg.learning_rate * w,
            "learning_rate_min": cfg.learning_rate_min * w, "arch_learning_rate": cfg.arch_learning_rate * a,
            "arch_beta2": beta2, "arch_eps": ADAM_EPS / math.sqrt(k) if adam_sqrt else ADAM_EPS, "epochs": epochs,
            "warmup_epochs": warmup}


def resolved_warmup(given: int | None, unset: int, global_batch: int, base_batch: int, factor: float,
                    epochs: int) -> int:
    """The weights' warm-up epochs a job runs: the given ones, or when unset, `unset` above the base batch where the
    scaling rule raises the rate (none otherwise); never more than the job's epochs."""
    if given is None:
        given = unset if global_batch > base_batch and factor > 1 else 0
    return min(given, epochs)


LARGE_BATCH_WARMUP = 5  # epochs of linear warm-up a retrain above its base batch gets unless told otherwise


def retrain_rates(cfg: RetrainConfig, world_size: int) -> dict:
    """The global batch, learning rates and warm-up a retrain runs with on world_size ranks (config.yaml's
    resolved section)."""
    global_batch = cfg.batch_size * world_size
    factor = scaling_factor(cfg.lr_scaling, global_batch, cfg.base_batch_size)
    return {"global_batch": global_batch, "learning_rate": cfg.learning_rate * factor,
            "learning_rate_min": cfg.learning_rate_min * factor,
            "warmup_epochs": resolved_warmup(cfg.warmup_epochs, LARGE_BATCH_WARMUP, global_batch, cfg.base_batch_size,
                                             factor, cfg.epochs)}


def check_ranges(cfg, minimum, names) -> None:
    for name in names:
        if getattr(cfg, name) is not None and getattr(cfg, name) < minimum:
            raise ConfigError(f"{name.replace('_', '-')}: must be >= {minimum}, got {getattr(cfg, name)}")


def check_types(cfg) -> None:
    """Every field holds its declared type (a YAML `epochs: true` is no 1) and every float is finite."""
    for f in dataclasses.fields(cfg):
        value, kind = getattr(cfg, f.name), _field_type(type(cfg), f)
        name = f.name.replace("_", "-")
        if value is None:
            continue
        if (kind in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float)))
                or kind is int and not isinstance(value, int) or kind is bool and not isinstance(value, bool)):
            raise ConfigError(f"{name}: needs a {kind.__name__}, got {value!r}")
        if kind is float and not math.isfinite(value):
            raise ConfigError(f"{name}: needs a finite number, got {value!r}")
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"{name}: {value!r} is not one of {', '.join(map(str, choices))}")


@dataclass
class SearchConfig(JobConfig):
    """DARTS search; defaults are the paper's CIFAR-10 settings."""
    run_kind = "search"  # the default run folder is runs/search/DATE-TIME

    output: str | None = opt(None, "run folder: config, logs, TensorBoard events, checkpoints, genotypes (default: "
                                   "a new runs/search/DATE-TIME per run)", "runtime")
    epochs: int = opt(50, "search epochs", "schedule")
    train_portion: float = opt(0.5, "share of the training set used for weights; the rest trains the alphas", "data")
    train_subset: float = opt(0.0, "weights: a class-balanced fraction of the training set, drawn once from the seed "
                                   "(PC-DARTS' ImageNet search: 0.1); with --arch-subset it replaces "
                                   "--train-portion's split; 0 = off", "data")
    arch_subset: float = opt(0.0, "alphas: a class-balanced fraction of the training set disjoint from "
                                  "--train-subset's (PC-DARTS' ImageNet search: 0.025); 0 = off", "data")
    learning_rate: float = opt(0.025, "weights: initial SGD learning rate (cosine schedule)", "optimiser")
    learning_rate_min: float = opt(0.001, "weights: final learning rate of the cosine schedule", "schedule")
    arch_learning_rate: float = opt(3e-4, "alphas: Adam learning rate", "architecture search")
    arch_weight_decay: float = opt(1e-3, "alphas: Adam weight decay", "architecture search")
    arch_beta1: float = opt(0.5, "alphas: Adam beta1", "architecture search")
    arch_beta2: float = opt(0.999, "alphas: Adam beta2", "architecture search")
    unrolled: bool = opt(False, "second-order DARTS (unrolled virtual step); default first order",
                         "architecture search")
    partial_channels: int = opt(1, "PC-DARTS channel proportion K (1 = off; PC-DARTS uses 4)", "architecture search")
    stem: str = opt("auto", "the supernet's stem: cifar (one 3x3 convolution at the input's size), imagenet "
                            "(PC-DARTS' ImageNet search network: three stride-2 convolutions, 224 px to 28 px "
                            "before the cells), auto = imagenet for inputs of 112 px and more", "model",
                    choices=("auto", "cifar", "imagenet"))
    method: str = opt(method_table.DEFAULT, f"how the alphas weigh the ops: {method_table.described()}; see "
                                            "docs/methods.md", "architecture search", choices=tuple(method_table.TABLE))
    hessian_every: int = opt(0, "every N epochs, estimate the largest eigenvalue of the validation loss's Hessian "
                                "in the alphas (RobustDARTS' collapse signal, which its authors estimate every 2 "
                                "epochs; 20 power-iteration steps of 2 forward/backward passes on one validation "
                                "batch); 0 = off", "architecture search")
    early_stop: str = opt("none", "end the search at the first epoch where a collapse rule fires: skips (DARTS+'s "
                                  "criterion 1: 2 or more skip_connects in the normal cell of the original rule; "
                                  "that epoch's genotype is the result), eigenvalue (RobustDARTS: the local average "
                                  "of the Hessian eigenvalue grew by more than --eigenvalue-factor over "
                                  "--eigenvalue-delta estimates; the result is the genotype of the earlier local "
                                  "average's epoch; needs --hessian-every), none", "architecture search",
                          choices=("none", "skips", "eigenvalue"))
    eigenvalue_window: int = opt(5, "--early-stop eigenvalue: estimates per local average (RobustDARTS's)",
                                 "architecture search")
    eigenvalue_delta: int = opt(4, "--early-stop eigenvalue: the local average compared with is this many estimates "
                                   "earlier, and the search rolls back to its epoch (RobustDARTS's)",
                                "architecture search")
    eigenvalue_factor: float = opt(1.3, "--early-stop eigenvalue: fire when the newer local average exceeds the "
                                        "earlier one by more than this factor (RobustDARTS's)", "architecture search")
    eigenvalue_start_epoch: int = opt(10, "--early-stop eigenvalue: the earliest epoch, counted from 0, the search "
                                          "may roll back to (RobustDARTS's)", "architecture search")
    max_skip: int | None = opt(None, "derive the normal cell with at most N skip_connects (P-DARTS's rule: the "
                                     "kept skip_connect of least weight is struck off and the cell derived again, "
                                     "until N remain); unset = the original's rule", "architecture search")
    derive: str = opt("original", "how the cell is read off the supernet: original (top-2 inputs per node, the "
                                  "strongest op on each, from the alphas), darts-pt (DARTS-PT: after the search, "
                                  "each edge keeps the op whose removal costs the supernet the most validation "
                                  "accuracy, then each node its two most needed inputs, with --pt-tune-epochs of "
                                  "search between decisions; see docs/methods.md)", "architecture search",
                      choices=("original", "darts-pt"))
    pt_tune_epochs: int = opt(5, "DARTS-PT: search epochs between two decisions, at a constant tenth of the "
                                 "weights' learning rate (the authors' scripts' 5; 17 decisions in the DARTS cell, "
                                 "so the selection runs 16 x N + 1 epochs after --epochs)",
                              "architecture search")
    precision: str = opt("auto", "autocast precision of the weight step, the first-order alpha step and evaluation: "
                                 "auto = bf16 on GPU, fp32 on CPU; the second-order (--unrolled) alpha step always "
                                 "runs in fp32 (TF32 on GPUs): its finite-difference Hessian term is below bf16's "
                                 "rounding", "runtime", choices=PRECISIONS[:3])
    base_batch_size: int = opt(64, "global batch the learning rates are meant for (the paper's 64); the scaling "
                                   "rules compare the global batch (batch size x world size x accumulate) with it",
                               "schedule")
    lr_scaling: str = opt("linear", "weights: how the learning rate (and its cosine floor) follow global batch / "
                                    "base batch: none, linear (the default: the batch-scaling study's choice, "
                                    "docs/large-batch.md), sqrt; at the base batch all are the paper's",
                          "optimiser", choices=SCALING_RULES)
    warmup_epochs: int | None = opt(None, "weights: linear learning-rate warm-up epochs, multiplied onto the cosine "
                                          "schedule (default: unset = a tenth of the epochs, at least 1, when the "
                                          "global batch is above the base batch and --lr-scaling raises the rate; "
                                          "else none: the batch-scaling study's choice, docs/large-batch.md)",
                                    "schedule")
    arch_lr_scaling: str = opt("linear", "alphas: how the Adam learning rate follows global batch / base batch: "
                                         "none, linear (the default, as the weights'), sqrt, adam-sqrt (Malladi et "
                                         "al. 2022: the rate x sqrt(k), 1 - beta2 x k up to 0.1, epsilon / sqrt(k); "
                                         "beta1 stays)", "architecture search", choices=ARCH_SCALING_RULES)
    optimizer: str = opt("sgd", "weights: sgd (the paper's, with momentum), lars (layer-wise rates min(lr, 0.001 "
                                "|w| / |g|): LARS with LARC's clipping) or lamb (Adam steps scaled per layer to "
                                "lr x |w|); lars and lamb are timm's (pip install 'dist-darts[lb]')", "optimiser",
                         choices=WEIGHT_OPTIMIZERS)
    epoch_scaling: str = opt("none", "run more epochs at a larger global batch: none (--epochs is what runs), sqrt "
                                     "or linear in global batch / base batch (the epochs that run are in the start "
                                     "line and config.yaml's resolved section)", "schedule", choices=SCALING_RULES)
    arch_warmup_epochs: int = opt(0, "alphas: frozen for the first K epochs while the weights train (PC-DARTS)",
                                  "architecture search")
    accumulate: int = opt(1, "micro-batches per step: the gradients of N batches of --batch-size are averaged "
                             "into one step, in first and second order (BatchNorm normalises each micro-batch)",
                             "optimiser")
    noise_scale: bool = opt(True, "measure the gradient noise scale B_noise of the weights and of the alphas (the "
                                  "largest global batch that still pays, McCandlish et al. 2018; docs/large-batch.md): "
                                  "on several ranks from each rank's and the all-reduced gradients every step, on one "
                                  "process by an extra pass every --noise-scale-every steps", "schedule")
    noise_scale_every: int = opt(200, "one process: steps between two noise-scale measurements (each costs about "
                                      "one first-order step, benchmarks/noise_scale_cost.py; several ranks measure "
                                      "every step for free)", "schedule")

    def __post_init__(self):
        super().__post_init__()
        check_ranges(self, minimum=1, names=("base_batch_size", "accumulate", "noise_scale_every"))
        check_ranges(self, minimum=0, names=("warmup_epochs", "arch_warmup_epochs"))
        if self.unrolled and self.optimizer != "sgd":
            raise ConfigError(f"optimizer: the second-order (--unrolled) virtual step is SGD's; {self.optimizer} "
                              "runs in first order only")
        if not 0.0 < self.train_portion < 1.0:
            raise ConfigError(f"train-portion: must be between 0 and 1, got {self.train_portion}")
        check_ranges(self, minimum=0, names=("train_subset", "arch_subset"))
        if (self.train_subset > 0) != (self.arch_subset > 0) or self.train_subset + self.arch_subset > 1:
            raise ConfigError(f"train-subset, arch-subset: give both (or neither), summing to at most 1, got "
                              f"{self.train_subset} and {self.arch_subset}")
        check_ranges(self, minimum=1, names=("partial_channels",))
        check_ranges(self, minimum=0, names=("hessian_every", "max_skip"))
        check_ranges(self, minimum=1, names=("pt_tune_epochs", "eigenvalue_window", "eigenvalue_delta"))
        check_ranges(self, minimum=0, names=("eigenvalue_start_epoch",))
        if self.eigenvalue_factor <= 0:
            raise ConfigError(f"eigenvalue-factor: must be > 0, got {self.eigenvalue_factor}")
        refusal = method_table.TABLE[self.method].partial_channels_refusal
        if refusal and self.partial_channels > 1:
            raise ConfigError(f"partial-channels: {refusal}")
        if self.derive == "darts-pt" and self.early_stop != "none":  # the selection needs the whole search first
            raise ConfigError("early-stop: DARTS-PT selects the cell after the whole search; use --early-stop none "
                              "with --derive darts-pt")
        if self.early_stop == "eigenvalue" and not self.hessian_every:
            raise ConfigError("early-stop: the eigenvalue rule needs the estimates: give --hessian-every N (1 = "
                              "every epoch)")
        check_ranges(self, minimum=0, names=("learning_rate_min", "arch_weight_decay"))
        if self.arch_learning_rate <= 0:
            raise ConfigError(f"arch-learning-rate: must be > 0, got {self.arch_learning_rate}")
        for name in ("arch_beta1", "arch_beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name.replace('_', '-')}: must be in [0, 1), got {getattr(self, name)}")
        self.check_layers()

    def check_layers(self) -> None:
        """The supernet's size is one it can build (another space's config says its own)."""
        if self.layers < 3:  # cells layers//3 and 2*layers//3 reduce: fewer than 3 leave no normal cell to search
            raise ConfigError(f"layers: a search needs >= 3 cells (a normal one besides the two reductions), "
                              f"got {self.layers}")


@dataclass
class RetrainConfig(JobConfig):
    """Training a genotype from scratch; defaults are the paper's CIFAR-10 settings."""
    run_kind = "retrain"

    output: str | None = opt(None, "run folder: config, logs, TensorBoard events, checkpoints, metrics.json "
                                   "(default: a new runs/retrain/DATE-TIME per run)", "runtime")
    genotype: str = opt("DARTS_V2", "published name, genotype JSON or NNI architecture-dict JSON", "model")
    precision: str = opt("auto", "autocast precision of the training step and evaluation: auto = bf16 on GPU, fp32 "
                                 "on CPU; fp16 uses a gradient scaler", "runtime", choices=PRECISIONS)
    epochs: int = opt(600, "training epochs", "schedule")
    batch_size: int = opt(96, "images per step on EACH rank (the global batch is this times the world size; "
                              "--space rnn's --batch-size counts over all ranks instead)", "data")
    layers: int = opt(20, "cells", "model")
    init_channels: int = opt(36, "initial channels C", "model")
    auxiliary: bool = opt(True, "auxiliary head after the second reduction cell", "model")
    auxiliary_weight: float = opt(0.4, "weight of the auxiliary loss", "model")
    drop_path_prob: float = opt(0.2, "drop path probability, ramped linearly from 0 over the epochs", "model")
    learning_rate: float = opt(0.025, "initial SGD learning rate, for a global batch of --base-batch-size "
                                      "(scaled by --lr-scaling for others)", "optimiser")
    momentum: float = opt(0.9, "SGD momentum", "optimiser")
    nesterov: bool = opt(False, "Nesterov momentum (the DARTS paper's retrain has none)", "optimiser")
    weight_decay: float = opt(3e-4, "weight decay", "optimiser")
    grad_clip: float = opt(5.0, "gradient norm clipping (0 = off)", "optimiser")
    ema_decay: float = opt(0.0, "exponential moving average of the weights (0 = off, e.g. 0.9999)", "optimiser")
    base_batch_size: int = opt(96, "global batch the learning rate is meant for (the paper's 96 on CIFAR; the "
                                   "ImageNet preset's 128); --lr-scaling compares the global batch (batch size x "
                                   "world size) with it", "schedule")
    lr_scaling: str = opt("linear", "how the learning rate (and its cosine floor) follow global batch / base batch: "
                                    "none, linear (as the search's default, docs/large-batch.md), sqrt; at the base "
                                    "batch all are the paper's", "optimiser", choices=SCALING_RULES)
    warmup_epochs: int | None = opt(None, "linear learning-rate warm-up epochs (default: unset = 5 when the global "
                                          "batch is above --base-batch-size, Goyal et al.'s gradual warm-up for "
                                          "large batches, else 0)", "schedule")
    val_portion: float = opt(0.0, "share of each class of the training images held out as a validation split "
                                  "(seeded, the same on every rank): reported as val_top1 each epoch and choosing "
                                  "best.pt; 0 = train on all of them (the paper's final retrain: no best.pt, the last "
                                  "epoch is the result)", "data")
    train_subset: float = opt(0.0, "train on a class-balanced fraction of the training images left after "
                                   "--val-portion's hold-out, drawn once from the seed (a sweep's selection retrains "
                                   "on ImageNet: --select-train-subset); 0 = all of them", "data")
    evaluate_test: bool = opt(True, "evaluate the test split once, after the last epoch (the sweep's selection "
                                    "retrains turn it off: they never read the test split)", "runtime")
    lr_schedule: str = opt("cosine", "learning-rate schedule", "schedule", choices=("cosine", "step"))
    learning_rate_min: float = opt(0.0, "final learning rate of the cosine schedule", "schedule")
    lr_decay: float = opt(0.97, "step schedule: learning rate factor per epoch", "schedule")
    cutout: int = opt(16, "Cutout square length (0 = off); a bare --cutout means 16", "augmentation")
    label_smoothing: float = opt(0.0, "label smoothing of the training loss", "augmentation")

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.drop_path_prob < 1.0:
            raise ConfigError(f"drop-path-prob: must be in [0, 1), got {self.drop_path_prob}")
        check_ranges(self, minimum=0, names=("cutout", "warmup_epochs", "auxiliary_weight", "learning_rate_min",
                                             "lr_decay"))
        check_ranges(self, minimum=1, names=("base_batch_size",))
        if not 0.0 <= self.val_portion < 1.0:
            raise ConfigError(f"val-portion: must be in [0, 1), got {self.val_portion}")
        if not 0.0 <= self.train_subset < 1.0:
            raise ConfigError(f"train-subset: must be in [0, 1), got {self.train_subset}")
        if not 0.0 <= self.label_smoothing < 1.0 or not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError("label-smoothing and ema-decay must be in [0, 1)")


@dataclass
class EvaluateConfig(DataConfig, RunConfig):
    """Evaluating a checkpoint on a data set's test (or val) split."""

    checkpoint: str = opt("", "a retrain checkpoint (runs/.../checkpoints/best.pt), or weights saved by the original "
                              "DARTS code or NNI together with --genotype", "model")
    genotype: str | None = opt(None, "for a plain state dict: its genotype (name or JSON)", "model")
    layers: int | None = opt(None, "for a plain state dict: its cells (default: the paper's, 20; ImageNet 14)",
                             "model")
    init_channels: int | None = opt(None, "for a plain state dict: its initial channels C (default: the paper's, "
                                          "36; ImageNet 48)", "model")
    dataset: str | None = opt(None, "data set (default: the checkpoint's)", "data", choices=tuple(DATASETS))
    data_dir: str | None = opt(None, "data set folder (default: the checkpoint's)", "data")
    batch_size: int = opt(128, "images per step on each rank", "data")
    precision: str = opt("auto", "autocast precision of evaluation: auto = bf16 on GPU, fp32 on CPU", "runtime",
                         choices=PRECISIONS)
    output: str | None = opt(None, "folder for metrics.json, config.yaml and log.txt (default: evaluate/NAME in the "
                                   "checkpoint's run folder, NAME the checkpoint's file name without suffix)",
                             "runtime")
    seed: int = opt(0, "seed (evaluation draws no random numbers)", "runtime")

    def __post_init__(self):
        RunConfig.__post_init__(self)
        DataConfig.__post_init__(self)
        if not self.checkpoint:
            raise ConfigError("checkpoint: --checkpoint FILE is required")
        check_ranges(self, minimum=1, names=("layers", "init_channels"))
        if self.output is None:
            self.output = default_evaluate_output(self.checkpoint)


SEARCH_SCALING = ("base_batch_size", "lr_scaling", "warmup_epochs", "arch_lr_scaling", "arch_warmup_epochs",
                  "accumulate", "optimizer", "epoch_scaling")
SEARCH_SUBSETS = ("train_subset", "arch_subset")  # a retrain's --train-subset is its own: --select-train-subset
# Settings of `sweep` handed on to the searches and retrains it runs: the shared runtime and data fields (less
# the run folder, resume and seed, which the sweep sets per trial), the network size, the search method.
SWEEP_PASSED = tuple(f.name for f in dataclasses.fields(DataConfig) + dataclasses.fields(RunConfig)
                     if f.name not in ("output", "resume", "seed")) + (
    "layers", "init_channels", "steps_per_epoch", "checkpoint_steps", "unrolled", "partial_channels", "method",
    "max_skip", "derive", "pt_tune_epochs", "early_stop", "hessian_every", "eigenvalue_window", "eigenvalue_delta",
    "eigenvalue_factor", "eigenvalue_start_epoch", "stem") + SEARCH_SUBSETS + SEARCH_SCALING


@dataclass
class SweepSettings:
    """The DARTS authors' protocol as one job: seeded searches, short selection retrains, the winner's retrain."""

    space: str = opt(spaces.DEFAULT, f"search space of every trial, whose cells it ranks by its own score (top-1 "
                                      f"on images, perplexity on text): {spaces.described()}", "runtime",
                     choices=spaces.NAMES)
    seeds: str = opt("4", "N seeds (0..N-1) or a comma-separated list of seeds", "runtime")
    workers_per_trial: int = opt(1, "DDP workers (ranks) per search and selection trial", "distributed")
    final_workers: int = opt(0, "DDP workers of each final retrain (0 = workers-per-trial)", "distributed")
    gpus_per_worker: float = opt(0.0, "GPUs per worker (0 = train on CPU)", "distributed")
    cpus_per_worker: float = opt(1.0, "CPUs per worker (fractions are fine on a small CPU box)", "distributed")
    max_concurrent_trials: int = opt(0, "trials at a time (0 = as many as the resources allow)", "distributed")
    max_failures: int = opt(2, "retries of a failed trial; each retry resumes from its last checkpoint", "distributed")
    search_epochs: int | None = opt(None, "epochs of each search, over the --search YAML's (default: unset = the "
                                          "YAML's epochs, else the paper's 50)", "schedule")
    select_epochs: int | None = opt(None, "epochs of each selection retrain (default: unset = the paper's short "
                                          "period, DARTS section 3.2: 100 for --space cnn and nb201, 300 for rnn)",
                                    "schedule")
    select_val_portion: float = opt(0.1, "share of each class of the training images that a selection retrain "
                                         "holds out and ranks the genotypes on (the test split is never read before "
                                         "the final stage); 0.1 of CIFAR-10 is 5,000 images: a top-1 standard "
                                         "error of about 0.3 points (the image spaces)", "data")
    select_train_subset: float = opt(0.0, "the selection retrains train on this class-balanced fraction of the "
                                          "training images left after the hold-out (the search's --train-subset "
                                          "for ImageNet: a selection retrain on all of ImageNet costs far more than "
                                          "the search); 0 = all of them; the final retrains always train on all "
                                          "(the image spaces)", "data")
    final_epochs: int | None = opt(None, "epochs of the winner's final retrain, over the --retrain YAML's "
                                         "(default: unset = the YAML's epochs, else the paper's 600 for cnn, the "
                                         "original's 8000 for rnn)", "schedule")
    repeats: int = opt(1, "final retrains of the winner, each with its own seed (mean and std are reported)",
                       "schedule")
    output: str = opt("runs/sweep", "sweep folder: search/, select/, final/, ray/ and report.json, report.md",
                      "runtime")
    resume: bool = opt(False, "continue a sweep whose driver died: finished trials are not run again", "runtime")
    overwrite: bool = opt(False, "delete what an earlier sweep left in --output, then start over (a non-empty sweep "
                                 "folder is refused otherwise)", "runtime")
    address: str | None = opt(None, "an existing Ray cluster (e.g. ray://host:10001 or auto); default: start a "
                                    "private local one with the CPUs and GPUs there are", "distributed")
    search: str | None = opt(None, "YAML file of search settings (any `search` key but output, resume, overwrite "
                                   "and seed, which the sweep sets per trial)", "runtime")
    retrain: str | None = opt(None, "YAML file of retrain settings for selection and final (any `retrain` key but "
                                    "output, resume, overwrite, seed, val-portion and evaluate-test, which the sweep "
                                    "sets per trial; its epochs are the final retrains')", "runtime")

    def __post_init__(self):
        check_types(self)
        self.seed_list()
        check_ranges(self, minimum=1, names=("workers_per_trial", "search_epochs", "select_epochs", "final_epochs",
                                             "repeats"))
        if not 0.0 < self.select_val_portion < 1.0:
            raise ConfigError(f"select-val-portion: must be between 0 and 1, got {self.select_val_portion}")
        if not 0.0 <= self.select_train_subset < 1.0:
            raise ConfigError(f"select-train-subset: must be in [0, 1), got {self.select_train_subset}")
        spaces.SPACES[self.space].check_sweep(self)
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

    def passed_on(self, cls) -> dict:
        """The settings handed on to each job of type cls (unset ones keep the job's YAML value or default)."""
        own = set() if issubclass(cls, SearchConfig) else set(SEARCH_SCALING + SEARCH_SUBSETS)
        # the retrain's own base-batch-size, warm-up and train-subset mean something else: the search's stay with it
        names = {f.name for f in dataclasses.fields(cls)} - own
        return {k: getattr(self, k) for k in SWEEP_PASSED if k in names and getattr(self, k) is not None}


def _passed_field(name: str):
    """The sweep's optional copy of a search (or shared) field: same type, help and group, default unset."""
    f = {f.name: f for f in dataclasses.fields(SearchConfig)}[name]
    kind = _field_type(SearchConfig, f)
    meta = dict(f.metadata, help=f.metadata["help"] + (" (handed on to the search trials)"
                                                       if name in SEARCH_SCALING + SEARCH_SUBSETS
                                                       else " (handed on to the trials)"))
    if name == "dataset":  # either space's data sets; the trials' own configs check theirs before any trial runs
        meta.update(choices=tuple(DATASETS) + TEXT_DATASETS,
                    help="data set: an image set for --space cnn and nb201, a text corpus for --space rnn (handed on "
                         "to the trials)")
    return name, kind | None, field(default=None, metadata=meta)


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
        if (kind in (int, float) and isinstance(value, bool)
                or kind is int and isinstance(value, float) and not value.is_integer()):
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
    data.pop(RESOLVED, None)  # what a run derived (a run folder's config.yaml), not a setting
    return {str(k).replace("-", "_"): v for k, v in data.items()}


PRESETS = Path(__file__).resolve().parent / "presets"

def method_defaults(method: str, given: dict) -> dict:
    """The settings --method `method` brings (its authors', method_table.py) that `given` (the keys set explicitly)
    does not set."""
    return {k: v for k, v in method_table.TABLE[method].authors_settings.items() if k not in given}


def build(cls, yaml_values: dict | None = None, overrides: dict | None = None, source: str = "config"):
    """A config of type cls from YAML values and explicit overrides, checked field by field.

    Under both lies the data set's preset for this kind of job, where one exists: presets/KIND_DATASET.yaml
    (the ImageNet retrain recipe), and under that a search method's own settings (method_table.py)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for where, given in ((source, yaml_values or {}), ("command line", overrides or {})):
        for key, value in given.items():
            if key not in fields:
                raise ConfigError(f"unknown key '{key.replace('_', '-')}' in {where}")
            values[key] = _coerce(cls, fields[key], value, where)
    kind = cls.__name__.removesuffix("Config").lower()
    preset = PRESETS / f"{kind}_{values.get('dataset', fields['dataset'].default if 'dataset' in fields else '')}.yaml"
    if preset.is_file():
        values = {**{k: _coerce(cls, fields[k], v, str(preset)) for k, v in load_yaml(str(preset)).items()}, **values}
    if "method" in fields and issubclass(cls, JobConfig):  # a sweep's searches resolve their method themselves
        values.update(method_defaults(values.get("method", fields["method"].default), values))
    return cls(**values)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


RESOLVED = "resolved"  # config.yaml's section of values derived at start (e.g. the search's scaled rates)


def dump(cfg, resolved: dict | None = None) -> str:
    """The resolved configuration as YAML (what config.yaml holds), with the derived values in their own section."""
    return yaml.safe_dump({**to_dict(cfg), **({RESOLVED: resolved} if resolved else {})}, sort_keys=False)


def save(cfg, path: str) -> None:
    atomic_write(path, dump(cfg))


def add_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """One kebab-case flag per field, in --help groups; the original DARTS scripts' underscore spellings are
    accepted too but not listed. Defaults are suppressed so that only the flags actually given override the YAML
    file; --help shows each field's default and choices the same way."""
    parser.add_argument("--config", help="YAML file of defaults (keys are the flag names); flags override it")
    fields = dataclasses.fields(cls)
    groups = {g: parser.add_argument_group(f"{g} options") for g in GROUPS
              if any(f.metadata["group"] == g for f in fields)}
    for f in fields:
        kind = _field_type(cls, f)
        flag = f"--{f.name.replace('_', '-')}"
        default = "unset" if f.default is None else f.default
        choices = f.metadata.get("choices")
        help_text = f.metadata["help"]
        if "(default:" not in help_text:  # some say what an unset default means themselves
            help_text += f" (default: {default})"
        if kind is bool:
            kw = dict(action=argparse.BooleanOptionalAction)
        elif f.name == "cutout":  # the original's bare --cutout switch still works
            kw = dict(type=int, nargs="?", const=16, metavar="N")
        else:
            kw = dict(type=str, metavar="{" + ",".join(choices) + "}" if choices else f.name.upper())
        groups[f.metadata["group"]].add_argument(flag, dest=f.name, default=argparse.SUPPRESS, help=help_text, **kw)
        if "_" in f.name:
            parser.add_argument(f"--{f.name}", dest=f.name, default=argparse.SUPPRESS, help=argparse.SUPPRESS,
                                **{k: v for k, v in kw.items() if k != "metavar"})


def from_args(cls, args: argparse.Namespace):
    """The config for a parsed command line: YAML file (if --config) then the explicitly given flags."""
    names = {f.name for f in dataclasses.fields(cls)}
    overrides = {k: v for k, v in vars(args).items() if k in names}
    yaml_values = load_yaml(args.config) if getattr(args, "config", None) else {}
    return build(cls, yaml_values, overrides, source=args.config or "config")


SweepConfig = dataclasses.make_dataclass("SweepConfig", [_passed_field(name) for name in SWEEP_PASSED],
                                         bases=(SweepSettings,))
SweepConfig.__doc__ = SweepSettings.__doc__
