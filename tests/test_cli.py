import json
import re
import subprocess
import sys

import pytest
import torch

from dist_darts.spaces.cnn import genotype as gt
from dist_darts.cli import main


def test_python_dash_m_is_the_same_cli():
    out = subprocess.run([sys.executable, "-m", "dist_darts", "genotype", "show", "DARTS_V2"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == gt.format_genotype(gt.DARTS_V2)


def test_help_for_every_command(capsys):
    for argv in (["--help"], ["genotype", "--help"], ["genotype", "convert", "--help"], ["model", "summary", "--help"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 0
    assert "--init-channels" in capsys.readouterr().out


def test_show_formats(capsys):
    assert main(["genotype", "show", "DARTS_V1", "--format", "json"]) == 0
    assert gt.from_dict(json.loads(capsys.readouterr().out)) == gt.DARTS_V1
    assert main(["genotype", "show", "DARTS_V1", "--format", "nni"]) == 0
    assert gt.from_nni_dict(json.loads(capsys.readouterr().out)) == gt.DARTS_V1


def test_convert_json_nni_and_drawings(tmp_path, capsys):
    assert main(["genotype", "convert", "PC_DARTS", "--output", str(tmp_path / "pc.json")]) == 0
    assert gt.load(str(tmp_path / "pc.json")) == gt.PC_DARTS
    assert main(["genotype", "convert", str(tmp_path / "pc.json"), "--to", "nni",
                 "--output", str(tmp_path / "pc_nni.json")]) == 0
    assert gt.load(str(tmp_path / "pc_nni.json")) == gt.PC_DARTS
    assert main(["genotype", "convert", str(tmp_path / "pc_nni.json"), "--output", str(tmp_path / "pc.svg")]) == 0
    assert (tmp_path / "pc_normal.svg").exists() and (tmp_path / "pc_reduce.svg").exists()


def test_draw(tmp_path, capsys):
    assert main(["genotype", "draw", "DARTS_V2", "--output", str(tmp_path / "v2"), "--format", "pdf"]) == 0
    assert (tmp_path / "v2_normal.pdf").read_bytes().startswith(b"%PDF")
    # both cells in one image, in the format asked for
    assert main(["genotype", "draw", "DARTS_V2", "--output", str(tmp_path / "both"), "--format", "svg",
                 "--side-by-side"]) == 0
    svg = (tmp_path / "both.svg").read_text()
    assert "<svg" in svg and "Normal cell" in svg and "Reduction cell" in svg and not (tmp_path / "both.png").exists()


COMMANDS = (["search"], ["retrain"], ["evaluate"], ["sweep"], ["search", "--space", "rnn"],
            ["retrain", "--space", "rnn"], ["evaluate", "--space", "rnn"], ["genotype", "draw"], ["genotype", "convert"], ["genotype", "alphas"],
            ["genotype", "animate"], ["model", "summary"], ["hub", "list"])


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_says_each_default_once_and_per_command(command, capsys):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert not re.search(r"\(default: [^)]*\) \(default:", text)
    if command[0] == "retrain" and len(command) == 1:  # no alpha step here, and fp16 is offered: it is allowed
        assert "alpha" not in text.split("--precision")[1].split("--")[0] and "fp16" in text
    if command[0] in ("search", "sweep") or command[-1] == "rnn":  # refused there, so not offered
        assert "{auto,fp32,bf16}" in text and "bf16,fp16" not in text
    if command[0] in ("search", "retrain") and command[-1] != "rnn":
        assert "images per step on EACH rank" in text
    if command[0] in ("search", "retrain") and command[-1] == "rnn":
        assert "over ALL ranks together" in text


def test_alphas_plot_and_derive(tmp_path, capsys):
    torch.manual_seed(0)
    a = {"alphas_normal": torch.randn(14, 8), "alphas_reduce": torch.randn(14, 8)}
    torch.save(a, tmp_path / "alphas.pt")
    assert main(["genotype", "alphas", str(tmp_path / "alphas.pt"), "--output", str(tmp_path / "a.png")]) == 0
    assert capsys.readouterr().out.startswith(gt.format_genotype(gt.derive(a["alphas_normal"], a["alphas_reduce"])))
    assert (tmp_path / "a.png").stat().st_size > 1000
    a["alphas_normal"][:, gt.PRIMITIVES.index("skip_connect")] += 5.0  # every edge's favourite: 8 skip_connects
    torch.save(a, tmp_path / "alphas.pt")
    assert main(["genotype", "alphas", str(tmp_path / "alphas.pt"), "--max-skip", "2", "--output",
                 str(tmp_path / "a.png")]) == 0
    capped = gt.derive(a["alphas_normal"], a["alphas_reduce"], max_skip=2)
    assert sum(op == "skip_connect" for op, _ in capped.normal) == 2
    assert capsys.readouterr().out.startswith(gt.format_genotype(capped))
    assert main(["genotype", "alphas", str(tmp_path / "alphas.pt"), "--method", "fair-darts", "--output",
                 str(tmp_path / "a.png")]) == 0
    fair = gt.derive(a["alphas_normal"], a["alphas_reduce"], mixing="sigmoid")
    assert capsys.readouterr().out.startswith(gt.format_genotype(fair))


def test_model_summary_counts(capsys):
    assert main(["model", "summary", "--genotype", "DARTS_V2"]) == 0
    out = capsys.readouterr().out
    assert "3,349,342" in out and "multiply-adds" in out


@pytest.mark.parametrize("argv,message", [
    (["genotype", "show", "NOPE"], "neither a known name"),
    (["genotype", "convert", "DARTS_V2", "--output", "x.yaml"], "cannot convert to 'yaml'"),
    (["genotype", "alphas", "/nonexistent.pt"], "does not exist"),
])
def test_bad_input_exits_2_with_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_corrupted_alphas_file(tmp_path, capsys):
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    assert main(["genotype", "alphas", str(tmp_path / "bad.pt")]) == 2
    assert "not a saved alphas file" in capsys.readouterr().err


def test_malformed_genotype_file_via_cli(tmp_path, capsys):
    (tmp_path / "g.json").write_text('{"normal": 3}')
    assert main(["genotype", "show", str(tmp_path / "g.json")]) == 2
    assert "genotype field" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["search", "retrain", "evaluate"])
def test_the_recurrent_space_has_no_image_flags(command, capsys):
    """--channels-last does nothing without images: --space rnn refuses it as an unknown flag (exit 2)."""
    with pytest.raises(SystemExit) as exit_:
        main([command, "--space", "rnn", "--no-channels-last"])
    assert exit_.value.code == 2 and "unrecognized arguments: --no-channels-last" in capsys.readouterr().err
