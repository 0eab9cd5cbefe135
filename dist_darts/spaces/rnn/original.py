"""The original rnn/ code's whole pickled models (its released ptb_model.pt: `torch.save(model)` of an RNNModel),
read without running any of the file's pickled code.

Every class the file names (the original's RNNModel and DARTSCell, torch's modules, the Genotype) is replaced by a
record that only keeps its pickled state; tensors are rebuilt from the raw storages by this module. Both torch
containers are read: the legacy one (PyTorch < 1.6, what the original saved) and the zip one. Anything else the
file asks for is refused by dist_darts.safe_pickle, naming the global.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile

import torch

from ... import safe_pickle
from ...checkpoint import CheckpointError
from . import genotype as rgt

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization's MAGIC_NUMBER
_DTYPES = {"Float": torch.float32, "Double": torch.float64, "Half": torch.float16, "Long": torch.int64,
           "Int": torch.int32, "Byte": torch.uint8, "Bool": torch.bool}
_RECORDED = [("model", "RNNModel"), ("model", "DARTSCell"), ("model", "DARTSCellSearch"), ("utils", "LockedDropout"),
             ("genotypes", "Genotype"), ("torch.nn.modules.sparse", "Embedding"), ("torch.nn.modules.linear", "Linear"),
             ("torch.nn.modules.container", "ModuleList"), ("torch.nn.modules.container", "ParameterList"),
             ("torch.nn.modules.batchnorm", "BatchNorm1d"), ("torch.autograd.variable", "Variable")]


class Record:
    """A stand-in for a class of the file: its constructor arguments and pickled state, nothing run."""

    def __new__(cls, *args):
        obj = object.__new__(cls)
        obj.args, obj.state = args, {}
        return obj

    def __setstate__(self, state):
        self.state = state


class _Tensor:
    """A tensor to be cut from a storage once the storages are read (the legacy file puts them last)."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def __setstate__(self, state):
        """PyTorch 0.3's Parameter pickles as Parameter(data) then (requires_grad, volatile, hooks): unneeded."""

    def build(self, storages: dict) -> torch.Tensor:
        key, dtype, view_offset = self.storage
        flat = storages[key]
        return torch.as_strided(flat, self.size, self.stride, view_offset + self.offset).clone()


def _rebuild_tensor(storage, offset, size, stride, *rest):
    return _Tensor(storage, offset, size, stride)


def _parameter(data, *rest):
    return data


def _no_backend(*args):
    return None


def _allowed() -> dict:
    allowed = {key: type(key[1], (Record,), {}) for key in _RECORDED}
    for module in ("torch", "torch.cuda"):
        for name, dtype in _DTYPES.items():
            allowed[(module, f"{name}Storage")] = dtype
    allowed.update({
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _parameter,
        ("torch.nn.parameter", "Parameter"): _parameter,
        ("torch.nn.backends.thnn", "_get_thnn_function_backend"): _no_backend,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "range"): range,
        ("__builtin__", "xrange"): range,
        ("builtins", "set"): set,
        ("__builtin__", "set"): set,
    })
    return allowed


def _unpickle(f, what: str, storages: dict):
    """The main object of a torch file; `storages` gets root key -> dtype for every storage it references."""
    def persistent_load(saved_id):
        if isinstance(saved_id, tuple) and saved_id[0] == "module":  # a module class (with its source, unread)
            return saved_id[1]  # already resolved by the restricted unpickler: its stand-in record
        if not isinstance(saved_id, tuple) or saved_id[0] != "storage" or not isinstance(saved_id[1], torch.dtype):
            raise CheckpointError(f"{what}: an unknown persistent id {saved_id!r:.60}")
        dtype, key = saved_id[1], str(saved_id[2])
        storages[key] = dtype
        view = saved_id[5] if len(saved_id) > 5 else None  # legacy views: (view key, offset, size)
        return key, dtype, view[1] if view else 0

    return safe_pickle.load(f, _allowed(), what=what, purpose="a pickled recurrent model", encoding="latin1",
                            persistent_load=persistent_load)


def _read_legacy(f, what: str):
    storages = {}
    if safe_pickle.load(f, what=what) != LEGACY_MAGIC:
        raise CheckpointError(f"{what}: not a PyTorch file (no magic number)")
    safe_pickle.load(f, what=what)  # protocol version
    safe_pickle.load(f, what=what)  # system info
    obj = _unpickle(f, what, storages)
    data = {}
    for key in safe_pickle.load(f, what=what):
        dtype = storages[str(key)]
        count = int.from_bytes(f.read(8), "little")
        nbytes = count * torch.empty((), dtype=dtype).element_size()
        data[str(key)] = torch.frombuffer(bytearray(f.read(nbytes)), dtype=dtype)
    return obj, data


def _read_zip(path, what: str):
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pkl = next(n for n in names if n.endswith("/data.pkl"))
        prefix = pkl[:-len("data.pkl")]
        storages = {}
        obj = _unpickle(io.BytesIO(archive.read(pkl)), what, storages)
        data = {key: torch.frombuffer(bytearray(archive.read(f"{prefix}data/{key}")), dtype=dtype)
                for key, dtype in storages.items()}
    return obj, data


def _module_state(record, storages: dict, prefix: str = "") -> dict:
    """The state dict of a recorded module: its parameters and buffers, then its submodules' (by name)."""
    out = {}
    for group in ("_parameters", "_buffers"):
        for name, value in (record.state.get(group) or {}).items():
            if isinstance(value, Record) and value.args:  # a legacy Variable around its tensor
                value = value.args[0]
            if isinstance(value, _Tensor):
                out[prefix + name] = value.build(storages)
    for name, child in (record.state.get("_modules") or {}).items():
        if isinstance(child, Record):
            out.update(_module_state(child, storages, f"{prefix}{name}."))
    return out


def read_torch_model(path: str | os.PathLike, reason: str = "") -> tuple[dict, dict]:
    """(RNNModel arguments, state dict) of the original's pickled model file, or a one-line CheckpointError."""
    what = f"checkpoint {path}"
    try:
        if zipfile.is_zipfile(path):
            obj, storages = _read_zip(path, what)
        else:
            with open(path, "rb") as f:
                obj, storages = _read_legacy(f, what)
    except safe_pickle.PickleRefused as e:
        raise CheckpointError(str(e)) from None
    except (pickle.UnpicklingError, OSError, EOFError, ValueError, KeyError, StopIteration, IndexError,
            TypeError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{what} is neither a dist-darts checkpoint ({reason or 'unreadable'}) nor the "
                              f"original's pickled model ({type(e).__name__})") from None
    if not isinstance(obj, Record) or type(obj).__name__ != "RNNModel":
        raise CheckpointError(f"{what}: holds {type(obj).__name__}, not the original's pickled RNNModel")
    s = obj.state
    try:
        cell = s["_modules"]["rnns"].state["_modules"]["0"]
        genotype = cell.state["genotype"]
        recurrent, concat = genotype.args if isinstance(genotype, Record) else genotype
        model_args = dict(ntoken=int(s["ntoken"]), ninp=int(s["ninp"]), nhid=int(s["nhid"]),
                          nhidlast=int(s["nhidlast"]), dropout=float(s["dropout"]),
                          dropouth=float(cell.state["dropouth"]), dropoutx=float(cell.state["dropoutx"]),
                          dropouti=float(s["dropouti"]), dropoute=float(s["dropoute"]),
                          genotype=rgt.load_recurrent({"recurrent": [list(e) for e in recurrent],
                                                      "concat": list(concat)}))
    except (KeyError, AttributeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{what}: a pickled RNNModel without the original's attributes ({e!r:.80})") from None
    return model_args, _module_state(obj, storages)
