"""Published architectures of the DARTS space, built at the size their papers evaluate them, with weights.

`load_searched_model('DARTS_V2', 'cifar10', weights=PATH_OR_URL)` gives the evaluation network the DARTS paper
reports (C=36, 20 cells on 32x32 inputs; C=48, 14 cells on ImageNet's 224x224) and loads weights with
`weights_only=True`: our retrain checkpoints, the original DARTS code's files and NNI's state dicts.
The errors below are the ones the papers report for their own trained networks; the parameter counts that
`dist-darts hub list` shows are counted from the networks built here.
"""

from __future__ import annotations

import hashlib
import os
import urllib.parse
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from . import checkpoint as ckpt_io
from .spaces.cnn import genotype as gt
from .config import DATASETS
from .spaces.cnn.model import build_network, count_parameters, from_nni_state_dict, paper_size


@dataclass(frozen=True)
class Weights:
    """Released weights: where they are, the file's name, and whether `url` is the file itself."""
    url: str
    file: str
    direct: bool  # False: a web page (Google Drive's viewer) from which a person downloads the file
    sha256: str = ""  # the file's digest where it is known; load_searched_model checks it


@dataclass(frozen=True)
class Published:
    name: str  # key of genotype.GENOTYPES
    source: str
    reported: dict[str, str]  # data set -> test error as published
    weights: dict[str, Weights] = field(default_factory=dict)  # data set -> released weights


PUBLISHED = [
    Published("DARTS_V1", "DARTS, first order (Liu et al., ICLR 2019)", {"cifar10": "3.00 +/- 0.14 %"}),
    Published("DARTS_V2", "DARTS, second order (Liu et al., ICLR 2019)",
              {"cifar10": "2.76 +/- 0.09 % (released weights: 2.63 %)", "imagenet": "26.7 % / 8.7 % (top-1 / top-5)"},
              {"cifar10": Weights("https://drive.google.com/file/d/1Y13i4zKGKgjtWBdC0HWLavjO7wvEiGOc",
                                  "cifar10_model.pt", direct=False),
               "imagenet": Weights("https://drive.google.com/file/d/1AKr6Y_PoYj7j0Upggyzc26W0RVdg4CVX",
                                   "imagenet_model.pt", direct=False)}),
    Published("PC_DARTS", "PC-DARTS, searched on CIFAR-10 (Xu et al., ICLR 2020)",
              {"cifar10": "2.57 +/- 0.07 %", "imagenet": "25.1 % / 7.8 % (top-1 / top-5)"}),
    Published("PC_DARTS_IMAGENET", "PC-DARTS, searched on ImageNet (Xu et al., ICLR 2020)",
              {"imagenet": "24.2 % / 7.3 % (top-1 / top-5)"}),
    Published("PDARTS", "P-DARTS (Chen et al., ICCV 2019; cell from chenxin061/pdarts)",
              {"cifar10": "2.50 % (3.4 M parameters)"}),
    Published("SDARTS_RS", "SDARTS-RS (Chen & Hsieh, ICML 2020; cell from xiangning-chen/SmoothDARTS)",
              {"cifar10": "2.67 +/- 0.03 %"}),
    Published("DRNAS", "DrNAS (Chen et al., ICLR 2021; cell from xiangning-chen/DrNAS)",
              {"cifar10": "2.46 +/- 0.03 % (4.1 M parameters)"}),
    Published("DARTS_MINUS", "DARTS- (Chu et al., ICLR 2021; the repository's best CIFAR-10 cell, cifar10_s0_0, "
                             "from Meituan-AutoML/DARTS-)",
              {"cifar10": "not recorded here: see the paper's table"}),
    Published("NASNet", "NASNet-A (Zoph et al., CVPR 2018), as DARTS's genotypes.py writes it",
              {"cifar10": "2.65 % (with cutout)", "imagenet": "26.0 % / 8.4 % (top-1 / top-5)"}),
    Published("AmoebaNet", "AmoebaNet-A (Real et al., AAAI 2019), as DARTS's genotypes.py writes it",
              {"cifar10": "3.34 +/- 0.06 % (with cutout)", "imagenet": "25.5 % / 8.0 % (top-1 / top-5)"}),
]
BY_NAME = {p.name: p for p in PUBLISHED}


@dataclass(frozen=True)
class RecurrentSize:
    """A language-modelling setting of the original rnn/ code: its vocabulary and units (emsize = nhid)."""
    words: int
    units: int


# the original train.py's settings: PTB's 10,000 words at 850 units, WikiText-2's 33,278 at 700
RECURRENT_SIZES = {"ptb": RecurrentSize(10000, 850), "wt2": RecurrentSize(33278, 700)}
RECURRENT_PUBLISHED = [
    Published("RNN_DARTS_V1", "DARTS, first order (Liu et al., ICLR 2019)", {"ptb": "57.6 test perplexity"}),
    Published("RNN_DARTS_V2", "DARTS, second order (Liu et al., ICLR 2019)",
              {"ptb": "55.7 test perplexity (released ptb_model.pt: 55.68)",
               "wt2": "69.6 test perplexity (the PTB cell transferred)"},
              {"ptb": Weights("https://drive.google.com/file/d/1Mt_o6fZOlG-VDF3Q5ModgnAJ9W6f_av2", "ptb_model.pt",
                              direct=False)}),
    Published("RNN_ENAS", "ENAS (Pham et al., ICML 2018), trained in the DARTS setting",
              {"ptb": "58.6 test perplexity", "wt2": "70.4 test perplexity"}),
]


def build_recurrent_model(name: str, dataset: str = "ptb") -> nn.Module:
    """The untrained RNNModel of a recurrent genotype at the original train.py's size for `dataset`."""
    from .spaces.rnn import RNNModel, load_recurrent
    size = RECURRENT_SIZES[dataset]
    return RNNModel(size.words, size.units, size.units, size.units, genotype=load_recurrent(name))


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
                        init_channels: int | None = None, layers: int | None = None,
                        sha256: str | None = None) -> nn.Module:
    """The evaluation network of genotype `name` for `dataset`, with `weights` (a file or a URL) loaded.

    The network is the paper's size unless `init_channels`/`layers` say otherwise; it has an auxiliary head when
    the weights do. Returned in eval mode. Without weights it warns that the network is untrained. A URL
    (http, https, file) is downloaded once into torch.hub's cache, keyed by the whole URL; its SHA-256 is checked
    against `sha256`, or the catalogue's digest for that URL where the hub knows one. Bad files raise
    CheckpointError with one line naming the file and the problem.
    """
    if weights is None:
        model = build_searched_model(name, dataset, False, init_channels, layers)
        warnings.warn(f"{name} for {dataset}: no weights given, the network is untrained (random initialisation)",
                      stacklevel=2)
        return model.eval()
    path = _fetch(str(weights), sha256)
    info = _dataset(dataset)
    state, arch = load_weights(path, layers or paper_size(info.image_size)[1])
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


def load_weights(path: str | os.PathLike, layers: int, from_dict=gt.from_dict) -> tuple[dict, dict | None]:
    """An evaluation network's weights from a file, as (state dict, architecture or None); `from_dict` reads the
    genotype of the checkpoint's space.

    Our retrain checkpoints (verified by their digests) give their EMA weights when the run kept an EMA (those were
    validated) and their architecture (genotype, layers, init_channels, auxiliary, config). Foreign files give None:
    a plain state dict (the original DARTS code's CIFAR weights), {'state_dict': ...} (its ImageNet checkpoints),
    keys maybe prefixed 'module.' (saved from a DataParallel model), or NNI's DARTS-space keys (renamed for `layers`
    cells).
    """
    path = Path(path)
    obj = ckpt_io.read(path)
    if ckpt_io.is_ours(obj):
        ckpt = ckpt_io.verify(obj, path, "retrain")
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
        raise ckpt_io.CheckpointError(f"checkpoint {path} holds no state dict of tensors (neither ours nor the "
                                      "original DARTS code's format)")
    weights = {k.removeprefix("module."): v for k, v in obj.items()}
    if any(k.startswith("stages.") for k in weights):
        weights = from_nni_state_dict(weights, layers)
    return weights, None


def _known_weights(url: str) -> Weights | None:
    return next((w for p in PUBLISHED for w in p.weights.values() if w.url == url), None)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fetch(weights: str, sha256: str | None) -> Path:
    """A local path as it is; a URL downloaded once into torch.hub's cache, under a name made from the whole URL."""
    url = urllib.parse.urlparse(weights)
    if url.scheme not in ("http", "https", "file"):
        return Path(weights)
    known = _known_weights(weights)
    if known is not None and not known.direct:
        raise ckpt_io.CheckpointError(f"weights {weights} is a web page, not a download: fetch {known.file} from it "
                                      "in a browser and pass the file's path")
    expected = sha256 or (known.sha256 if known else "")
    name = f"{hashlib.sha256(weights.encode()).hexdigest()[:16]}-{os.path.basename(url.path) or 'weights.pt'}"
    target = Path(torch.hub.get_dir()) / "checkpoints" / name
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(weights, str(target), progress=url.scheme != "file")
        except Exception as e:  # no network, 404, TLS: one line
            raise ckpt_io.CheckpointError(f"weights {weights} could not be downloaded ({type(e).__name__}: "
                                          f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if expected:
        actual = file_sha256(target)
        if actual != expected.lower():
            target.unlink()
            raise ckpt_io.CheckpointError(f"weights {weights} have SHA-256 {actual}, not the expected {expected}: "
                                          "not the published file (removed from the cache)")
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
                         **_weights_columns(p.weights.get(dataset))})
    for p in RECURRENT_PUBLISHED:
        for dataset, reported in p.reported.items():
            size = RECURRENT_SIZES[dataset]
            with torch.device("meta"):
                net = build_recurrent_model(p.name, dataset)
            rows.append({"name": p.name, "dataset": dataset, "input": f"{size.words:,} words",
                         "network": f"recurrent, {size.units} units", "params": count_parameters(net),
                         "reported_error": reported, "source": p.source, **_weights_columns(p.weights.get(dataset))})
    return rows


def _weights_columns(w: Weights | None) -> dict:
    if w is None:
        return {"weights": "", "weights_file": "", "weights_download": "none released", "weights_sha256": ""}
    how = ("direct: pass the URL as weights=" if w.direct else
           f"manual: a web page, not a file; download {w.file} from it in a browser and pass its path as weights=")
    return {"weights": w.url, "weights_file": w.file, "weights_download": how, "weights_sha256": w.sha256}
