"""Drawings: cells with graphviz (PNG, SVG or PDF), softmaxed alphas with matplotlib.

The only module that imports graphviz and matplotlib (the ``viz`` extra).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .genotype import PRIMITIVES, RNN_PRIMITIVES, RNN_STEPS, Genotype, RecurrentGenotype, steps_for_edges

FORMATS = ("png", "svg", "pdf")


class DrawingError(RuntimeError):
    """Drawing is impossible here (missing package or `dot` binary, unknown format)."""


def _graphviz():
    try:
        import graphviz
    except ImportError:
        raise DrawingError("drawing cells needs the 'graphviz' package: pip install 'dist-darts[viz]'") from None
    return graphviz


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DrawingError("plots need matplotlib: pip install 'dist-darts[viz]'") from None
    return plt


def _node_name(index: int) -> str:
    return {0: "c_{k-2}", 1: "c_{k-1}"}.get(index, str(index - 2))


def _digraph(path: Path):
    """An empty left-to-right graph in the original's style, for a file whose suffix names the format."""
    graphviz = _graphviz()
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise DrawingError(f"cannot draw to {path}: use a .png, .svg or .pdf file name")
    g = graphviz.Digraph(
        format=fmt,
        edge_attr=dict(fontsize="20", fontname="times"),
        node_attr=dict(style="filled", shape="rect", align="center", fontsize="20", height="0.5", width="0.5",
                       penwidth="2", fontname="times"),
        engine="dot",
    )
    g.body.append("rankdir=LR")
    return g


def _render(g, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        g.render(outfile=str(path), cleanup=True)
    except _graphviz().ExecutableNotFound:
        raise DrawingError("drawing cells needs Graphviz's `dot` program: apt-get install graphviz") from None
    return path


def draw_cell(edges, concat, path: str | os.PathLike, title: str = "") -> Path:
    """Render one cell; the format comes from the file suffix (.png, .svg or .pdf)."""
    path = Path(path)
    g = _digraph(path)
    if title:
        g.attr(label=title, fontsize="24", fontname="times")
    g.node("c_{k-2}", fillcolor="darkseagreen2")
    g.node("c_{k-1}", fillcolor="darkseagreen2")
    steps = len(edges) // 2
    for i in range(steps):
        g.node(str(i), fillcolor="lightblue")
    for k, (op, j) in enumerate(edges):
        g.edge(_node_name(j), str(k // 2), label=op, fillcolor="gray")
    g.node("c_{k}", fillcolor="palegoldenrod")
    for i in concat:
        g.edge(_node_name(i), "c_{k}", fillcolor="gray")
    return _render(g, path)


def draw_genotype(g: Genotype, prefix: str | os.PathLike, fmt: str = "png") -> list[Path]:
    """Draw the normal and reduction cells to ``{prefix}_normal.{fmt}`` and ``{prefix}_reduce.{fmt}``."""
    prefix = str(prefix)
    return [
        draw_cell(g.normal, g.normal_concat, f"{prefix}_normal.{fmt}", "Normal cell"),
        draw_cell(g.reduce, g.reduce_concat, f"{prefix}_reduce.{fmt}", "Reduction cell"),
    ]


def edge_labels(steps: int = 4) -> list[str]:
    return [f"{_node_name(j)}→{i}" for i in range(steps) for j in range(2 + i)]


def _heatmap(fig, ax, alphas: torch.Tensor, ops: list, rows: list, title: str) -> None:
    """Softmaxed alphas (edge x op) as an annotated heat map on `ax`."""
    w = torch.softmax(alphas.detach().float().cpu(), dim=-1).numpy()
    im = ax.imshow(w, cmap="viridis", vmin=0.0, vmax=max(float(w.max()), 1e-6), aspect="auto")
    ax.set_xticks(range(len(ops)), ops, rotation=45, ha="right")
    ax.set_yticks(range(w.shape[0]), rows)
    ax.set_title(title)
    for (r, c), v in np.ndenumerate(w):
        ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7,
                color="black" if v > 0.6 * w.max() else "white")
    fig.colorbar(im, ax=ax, fraction=0.046)


def _save(fig, plt, path: Path, title: str) -> Path:
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_alphas(alphas_normal: torch.Tensor, alphas_reduce: torch.Tensor, path: str | os.PathLike,
                title: str = "") -> Path:
    """Heat maps of the softmaxed alphas (edge x op) of both cell types, annotated with the weights."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(14, 0.45 * alphas_normal.shape[0] + 2.5))
    for ax, alphas, name in ((axes[0], alphas_normal, "normal"), (axes[1], alphas_reduce, "reduce")):
        _heatmap(fig, ax, alphas, PRIMITIVES, edge_labels(steps_for_edges(alphas.shape[0])), f"{name} cell")
    return _save(fig, plt, path, title)


def plot_selection(seeds: list[int], top1: list[float], winner: int, path: str | os.PathLike) -> Path:
    """Bar chart of each seed's selection-retrain accuracy, the winner highlighted."""
    plt = _pyplot()
    path = Path(path)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(seeds) + 2), 3.5))
    ax.bar([str(s) for s in seeds], top1, color=["tab:orange" if s == winner else "tab:blue" for s in seeds])
    ax.set_xlabel("search seed")
    ax.set_ylabel("selection top-1 (%)")
    low = min(top1)
    ax.set_ylim(max(0.0, low - 5.0), min(100.0, max(top1) + 2.0))
    ax.set_title("selection retrain per seed (winner in orange)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_recurrent_cell(g: RecurrentGenotype, path: str | os.PathLike, title: str = "") -> Path:
    """Render a recurrent cell as the original's rnn/visualize.py: x_{t} and h_{t-1} into node 0, node i + 1
    from its input by its activation, h_{t} from the averaged nodes (its concat; nodes 1..8 for DARTS cells)."""
    path = Path(path)
    d = _digraph(path)
    if title:
        d.attr(label=title, fontsize="24", fontname="times")
    d.node("x_{t}", fillcolor="darkseagreen2")
    d.node("h_{t-1}", fillcolor="darkseagreen2")
    d.node("0", fillcolor="lightblue")
    d.edge("x_{t}", "0", fillcolor="gray")
    d.edge("h_{t-1}", "0", fillcolor="gray")
    for i in range(1, len(g.recurrent) + 1):
        d.node(str(i), fillcolor="lightblue")
    for i, (op, j) in enumerate(g.recurrent):
        d.edge(str(j), str(i + 1), label=op, fillcolor="gray")
    d.node("h_{t}", fillcolor="palegoldenrod")
    for i in g.concat:
        d.edge(str(i), "h_{t}", fillcolor="gray")
    return _render(d, path)


def recurrent_edge_labels(steps: int = RNN_STEPS) -> list[str]:
    """Row names of the (36, 5) recurrent alphas: state j -> node i, for i = 1..steps and j < i."""
    return [f"{j}→{i}" for i in range(1, steps + 1) for j in range(i)]


def plot_recurrent_alphas(alphas: torch.Tensor, path: str | os.PathLike, title: str = "") -> Path:
    """Heat map of the softmaxed recurrent alphas (36 edges x 5 activations), annotated with the weights."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = recurrent_edge_labels()
    if tuple(alphas.shape) != (len(labels), len(RNN_PRIMITIVES)):
        raise DrawingError(f"recurrent alphas must have shape ({len(labels)}, {len(RNN_PRIMITIVES)}), "
                           f"got {tuple(alphas.shape)}")
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(labels) + 2))
    _heatmap(fig, ax, alphas, RNN_PRIMITIVES, labels, "recurrent cell")
    return _save(fig, plt, path, title)
