"""docs/api.md is true: its python blocks run in order in one process, as a notebook runs them, and every name
it documents is exported lazily by dist_darts (importing dist_darts alone loads no torch)."""

import re
import subprocess
import sys
from pathlib import Path

import dist_darts
from helpers import env_for_subprocess

PAGE = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", PAGE.read_text(), flags=re.S | re.M)


def test_the_page_runs_as_a_notebook(tmp_path):
    code = "\n".join(python_blocks())
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env_for_subprocess(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert "torch.Size([2, 10])" in proc.stdout
    assert (tmp_path / "runs" / "api" / "search.gif").stat().st_size > 0


def test_every_documented_name_is_exported():
    first_cells = re.findall(r"^\| (`.*?) \|", PAGE.read_text(), flags=re.M)
    documented = {name for cell in first_cells for name in re.findall(r"`(\w+)", cell)}
    documented |= set(re.findall(r"one-line errors \((.*?)\)", PAGE.read_text(), flags=re.S)[0].replace("`", "")
                      .replace("\n", " ").replace(",", " ").split())
    assert documented <= set(dist_darts.__all__), documented - set(dist_darts.__all__)
    for name in dist_darts.__all__:
        assert getattr(dist_darts, name) is not None
    assert dist_darts.run_search is dist_darts.search.run and dist_darts.run_retrain is dist_darts.train.run


def test_import_dist_darts_loads_no_torch():
    code = "import sys, dist_darts; dist_darts.SearchConfig; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=env_for_subprocess(), capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
