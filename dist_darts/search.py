"""The DARTS search job: `run(cfg) -> SearchResult`, what the CLI, torchrun, Ray and the tests all call.

Each step first updates the alphas on a validation batch (first or second order), then the weights on a
training batch, as in the original. Genotype and softmaxed alphas are saved every epoch.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from . import genotype as gt
from .architect import Architect
from .config import ConfigError, SearchConfig
from .data import build_loaders
from .distributed import all_reduce_mean_, close_distributed
from .engine import (EpochHook, Job, Meter, check_replicas, checkpoint_path, evaluate, log, prepare_model, progress, restore_rng,
                     resume_state, start_job, summary_table, write_checkpoint)
from .supernet import Network

# settings that define the search; a resume with any of them changed is refused
RESUME_KEYS = ("dataset", "layers", "init_channels", "batch_size", "train_portion", "unrolled", "partial_channels",
               "epochs", "seed")


@dataclass
class SearchResult:
    genotype: gt.Genotype
    val_top1: float
    train_top1: float
    epochs: int
    run_dir: str
    seconds: float


def alpha_statistics(model: Network) -> dict:
    """Mean entropy of each edge's op distribution and each op's mean weight, per cell type."""
    stats = {}
    for cell in ("normal", "reduce"):
        w = torch.softmax(getattr(model, f"alphas_{cell}").detach().float(), dim=-1)
        stats[f"alpha_entropy/{cell}"] = float(-(w * w.clamp_min(1e-12).log()).sum(-1).mean())
        for op, share in zip(gt.PRIMITIVES, w.mean(0).tolist()):
            stats[f"op_share_{cell}/{op}"] = share
    return stats


def _save_epoch_outputs(model: Network, genotype: gt.Genotype, run_dir: Path, epoch: int) -> None:
    (run_dir / "genotypes").mkdir(exist_ok=True)
    (run_dir / "alphas").mkdir(exist_ok=True)
    gt.save(genotype, run_dir / "genotypes" / f"epoch_{epoch:03d}.json")
    alphas = {name: p.detach().cpu() for name, p in zip(model.arch_parameter_names(), model.arch_parameters())}
    torch.save(alphas, run_dir / "alphas" / f"epoch_{epoch:03d}.pt")


def _draw(run_dir: Path, genotype: gt.Genotype, model: Network) -> list[str]:
    """Cell drawings and the alpha plot; a machine without Graphviz or matplotlib gets a warning, not a crash."""
    try:
        from .visualize import DrawingError, draw_genotype, plot_alphas
    except ImportError as e:
        log.warning("no drawings: %s", e)
        return []
    paths = []
    try:
        paths += [str(p) for p in draw_genotype(genotype, run_dir / "genotype", "png")]
    except DrawingError as e:
        log.warning("no cell drawings: %s", e)
    try:
        paths.append(str(plot_alphas(model.alphas_normal, model.alphas_reduce, run_dir / "alphas.png",
                                     "softmax(alphas) at the end of the search")))
    except DrawingError as e:
        log.warning("no alpha plot: %s", e)
    return paths


def run(cfg: SearchConfig, on_epoch: EpochHook | None = None) -> SearchResult:
    """Search; `on_epoch(metrics, checkpoint)` is called on every rank after each epoch's checkpoint is written."""
    if cfg.precision == "fp16":
        raise ConfigError("precision: fp16 is for retraining; search with bf16 (GPU) or fp32")
    job = start_job(cfg)
    try:
        return _search(job, on_epoch)
    finally:
        job.close()
        close_distributed()


def _search(job: Job, on_epoch: EpochHook | None) -> SearchResult:
    cfg, env = job.cfg, job.env
    loaders = build_loaders(cfg, env, "search")
    model = Network(cfg.init_channels, loaders.num_classes, cfg.layers, partial_channels=cfg.partial_channels)
    model, train_model = prepare_model(model, job, exclude=tuple(model.arch_parameters()))
    criterion = nn.CrossEntropyLoss()
    w_opt = torch.optim.SGD(model.weights(), cfg.learning_rate, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    a_opt = torch.optim.Adam(model.arch_parameters(), cfg.arch_learning_rate, betas=(cfg.arch_beta1, cfg.arch_beta2),
                             weight_decay=cfg.arch_weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, cfg.epochs, eta_min=cfg.learning_rate_min)
    architect = Architect(model, criterion, a_opt, w_opt, cfg.momentum, cfg.weight_decay, unrolled=cfg.unrolled,
                          average=all_reduce_mean_, autocast=job.autocast)
    weights = model.weights()
    steps = min(len(loaders.train), len(loaders.val))
    if cfg.steps_per_epoch:
        steps = min(steps, cfg.steps_per_epoch)
    if steps == 0:
        raise ConfigError(f"batch-size: {cfg.batch_size} per rank leaves no full batch in the search split")

    start_epoch, start_step, meter_state = 0, 0, None
    metrics = {"train_top1": math.nan, "val_top1": math.nan}  # of the last finished epoch
    state = resume_state(job, "search", RESUME_KEYS)
    if state is not None:
        model.load_state_dict(state["model"])
        w_opt.load_state_dict(state["w_optimizer"])
        a_opt.load_state_dict(state["a_optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, start_step, meter_state = state["epoch"], state["step"], state["meter"]
        metrics = state.get("metrics") or metrics
        restore_rng(state, job)
        log.info("resumed from %s at epoch %d step %d", checkpoint_path(job.run_dir), start_epoch, start_step)

    def save(epoch, step, meter):
        write_checkpoint(job, checkpoint_path(job.run_dir), {
            "kind": "search", "epoch": epoch, "step": step, "model": model.state_dict(),
            "w_optimizer": w_opt.state_dict(), "a_optimizer": a_opt.state_dict(),
            "scheduler": scheduler.state_dict(), "metrics": metrics}, meter)

    # rows past the checkpoint belong to work that is about to be redone
    history = [r for r in _read_history(job.run_dir) if r["epoch"] <= start_epoch] if state is not None else []
    for epoch in range(start_epoch, cfg.epochs):
        lr = scheduler.get_last_lr()[0]
        loaders.train.set_epoch(epoch, start_step)
        loaders.val.set_epoch(epoch, start_step)
        meter = Meter(env.device, meter_state if start_step else None)
        bar = progress(steps, start_step, job, f"search {epoch + 1}/{cfg.epochs}")
        model.train()
        for step, ((x_train, y_train), (x_val, y_val)) in enumerate(zip(loaders.train, loaders.val), start_step):
            if step >= steps:
                break
            arch_loss = architect.step(x_train, y_train, x_val, y_val, lr)
            w_opt.zero_grad(set_to_none=True)
            with job.autocast():
                logits = train_model(x_train).float()
            loss = criterion(logits, y_train)
            loss.backward()
            nn.utils.clip_grad_norm_(weights, cfg.grad_clip)
            w_opt.step()
            meter.update(loss.detach() * y_train.numel(), logits, y_train)
            bar.update(1)
            global_step = epoch * steps + step + 1
            if global_step % cfg.log_interval == 0:
                job.scalar("search/train_loss_step", loss.item(), global_step)
                job.scalar("search/arch_loss_step", arch_loss.item(), global_step)
            if cfg.checkpoint_steps and (step + 1) % cfg.checkpoint_steps == 0 and step + 1 < steps:
                save(epoch, step + 1, meter)
        bar.close()
        start_step, meter_state = 0, None
        scheduler.step()  # after the epoch: the original's order shifts every epoch's rate under modern PyTorch

        train_stats = meter.global_averages()
        check_replicas(model.parameters())  # NNI users under DDP got a different cell per rank; never here
        val_stats = evaluate(model, loaders.val, job, max_steps=steps)
        genotype = model.genotype()  # identical on every rank: the alphas are
        if env.is_main:
            _save_epoch_outputs(model, genotype, job.run_dir, epoch)
            row = {"epoch": epoch + 1, "lr": lr, "train_loss": train_stats["loss"], "train_top1": train_stats["top1"],
                   "val_loss": val_stats["loss"], "val_top1": val_stats["top1"], "genotype": gt.to_dict(genotype)}
            history.append(row)
            _write_history(job.run_dir, history)
            for tag, value in [("lr", lr), ("train_loss", train_stats["loss"]), ("train_top1", train_stats["top1"]),
                               ("val_loss", val_stats["loss"]), ("val_top1", val_stats["top1"])]:
                job.scalar(f"search/{tag}", value, epoch + 1)
            for tag, value in alpha_statistics(model).items():
                job.scalar(tag, value, epoch + 1)
            log.info("epoch %d/%d lr %.5f | train loss %.4f top1 %.2f%% | val loss %.4f top1 %.2f%% | %s",
                     epoch + 1, cfg.epochs, lr, train_stats["loss"], train_stats["top1"], val_stats["loss"],
                     val_stats["top1"], gt.format_genotype(genotype))
        metrics = {"epoch": epoch + 1, "train_top1": train_stats["top1"], "val_top1": val_stats["top1"],
                   "val_loss": val_stats["loss"], "genotype": json.dumps(gt.to_dict(genotype))}
        save(epoch + 1, 0, None)
        if on_epoch is not None:
            on_epoch(metrics, checkpoint_path(job.run_dir))
    if start_epoch == cfg.epochs and on_epoch is not None and "epoch" in metrics:
        on_epoch(metrics, checkpoint_path(job.run_dir))  # resumed when already done: report the result again

    genotype = model.genotype()
    digest = check_replicas(model.parameters())
    seconds = time.time() - job.started
    result = SearchResult(genotype, metrics["val_top1"], metrics["train_top1"], cfg.epochs, str(job.run_dir), seconds)
    if env.is_main:
        gt.save(genotype, job.run_dir / "genotype.json")
        torch.save({n: p.detach().cpu() for n, p in zip(model.arch_parameter_names(), model.arch_parameters())},
                   job.run_dir / "alphas.pt")
        drawings = _draw(job.run_dir, genotype, model)
        (job.run_dir / "result.json").write_text(json.dumps({
            "genotype": gt.to_dict(genotype), "val_top1": result.val_top1, "train_top1": result.train_top1,
            "epochs": cfg.epochs, "world_size": env.world_size, "seconds": seconds,
            "replica_digest": digest}, indent=2) + "\n")
        log.info("search finished\n%s", summary_table([
            ("run folder", str(job.run_dir)),
            ("data", f"{cfg.dataset}, {steps} steps/epoch x {env.world_size} rank(s) x batch {cfg.batch_size}"),
            ("method", ("2nd" if cfg.unrolled else "1st") + " order DARTS"
                       + (f", PC-DARTS K={cfg.partial_channels}" if cfg.partial_channels > 1 else "")),
            ("epochs", str(cfg.epochs)),
            ("train top-1", f"{result.train_top1:.2f} %"),
            ("val top-1 (search split)", f"{result.val_top1:.2f} %"),
            ("time", f"{seconds:.0f} s"),
            ("genotype", str(job.run_dir / "genotype.json")),
            ("drawings", ", ".join(drawings) or "none"),
        ]))
        print(gt.format_genotype(genotype))
    return result


def _read_history(run_dir: Path) -> list:
    path = run_dir / "history.json"
    return json.loads(path.read_text()) if path.is_file() else []


def _write_history(run_dir: Path, history: list) -> None:
    tmp = run_dir / "history.json.tmp"
    tmp.write_text(json.dumps(history, indent=1) + "\n")
    tmp.replace(run_dir / "history.json")
