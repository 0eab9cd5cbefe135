"""DARTS genotypes: the cell encoding, the published cells, derivation from alphas, JSON and NNI-dict I/O.

A genotype lists, for each intermediate node of a cell, its two incoming edges as ``(op, input)`` pairs.
Input 0 is c_{k-2}, input 1 is c_{k-1}, input ``2 + i`` is intermediate node ``i``. This is the encoding of
the original DARTS code, and NNI's architecture dict uses the same input numbering (its node ids start at 2).
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple, Sequence

import torch

from ...runfolder import atomic_write

PRIMITIVES = [
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
]

NONE_INDEX = PRIMITIVES.index("none")


def without_none(t: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """t with its 'none' column (the last dimension's) set to `fill`: the op set of a method that searches without
    'none' (FairDARTS, DrNAS), kept in the alphas' 8 columns so every genotype and alpha file keeps its format."""
    return t.masked_fill(torch.arange(t.shape[-1], device=t.device) == NONE_INDEX, fill)


# Ops an evaluation cell may use: the search primitives (less 'none') plus the two NASNet/AmoebaNet ones.
EVAL_OPS = PRIMITIVES[1:] + ["sep_conv_7x7", "conv_7x1_1x7"]

STEPS = 4  # intermediate nodes of a DARTS search cell
NUM_EDGES = sum(2 + i for i in range(STEPS))  # 14


class GenotypeError(ValueError):
    """A genotype, genotype file or NNI architecture dict that cannot be used; the message names the field."""


class Genotype(NamedTuple):
    normal: list
    normal_concat: list
    reduce: list
    reduce_concat: list


def _as_genotype(normal, normal_concat, reduce, reduce_concat) -> Genotype:
    return Genotype(
        normal=[(str(op), int(i)) for op, i in normal],
        normal_concat=[int(i) for i in normal_concat],
        reduce=[(str(op), int(i)) for op, i in reduce],
        reduce_concat=[int(i) for i in reduce_concat],
    )


NASNet = _as_genotype(
    normal=[("sep_conv_5x5", 1), ("sep_conv_3x3", 0), ("sep_conv_5x5", 0), ("sep_conv_3x3", 0),
            ("avg_pool_3x3", 1), ("skip_connect", 0), ("avg_pool_3x3", 0), ("avg_pool_3x3", 0),
            ("sep_conv_3x3", 1), ("skip_connect", 1)],
    normal_concat=[2, 3, 4, 5, 6],
    reduce=[("sep_conv_5x5", 1), ("sep_conv_7x7", 0), ("max_pool_3x3", 1), ("sep_conv_7x7", 0),
            ("avg_pool_3x3", 1), ("sep_conv_5x5", 0), ("skip_connect", 3), ("avg_pool_3x3", 2),
            ("sep_conv_3x3", 2), ("max_pool_3x3", 1)],
    reduce_concat=[4, 5, 6],
)

AmoebaNet = _as_genotype(
    normal=[("avg_pool_3x3", 0), ("max_pool_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_5x5", 2),
            ("sep_conv_3x3", 0), ("avg_pool_3x3", 3), ("sep_conv_3x3", 1), ("skip_connect", 1),
            ("skip_connect", 0), ("avg_pool_3x3", 1)],
    normal_concat=[4, 5, 6],
    reduce=[("avg_pool_3x3", 0), ("sep_conv_3x3", 1), ("max_pool_3x3", 0), ("sep_conv_7x7", 2),
            ("sep_conv_7x7", 0), ("avg_pool_3x3", 1), ("max_pool_3x3", 0), ("max_pool_3x3", 1),
            ("conv_7x1_1x7", 0), ("sep_conv_3x3", 5)],
    reduce_concat=[3, 4, 6],
)

DARTS_V1 = _as_genotype(
    normal=[("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
            ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)],
    reduce_concat=[2, 3, 4, 5],
)

DARTS_V2 = _as_genotype(
    normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
    reduce_concat=[2, 3, 4, 5],
)

DARTS = DARTS_V2

PC_DARTS = _as_genotype(
    normal=[("sep_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 0), ("dil_conv_3x3", 1),
            ("sep_conv_5x5", 0), ("sep_conv_3x3", 1), ("avg_pool_3x3", 0), ("dil_conv_3x3", 1)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("sep_conv_5x5", 1), ("max_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_5x5", 2),
            ("sep_conv_3x3", 0), ("sep_conv_3x3", 3), ("sep_conv_3x3", 1), ("sep_conv_3x3", 2)],
    reduce_concat=[2, 3, 4, 5],
)

PC_DARTS_IMAGENET = _as_genotype(
    normal=[("skip_connect", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 0), ("skip_connect", 1),
            ("sep_conv_3x3", 1), ("sep_conv_3x3", 3), ("sep_conv_3x3", 1), ("dil_conv_5x5", 4)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("sep_conv_3x3", 0), ("skip_connect", 1), ("dil_conv_5x5", 2), ("max_pool_3x3", 1),
            ("sep_conv_3x3", 2), ("sep_conv_3x3", 1), ("sep_conv_5x5", 0), ("sep_conv_3x3", 3)],
    reduce_concat=[2, 3, 4, 5],
)

# Cells of the anti-collapse methods, as their authors' repositories define them (searched on CIFAR-10)
PDARTS = _as_genotype(  # chenxin061/pdarts, genotypes.py: PDARTS
    normal=[("skip_connect", 0), ("dil_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("sep_conv_3x3", 3), ("sep_conv_3x3", 0), ("dil_conv_5x5", 4)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("avg_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_3x3", 0), ("dil_conv_5x5", 2),
            ("max_pool_3x3", 0), ("dil_conv_3x3", 1), ("dil_conv_3x3", 1), ("dil_conv_5x5", 3)],
    reduce_concat=[2, 3, 4, 5],
)

SDARTS_RS = _as_genotype(  # xiangning-chen/SmoothDARTS, sota/cnn/genotypes.py: c10_s5_random
    normal=[("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_5x5", 1), ("skip_connect", 0),
            ("sep_conv_3x3", 3), ("skip_connect", 1), ("sep_conv_3x3", 1), ("dil_conv_3x3", 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("sep_conv_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
            ("dil_conv_5x5", 3), ("max_pool_3x3", 0), ("sep_conv_3x3", 2), ("sep_conv_5x5", 3)],
    reduce_concat=[2, 3, 4, 5],
)

DRNAS = _as_genotype(  # xiangning-chen/DrNAS, DARTS-space/genotypes.py: DrNAS_cifar10
    normal=[("sep_conv_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_3x3", 1), ("sep_conv_3x3", 2),
            ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 2), ("dil_conv_5x5", 3)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("sep_conv_5x5", 1), ("dil_conv_5x5", 2), ("sep_conv_5x5", 1),
            ("sep_conv_5x5", 1), ("dil_conv_5x5", 3), ("skip_connect", 4), ("sep_conv_5x5", 1)],
    reduce_concat=[2, 3, 4, 5],
)

DARTS_MINUS = _as_genotype(  # Meituan-AutoML/DARTS-, src/eval/genotypes.py: cifar10_s0_0 (= cifar10_s0_best)
    normal=[("sep_conv_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_3x3", 1), ("dil_conv_3x3", 2),
            ("skip_connect", 1), ("sep_conv_3x3", 0), ("skip_connect", 1), ("sep_conv_3x3", 0)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("sep_conv_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
            ("skip_connect", 2), ("skip_connect", 3), ("skip_connect", 2), ("skip_connect", 3)],
    reduce_concat=[2, 3, 4, 5],
)

GENOTYPES = {
    "DARTS_V1": DARTS_V1,
    "DARTS_V2": DARTS_V2,
    "DARTS": DARTS,
    "PC_DARTS": PC_DARTS,
    "PC_DARTS_IMAGENET": PC_DARTS_IMAGENET,
    "PDARTS": PDARTS,
    "SDARTS_RS": SDARTS_RS,
    "DRNAS": DRNAS,
    "DARTS_MINUS": DARTS_MINUS,
    "NASNet": NASNet,
    "AmoebaNet": AmoebaNet,
}


def validate(g: Genotype) -> Genotype:
    """Check a genotype's structure; raise GenotypeError naming the bad field, else return it."""
    for cell in ("normal", "reduce"):
        edges = getattr(g, cell)
        if not isinstance(edges, (list, tuple)) or not edges or len(edges) % 2:
            raise GenotypeError(f"genotype field '{cell}': needs a non-empty list of (op, input) pairs, "
                                f"two per node; got {edges!r}")
        for k, edge in enumerate(edges):
            if not isinstance(edge, (list, tuple)) or len(edge) != 2:
                raise GenotypeError(f"genotype field '{cell}[{k}]': needs an (op, input) pair, got {edge!r}")
            op, inp = edge
            if op not in EVAL_OPS:
                raise GenotypeError(f"genotype field '{cell}[{k}]': unknown op {op!r} "
                                    f"(known: {', '.join(EVAL_OPS)})")
            node = k // 2
            if not isinstance(inp, int) or isinstance(inp, bool) or not 0 <= inp < 2 + node:
                raise GenotypeError(f"genotype field '{cell}[{k}]': input {inp!r} out of range for node {node} "
                                    f"(must be 0..{1 + node})")
        concat = getattr(g, f"{cell}_concat")
        n_states = 2 + len(edges) // 2
        if (not isinstance(concat, (list, tuple)) or not concat
                or any(not isinstance(i, int) or not 2 <= i < n_states for i in concat)):
            raise GenotypeError(f"genotype field '{cell}_concat': needs node indices in 2..{n_states - 1}, "
                                f"got {concat!r}")
    return g


def derive(alphas_normal: torch.Tensor, alphas_reduce: torch.Tensor,
           betas_normal: torch.Tensor | None = None, betas_reduce: torch.Tensor | None = None,
           steps: int = STEPS, max_skip: int | None = None, mixing: str = "softmax") -> Genotype:
    """Discretise raw (un-softmaxed) alphas of shape (edges, len(PRIMITIVES)) into a genotype.

    As in the original: per node keep the 2 incoming edges whose strongest non-'none' op weighs most, and
    on each the strongest non-'none' op. With PC-DARTS edge-normalisation betas (raw, one per edge), each
    edge's op weights are first scaled by the softmax of the betas over that node's incoming edges.
    With `max_skip` (P-DARTS's rule), the normal cell keeps at most that many skip_connects: while it holds more,
    the kept skip_connect of least weight is struck off its edge and the cell derived again (that edge then offers
    its next op, or loses its place to another edge). `mixing` "sigmoid" (FairDARTS) ranks independent sigmoids
    of the alphas instead of their softmax; "softmax-without-none" the softmax over the ops other than 'none'
    (DrNAS, whose search has no 'none'); "weights" takes the tensors as op weights already (DARTS-PT's projected
    weights).
    """
    edges = sum(2 + i for i in range(steps))
    for name, a in (("alphas_normal", alphas_normal), ("alphas_reduce", alphas_reduce)):
        if tuple(a.shape) != (edges, len(PRIMITIVES)):
            raise GenotypeError(f"{name}: expected shape ({edges}, {len(PRIMITIVES)}), got {tuple(a.shape)}")
    if max_skip is not None and max_skip < 0:
        raise GenotypeError(f"max_skip: needs a count of 0 or more, got {max_skip}")

    transforms = {"softmax": lambda a: torch.softmax(a, dim=-1), "sigmoid": torch.sigmoid, "weights": torch.clone,
                  "softmax-without-none": lambda a: torch.softmax(without_none(a, float("-inf")), dim=-1)}
    if mixing not in transforms:
        raise GenotypeError(f"mixing: {', '.join(transforms)}; got {mixing!r}")

    def op_weights(alphas, betas):
        weights = transforms[mixing](alphas.detach().float().cpu())
        if betas is not None:
            weights = weights * edge_weights(betas.detach().float().cpu(), steps).unsqueeze(-1)
        weights[:, NONE_INDEX] = float("-inf")  # 'none' never wins an edge nor ranks one
        return weights

    def parse(weights):
        """The cell's (op, input) pairs and, for each, its row of `weights`."""
        gene, rows, start = [], [], 0
        for node in range(steps):
            w = weights[start:start + node + 2]
            strength, best_op = w.max(dim=1)
            # stable sort by strength, as Python's sorted() in the original: ties keep the lower input
            order = sorted(range(node + 2), key=lambda j: -strength[j].item())[:2]
            gene += [(PRIMITIVES[int(best_op[j])], j) for j in order]
            rows += [start + j for j in order]
            start += node + 2
        return gene, rows

    normal_weights = op_weights(alphas_normal, betas_normal)
    normal, rows = parse(normal_weights)
    skip = PRIMITIVES.index("skip_connect")
    while max_skip is not None and sum(op == "skip_connect" for op, _ in normal) > max_skip:
        kept = [row for (op, _), row in zip(normal, rows) if op == "skip_connect"]
        normal_weights[min(kept, key=lambda row: normal_weights[row, skip].item()), skip] = float("-inf")
        normal, rows = parse(normal_weights)
    concat = list(range(2, 2 + steps))
    return Genotype(normal, concat, parse(op_weights(alphas_reduce, betas_reduce))[0], concat)


def steps_for_edges(num_edges: int) -> int:
    """Intermediate nodes of a cell with this many mixed edges (node i has 2 + i inputs)."""
    steps = 0
    while sum(2 + i for i in range(steps)) < num_edges:
        steps += 1
    if sum(2 + i for i in range(steps)) != num_edges:
        raise GenotypeError(f"alphas: {num_edges} edges is no whole number of cell nodes")
    return steps


def edge_weights(betas: torch.Tensor, steps: int = STEPS) -> torch.Tensor:
    """PC-DARTS edge normalisation: softmax of the betas over each node's incoming edges."""
    parts, start = [], 0
    for node in range(steps):
        parts.append(torch.softmax(betas[start:start + node + 2], dim=-1))
        start += node + 2
    return torch.cat(parts)


# --- JSON -----------------------------------------------------------------------------------------------

def to_dict(g: Genotype) -> dict:
    return {"normal": [[op, i] for op, i in g.normal], "normal_concat": list(g.normal_concat),
            "reduce": [[op, i] for op, i in g.reduce], "reduce_concat": list(g.reduce_concat)}


def from_dict(d: dict) -> Genotype:
    """A genotype from its JSON dict, or from an NNI architecture dict (detected by its 'normal/' keys)."""
    if not isinstance(d, dict):
        raise GenotypeError(f"genotype: expected a JSON object, got {type(d).__name__}")
    if any(str(k).startswith(("normal/", "reduce/")) for k in d):
        return from_nni_dict(d)
    from ..rnn.genotype import is_recurrent_dict
    if is_recurrent_dict(d):
        raise GenotypeError("genotype: this is a recurrent cell (it has 'recurrent' edges): use it with --space rnn")
    if "arch_str" in d:
        raise GenotypeError("genotype: this is a NAS-Bench-201 cell (it has an 'arch_str'): use it with --space nb201")
    for field in Genotype._fields:
        if field not in d:
            raise GenotypeError(f"genotype field '{field}' is missing")
    return _as_genotype(*validate(Genotype(*(d[f] for f in Genotype._fields))))


def save(g: Genotype, path: str | os.PathLike) -> None:
    """Write a genotype as JSON (atomically: a reader never sees half a file)."""
    atomic_write(path, json.dumps(to_dict(validate(g)), indent=2) + "\n")


def load(path_or_name) -> Genotype:
    """A genotype from a registry name (e.g. 'DARTS_V2'), a Genotype, or a JSON file (ours or NNI's dict)."""
    if isinstance(path_or_name, Genotype):
        return validate(path_or_name)
    if isinstance(path_or_name, dict):
        return from_dict(path_or_name)
    key = str(path_or_name)
    if key in GENOTYPES:
        return GENOTYPES[key]
    from ..rnn.genotype import RNN_GENOTYPES
    if key in RNN_GENOTYPES:
        raise GenotypeError(f"genotype {key!r} is a recurrent cell (--space rnn); convolutional cells are "
                            f"{', '.join(GENOTYPES)}")
    if not os.path.exists(key):
        raise GenotypeError(f"genotype {key!r}: neither a known name ({', '.join(GENOTYPES)}) nor an existing file")
    return read_file(key, from_dict)


def read_file(key: str, parse):
    """parse(the JSON object in file key), with every failure one GenotypeError line naming the file."""
    try:
        with open(key) as f:
            d = json.load(f)
    except json.JSONDecodeError as e:
        raise GenotypeError(f"genotype file {key}: bad JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except UnicodeDecodeError:
        raise GenotypeError(f"genotype file {key}: not a text JSON file") from None
    try:
        return parse(d)
    except GenotypeError as e:
        raise GenotypeError(f"genotype file {key}: {e}") from None


# --- NNI architecture dict ------------------------------------------------------------------------------

def to_nni_dict(g: Genotype) -> dict:
    """NNI's exported architecture dict ('normal/op_2_0': op, 'normal/input_2_0': [input], ...)."""
    validate(g)
    out = {}
    for cell in ("normal", "reduce"):
        edges = getattr(g, cell)
        if len(edges) != 2 * STEPS or list(getattr(g, f"{cell}_concat")) != list(range(2, 2 + STEPS)):
            raise GenotypeError(f"genotype field '{cell}': NNI's DARTS space has {STEPS} nodes concatenated "
                                f"in full; this genotype has {len(edges) // 2}")
        for k, (op, inp) in enumerate(edges):
            if op not in PRIMITIVES:
                raise GenotypeError(f"genotype field '{cell}[{k}]': op {op!r} is not in NNI's DARTS space")
            node, j = 2 + k // 2, k % 2
            out[f"{cell}/op_{node}_{j}"] = op
            out[f"{cell}/input_{node}_{j}"] = [inp]
    return out


def from_nni_dict(d: dict) -> Genotype:
    """A genotype from NNI's architecture dict; inputs may be ints or one-element lists."""
    if not isinstance(d, dict):
        raise GenotypeError(f"NNI architecture dict: expected a dict, got {type(d).__name__}")
    expected = {f"{cell}/{kind}_{node}_{j}" for cell in ("normal", "reduce") for kind in ("op", "input")
                for node in range(2, 2 + STEPS) for j in range(2)}
    unknown = sorted(set(map(str, d)) - expected)
    if unknown:
        raise GenotypeError(f"NNI architecture dict: unexpected key '{unknown[0]}' (the DARTS space has nodes "
                            f"2..{1 + STEPS}, two inputs each)")
    missing = sorted(expected - set(d))
    if missing:
        raise GenotypeError(f"NNI architecture dict: key '{missing[0]}' is missing (expected {STEPS} nodes "
                            f"per cell, two inputs each)")
    cells = {}
    for cell in ("normal", "reduce"):
        edges = []
        for node in range(2, 2 + STEPS):
            for j in range(2):
                key = f"{cell}/input_{node}_{j}"
                inp = d[key]
                if isinstance(inp, (list, tuple)):
                    if len(inp) != 1:
                        raise GenotypeError(f"NNI architecture dict: '{key}' must be one input, got {inp!r}")
                    inp = inp[0]
                if not isinstance(inp, int) or isinstance(inp, bool):
                    raise GenotypeError(f"NNI architecture dict: '{key}' must be an int, got {inp!r}")
                op = d[f"{cell}/op_{node}_{j}"]
                if op not in PRIMITIVES or op == "none":
                    raise GenotypeError(f"NNI architecture dict: '{cell}/op_{node}_{j}' has unknown op {op!r}")
                edges.append((op, inp))
        cells[cell] = edges
    concat = list(range(2, 2 + STEPS))
    return validate(Genotype(cells["normal"], concat, cells["reduce"], concat))


def format_genotype(g: Genotype) -> str:
    """The original code's repr, which users paste into their genotypes.py."""
    def cell(edges: Sequence) -> str:
        return "[" + ", ".join(f"('{op}', {i})" for op, i in edges) + "]"
    return (f"Genotype(normal={cell(g.normal)}, normal_concat={list(g.normal_concat)}, "
            f"reduce={cell(g.reduce)}, reduce_concat={list(g.reduce_concat)})")
