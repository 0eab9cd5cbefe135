"""Which samples each rank reads at each step, and each batch's random augmentation parameters.

Everything here is a pure function of (seed, stream, epoch, step, rank, world_size): an epoch resumed at any
step gives the same batches bit for bit, whatever ran before in the process, and every backend (torch, DALI)
executes the same plan, so they see the same samples with the same crops, flips and cutout squares.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .datasets import DataError

IGNORE_LABEL = -100  # label of the padding in evaluation batches: F.cross_entropy's default ignore_index
PAD = 4  # CIFAR-style augmentation: random crop after zero padding by 4 pixels (in-memory splits: Dataset.pad)
RESIZE_RATIO = 256 / 224  # ImageNet evaluation: resize the shorter side to 256, centre crop 224
SMALL_IMAGE = 128  # image folders below this size get CIFAR's augmentation, not ImageNet's


class ShardPlan:
    """The batches of one rank over `indices` (positions in a split whose labels are `labels`).

    Training (`train=True`): each epoch permutes `indices` with a generator seeded by (seed, stream, epoch);
    global batch s is the slice [s * world_size * batch_size, ...) of it, and rank r takes part r, so ranks are
    disjoint and cover everything but the last partial global batch, which is dropped (equal steps on all ranks).
    Evaluation: the same layout without shuffling, and the last global batch padded with IGNORE_LABEL samples,
    so that every sample is seen exactly once over all ranks and every batch has batch_size rows.
    """

    def __init__(self, indices, labels, *, batch_size, rank, world_size, seed, stream, train, cutout=0,
                 what="data"):
        self.indices = np.asarray(indices, np.int64)
        self.labels = labels
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.seed, self.stream, self.train, self.cutout = seed, stream, train, cutout
        global_batch = batch_size * world_size
        if train:
            self.steps = len(self.indices) // global_batch
            if self.steps == 0:
                raise DataError(f"{what}: {len(self.indices)} samples are fewer than one global batch "
                                f"({world_size} ranks x batch size {batch_size})")
        else:
            self.steps = math.ceil(len(self.indices) / global_batch)
        self._order = (None, None)  # (epoch, permuted indices): the last epoch's permutation

    def batch(self, epoch: int, step: int):
        """(indices, labels, rng) of this rank's batch `step` of `epoch`; rng draws its augmentation."""
        first = (step * self.world_size + self.rank) * self.batch_size
        positions = np.arange(first, first + self.batch_size)
        if self.train:
            if self._order[0] != epoch:
                perm = np.random.default_rng([self.seed, self.stream, epoch]).permutation(len(self.indices))
                self._order = (epoch, self.indices[perm])
            idx = self._order[1][positions]
            labels = self.labels[idx]
        else:
            valid = positions < len(self.indices)
            idx = self.indices[np.where(valid, positions, 0)]
            labels = np.where(valid, self.labels[idx], IGNORE_LABEL)
        return idx, labels, np.random.default_rng([self.seed, self.stream, epoch, step, self.rank])

    def batches(self, epoch: int, start_step: int = 0):
        """batch(epoch, step) for step = start_step, ..., steps - 1."""
        for step in range(start_step, self.steps):
            yield self.batch(epoch, step)


class PlannedLoader:
    """Base of every loader: len() is the number of batches per epoch, the same on every rank;
    set_epoch(epoch, start_step) selects the epoch's shuffle and the step iteration starts at."""

    def __init__(self, plan: ShardPlan):
        self.plan = plan
        self.epoch, self.start_step = 0, 0

    def __len__(self):
        return self.plan.steps

    def set_epoch(self, epoch: int, start_step: int = 0):
        if not 0 <= start_step <= self.plan.steps:
            raise ValueError(f"start_step {start_step} is outside 0..{self.plan.steps}")
        self.epoch, self.start_step = epoch, start_step

    def planned_batches(self):
        """(indices, labels, rng) for each remaining step of the selected epoch (refers to the plan, not to self)."""
        return self.plan.batches(self.epoch, self.start_step)


def class_balanced_subsets(labels, fractions, seed: int, stream: int) -> list[np.ndarray]:
    """Disjoint subsets of the positions of `labels`, one per fraction, each holding round(fraction * n) of
    every class's n samples (at least one while the class has samples left), sorted. Class c's samples are
    permuted by a generator seeded by (seed, stream, c) and cut in order: the same subsets on every rank and
    in every resume, whatever the world size."""
    labels = np.asarray(labels)
    parts = [[] for _ in fractions]
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        members = members[np.random.default_rng([seed, stream, int(c)]).permutation(len(members))]
        start = 0
        for part, fraction in zip(parts, fractions):
            take = min(max(1, round(fraction * len(members))), len(members) - start)
            part.append(members[start:start + take])
            start += take
    return [np.sort(np.concatenate(part)) for part in parts]


def crop_flip_cutout(rng, n: int, size: int, cutout: int, pad: int = PAD):
    """DARTS' CIFAR augmentation for n images of size x size: (offsets, flips, cutout boxes or None).

    offsets (n, 2): top-left (y, x) of the crop in the image zero-padded by `pad`, 0..2*pad (a shift of -pad..+pad);
    flips (n,) bool; boxes (n, 4) = (y1, x1, y2, x2): a cutout x cutout square centred at a uniformly random
    pixel and clipped at the borders, exactly as the original utils.Cutout.
    """
    offsets = rng.integers(0, 2 * pad + 1, size=(n, 2))
    flips = rng.random(n) < 0.5
    if not cutout:
        return offsets, flips, None
    centres = rng.integers(0, size, size=(n, 2))
    boxes = np.concatenate([centres - cutout // 2, centres + cutout // 2], axis=1).clip(0, size)
    return offsets, flips, boxes


def small_images(size: int) -> bool:
    """Whether image-folder samples of this size train with CIFAR's augmentation (see datasets' docstring)."""
    return size < SMALL_IMAGE


def eval_resize(size: int) -> int:
    """The shorter side an evaluation image is resized to before its centre size x size crop."""
    return size if small_images(size) else round(size * RESIZE_RATIO)


def padded_crop_params(seed: int, size: int) -> tuple[int, int, bool]:
    """CIFAR's augmentation of one file sample: (top, left) of its crop in the zero-padded image, and the flip."""
    offsets, flips, _ = crop_flip_cutout(np.random.default_rng(seed), 1, size, 0)
    return int(offsets[0, 0]), int(offsets[0, 1]), bool(flips[0])


def sample_seeds(rng, n: int):
    """One seed per sample of a file batch: workers and DALI's host callback draw each sample from its own."""
    return rng.integers(2**63, size=n)


class ImageParams(NamedTuple):
    """One sample's ImageNet augmentation: crop window, flip and colour-jitter factors (in `order`)."""
    top: int
    left: int
    height: int
    width: int
    flip: bool
    brightness: float
    contrast: float
    saturation: float
    hue: float
    order: tuple  # order of (brightness, contrast, saturation, hue), as torchvision's ColorJitter shuffles it


def imagenet_params(seed: int, width: int, height: int) -> ImageParams:
    """DARTS' ImageNet augmentation for a width x height image: RandomResizedCrop (scale 0.08..1, ratio 3/4..4/3,
    10 tries, then a centre crop), a horizontal flip with p=0.5, ColorJitter(0.4, 0.4, 0.4, hue=0.2)."""
    rng = np.random.default_rng(seed)
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(0.08, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            break
    else:  # no try fitted: the largest centred window with a ratio in range
        w, h = width, height
        if width / height < 3 / 4:
            h = round(width / (3 / 4))
        elif width / height > 4 / 3:
            w = round(height * (4 / 3))
        top, left = (height - h) // 2, (width - w) // 2
    flip = bool(rng.random() < 0.5)
    b, c, s = rng.uniform(0.6, 1.4, size=3)
    hue = rng.uniform(-0.2, 0.2)
    return ImageParams(top, left, h, w, flip, float(b), float(c), float(s), float(hue),
                       tuple(int(i) for i in rng.permutation(4)))
