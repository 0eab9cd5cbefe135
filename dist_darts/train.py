"""Retraining a genotype from scratch: `run(cfg) -> TrainResult`; and `evaluate_checkpoint(cfg)`.

NetworkCIFAR (or NetworkImageNet for 224-pixel data) with auxiliary loss, drop path ramped linearly, label
smoothing, cutout, cosine or step schedule with linear scaling and warm-up, optional EMA of the weights.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from . import checkpoint as ckpt_io
from . import genotype as gt
from .config import DATASETS, ConfigError, EvaluateConfig, RetrainConfig
from .data import build_loaders
from .distributed import average_buffers_, seed_model_randomness
from .driver import EpochEnd, StepOutput, run_epochs
from .engine import EpochHook, Job, affine_at, autocast_factory, check_memory, evaluate, prepare_job_model, \
    prepare_model, run_job, saved_activation_bytes, step_memory, to_memory_format
from .logs import log, summary_table
from .hub import load_weights
from .model import build_network, count_parameters, paper_size
from .runfolder import atomic_write

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


def retrain_memory(cfg: RetrainConfig, net: nn.Module, genotype: gt.Genotype, num_classes: int, image_size: int,
                   precision: str, world_size: int) -> int:
    """Estimated peak bytes of one retrain step on one rank, from the activations of 4- and 8-channel copies of
    the network at the job's image size: activations are affine in the channels."""

    def activations(channels):
        return saved_activation_bytes(
            lambda: build_network(genotype, num_classes, image_size, cfg.layers, channels, cfg.auxiliary),
            image_size, precision in ("bf16", "fp16"))

    # weights, gradients, momentum; the EMA's copy; DDP's buckets
    copies = 3 + bool(cfg.ema_decay) + (world_size > 1)
    return step_memory(sum(p.numel() for p in net.parameters()), copies,
                       affine_at(activations, cfg.init_channels, 4, 8), cfg.batch_size, image_size)


def train_step(model: nn.Module, train_model: nn.Module, optimizer: torch.optim.Optimizer, scaler, criterion, batch,
               grad_clip: float, auxiliary_weight: float, autocast, ema=None, channels_last: bool = True) -> StepOutput:
    """One retrain step: forward (with the auxiliary head's loss when the network has one), backward through the
    gradient scaler (a no-op unless fp16), gradient-norm clip, SGD, and the EMA of the weights if kept."""
    x, y = batch
    optimizer.zero_grad(set_to_none=True)
    with autocast():
        logits, logits_aux = train_model(to_memory_format(x, channels_last))
    logits = logits.float()
    loss = criterion(logits, y)
    if logits_aux is not None:
        loss = loss + auxiliary_weight * criterion(logits_aux.float(), y)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    if ema is not None:
        ema.update_parameters(model)
    return StepOutput(loss.detach(), logits, y, {"train/loss_step": loss.detach()})


class WeightEMA(nn.Module):
    """The exponential moving average of a network's parameters and floating-point buffers (integer buffers are
    copied), evaluated instead of the network. The same average as torch's AveragedModel with use_buffers and
    get_ema_multi_avg_fn, but its update counter lives on the host: AveragedModel keeps it on the device and reads
    it at every update, two host-device synchronisations per step."""

    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        ours = [*self.module.parameters(), *self.module.buffers()]
        theirs = [*model.parameters(), *model.buffers()]
        if self.updates == 0:
            torch._foreach_copy_(ours, theirs)
        else:
            floating = [i for i, t in enumerate(ours) if t.is_floating_point()]
            counters = [i for i, t in enumerate(ours) if not t.is_floating_point()]
            torch._foreach_lerp_([ours[i] for i in floating], [theirs[i] for i in floating], 1.0 - self.decay)
            torch._foreach_copy_([ours[i] for i in counters], [theirs[i] for i in counters])
        self.updates += 1

    def get_extra_state(self):
        return {"updates": self.updates}

    def set_extra_state(self, state) -> None:
        self.updates = state["updates"]


class RetrainTask:
    """An evaluation network of a genotype, its optimizer, schedule and (optional) EMA, as the driver's Task."""

    kind = "retrain"
    resume_keys = RESUME_KEYS

    def __init__(self, job: Job, loaders, genotype: gt.Genotype):
        cfg, self.job, self.loaders, self.genotype = job.cfg, job, loaders, genotype
        net = build_network(genotype, loaders.num_classes, loaders.image_size, cfg.layers, cfg.init_channels,
                            cfg.auxiliary)
        check_memory(job, retrain_memory(cfg, net, genotype, loaders.num_classes, loaders.image_size,
                                         autocast_factory(cfg.precision, job.env.device)[1], job.env.world_size),
                     "retrain")
        seed_model_randomness(cfg.seed, job.env.rank)  # identical weights, per-rank drop-path masks from here on
        self.model, self.train_model = prepare_job_model(net, job)
        self.params = count_parameters(self.model)
        lr = cfg.learning_rate
        global_batch = cfg.batch_size * job.env.world_size
        if cfg.base_batch_size and global_batch != cfg.base_batch_size:
            lr *= global_batch / cfg.base_batch_size
            log.info("learning rate scaled linearly to %.4g for a global batch of %d", lr, global_batch)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda e: lr_factor(cfg, e))
        self.ema = WeightEMA(self.model, cfg.ema_decay) if cfg.ema_decay else None
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.steps = min(len(loaders.train), cfg.steps_per_epoch or len(loaders.train))
        self.epochs = cfg.epochs
        self.images_per_step = global_batch
        self.best_top1 = 0.0
        self.metrics = {"top1": math.nan, "top5": math.nan}

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.job.scaler.state_dict(),
                "ema": None if self.ema is None else self.ema.state_dict(), "best": self.best_top1,
                "genotype": gt.to_dict(self.genotype), "num_classes": self.loaders.num_classes,
                "image_size": self.loaders.image_size}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.job.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.best_top1 = state["best"]

    def identity(self) -> dict:
        return {"genotype": gt.to_dict(self.genotype)}

    def begin_epoch(self, epoch: int, start_step: int):
        cfg = self.job.cfg
        self.model.drop_path_prob = cfg.drop_path_prob * epoch / cfg.epochs
        self.lr = self.optimizer.param_groups[0]["lr"]
        self.loaders.train.set_epoch(epoch, start_step)
        self.model.train()
        return self.loaders.train

    def step(self, batch) -> StepOutput:
        cfg = self.job.cfg
        return train_step(self.model, self.train_model, self.optimizer, self.job.scaler, self.criterion, batch,
                          cfg.grad_clip, cfg.auxiliary_weight, self.job.autocast, self.ema, cfg.channels_last)

    def end_epoch(self, epoch: int, train: dict) -> EpochEnd:
        cfg = self.job.cfg
        self.scheduler.step()
        if self.ema is not None:
            average_buffers_(self.ema.module)
        val = evaluate(self.ema.module if self.ema is not None else self.model, self.loaders.val, self.job.autocast,
                       channels_last=cfg.channels_last)
        is_best = val["top1"] > self.best_top1
        self.best_top1 = max(self.best_top1, val["top1"])
        row = {"epoch": epoch + 1, "lr": self.lr, "train_loss": train["loss"], "train_top1": train["top1"],
               "val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"],
               "drop_path_prob": float(self.model.drop_path_prob)}
        return EpochEnd(
            metrics={"epoch": epoch + 1, "train_top1": train["top1"], "top1": val["top1"], "top5": val["top5"],
                     "best_top1": self.best_top1, "params": self.params},
            row=row, scalars={f"train/{k}": v for k, v in row.items() if k != "epoch"},
            line=f"epoch {epoch + 1}/{cfg.epochs} lr {self.lr:.5f} | train loss {train['loss']:.4f} top1 "
                 f"{train['top1']:.2f}% | val loss {val['loss']:.4f} top1 {val['top1']:.2f}% top5 {val['top5']:.2f}%",
            is_best=is_best)


def run(cfg: RetrainConfig, on_epoch: EpochHook | None = None) -> TrainResult:
    """Retrain; `on_epoch(metrics, checkpoint)` is called on every rank after each epoch's checkpoint is written."""
    genotype = gt.load(cfg.genotype)  # a bad genotype fails before any process group forms
    return run_job(cfg, _train, genotype, on_epoch)


def _train(job: Job, genotype: gt.Genotype, on_epoch: EpochHook | None) -> TrainResult:
    task = RetrainTask(job, build_loaders(job.cfg, job.env, "retrain"), genotype)
    metrics = run_epochs(job, task, on_epoch)
    cfg, best, params = job.cfg, task.best_top1, task.params
    seconds = time.time() - job.started
    result = TrainResult(metrics["top1"], metrics["top5"], best, params, cfg.epochs, str(job.run_dir), seconds)
    if job.env.is_main:
        _write_metrics(job.run_dir, {"top1": result.top1, "top5": result.top5, "best_top1": best, "params": params,
                                     "epochs": cfg.epochs, "genotype": gt.to_dict(genotype),
                                     "world_size": job.env.world_size, "seconds": seconds})
        log.info("retrain finished\n%s", summary_table([
            ("run folder", str(job.run_dir)),
            ("network", f"{type(task.model).__name__} C={cfg.init_channels} layers={cfg.layers}"),
            ("parameters", f"{params:,} ({params / 1e6:.2f} M)"),
            ("epochs", str(cfg.epochs)),
            ("final top-1 / top-5", f"{result.top1:.2f} % / {result.top5:.2f} %"),
            ("best top-1", f"{best:.2f} %"),
            ("time", f"{seconds:.0f} s"),
        ]))
    return result


def _write_metrics(run_dir, metrics: dict) -> None:
    atomic_write(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")


def evaluate_checkpoint(cfg: EvaluateConfig) -> dict:
    """Top-1/top-5 and parameters of a dist-darts checkpoint, or of an original DARTS state dict with --genotype."""
    arch, weights, cfg = _read_weights(cfg)
    return run_job(cfg, _evaluate, arch, weights)


def _evaluate(job: Job, arch: dict, weights: dict) -> dict:
    cfg = job.cfg
    loaders = build_loaders(cfg, job.env, "evaluate")
    net = build_network(arch["genotype"], loaders.num_classes, loaders.image_size, arch["layers"],
                        arch["init_channels"], arch["auxiliary"])
    try:
        net.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:200]
        raise ckpt_io.CheckpointError(f"checkpoint {cfg.checkpoint} does not fit this network ({detail})") from None
    job.commit()
    model = prepare_model(net, job.env.device, channels_last=cfg.channels_last, compile=cfg.compile)[0]
    stats = evaluate(model, loaders.val, job.autocast, channels_last=cfg.channels_last)
    metrics = {"top1": stats["top1"], "top5": stats["top5"], "loss": stats["loss"], "images": stats["count"],
               "params": count_parameters(model), "checkpoint": str(cfg.checkpoint), "dataset": cfg.dataset}
    if job.env.is_main:
        _write_metrics(job.run_dir, metrics)
        print(f"top-1 {metrics['top1']:.2f} %  top-5 {metrics['top5']:.2f} %  on {metrics['images']} images  "
              f"| {metrics['params']:,} parameters  -> {job.run_dir / 'metrics.json'}")
    return metrics


def _read_weights(cfg: EvaluateConfig):
    """(architecture, state dict, cfg) from our checkpoint, or from a foreign state dict described by --genotype."""
    image_size = DATASETS[cfg.dataset].image_size if cfg.dataset else 32
    paper_C, paper_layers = paper_size(image_size)
    C, layers = cfg.init_channels or paper_C, cfg.layers or paper_layers
    weights, arch = load_weights(cfg.checkpoint, layers)
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
