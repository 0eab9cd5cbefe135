"""What `dist-darts sweep --space rnn` needs to know of the recurrent space (the Space protocol of
spaces/cnn/sweep.py): its trials report perplexities, lower is better."""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import ConfigError
from ..cnn.sweep import ConvSpace
from . import genotype as rgt
from .config import RecurrentEvaluateConfig, RecurrentRetrainConfig, RecurrentSearchConfig


class RecurrentSpace(ConvSpace):
    """Recurrent cells: searches report val_perplexity; selection and final retrains are read from the report
    each retrain worker sends after its job (the best weights' validation and test perplexity); lower is better."""

    search_config, retrain_config, evaluate_config = (RecurrentSearchConfig, RecurrentRetrainConfig,
                                                      RecurrentEvaluateConfig)
    stand_in_genotype = "RNN_DARTS_V2"
    to_dict, from_dict, save, format = (staticmethod(rgt.recurrent_to_dict), staticmethod(rgt.recurrent_from_dict),
                                        staticmethod(rgt.save_recurrent), staticmethod(rgt.format_recurrent))
    select_key, select_name, higher_is_better = "select_val_perplexity", "selection val perplexity", False
    final_key, final_name, unit = "test_perplexity", "test perplexity", ""
    paper_select_epochs = 300  # DARTS section 3.2: each candidate cell trained from scratch for 300 epochs on PTB
    splits = {"search_val_perplexity": "the corpus's validation split, the search's last epoch",
              "select_val_perplexity": "the corpus's validation split, the selection retrain's best weights",
              "val_perplexity": "the corpus's validation split, a final retrain's best weights",
              "test_perplexity": "the corpus's test split, once, after a final retrain"}

    @staticmethod
    def selection_settings(sweep) -> dict:
        return {"evaluate_test": False}  # the corpus has its own validation split

    @staticmethod
    def selection_split(sweep) -> str:
        return "the corpus's validation split"

    @staticmethod
    def check_sweep(sweep) -> None:
        if sweep.select_train_subset:
            raise ConfigError("select-train-subset: the image spaces' selection retrains train on a subset; --space "
                              "rnn's read the corpus")

    @staticmethod
    def check_data(cfg) -> None:
        from ...data.text import load_text
        load_text(cfg.dataset, cfg.data_dir, cfg.download)

    entry_points = {"search": f"{__package__}.jobs:search", "retrain": f"{__package__}.jobs:retrain",
                    "evaluate": f"{__package__}.jobs:evaluate_checkpoint"}

    @staticmethod
    def final_report(kind: str, result) -> dict | None:
        if kind == "search":
            return None
        numbers = {"val_perplexity": result.val_perplexity, "test_perplexity": result.test_perplexity}
        return {"final": True, "params": result.params, **{k: v for k, v in numbers.items() if v is not None}}

    def trial(self, metrics: dict) -> dict:
        genotype = rgt.recurrent_from_dict(json.loads(metrics["genotype"]))
        return {"search_val_perplexity": metrics["val_perplexity"], "genotype": rgt.recurrent_to_dict(genotype)}

    @staticmethod
    def selection(metrics: dict) -> dict:
        return {"select_val_perplexity": metrics["val_perplexity"], "params": metrics["params"]}

    @staticmethod
    def final_run(metrics: dict) -> dict:
        return {"val_perplexity": metrics["val_perplexity"], "test_perplexity": metrics["test_perplexity"],
                "params": metrics["params"]}

    @staticmethod
    def progress(kind: str, result: dict) -> str:
        if kind == "search":
            return f"val perplexity {result['val_perplexity']:.2f}"
        return f"val perplexity {result['val_perplexity']:.2f} (best {result['best_val_perplexity']:.2f})"

    def describe(self, search_cfg) -> dict:
        return {"space": self.name, "dataset": search_cfg.dataset, "unrolled": search_cfg.unrolled}

    @staticmethod
    def headline(search: dict) -> str:
        return (f"Searches: recurrent cells on {search['dataset']}, {'2nd' if search['unrolled'] else '1st'} order "
                f"DARTS. Lower perplexity is better; the winner has the lowest selection val perplexity.\n\n"
                "Splits: search and selection perplexities are on the corpus's validation split; only the final "
                "retrains' test perplexity is on its test split.")

    def table(self, trials: list[dict]) -> list[str]:
        lines = ["| seed | search val perplexity | selection val perplexity | params | genotype |",
                 "|---:|---:|---:|---:|---|"]
        for t in trials:
            lines.append(f"| {t['label']} | {t['search_val_perplexity']:.2f} | {t['select_val_perplexity']:.2f} | "
                         f"{t['params']:,} | `{self.format(self.from_dict(t['genotype']))}`{t['same']} |")
        return lines

    @staticmethod
    def summary(t: dict) -> str:
        return (f"search ppl {t['search_val_perplexity']:.2f} | select ppl {t['select_val_perplexity']:.2f} | "
                f"{t['params']:,} params")

    @staticmethod
    def draw_winner(genotype: dict, root: Path) -> list[Path]:
        from ...visualize import draw_recurrent_cell
        return [draw_recurrent_cell(rgt.recurrent_from_dict(genotype), root / "winner_recurrent.png",
                                    "the winner's recurrent cell")]
