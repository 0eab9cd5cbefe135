import pytest
import torch
from PIL import Image

from dist_darts.spaces.rnn import genotype as rgt
from dist_darts.visualize import DrawingError, draw_recurrent_cell, plot_recurrent_alphas, recurrent_edge_labels


def test_recurrent_cell_png_is_a_real_image(tmp_path):
    path = draw_recurrent_cell(rgt.RNN_DARTS_V2, tmp_path / "cells" / "rnn.png", title="DARTS (2nd order)")
    with Image.open(path) as im:
        im.verify()
        assert im.format == "PNG"
    with Image.open(path) as im:
        assert im.size[0] > 200 and im.size[1] > 50


def test_svg_has_the_originals_nodes_and_labels(tmp_path):
    svg = draw_recurrent_cell(rgt.RNN_DARTS_V2, tmp_path / "rnn.svg").read_text()
    for label in ("x_{t}", "h_{t&#45;1}", "h_{t}", ">0<", ">8<", "sigmoid", "identity", "relu", "tanh"):
        assert label in svg, label
    assert svg.count("&#45;&gt;h_{t}</title>") == 8  # every node 1..8 feeds h_t


def test_enas_cell_feeds_h_t_from_its_concat_only(tmp_path):
    svg = draw_recurrent_cell(rgt.RNN_ENAS, tmp_path / "enas.svg").read_text()
    assert ">11<" in svg and svg.count("&#45;&gt;h_{t}</title>") == 6


def test_pdf_and_unknown_format(tmp_path):
    assert draw_recurrent_cell(rgt.RNN_DARTS_V1, tmp_path / "c.pdf").read_bytes().startswith(b"%PDF")
    with pytest.raises(DrawingError, match="use a .png, .svg or .pdf"):
        draw_recurrent_cell(rgt.RNN_DARTS_V1, tmp_path / "c.jpg")


def test_plot_recurrent_alphas(tmp_path):
    labels = recurrent_edge_labels()
    assert len(labels) == 36 and labels[:3] == ["0→1", "0→2", "1→2"] and labels[-1] == "7→8"
    torch.manual_seed(0)
    path = plot_recurrent_alphas(torch.randn(36, 5), tmp_path / "alphas.png", title="epoch 1")
    with Image.open(path) as im:
        im.verify()
    with pytest.raises(DrawingError, match=r"shape \(36, 5\), got \(14, 8\)"):
        plot_recurrent_alphas(torch.randn(14, 8), tmp_path / "bad.png")
