"""The DARTS search job: `run(cfg) -> SearchResult`, what the CLI, torchrun, Ray and the tests all call.

Each step first updates the alphas on a validation batch (first or second order), then the weights on a
training batch, as in the original. Genotype and softmaxed alphas are saved every epoch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from . import collapse
from .spaces.cnn import genotype as gt
from . import method_table
from .architect import Architect
from .config import ConfigError, SearchConfig, search_rates
from .data import build_loaders
from .distributed import all_reduce_mean_, seed_model_randomness
from .driver import EpochEnd, StepOutput, run_epochs
from .job import EpochHook, Job, autocast_factory, run_job
from .memory import affine_at, check_memory, saved_activation_bytes, step_memory
from .meters import Meter, evaluate
from .parallel import check_replicas, prepare_job_model, to_memory_format
from .logs import log, summary_table
from .methods import ALPHA_STEP, WEIGHT_STEP
from .noise_scale import NoiseScaleMonitor, suggestion
from .optimizers import weight_optimizer
from .spaces.cnn.projection import Projection, decision_count
from .runfolder import atomic_write
from .spaces.cnn.supernet import Network, choose_stem, fits

# settings that define the search; a resume with any of them changed is refused
RESUME_KEYS = ("dataset", "layers", "init_channels", "batch_size", "train_portion", "unrolled", "partial_channels",
               "method", "epochs", "seed", "accumulate", "derive", "pt_tune_epochs", "stem", "train_subset",
               "arch_subset")
@dataclass
class SearchResult:
    genotype: gt.Genotype
    val_top1: float
    train_top1: float
    epochs: int
    run_dir: str
    seconds: float


def alpha_statistics(model: nn.Module, op_alphas: dict, primitives) -> dict:
    """Mean entropy of each edge's op distribution and each op's mean weight, per alpha matrix (cell type) (the
    method's deterministic weights, normalised per edge: FairDARTS's sigmoids do not sum to 1)."""
    stats = {}
    for cell, alphas in op_alphas.items():
        w = model.method.weights(alphas.detach().float())
        w = w / w.sum(-1, keepdim=True)
        stats[f"alpha_entropy/{cell}"] = float(-(w * w.clamp_min(1e-12).log()).sum(-1).mean())
        for op, share in zip(primitives, w.mean(0).tolist()):
            stats[f"op_share_{cell}/{op}"] = share
    return stats


def alphas_of(model: nn.Module) -> dict:
    return {name: p.detach().cpu() for name, p in zip(model.arch_parameter_names(), model.arch_parameters())}


def drawn(what: str, draw) -> list[str]:
    """The files `draw()` writes; a machine without Graphviz or matplotlib gets a warning naming `what`, not a
    crash."""
    from .visualize import DrawingError
    try:
        return [str(p) for p in draw()]
    except DrawingError as e:
        log.warning("no %s: %s", what, e)
        return []


def search_memory(cfg: SearchConfig, model: Network, num_classes: int, image_size: int, precision: str,
                  world_size: int) -> int:
    """Estimated peak bytes of one search step on one rank at cfg.batch_size (search_memory_at)."""
    return search_memory_at(cfg, model, num_classes, image_size, precision, world_size)(cfg.batch_size)


def search_memory_at(cfg: SearchConfig, model: Network, num_classes: int, image_size: int, precision: str,
                     world_size: int):
    """The estimated peak bytes of one search step on one rank as a function of the batch per rank, from the
    activations of two narrow copies of the supernet (4 and 8 channels, multiples of K with PC-DARTS) on images
    halved towards 32 px while every reduction still halves an even map: activations are affine in the channels
    and grow with the area (the supernet is fully convolutional)."""
    K, stem = cfg.partial_channels, model.stem_kind
    narrow = K * math.ceil(4 / K)
    probe_size = image_size
    while probe_size > 32 and probe_size % 2 == 0 and fits(probe_size // 2, stem):
        probe_size //= 2
    # the second-order alpha step runs in fp32 whatever the precision
    half = precision in ("bf16", "fp16") and not cfg.unrolled

    def activations(channels):
        return saved_activation_bytes(
            lambda: Network(channels, num_classes, cfg.layers, partial_channels=K, stem=stem), probe_size, half)

    per_image = affine_at(activations, cfg.init_channels, narrow, 2 * narrow) * (image_size / probe_size) ** 2
    # weights, gradients, momentum; the virtual step's gradients, unrolled and perturbed weights; DDP's buckets
    copies = 3 + 4 * cfg.unrolled + (world_size > 1)
    params = sum(p.numel() for p in model.parameters())
    return lambda batch_size: step_memory(params, copies, per_image, batch_size, image_size)


def supernet_stem(cfg: SearchConfig, image_size: int) -> str:
    """The stem the supernet gets for inputs of image_size (--stem auto chosen), refusing a side on which some
    reduction would halve an odd map, with the nearest sides that run."""
    stem = choose_stem(cfg.stem, image_size)
    if not fits(image_size, stem):
        # the nearest multiples of 8 that run (every multiple of 32 does, with either stem)
        below = next((s for s in range(image_size // 8 * 8, 0, -8) if fits(s, stem)), None)
        above = next(s for s in range(image_size // 8 * 8 + 8, 4 * image_size + 32, 8) if fits(s, stem))
        raise ConfigError(f"image-size: the search supernet with the {stem} stem cannot take {image_size} px images "
                          f"(a reduction would halve a map of odd side): use --image-size "
                          f"{f'{below} or {above}' if below else above}"
                          + (" (or --stem cifar)" if stem == "imagenet" else ""))
    return stem


def search_step(model: Network, train_model: nn.Module, architect: Architect, w_optimizer: torch.optim.Optimizer,
                criterion, batch, lr: float, grad_clip: float, autocast, channels_last: bool = True,
                accumulate: int = 1, update_alphas: bool = True,
                generator: torch.Generator | None = None, noise: NoiseScaleMonitor | None = None) -> StepOutput:
    """One DARTS step, as the original: the alphas' step on a validation batch (first or second order), then the
    weights' step on a training batch (forward, backward, gradient-norm clip, SGD). A stochastic method draws its
    noise from `generator`: one sample for the alpha step (all its passes) and one for the weight step.

    With accumulate N, both batches are split into N equal micro-batches whose gradients are averaged into the one
    step: the same step as the whole batch at once (the same samples too), up to BatchNorm normalising over each
    micro-batch. Without update_alphas (the alphas' warm-up) only the weights move. A `noise` monitor measures this
    step's gradient noise scale without changing the step."""
    (x_train, y_train), (x_val, y_val) = batch
    if len(y_train) % accumulate or len(y_val) % accumulate:
        raise ValueError(f"batches of {len(y_train)} and {len(y_val)} do not split into {accumulate} equal "
                         "micro-batches")
    x_train, x_val = to_memory_format(x_train, channels_last), to_memory_format(x_val, channels_last)
    scalars = {}
    if update_alphas:
        if noise is not None:
            noise.probe(model.arch_parameters(), x_val, y_val, ALPHA_STEP, generator)
        with model.sampling(ALPHA_STEP, generator):
            scalars["search/arch_loss_step"] = architect.step(x_train, y_train, x_val, y_val, lr, accumulate)
    if noise is not None:
        noise.probe(list(architect.weights), x_train, y_train, WEIGHT_STEP, generator)
    w_optimizer.zero_grad(set_to_none=True)
    losses, logits = [], []
    micro = list(zip(x_train.chunk(accumulate), y_train.chunk(accumulate)))
    with model.sampling(WEIGHT_STEP, generator):  # one block: every micro-batch sees the step's one sample
        for i, (x, y) in enumerate(micro):
            # DDP all-reduces the weights' gradients once, on the last micro-batch's backward
            syncs = i == len(micro) - 1 or not hasattr(train_model, "no_sync")
            with contextlib.nullcontext() if syncs else train_model.no_sync():
                with autocast():
                    out = train_model(x).float()
                loss = criterion(out, y)
                (loss / accumulate).backward()
            losses.append(loss.detach())
            logits.append(out.detach())
    total_norm = nn.utils.clip_grad_norm_(architect.weights, grad_clip)
    if noise is not None:
        noise.weights_reduced(total_norm)
    w_optimizer.step()
    loss = torch.stack(losses).mean()
    return StepOutput(loss, torch.cat(logits), y_train, {"search/train_loss_step": loss, **scalars})


def _subsets_record(weights_indices, alphas_indices) -> dict:
    """Sizes and SHA-256 of the two subsets' sample indices (config.yaml's resolved section records it)."""
    digest = hashlib.sha256()
    for indices in (weights_indices, alphas_indices):
        digest.update(np.asarray(indices, np.int64).tobytes())
        digest.update(b"|")
    return {"weights_images": len(weights_indices), "alphas_images": len(alphas_indices), "sha256": digest.hexdigest()}


def _cycled(loader, epoch: int, start: int):
    """The loader's batches from batch `start` of its epoch `epoch` on (counted on through its next epochs),
    without end: a pure function of (epoch, start), so a resume reads the same."""
    per = len(loader)
    epoch, start = epoch + start // per, start % per
    while True:
        loader.set_epoch(epoch, start)
        yield from loader
        epoch, start = epoch + 1, 0


def _join(pairs):
    """One ((x_train, y_train), (x_val, y_val)) batch of several consecutive loader pairs."""
    return tuple(tuple(torch.cat(parts) for parts in zip(*halves)) for halves in zip(*pairs))


class SearchTask:
    """The supernet, its two optimizers and the weights' schedule, as the driver's Task. The batch-size rules
    (scaled rates, warm-ups, accumulation) are fixed by the config and the epoch: a resume needs no state for them.

    This task searches the DARTS convolutional space; another space's search subclasses it and overrides what
    differs: the supernet (build_supernet), reading the cell off it (derive), the genotype's type (to_dict,
    from_dict, save_genotype, format_genotype), the collapse counts (collapse_counts), op_alphas, the drawings
    (draw) and what it reports (epoch_extras)."""

    kind = "search"
    meter = Meter
    resume_keys = RESUME_KEYS
    primitives = gt.PRIMITIVES
    to_dict, from_dict = staticmethod(gt.to_dict), staticmethod(gt.from_dict)
    save_genotype, format_genotype = staticmethod(gt.save), staticmethod(gt.format_genotype)

    def __init__(self, job: Job, loaders):
        cfg, self.job, self.loaders = job.cfg, job, loaders
        model = self.build_supernet(cfg, loaders)
        seed_model_randomness(cfg.seed, job.env.rank)  # identical weights, per-rank noise from here on
        self.model, self.train_model = prepare_job_model(model, job, exclude=tuple(model.arch_parameters()))
        self.criterion = nn.CrossEntropyLoss()
        self.rates = search_rates(cfg, job.env.world_size)
        self.search_epochs = self.rates["epochs"]  # --epochs, or more with --epoch-scaling
        sync_bn = next((type(m).__name__ for m in self.model.modules() if "Sync" in type(m).__name__), None)
        # the settings --method brings (method_table.py), as this run has them: its authors' unless given
        method_settings = {k: getattr(cfg, k) for k in method_table.TABLE[cfg.method].authors_settings}
        job.resolved = {**self.rates, **({"method_settings": method_settings} if method_settings else {})}
        if method_settings:
            log.info("--method %s settings (its authors' unless given): %s", cfg.method,
                     ", ".join(f"{k.replace('_', '-')} {v}" for k, v in method_settings.items()))
        self.subsets = None
        if cfg.train_subset:  # what a resume must read again: checked against the checkpoint's identity
            self.subsets = _subsets_record(loaders.train.plan.indices, loaders.val.plan.indices)
            job.resolved["subsets"] = self.subsets
            log.info("subsets: %d images for the weights, %d for the alphas (class-balanced, seed %d, sha256 %s)",
                     self.subsets["weights_images"], self.subsets["alphas_images"], cfg.seed,
                     self.subsets["sha256"][:16])
        log.info("global batch %d (%d per rank x %d rank(s) x accumulate %d) | weights lr %.6g (%s) | alphas lr %.6g "
                 "(%s) | base batch %d | weights optimizer %s | %d epochs (epoch scaling %s), %d of warm-up | "
                 "BatchNorm over %s", self.rates["global_batch"], cfg.batch_size, job.env.world_size, cfg.accumulate,
                 self.rates["learning_rate"], cfg.lr_scaling, self.rates["arch_learning_rate"], cfg.arch_lr_scaling,
                 cfg.base_batch_size, cfg.optimizer, self.search_epochs, cfg.epoch_scaling,
                 self.rates["warmup_epochs"],
                 f"the global batch ({sync_bn})" if sync_bn else f"each rank's batch of {cfg.batch_size} (per GPU)")
        self.w_opt = weight_optimizer(cfg.optimizer, self.model.weights(), self.rates["learning_rate"], cfg.momentum,
                                      cfg.weight_decay)
        self.a_opt = torch.optim.Adam(self.model.arch_parameters(), self.rates["arch_learning_rate"],
                                      betas=(cfg.arch_beta1, self.rates["arch_beta2"]), eps=self.rates["arch_eps"],
                                      weight_decay=cfg.arch_weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.w_opt, self.search_epochs,
                                                                    eta_min=self.rates["learning_rate_min"])
        self.architect = Architect(self.model, self.criterion, self.a_opt, self.w_opt, cfg.momentum,
                                   cfg.weight_decay, unrolled=cfg.unrolled, average=all_reduce_mean_,
                                   autocast=job.autocast)
        self.noise = None
        if cfg.noise_scale:
            self.noise = NoiseScaleMonitor(self.model, self.criterion, job.autocast, cfg.batch_size, cfg.accumulate,
                                           job.env.world_size, cfg.noise_scale_every, job.env.device)
            self.noise.attach(self.train_model, self.architect)
        self.method = self.model.method
        batches = len(loaders.train)  # an epoch is one pass over the weights' split, as in DARTS and PC-DARTS
        if batches < cfg.accumulate:
            raise ConfigError(f"accumulate: {cfg.accumulate} micro-batches per step, but an epoch has only {batches} "
                              "batches per rank")
        self.steps = min(batches // cfg.accumulate, cfg.steps_per_epoch or batches)
        # DARTS-PT's selection runs after the search's epochs: a decision every --pt-tune-epochs, search between
        self.projection = None
        self.epochs = self.search_epochs
        if cfg.derive == "darts-pt":  # the DARTS cell's decisions (SearchConfig refuses it elsewhere)
            self.projection = Projection(gt.STEPS, cfg.seed, cfg.max_skip)
            self.decisions = decision_count(gt.STEPS)
            self.epochs += cfg.pt_tune_epochs * (self.decisions - 1) + 1
        self.images_per_step = self.rates["global_batch"]
        self.metrics = {"train_top1": math.nan, "val_top1": math.nan}
        self.eigenvalues = []  # every --hessian-every estimate so far, for RobustDARTS's rule
        self.eigenvalue_epochs = []  # the (0-based) epoch of each estimate
        self.epoch_genotypes = {}  # every epoch's genotype so far, for an --early-stop rule that rolls back
        self.chosen_genotype = None  # what an --early-stop kept: the search's result
        self.eigenvalue_rule = collapse.LocalAverageRule(cfg.eigenvalue_window, cfg.eigenvalue_delta,
                                                         cfg.eigenvalue_factor, cfg.eigenvalue_start_epoch)

    def build_supernet(self, cfg, loaders) -> nn.Module:
        """The DARTS supernet for the data's image size (its stem), after the memory check."""
        self.stem = supernet_stem(cfg, loaders.image_size)
        model = Network(cfg.init_channels, loaders.num_classes, cfg.layers, partial_channels=cfg.partial_channels,
                        method=cfg.method, stem=self.stem)
        memory_at = search_memory_at(cfg, model, loaders.num_classes, loaders.image_size,
                                     autocast_factory(cfg.precision, self.job.env.device)[1], self.job.env.world_size)
        check_memory(self.job, memory_at(cfg.batch_size), "search", memory_at)
        log.info("supernet stem: %s (%d px images)", self.stem, loaders.image_size)
        return model

    def derive(self, max_skip: int | None = None):
        """The cell the supernet holds now (the original's rule; --max-skip caps the normal cell's skips)."""
        return self.model.genotype(max_skip)

    def op_alphas(self) -> dict:
        """The op-weight alphas by cell type: what the methods' penalties and the alpha statistics read."""
        return {"normal": self.model.alphas_normal, "reduce": self.model.alphas_reduce}

    @staticmethod
    def collapse_counts(genotype) -> tuple[dict, str, dict]:
        """The history.json columns of the collapse fingerprint, their text for the epoch line, and the counts the
        collapse rules read (collapse.signals)."""
        counts = collapse.cell_counts(genotype)
        edges = len(genotype.normal)
        text = (f"param-free ops normal {counts['param_free_normal']}/{edges} reduce "
                f"{counts['param_free_reduce']}/{edges}")
        return ({"param_free_normal": counts["param_free_normal"], "param_free_reduce": counts["param_free_reduce"]},
                text, counts)

    def epoch_extras(self, genotype) -> tuple[dict, str]:
        """What a space adds to each epoch's history row and line (the DARTS space: nothing)."""
        return {}, ""

    def draw(self, run_dir: Path, genotype) -> list[str]:
        """The cells, the alphas and the collapse plot of the search's end (what could be drawn)."""
        from .visualize import draw_genotype, plot_alphas, plot_collapse
        model = self.model
        return (drawn("cell drawings", lambda: draw_genotype(genotype, run_dir / "genotype", "png"))
                + drawn("alpha plot", lambda: [plot_alphas(model.alphas_normal, model.alphas_reduce,
                                                           run_dir / "alphas.png",
                                                           "softmax(alphas) at the end of the search", genotype)])
                + drawn("collapse plot", lambda: [plot_collapse(json.loads((run_dir / "history.json").read_text()),
                                                                run_dir / "collapse.png")]))

    def _as_dict(self, genotype) -> dict | None:
        return None if genotype is None else self.to_dict(genotype)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "w_optimizer": self.w_opt.state_dict(),
                "a_optimizer": self.a_opt.state_dict(), "scheduler": self.scheduler.state_dict(),
                "hessian_eigenvalues": list(self.eigenvalues), "hessian_epochs": list(self.eigenvalue_epochs),
                "epoch_genotypes": {e: self._as_dict(g) for e, g in self.epoch_genotypes.items()},
                "chosen_genotype": self._as_dict(self.chosen_genotype),
                "projection": None if self.projection is None else self.projection.state_dict(),
                "noise_scale": None if self.noise is None else self.noise.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.w_opt.load_state_dict(state["w_optimizer"])
        self.a_opt.load_state_dict(state["a_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.eigenvalues = list(state["hessian_eigenvalues"])
        self.eigenvalue_epochs = list(state["hessian_epochs"])
        self.epoch_genotypes = {int(e): self.from_dict(g) for e, g in state["epoch_genotypes"].items()}
        chosen = state.get("chosen_genotype")
        self.chosen_genotype = None if chosen is None else self.from_dict(chosen)
        if self.noise is not None and state.get("noise_scale") is not None:
            self.noise.load_state_dict(state["noise_scale"])
        if self.projection is not None:
            self.projection.load_state_dict(state["projection"])
            if self.projection.decisions_made:  # in the selection already: the network mixes as projected
                self.model.projection = self.projection

    def identity(self) -> dict:
        """The ImageNet stem, the subsets' digest and the resolved weights' warm-up, where used (a CIFAR-stem run over
        the portion split at the base batch has none): a resume must train as the run began."""
        warmup = self.rates["warmup_epochs"]
        return {**({"stem": self.stem} if self.stem != "cifar" else {}),
                **({"subsets": self.subsets["sha256"]} if self.subsets else {}),
                **({"warmup_epochs": warmup} if warmup else {})}

    def begin_epoch(self, epoch: int, start_step: int):
        cfg = self.job.cfg
        # the warm-up is a factor on the cosine schedule derived from the epoch, so a resume needs no extra state
        warmup = self.rates["warmup_epochs"]
        warm = (epoch + 1) / warmup if epoch < warmup else 1.0
        self.lr = self.scheduler.get_last_lr()[0] * warm
        if epoch >= self.search_epochs:
            self.lr = self._select(epoch - self.search_epochs, start_step)
        for group in self.w_opt.param_groups:
            group["lr"] = self.lr
        self.update_alphas = epoch >= cfg.arch_warmup_epochs
        model = self.model
        schedule_epoch = min(epoch, self.search_epochs)  # the methods' schedules end with the search
        model.set_epoch(schedule_epoch, self.search_epochs)
        self.architect.penalty = lambda: self.method.penalty(list(self.op_alphas().values()), schedule_epoch,
                                                             self.search_epochs)
        self.step_index = epoch * self.steps + start_step  # seeds the step's noise: a resume draws the same
        self.loaders.train.set_epoch(epoch, start_step * cfg.accumulate)
        # a shorter alphas' split (PC-DARTS' 2.5 % against 10 %) is read again within the epoch, as theirs
        rounds = math.ceil(self.steps * cfg.accumulate / len(self.loaders.val))
        val = _cycled(self.loaders.val, epoch * rounds, start_step * cfg.accumulate)
        self.model.train()
        pairs = zip(self.loaders.train, val)
        return (_join(group) for group in zip(*[pairs] * cfg.accumulate))  # accumulate consecutive pairs per step

    def _select(self, epoch: int, start_step: int) -> float:
        """DARTS-PT's selection epoch `epoch`: the decision due at its start (not again on a mid-epoch resume,
        whose checkpoint holds it), and the weights' learning rate. As the authors run it (ruocwang/darts-pt,
        sota/cnn/projection.py:134-136), the weights restart with fresh momentum at a tenth of the search's rate and
        stay there: their cosine scheduler is built but never stepped."""
        cfg, model = self.job.cfg, self.model
        model.projection = self.projection
        if start_step == 0 and epoch == 0:
            self.w_opt.state.clear()
        if start_step == 0 and epoch % cfg.pt_tune_epochs == 0:
            decision = epoch // cfg.pt_tune_epochs
            lines = self.projection.decide(decision, self._score)
            if self.job.env.is_main:
                for line in lines:
                    log.info("DARTS-PT decision %d/%d: %s", decision + 1, self.decisions, line)
        return self.rates["learning_rate"] / 10

    def _score(self) -> tuple[float, float]:
        """The supernet's validation top-1 and loss as it stands (its projection's trial applied), over the
        batches of an epoch, split across ranks and averaged, so every rank takes the same decision."""
        cfg = self.job.cfg
        val = evaluate(self.model, self.loaders.val, self.job.autocast, self.steps * cfg.accumulate,
                       cfg.channels_last, batch_statistics=True)
        return val["top1"], val["loss"]

    def step(self, batch) -> StepOutput:
        cfg = self.job.cfg
        generator = None
        if self.method.stochastic:  # the same seed on every rank: the same noise, the same alphas
            generator = torch.Generator(self.job.env.device).manual_seed(cfg.seed * 1_000_003 + self.step_index)
        noise = self.noise if self.noise is not None and self.noise.due(self.step_index) else None
        self.step_index += 1
        return search_step(self.model, self.train_model, self.architect, self.w_opt, self.criterion, batch, self.lr,
                           cfg.grad_clip, self.job.autocast, cfg.channels_last, cfg.accumulate, self.update_alphas,
                           generator, noise)

    def end_epoch(self, epoch: int, train: dict) -> EpochEnd:
        cfg, model = self.job.cfg, self.model
        for group in self.w_opt.param_groups:
            # the cosine schedule steps from its own rate, not the warmed-up one
            group["lr"] = self.scheduler.get_last_lr()[0]
        self.scheduler.step()  # after the epoch: the original's order shifts every epoch's rate under modern PyTorch
        check_replicas(model.parameters())  # NNI users under DDP got a different cell per rank; never here
        val = evaluate(model, self.loaders.val, self.job.autocast, self.steps * cfg.accumulate, cfg.channels_last)
        # identical on every rank: the alphas are. The monitor watches the cell of the original rule, which
        # --max-skip would hide
        original = self.derive()
        genotype = original if cfg.max_skip is None else self.derive(cfg.max_skip)
        if self.job.env.is_main:
            run_dir = self.job.run_dir
            self.save_genotype(genotype, run_dir / "genotypes" / f"epoch_{epoch:03d}.json")
            atomic_write(run_dir / "alphas" / f"epoch_{epoch:03d}.pt", lambda f: torch.save(alphas_of(model), f))
        self.epoch_genotypes[epoch] = genotype
        collapse_row, collapse_text, signals = self._collapse_signs(epoch, original)
        noise_row, noise_text = self.noise_scales()
        extra_row, extra_text = self.epoch_extras(genotype)
        stop = None
        if cfg.early_stop in signals:  # the rule says which epoch's genotype is the result
            stop, kept = signals[cfg.early_stop]
            self.chosen_genotype = self.epoch_genotypes[kept]
            stop += f"; the result is epoch {kept + 1}'s genotype"
        result_genotype = self.chosen_genotype or genotype
        arch_lr = self.rates["arch_learning_rate"] if self.update_alphas else 0.0
        scalars = {f"search/{k}": v for k, v in [("lr", self.lr), ("arch_lr", arch_lr),
                                                  ("global_batch", self.rates["global_batch"]),
                                                  ("train_loss", train["loss"]),
                                                  ("train_top1", train["top1"]), ("val_loss", val["loss"]),
                                                  ("val_top1", val["top1"])]}
        scalars.update({f"collapse/{k}": v for k, v in collapse_row.items() if v is not None})
        scalars.update({f"noise_scale/{k.removeprefix('noise_scale_')}": v for k, v in noise_row.items()
                        if v is not None})
        scalars.update({f"search/{k}": v for k, v in extra_row.items() if isinstance(v, (int, float))})
        return EpochEnd(
            metrics={"epoch": epoch + 1, "train_top1": train["top1"], "val_top1": val["top1"],
                     "val_loss": val["loss"], "genotype": json.dumps(self.to_dict(result_genotype)),
                     **{k: v for k, v in {**noise_row, **extra_row}.items() if v is not None}},
            row={"epoch": epoch + 1, "lr": self.lr, "train_loss": train["loss"], "train_top1": train["top1"],
                 "val_loss": val["loss"], "val_top1": val["top1"], **collapse_row, **noise_row, **extra_row,
                 "genotype": self.to_dict(genotype)},
            scalars={**scalars, **alpha_statistics(model, self.op_alphas(), self.primitives)},
            line=f"epoch {epoch + 1}/{self.epochs} lr {self.lr:.5f} | train loss {train['loss']:.4f} top1 "
                 f"{train['top1']:.2f}% | val loss {val['loss']:.4f} top1 {val['top1']:.2f}% | {collapse_text}"
                 f"{noise_text}{extra_text} | {self.format_genotype(genotype)}",
            stop=stop)

    def noise_scales(self) -> tuple[dict, str]:
        """The history.json keys of the noise-scale monitor (None where off or not measured yet) and a text for the
        epoch line (empty when off)."""
        if self.noise is None:
            return {"noise_scale_weights": None, "noise_scale_alphas": None}, ""
        values = self.noise.values()
        shown = ["-" if v is None else f"{v:.3g}" for v in values.values()]
        return values, f" | B_noise weights {shown[0]} alphas {shown[1]}"

    def _collapse_signs(self, epoch: int, genotype) -> tuple[dict, str, dict]:
        """This epoch's collapse monitor: the history.json keys, a short text for the log line, and the signals
        (collapse.signals), each also logged as a warning."""
        cfg = self.job.cfg
        row, text, counts = self.collapse_counts(genotype)
        eigenvalue = None
        if cfg.hessian_every and (epoch + 1) % cfg.hessian_every == 0:
            self.loaders.val.set_epoch(0)  # the same fixed validation batch every time
            x, y = next(iter(self.loaders.val))
            eigenvalue = collapse.hessian_eigenvalue(self.model, self.criterion, to_memory_format(x, cfg.channels_last),
                                                     y, average=all_reduce_mean_, seed=cfg.seed)
            self.eigenvalues.append(eigenvalue)
            self.eigenvalue_epochs.append(epoch)
        if eigenvalue is not None:
            text += f" | Hessian eigenvalue {eigenvalue:.4g}"
        # RobustDARTS never stops at the search's last epoch: it ends there anyway, with its own cell
        estimates = (list(zip(self.eigenvalue_epochs, self.eigenvalues))
                     if eigenvalue is not None and epoch < self.search_epochs - 1 else None)
        signals = collapse.signals(counts, epoch, estimates, self.eigenvalue_rule)
        if self.job.env.is_main:
            for warning, _ in signals.values():
                log.warning("collapse warning at epoch %d: %s", epoch + 1, warning)
        return {**row, "hessian_eigenvalue": eigenvalue}, text, signals


def run(cfg: SearchConfig, on_epoch: EpochHook | None = None) -> SearchResult:
    """Search; `on_epoch(metrics, checkpoint)` is called on every rank after each epoch's checkpoint is written."""
    return run_job(cfg, search_job, on_epoch, SearchTask)


def search_job(job: Job, on_epoch: EpochHook | None, task_class: type[SearchTask]) -> SearchResult:
    """A search of the space whose task is `task_class` (SearchTask or a space's subclass), to its end."""
    task = task_class(job, build_loaders(job.cfg, job.env, "search"))
    metrics = run_epochs(job, task, on_epoch)
    model, cfg, env = task.model, job.cfg, job.env
    genotype = task.chosen_genotype or task.derive(cfg.max_skip)
    epochs_run = metrics.get("epoch", task.epochs)
    digest = check_replicas(model.parameters())
    noise = task.noise_scales()[0]  # every rank: a collective under DDP
    seconds = time.time() - job.started
    result = SearchResult(genotype, metrics["val_top1"], metrics["train_top1"], epochs_run, str(job.run_dir), seconds)
    if env.is_main:
        task.save_genotype(genotype, job.run_dir / "genotype.json")
        atomic_write(job.run_dir / "alphas.pt", lambda f: torch.save(alphas_of(model), f))
        drawings = task.draw(job.run_dir, genotype)
        atomic_write(job.run_dir / "result.json", json.dumps({
            "genotype": task.to_dict(genotype), "val_top1": result.val_top1, "train_top1": result.train_top1,
            "epochs": epochs_run, "early_stopped": task.chosen_genotype is not None, "derive": cfg.derive,
            "world_size": env.world_size, "global_batch": task.rates["global_batch"], **noise,
            "seconds": seconds,
            "replica_digest": digest}, indent=2) + "\n")
        method = ("2nd" if cfg.unrolled else "1st") + f" order {cfg.method}" + (
            f", PC-DARTS K={cfg.partial_channels}" if cfg.partial_channels > 1 else "") + (
            f", at most {cfg.max_skip} skip_connect(s) in the normal cell" if cfg.max_skip is not None else "") + (
            f", DARTS-PT selection ({cfg.pt_tune_epochs} epoch(s) between decisions)" if task.projection else "")
        log.info("search finished\n%s", summary_table([
            ("run folder", str(job.run_dir)),
            ("data", f"{cfg.dataset}, {task.steps} steps/epoch x {env.world_size} rank(s) x batch {cfg.batch_size}"),
            ("method", method),
            ("epochs", str(epochs_run) if epochs_run == task.epochs else
             f"{epochs_run} of {task.search_epochs} (ended by --early-stop {cfg.early_stop})"),
            ("train top-1", f"{result.train_top1:.2f} %"),
            ("val top-1 (search split)", f"{result.val_top1:.2f} %"),
            ("time", f"{seconds:.0f} s"),
            ("noise scale", suggestion(noise, task.rates["global_batch"], cfg.batch_size * cfg.accumulate,
                                       env.world_size) if task.noise is not None else "off (--no-noise-scale)"),
            ("genotype", str(job.run_dir / "genotype.json")),
            ("drawings", ", ".join(drawings) or "none"),
        ]))
        print(task.format_genotype(genotype))
    return result
