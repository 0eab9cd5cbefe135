"""Data loading for search, retraining and evaluation: `build_loaders(cfg, dist_env, purpose) -> Loaders`.

Every loader has `len(loader)` (batches per epoch, equal on every rank), `set_epoch(epoch, start_step=0)` and
yields `(images, labels)` on `dist_env.device`: images float32 NCHW normalised with the data set's mean/std,
labels int64. Batches are a pure function of (cfg.seed, rank, world_size, epoch, step), so a run resumed with
`set_epoch(e, start_step=k)` sees exactly the batches k, k+1, ... it would have seen.

Training loaders drop the last partial global batch. Evaluation loaders (`test`, and a retrain's hold-out `val`)
cover every sample exactly once over all ranks and pad the last global batch with samples labelled -100 (IGNORE_LABEL):
count correct predictions and losses only where `labels >= 0`, e.g. `F.cross_entropy(..., reduction="sum")`
(ignore_index=-100 is its default) divided by the all-reduced count of `labels >= 0`; a batch may be all padding.
"""

from __future__ import annotations

import importlib.util
from functools import partial
from typing import Any, NamedTuple

import numpy as np

from . import datasets
from .datasets import DataError
from .plan import IGNORE_LABEL, ShardPlan, class_balanced_subsets

__all__ = ["build_loaders", "Loaders", "DataError", "IGNORE_LABEL", "BACKENDS", "PURPOSES", "dali_available",
           "resolve_backend"]

BACKENDS = ("auto", "torch", "dali-cpu", "dali-gpu", "synthetic")
PURPOSES = ("search", "retrain", "evaluate")
# seed streams: the search split and each loader's shuffle draw from their own generators
SPLIT, SEARCH_TRAIN, SEARCH_VAL, RETRAIN_TRAIN, EVALUATE, HOLDOUT, RETRAIN_SUBSET = range(7)


class Loaders(NamedTuple):
    """What build_loaders returns; each loader as the module docstring says."""
    train: Any  # None for evaluate
    val: Any  # search: the alphas' half of the training set; retrain: the --val-portion hold-out (or None)
    num_classes: int
    image_size: int
    test: Any = None  # retrain/evaluate: the data set's test (val) split; never read by a search


def dali_available() -> bool:
    """Whether NVIDIA DALI is installed (without importing it)."""
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:  # no `nvidia` namespace package at all
        return False


def resolve_backend(name: str, device) -> str:
    """The backend `name` stands for on `device` ("auto": dali-gpu on CUDA with DALI installed, else torch)."""
    if name not in BACKENDS:
        raise DataError(f"unknown data backend {name!r}; choose from {', '.join(BACKENDS)}")
    if name == "auto":
        return "dali-gpu" if device.type == "cuda" and dali_available() else "torch"
    if name.startswith("dali") and not dali_available():
        raise DataError(f"data backend {name} needs NVIDIA DALI, which is not installed: "
                        "pip install 'dist-darts[dali]'")
    if name == "dali-gpu" and device.type != "cuda":
        raise DataError(f"data backend dali-gpu needs a CUDA device, and this rank runs on {device}; "
                        "use dali-cpu or torch")
    return name


def _gpu_index(dist_env) -> int:
    """The GPU DALI runs on: the one the batches go to (cuda:LOCAL_RANK under torchrun)."""
    index = dist_env.device.index
    return dist_env.local_rank if index is None else index


def build_loaders(cfg, dist_env, purpose: str) -> Loaders:
    """Loaders for `purpose` ("search", "retrain" or "evaluate") of this rank, as the module docstring says."""
    if purpose not in PURPOSES:
        raise DataError(f"unknown loader purpose {purpose!r}; choose from {', '.join(PURPOSES)}")
    backend = resolve_backend(cfg.data_backend, dist_env.device)
    batch_size, seed = cfg.batch_size, cfg.seed
    portion, cutout = getattr(cfg, "train_portion", 0.5), getattr(cfg, "cutout", 0)
    workers = getattr(cfg, "workers", 0)
    for ok, what in ((batch_size >= 1, f"batch_size {batch_size}"), (seed >= 0, f"seed {seed}"),
                     (cutout >= 0, f"cutout {cutout}"), (workers >= 0, f"workers {workers}"),
                     (0 < portion < 1, f"train_portion {portion}")):
        if not ok:
            raise DataError(f"bad data setting: {what}")

    synthetic = backend == "synthetic" or cfg.dataset == "synthetic"
    if synthetic:
        data = datasets.synthetic(cfg.dataset, getattr(cfg, "image_size", 0))
    else:
        data = datasets.load(cfg.dataset, cfg.data_dir, getattr(cfg, "download", False), getattr(cfg, "image_size", 0))

    if synthetic or backend == "torch":
        from .torch import make_loaders
        make = partial(make_loaders, dataset=data, device=dist_env.device, workers=workers)
    else:
        from .dali import make_loaders
        make = partial(make_loaders, dataset=data, device=dist_env.device, workers=workers,
                       gpu=backend == "dali-gpu", device_id=_gpu_index(dist_env))

    def plan(indices, split, stream, train, what, cutout=0):
        return ShardPlan(indices, split.labels, batch_size=batch_size, rank=dist_env.rank,
                         world_size=dist_env.world_size, seed=seed, stream=stream, train=train, cutout=cutout,
                         what=f"{data.name} {what}")

    train = val = None
    if purpose == "search":
        # both halves of the TRAINING set, both with training augmentation (no cutout), as DARTS' search
        order = np.random.default_rng([seed, SPLIT]).permutation(len(data.train.labels))
        cut = int(np.floor(portion * len(order)))
        weights_part, alphas_part = order[:cut], order[cut:]
        subsets = getattr(cfg, "train_subset", 0.0), getattr(cfg, "arch_subset", 0.0)
        if all(subsets):  # PC-DARTS' sampling replaces the portion split: class-balanced, disjoint
            weights_part, alphas_part = class_balanced_subsets(data.train.labels, subsets, seed, SPLIT)
        train, val = make(data.train, [plan(weights_part, data.train, SEARCH_TRAIN, True, "search training half"),
                                       plan(alphas_part, data.train, SEARCH_VAL, True, "search validation half")])
    test = None
    if purpose == "retrain":
        kept, held = holdout_split(data.train.labels, getattr(cfg, "val_portion", 0.0), seed)
        if getattr(cfg, "train_subset", 0.0):  # drawn from what the hold-out left, so the two stay disjoint
            (chosen,) = class_balanced_subsets(np.asarray(data.train.labels)[kept], [cfg.train_subset], seed,
                                               RETRAIN_SUBSET)
            kept = kept[chosen]
        plans = [plan(kept, data.train, RETRAIN_TRAIN, True, "training set", cutout)]
        if len(held):  # evaluated like the test split: no augmentation
            plans.append(plan(held, data.train, HOLDOUT, False, "validation hold-out"))
        train, *held_out = make(data.train, plans)
        val = held_out[0] if held_out else None
    if purpose != "search":
        everything = np.arange(len(data.test.labels))
        (test,) = make(data.test, [plan(everything, data.test, EVALUATE, False, "test set")])
    return Loaders(train, val, data.num_classes, data.image_size, test)


def holdout_split(labels, portion: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) positions of a training split: a class-balanced share `portion` of each class held out,
    drawn from (seed, HOLDOUT), so the split is the same on every rank and every restart."""
    labels = np.asarray(labels)
    if not 0.0 <= portion < 1.0:
        raise DataError(f"bad data setting: val_portion {portion}")
    if portion == 0.0:
        return np.arange(len(labels)), np.arange(0)
    (held,) = class_balanced_subsets(labels, [portion], seed, HOLDOUT)
    return np.setdiff1d(np.arange(len(labels)), held), held
