"""The NAS-Bench-201 benchmark's numbers for a cell, read from the authors' files without running code from them.

Three layouts, as the authors' API packages (``nas-bench-201`` 2.1, ``nats_bench`` 1.8) read them:

- NAS-Bench-201 v1.0 / v1.1 (``NAS-Bench-201-v1_[01]-*.pth``): a torch file of a dict ``meta_archs`` (the 15,625
  arch strings; a cell's index is its position), ``arch2infos`` (index -> ``{"less": 12-epoch, "full": 200-epoch
  results}``) and ``evaluated_indexes``. Read with ``torch.load(weights_only=True)``, numpy scalars allowed.
- NATS-Bench's topology file (``NATS-tss-v1_0-3ffb9.pickle.pbz2``): a bz2-compressed pickle of the same dict, whose
  ``arch2infos`` map each index to ``{"12": ..., "200": ...}``.
- NATS-Bench's topology archive folder (``NATS-tss-v1_0-3ffb9-simple/``, the authors' "fast mode"):
  ``meta.pickle.pbz2`` (``meta_archs``) and one ``{index:06d}.pickle.pbz2`` per cell (``{"12": ..., "200": ...}``).

The pickles are read by dist_darts.safe_pickle, which resolves only containers, numbers, strings, OrderedDict and
numpy arrays and scalars of plain dtypes. The 200-epoch results are an ``ArchResults`` state: ``dataset_seed``
(dataset -> seeds) and ``all_results`` ((dataset, seed) -> a trial with ``epochs`` and ``eval_acc1es``,
``"x-valid@199"`` -> accuracy in %). A cell's number is the mean over its trials of the last epoch's accuracy: what
the API's ``get_more_info(index, dataset, hp="200", is_random=False)`` reports.
"""

from __future__ import annotations

import bz2
import collections
import os
import pickle
import re
from pathlib import Path

import numpy as np
import torch

from ... import safe_pickle
from .genotype import format_arch, parse_arch

# (our name, the benchmark's dataset, its evaluation set): the numbers papers report for a NAS-Bench-201 cell
RESULTS = [
    ("cifar10_valid", "cifar10-valid", "x-valid"),  # trained on CIFAR-10's train half, its valid half
    ("cifar10_test", "cifar10", "ori-test"),  # trained on all 50,000 CIFAR-10 training images, the test set
    ("cifar100_valid", "cifar100", "x-valid"),
    ("cifar100_test", "cifar100", "x-test"),
    ("imagenet16_120_valid", "ImageNet16-120", "x-valid"),
    ("imagenet16_120_test", "ImageNet16-120", "x-test"),
]
FULL_TRAINING = ("full", "200")  # the 200-epoch results' key: NAS-Bench-201's, NATS-Bench's
PICKLE_EXT = ".pickle.pbz2"
_SCALAR = np.float64(0).__reduce__()[0]  # numpy's scalar reconstructor, however numpy spells its module
_ALLOWED = {
    **safe_pickle.NUMPY_ARRAYS,
    **{(module, "scalar"): _SCALAR for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class BenchmarkError(ValueError):
    """A benchmark file that cannot be read, or a cell it does not hold; one line."""


def _torch_safe_globals() -> list:
    """What torch's weights_only unpickler needs beyond its defaults for numpy scalars (their dtypes included)."""
    dtypes = {type(np.dtype(code)) for code in "?bhilqBHILQefdgFDG"}
    return [np.dtype, *dtypes, *((_SCALAR, f"{module}.scalar") for module in
                                 ("numpy.core.multiarray", "numpy._core.multiarray"))]


def _unpickle_bz2(path: Path):
    try:
        with bz2.open(path, "rb") as f:
            return safe_pickle.load(f, _ALLOWED, what=f"benchmark file {path}", purpose="a NATS-Bench file")
    except safe_pickle.PickleRefused as e:
        raise BenchmarkError(str(e)) from None
    except FileNotFoundError:
        raise BenchmarkError(f"benchmark file {path} does not exist") from None
    except (OSError, EOFError, ValueError, pickle.UnpicklingError) as e:
        raise BenchmarkError(f"benchmark file {path}: not a bz2-compressed pickle ({type(e).__name__}: {e})") from None


def _torch_load(path: Path):
    try:
        with torch.serialization.safe_globals(_torch_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise BenchmarkError(f"benchmark file {path} does not exist") from None
    except Exception as e:  # refused globals, truncated or foreign files: one line, nothing in the file was run
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        reason = (f"it asks for the global {refused.group(1)}: refused, nothing in the file was run" if refused
                  else (str(e).strip().splitlines() or [type(e).__name__])[0][:200])
        raise BenchmarkError(f"benchmark file {path}: not a NAS-Bench-201 .pth file that loads without running "
                             f"code ({reason})") from None


def _check_topology(meta_archs, where: str) -> list:
    if not isinstance(meta_archs, (list, tuple)) or not meta_archs or not all(isinstance(a, str) for a in meta_archs):
        raise BenchmarkError(f"{where}: 'meta_archs' is not a list of arch strings")
    if not meta_archs[0].startswith("|"):
        raise BenchmarkError(f"{where}: its cells are not NAS-Bench-201 topologies (e.g. {meta_archs[0]!r}: "
                             "NATS-Bench's size search space?); give the topology file (NAS-Bench-201 or NATS-tss)")
    return list(meta_archs)


# the first bytes of the benchmark's file formats: bz2 (NATS-Bench), zip and legacy torch pickles (NAS-Bench-201)
MAGIC = (b"BZh", b"PK\x03\x04", b"\x80")


def check_file(path: str | os.PathLike) -> None:
    """A first look that reads a few bytes, before a job starts (every rank may run it): the benchmark is there and
    in one of its formats. Benchmark(path) reads it (on one rank: the NAS-Bench-201 files are several GB)."""
    path = Path(path)
    if path.is_dir():
        if not (path / f"meta{PICKLE_EXT}").is_file():
            raise BenchmarkError(f"benchmark folder {path}: no meta{PICKLE_EXT} (not a NATS-Bench topology archive "
                                 "folder)")
        return
    if not path.is_file():
        raise BenchmarkError(f"benchmark file {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head.startswith(MAGIC):
        raise BenchmarkError(f"benchmark file {path}: neither a torch file (NAS-Bench-201 .pth) nor a bz2 pickle "
                             "(NATS-Bench)")


class Benchmark:
    """An opened benchmark: ``lookup(arch_str)`` gives a cell's 200-epoch results (RESULTS, mean over trials)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._archive = self.path.is_dir()
        if self._archive:
            meta = self.path / f"meta{PICKLE_EXT}"
            if not meta.is_file():
                raise BenchmarkError(f"benchmark folder {self.path}: no meta{PICKLE_EXT} (not a NATS-Bench topology "
                                     "archive folder)")
            data = _unpickle_bz2(meta)
            self.kind = "NATS-Bench topology archive"
            self._arch2infos = {}
        else:
            if not self.path.is_file():
                raise BenchmarkError(f"benchmark file {self.path} does not exist")
            with open(self.path, "rb") as f:
                compressed = f.read(3) == b"BZh"
            data = _unpickle_bz2(self.path) if compressed else _torch_load(self.path)
            self.kind = "NATS-Bench topology file" if compressed else "NAS-Bench-201 file"
        if not isinstance(data, dict) or "meta_archs" not in data or (not self._archive and "arch2infos" not in data):
            raise BenchmarkError(f"benchmark file {self.path}: not a NAS-Bench-201 or NATS-Bench topology file (no "
                                 "'meta_archs' and 'arch2infos')")
        self.meta_archs = _check_topology(data["meta_archs"], f"benchmark file {self.path}")
        self._index = {arch: i for i, arch in enumerate(self.meta_archs)}
        if not self._archive:
            self._arch2infos = data["arch2infos"]

    def __len__(self) -> int:
        return len(self.meta_archs)

    def index(self, arch_str: str) -> int:
        """The cell's index in the benchmark (its arch string, checked and written canonically)."""
        arch = format_arch(parse_arch(arch_str))
        if arch not in self._index:
            raise BenchmarkError(f"benchmark file {self.path} does not list the cell {arch} (it lists "
                                 f"{len(self.meta_archs)})")
        return self._index[arch]

    def _infos(self, index: int) -> dict:
        if index not in self._arch2infos and self._archive:
            for name in (f"{index:06d}{PICKLE_EXT}", f"{index}{PICKLE_EXT}"):
                if (self.path / name).is_file():
                    self._arch2infos[index] = _unpickle_bz2(self.path / name)
                    break
        if index not in self._arch2infos:
            raise BenchmarkError(f"benchmark {self.path} holds no results for cell {index} ({self.meta_archs[index]})")
        return self._arch2infos[index]

    def lookup(self, arch_str: str) -> dict:
        """{"arch_str", "index", "trials" (dataset -> count)} and each RESULTS name -> accuracy in % (None where
        the benchmark has no trial on that dataset)."""
        index = self.index(arch_str)
        where = f"benchmark {self.path}, cell {index}"
        infos = self._infos(index)
        full = next((infos[k] for k in FULL_TRAINING if isinstance(infos, dict) and k in infos), None)
        if full is None:
            raise BenchmarkError(f"{where}: no 200-epoch results ('full' or '200')")
        entry = {"arch_str": self.meta_archs[index], "index": index, "trials": {}}
        try:
            seeds, trials = full["dataset_seed"], full["all_results"]
            for name, dataset, split in RESULTS:
                accuracies = []
                for seed in seeds.get(dataset, []):
                    trial = trials[(dataset, seed)]
                    accuracies.append(float(trial["eval_acc1es"][f"{split}@{int(trial['epochs']) - 1}"]))
                entry["trials"][dataset] = len(accuracies)
                entry[name] = sum(accuracies) / len(accuracies) if accuracies else None
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise BenchmarkError(f"{where}: the 200-epoch results lack {type(e).__name__}: {e} (not the "
                                 "benchmark's layout)") from None
        return entry


def format_entry(entry: dict) -> str:
    """A cell's entry as lines: its index, then each dataset's accuracies and trial count."""
    lines = [f"arch_str  {entry['arch_str']}", f"index     {entry['index']}"]
    for name, dataset, split in RESULTS:
        value = entry[name]
        shown = "n/a" if value is None else f"{value:.2f} %"
        lines.append(f"{name:<21} {shown:>8}  ({dataset} {split}, mean of {entry['trials'][dataset]} trials)")
    return "\n".join(lines)
