"""What `dist-darts sweep --space nb201` and the CLI need of the NAS-Bench-201 space: ConvSpace's protocol (the
selection retrains rank top-1 on a hold-out of the training images, only the final retrains read the test split)
with this space's jobs, cells and report columns."""

from __future__ import annotations

import json
from pathlib import Path

from ..cnn.sweep import ConvSpace
from . import genotype as nb
from .config import NB201EvaluateConfig, NB201RetrainConfig, NB201SearchConfig


class NB201Space(ConvSpace):
    search_config, retrain_config, evaluate_config = NB201SearchConfig, NB201RetrainConfig, NB201EvaluateConfig
    stand_in_genotype = NB201RetrainConfig.genotype  # the benchmark's best CIFAR-10 cell
    to_dict, from_dict, save, format = (staticmethod(nb.to_dict), staticmethod(nb.from_dict), staticmethod(nb.save),
                                        staticmethod(str))

    entry_points = {"search": f"{__package__}.jobs:search", "retrain": f"{__package__}.jobs:retrain",
                    "evaluate": f"{__package__}.jobs:evaluate_checkpoint"}

    def trial(self, metrics: dict) -> dict:
        from .jobs import NB201SearchTask
        arch_str = nb.from_dict(json.loads(metrics["genotype"]))
        bench = {k: v for k, v in metrics.items() if k.startswith("bench_")}
        return {"search_val_top1": metrics["val_top1"], "genotype": nb.to_dict(arch_str),
                "param_free": NB201SearchTask.collapse_counts(arch_str)[0]["param_free"],
                **{k: metrics.get(k) for k in ("noise_scale_weights", "noise_scale_alphas")}, **bench}

    def describe(self, search_cfg) -> dict:
        return {"space": self.name, "method": search_cfg.method, "derive": "argmax per edge, none included",
                "unrolled": search_cfg.unrolled, "benchmark_file": search_cfg.benchmark_file}

    def table(self, trials: list[dict]) -> list[str]:
        lines = ["| seed | search val top-1 | param-free edges | benchmark CIFAR-10 test | selection val top-1 | "
                 "params | cell |", "|---:|---:|---:|---:|---:|---:|---|"]
        for t in trials:
            bench = t.get("bench_cifar10_test")
            lines.append(f"| {t['label']} | {t['search_val_top1']:.2f} | {t['param_free']}/6 | "
                         f"{'-' if bench is None else f'{bench:.2f}'} | {t['select_val_top1']:.2f} | "
                         f"{t['params']:,} | `{t['genotype']['arch_str']}`{t['same']} |")
        return lines

    @staticmethod
    def draw_winner(genotype: dict, root: Path) -> list[Path]:
        return [nb.draw(nb.from_dict(genotype), root / "winner.png", "the winner's NAS-Bench-201 cell")]
