"""Retraining a genotype from scratch: `run(cfg) -> TrainResult`; and `evaluate_checkpoint(cfg)`.

NetworkCIFAR (or NetworkImageNet for 224-pixel data) with auxiliary loss, drop path ramped linearly, label
smoothing, cutout, cosine or step schedule with linear scaling and warm-up, optional EMA of the weights.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from . import checkpoint as ckpt_io
from . import genotype as gt
from .config import DATASETS, ConfigError, EvaluateConfig, RetrainConfig
from .data import build_loaders
from .distributed import close_distributed
from .engine import (EpochHook, Job, Meter, checkpoint_path, evaluate, log, prepare_model, progress, restore_rng,
                     resume_state, start_job, summary_table, write_checkpoint)
from .model import build_network, count_parameters, paper_size

RESUME_KEYS = ("dataset", "genotype", "layers", "init_channels", "auxiliary", "batch_size", "epochs", "seed")


@dataclass
class TrainResult:
    top1: float
    top5: float
    best_top1: float
    params: int
    epochs: int
    run_dir: str
    seconds: float


def lr_factor(cfg: RetrainConfig, epoch: int) -> float:
    """The learning-rate multiplier of an epoch: linear warm-up, then cosine or step decay."""
    if epoch < cfg.warmup_epochs:
        return (epoch + 1) / cfg.warmup_epochs
    if cfg.lr_schedule == "step":
        return cfg.lr_decay ** epoch
    floor = cfg.learning_rate_min / cfg.learning_rate if cfg.learning_rate else 0.0
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * epoch / cfg.epochs))


def run(cfg: RetrainConfig, on_epoch: EpochHook | None = None) -> TrainResult:
    """Retrain; `on_epoch(metrics, checkpoint)` is called on every rank after each epoch's checkpoint is written."""
    genotype = gt.load(cfg.genotype)  # a bad genotype fails before any process group forms
    job = start_job(cfg)
    try:
        return _train(job, genotype, on_epoch)
    finally:
        job.close()
        close_distributed()


def _train(job: Job, genotype: gt.Genotype, on_epoch: EpochHook | None) -> TrainResult:
    cfg, env = job.cfg, job.env
    loaders = build_loaders(cfg, env, "retrain")
    net = build_network(genotype, loaders.num_classes, loaders.image_size, cfg.layers, cfg.init_channels, cfg.auxiliary)
    model, train_model = prepare_model(net, job)
    params = count_parameters(model)
    lr = cfg.learning_rate
    global_batch = cfg.batch_size * env.world_size
    if cfg.base_batch_size and global_batch != cfg.base_batch_size:
        lr *= global_batch / cfg.base_batch_size
        log.info("learning rate scaled linearly to %.4g for a global batch of %d", lr, global_batch)
    optimizer = torch.optim.SGD(model.parameters(), lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(cfg, e))
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True) \
        if cfg.ema_decay else None
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    steps = len(loaders.train) if not cfg.steps_per_epoch else min(len(loaders.train), cfg.steps_per_epoch)
    if steps == 0:
        raise ConfigError(f"batch-size: {cfg.batch_size} per rank leaves no full batch in the training set")

    start_epoch, start_step, meter_state, best_top1 = 0, 0, None, 0.0
    metrics = {"top1": math.nan, "top5": math.nan}  # of the last finished epoch
    state = resume_state(job, "retrain", RESUME_KEYS)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        job.scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        start_epoch, start_step, meter_state, best_top1 = state["epoch"], state["step"], state["meter"], state["best"]
        metrics = state.get("metrics") or metrics
        restore_rng(state, job)
        log.info("resumed from %s at epoch %d step %d", checkpoint_path(job.run_dir), start_epoch, start_step)

    def save(path, epoch, step, meter):
        write_checkpoint(job, path, {
            "kind": "retrain", "epoch": epoch, "step": step, "best": best_top1, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": job.scaler.state_dict(), "ema": None if ema is None else ema.state_dict(), "metrics": metrics,
            "genotype": gt.to_dict(genotype), "num_classes": loaders.num_classes,
            "image_size": loaders.image_size}, meter)

    for epoch in range(start_epoch, cfg.epochs):
        model.drop_path_prob = cfg.drop_path_prob * epoch / cfg.epochs
        epoch_lr = optimizer.param_groups[0]["lr"]
        loaders.train.set_epoch(epoch, start_step)
        meter = Meter(env.device, meter_state if start_step else None)
        bar = progress(steps, start_step, job, f"train {epoch + 1}/{cfg.epochs}")
        model.train()
        for step, (x, y) in enumerate(loaders.train, start_step):
            if step >= steps:
                break
            optimizer.zero_grad(set_to_none=True)
            with job.autocast():
                logits, logits_aux = train_model(x)
            logits = logits.float()
            loss = criterion(logits, y)
            if logits_aux is not None:
                loss = loss + cfg.auxiliary_weight * criterion(logits_aux.float(), y)
            job.scaler.scale(loss).backward()
            job.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            job.scaler.step(optimizer)
            job.scaler.update()
            if ema is not None:
                ema.update_parameters(model)
            meter.update(loss.detach() * y.numel(), logits, y)
            bar.update(1)
            global_step = epoch * steps + step + 1
            if global_step % cfg.log_interval == 0:
                job.scalar("train/loss_step", loss.item(), global_step)
            if cfg.checkpoint_steps and (step + 1) % cfg.checkpoint_steps == 0 and step + 1 < steps:
                save(checkpoint_path(job.run_dir), epoch, step + 1, meter)
        bar.close()
        start_step, meter_state = 0, None
        scheduler.step()

        train_stats = meter.global_averages()
        val_stats = evaluate(ema.module if ema is not None else model, loaders.val, job)
        is_best = val_stats["top1"] > best_top1
        best_top1 = max(best_top1, val_stats["top1"])
        for tag, value in [("lr", epoch_lr), ("train_loss", train_stats["loss"]), ("train_top1", train_stats["top1"]),
                           ("val_loss", val_stats["loss"]), ("val_top1", val_stats["top1"]),
                           ("val_top5", val_stats["top5"]), ("drop_path_prob", model.drop_path_prob)]:
            job.scalar(f"train/{tag}", value, epoch + 1)
        log.info("epoch %d/%d lr %.5f | train loss %.4f top1 %.2f%% | val loss %.4f top1 %.2f%% top5 %.2f%%",
                 epoch + 1, cfg.epochs, epoch_lr, train_stats["loss"], train_stats["top1"], val_stats["loss"],
                 val_stats["top1"], val_stats["top5"])
        metrics = {"epoch": epoch + 1, "train_top1": train_stats["top1"], "top1": val_stats["top1"],
                   "top5": val_stats["top5"], "best_top1": best_top1, "params": params}
        save(checkpoint_path(job.run_dir), epoch + 1, 0, None)
        if is_best:
            save(job.run_dir / "checkpoints" / "best.pt", epoch + 1, 0, None)
        if on_epoch is not None:
            on_epoch(metrics, checkpoint_path(job.run_dir))
    if start_epoch == cfg.epochs and on_epoch is not None and "epoch" in metrics:
        on_epoch(metrics, checkpoint_path(job.run_dir))  # resumed when already done: report the result again

    seconds = time.time() - job.started
    result = TrainResult(metrics["top1"], metrics["top5"], best_top1, params, cfg.epochs, str(job.run_dir), seconds)
    if env.is_main:
        _write_metrics(job.run_dir, {"top1": result.top1, "top5": result.top5, "best_top1": best_top1,
                                     "params": params, "epochs": cfg.epochs, "genotype": gt.to_dict(genotype),
                                     "world_size": env.world_size, "seconds": seconds})
        log.info("retrain finished\n%s", summary_table([
            ("run folder", str(job.run_dir)),
            ("network", f"{type(model).__name__} C={cfg.init_channels} layers={cfg.layers}"),
            ("parameters", f"{params:,} ({params / 1e6:.2f} M)"),
            ("epochs", str(cfg.epochs)),
            ("final top-1 / top-5", f"{result.top1:.2f} % / {result.top5:.2f} %"),
            ("best top-1", f"{best_top1:.2f} %"),
            ("time", f"{seconds:.0f} s"),
        ]))
    return result


def _write_metrics(run_dir: Path, metrics: dict) -> None:
    tmp = run_dir / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    tmp.replace(run_dir / "metrics.json")


def evaluate_checkpoint(cfg: EvaluateConfig) -> dict:
    """Top-1/top-5 and parameters of a dist-darts checkpoint, or of an original DARTS state dict with --genotype."""
    arch, weights, cfg = _read_weights(cfg)
    job = start_job(cfg)
    try:
        loaders = build_loaders(cfg, job.env, "evaluate")
        net = build_network(arch["genotype"], loaders.num_classes, loaders.image_size, arch["layers"],
                            arch["init_channels"], arch["auxiliary"])
        try:
            net.load_state_dict(weights, strict=True)
        except RuntimeError as e:
            detail = " ".join(str(e).split())[:200]
            raise ckpt_io.CheckpointError(f"checkpoint {cfg.checkpoint} does not fit this network ({detail})") from None
        model, _ = prepare_model(net, job)
        stats = evaluate(model, loaders.val, job)
        metrics = {"top1": stats["top1"], "top5": stats["top5"], "loss": stats["loss"], "images": stats["count"],
                   "params": count_parameters(model), "checkpoint": str(cfg.checkpoint), "dataset": cfg.dataset}
        if job.env.is_main:
            _write_metrics(job.run_dir, metrics)
            print(f"top-1 {metrics['top1']:.2f} %  top-5 {metrics['top5']:.2f} %  on {metrics['images']} images  "
                  f"| {metrics['params']:,} parameters  -> {job.run_dir / 'metrics.json'}")
        return metrics
    finally:
        job.close()
        close_distributed()


def _read_weights(cfg: EvaluateConfig):
    """(architecture, state dict, cfg) from our checkpoint, or from a foreign state dict described by --genotype."""
    image_size = DATASETS[cfg.dataset].image_size if cfg.dataset else 32
    paper_C, paper_layers = paper_size(image_size)
    C, layers = cfg.init_channels or paper_C, cfg.layers or paper_layers
    weights, arch = ckpt_io.load_weights(cfg.checkpoint, layers)
    if arch is not None:
        c = arch["config"]
        if cfg.dataset is None:
            cfg = dataclasses.replace(cfg, dataset=c["dataset"], data_dir=cfg.data_dir or c["data_dir"])
        return arch, weights, cfg
    if not cfg.genotype:
        raise ckpt_io.CheckpointError(f"checkpoint {cfg.checkpoint} was not written by dist-darts: for a state dict "
                                      "of the original DARTS code or NNI pass --genotype (and --dataset)")
    if cfg.dataset is None:
        raise ConfigError("dataset: a plain state dict does not say its data set; pass --dataset")
    arch = {"genotype": gt.load(cfg.genotype), "layers": layers, "init_channels": C,
            "auxiliary": any(k.startswith("auxiliary_head.") for k in weights)}
    return arch, weights, cfg
