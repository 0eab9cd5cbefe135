"""Drawings: cells with graphviz (PNG, SVG or PDF), softmaxed alphas with matplotlib.

The only module that imports graphviz and matplotlib (the ``viz`` extra).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .genotype import PRIMITIVES, Genotype, steps_for_edges

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


def draw_cell(edges, concat, path: str | os.PathLike, title: str = "") -> Path:
    """Render one cell; the format comes from the file suffix (.png, .svg or .pdf)."""
    graphviz = _graphviz()
    path = Path(path)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        g.render(outfile=str(path), cleanup=True)
    except graphviz.ExecutableNotFound:
        raise DrawingError("drawing cells needs Graphviz's `dot` program: apt-get install graphviz") from None
    return path


def draw_genotype(g: Genotype, prefix: str | os.PathLike, fmt: str = "png") -> list[Path]:
    """Draw the normal and reduction cells to ``{prefix}_normal.{fmt}`` and ``{prefix}_reduce.{fmt}``."""
    prefix = str(prefix)
    return [
        draw_cell(g.normal, g.normal_concat, f"{prefix}_normal.{fmt}", "Normal cell"),
        draw_cell(g.reduce, g.reduce_concat, f"{prefix}_reduce.{fmt}", "Reduction cell"),
    ]


def edge_labels(steps: int = 4) -> list[str]:
    return [f"{_node_name(j)}→{i}" for i in range(steps) for j in range(2 + i)]


def plot_alphas(alphas_normal: torch.Tensor, alphas_reduce: torch.Tensor, path: str | os.PathLike,
                title: str = "") -> Path:
    """Heat maps of the softmaxed alphas (edge x op) of both cell types, annotated with the weights."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(14, 0.45 * alphas_normal.shape[0] + 2.5))
    for ax, alphas, name in ((axes[0], alphas_normal, "normal"), (axes[1], alphas_reduce, "reduce")):
        w = torch.softmax(alphas.detach().float().cpu(), dim=-1).numpy()
        im = ax.imshow(w, cmap="viridis", vmin=0.0, vmax=max(float(w.max()), 1e-6), aspect="auto")
        ax.set_xticks(range(len(PRIMITIVES)), PRIMITIVES, rotation=45, ha="right")
        ax.set_yticks(range(w.shape[0]), edge_labels(steps_for_edges(w.shape[0])))
        ax.set_title(f"{name} cell")
        for (r, c), v in np.ndenumerate(w):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if v > 0.6 * w.max() else "white")
        fig.colorbar(im, ax=ax, fraction=0.046)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path



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
