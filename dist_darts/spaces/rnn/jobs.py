"""The recurrent space's jobs, as the original rnn/ code runs them: `search(cfg)` (train_search.py),
`retrain(cfg)` (train.py) and `evaluate_checkpoint(cfg)` (test.py), each a Task of the one epoch driver.

Under DDP every rank owns a contiguous slice of each batch's token streams (the global --batch-size is split) and
keeps the hidden states of its own streams; DDP and the architect average the gradients, so the ranks hold the
same weights, alphas and genotype. Which rows a step reads is a pure function of (seed, epoch, step), and every
rank's hidden states are in the checkpoint: a run resumed at step k continues exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ... import checkpoint as ckpt_io
from ...data.text import (Corpus, batchify, epoch_schedule, eval_batches, load_text, search_batches, shard_columns,
                          train_batches)
from ...distributed import (DistEnv, all_gather_object, all_reduce_mean_, all_reduce_sum, barrier,
                            seed_model_randomness)
from ...driver import EpochEnd, StepOutput, run_epochs
from ...job import EpochHook, Job, run_job
from ...logs import log, summary_table
from ...meters import LossMeter, perplexity
from ..cnn.model import count_parameters
from ...parallel import check_replicas, prepare_model
from ...runfolder import atomic_write, best_checkpoint_path
from . import genotype as rgt
from .architect import RecurrentArchitect
from .config import RecurrentEvaluateConfig, RecurrentRetrainConfig, RecurrentSearchConfig
from .networks import RNNModel, RNNModelSearch, detach_hidden

# settings that define the run; a resume with any of them changed is refused
SEARCH_RESUME_KEYS = ("dataset", "batch_size", "bptt", "emsize", "nhid", "unrolled", "epochs", "seed")
RETRAIN_RESUME_KEYS = ("dataset", "genotype", "batch_size", "bptt", "emsize", "nhid", "epochs", "seed")


# --- data ------------------------------------------------------------------------------------------------------

def load_corpus(cfg, env: DistEnv) -> Corpus:
    """The corpus on every rank; with --download rank 0 fetches it first, the others then read the folder."""
    if cfg.download and not env.is_main:
        barrier()
    corpus = load_text(cfg.dataset, cfg.data_dir, cfg.download and env.is_main)
    if cfg.download and env.is_main:
        barrier()
    return corpus


def rank_streams(tokens: torch.Tensor, columns: int, env: DistEnv) -> torch.Tensor:
    """This rank's slice of the stream batchified into `columns` streams, on its device."""
    return shard_columns(batchify(tokens, columns), env.rank, env.world_size).to(env.device)


def eval_streams(tokens: torch.Tensor, columns: int, env: DistEnv) -> tuple[torch.Tensor, int]:
    """(this rank's slice, as even as the columns allow and maybe empty, of `columns` streams; the row count)."""
    batched = batchify(tokens, columns)
    return batched.tensor_split(env.world_size, dim=1)[env.rank].to(env.device), batched.size(0)


@torch.no_grad()
def evaluate_loss(model: RNNModel, source: torch.Tensor, columns: int, rows: int, bptt: int, autocast) -> float:
    """Mean token loss over all ranks' streams as the original's evaluate(): summed, divided by columns x rows
    (the row count, one more than the rows with targets); the hidden state runs on from batch to batch."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=source.device)
    if source.size(1):
        hidden = model.init_hidden(source.size(1))
        for x, y in eval_batches(source, bptt):
            with autocast():
                log_prob, hidden = model(x, hidden)
            total += F.nll_loss(log_prob.float().view(-1, model.ntoken), y.reshape(-1), reduction="sum").double()
    model.train(was_training)
    return float(all_reduce_sum(total)) / (columns * rows)


def _steps_per_epoch(rows: int, cfg, variable: bool, max_seq_len_delta: int = 20) -> int:
    """The longest epoch's step count (epochs differ: the sequence lengths are drawn), capped by
    --steps-per-epoch; a shorter epoch simply ends early."""
    longest = max(len(epoch_schedule(rows, cfg.bptt, cfg.seed, e, variable, max_seq_len_delta))
                  for e in range(cfg.epochs))
    return min(longest, cfg.steps_per_epoch or longest)


def _gathered_hidden(hidden: list) -> list:
    """Every rank's hidden state (rank order), for the checkpoint that rank 0 writes."""
    return all_gather_object([h.cpu() for h in hidden])


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def weight_step(model: RNNModel, train_model: nn.Module, optimizer: torch.optim.Optimizer, weights: list, hidden,
                x, y, lr: float, cfg, autocast):
    """One SGD (or averaged SGD) step of the weights as the original: the loss plus activation regularisation
    (alpha, on the dropped outputs) and temporal activation regularisation (beta), gradient-norm clip, the
    learning rate scaled by this step's sequence length for the step only. Returns (NLL, log-probs, hidden)."""
    optimizer.zero_grad(set_to_none=True)
    with autocast():
        log_prob, hidden, raw_outputs, dropped_outputs = train_model(x, hidden, return_h=True)
    log_prob = log_prob.float().view(-1, model.ntoken)
    raw_loss = F.nll_loss(log_prob, y.reshape(-1))
    loss = raw_loss
    if cfg.alpha:
        loss = loss + cfg.alpha * dropped_outputs[-1].float().pow(2).mean()
    if cfg.beta:
        h = raw_outputs[-1].float()
        loss = loss + cfg.beta * (h[1:] - h[:-1]).pow(2).mean()
    loss.backward()
    nn.utils.clip_grad_norm_(weights, cfg.grad_clip)
    base = optimizer.param_groups[0]["lr"]
    _set_lr(optimizer, lr)
    optimizer.step()
    _set_lr(optimizer, base)
    return raw_loss.detach(), log_prob.detach(), detach_hidden(hidden)


# --- search ----------------------------------------------------------------------------------------------------

@dataclass
class RecurrentSearchResult:
    genotype: rgt.RecurrentGenotype
    val_perplexity: float
    train_perplexity: float
    epochs: int
    run_dir: str
    seconds: float


class RecurrentSearchTask:
    """The recurrent supernet, its SGD and the alphas' Adam (the original's betas), as the driver's Task."""

    kind = "rnn_search"
    meter = LossMeter
    resume_keys = SEARCH_RESUME_KEYS

    def __init__(self, job: Job, corpus: Corpus):
        cfg, env, self.job = job.cfg, job.env, job
        self.ntoken = len(corpus.dictionary)
        self.columns = cfg.batch_size // env.world_size
        self.train_data = rank_streams(corpus.train, cfg.batch_size, env)
        self.search_data = rank_streams(corpus.valid, cfg.batch_size, env)  # the alphas' batches
        self.val_data, self.val_rows = eval_streams(corpus.valid, cfg.eval_batch_size, env)
        net = RNNModelSearch(self.ntoken, cfg.emsize, cfg.nhid, cfg.nhid, cfg.dropout, cfg.dropouth, cfg.dropoutx,
                             cfg.dropouti, cfg.dropoute)
        seed_model_randomness(cfg.seed, env.rank)  # identical weights, per-rank dropout masks from here on
        self.model, self.train_model = prepare_model(net, env.device, channels_last=False, compile=cfg.compile,
                                                     world_size=env.world_size, exclude=tuple(net.arch_parameters()))
        self.weights = self.model.weights()
        self.w_opt = torch.optim.SGD(self.weights, cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.a_opt = torch.optim.Adam(self.model.arch_parameters(), cfg.arch_learning_rate,
                                      weight_decay=cfg.arch_weight_decay)
        self.architect = RecurrentArchitect(self.model, self.a_opt, cfg.weight_decay, cfg.grad_clip,
                                            unrolled=cfg.unrolled, average=all_reduce_mean_, autocast=job.autocast)
        self.hidden = self.model.init_hidden(self.columns)
        self.hidden_valid = self.model.init_hidden(self.columns)
        self.steps = _steps_per_epoch(self.train_data.size(0), cfg, variable=False)
        self.epochs = cfg.epochs
        self.images_per_step = cfg.batch_size * cfg.bptt  # tokens
        self.metrics = {"train_loss": math.nan, "val_loss": math.nan}

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "w_optimizer": self.w_opt.state_dict(),
                "a_optimizer": self.a_opt.state_dict(),
                "hidden": _gathered_hidden([*self.hidden, *self.hidden_valid])}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.w_opt.load_state_dict(state["w_optimizer"])
        self.a_opt.load_state_dict(state["a_optimizer"])
        train, valid = state["hidden"][self.job.env.rank]
        self.hidden, self.hidden_valid = [train.to(self.job.env.device)], [valid.to(self.job.env.device)]

    def identity(self) -> dict:
        return {}

    def begin_epoch(self, epoch: int, start_step: int):
        if start_step == 0:  # the original starts every epoch from zero states
            self.hidden = self.model.init_hidden(self.columns)
            self.hidden_valid = self.model.init_hidden(self.columns)
        self.model.train()
        return search_batches(self.train_data, self.search_data, self.job.cfg.bptt, self.job.cfg.seed, epoch,
                              start_step)

    def step(self, batch) -> StepOutput:
        cfg = self.job.cfg
        lr = cfg.learning_rate * batch.seq_len / cfg.bptt
        (x, y), (x_val, y_val) = batch.train, batch.valid
        arch_loss, self.hidden_valid = self.architect.step(self.hidden, x, y, self.hidden_valid, x_val, y_val, lr)
        loss, log_prob, self.hidden = weight_step(self.model, self.train_model, self.w_opt, self.weights,
                                                  self.hidden, x, y, lr, cfg, self.job.autocast)
        return StepOutput(loss, log_prob, y.reshape(-1), {"search/train_loss_step": loss,
                                                          "search/arch_loss_step": arch_loss})

    def end_epoch(self, epoch: int, train: dict) -> EpochEnd:
        cfg, model = self.job.cfg, self.model
        check_replicas(model.parameters())  # the same weights and alphas on every rank, so the same genotype
        val_loss = evaluate_loss(model, self.val_data, cfg.eval_batch_size, self.val_rows, cfg.bptt, self.job.autocast)
        genotype = model.genotype()
        if self.job.env.is_main:
            rgt.save_recurrent(genotype, _mkdir(self.job.run_dir / "genotypes") / f"epoch_{epoch:03d}.json")
            atomic_write(_mkdir(self.job.run_dir / "alphas") / f"epoch_{epoch:03d}.pt",
                         lambda f: torch.save({"alphas": model.alphas.detach().cpu()}, f))
        row = {"epoch": epoch + 1, "lr": cfg.learning_rate, "train_loss": train["loss"],
               "train_perplexity": perplexity(train["loss"]), "val_loss": val_loss,
               "val_perplexity": perplexity(val_loss)}
        return EpochEnd(
            metrics={**row, "genotype": json.dumps(rgt.recurrent_to_dict(genotype))},
            row={**row, "genotype": rgt.recurrent_to_dict(genotype)},
            scalars={f"search/{k}": v for k, v in row.items() if k != "epoch"},
            line=f"epoch {epoch + 1}/{cfg.epochs} | train loss {train['loss']:.4f} ppl {row['train_perplexity']:.2f} "
                 f"| val loss {val_loss:.4f} ppl {row['val_perplexity']:.2f} | {rgt.format_recurrent(genotype)}")


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def search(cfg: RecurrentSearchConfig, on_epoch: EpochHook | None = None) -> RecurrentSearchResult:
    """Recurrent search; `on_epoch(metrics, checkpoint)` is called on every rank after each epoch's checkpoint."""
    return run_job(cfg, _search, on_epoch)


def _search(job: Job, on_epoch: EpochHook | None) -> RecurrentSearchResult:
    task = RecurrentSearchTask(job, load_corpus(job.cfg, job.env))
    metrics = run_epochs(job, task, on_epoch)
    cfg, env, model = job.cfg, job.env, task.model
    genotype = model.genotype()
    digest = check_replicas(model.parameters())
    seconds = time.time() - job.started
    result = RecurrentSearchResult(genotype, perplexity(metrics["val_loss"]), perplexity(metrics["train_loss"]),
                                   cfg.epochs, str(job.run_dir), seconds)
    if env.is_main:
        rgt.save_recurrent(genotype, job.run_dir / "genotype.json")
        atomic_write(job.run_dir / "alphas.pt", lambda f: torch.save({"alphas": model.alphas.detach().cpu()}, f))
        drawings = _draw(job.run_dir, genotype, model.alphas)
        atomic_write(job.run_dir / "result.json", json.dumps({
            "genotype": rgt.recurrent_to_dict(genotype), "val_perplexity": result.val_perplexity,
            "train_perplexity": result.train_perplexity, "epochs": cfg.epochs, "world_size": env.world_size,
            "seconds": seconds, "replica_digest": digest}, indent=2) + "\n")
        log.info("recurrent search finished\n%s", summary_table([
            ("run folder", str(job.run_dir)),
            ("data", f"{cfg.dataset}, {task.ntoken} words, {cfg.batch_size} streams over {env.world_size} rank(s), "
                     f"bptt {cfg.bptt}"),
            ("method", ("2nd" if cfg.unrolled else "1st") + " order DARTS, recurrent cell"),
            ("epochs", str(cfg.epochs)),
            ("train / val perplexity", f"{result.train_perplexity:.2f} / {result.val_perplexity:.2f}"),
            ("time", f"{seconds:.0f} s"),
            ("genotype", str(job.run_dir / "genotype.json")),
            ("drawings", ", ".join(drawings) or "none"),
        ]))
        print(rgt.format_recurrent(genotype))
    return result


def _draw(run_dir: Path, genotype: rgt.RecurrentGenotype, alphas: torch.Tensor) -> list[str]:
    """The cell drawing and the alpha plot; a machine without Graphviz or matplotlib gets a warning, not a crash."""
    from ... import visualize
    paths = []
    for what, draw in (("cell drawing", lambda: visualize.draw_recurrent_cell(genotype, run_dir / "genotype.png")),
                       ("alpha plot", lambda: visualize.plot_recurrent_alphas(
                           alphas.detach().cpu(), run_dir / "alphas.png", "softmax(alphas) at the end of the search"))):
        try:
            paths.append(str(draw()))
        except visualize.DrawingError as e:
            log.warning("no %s: %s", what, e)
    return paths


# --- retrain ---------------------------------------------------------------------------------------------------

@dataclass
class RecurrentTrainResult:
    val_perplexity: float
    test_perplexity: float | None  # None with --no-evaluate-test (the sweep's selection retrains)
    params: int
    epochs: int
    run_dir: str
    seconds: float


class RecurrentRetrainTask:
    """RNNModel of a genotype with the original train.py's SGD, switched to averaged SGD (NT-ASGD) once the
    validation loss stops improving, as the driver's Task."""

    kind = "rnn_retrain"
    meter = LossMeter
    resume_keys = RETRAIN_RESUME_KEYS

    def __init__(self, job: Job, corpus: Corpus, genotype: rgt.RecurrentGenotype):
        cfg, env, self.job, self.genotype = job.cfg, job.env, job, genotype
        self.ntoken = len(corpus.dictionary)
        self.columns = cfg.batch_size // env.world_size
        self.train_data = rank_streams(corpus.train, cfg.batch_size, env)
        self.val_data, self.val_rows = eval_streams(corpus.valid, cfg.eval_batch_size, env)
        self.test_data, self.test_rows = eval_streams(corpus.test, cfg.test_batch_size, env)
        net = RNNModel(self.ntoken, cfg.emsize, cfg.nhid, cfg.nhid, cfg.dropout, cfg.dropouth, cfg.dropoutx,
                       cfg.dropouti, cfg.dropoute, genotype=genotype)
        seed_model_randomness(cfg.seed, env.rank)
        self.model, self.train_model = prepare_model(net, env.device, channels_last=False, compile=cfg.compile,
                                                     world_size=env.world_size)
        self.params = count_parameters(self.model)
        self.asgd = False
        self.optimizer = self._optimizer()
        self.hidden = self.model.init_hidden(self.columns)
        self.best = math.inf  # the best validation loss: the original's stored_loss
        self.val_losses = []  # the SGD phase's validation losses: the original's best_val_loss
        self.steps = _steps_per_epoch(self.train_data.size(0), cfg, True, cfg.max_seq_len_delta)
        self.epochs = cfg.epochs
        self.images_per_step = cfg.batch_size * cfg.bptt
        self.metrics = {"val_loss": math.nan}

    def _optimizer(self) -> torch.optim.Optimizer:
        cfg = self.job.cfg
        if self.asgd:
            return torch.optim.ASGD(self.model.parameters(), cfg.learning_rate, t0=0, lambd=0.0,
                                    weight_decay=cfg.weight_decay)
        return torch.optim.SGD(self.model.parameters(), cfg.learning_rate, weight_decay=cfg.weight_decay)

    def averaged(self) -> dict | None:
        """The averaged-SGD weights by state-dict key (what the ASGD phase evaluates and keeps), else None."""
        if not self.asgd:
            return None
        ax = {id(p): self.optimizer.state[p]["ax"] for p in self.model.parameters() if "ax" in self.optimizer.state[p]}
        names = {id(p): n for n, p in self.model.named_parameters()}
        return {names[i]: v.detach().clone() for i, v in ax.items()} or None

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "asgd": self.asgd,
                "averaged": self.averaged(), "hidden": _gathered_hidden(self.hidden), "best": self.best,
                "val_losses": list(self.val_losses), "genotype": rgt.recurrent_to_dict(self.genotype),
                "ntoken": self.ntoken}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.asgd = state["asgd"]
        self.optimizer = self._optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        self.hidden = [state["hidden"][self.job.env.rank][0].to(self.job.env.device)]
        self.best, self.val_losses = state["best"], list(state["val_losses"])

    def identity(self) -> dict:
        return {"genotype": rgt.recurrent_to_dict(self.genotype)}

    def begin_epoch(self, epoch: int, start_step: int):
        cfg = self.job.cfg
        if start_step == 0:
            self.hidden = self.model.init_hidden(self.columns)
        self.model.train()
        return train_batches(self.train_data, cfg.bptt, cfg.seed, epoch, start_step, cfg.max_seq_len_delta)

    def step(self, batch) -> StepOutput:
        cfg = self.job.cfg
        _, seq_len, (x, y) = batch
        loss, log_prob, self.hidden = weight_step(self.model, self.train_model, self.optimizer,
                                                  list(self.model.parameters()), self.hidden, x, y,
                                                  cfg.learning_rate * seq_len / cfg.bptt, cfg, self.job.autocast)
        return StepOutput(loss, log_prob, y.reshape(-1), {"train/loss_step": loss})

    def evaluate(self, source, columns, rows) -> float:
        """The loss of `source` at the weights the original evaluates: the averaged ones in the ASGD phase."""
        averaged = self.averaged()
        with swapped_weights(self.model, averaged) if averaged else contextlib.nullcontext():
            return evaluate_loss(self.model, source, columns, rows, self.job.cfg.bptt, self.job.autocast)

    def end_epoch(self, epoch: int, train: dict) -> EpochEnd:
        cfg = self.job.cfg
        phase = "asgd" if self.asgd else "sgd"
        val_loss = self.evaluate(self.val_data, cfg.eval_batch_size, self.val_rows)
        is_best = val_loss < self.best
        self.best = min(self.best, val_loss)
        if not self.asgd:
            nonmono = cfg.nonmono
            if len(self.val_losses) > nonmono and val_loss > min(self.val_losses[:-nonmono]):
                log.info("switching to averaged SGD (the validation loss is above the best of %d epochs ago)",
                         nonmono)
                self.asgd = True
                self.optimizer = self._optimizer()
            self.val_losses.append(val_loss)
        row = {"epoch": epoch + 1, "optimizer": phase, "train_loss": train["loss"],
               "train_perplexity": perplexity(train["loss"]), "val_loss": val_loss,
               "val_perplexity": perplexity(val_loss)}
        return EpochEnd(
            metrics={**row, "best_val_perplexity": perplexity(self.best), "params": self.params},
            row=row, scalars={f"train/{k}": v for k, v in row.items() if k not in ("epoch", "optimizer")},
            line=f"epoch {epoch + 1}/{cfg.epochs} {phase} | train loss {train['loss']:.4f} ppl "
                 f"{row['train_perplexity']:.2f} | val loss {val_loss:.4f} ppl {row['val_perplexity']:.2f}",
            is_best=is_best)


@contextlib.contextmanager
def swapped_weights(model: nn.Module, weights: dict):
    """The model's parameters replaced by `weights` (by name; a state dict's tied decoder.weight is the
    embedding's) inside the block, restored after."""
    params = dict(model.named_parameters())
    weights = {n: w for n, w in weights.items() if n in params}
    kept = {n: params[n].detach().clone() for n in weights}
    with torch.no_grad():
        for n, w in weights.items():
            params[n].copy_(w)
    try:
        yield model
    finally:
        with torch.no_grad():
            for n, w in kept.items():
                params[n].copy_(w)


def retrain(cfg: RecurrentRetrainConfig, on_epoch: EpochHook | None = None) -> RecurrentTrainResult:
    """Recurrent retrain; `on_epoch(metrics, checkpoint)` is called on every rank after each epoch's checkpoint."""
    genotype = rgt.load_recurrent(cfg.genotype)  # a bad genotype fails before any process group forms
    return run_job(cfg, _retrain, genotype, on_epoch)


def _retrain(job: Job, genotype: rgt.RecurrentGenotype, on_epoch: EpochHook | None) -> RecurrentTrainResult:
    cfg, env = job.cfg, job.env
    task = RecurrentRetrainTask(job, load_corpus(cfg, env), genotype)
    run_epochs(job, task, on_epoch)
    # the test split on the best weights, as the original reloads its best model
    best = ckpt_io.load(best_checkpoint_path(job.run_dir), "rnn_retrain")
    with swapped_weights(task.model, evaluated_weights(best)):
        val_loss = evaluate_loss(task.model, task.val_data, cfg.eval_batch_size, task.val_rows, cfg.bptt, job.autocast)
        test_loss = evaluate_loss(task.model, task.test_data, cfg.test_batch_size, task.test_rows, cfg.bptt,
                                  job.autocast) if cfg.evaluate_test else None
    seconds = time.time() - job.started
    result = RecurrentTrainResult(perplexity(val_loss), None if test_loss is None else perplexity(test_loss),
                                  task.params, cfg.epochs, str(job.run_dir), seconds)
    if env.is_main:
        _write_metrics(job.run_dir, {"val_perplexity": result.val_perplexity,
                                     "test_perplexity": result.test_perplexity, "val_loss": val_loss,
                                     "test_loss": test_loss, "params": task.params, "epochs": cfg.epochs,
                                     "best_epoch": best["epoch"], "genotype": rgt.recurrent_to_dict(genotype),
                                     "world_size": env.world_size, "seconds": seconds})
        log.info("recurrent retrain finished\n%s", summary_table([
            ("run folder", str(job.run_dir)),
            ("network", f"RNNModel {cfg.emsize} units, {task.ntoken} words"),
            ("parameters", f"{task.params:,} ({task.params / 1e6:.2f} M)"),
            ("epochs", f"{cfg.epochs} (best {best['epoch']})"),
            ("val / test perplexity", f"{result.val_perplexity:.2f} / " + (
                "not evaluated" if result.test_perplexity is None else f"{result.test_perplexity:.2f}")),
            ("time", f"{seconds:.0f} s"),
        ]))
    return result


def evaluated_weights(ckpt: dict) -> dict:
    """The weights a recurrent retrain checkpoint was evaluated at: the averaged ones after the ASGD switch."""
    return ckpt["averaged"] or ckpt["model"]


def _write_metrics(run_dir: Path, metrics: dict) -> None:
    atomic_write(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")


# --- evaluate --------------------------------------------------------------------------------------------------

def evaluate_checkpoint(cfg: RecurrentEvaluateConfig) -> dict:
    """Test perplexity and parameters of a recurrent retrain checkpoint or of the original's pickled model."""
    model_args, weights, cfg = read_model_file(cfg)
    return run_job(cfg, _evaluate, model_args, weights)


def read_model_file(cfg: RecurrentEvaluateConfig) -> tuple[dict, dict, RecurrentEvaluateConfig]:
    """(RNNModel arguments, weights, cfg with the corpus filled in) of our checkpoint or the original's file."""
    try:
        obj = ckpt_io.read(cfg.checkpoint)
    except ckpt_io.CheckpointCorrupted as e:  # a whole pickled model is no weights-only file
        from .original import read_torch_model
        model_args, weights = read_torch_model(cfg.checkpoint, reason=str(e))
        return model_args, weights, with_checkpoint_data(cfg, None)
    ckpt = ckpt_io.verify(obj, cfg.checkpoint, "rnn_retrain")
    model_args, weights = checkpoint_model(ckpt)
    return model_args, weights, with_checkpoint_data(cfg, ckpt["config"])


def _evaluate(job: Job, model_args: dict, weights: dict) -> dict:
    cfg, env = job.cfg, job.env
    corpus = load_corpus(cfg, env)
    if len(corpus.dictionary) != model_args["ntoken"]:
        raise ckpt_io.CheckpointError(f"checkpoint {cfg.checkpoint} has {model_args['ntoken']} words but the "
                                      f"{cfg.dataset} corpus {len(corpus.dictionary)}: pass its --dataset/--data-dir")
    net = RNNModel(**model_args)
    try:
        net.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:200]
        raise ckpt_io.CheckpointError(f"checkpoint {cfg.checkpoint} does not fit this network ({detail})") from None
    model = net.to(env.device)
    test_data, rows = eval_streams(corpus.test, cfg.batch_size, env)
    loss = evaluate_loss(model, test_data, cfg.batch_size, rows, cfg.bptt, job.autocast)
    metrics = {"test_loss": loss, "test_perplexity": perplexity(loss), "params": count_parameters(model),
               "checkpoint": str(cfg.checkpoint), "dataset": cfg.dataset}
    if env.is_main:
        _write_metrics(job.run_dir, metrics)
        print(f"test perplexity {metrics['test_perplexity']:.2f} (loss {loss:.4f}) on {cfg.dataset} | "
              f"{metrics['params']:,} parameters  -> {job.run_dir / 'metrics.json'}")
    return metrics


def checkpoint_model(ckpt: dict) -> tuple[dict, dict]:
    """(RNNModel arguments, evaluated weights) of a verified recurrent retrain checkpoint."""
    c = ckpt["config"]
    args = dict(ntoken=ckpt["ntoken"], ninp=c["emsize"], nhid=c["nhid"], nhidlast=c["nhid"], dropout=c["dropout"],
                dropouth=c["dropouth"], dropoutx=c["dropoutx"], dropouti=c["dropouti"], dropoute=c["dropoute"],
                genotype=rgt.recurrent_from_dict(ckpt["genotype"]))
    return args, evaluated_weights(ckpt)


def with_checkpoint_data(cfg: RecurrentEvaluateConfig, ckpt_config: dict | None) -> RecurrentEvaluateConfig:
    """The evaluation config with the checkpoint's corpus where none was given (ptb for the original's file)."""
    if cfg.dataset is not None:
        return cfg
    if ckpt_config is None:
        return dataclasses.replace(cfg, dataset="ptb")
    return dataclasses.replace(cfg, dataset=ckpt_config["dataset"], data_dir=cfg.data_dir or ckpt_config["data_dir"])
