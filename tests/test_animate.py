"""Watching the alphas move: animations and plots over the per-epoch files of a real (tiny) search."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from dist_darts.spaces.cnn import genotype as gt
from dist_darts.visualize import (DrawingError, animate, cell_image, cells_side_by_side, draw_side_by_side, epoch_files,
                                  picked_cells, plot_alpha_history, plot_alphas)
from helpers import TINY_SEARCH, cli


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 2-epoch search on the embedded digits: RUN/alphas/epoch_00N.pt, RUN/genotypes/epoch_00N.json."""
    run = tmp_path_factory.mktemp("search")
    cli("search", *TINY_SEARCH, "--batch-size", "8", "--epochs", "2", "--steps-per-epoch", "2", "--output", str(run))
    return run


def test_animate_writes_a_multi_frame_gif(run, tmp_path):
    out = animate(run, tmp_path / "search.gif")
    with Image.open(out) as im:
        assert im.format == "GIF" and im.n_frames == 2
        assert im.size[0] > 500 and im.size[1] > 500


def test_animate_defaults_to_the_run_folder(run):
    assert animate(run) == run / "search.gif"
    with Image.open(run / "search.gif") as im:
        assert im.n_frames == 2


def test_without_dot_the_frames_are_heat_maps_alone(run, tmp_path, monkeypatch, caplog):
    with_cells = animate(run, tmp_path / "with.gif")
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot` on this PATH
    alone = animate(run, tmp_path / "alone.gif")
    assert "without cell drawings" in caplog.text
    with Image.open(with_cells) as a, Image.open(alone) as b:
        assert b.n_frames == 2 and b.size[0] == a.size[0] and b.size[1] < a.size[1]


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="no ffmpeg program")
def test_animate_mp4(run, tmp_path):
    assert (animate(run, tmp_path / "search.mp4").read_bytes()[4:8]) == b"ftyp"


def test_bad_output_and_empty_run(run, tmp_path):
    with pytest.raises(DrawingError, match="use a .gif or .mp4"):
        animate(run, tmp_path / "search.png")
    with pytest.raises(DrawingError, match="no epoch_NNN.pt alphas files"):
        animate(tmp_path, tmp_path / "x.gif")


def test_alpha_history_over_a_folder(run, tmp_path):
    assert [e for e, _ in epoch_files(run / "alphas", ".pt")] == [0, 1]
    for source in (run / "alphas", run):  # RUN/alphas or the run folder itself
        out = plot_alpha_history(source, tmp_path / "history.png")
        with Image.open(out) as im:
            assert im.format == "PNG" and im.size[0] > 800


def test_picked_ops_are_the_genotypes(run):
    g = gt.load(run / "genotypes" / "epoch_001.json")
    rows = picked_cells(g.normal, 14)
    assert len(rows) == 8
    # node 0's edges are rows 0-1, node 1's rows 2-4, node 2's 5-8, node 3's 9-13
    node_rows = [(0, 2)] * 2 + [(2, 5)] * 2 + [(5, 9)] * 2 + [(9, 14)] * 2
    assert all(lo <= r < hi for (r, _), (lo, hi) in zip(rows, node_rows))
    assert [gt.PRIMITIVES[c] for _, c in rows] == [op for op, _ in g.normal]


def test_alpha_plot_shows_differences_near_uniform(tmp_path):
    """Alphas within +-1e-3 (an early search: every weight ~0.125) still reach both ends of the colour scale."""
    alphas = 1e-3 * torch.linspace(-1, 1, 14 * 8).view(14, 8)
    with Image.open(plot_alphas(alphas, alphas.flip(0), tmp_path / "a.png")) as im:
        r, g, b = np.asarray(im.convert("RGB")).astype(int).transpose(2, 0, 1)
    assert ((r > 100) & (g < 40) & (b < 60)).sum() > 1000  # deep red: well above uniform
    assert ((b > 80) & (r < 40) & (g < 100)).sum() > 1000  # deep blue: well below it


def test_side_by_side_cells(tmp_path):
    normal = cell_image(gt.DARTS_V2.normal, gt.DARTS_V2.normal_concat, "Normal cell")
    reduce = cell_image(gt.DARTS_V2.reduce, gt.DARTS_V2.reduce_concat, "Reduction cell")
    both = cells_side_by_side(gt.DARTS_V2)
    assert both.width > normal.width + reduce.width and both.height == max(normal.height, reduce.height)
    path = draw_side_by_side(gt.DARTS_V2, tmp_path / "darts_v2.png", "DARTS_V2")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (both.width, both.height + 40)


def test_selection_plot_bars_start_at_zero_and_the_title_fits(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from dist_darts.visualize import plot_selection
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    plot_selection([0, 1, 2], [47.5, 48.0, 47.9], 1, tmp_path / "selection.png", "selection val top-1 (%)")
    (fig,) = figures
    ax = fig.axes[0]
    assert ax.get_ylim()[0] == 0.0 and ax.get_ylim()[1] > 48.0
    renderer = fig.canvas.get_renderer()
    title = ax.title.get_window_extent(renderer)
    assert fig.bbox.x0 <= title.x0 and title.x1 <= fig.bbox.x1 and title.y1 <= fig.bbox.y1


def test_the_cli_animates_and_plots_a_run(run, tmp_path):
    gif = tmp_path / "cli.gif"
    assert cli("genotype", "animate", str(run), "--output", str(gif)).stdout.strip() == str(gif)
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == 2
    history = tmp_path / "history.png"
    cli("genotype", "alphas", str(run / "alphas"), "--output", str(history))
    side = tmp_path / "cells"
    cli("genotype", "draw", str(run / "genotype.json"), "--side-by-side", "--output", str(side))
    for path in (history, side.with_suffix(".png")):
        with Image.open(path) as im:
            assert im.format == "PNG"
