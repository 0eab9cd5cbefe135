"""What the jobs and `dist-darts sweep` need to know of the DARTS convolutional space (its Space object, the
protocol the other spaces' Space classes subclass): its configs and jobs, how its trials' metrics read, which
selection score is better, and what its report shows. Nothing here imports Ray."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from ... import collapse
from ...config import EvaluateConfig, RetrainConfig, SearchConfig
from . import genotype as gt


class ConvSpace:
    """Convolutional cells: searches report val_top1 (the alphas' half of the training images); selection retrains
    the best val_top1 on their hold-out of the training images; final retrains their test top-1 after the last
    epoch; higher is better. Its `name` is its row's in spaces.TABLE."""

    search_config, retrain_config, evaluate_config = SearchConfig, RetrainConfig, EvaluateConfig
    stand_in_genotype = "DARTS_V2"  # checks the retrain settings before any trial runs
    to_dict, from_dict, save, format = (staticmethod(gt.to_dict), staticmethod(gt.from_dict), staticmethod(gt.save),
                                        staticmethod(gt.format_genotype))
    select_key, select_name, higher_is_better = "select_val_top1", "selection val top-1", True
    final_key, final_name, unit = "test_top1", "test top-1", " %"
    paper_select_epochs = 100  # DARTS section 3.2: each candidate cell trained from scratch for 100 epochs
    splits = {"search_val_top1": "the half of the training images that trains the alphas, the search's last epoch",
              "select_val_top1": "the selection retrain's hold-out of the training images (--select-val-portion), "
                                 "its best epoch",
              "test_top1": "the test split, once, after a final retrain's last epoch",
              "test_top5": "the test split, once, after a final retrain's last epoch"}

    @staticmethod
    def selection_settings(sweep) -> dict:
        """What the sweep sets in each selection retrain: a hold-out to rank on, no test split."""
        return {"val_portion": sweep.select_val_portion, "train_subset": sweep.select_train_subset,
                "evaluate_test": False}

    @staticmethod
    def selection_split(sweep) -> str:
        subset = f", training on {sweep.select_train_subset:g} of the rest" if sweep.select_train_subset else ""
        return f"a {sweep.select_val_portion:g} hold-out of the training images{subset}"

    @staticmethod
    def check_sweep(sweep) -> None:
        """Refuse, with a ConfigError, a sweep setting that does nothing in this space."""

    @staticmethod
    def check_data(cfg) -> None:
        """The data set's files are there (or downloaded now, once): a DataError otherwise."""
        from ...data import datasets
        if cfg.dataset != "synthetic" and cfg.data_backend != "synthetic":
            datasets.load(cfg.dataset, cfg.data_dir, cfg.download, cfg.image_size)

    def config(self, kind: str) -> type:
        """The config class of the space's `kind` job (search, retrain or evaluate)."""
        return {"search": self.search_config, "retrain": self.retrain_config, "evaluate": self.evaluate_config}[kind]

    # the space's jobs as "module:function" (search, retrain, and evaluate on a checkpoint), imported on first use
    entry_points = {"search": "dist_darts.search:run", "retrain": "dist_darts.train:run",
                    "evaluate": "dist_darts.train:evaluate_checkpoint"}

    def job(self, kind: str):
        """The function of the space's `kind` job (search, retrain or evaluate), called with its config."""
        module, function = self.entry_points[kind].split(":")
        return getattr(importlib.import_module(module), function)

    def evaluate(self, cfg) -> dict:
        """The evaluate job on a checkpoint (cfg: evaluate_config)."""
        return self.job("evaluate")(cfg)

    @staticmethod
    def final_report(kind: str, result) -> dict | None:
        if kind == "search":
            return None  # the last epoch's report already holds what the report needs
        numbers = {"test_top1": result.test_top1, "test_top5": result.test_top5, "val_top1": result.val_top1,
                   "best_val_top1": result.best_val_top1}
        return {"final": True, "params": result.params, **{k: v for k, v in numbers.items() if v is not None}}

    def trial(self, metrics: dict) -> dict:
        genotype = gt.from_dict(json.loads(metrics["genotype"]))
        return {"search_val_top1": metrics["val_top1"], "genotype": gt.to_dict(genotype),
                "param_free_normal": collapse.cell_counts(genotype)["param_free_normal"],
                **{k: metrics.get(k) for k in ("noise_scale_weights", "noise_scale_alphas")}}

    @staticmethod
    def selection(metrics: dict) -> dict:
        return {"select_val_top1": metrics["best_val_top1"], "params": metrics["params"]}

    @staticmethod
    def final_run(metrics: dict) -> dict:
        return {"test_top1": metrics["test_top1"], "test_top5": metrics["test_top5"], "params": metrics["params"]}

    @staticmethod
    def progress(kind: str, result: dict) -> str:
        if kind == "search" or "best_val_top1" in result:
            best = f" (best {result['best_val_top1']:.2f} %)" if kind != "search" else ""
            return f"val top-1 {result['val_top1']:.2f} %{best}"
        return f"train top-1 {result['train_top1']:.2f} %"  # a final retrain reads no split but training until its end

    def describe(self, search_cfg) -> dict:
        return {"space": self.name, "method": search_cfg.method, "derive": search_cfg.derive,
                "unrolled": search_cfg.unrolled}

    @staticmethod
    def headline(search: dict) -> str:
        return (f"Searches: {'2nd' if search['unrolled'] else '1st'} order, method {search['method']}, derivation "
                f"{search['derive']}. Run one sweep per method with the same seeds to compare them seed by seed.\n\n"
                "B_noise is the gradient noise scale each search measured last (docs/large-batch.md): a global "
                "batch well below the smaller of the two still cuts the steps nearly in proportion.\n\n"
                "Splits: search val top-1 is on the half of the training images that trains the alphas; selection "
                "val top-1 (the best epoch) on a hold-out of the training images that the selection retrain never "
                "trains on; only the final retrains read the test split, once, after their last epoch.")

    def table(self, trials: list[dict]) -> list[str]:
        lines = ["| seed | search val top-1 | param-free ops, normal cell | B_noise weights / alphas | selection val "
                 "top-1 | params | genotype |", "|---:|---:|---:|---:|---:|---:|---|"]
        for t in trials:
            noise = " / ".join("-" if t.get(k) is None else f"{t[k]:.3g}"
                               for k in ("noise_scale_weights", "noise_scale_alphas"))
            lines.append(f"| {t['label']} | {t['search_val_top1']:.2f} | {t['param_free_normal']}/8 | {noise} | "
                         f"{t['select_val_top1']:.2f} | {t['params']:,} | `{self.format(self.from_dict(t['genotype']))}`"
                         f"{t['same']} |")
        return lines

    @staticmethod
    def summary(t: dict) -> str:
        return (f"search {t['search_val_top1']:.2f} % | select val {t['select_val_top1']:.2f} % | "
                f"{t['params']:,} params")

    @staticmethod
    def draw_winner(genotype: dict, root: Path) -> list[Path]:
        from ...visualize import draw_genotype
        return draw_genotype(gt.from_dict(genotype), root / "winner", "png")
