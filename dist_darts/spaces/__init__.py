"""Search spaces, one unit each, and the one table of them that the CLI, the sweep and the configs consult.

A space's unit holds its networks, genotype type (read, write, derive, draw), job settings, jobs and what its
sweep reports (a `Space` object: cnn/sweep.py's ConvSpace is the protocol). ``cnn`` (the DARTS convolutional
space), ``rnn`` (the DARTS recurrent space) and ``nb201`` (NAS-Bench-201) are subpackages here. The convolutional
space's search and retrain are the shared jobs (search.py's SearchTask, train.py's RetrainTask), whose hooks the
other image spaces override. A new space is one folder plus one row of TABLE.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping

# name -> (module, class of its Space, what --space says of it)
TABLE = {
    "cnn": ("dist_darts.spaces.cnn.sweep", "ConvSpace", "convolutional cells on images (the DARTS paper's CIFAR and "
                                                    "ImageNet space)"),
    "rnn": ("dist_darts.spaces.rnn.sweep", "RecurrentSpace", "recurrent cells on text (the original's rnn/ code)"),
    "nb201": ("dist_darts.spaces.nb201.sweep", "NB201Space", "NAS-Bench-201's cell on images, each epoch's cell "
                                                            "looked up in the benchmark (docs/nas-bench-201.md)"),
}
NAMES = tuple(TABLE)
DEFAULT = "cnn"  # --space's default: the DARTS paper's space


class _Spaces(Mapping):
    """name -> Space object, each imported on first use (a space's unit imports the jobs; the table does not)."""

    def __getitem__(self, name: str):
        return _load(name)

    def __iter__(self):
        return iter(TABLE)

    def __len__(self) -> int:
        return len(TABLE)


@functools.cache
def _load(name: str):
    module, cls, _ = TABLE[name]
    space = getattr(importlib.import_module(module), cls)()
    space.name = name
    return space


SPACES = _Spaces()


def described() -> str:
    """Every space with its line, for --space's help."""
    return "; ".join(f"{name}: {text}" for name, (_, _, text) in TABLE.items())
