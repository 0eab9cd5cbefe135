"""The NVIDIA DALI data backend (dali-cpu, dali-gpu); the only module that imports nvidia.dali.

Every batch comes from the shared plan (plan.py) through `fn.external_source`: the host callback hands DALI this
rank's samples for the step (uint8 images, or encoded files) with their augmentation parameters drawn on the host,
and DALI does the pixel work: for in-memory splits a padded crop (`fn.slice`), flip and normalisation to CHW float
(`fn.crop_mirror_normalize`) and cutout (`fn.erase`); for image folders ROI decoding of the random-resized-crop
window (`fn.decoders.image_slice`, "mixed" = nvJPEG on the GPU), resize, colour twist and flip + normalisation.
Drawing the randomness on the host instead of in DALI's stateful random operators is what makes
`set_epoch(e, start_step=k)` exact, and makes DALI and torch agree sample for sample.

Batches are always full (the plan drops or pads), so the length is equal on every rank without DALI's
`last_batch_policy`; DALIGenericIterator is not used because its auto-reset prefetches the next epoch before
`set_epoch` can choose it.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from nvidia.dali import fn, types
from nvidia.dali.backend import TensorGPU
from nvidia.dali.pipeline import Pipeline
from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type
from PIL import Image

from .datasets import Arrays, DataError, one_line
from .plan import (PAD, PlannedLoader, crop_flip_cutout, eval_resize, imagenet_params, padded_crop_params,
                   sample_seeds, small_images)


def make_loaders(split, plans, dataset, device, workers, gpu, device_id):
    """One DALI loader per plan over `split` (in-memory Arrays or Files); DALI runs on GPU `device_id` if `gpu`."""
    return [DaliLoader(plan, split, dataset, device, workers, gpu, device_id) for plan in plans]


class DaliLoader(PlannedLoader):
    """One rank's batches of one plan through a DALI pipeline, built on first use and reset for every epoch."""

    def __init__(self, plan, split, dataset, device, workers, gpu, device_id):
        super().__init__(plan)
        self.split, self.dataset, self.device = split, dataset, device
        self.threads, self.gpu, self.device_id = max(1, workers), gpu, device_id
        self.in_memory = isinstance(split, Arrays)
        self._pipe = None
        self._feed = HostFeed()

    def __iter__(self):
        planned = self.planned_batches()
        host_batches = memory_batches if self.in_memory else file_batches
        self._feed.batches = host_batches(planned, self.split, self.plan, self.dataset)
        pipe, self._pipe = self._pipe or self._build(), None  # None while an epoch runs: an error drops it
        try:
            for images, labels in self._epoch(pipe):
                yield self._to_torch(images), self._to_torch(labels)
        except GeneratorExit:
            # left half way (a zip with a shorter loader, evaluate's max_steps): end the feed and drain the few
            # batches DALI prefetched, so the pipeline is reset and reused instead of rebuilt every epoch
            self._feed.batches = iter(())
            for _ in self._epoch(pipe):
                pass
            self._reuse(pipe)
            raise
        self._reuse(pipe)

    def _epoch(self, pipe):
        while True:
            try:
                images, labels = pipe.run()
            except StopIteration:
                return
            yield images, labels

    def _reuse(self, pipe):
        pipe.reset()
        self._pipe = pipe

    def _build(self):
        pipe = Pipeline(batch_size=self.plan.batch_size, num_threads=self.threads,
                        device_id=self.device_id if self.gpu else None, prefetch_queue_depth=2)
        with pipe:
            pipe.set_outputs(*(self._memory_graph() if self.in_memory else self._file_graph()))
        pipe.build()
        return pipe

    def _to_torch(self, tensor_list):
        tensor = tensor_list.as_tensor()
        on_gpu = isinstance(tensor, TensorGPU)
        # a host output (the labels of a GPU pipeline) goes to the GPU from pinned memory, without a host sync
        pinned = not on_gpu and self.device.type == "cuda"
        out = torch.empty(tensor.shape(), dtype=to_torch_type[tensor.dtype], device=self.device if on_gpu else "cpu",
                          pin_memory=pinned)
        feed_ndarray(tensor, out, cuda_stream=torch.cuda.current_stream(self.device) if on_gpu else None)
        return out.to(self.device, non_blocking=pinned)

    def _normalize(self, images, **crop_args):
        mean, std = (np.float32(255) * np.asarray(v, np.float32) for v in (self.dataset.mean, self.dataset.std))
        return fn.crop_mirror_normalize(images, mean=mean.tolist(), std=std.tolist(), dtype=types.FLOAT,
                                        output_layout="CHW", **crop_args)

    # --- in-memory splits (CIFAR, SVHN, digits) --------------------------------------------------------------

    def _memory_graph(self):
        train, cutout = self.plan.train, self.plan.cutout
        outputs = 2 + (2 if train else 0) + (2 if train and cutout else 0)
        images, labels, *params = fn.external_source(source=self._feed, num_outputs=outputs, batch=True,
                                                     layout=["HWC"] + [""] * (outputs - 1))
        if self.gpu:
            images = images.gpu()
        if not train:
            return self._normalize(images), labels
        start, mirror = params[:2]
        size = self.dataset.image_size
        images = fn.slice(images, start=start, shape=[size, size], axis_names="HW",
                          out_of_bounds_policy="pad", fill_values=0)  # zero padding, as RandomCrop(padding=pad)
        images = self._normalize(images, mirror=mirror)
        if cutout:
            images = fn.erase(images, anchor=params[2], shape=params[3], axis_names="HW", fill_value=0)
        return images, labels

    # --- image folders (ImageNet, folder) ----------------------------------------------------------------------

    def _file_graph(self):
        decoder = "mixed" if self.gpu else "cpu"
        size = self.dataset.image_size
        if not self.plan.train:
            encoded, labels = fn.external_source(source=self._feed, num_outputs=2, batch=True)
            images = fn.decoders.image(encoded, device=decoder, output_type=types.RGB, adjust_orientation=False)
            images = fn.resize(images, resize_shorter=eval_resize(size))
            return self._normalize(images, crop=(size, size)), labels
        if small_images(size):
            encoded, labels, start, mirror = fn.external_source(source=self._feed, num_outputs=4, batch=True)
            images = fn.decoders.image(encoded, device=decoder, output_type=types.RGB, adjust_orientation=False)
            images = fn.crop(fn.resize(images, resize_shorter=size), crop=(size, size))
            images = fn.slice(images, start=start, shape=[size, size], axis_names="HW",
                              out_of_bounds_policy="pad", fill_values=0)
            return self._normalize(images, mirror=mirror), labels
        encoded, labels, start, shape, mirror, brightness, contrast, saturation, hue = fn.external_source(
            source=self._feed, num_outputs=9, batch=True)
        # decode only the crop window; PIL reads the sizes without EXIF rotation, so DALI must not rotate either
        images = fn.decoders.image_slice(encoded, start=start, shape=shape, axis_names="HW", device=decoder,
                                         output_type=types.RGB, adjust_orientation=False)
        images = fn.resize(images, size=[size, size])
        # one colour matrix in DALI's fixed order; torch applies the same factors in the sampled order
        images = fn.color_twist(images, brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)
        return self._normalize(images, mirror=mirror), labels


class HostFeed:
    """The pipeline's external_source callback: the next host batch of the current epoch. Kept apart from the
    loader so that loader -> pipeline -> callback is not a reference cycle: a pipeline left to the garbage
    collector may be collected inside a forked DataLoader worker, where DALI aborts."""

    def __init__(self):
        self.batches = iter(())

    def __call__(self):
        return next(self.batches)  # StopIteration ends DALI's epoch


def memory_batches(planned, split, plan, dataset):
    """Host side of the in-memory graph: [images, labels] (+ [crop start, mirror] (+ [erase anchor, shape]))."""
    size, pad = dataset.image_size, dataset.pad
    for idx, labels, rng in planned:
        batch = [split.images[idx], labels]
        if plan.train:
            offsets, flips, boxes = crop_flip_cutout(rng, len(idx), size, plan.cutout, pad)
            batch += [(offsets - pad).astype(np.int32), flips.astype(np.int32)]
            if boxes is not None:
                batch += [boxes[:, :2].astype(np.float32), (boxes[:, 2:] - boxes[:, :2]).astype(np.float32)]
        yield batch


def file_batches(planned, split, plan, dataset):
    """Host side of the file graph: [encoded, labels] (+ for training: crop start and mirror of small images,
    or crop window, mirror and jitter factors)."""
    size = dataset.image_size
    for idx, labels, rng in planned:
        paths = [split.paths[i] for i in idx]
        encoded = [np.fromfile(path, dtype=np.uint8) for path in paths]
        sizes = [_image_size(data, path) for data, path in zip(encoded, paths)]  # also: a clear error, early
        if not plan.train:
            yield [encoded, labels]
            continue
        seeds = sample_seeds(rng, len(idx)).tolist()
        if small_images(size):
            crops = [padded_crop_params(seed, size) for seed in seeds]
            yield [encoded, labels, np.array([(top - PAD, left - PAD) for top, left, _ in crops], np.int32),
                   np.array([flip for _, _, flip in crops], np.int32)]
            continue
        params = [imagenet_params(seed, *wh) for seed, wh in zip(seeds, sizes)]
        window = np.array([(p.top, p.left, p.height, p.width) for p in params], np.int32)
        flips = np.array([p.flip for p in params], np.int32)
        # rows: brightness, contrast, saturation, hue (DALI's hue is in degrees)
        jitter = np.array([(p.brightness, p.contrast, p.saturation, p.hue * 360) for p in params], np.float32)
        yield [encoded, labels, window[:, :2].copy(), window[:, 2:].copy(), flips, *jitter.T.copy()]


def _image_size(data, path):
    """(width, height) from the image header only."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except OSError as exc:
        raise DataError(f"{path} is not a readable image ({one_line(exc)})") from None
