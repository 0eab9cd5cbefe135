"""The [dev] extra pulls DALI's 199 MB wheel only on Linux x86-64, the one platform NVIDIA ships it for."""

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

from pathlib import Path  # noqa: E402

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
LINUX = {"sys_platform": "linux", "platform_machine": "x86_64", "extra": ""}


def dev_extras(environment: dict) -> set[str]:
    """The extras of dist-darts that `pip install '.[dev]'` installs in `environment` (marker variables)."""
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    chosen = set()
    for line in extras["dev"]:
        req = Requirement(line)
        if req.name == "dist-darts" and (req.marker is None or req.marker.evaluate(environment)):
            chosen |= req.extras
    return chosen


def test_dali_only_on_linux_x86_64():
    assert dev_extras(LINUX) == {"viz", "tune", "photos", "lb", "dali"}
    for platform, machine in (("darwin", "arm64"), ("win32", "AMD64"), ("linux", "aarch64")):
        assert dev_extras(dict(LINUX, sys_platform=platform, platform_machine=machine)) == {"viz", "tune", "photos",
                                                                                                 "lb"}


MODEL_MODULES = ("spaces/cnn/ops", "spaces/cnn/supernet", "spaces/cnn/model", "spaces/cnn/genotype", "methods",
                 "spaces/cnn/projection", "spaces/rnn/networks", "spaces/rnn/genotype", "spaces/nb201/networks",
                 "spaces/nb201/genotype")
JOB_SIDE = {"distributed", "data", "config", "tune", "job", "parallel", "meters", "memory", "driver", "ray"}


def imported_names(path: Path) -> set[str]:
    """The first component of every module a file imports (relative imports by their own name)."""
    import ast
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names |= {(node.module or "").split(".")[0]} if node.level == 0 else (
                {node.module.split(".")[0]} if node.module else {alias.name for alias in node.names})
    return names


@pytest.mark.parametrize("module", MODEL_MODULES)
def test_model_code_never_imports_the_job_side(module):
    package = PYPROJECT.parent / "dist_darts"
    assert not imported_names(package / f"{module}.py") & JOB_SIDE


def test_timm_is_imported_by_one_module_only():
    package = PYPROJECT.parent / "dist_darts"
    assert [p.name for p in sorted(package.rglob("*.py")) if "timm" in imported_names(p)] == ["optimizers.py"]


GROUND_FLOOR = ("errors", "logs", "safe_pickle", "runfolder", "checkpoint")  # what every other module may use


@pytest.mark.parametrize("module", GROUND_FLOOR)
def test_the_ground_floor_imports_nothing_above_it(module):
    package = PYPROJECT.parent / "dist_darts"
    own = {p.stem for p in package.glob("*.py")} | {p.name for p in package.iterdir() if p.is_dir()}
    assert imported_names(package / f"{module}.py") & own <= set(GROUND_FLOOR)


def test_the_spaces_are_listed_once_in_the_table():
    """No module but the table (dist_darts/spaces/__init__.py) writes down a collection of the space names: the CLI,
    the sweep and the configs read the table."""
    import ast
    from dist_darts.spaces import TABLE
    package = PYPROJECT.parent / "dist_darts"
    names = set(TABLE)
    listing = []
    for path in sorted(package.rglob("*.py")):
        if path == package / "spaces" / "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)):
                values = node.keys if isinstance(node, ast.Dict) else node.elts
                found = {v.value for v in values if isinstance(v, ast.Constant) and v.value in names}
                if len(found) > 1:
                    listing.append(f"{path.relative_to(package)}:{node.lineno}")
    assert not listing, listing


def test_no_shared_module_names_a_space_or_a_method():
    """A space's or a method's name is written down in its table alone (spaces/__init__.py, method_table.py): the
    shared modules read defaults, choices and settings from there. A space's own unit (a spaces/ subpackage) may
    name itself."""
    import ast
    from dist_darts.method_table import TABLE as METHOD_TABLE
    from dist_darts.spaces import TABLE
    package = PYPROJECT.parent / "dist_darts"
    names = set(TABLE) | set(METHOD_TABLE)
    tables = {package / "spaces" / "__init__.py", package / "method_table.py"}
    named = []
    for path in sorted(package.rglob("*.py")):
        if path in tables or path.parent.parent == package / "spaces":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                named.append(f"{path.relative_to(package)}:{node.lineno} {node.value!r}")
    assert not named, named
