"""NAS-Bench-201 arch strings: parse, format, derive from alphas, JSON (``{"arch_str": ...}``) and drawing.

The benchmark writes a cell as ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``: one ``|...|`` group per node 1..3, one
``op~j`` per edge from node j. Every cell of the space lists all six edges in that order (``none`` included), so
the strings here are exactly those and the benchmark's files are looked up by plain string equality.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import torch

from ..cnn.genotype import GenotypeError, read_file
from ...runfolder import atomic_write

OPS = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]  # the benchmark's order
NODES = 4
# (node, input) of each edge, in the order of the alpha rows and of the arch string (the authors' sorted "i<-j")
EDGES = [(i, j) for i in range(1, NODES) for j in range(i)]


def format_arch(ops: Sequence[str]) -> str:
    """The arch string of the six edges' ops (in EDGES order)."""
    if len(ops) != len(EDGES) or any(op not in OPS for op in ops):
        raise GenotypeError(f"NAS-Bench-201 cell: needs {len(EDGES)} ops from {', '.join(OPS)}, got {list(ops)!r}")
    nodes, k = [], 0
    for i in range(1, NODES):
        nodes.append("|" + "|".join(f"{ops[k + j]}~{j}" for j in range(i)) + "|")
        k += i
    return "+".join(nodes)


def parse_arch(arch_str: str) -> list[str]:
    """The six edges' ops (in EDGES order) of an arch string; one GenotypeError line for anything else."""
    def bad(why: str) -> GenotypeError:
        return GenotypeError(f"NAS-Bench-201 arch string {arch_str!r}: {why} (expected e.g. "
                             f"|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|"
                             f"nor_conv_3x3~2|)")

    if not isinstance(arch_str, str):
        raise GenotypeError(f"NAS-Bench-201 arch string: expected a string, got {type(arch_str).__name__}")
    nodes = arch_str.strip().split("+")
    if len(nodes) != NODES - 1:
        raise bad(f"needs {NODES - 1} nodes joined by '+', found {len(nodes)}")
    ops = []
    for i, node in enumerate(nodes, start=1):
        if len(node) < 2 or node[0] != "|" or node[-1] != "|":
            raise bad(f"node {i} must be written |op~j|...|")
        edges = node[1:-1].split("|")
        if len(edges) != i:
            raise bad(f"node {i} needs {i} edges (one from each earlier node), found {len(edges)}")
        for j, edge in enumerate(edges):
            op, _, source = edge.partition("~")
            if op not in OPS:
                raise bad(f"unknown op {op!r} (known: {', '.join(OPS)})")
            if source != str(j):
                raise bad(f"node {i}'s edge {j + 1} must come from node {j}, found {edge!r}")
            ops.append(op)
    return ops


def derive(alphas: torch.Tensor) -> str:
    """The cell of raw alphas (len(EDGES) x len(OPS)): on each edge the op of largest alpha, `none` included (the
    authors' rule; ties go to the earlier op, as torch's argmax). Softmax, sigmoid or Dirichlet mean of the alphas
    rank the ops alike, so every method derives its cell this way."""
    if tuple(alphas.shape) != (len(EDGES), len(OPS)):
        raise GenotypeError(f"NAS-Bench-201 alphas: expected shape ({len(EDGES)}, {len(OPS)}), "
                            f"got {tuple(alphas.shape)}")
    return format_arch([OPS[i] for i in alphas.detach().cpu().argmax(dim=-1).tolist()])


# --- JSON -----------------------------------------------------------------------------------------------

def to_dict(arch_str: str) -> dict:
    return {"arch_str": format_arch(parse_arch(arch_str))}


def is_arch_dict(d) -> bool:
    """Whether a parsed genotype JSON holds a NAS-Bench-201 cell."""
    return isinstance(d, dict) and "arch_str" in d


def from_dict(d: dict) -> str:
    if not is_arch_dict(d):
        raise GenotypeError("NAS-Bench-201 genotype: expected a JSON object with the key 'arch_str'")
    return format_arch(parse_arch(d["arch_str"]))


def save(arch_str: str, path: str | os.PathLike) -> None:
    """Write genotype.json ({"arch_str": ...}) atomically: a reader never sees half a file."""
    atomic_write(path, json.dumps(to_dict(arch_str), indent=2) + "\n")


def load(arch_or_path) -> str:
    """The arch string of an arch string, a {"arch_str": ...} dict or a genotype.json file."""
    if isinstance(arch_or_path, dict):
        return from_dict(arch_or_path)
    key = str(arch_or_path)
    if key.lstrip().startswith("|"):
        return format_arch(parse_arch(key))
    if not os.path.exists(key):
        raise GenotypeError(f"NAS-Bench-201 genotype {key!r}: neither an arch string (|op~0|+...) nor an existing "
                            "file")
    return read_file(key, from_dict)


def draw(arch_str: str, path: str | os.PathLike, title: str = ""):
    """Draw the cell (graphviz; the format from the suffix: .png, .svg or .pdf); `none` edges carry nothing and
    are left out. Returns the path."""
    from ...visualize import draw_dag_cell
    edges = [(op, j, i) for op, (i, j) in zip(parse_arch(arch_str), EDGES) if op != "none"]
    return draw_dag_cell(edges, NODES, path, title)
