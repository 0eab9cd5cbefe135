"""Recurrent genotypes (the original's rnn/ half: language modelling on PTB and WikiText-2): the encoding, the
published cells, derivation from alphas, JSON I/O.

A recurrent genotype lists, for each node i = 1..n of the cell, its one incoming edge as (activation, input):
state 0 is the cell's initial state (computed from x_t and h_{t-1}), state j >= 1 is node j. The cell's output
h_t is the mean of the states listed in `concat`.
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple

import torch

from ..cnn.genotype import GENOTYPES, GenotypeError, read_file
from ...runfolder import atomic_write

RNN_PRIMITIVES = ["none", "tanh", "relu", "sigmoid", "identity"]
RNN_STEPS = 8  # nodes of the recurrent search cell
RNN_NUM_EDGES = sum(range(1, RNN_STEPS + 1))  # 36: node i has i possible inputs


class RecurrentGenotype(NamedTuple):
    recurrent: list
    concat: list


def _as_recurrent(recurrent, concat) -> RecurrentGenotype:
    return RecurrentGenotype([(str(op), int(i)) for op, i in recurrent], [int(i) for i in concat])


RNN_DARTS_V1 = _as_recurrent(
    [("relu", 0), ("relu", 1), ("tanh", 2), ("relu", 3), ("relu", 4), ("identity", 1), ("relu", 5), ("relu", 1)],
    range(1, 9))
RNN_DARTS_V2 = _as_recurrent(
    [("sigmoid", 0), ("relu", 1), ("relu", 1), ("identity", 1), ("tanh", 2), ("sigmoid", 5), ("tanh", 3),
     ("relu", 5)],
    range(1, 9))
RNN_ENAS = _as_recurrent(
    [("tanh", 0), ("tanh", 1), ("relu", 1), ("tanh", 3), ("tanh", 3), ("relu", 3), ("relu", 4), ("relu", 7),
     ("relu", 8), ("relu", 8), ("relu", 8)],
    [2, 5, 6, 9, 10, 11])
RNN_DARTS = RNN_DARTS_V2

# names carry the RNN_ prefix, so no recurrent cell is mistaken for a convolutional one (or vice versa)
RNN_GENOTYPES = {
    "RNN_DARTS_V1": RNN_DARTS_V1,
    "RNN_DARTS_V2": RNN_DARTS_V2,
    "RNN_DARTS": RNN_DARTS,
    "RNN_ENAS": RNN_ENAS,
}


def validate_recurrent(g: RecurrentGenotype) -> RecurrentGenotype:
    """Check a recurrent genotype's structure; raise GenotypeError naming the bad field, else return it."""
    edges = g.recurrent
    if not isinstance(edges, (list, tuple)) or not edges:
        raise GenotypeError(f"recurrent genotype field 'recurrent': needs a non-empty list of (activation, input) "
                            f"pairs, one per node; got {edges!r}")
    ops = RNN_PRIMITIVES[1:]
    for k, edge in enumerate(edges):
        if not isinstance(edge, (list, tuple)) or len(edge) != 2:
            raise GenotypeError(f"recurrent genotype field 'recurrent[{k}]': needs an (activation, input) pair, "
                                f"got {edge!r}")
        op, inp = edge
        if op not in ops:
            raise GenotypeError(f"recurrent genotype field 'recurrent[{k}]': unknown activation {op!r} "
                                f"(known: {', '.join(ops)})")
        if not isinstance(inp, int) or isinstance(inp, bool) or not 0 <= inp <= k:
            raise GenotypeError(f"recurrent genotype field 'recurrent[{k}]': input {inp!r} out of range for node "
                                f"{k + 1} (must be 0..{k})")
    concat = g.concat
    if (not isinstance(concat, (list, tuple, range)) or not len(concat)
            or any(not isinstance(i, int) or isinstance(i, bool) or not 0 <= i <= len(edges) for i in concat)):
        raise GenotypeError(f"recurrent genotype field 'concat': needs state indices in 0..{len(edges)}, "
                            f"got {concat!r}")
    return g


def derive_recurrent(alphas: torch.Tensor) -> RecurrentGenotype:
    """Discretise raw (un-softmaxed) recurrent alphas of shape (36, len(RNN_PRIMITIVES)) into a genotype.

    As the original's search model: per node, the one input whose strongest non-'none' activation weighs most
    (ties: the lower input), and on it that activation (ties: the earlier one); the output averages nodes 1..8.
    """
    if tuple(alphas.shape) != (RNN_NUM_EDGES, len(RNN_PRIMITIVES)):
        raise GenotypeError(f"recurrent alphas: expected shape ({RNN_NUM_EDGES}, {len(RNN_PRIMITIVES)}), "
                            f"got {tuple(alphas.shape)}")
    a = alphas.detach().cpu()
    a = a.to(torch.promote_types(a.dtype, torch.float32))  # float32 as the original, float64 kept
    weights = torch.softmax(a, dim=-1)[:, 1:]  # drop 'none' (index 0)
    gene, start = [], 0
    for node in range(RNN_STEPS):
        w = weights[start:start + node + 1].tolist()
        best_input = max(range(node + 1), key=lambda j: (max(w[j]), -j))
        best_op = max(range(len(w[best_input])), key=lambda k: (w[best_input][k], -k))
        gene.append((RNN_PRIMITIVES[1 + best_op], best_input))
        start += node + 1
    return RecurrentGenotype(gene, list(range(1, RNN_STEPS + 1)))


def recurrent_to_dict(g: RecurrentGenotype) -> dict:
    return {"recurrent": [[op, i] for op, i in g.recurrent], "concat": list(g.concat)}


def recurrent_from_dict(d: dict) -> RecurrentGenotype:
    """A recurrent genotype from its JSON dict ({"recurrent": [[activation, input], ...], "concat": [...]})."""
    if not isinstance(d, dict):
        raise GenotypeError(f"recurrent genotype: expected a JSON object, got {type(d).__name__}")
    if "normal" in d or any(str(k).startswith(("normal/", "reduce/")) for k in d):
        raise GenotypeError("recurrent genotype: this is a convolutional genotype (it has 'normal' cells)")
    for field in RecurrentGenotype._fields:
        if field not in d:
            raise GenotypeError(f"recurrent genotype field '{field}' is missing")
    g = validate_recurrent(RecurrentGenotype(d["recurrent"], d["concat"]))
    return _as_recurrent(g.recurrent, g.concat)


def is_recurrent_dict(d) -> bool:
    """Whether a parsed genotype JSON holds a recurrent cell (rather than a convolutional genotype)."""
    return isinstance(d, dict) and "recurrent" in d


def save_recurrent(g: RecurrentGenotype, path: str | os.PathLike) -> None:
    """Write a recurrent genotype as JSON (atomically: a reader never sees half a file)."""
    atomic_write(path, json.dumps(recurrent_to_dict(validate_recurrent(g)), indent=2) + "\n")


def load_recurrent(path_or_name) -> RecurrentGenotype:
    """A recurrent genotype from a registry name (e.g. 'RNN_DARTS_V2'), a RecurrentGenotype, a dict or a JSON file."""
    if isinstance(path_or_name, RecurrentGenotype):
        g = validate_recurrent(path_or_name)
        return _as_recurrent(g.recurrent, g.concat)
    if isinstance(path_or_name, dict):
        return recurrent_from_dict(path_or_name)
    key = str(path_or_name)
    if key in RNN_GENOTYPES:
        return RNN_GENOTYPES[key]
    if key in GENOTYPES:
        raise GenotypeError(f"genotype {key!r} is a convolutional cell; recurrent cells are "
                            f"{', '.join(RNN_GENOTYPES)}")
    if not os.path.exists(key):
        raise GenotypeError(f"recurrent genotype {key!r}: neither a known name ({', '.join(RNN_GENOTYPES)}) "
                            f"nor an existing file")
    return read_file(key, recurrent_from_dict)


def format_recurrent(g: RecurrentGenotype) -> str:
    """The original code's repr (a contiguous concat written as a range, as its genotypes.py does)."""
    edges = "[" + ", ".join(f"('{op}', {i})" for op, i in g.recurrent) + "]"
    c = list(g.concat)
    concat = f"range({c[0]}, {c[-1] + 1})" if len(c) > 1 and c == list(range(c[0], c[-1] + 1)) else str(c)
    return f"Genotype(recurrent={edges}, concat={concat})"
