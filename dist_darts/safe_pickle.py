"""A restricted unpickler for pickle-format inputs (CIFAR batches, the original DARTS's pickled models).

`pickle.load` runs whatever callable a file names; this reader resolves only the globals it is given and refuses
every other one before anything is called, with one line naming the file and the global.
"""

from __future__ import annotations

import codecs
import pickle
from typing import BinaryIO, Callable, Mapping

import numpy as np

# numpy's own reconstructors, found through an array's pickle recipe rather than numpy's private module paths
_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]
PLAIN_DTYPE_KINDS = "biufcSU"  # bool, integers, floats, complex, bytes, str: never objects, records or datetimes


class PickleRefused(pickle.UnpicklingError):
    """The file names a global the format never needs; nothing in it was run. One line."""


def _plain_dtype(*args):
    dtype = np.dtype(*args)
    if dtype.kind not in PLAIN_DTYPE_KINDS:
        raise PickleRefused(f"numpy dtype {dtype} (only plain numbers, booleans and strings are read)")
    return dtype


def _latin1_bytes(text, encoding="latin1"):
    # Python 3 writes bytes at pickle protocols 0-2 as _codecs.encode(str, 'latin1')
    if codecs.lookup(encoding).name != "iso8859-1":
        raise PickleRefused(f"_codecs.encode with encoding {encoding!r} (only latin-1 byte strings are read)")
    return codecs.encode(text, "latin1")


# what a numpy array of a plain dtype needs, as numpy 1 and 2 write it (both module spellings) and Python 3 bytes
NUMPY_ARRAYS: dict[tuple[str, str], object] = {
    **{(module, "_reconstruct"): _RECONSTRUCT for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "_frombuffer"): _FROMBUFFER for module in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _plain_dtype,
    ("_codecs", "encode"): _latin1_bytes,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, allowed, what, purpose, encoding, persistent_load):
        super().__init__(file, encoding=encoding)
        self.allowed, self.what, self.purpose = allowed, what, purpose
        if persistent_load is not None:
            self.persistent_load = persistent_load

    def find_class(self, module, name):
        found = self.allowed.get((module, name))
        if found is None:
            raise PickleRefused(f"{self.what} asks to load the global {module}.{name}, which {self.purpose} never "
                                "needs: refused, nothing in the file was run")
        return found


def load(file: BinaryIO, allowed: Mapping[tuple[str, str], object] = NUMPY_ARRAYS, *, what: str,
         purpose: str = "this format", encoding: str = "latin1", persistent_load: Callable | None = None):
    """Unpickle `file`, resolving only the globals in `allowed` ((module, name) -> the object to use instead).

    Containers, strings, bytes and numbers need no globals. `what` names the file in errors and `purpose` the
    format ("a CIFAR batch"). Raises PickleRefused (one line) for any other global or a non-plain numpy dtype;
    a damaged file raises what pickle raises. `persistent_load` handles persistent ids (torch's storages).
    """
    try:
        return _Unpickler(file, allowed, what, purpose, encoding, persistent_load).load()
    except PickleRefused as e:
        message = str(e)
        raise PickleRefused(message if message.startswith(what) else
                            f"{what} asks for a {message}: refused, nothing in the file was run") from None
