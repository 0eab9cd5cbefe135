"""The torch data backend.

In-memory splits (CIFAR, SVHN, digits) live on the device as one uint8 tensor and are augmented a whole batch
at a time (one gather for crop + flip, one mask for cutout): the same augmentation as torchvision's per-image
RandomCrop(32, padding=4), RandomHorizontalFlip and DARTS' Cutout, without per-image Python work. Image folders
go through a DataLoader with torchvision's functional transforms and per-sample seeds; on CUDA the next batch is
copied to the GPU on a side stream. Synthetic splits repeat one random batch made once on the device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import functional as TF

from .datasets import Arrays, DataError, Files, one_line
from .plan import (PAD, PlannedLoader, crop_flip_cutout, eval_resize, imagenet_params, padded_crop_params,
                   sample_seeds, small_images)


def make_loaders(split, plans, dataset, device, workers):
    """One loader per plan over `split`; in-memory images go to the device once and are shared."""
    if isinstance(split, Arrays):
        images = torch.from_numpy(split.images).permute(0, 3, 1, 2).contiguous().to(device)  # NCHW uint8
        return [TensorLoader(plan, images, dataset, device) for plan in plans]
    if isinstance(split, Files):
        return [FileLoader(plan, split.paths, dataset, device, workers) for plan in plans]
    return [SyntheticLoader(plan, dataset, device) for plan in plans]


class Normalize:
    """uint8 NCHW -> float32 (x / 255 - mean) / std, computed as one multiply-add."""

    def __init__(self, mean, std, device):
        mean, std = (torch.tensor(v, dtype=torch.float32, device=device).view(1, -1, 1, 1) for v in (mean, std))
        self.scale, self.shift = 1 / (255 * std), -mean / std

    def __call__(self, x):
        return x.float().mul_(self.scale).add_(self.shift)


class TensorLoader(PlannedLoader):
    """Batches of an in-memory split, gathered and augmented on the device."""

    def __init__(self, plan, images, dataset, device):
        super().__init__(plan)
        self.images, self.device, self.pad = images, device, dataset.pad
        self.normalize = Normalize(dataset.mean, dataset.std, device)

    def __iter__(self):
        size = self.images.shape[-1]
        for idx, labels, rng in self.planned_batches():
            x = self.images[self._tensor(idx)]
            if not self.plan.train:
                yield self.normalize(x), self._tensor(labels)
                continue
            offsets, flips, boxes = crop_flip_cutout(rng, len(idx), size, self.plan.cutout, self.pad)
            x = self.normalize(crop_flip(x, self._tensor(offsets), self._tensor(flips), self.pad))
            if boxes is not None:
                x = cutout(x, self._tensor(boxes))
            yield x, self._tensor(labels)

    def _tensor(self, array):
        host = torch.from_numpy(array)
        if self.device.type != "cuda":
            return host
        return host.pin_memory().to(self.device, non_blocking=True)  # from pageable memory a copy syncs the host


def crop_flip(x, offsets, flips, pad):
    """Crop each image of x (N, C, H, W) at offsets (N, 2) of its copy zero-padded by `pad`, then mirror where
    flips."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad)).view(n, c, -1)  # zeros, as RandomCrop(padding=pad)
    rows = offsets[:, :1] + torch.arange(h, device=x.device)
    cols = offsets[:, 1:] + torch.arange(w, device=x.device)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    index = rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]
    return padded.gather(2, index.view(n, 1, h * w).expand(n, c, h * w)).view(n, c, h, w)


def cutout(x, boxes):
    """Zero (after normalisation, as DARTS) the box (y1, x1, y2, x2) of each image of x."""
    h, w = x.shape[-2:]
    ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    in_rows = (ys >= boxes[:, 0:1]) & (ys < boxes[:, 2:3])
    in_cols = (xs >= boxes[:, 1:2]) & (xs < boxes[:, 3:4])
    return x.masked_fill_((in_rows[:, :, None] & in_cols[:, None, :])[:, None], 0.0)


class ImageFiles(torch.utils.data.Dataset):
    """Reads one image per (file index, seed, label) item; training items get the seed's augmentation."""

    def __init__(self, paths, train, image_size):
        self.paths, self.train, self.size = paths, train, image_size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, item):
        index, seed, label = item
        path = self.paths[index]
        try:
            with Image.open(path) as f:
                img = f.convert("RGB")
        except OSError as exc:
            raise DataError(f"{path} is not a readable image ({one_line(exc)})") from None
        if self.train and small_images(self.size):
            img = TF.center_crop(TF.resize(img, self.size), self.size)  # PIL returns a copy at the same size
            top, left, flip = padded_crop_params(seed, self.size)
            img = TF.crop(img, top - PAD, left - PAD, self.size, self.size)  # PIL fills outside with zeros
            if flip:
                img = TF.hflip(img)
        elif self.train:
            p = imagenet_params(seed, *img.size)
            img = TF.resized_crop(img, p.top, p.left, p.height, p.width, [self.size, self.size])
            if p.flip:
                img = TF.hflip(img)
            jitter = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
            factors = (p.brightness, p.contrast, p.saturation, p.hue)
            for i in p.order:
                img = jitter[i](img, factors[i])
        else:
            img = TF.center_crop(TF.resize(img, eval_resize(self.size)), self.size)
        return TF.pil_to_tensor(img), label  # uint8: 4x less to copy than float; normalised on the device


class PlanBatches(PlannedLoader):
    """A DataLoader batch sampler: the plan's (file index, seed, label) items for each remaining step. It holds
    the epoch state, read at every iter(), so set_epoch also reaches persistent workers; the loader delegates to
    it rather than being referenced by it (a cycle would leave the DataLoader for the garbage collector to
    find, possibly inside a forked worker)."""

    def __iter__(self):
        for idx, labels, rng in self.planned_batches():
            yield list(zip(idx.tolist(), sample_seeds(rng, len(idx)).tolist(), labels.tolist()))


class FileLoader:
    """Batches of an image folder through a torch DataLoader with `workers` processes."""

    def __init__(self, plan, paths, dataset, device, workers):
        self.plan, self.device = plan, device
        self.sampler = PlanBatches(plan)
        self.normalize = Normalize(dataset.mean, dataset.std, device)
        self.loader = DataLoader(ImageFiles(paths, plan.train, dataset.image_size), batch_sampler=self.sampler,
                                 num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0)

    def __len__(self):
        return len(self.sampler)

    def set_epoch(self, epoch, start_step=0):
        self.sampler.set_epoch(epoch, start_step)

    def __iter__(self):
        try:
            if self.device.type == "cuda":
                yield from prefetch_to_cuda(iter(self.loader), self.device, self.normalize)
            else:
                for x, y in self.loader:
                    yield self.normalize(x), y
        except DataError as exc:  # from a worker, the message holds the worker's traceback: keep its last line
            last = str(exc).strip().splitlines()[-1]
            raise DataError(last.removeprefix(f"{DataError.__module__}.DataError: ")) from None


def prefetch_to_cuda(batches, device, normalize):
    """Copy and normalise batch k+1 on a side stream while the caller computes on batch k."""
    stream = torch.cuda.Stream(device)

    def upload(x, y):
        with torch.cuda.stream(stream):
            x, y = normalize(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(stream)
        return x, y, done

    def ready(x, y, done):
        current = torch.cuda.current_stream(device)
        current.wait_event(done)
        x.record_stream(current)  # memory made on the side stream must outlive its use on this one
        y.record_stream(current)
        return x, y

    pending = None
    for x, y in batches:
        uploaded = upload(x, y)
        if pending is not None:
            yield ready(*pending)
        pending = uploaded
    if pending is not None:
        yield ready(*pending)


class SyntheticLoader(PlannedLoader):
    """The same random batch (clearly not data) at every step, made once on the device: no per-step host work."""

    def __init__(self, plan, dataset, device):
        super().__init__(plan)
        g = torch.Generator().manual_seed(plan.seed + plan.rank)  # a different batch on each rank
        shape = (plan.batch_size, 3, dataset.image_size, dataset.image_size)
        self.images = torch.randn(shape, generator=g).to(device)
        self.labels = torch.randint(dataset.num_classes, (plan.batch_size,), generator=g).to(device)

    def __iter__(self):
        for _ in range(self.start_step, self.plan.steps):
            yield self.images, self.labels
