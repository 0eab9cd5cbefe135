"""dist-darts: Differentiable Architecture Search as a distributed multi-GPU trainer."""

__version__ = "0.1.0"
