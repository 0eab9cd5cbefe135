"""The NAS-Bench-201 benchmark reader on small files written here in the authors' layouts (NAS-Bench-201 v1.x .pth,
NATS-Bench topology file and archive folder), and against the authors' API packages where they are installed."""

import bz2
import importlib.util
import io
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from dist_darts.spaces.cnn.genotype import GenotypeError
from dist_darts.spaces.nb201 import bench
from helpers import env_for_subprocess

BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
COLLAPSED = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
NOT_EVALUATED = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
ARCHS = ["|avg_pool_3x3~0|+|nor_conv_1x1~0|none~1|+|skip_connect~0|none~1|nor_conv_3x3~2|", BEST, COLLAPSED,
         NOT_EVALUATED]
# the evaluation sets each dataset's trials hold, as in the benchmark
EVAL_SETS = {"cifar10-valid": ["x-valid", "ori-test"], "cifar10": ["ori-test"],
             "cifar100": ["ori-test", "x-valid", "x-test"], "ImageNet16-120": ["ori-test", "x-valid", "x-test"]}
SEEDS = {"cifar10-valid": [777, 888], "cifar10": [777, 888, 999], "cifar100": [777], "ImageNet16-120": [777, 888]}


def _trial(arch, dataset, seed, epochs, g):
    """A ResultsCount state (the authors' field names); the first epoch at 10 %, so reading it would show."""
    last = epochs - 1
    acc = {f"{s}@{e}": (10.0 if e == 0 else 50 + 45 * torch.rand((), generator=g).item())
           for s in EVAL_SETS[dataset] for e in (0, last)}
    return {"name": dataset, "net_state_dict": None, "train_acc1es": {0: 10.0, last: 99.0}, "train_acc5es": None,
            "train_losses": {0: 2.3, last: 0.01}, "train_times": None,
            "arch_config": {"name": "infer.tiny", "channel": 16, "num_cells": 5, "arch_str": arch, "class_num": 10},
            "params": np.float64(1.5), "flop": np.float64(200.0), "seed": seed, "epochs": epochs, "latency": [0.01],
            "eval_names": list(EVAL_SETS[dataset]), "eval_acc1es": acc, "eval_times": {},
            "eval_losses": {k: 1.0 for k in acc}}


def _arch_results(index, arch, epochs, g, imagenet=True):
    """An ArchResults state: dataset_seed and all_results keyed by (dataset, seed)."""
    seeds = {d: s for d, s in SEEDS.items() if imagenet or d != "ImageNet16-120"}
    return {"arch_index": index, "arch_str": arch, "clear_net_done": True, "dataset_seed": seeds,
            "all_results": {(d, s): _trial(arch, d, s, epochs, g) for d, ss in seeds.items() for s in ss}}


def benchmark_dict(nats: bool):
    """The whole benchmark's dict; cell 3 (all none) listed but not evaluated, cell 2 without ImageNet trials."""
    g = torch.Generator().manual_seed(0)
    short, full = ("12", "200") if nats else ("less", "full")
    infos = {i: {short: _arch_results(i, a, 12, g), full: _arch_results(i, a, 200, g, imagenet=i != 2)}
             for i, a in enumerate(ARCHS[:3])}
    return {"meta_archs": list(ARCHS), "arch2infos": infos, "evaluated_indexes": [0, 1, 2]}


def _bz2_pickle(obj, path):
    with bz2.open(path, "wb") as f:
        pickle.dump(obj, f, protocol=4)  # as the authors' pickle_save


def write(layout: str, folder):
    """The benchmark in `layout`; returns its path."""
    if layout.startswith("nb201"):
        path = folder / "NAS-Bench-201-v1_1-096897.pth"
        torch.save(benchmark_dict(nats=False), path, _use_new_zipfile_serialization=layout == "nb201-zip")
        return path
    data = benchmark_dict(nats=True)
    if layout == "nats-file":
        path = folder / "NATS-tss-v1_0-3ffb9.pickle.pbz2"
        _bz2_pickle(data, path)
        return path
    path = folder / "NATS-tss-v1_0-3ffb9-simple"
    path.mkdir()
    _bz2_pickle({"meta_archs": data["meta_archs"]}, path / "meta.pickle.pbz2")
    for index, infos in data["arch2infos"].items():
        _bz2_pickle(infos, path / f"{index:06d}.pickle.pbz2")
    return path


def expected(data, index, nats):
    """Each RESULTS number: the mean over the trials of the last epoch's accuracy (the authors' hp=200 entry)."""
    full = data["arch2infos"][index]["200" if nats else "full"]
    out = {}
    for name, dataset, split in bench.RESULTS:
        seeds = full["dataset_seed"].get(dataset, [])
        accs = [full["all_results"][(dataset, s)]["eval_acc1es"][f"{split}@199"] for s in seeds]
        out[name] = sum(accs) / len(accs) if accs else None
    return out


LAYOUTS = ["nb201-legacy", "nb201-zip", "nats-file", "nats-folder"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_reads_every_layout(tmp_path, layout):
    b = bench.Benchmark(write(layout, tmp_path))
    nats = layout.startswith("nats")
    data = benchmark_dict(nats)
    assert len(b) == 4 and b.index(BEST) == 1
    entry = b.lookup(BEST)
    assert entry["arch_str"] == BEST and entry["index"] == 1
    assert entry["trials"] == {"cifar10-valid": 2, "cifar10": 3, "cifar100": 1, "ImageNet16-120": 2}
    for name, value in expected(data, 1, nats).items():
        assert entry[name] == pytest.approx(value, rel=1e-12), name
        assert 50 <= entry[name] <= 95  # never the first epoch's 10 %, nor the 12-epoch runs
    collapsed = b.lookup(COLLAPSED)
    assert collapsed["imagenet16_120_valid"] is None and collapsed["trials"]["ImageNet16-120"] == 0
    with pytest.raises(bench.BenchmarkError, match="holds no results for cell 3"):
        b.lookup(NOT_EVALUATED)
    with pytest.raises(bench.BenchmarkError, match="does not list the cell"):
        b.lookup("|nor_conv_1x1~0|+|nor_conv_1x1~0|nor_conv_1x1~1|+|nor_conv_1x1~0|nor_conv_1x1~1|nor_conv_1x1~2|")
    with pytest.raises(GenotypeError, match="unknown op"):
        b.lookup("|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|")


def test_entry_prints_one_line_per_number(tmp_path):
    text = bench.format_entry(bench.Benchmark(write("nb201-zip", tmp_path)).lookup(COLLAPSED))
    assert text.splitlines()[0] == f"arch_str  {COLLAPSED}"
    assert len(text.splitlines()) == 2 + len(bench.RESULTS) and "n/a" in text


def _refused(path, match):
    with pytest.raises(bench.BenchmarkError, match=match) as e:
        bench.Benchmark(path)
    assert "\n" not in str(e.value)


class Payload:
    def __reduce__(self):
        return (print, ("ran code from the benchmark file",))


def test_code_in_a_file_is_never_run(tmp_path, capsys):
    data = benchmark_dict(nats=True)
    data["meta_archs"].append(Payload())
    _bz2_pickle(data, tmp_path / "evil.pickle.pbz2")
    _refused(tmp_path / "evil.pickle.pbz2", "builtins.print, which a NATS-Bench file never needs")
    torch.save(data, tmp_path / "evil.pth")
    _refused(tmp_path / "evil.pth", "asks for the global [a-z.]*print: refused")
    assert "ran code" not in capsys.readouterr().out


def test_foreign_and_missing_files_are_refused(tmp_path):
    _refused(tmp_path / "missing.pth", "does not exist")
    (tmp_path / "text.pth").write_text("hello")
    _refused(tmp_path / "text.pth", "not a NAS-Bench-201 .pth file")
    (tmp_path / "truncated.pickle.pbz2").write_bytes(bz2.compress(pickle.dumps({"meta_archs": []}))[:20])
    _refused(tmp_path / "truncated.pickle.pbz2", "not a bz2-compressed pickle")
    torch.save({"state_dict": {}}, tmp_path / "checkpoint.pth")
    _refused(tmp_path / "checkpoint.pth", "no 'meta_archs' and 'arch2infos'")
    _bz2_pickle({"meta_archs": ["64:64:64:64:64"], "arch2infos": {}}, tmp_path / "NATS-sss.pickle.pbz2")
    _refused(tmp_path / "NATS-sss.pickle.pbz2", "size search space")
    (tmp_path / "folder").mkdir()
    _refused(tmp_path / "folder", "no meta.pickle.pbz2")


def test_numpy_1_spelling_of_scalars_is_read(tmp_path):
    """Files pickled under numpy 1 name numpy.core.multiarray.scalar (numpy 2: numpy._core)."""
    buffer = io.BytesIO()
    torch.save(benchmark_dict(nats=False), buffer, _use_new_zipfile_serialization=False)
    data = buffer.getvalue()
    assert b"numpy._core.multiarray" in data
    (tmp_path / "numpy1.pth").write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert bench.Benchmark(tmp_path / "numpy1.pth").lookup(BEST)["cifar10_test"] > 50


def test_cli_prints_a_cell_and_refuses_a_bad_file(tmp_path):
    path = write("nats-folder", tmp_path)
    run = [sys.executable, "-m", "dist_darts", "genotype", "bench"]
    out = subprocess.run([*run, BEST, "--benchmark-file", str(path)], env=env_for_subprocess(), capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    assert "cifar10_test" in out.stdout and "imagenet16_120_valid" in out.stdout
    (tmp_path / "junk.pth").write_bytes(b"junk")
    bad = subprocess.run([*run, BEST, "--benchmark-file", str(tmp_path / "junk.pth")], env=env_for_subprocess(),
                         capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


# --- the authors' API packages on the same files (skipped where they are not installed) ---------------------

def _authors_numbers(api, index):
    """What the API reports for the cell's hp=200 entry, mean of its trials, in RESULTS order."""
    numbers = {}
    for name, dataset, split in bench.RESULTS:
        try:
            info = api.get_more_info(index, dataset, hp="200", is_random=False)
        except KeyError:  # no trial on this dataset
            numbers[name] = None
            continue
        numbers[name] = info["valid-accuracy" if split == "x-valid" else "test-accuracy"]
    return numbers


@pytest.mark.skipif(importlib.util.find_spec("nas_201_api") is None, reason="needs nas-bench-201 (the authors' API)")
@pytest.mark.parametrize("layout", ["nb201-legacy", "nb201-zip"])
def test_same_numbers_as_nas_bench_201_api(tmp_path, layout):
    from nas_201_api import NASBench201API
    path = write(layout, tmp_path)
    with torch.serialization.safe_globals(bench._torch_safe_globals()):  # their torch.load: weights_only by default
        api = NASBench201API(str(path), verbose=False)
    ours = bench.Benchmark(path)
    for arch in (BEST, COLLAPSED, ARCHS[0]):
        index = api.query_index_by_arch(arch)
        entry = ours.lookup(arch)
        assert index == entry["index"]
        assert _authors_numbers(api, index) == pytest.approx({k: entry[k] for k, _, _ in bench.RESULTS}, rel=1e-12)


@pytest.mark.skipif(importlib.util.find_spec("nats_bench") is None, reason="needs nats_bench (the authors' API)")
@pytest.mark.parametrize("layout", ["nats-file", "nats-folder"])
def test_same_numbers_as_nats_bench_api(tmp_path, layout):
    from nats_bench.api_topology import NATStopology
    path = write(layout, tmp_path)
    api = NATStopology(str(path), fast_mode=layout == "nats-folder", verbose=False)
    ours = bench.Benchmark(path)
    for arch in (BEST, COLLAPSED, ARCHS[0]):
        index = api.query_index_by_arch(arch)
        entry = ours.lookup(arch)
        assert index == entry["index"]
        assert _authors_numbers(api, index) == pytest.approx({k: entry[k] for k, _, _ in bench.RESULTS}, rel=1e-12)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_first_look_passes_every_layout_and_refuses_other_files(tmp_path, layout):
    bench.check_file(write(layout, tmp_path))
    (tmp_path / "notes.txt").write_text("not a benchmark")
    for path, why in ((tmp_path / "notes.txt", "neither a torch file"), (tmp_path / "missing.pth", "does not exist"),
                      (tmp_path, "no meta.pickle.pbz2")):
        with pytest.raises(bench.BenchmarkError, match=why):
            bench.check_file(path)
