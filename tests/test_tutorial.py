"""docs/tutorial.md cannot drift: every bash and python block runs here, in order, at toy size.

The blocks run as written in one working folder, through stand-ins for `dist-darts` and `torchrun`
(tests/tutorial_shim.py) that append toy data and sizes.
"""

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dist_darts.hub import build_searched_model
from helpers import env_for_subprocess
from test_data import write_image_folder

pytestmark = pytest.mark.slow  # every block of the tutorial, end to end

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "tutorial.md"
SHIM = Path(__file__).resolve().parent / "tutorial_shim.py"


def blocks() -> list[tuple[str, str]]:
    return re.findall(r"^```(bash|python)\n(.*?)^```$", TUTORIAL.read_text(), flags=re.S | re.M)


def test_the_tutorial_has_every_step():
    text = "\n".join(code for _, code in blocks())
    for needed in ("hub list", "load_searched_model", "evaluate", "search", "--unrolled", "torchrun --standalone",
                   "genotype draw", "genotype convert", "retrain", "--drop-path-prob", "--cutout", "sweep",
                   "--nnodes=2", "imagenet", "--space rnn"):
        assert needed in text, needed


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The repository's launch/ configs, a toy ImageNet folder, the original code's weights file, and the shims."""
    work = tmp_path_factory.mktemp("tutorial")
    (work / "launch").symlink_to(ROOT / "launch")
    bin_dir = work / "bin"
    bin_dir.mkdir()
    for program in ("dist-darts", "torchrun"):
        script = bin_dir / program
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{SHIM}" {program} "$@"\n')
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    # the released cifar10_model.pt is a plain state dict of the paper-size network with its auxiliary head;
    # an untrained one of the same format stands in for it (there is no network here to download it)
    torch.save(build_searched_model("DARTS_V2", "cifar10", auxiliary=True).state_dict(), work / "cifar10_model.pt")
    imagenet = write_image_folder(work / "toy_imagenet", n_train=16, n_val=2)
    env = env_for_subprocess()
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", TOY_IMAGENET=str(imagenet), HEAD="127.0.0.1")
    return work, env


@pytest.mark.parametrize("index", range(len(blocks())), ids=lambda i: f"block{i}")
def test_tutorial_block(workdir, index):
    work, env = workdir
    kind, code = blocks()[index]
    cmd = ["bash", "-euo", "pipefail", "-c", code] if kind == "bash" else [sys.executable, "-c", code]
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, (f"block {index}:\n{code}\nstdout:\n{proc.stdout[-3000:]}\n"
                                  f"stderr:\n{proc.stderr[-3000:]}")
