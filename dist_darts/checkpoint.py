"""Checkpoints: atomic writes that keep the previous one, content digests verified on load, exact-resume state.

A checkpoint holds everything a run needs to continue bit for bit: model, optimizers, schedulers, scaler,
epoch and step inside it, the RNG states of every rank, and the config it was written under. It also holds the
SHA-256 of every tensor's bytes (and of all other values together): a flipped bit is caught on load, and resume
falls back to the previous checkpoint.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from .runfolder import atomic_write

FORMAT = "dist-darts-checkpoint-v1"
DIGESTS = "sha256"  # the key of the digests: {tensor key path: hex digest, OTHER_VALUES: hex digest}
OTHER_VALUES = "<all values that are not tensors>"
_COMMON_KEYS = ("kind", "epoch", "step", "model", "world_size", "rng", "config", "meters", "history", "identity",
                "metrics")
REQUIRED_KEYS = {
    "search": _COMMON_KEYS + ("w_optimizer", "a_optimizer", "scheduler"),
    "retrain": _COMMON_KEYS + ("optimizer", "scheduler", "scaler", "ema", "best", "genotype"),
    "rnn_search": _COMMON_KEYS + ("w_optimizer", "a_optimizer", "hidden"),
    "rnn_retrain": _COMMON_KEYS + ("optimizer", "asgd", "averaged", "hidden", "best", "val_losses", "genotype",
                                   "ntoken"),
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


class CheckpointCorrupted(CheckpointError):
    """A checkpoint whose bytes are damaged (unreadable, or its content no longer matches its digests)."""


def previous_path(path: str | os.PathLike) -> Path:
    """Where save_atomic(..., keep_previous=True) keeps the checkpoint it replaced: last.pt -> last.prev.pt."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The exact bytes of a tensor's values, in any memory format."""
    return t.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()


def _tensor_sha256(t: torch.Tensor) -> str:
    h = hashlib.sha256(f"{t.dtype} {tuple(t.shape)} ".encode())
    h.update(tensor_bytes(t))
    return h.hexdigest()


def content_digests(obj) -> dict[str, str]:
    """SHA-256 of each tensor (by key path, e.g. 'model.cells.0.weight') and one of every other value and key."""
    digests, others = {}, hashlib.sha256()

    def walk(node, key):
        if isinstance(node, torch.Tensor):
            digests[key] = _tensor_sha256(node)
        elif isinstance(node, dict):
            for k, v in node.items():
                others.update(f"{key}/{k!r}:".encode())
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(node, (list, tuple)):
            others.update(f"{key}[{len(node)}]".encode())
            for i, v in enumerate(node):
                walk(v, f"{key}.{i}")
        else:
            others.update(f"{key}={node!r};".encode())

    walk(obj, "")
    digests[OTHER_VALUES] = others.hexdigest()
    return digests


def _check_digests(obj, path: Path) -> None:
    stored = obj.get(DIGESTS) if isinstance(obj, dict) else None
    if stored is None:
        return  # written before checkpoints carried digests: structure checks only
    actual = content_digests({k: v for k, v in obj.items() if k != DIGESTS})
    bad = [k for k in stored.keys() | actual.keys() if stored.get(k) != actual.get(k)]
    if bad:
        shown = ", ".join(sorted(bad)[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise CheckpointCorrupted(f"checkpoint {path} is corrupted: {shown} no longer match the SHA-256 digests "
                                  "written with it")


def save_atomic(obj: dict, path: str | os.PathLike, keep_previous: bool = False) -> None:
    """torch.save `obj` with its content digests, atomically; the file is read back and verified before it replaces
    `path`. With keep_previous, the replaced file moves to previous_path(path) (load_latest's fallback)."""
    path = Path(path)
    obj = dict(obj, **{DIGESTS: content_digests(obj)})
    atomic_write(path, lambda f: torch.save(obj, f), verify=lambda tmp: _check_digests(read(tmp), path),
                 previous=previous_path(path) if keep_previous else None)


def _first_sentence(text: str) -> str:
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", text).split())
    return text.split(". ")[0].rstrip(".")


def _reason(e: Exception) -> str:
    text = str(e)
    if "WeightsUnpickler error:" in text:  # torch wraps the one useful line in a page of advice
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().split("\n\n")[0]
        return f"a weights-only load refuses it: {_first_sentence(detail)}"
    return _first_sentence(text) or type(e).__name__


def read(path: str | os.PathLike):
    """torch.load(weights_only=True) of any file, or CheckpointError (missing) / CheckpointCorrupted in one line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():  # a raw pickle's protocol warning says nothing the error below does not
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle, tampered data: never let the deep trace out
        raise CheckpointCorrupted(
            f"checkpoint {path} is corrupted or not a PyTorch checkpoint ({_reason(e)})") from None


def is_ours(obj) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def verify(obj, path: str | os.PathLike, kind: str | None = None) -> dict:
    """Check a read checkpoint: our marker, its digests, the kind asked for and that kind's keys; returns it."""
    path = Path(path)
    if not is_ours(obj):
        raise CheckpointError(f"checkpoint {path} was not written by dist-darts (no '{FORMAT}' marker)")
    _check_digests(obj, path)
    if kind and obj.get("kind") != kind:
        raise CheckpointError(f"checkpoint {path} is a {obj.get('kind')} checkpoint, not a {kind} one")
    if obj.get("kind") not in REQUIRED_KEYS:
        raise CheckpointError(f"checkpoint {path} has kind {obj.get('kind')!r}, none of "
                              f"{', '.join(REQUIRED_KEYS)}")
    missing = [k for k in REQUIRED_KEYS[obj["kind"]] if k not in obj]
    if missing:
        raise CheckpointError(f"checkpoint {path} is a {obj['kind']} checkpoint without {', '.join(missing)}: "
                              "it was not written whole by dist-darts")
    return obj


def load(path: str | os.PathLike, kind: str | None = None) -> dict:
    """Load and verify a dist-darts checkpoint (weights only) or fail with one line saying why."""
    return verify(read(path), path, kind)


def load_latest(path: str | os.PathLike, kind: str | None = None) -> tuple[dict, Path, str | None]:
    """Like load, falling back to previous_path(path) when `path` is corrupted or missing (deleted or lost by
    hand: atomic_write never leaves it missing). Returns (checkpoint, the file it came from, a note for the log or
    None)."""
    path = Path(path)
    previous = previous_path(path)
    try:
        return load(path, kind), path, None
    except CheckpointError as e:
        fell_back = isinstance(e, CheckpointCorrupted) or not path.exists()
        if not (fell_back and previous.is_file()):
            raise
        try:
            state = load(previous, kind)
        except CheckpointError as e2:
            raise CheckpointError(f"{e}; and its previous checkpoint: {e2}") from None
        return state, previous, f"{e}; resuming from the previous checkpoint {previous} instead"


def rng_state() -> dict:
    """This process's RNG states, in types that load with weights_only=True."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def check_compatible(ckpt: dict, path, world_size: int, config: dict, keys: tuple[str, ...]) -> None:
    """Refuse a resume whose world size or architecture-defining settings differ from the checkpoint's."""
    if ckpt["world_size"] != world_size:
        raise CheckpointError(
            f"checkpoint {path} was written by {ckpt['world_size']} ranks but this run has {world_size}: "
            f"resume with the same number of processes (exact resume needs every rank's data shard and RNG)")
    for key in keys:
        if ckpt["config"].get(key) != config.get(key):
            raise CheckpointError(f"checkpoint {path} has {key.replace('_', '-')}={ckpt['config'].get(key)!r} "
                                  f"but this run has {config.get(key)!r}: use a new --output or the same setting")
