"""Published architectures of the DARTS space, built at the size their papers evaluate them, with weights.

`load_searched_model('DARTS_V2', 'cifar10', weights=PATH_OR_URL)` gives the evaluation network the DARTS paper
reports (C=36, 20 cells on 32x32 inputs; C=48, 14 cells on ImageNet's 224x224) and loads weights with
`weights_only=True`: our retrain checkpoints, the original DARTS code's files and NNI's state dicts.
The errors below are the ones the papers report for their own trained networks; the parameter counts that
`dist-darts hub list` shows are counted from the networks built here.
"""

from __future__ import annotations

import os
import urllib.parse
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from . import checkpoint as ckpt_io
from . import genotype as gt
from .config import DATASETS
from .model import build_network, count_parameters, paper_size


@dataclass(frozen=True)
class Published:
    name: str  # key of genotype.GENOTYPES
    source: str
    reported: dict[str, str]  # data set -> test error as published
    weights: dict[str, str] = field(default_factory=dict)  # data set -> where released weights are


PUBLISHED = [
    Published("DARTS_V1", "DARTS, first order (Liu et al., ICLR 2019)", {"cifar10": "3.00 +/- 0.14 %"}),
    Published("DARTS_V2", "DARTS, second order (Liu et al., ICLR 2019)",
              {"cifar10": "2.76 +/- 0.09 % (released weights: 2.63 %)", "imagenet": "26.7 % / 8.7 % (top-1 / top-5)"},
              {"cifar10": "https://drive.google.com/file/d/1Y13i4zKGKgjtWBdC0HWLavjO7wvEiGOc (cifar10_model.pt)",
               "imagenet": "https://drive.google.com/file/d/1AKr6Y_PoYj7j0Upggyzc26W0RVdg4CVX (imagenet_model.pt)"}),
    Published("PC_DARTS", "PC-DARTS, searched on CIFAR-10 (Xu et al., ICLR 2020)",
              {"cifar10": "2.57 +/- 0.07 %", "imagenet": "25.1 % / 7.8 % (top-1 / top-5)"}),
    Published("PC_DARTS_IMAGENET", "PC-DARTS, searched on ImageNet (Xu et al., ICLR 2020)",
              {"imagenet": "24.2 % / 7.3 % (top-1 / top-5)"}),
    Published("NASNet", "NASNet-A (Zoph et al., CVPR 2018), as DARTS's genotypes.py writes it",
              {"cifar10": "2.65 % (with cutout)", "imagenet": "26.0 % / 8.4 % (top-1 / top-5)"}),
    Published("AmoebaNet", "AmoebaNet-A (Real et al., AAAI 2019), as DARTS's genotypes.py writes it",
              {"cifar10": "3.34 +/- 0.06 % (with cutout)", "imagenet": "25.5 % / 8.0 % (top-1 / top-5)"}),
]
BY_NAME = {p.name: p for p in PUBLISHED}


def _dataset(dataset: str):
    info = DATASETS.get(dataset)
    if info is None or info.num_classes == 0 or dataset == "synthetic":
        known = ", ".join(k for k, v in DATASETS.items() if v.num_classes and k != "synthetic")
        raise ValueError(f"dataset {dataset!r}: choose one of {known}")
    return info


def build_searched_model(name: str, dataset: str = "cifar10", auxiliary: bool = False,
                         init_channels: int | None = None, layers: int | None = None) -> nn.Module:
    """The untrained evaluation network of a genotype (a published name, or a genotype file) at the paper's size."""
    info = _dataset(dataset)
    C, cells = paper_size(info.image_size)
    return build_network(gt.load(name), info.num_classes, info.image_size, layers or cells, init_channels or C,
                         auxiliary)


def load_searched_model(name: str, dataset: str = "cifar10", weights: str | os.PathLike | None = None, *,
                        init_channels: int | None = None, layers: int | None = None) -> nn.Module:
    """The evaluation network of genotype `name` for `dataset`, with `weights` (a file or a URL) loaded.

    The network is the paper's size unless `init_channels`/`layers` say otherwise; it has an auxiliary head when
    the weights do. Returned in eval mode. Without weights it warns that the network is untrained. Bad files
    raise CheckpointError with one line naming the file and the problem.
    """
    if weights is None:
        model = build_searched_model(name, dataset, False, init_channels, layers)
        warnings.warn(f"{name} for {dataset}: no weights given, the network is untrained (random initialisation)",
                      stacklevel=2)
        return model.eval()
    path = _fetch(str(weights))
    info = _dataset(dataset)
    state, arch = ckpt_io.load_weights(path, layers or paper_size(info.image_size)[1])
    if arch is not None:  # our checkpoint knows its architecture: it must be the one asked for
        if arch["genotype"] != gt.load(name):
            raise ckpt_io.CheckpointError(f"weights {weights} were trained for another genotype than {name}")
        init_channels, layers = init_channels or arch["init_channels"], layers or arch["layers"]
    auxiliary = any(k.startswith("auxiliary_head.") for k in state)
    model = build_searched_model(name, dataset, auxiliary, init_channels, layers)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:240]
        raise ckpt_io.CheckpointError(f"weights {weights} do not fit {name} for {dataset} ({detail})") from None
    model.loaded_from = str(weights)
    return model.eval()


def _fetch(weights: str) -> Path:
    """A local path as it is; a URL downloaded once into torch.hub's cache folder."""
    if urllib.parse.urlparse(weights).scheme not in ("http", "https"):
        return Path(weights)
    target = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urllib.parse.urlparse(weights).path)
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(weights, str(target), progress=True)
        except Exception as e:  # no network, 404, TLS: one line
            raise ckpt_io.CheckpointError(f"weights {weights} could not be downloaded ({type(e).__name__}: "
                                          f"{str(e).splitlines()[0] if str(e) else ''})") from None
    return target


def catalogue() -> list[dict]:
    """One row per published network and data set, with parameters counted on the built network."""
    rows = []
    for p in PUBLISHED:
        for dataset, error in p.reported.items():
            info = _dataset(dataset)
            C, cells = paper_size(info.image_size)
            with torch.device("meta"):  # counting needs shapes only
                net = build_searched_model(p.name, dataset)
            rows.append({"name": p.name, "dataset": dataset, "input": f"{info.image_size}x{info.image_size}",
                         "network": f"C={C}, {cells} cells",
                         "params": count_parameters(net), "reported_error": error, "source": p.source,
                         "weights": p.weights.get(dataset, "")})
    return rows
