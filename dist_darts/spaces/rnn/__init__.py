"""The DARTS recurrent space (the original code's rnn/ half: language modelling on Penn Treebank and WikiText-2).

``RNNModel`` runs a discrete recurrent cell (a ``RecurrentGenotype``), ``RNNModelSearch`` the continuous
relaxation over ``RNN_PRIMITIVES``, both with the original's module names and initialisation; ``genotype`` holds the
cell encoding and the published cells, ``config`` and ``jobs`` the search, retrain and evaluation as the original
runs them, ``original`` the reader of its pickled models, ``sweep`` what `dist-darts sweep --space rnn` reports.
"""

from .genotype import (RNN_GENOTYPES, RNN_PRIMITIVES, RecurrentGenotype, derive_recurrent, format_recurrent,
                       load_recurrent, recurrent_from_dict, recurrent_to_dict, save_recurrent)
from .networks import RNNModel, RNNModelSearch

__all__ = ["RNN_GENOTYPES", "RNN_PRIMITIVES", "RNNModel", "RNNModelSearch", "RecurrentGenotype", "derive_recurrent",
           "format_recurrent", "load_recurrent", "recurrent_from_dict", "recurrent_to_dict", "save_recurrent"]
