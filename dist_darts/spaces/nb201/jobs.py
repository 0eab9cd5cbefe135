"""The NAS-Bench-201 space's jobs: `search(cfg)`, `retrain(cfg)` and `evaluate_checkpoint(cfg)`.

They are the DARTS jobs' tasks with this space's parts: the search drives SearchNetwork with the shared step
(every --method, first and second order, DDP, accumulation, the noise scale, resume) and reads the cell off by
the authors' rule (derive); the retrain trains the benchmark's Network with its protocol (config.py). With
--benchmark-file, each epoch's cell is looked up in the benchmark, so a collapse shows in the benchmark's own
accuracy.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from ...job import EpochHook, run_job
from ...logs import log
from ...search import SearchResult, SearchTask, drawn, search_job
from ...train import RetrainTask, TrainResult, evaluate_job, read_weights, retrain_job
from . import genotype as nb
from .bench import RESULTS, Benchmark, BenchmarkError, check_file
from .config import BENCH_C, BENCH_N, NB201EvaluateConfig, NB201RetrainConfig, NB201SearchConfig
from .networks import Network, SearchNetwork

PARAMETER_FREE = ("none", "skip_connect", "avg_pool_3x3")
SHOWN_RESULT = "cifar10_test"  # the benchmark's number on the epoch line


class NB201SearchTask(SearchTask):
    """The DARTS search over the benchmark's cell: one alpha matrix shared by every cell."""

    primitives = nb.OPS
    to_dict, from_dict = staticmethod(nb.to_dict), staticmethod(nb.from_dict)
    save_genotype, format_genotype = staticmethod(nb.save), staticmethod(str)

    def build_supernet(self, cfg, loaders) -> nn.Module:
        self.stem = "cifar"  # the benchmark's one 3x3 convolution at the input's size
        self.benchmark = None
        if cfg.benchmark_file and self.job.env.is_main:  # only the main rank writes what it finds
            self.benchmark = Benchmark(cfg.benchmark_file)
            log.info("benchmark: %s, %d cells (%s)", self.benchmark.kind, len(self.benchmark), cfg.benchmark_file)
        log.info("NAS-Bench-201 search network: C=%d, N=%d cells per stage, %d px images", cfg.init_channels,
                 cfg.layers, loaders.image_size)
        return SearchNetwork(cfg.init_channels, cfg.layers, loaders.num_classes, method=cfg.method)

    def derive(self, max_skip: int | None = None) -> str:
        return nb.derive(self.model.alphas)

    def op_alphas(self) -> dict:
        return {"cell": self.model.alphas}

    @staticmethod
    def collapse_counts(arch_str: str) -> tuple[dict, str, dict]:
        """The collapse fingerprint: how many of the six edges are parameter-free, skip_connect, none."""
        ops = nb.parse_arch(arch_str)
        row = {"param_free": sum(op in PARAMETER_FREE for op in ops), "skip_connect": ops.count("skip_connect"),
               "none": ops.count("none")}
        text = (f"param-free ops {row['param_free']}/{len(ops)} (skip_connect {row['skip_connect']}, none "
                f"{row['none']})")
        return row, text, {"skip_normal": row["skip_connect"]}  # DARTS+'s rule counts the cell's skips

    def epoch_extras(self, arch_str: str) -> tuple[dict, str]:
        """The benchmark's accuracies of this epoch's cell (bench_* in history.json), where a file was given."""
        if self.benchmark is None:
            return {}, ""
        try:
            entry = self.benchmark.lookup(arch_str)
        except BenchmarkError as e:  # a damaged entry costs this epoch's numbers, not the search
            log.warning("no benchmark numbers this epoch: %s", e)
            return {}, ""
        row = {f"bench_{name}": entry[name] for name, _, _ in RESULTS}
        shown = row[f"bench_{SHOWN_RESULT}"]
        return row, "" if shown is None else f" | bench CIFAR-10 test {shown:.2f}%"

    def draw(self, run_dir: Path, arch_str: str) -> list[str]:
        return drawn("cell drawing", lambda: [nb.draw(arch_str, run_dir / "genotype.png", "NAS-Bench-201 cell")])


class NB201RetrainTask(RetrainTask):
    """The benchmark's evaluation network of one cell."""

    to_dict = staticmethod(nb.to_dict)

    def build_network(self, cfg, loaders, arch_str: str) -> nn.Module:
        return Network(cfg.init_channels, cfg.layers, arch_str, loaders.num_classes)


def search(cfg: NB201SearchConfig, on_epoch: EpochHook | None = None) -> SearchResult:
    """Search; `on_epoch(metrics, checkpoint)` is called on every rank after each epoch's checkpoint is written."""
    if cfg.benchmark_file:  # a missing or foreign file fails before any process group forms
        check_file(cfg.benchmark_file)
    return run_job(cfg, search_job, on_epoch, NB201SearchTask)


def retrain(cfg: NB201RetrainConfig, on_epoch: EpochHook | None = None) -> TrainResult:
    arch_str = nb.load(cfg.genotype)  # a bad cell fails before any process group forms
    return run_job(cfg, retrain_job, arch_str, on_epoch, NB201RetrainTask)


def _evaluation_network(arch: dict, loaders) -> nn.Module:
    return Network(arch["init_channels"], arch["layers"], arch["genotype"], loaders.num_classes)


def evaluate_checkpoint(cfg: NB201EvaluateConfig) -> dict:
    """Top-1/top-5 and parameters of a NAS-Bench-201 retrain checkpoint, or of a state dict of the authors'
    TinyNetwork described by --genotype."""
    arch, weights, cfg = read_weights(cfg, nb.load, nb.from_dict, (BENCH_C, BENCH_N))
    return run_job(cfg, evaluate_job, arch, weights, _evaluation_network)
