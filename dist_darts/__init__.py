"""dist-darts: Differentiable Architecture Search as a distributed multi-GPU trainer.

The Python API (docs/api.md) is importable from here; each name loads its module (and torch) on first use, so
`import dist_darts` itself stays cheap.
"""

import importlib

__version__ = "0.1.0"

# exported name -> (module, attribute in it)
_EXPORTS = {
    "SearchConfig": ("config", "SearchConfig"),
    "RetrainConfig": ("config", "RetrainConfig"),
    "EvaluateConfig": ("config", "EvaluateConfig"),
    "run_search": ("search", "run"),
    "run_retrain": ("train", "run"),
    "evaluate_checkpoint": ("train", "evaluate_checkpoint"),
    "Genotype": ("spaces.cnn.genotype", "Genotype"),
    "PRIMITIVES": ("spaces.cnn.genotype", "PRIMITIVES"),
    "load_genotype": ("spaces.cnn.genotype", "load"),
    "save_genotype": ("spaces.cnn.genotype", "save"),
    "derive_genotype": ("spaces.cnn.genotype", "derive"),
    "to_nni_dict": ("spaces.cnn.genotype", "to_nni_dict"),
    "from_nni_dict": ("spaces.cnn.genotype", "from_nni_dict"),
    "NetworkCIFAR": ("spaces.cnn.model", "NetworkCIFAR"),
    "NetworkImageNet": ("spaces.cnn.model", "NetworkImageNet"),
    "load_searched_model": ("hub", "load_searched_model"),
    "animate": ("visualize", "animate"),
    "ConfigError": ("config", "ConfigError"),
    "DataError": ("data.datasets", "DataError"),
    "CheckpointError": ("checkpoint", "CheckpointError"),
    "GenotypeError": ("spaces.cnn.genotype", "GenotypeError"),
}
# attribute -> module; genotype and model are the DARTS convolutional space's, reached as before
_SUBMODULES = {"config": "config", "search": "search", "train": "train", "genotype": "spaces.cnn.genotype",
               "model": "spaces.cnn.model", "hub": "hub", "visualize": "visualize", "data": "data", "tune": "tune",
               "spaces": "spaces"}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        module, attribute = _EXPORTS[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attribute)
        globals()[name] = value  # looked up once
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{_SUBMODULES[name]}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_EXPORTS, *_SUBMODULES])
