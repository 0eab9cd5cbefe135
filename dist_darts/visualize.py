"""Drawings: cells with graphviz (PNG, SVG or PDF), softmaxed alphas with matplotlib, and a search over its
epochs (a GIF with Pillow, or an MP4 with the `ffmpeg` program) from RUN/alphas and RUN/genotypes.

The only module that imports graphviz and matplotlib (the ``viz`` extra).
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .spaces.cnn import genotype as gt
from .spaces.cnn.genotype import PRIMITIVES, Genotype, steps_for_edges
from .spaces.rnn.genotype import RNN_PRIMITIVES, RNN_STEPS, RecurrentGenotype

FORMATS = ("png", "svg", "pdf")
log = logging.getLogger("dist_darts")


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


NO_DOT = "drawing cells needs Graphviz's `dot` program: apt-get install graphviz"


def _format(path: Path) -> str:
    """The drawing format a file name asks for."""
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise DrawingError(f"cannot draw to {path}: use a .png, .svg or .pdf file name")
    return fmt


def _digraph(fmt: str):
    """An empty left-to-right graph in the original's style."""
    graphviz = _graphviz()
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
        raise DrawingError(NO_DOT) from None
    return path


def _cell_graph(edges, concat, title: str, fmt: str):
    g = _digraph(fmt)
    if title:
        g.attr(label=title, fontsize="24", fontname="times")
    _add_cell(g, edges, concat)
    return g


def _add_cell(g, edges, concat, prefix: str = "") -> None:
    """The cell's nodes and edges into graph g; node ids start with prefix (two cells in one graph)."""
    def node(name, color):
        g.node(prefix + name, label=name, fillcolor=color)

    node("c_{k-2}", "darkseagreen2")
    node("c_{k-1}", "darkseagreen2")
    steps = len(edges) // 2
    for i in range(steps):
        node(str(i), "lightblue")
    for k, (op, j) in enumerate(edges):
        g.edge(prefix + _node_name(j), prefix + str(k // 2), label=op, fillcolor="gray")
    node("c_{k}", "palegoldenrod")
    for i in concat:
        g.edge(prefix + _node_name(i), prefix + "c_{k}", fillcolor="gray")


def draw_cell(edges, concat, path: str | os.PathLike, title: str = "") -> Path:
    """Render one cell; the format comes from the file suffix (.png, .svg or .pdf)."""
    path = Path(path)
    return _render(_cell_graph(edges, concat, title, _format(path)), path)


def cell_image(edges, concat, title: str = "") -> Image.Image:
    """One cell rendered by Graphviz as an in-memory RGB image."""
    try:
        png = _cell_graph(edges, concat, title, "png").pipe()
    except _graphviz().ExecutableNotFound:
        raise DrawingError(NO_DOT) from None
    return Image.open(io.BytesIO(png)).convert("RGB")


def cells_side_by_side(g: Genotype, title: str = "") -> Image.Image:
    """The normal and reduction cells of `g` next to each other on one white image (as NNI draws them)."""
    normal = cell_image(g.normal, g.normal_concat, "Normal cell")
    reduce = cell_image(g.reduce, g.reduce_concat, "Reduction cell")
    top = 40 if title else 0
    gap = 40
    canvas = Image.new("RGB", (normal.width + gap + reduce.width, top + max(normal.height, reduce.height)), "white")
    canvas.paste(normal, (0, top))
    canvas.paste(reduce, (normal.width + gap, top))
    if title:
        ImageDraw.Draw(canvas).text((10, 10), title, fill="black", font_size=24)
    return canvas


def draw_side_by_side(g: Genotype, path: str | os.PathLike, title: str = "") -> Path:
    """Draw both cells of `g` side by side into one image file: .svg and .pdf drawn by Graphviz as one graph, PNG
    (or any format PIL writes by suffix) pasted from the two cells' images."""
    path = Path(path)
    if path.suffix.lower() in (".svg", ".pdf"):  # vector formats: both cells as clusters of one graph
        both = _digraph(_format(path))
        if title:
            both.attr(label=title, labelloc="t", fontsize="24", fontname="times")
        for key, (edges, concat, name) in enumerate(((g.normal, g.normal_concat, "Normal cell"),
                                                     (g.reduce, g.reduce_concat, "Reduction cell"))):
            with both.subgraph(name=f"cluster_{key}") as cell:
                cell.attr(label=name, color="white")
                _add_cell(cell, edges, concat, prefix=f"cell{key}_")
        return _render(both, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        cells_side_by_side(g, title).save(path)
    except (ValueError, KeyError):  # PIL: no writer for this suffix
        raise DrawingError(f"cannot draw to {path}: use a .png or .jpg file name") from None
    return path


def draw_genotype(g: Genotype, prefix: str | os.PathLike, fmt: str = "png") -> list[Path]:
    """Draw the normal and reduction cells to ``{prefix}_normal.{fmt}`` and ``{prefix}_reduce.{fmt}``."""
    prefix = str(prefix)
    return [
        draw_cell(g.normal, g.normal_concat, f"{prefix}_normal.{fmt}", "Normal cell"),
        draw_cell(g.reduce, g.reduce_concat, f"{prefix}_reduce.{fmt}", "Reduction cell"),
    ]


def draw_dag_cell(edges, nodes: int, path: str | os.PathLike, title: str = "") -> Path:
    """Render a cell whose node 0 is its input and node `nodes - 1` its output (NAS-Bench-201's), from its
    (op, source node, target node) edges; the format comes from the file suffix (.png, .svg or .pdf)."""
    path = Path(path)
    d = _digraph(_format(path))
    if title:
        d.attr(label=title, fontsize="24", fontname="times")
    for i in range(nodes):
        d.node(str(i), fillcolor="darkseagreen2" if i == 0 else "palegoldenrod" if i == nodes - 1 else "lightblue")
    for op, j, i in edges:
        d.edge(str(j), str(i), label=op, fillcolor="gray")
    return _render(d, path)


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


def picked_cells(edges, num_edges: int) -> list[tuple[int, int]]:
    """(edge row, op column) of each (op, input) a cell keeps, in the (edges, PRIMITIVES) layout of its alphas."""
    steps = steps_for_edges(num_edges)
    if len(edges) != 2 * steps:
        raise DrawingError(f"the genotype has {len(edges) // 2} nodes per cell, the alphas {steps}")
    first_edge = [sum(2 + i for i in range(node)) for node in range(steps)]
    return [(first_edge[k // 2] + j, PRIMITIVES.index(op)) for k, (op, j) in enumerate(edges) if op in PRIMITIVES]


def alpha_figure(alphas_normal: torch.Tensor, alphas_reduce: torch.Tensor, title: str = "",
                 genotype: Genotype | None = None):
    """The figure of plot_alphas: softmaxed alphas (edge x op) of both cells, the genotype's picks boxed.

    The colour scale is centred on the uniform weight 1/len(PRIMITIVES) (white) and stretched separately
    below (blue) and above (red) it to the smallest and largest weight, so the differences of a few 1e-4 at
    the start of a search show as clearly as the 0.5s at its end.
    """
    plt = _pyplot()
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.patches import Rectangle

    if genotype is None:
        genotype = gt.derive(alphas_normal, alphas_reduce, steps=steps_for_edges(alphas_normal.shape[0]))
    picks = [picked_cells(edges, alphas_normal.shape[0]) for edges in (genotype.normal, genotype.reduce)]
    uniform = 1 / len(PRIMITIVES)
    fig, axes = plt.subplots(1, 2, figsize=(14, 0.45 * alphas_normal.shape[0] + 2.5))
    for ax, alphas, name, picked in zip(axes, (alphas_normal, alphas_reduce), ("normal", "reduce"), picks):
        w = torch.softmax(alphas.detach().float().cpu(), dim=-1).numpy()
        norm = TwoSlopeNorm(uniform, min(float(w.min()), uniform - 1e-6), max(float(w.max()), uniform + 1e-6))
        im = ax.imshow(w, cmap="RdBu_r", norm=norm, aspect="auto")
        ax.set_xticks(range(len(PRIMITIVES)), PRIMITIVES, rotation=45, ha="right")
        ax.set_yticks(range(w.shape[0]), edge_labels(steps_for_edges(w.shape[0])))
        ax.set_title(f"{name} cell (boxed: kept by the genotype)")
        digits = 2 if float(np.abs(w - uniform).max()) >= 0.01 else 4
        for (r, c), v in np.ndenumerate(w):
            ax.text(c, r, f"{v:.{digits}f}", ha="center", va="center", fontsize=7 if digits == 2 else 6,
                    color="white" if abs(float(norm(v)) - 0.5) > 0.35 else "black")
        for r, c in picked:
            ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2.5))
        fig.colorbar(im, ax=ax, fraction=0.046, label=f"softmax weight (white: uniform 1/{len(PRIMITIVES)})")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_alphas(alphas_normal: torch.Tensor, alphas_reduce: torch.Tensor, path: str | os.PathLike,
                title: str = "", genotype: Genotype | None = None) -> Path:
    """Save alpha_figure (the genotype's picks boxed; derived from the alphas when not given) to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = alpha_figure(alphas_normal, alphas_reduce, title, genotype)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def _figure_image(fig) -> Image.Image:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    _pyplot().close(fig)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


# --- a search over its epochs: RUN/alphas/epoch_NNN.pt and RUN/genotypes/epoch_NNN.json ----------------------

def epoch_files(folder: str | os.PathLike, suffix: str) -> list[tuple[int, Path]]:
    """(epoch, path) of every epoch_NNN{suffix} file in `folder`, in epoch order."""
    files = []
    for path in Path(folder).glob(f"epoch_*{suffix}"):
        number = path.name[len("epoch_"):-len(suffix)]
        if number.isdigit():
            files.append((int(number), path))
    return sorted(files)


def read_alphas(path: str | os.PathLike) -> dict:
    """The arch tensors of one epoch file (alphas_normal, alphas_reduce, and betas_* with partial channels)."""
    try:
        alphas = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for damaged or foreign files
        raise DrawingError(f"{path} is not an alphas file of a search ({' '.join(str(exc).split())[:120]})") from None
    if not isinstance(alphas, dict) or not {"alphas_normal", "alphas_reduce"} <= set(alphas):
        raise DrawingError(f"{path} is not an alphas file of a search: it has no alphas_normal and alphas_reduce")
    return alphas


def _alphas_folder(path: str | os.PathLike) -> Path:
    """RUN/alphas, whether given itself or as its run folder RUN."""
    path = Path(path)
    folder = path / "alphas" if (path / "alphas").is_dir() else path
    if not epoch_files(folder, ".pt"):
        raise DrawingError(f"{path} has no epoch_NNN.pt alphas files (a search writes them to RUN/alphas)")
    return folder


def plot_collapse(history: list[dict], output: str | os.PathLike) -> Path:
    """The collapse monitor of a search over its epochs (its history.json rows): parameter-free ops in the derived
    normal and reduction cells, and the alphas' Hessian eigenvalue where it was estimated (--hessian-every)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    measured = [(row["epoch"], row["hessian_eigenvalue"]) for row in history
                if row.get("hessian_eigenvalue") is not None]
    fig, axes = plt.subplots(1, 2 if measured else 1, figsize=(12 if measured else 6.5, 4), squeeze=False)
    ax = axes[0][0]
    for cell in ("normal", "reduce"):
        ax.plot(epochs, [row[f"param_free_{cell}"] for row in history], marker="o", label=f"{cell} cell")
    ax.set_ylim(-0.3, 8.3)
    ax.set_title("parameter-free ops in the derived cells (of 8)")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    if measured:
        ax = axes[0][1]
        ax.plot(*zip(*measured), marker="o", color="tab:red")
        ax.set_title("dominant Hessian eigenvalue of L_val in the alphas")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, plt, output, "")


def plot_alpha_history(alphas_dir: str | os.PathLike, output: str | os.PathLike) -> Path:
    """One image over the epochs of a search: each op's share of the softmaxed alphas (mean over the edges)
    per epoch, for the normal and the reduction cell. `alphas_dir` is RUN/alphas or RUN itself."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    files = epoch_files(_alphas_folder(alphas_dir), ".pt")
    epochs = [epoch for epoch, _ in files]
    shares = {"normal": [], "reduce": []}
    for _, path in files:
        alphas = read_alphas(path)
        for cell in shares:
            shares[cell].append(torch.softmax(alphas[f"alphas_{cell}"].float(), dim=-1).mean(0).numpy())
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
    for ax, (cell, rows) in zip(axes, shares.items()):
        rows = np.stack(rows)
        for k, op in enumerate(PRIMITIVES):
            ax.plot(epochs, rows[:, k], marker="o" if len(epochs) < 20 else None, label=op)
        ax.axhline(1 / len(PRIMITIVES), color="gray", linestyle="--", linewidth=1)
        ax.set_title(f"{cell} cell: share of each op (dashed: uniform)")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel("mean softmax(alpha) over the edges")
    axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, plt, output, "")


def _fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """`image` scaled to fit width x height (aspect kept), centred on a white canvas of exactly that size."""
    scale = min(width / image.width, height / image.height)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (width, height), "white")
    canvas.paste(image, ((width - image.width) // 2, (height - image.height) // 2))
    return canvas


def search_frames(run_dir: str | os.PathLike):
    """One RGB image per epoch of a search: both derived cells side by side above the alpha heat map
    (the heat map alone, with a warning, where Graphviz's `dot` is missing). Frames all have one size."""
    run = Path(run_dir)
    alphas = dict(epoch_files(_alphas_folder(run), ".pt"))
    genotypes = dict(epoch_files(run / "genotypes", ".json"))
    epochs = sorted(alphas.keys() & genotypes.keys())
    if not epochs:
        raise DrawingError(f"{run}: no epoch has both alphas/epoch_NNN.pt and genotypes/epoch_NNN.json")
    with_cells = True
    for epoch in epochs:
        arch = read_alphas(alphas[epoch])
        genotype = gt.load(genotypes[epoch])
        heat = _figure_image(alpha_figure(arch["alphas_normal"], arch["alphas_reduce"],
                                          f"epoch {epoch}: softmax(alphas)", genotype))
        if with_cells:
            try:
                cells = cells_side_by_side(genotype)
            except DrawingError as exc:
                log.warning("animation without cell drawings: %s", exc)
                with_cells = False
        if not with_cells:
            yield heat
            continue
        frame = Image.new("RGB", (heat.width, heat.width * 2 // 5 + heat.height), "white")
        frame.paste(_fit(cells, heat.width, heat.width * 2 // 5), (0, 0))
        frame.paste(heat, (0, heat.width * 2 // 5))
        yield frame


def animate(run_dir: str | os.PathLike, output: str | os.PathLike | None = None, frame_seconds: float = 1.0) -> Path:
    """Animate a finished (or running) search from its per-epoch files: a GIF, or an MP4 (needs `ffmpeg`),
    chosen by the suffix of `output` (default RUN/search.gif), one frame per epoch (see search_frames)."""
    output = Path(output) if output is not None else Path(run_dir) / "search.gif"
    fmt = output.suffix.lower()
    if fmt not in (".gif", ".mp4"):
        raise DrawingError(f"cannot animate to {output}: use a .gif or .mp4 file name")
    ffmpeg = shutil.which("ffmpeg")
    if fmt == ".mp4" and ffmpeg is None:
        raise DrawingError(f"cannot write {output}: an MP4 needs the `ffmpeg` program; write a .gif instead")
    output.parent.mkdir(parents=True, exist_ok=True)
    if fmt == ".gif":
        frames = [frame.convert("P", palette=Image.Palette.ADAPTIVE) for frame in search_frames(run_dir)]
        durations = [round(1000 * frame_seconds)] * len(frames)
        durations[-1] *= 3  # the final cells stay longer on screen before the loop restarts
        frames[0].save(output, save_all=True, append_images=frames[1:], duration=durations, loop=0)
        return output
    with tempfile.TemporaryDirectory() as tmp:
        for k, frame in enumerate(search_frames(run_dir)):
            frame.save(Path(tmp) / f"frame_{k:05d}.png")
        cmd = [ffmpeg, "-y", "-loglevel", "error", "-framerate", f"{1 / frame_seconds}",
               "-i", str(Path(tmp) / "frame_%05d.png"), "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2",  # x264: even sizes
               "-pix_fmt", "yuv420p", str(output)]
        done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise DrawingError(f"ffmpeg could not write {output}: {last}")
    return output


def plot_selection(seeds: list[int], scores: list[float], winner: int, path: str | os.PathLike,
                   label: str = "selection top-1 (%)") -> Path:
    """Bar chart of each seed's selection-retrain score (top-1, or perplexity), the winner highlighted."""
    plt = _pyplot()
    path = Path(path)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.8 * len(seeds) + 2), 3.5))
    bars = ax.bar([str(s) for s in seeds], scores, color=["tab:orange" if s == winner else "tab:blue" for s in seeds])
    ax.bar_label(bars, fmt="%.2f")  # the exact scores: the bars start at 0, so small gaps look as small as they are
    ax.set_xlabel("search seed")
    ax.set_ylabel(label)
    ax.set_ylim(0.0, 1.12 * max(scores))  # from zero: a bar's length is its score
    ax.set_title("selection retrain per seed\n(winner in orange)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_recurrent_cell(g: RecurrentGenotype, path: str | os.PathLike, title: str = "") -> Path:
    """Render a recurrent cell as the original's rnn/visualize.py: x_{t} and h_{t-1} into node 0, node i + 1
    from its input by its activation, h_{t} from the averaged nodes (its concat; nodes 1..8 for DARTS cells)."""
    path = Path(path)
    d = _digraph(_format(path))
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
