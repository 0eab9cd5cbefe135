import pytest
import torch
from PIL import Image

from dist_darts.spaces.cnn import genotype as gt
from dist_darts.visualize import DrawingError, draw_cell, draw_genotype, plot_alphas


def test_draw_genotype_png_is_a_real_image(tmp_path):
    paths = draw_genotype(gt.DARTS_V2, tmp_path / "darts_v2")
    assert [p.name for p in paths] == ["darts_v2_normal.png", "darts_v2_reduce.png"]
    for p in paths:
        with Image.open(p) as im:
            im.verify()
            assert im.format == "PNG"
        with Image.open(p) as im:
            assert im.size[0] > 100 and im.size[1] > 50


@pytest.mark.parametrize("fmt,magic", [("svg", b"<?xml"), ("pdf", b"%PDF")])
def test_draw_svg_and_pdf(tmp_path, fmt, magic):
    path = draw_cell(gt.NASNet.reduce, gt.NASNet.reduce_concat, tmp_path / f"cell.{fmt}")
    assert path.read_bytes().startswith(magic)


def test_svg_has_the_original_labels(tmp_path):
    text = draw_cell(gt.DARTS_V2.normal, gt.DARTS_V2.normal_concat, tmp_path / "n.svg").read_text()
    for label in ("c_{k&#45;2}", "c_{k&#45;1}", "c_{k}", "sep_conv_3x3", "dil_conv_3x3", ">3<"):
        assert label in text, label


def test_unknown_format(tmp_path):
    with pytest.raises(DrawingError, match="use a .png, .svg or .pdf"):
        draw_cell(gt.DARTS_V2.normal, [2, 3, 4, 5], tmp_path / "x.gif")


def test_plot_alphas(tmp_path):
    torch.manual_seed(0)
    path = plot_alphas(torch.randn(14, 8), torch.randn(14, 8), tmp_path / "alphas.png", title="epoch 3")
    with Image.open(path) as im:
        im.verify()
