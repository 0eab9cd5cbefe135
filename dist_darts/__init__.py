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
    "Genotype": ("genotype", "Genotype"),
    "PRIMITIVES": ("genotype", "PRIMITIVES"),
    "load_genotype": ("genotype", "load"),
    "save_genotype": ("genotype", "save"),
    "derive_genotype": ("genotype", "derive"),
    "to_nni_dict": ("genotype", "to_nni_dict"),
    "from_nni_dict": ("genotype", "from_nni_dict"),
    "NetworkCIFAR": ("model", "NetworkCIFAR"),
    "NetworkImageNet": ("model", "NetworkImageNet"),
    "load_searched_model": ("hub", "load_searched_model"),
    "animate": ("visualize", "animate"),
    "ConfigError": ("config", "ConfigError"),
    "DataError": ("data.datasets", "DataError"),
    "CheckpointError": ("checkpoint", "CheckpointError"),
    "GenotypeError": ("genotype", "GenotypeError"),
}
_SUBMODULES = ("config", "search", "train", "genotype", "model", "hub", "visualize", "data", "tune", "spaces")

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        module, attribute = _EXPORTS[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attribute)
        globals()[name] = value  # looked up once
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_EXPORTS, *_SUBMODULES])
