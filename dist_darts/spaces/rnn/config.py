"""The recurrent space's job settings: which text corpus and how it is batched, and the original rnn/ code's
search, retrain and evaluation defaults (Penn Treebank)."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import TEXT_DATASETS, ConfigError, RunConfig, check_ranges, check_resume_has_output, opt
from ...runfolder import default_evaluate_output


@dataclass
class TextDataConfig:
    """Which text corpus and how it is batched (the recurrent space)."""

    dataset: str = opt("pydoc", "text corpus: ptb and wt2 (the original's folders), text (any folder of train.txt, "
                                "valid.txt, test.txt), pydoc (the Python language reference, embedded)", "data",
                       choices=TEXT_DATASETS)
    data_dir: str | None = opt(None, "corpus folder with train.txt, valid.txt and test.txt (not for pydoc)", "data")
    download: bool = opt(False, "download ptb or wt2 into --data-dir when missing (needs a network)", "data")
    batch_size: int = opt(256, "token streams per step over ALL ranks together, the global batch (each rank owns a "
                               "contiguous slice; --space cnn's --batch-size is per rank instead)", "data")
    bptt: int = opt(35, "sequence length (truncated backpropagation through time)", "data")

    def __post_init__(self):
        check_ranges(self, minimum=1, names=("batch_size", "bptt"))
        if self.dataset != "pydoc" and not self.data_dir:
            raise ConfigError(f"data-dir: the {self.dataset} corpus needs --data-dir (a folder of train.txt, "
                              f"valid.txt and test.txt)")


@dataclass
class RecurrentJobConfig(TextDataConfig, RunConfig):
    """A recurrent training job (search or retrain): the original rnn/ code's language model and its SGD."""

    resume: bool = opt(False, "continue from the latest checkpoint in the run folder", "runtime")
    overwrite: bool = opt(False, "delete what an earlier run left in --output, then start over (a non-empty run "
                                 "folder is refused otherwise)", "runtime")
    log_interval: int = opt(50, "steps between progress lines and TensorBoard step scalars", "runtime")
    epochs: int = opt(50, "epochs", "schedule")
    emsize: int = opt(300, "embedding size (must equal --nhid: the decoder is tied to the embedding)", "model")
    nhid: int = opt(300, "hidden units of the recurrent cell", "model")
    dropout: float = opt(0.75, "locked dropout on the cell's outputs", "model")
    dropouth: float = opt(0.25, "dropout on the cell's hidden states", "model")
    dropoutx: float = opt(0.75, "dropout on the cell's inputs", "model")
    dropouti: float = opt(0.2, "locked dropout on the embeddings", "model")
    dropoute: float = opt(0.0, "dropout of whole words from the embedding", "model")
    learning_rate: float = opt(20.0, "SGD learning rate (scaled per step by the drawn sequence length / bptt)",
                               "optimiser")
    weight_decay: float = opt(5e-7, "weight decay", "optimiser")
    grad_clip: float = opt(0.25, "gradient norm clipping", "optimiser")
    alpha: float = opt(0.0, "activation regularisation: alpha * mean(dropped output ** 2)", "optimiser")
    beta: float = opt(1e-3, "temporal activation regularisation: beta * mean((h_t - h_t-1) ** 2)", "optimiser")
    steps_per_epoch: int = opt(0, "cap on steps per epoch (0 = whole epoch); for demos and tests", "schedule")
    checkpoint_steps: int = opt(0, "also checkpoint every N steps inside an epoch (0 = at epoch ends only)",
                                "runtime")
    stop_after_step: int = opt(0, "end the job after its Nth optimiser step, counted over all epochs, with a "
                                  "checkpoint there (exit 0; --resume goes on): a time-boxed run (0 = run to the "
                                  "end)", "runtime")
    eval_batch_size: int = opt(10, "streams of the validation split's evaluation, over all ranks", "data")

    def __post_init__(self):
        RunConfig.__post_init__(self)
        TextDataConfig.__post_init__(self)
        check_resume_has_output(self)
        check_ranges(self, minimum=0, names=("steps_per_epoch", "checkpoint_steps", "stop_after_step", "learning_rate",
                                             "weight_decay", "grad_clip", "alpha", "beta"))
        check_ranges(self, minimum=1, names=("epochs", "emsize", "nhid", "log_interval", "eval_batch_size"))
        if self.emsize != self.nhid:
            raise ConfigError(f"emsize: must equal nhid (the decoder is tied to the embedding), got {self.emsize} "
                              f"and {self.nhid}")
        for name in ("dropout", "dropouth", "dropoutx", "dropouti", "dropoute"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name}: must be in [0, 1), got {getattr(self, name)}")


@dataclass
class RecurrentSearchConfig(RecurrentJobConfig):
    """Recurrent DARTS search; defaults are the original train_search.py's (Penn Treebank)."""
    run_kind = "rnn_search"  # the default run folder is runs/rnn_search/DATE-TIME

    output: str | None = opt(None, "run folder: config, logs, TensorBoard events, checkpoints, genotypes (default: "
                                   "a new runs/rnn_search/DATE-TIME per run)", "runtime")
    seed: int = opt(3, "random seed", "runtime")
    arch_learning_rate: float = opt(3e-3, "alphas: Adam learning rate", "architecture search")
    arch_weight_decay: float = opt(1e-3, "alphas: Adam weight decay", "architecture search")
    unrolled: bool = opt(False, "second-order DARTS (unrolled virtual step); default first order",
                         "architecture search")

    def __post_init__(self):
        super().__post_init__()
        check_ranges(self, minimum=0, names=("arch_weight_decay",))
        if self.arch_learning_rate <= 0:
            raise ConfigError(f"arch-learning-rate: must be > 0, got {self.arch_learning_rate}")


@dataclass
class RecurrentRetrainConfig(RecurrentJobConfig):
    """Training a recurrent genotype from scratch; defaults are the original train.py's (Penn Treebank)."""
    run_kind = "rnn_retrain"  # the default run folder is runs/rnn_retrain/DATE-TIME

    output: str | None = opt(None, "run folder: config, logs, TensorBoard events, checkpoints, metrics.json "
                                   "(default: a new runs/rnn_retrain/DATE-TIME per run)", "runtime")
    genotype: str = opt("RNN_DARTS_V2", "published recurrent name (RNN_...) or recurrent genotype JSON", "model")
    seed: int = opt(1267, "random seed", "runtime")
    epochs: int = opt(8000, "epochs (the original's upper limit)", "schedule")
    log_interval: int = opt(200, "steps between progress lines and TensorBoard step scalars", "runtime")
    batch_size: int = opt(64, "token streams per step over ALL ranks together, the global batch (each rank owns a "
                              "contiguous slice; --space cnn's --batch-size is per rank instead)", "data")
    emsize: int = opt(850, "embedding size (must equal --nhid: the decoder is tied to the embedding)", "model")
    nhid: int = opt(850, "hidden units of the recurrent cell", "model")
    dropoute: float = opt(0.1, "dropout of whole words from the embedding", "model")
    weight_decay: float = opt(8e-7, "weight decay", "optimiser")
    nonmono: int = opt(5, "switch SGD to averaged SGD when the validation loss is above the best of all but the "
                          "last N epochs", "schedule")
    max_seq_len_delta: int = opt(20, "a drawn sequence is at most bptt + this long", "data")
    test_batch_size: int = opt(1, "streams of the test split's evaluation, over all ranks", "data")
    evaluate_test: bool = opt(True, "evaluate the test split once, after the last epoch, on the best weights (the "
                                    "sweep's selection retrains turn it off: they never read the test split)",
                              "runtime")

    def __post_init__(self):
        super().__post_init__()
        check_ranges(self, minimum=0, names=("max_seq_len_delta",))
        check_ranges(self, minimum=1, names=("test_batch_size", "nonmono"))


@dataclass
class RecurrentEvaluateConfig(TextDataConfig, RunConfig):
    """Evaluating a recurrent checkpoint (ours, or the original's pickled ptb_model.pt) on the test split."""

    checkpoint: str = opt("", "a recurrent retrain checkpoint (runs/.../checkpoints/best.pt) or the original's "
                              "released ptb_model.pt (read without running its pickled code)", "model")
    dataset: str | None = opt(None, "text corpus (default: the checkpoint's; ptb for the original's file)", "data",
                              choices=TEXT_DATASETS)
    batch_size: int = opt(1, "streams of the test split, over all ranks (the original's test batch is 1)", "data")
    output: str | None = opt(None, "folder for metrics.json, config.yaml and log.txt (default: evaluate/NAME in the "
                                   "checkpoint's run folder)", "runtime")
    seed: int = opt(0, "seed (evaluation draws no random numbers)", "runtime")

    def __post_init__(self):
        RunConfig.__post_init__(self)
        check_ranges(self, minimum=1, names=("batch_size", "bptt"))
        if not self.checkpoint:
            raise ConfigError("checkpoint: --checkpoint FILE is required")
        if self.dataset not in (None, "pydoc") and not self.data_dir:
            raise ConfigError(f"data-dir: the {self.dataset} corpus needs --data-dir")
        if self.output is None:
            self.output = default_evaluate_output(self.checkpoint)
