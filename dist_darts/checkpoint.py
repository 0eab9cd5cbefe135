"""Checkpoints: atomic writes (temp file + rename), safe loads (weights_only), and exact-resume state.

A checkpoint holds everything a run needs to continue bit for bit: model, optimizers, schedulers, scaler,
epoch and step inside it, the RNG states of every rank, and the config it was written under.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

FORMAT = "dist-darts-checkpoint-v1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def save_atomic(obj, path: str | os.PathLike) -> None:
    """Write with torch.save to a temp file in the same folder, flush it to disk, then rename over path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read(path: Path):
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle, tampered data: never let the deep trace out
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is corrupted or not a PyTorch checkpoint ({reason})") from None


def load(path: str | os.PathLike, kind: str | None = None) -> dict:
    """Load a dist-darts checkpoint (weights only) or fail with one line saying why."""
    path = Path(path)
    return _checked(_read(path), path, kind)


def _checked(ckpt, path: Path, kind: str | None) -> dict:
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} was not written by dist-darts (no '{FORMAT}' marker)")
    if kind and ckpt.get("kind") != kind:
        raise CheckpointError(f"checkpoint {path} is a {ckpt.get('kind')} checkpoint, not a {kind} one")
    return ckpt


def load_weights(path: str | os.PathLike, layers: int) -> tuple[dict, dict | None]:
    """An evaluation network's weights from a file, as (state dict, architecture or None).

    Our retrain checkpoints give their EMA weights when the run kept an EMA (those were validated) and their
    architecture (genotype, layers, init_channels, auxiliary, config). Foreign files give None: a plain state dict
    (the original DARTS code's CIFAR weights), {'state_dict': ...} (its ImageNet checkpoints), keys maybe prefixed
    'module.' (saved from a DataParallel model), or NNI's DARTS-space keys (renamed for `layers` cells).
    """
    from .genotype import from_dict
    from .model import from_nni_state_dict

    path = Path(path)
    obj = _read(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        ckpt = _checked(obj, path, "retrain")
        weights = ckpt["model"]
        if ckpt.get("ema"):
            weights = {k[len("module."):]: v for k, v in ckpt["ema"].items() if k.startswith("module.")}
        c = ckpt["config"]
        arch = {"genotype": from_dict(ckpt["genotype"]), "layers": c["layers"], "init_channels": c["init_channels"],
                "auxiliary": c["auxiliary"], "config": c}
        return weights, arch
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path} holds no state dict of tensors (neither ours nor the original "
                              "DARTS code's format)")
    weights = {k.removeprefix("module."): v for k, v in obj.items()}
    if any(k.startswith("stages.") for k in weights):
        weights = from_nni_state_dict(weights, layers)
    return weights, None


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
