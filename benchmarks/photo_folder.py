"""Write an image folder of real photographs at ImageNet-like sizes: train/<class>/*.jpg and val/<class>/*.jpg,
one class per photograph. `--photos project` takes the 10 photographs scikit-image ships that the `photos` task
and the tests use (dist_darts.data.datasets.PHOTOS); `--photos held-back` takes 9 other photographs that ship
inside installed packages (HELD_BACK: 8 more of scikit-image's and matplotlib's portrait of Grace Hopper), which
nothing else in the project reads, so a study on them has not been shaped by them.

Each photograph is resized to a shorter side of 3 x SIZE; training images are square crops of a random side
between SIZE and 2 x SIZE, at random places in its top two thirds, resized to SIZE; validation images are SIZE
crops at random places in its bottom third, so no validation pixel is ever seen in training. Every image is
SIZE x SIZE (the folder's shared side, which `--dataset folder` reads as its image size).

    python benchmarks/photo_folder.py /tmp/photos160 --size 160 --train 40 --val 10
    python benchmarks/photo_folder.py /tmp/heldback128 --size 128 --photos held-back
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

import numpy as np
from PIL import Image

from dist_darts.data import DataError
from dist_darts.data.datasets import PHOTOS, photo_dir

# (package, file inside it): photographs of at least 300 px on the shorter side except page and text (about 180),
# none of them in PHOTOS; scikit-image's drawings, synthetic images and the 102 px microaneurysms are left out
HELD_BACK = (("skimage", "data/cell.png"), ("skimage", "data/clock_motion.png"), ("skimage", "data/coins.png"),
             ("skimage", "data/moon.png"), ("skimage", "data/motorcycle_left.png"), ("skimage", "data/page.png"),
             ("skimage", "data/retina.jpg"), ("skimage", "data/text.png"),
             ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"))
PHOTO_SETS = ("project", "held-back")


def photo_files(photos: str) -> list[str]:
    """The files of photo set `photos` (PHOTO_SETS), found without importing the packages that ship them."""
    if photos == "project":
        return [os.path.join(photo_dir(), name) for name in PHOTOS]
    files = []
    for package, name in HELD_BACK:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise DataError(f"held-back photos: {name} comes with {package}, which is not installed")
        files.append(os.path.join(spec.submodule_search_locations[0], name))
    return files


def write_folder(out, size: int = 160, train: int = 40, val: int = 10, seed: int = 0,
                 photos: str = "project") -> Path:
    """The folder `out` with `train` and `val` images per class at size x size (see the module docstring)."""
    out, rng = Path(out), np.random.default_rng(seed)
    for path in photo_files(photos):
        label = Path(path).stem
        with Image.open(path) as image:
            image = image.convert("RGB")
            scale = 3 * size / min(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
        border = image.height * 2 // 3
        for split, count in (("train", train), ("val", val)):
            folder = out / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                side = int(rng.integers(size, 2 * size + 1)) if split == "train" else size
                top = int(rng.integers(0, border - side + 1)) if split == "train" else int(
                    rng.integers(border, image.height - side + 1))
                left = int(rng.integers(0, image.width - side + 1))
                crop = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
                crop.save(folder / f"{label}_{i:04d}.jpg", quality=90)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder to write train/ and val/ into")
    parser.add_argument("--size", type=int, default=160, help="image side in pixels (default: 160)")
    parser.add_argument("--train", type=int, default=40, help="training images per class (default: 40)")
    parser.add_argument("--val", type=int, default=10, help="validation images per class (default: 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the crops (default: 0)")
    parser.add_argument("--photos", default="project", choices=PHOTO_SETS,
                        help="which photographs, one class each (default: project; see the module docstring)")
    args = parser.parse_args()
    print(write_folder(args.out, args.size, args.train, args.val, args.seed, args.photos))


if __name__ == "__main__":
    main()
