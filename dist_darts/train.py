"""Retraining a genotype from scratch: `run(cfg) -> TrainResult`; and `evaluate_checkpoint(cfg)`.

NetworkCIFAR (or NetworkImageNet for 224-pixel data) with auxiliary loss, drop path ramped linearly, label
smoothing, cutout, cosine or step schedule with the learning rate scaled to the global batch and warm-up, optional
EMA of the weights.

The protocol of the paper: a checkpoint is chosen (best.pt) only on a validation hold-out of the training images
(--val-portion); the test split is read once, after the last epoch, for the report, and never chooses anything.
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
from .spaces.cnn import genotype as gt
from .config import DATASETS, ConfigError, EvaluateConfig, RetrainConfig, retrain_rates
from .data import build_loaders
from .distributed import average_buffers_, seed_model_randomness
from .driver import EpochEnd, StepOutput, run_epochs
from .job import EpochHook, Job, autocast_factory, run_job
from .memory import affine_at, check_memory, saved_activation_bytes, step_memory
from .meters import Meter, evaluate
from .parallel import prepare_job_model, prepare_model, to_memory_format
from .logs import log, summary_table
from .hub import load_weights
from .spaces.cnn.model import build_network, count_parameters, paper_size
from .runfolder import atomic_write

RESUME_KEYS = ("dataset", "genotype", "layers", "init_channels", "auxiliary", "batch_size", "epochs", "seed")


@dataclass
class TrainResult:
    test_top1: float | None  # the test split, the last epoch's weights (None with --no-evaluate-test)
    test_top5: float | None
    val_top1: float | None  # the hold-out's, last epoch (None without --val-portion)
    best_val_top1: float | None  # the hold-out's best epoch: best.pt
    params: int
    epochs: int
    run_dir: str
    seconds: float


def lr_factor(cfg: RetrainConfig, epoch: int, warmup_epochs: int) -> float:
    """The learning-rate multiplier of an epoch: linear warm-up, then cosine or step decay."""
    if epoch < warmup_epochs:
        return (epoch + 1) / warmup_epochs
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
        out = train_model(to_memory_format(x, channels_last))
    logits, logits_aux = out if isinstance(out, tuple) else (out, None)  # a network without an auxiliary head
    logits = logits.float()
    loss = criterion(logits, y)
    if logits_aux is not None:
        loss = loss + auxiliary_weight * criterion(logits_aux.float(), y)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    if grad_clip:
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
    """An evaluation network of a genotype, its optimizer, schedule and (optional) EMA, as the driver's Task.

    This task trains a DARTS convolutional cell; another space's retrain subclasses it with its own network
    (build_network) and genotype type (to_dict)."""

    kind = "retrain"
    meter = Meter
    resume_keys = RESUME_KEYS
    to_dict = staticmethod(gt.to_dict)

    def __init__(self, job: Job, loaders, genotype: gt.Genotype):
        cfg, self.job, self.loaders, self.genotype = job.cfg, job, loaders, genotype
        net = self.build_network(cfg, loaders, genotype)
        seed_model_randomness(cfg.seed, job.env.rank)  # identical weights, per-rank drop-path masks from here on
        self.model, self.train_model = prepare_job_model(net, job)
        self.params = count_parameters(self.model)
        rates = job.resolved = retrain_rates(cfg, job.env.world_size)
        log.info("global batch %d (%d per rank x %d rank(s)) | lr %.6g (%s from %.6g at base batch %d) | warm-up %d "
                 "epoch(s)", rates["global_batch"], cfg.batch_size, job.env.world_size, rates["learning_rate"],
                 cfg.lr_scaling, cfg.learning_rate, cfg.base_batch_size, rates["warmup_epochs"])
        if cfg.val_portion or cfg.train_subset:
            log.info("training on %d images, %s%d held out for validation (class-balanced, seed %d)",
                     len(loaders.train.plan.indices),
                     f"a {cfg.train_subset:g} subset of those left after the hold-out; " if cfg.train_subset else "",
                     len(loaders.val.plan.indices) if loaders.val is not None else 0, cfg.seed)
        self.optimizer = torch.optim.SGD(self.model.parameters(), rates["learning_rate"], momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           lambda e: lr_factor(cfg, e, rates["warmup_epochs"]))
        self.ema = WeightEMA(self.model, cfg.ema_decay) if cfg.ema_decay else None
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.steps = min(len(loaders.train), cfg.steps_per_epoch or len(loaders.train))
        self.epochs = cfg.epochs
        self.images_per_step = rates["global_batch"]
        self.best_val_top1 = None  # no hold-out: no best epoch, the last one is the result
        self.metrics = {}

    def build_network(self, cfg, loaders, genotype) -> nn.Module:
        """NetworkCIFAR or NetworkImageNet of the genotype, after the memory check."""
        net = build_network(genotype, loaders.num_classes, loaders.image_size, cfg.layers, cfg.init_channels,
                            cfg.auxiliary)
        check_memory(self.job, retrain_memory(cfg, net, genotype, loaders.num_classes, loaders.image_size,
                                              autocast_factory(cfg.precision, self.job.env.device)[1],
                                              self.job.env.world_size), "retrain")
        return net

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.job.scaler.state_dict(),
                "ema": None if self.ema is None else self.ema.state_dict(), "best": self.best_val_top1,
                "genotype": self.to_dict(self.genotype), "num_classes": self.loaders.num_classes,
                "image_size": self.loaders.image_size}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.job.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.best_val_top1 = state["best"]  # the hold-out's best top-1 (None: no hold-out)

    def identity(self) -> dict:
        """The genotype, and the hold-out and training subset where used: a resume must read the same images."""
        cfg = self.job.cfg
        split = {k: getattr(cfg, k) for k in ("val_portion", "train_subset") if getattr(cfg, k)}
        return {"genotype": self.to_dict(self.genotype), **split}

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

    @property
    def evaluated_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def end_epoch(self, epoch: int, train: dict) -> EpochEnd:
        cfg = self.job.cfg
        self.scheduler.step()
        if self.ema is not None:
            average_buffers_(self.ema.module)
        row = {"epoch": epoch + 1, "lr": self.lr, "train_loss": train["loss"], "train_top1": train["top1"]}
        metrics = {"epoch": epoch + 1, "train_top1": train["top1"], "params": self.params}
        line = (f"epoch {epoch + 1}/{cfg.epochs} lr {self.lr:.5f} | train loss {train['loss']:.4f} top1 "
                f"{train['top1']:.2f}%")
        is_best = False
        if self.loaders.val is not None:  # the hold-out of the training images: the only split that chooses
            val = evaluate(self.evaluated_model, self.loaders.val, self.job.autocast, channels_last=cfg.channels_last)
            is_best = self.best_val_top1 is None or val["top1"] > self.best_val_top1
            self.best_val_top1 = val["top1"] if is_best else self.best_val_top1
            row.update(val_loss=val["loss"], val_top1=val["top1"], val_top5=val["top5"])
            metrics.update(val_top1=val["top1"], val_top5=val["top5"], best_val_top1=self.best_val_top1)
            line += f" | val loss {val['loss']:.4f} top1 {val['top1']:.2f}% top5 {val['top5']:.2f}%"
        row["drop_path_prob"] = float(self.model.drop_path_prob)
        return EpochEnd(metrics=metrics, row=row, scalars={f"train/{k}": v for k, v in row.items() if k != "epoch"},
                        line=line, is_best=is_best)


def run(cfg: RetrainConfig, on_epoch: EpochHook | None = None) -> TrainResult:
    """Retrain; `on_epoch(metrics, checkpoint)` is called on every rank after each epoch's checkpoint is written."""
    genotype = gt.load(cfg.genotype)  # a bad genotype fails before any process group forms
    return run_job(cfg, retrain_job, genotype, on_epoch, RetrainTask)


def retrain_job(job: Job, genotype, on_epoch: EpochHook | None, task_class: type[RetrainTask]) -> TrainResult:
    """A retrain of `genotype` by `task_class` (RetrainTask or a space's subclass), to its end."""
    task = task_class(job, build_loaders(job.cfg, job.env, "retrain"), genotype)
    metrics = run_epochs(job, task, on_epoch)
    cfg, params = job.cfg, task.params
    test = {"top1": None, "top5": None}
    if cfg.evaluate_test:  # once, after the last epoch: the report's number, never a choice
        test = evaluate(task.evaluated_model, task.loaders.test, job.autocast, channels_last=cfg.channels_last)
    seconds = time.time() - job.started
    result = TrainResult(test["top1"], test["top5"], metrics.get("val_top1"), task.best_val_top1, params, cfg.epochs,
                         str(job.run_dir), seconds)
    if job.env.is_main:
        # each number named by its split: test (after the last epoch), val (the hold-out; best = best.pt's epoch)
        _write_metrics(job.run_dir, {"test_top1": result.test_top1, "test_top5": result.test_top5,
                                     "val_top1": result.val_top1, "best_val_top1": result.best_val_top1,
                                     "params": params, "epochs": cfg.epochs, "genotype": task.to_dict(genotype),
                                     "world_size": job.env.world_size, "seconds": seconds})
        rows = [("run folder", str(job.run_dir)),
                ("network", f"{type(task.model).__name__} C={cfg.init_channels} layers={cfg.layers}"),
                ("parameters", f"{params:,} ({params / 1e6:.2f} M)"),
                ("epochs", str(cfg.epochs))]
        if result.test_top1 is not None:
            rows.append(("test top-1 / top-5", f"{result.test_top1:.2f} % / {result.test_top5:.2f} % (last epoch)"))
        if result.val_top1 is not None:
            rows.append(("val top-1", f"{result.val_top1:.2f} % (last), {result.best_val_top1:.2f} % (best.pt)"))
        rows.append(("time", f"{seconds:.0f} s"))
        log.info("retrain finished\n%s", summary_table(rows))
    return result


def _write_metrics(run_dir, metrics: dict) -> None:
    atomic_write(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")


def evaluate_checkpoint(cfg: EvaluateConfig) -> dict:
    """Top-1/top-5 and parameters of a dist-darts checkpoint, or of an original DARTS state dict with --genotype."""
    image_size = DATASETS[cfg.dataset].image_size if cfg.dataset else 32
    arch, weights, cfg = read_weights(cfg, gt.load, gt.from_dict, paper_size(image_size))
    return run_job(cfg, evaluate_job, arch, weights, _evaluation_network)


def _evaluation_network(arch: dict, loaders) -> nn.Module:
    return build_network(arch["genotype"], loaders.num_classes, loaders.image_size, arch["layers"],
                         arch["init_channels"], arch["auxiliary"])


def evaluate_job(job: Job, arch: dict, weights: dict, network) -> dict:
    """The test split's top-1/top-5 of `weights` in the network `network(arch, loaders)` builds."""
    cfg = job.cfg
    loaders = build_loaders(cfg, job.env, "evaluate")
    net = network(arch, loaders)
    try:
        net.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:200]
        raise ckpt_io.CheckpointError(f"checkpoint {cfg.checkpoint} does not fit this network ({detail})") from None
    job.commit()
    model = prepare_model(net, job.env.device, channels_last=cfg.channels_last, compile=cfg.compile)[0]
    stats = evaluate(model, loaders.test, job.autocast, channels_last=cfg.channels_last)
    metrics = {"split": "test", "top1": stats["top1"], "top5": stats["top5"], "loss": stats["loss"],
               "images": stats["count"], "params": count_parameters(model), "checkpoint": str(cfg.checkpoint),
               "dataset": cfg.dataset}
    if job.env.is_main:
        _write_metrics(job.run_dir, metrics)
        print(f"top-1 {metrics['top1']:.2f} %  top-5 {metrics['top5']:.2f} %  on {metrics['images']} images  "
              f"| {metrics['params']:,} parameters  -> {job.run_dir / 'metrics.json'}")
    return metrics


def read_weights(cfg: EvaluateConfig, load_genotype, from_dict, default_size: tuple[int, int]):
    """(architecture, state dict, cfg) from our checkpoint, or from a foreign state dict described by --genotype
    (read by `load_genotype`), --layers and --init-channels (default_size: (C, layers)); `from_dict` reads the
    space's genotype from a checkpoint."""
    C, layers = cfg.init_channels or default_size[0], cfg.layers or default_size[1]
    weights, arch = load_weights(cfg.checkpoint, layers, from_dict)
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
    arch = {"genotype": load_genotype(cfg.genotype), "layers": layers, "init_channels": C,
            "auxiliary": any(k.startswith("auxiliary_head.") for k in weights)}
    return arch, weights, cfg
