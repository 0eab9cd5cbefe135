"""The NAS-Bench-201 space's job settings: the DARTS search settings over the benchmark's network, and the
benchmark's own training protocol for a retrain (Dong & Yang, ICLR 2020, section 3: 200 epochs, SGD with
Nesterov momentum 0.9, learning rate 0.1 decayed by cosine to 0, weight decay 5e-4, batch 256, random crop and
flip; no auxiliary head, cutout or drop path).

What the DARTS convolutional space has and this one does not (PC-DARTS' partial channels, the ImageNet stem,
--max-skip, DARTS-PT, the auxiliary head, drop path, cutout) is refused with one line when
set, never silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...config import ConfigError, EvaluateConfig, RetrainConfig, SearchConfig, opt

# the benchmark's network size: C=16, N=5 cells per stage
BENCH_C, BENCH_N = 16, 5


def _refuse_unused(cfg, unused: dict) -> None:
    """One line naming the first setting of `unused` (name -> the only value this space takes) that was changed."""
    for name, value in unused.items():
        if getattr(cfg, name) != value:
            raise ConfigError(f"{name.replace('_', '-')}: does nothing in --space nb201 (the DARTS convolutional "
                              f"space's setting); leave it at {value}")


@dataclass
class NB201SearchConfig(SearchConfig):
    """DARTS search over NAS-Bench-201's cell; defaults are the DARTS paper's search settings, as the benchmark's
    authors ran DARTS on it, with the benchmark's network (C=16, N=5)."""

    run_kind = "nb201_search"  # the default run folder is runs/nb201_search/DATE-TIME

    layers: int = opt(BENCH_N, "cells per stage N (the network has 3N cells and two residual blocks)", "model")
    init_channels: int = opt(BENCH_C, "channels C of the first stage (then 2C, 4C)", "model")
    benchmark_file: str | None = opt(None, "the NAS-Bench-201 file (NAS-Bench-201-v1_0-e61699.pth or v1_1-096897.pth) "
                                           "or NATS-Bench's topology file: each epoch's derived cell is looked up "
                                           "in it (bench_* in history.json, TensorBoard, the epoch line); read "
                                           "without executing code from it", "architecture search")

    def __post_init__(self):
        super().__post_init__()
        _refuse_unused(self, {"partial_channels": 1, "stem": "auto", "max_skip": None, "derive": "original"})

    def check_layers(self) -> None:
        """N >= 1: every stage keeps a cell."""


@dataclass
class NB201RetrainConfig(RetrainConfig):
    """Training a NAS-Bench-201 cell from scratch with the benchmark's protocol (its paper's section 3)."""

    run_kind = "nb201_retrain"

    genotype: str = opt("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|"
                        "nor_conv_3x3~2|", "the cell: an arch string, or a genotype.json holding arch_str "
                                           "(default: the benchmark's best CIFAR-10 cell)", "model")
    epochs: int = opt(200, "training epochs", "schedule")
    batch_size: int = opt(256, "images per step on EACH rank (the global batch is this times the world size)", "data")
    base_batch_size: int = opt(256, "global batch the learning rate is meant for (the benchmark's 256)", "schedule")
    layers: int = opt(BENCH_N, "cells per stage N", "model")
    init_channels: int = opt(BENCH_C, "channels C of the first stage", "model")
    learning_rate: float = opt(0.1, "initial SGD learning rate, for a global batch of --base-batch-size", "optimiser")
    weight_decay: float = opt(5e-4, "weight decay", "optimiser")
    nesterov: bool = opt(True, "Nesterov momentum (the benchmark's)", "optimiser")
    grad_clip: float = opt(0.0, "gradient norm clipping (0 = off: the benchmark does not clip)", "optimiser")
    auxiliary: bool = opt(False, "no auxiliary head in this space", "model")
    drop_path_prob: float = opt(0.0, "no drop path in this space", "model")
    cutout: int = opt(0, "no cutout in the benchmark's protocol", "augmentation")

    def __post_init__(self):
        super().__post_init__()
        _refuse_unused(self, {"auxiliary": False, "drop_path_prob": 0.0})


@dataclass
class NB201EvaluateConfig(EvaluateConfig):
    """Evaluating a NAS-Bench-201 retrain checkpoint (or a state dict of the authors' TinyNetwork with --genotype,
    --layers and --init-channels)."""

    layers: int | None = opt(None, "for a plain state dict: its cells per stage N (default: the benchmark's 5)",
                             "model")
    init_channels: int | None = opt(None, "for a plain state dict: its channels C (default: the benchmark's 16)",
                                    "model")


CONFIGS = {"search": NB201SearchConfig, "retrain": NB201RetrainConfig, "evaluate": NB201EvaluateConfig}
