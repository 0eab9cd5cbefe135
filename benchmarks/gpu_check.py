"""The first thing to run on a new GPU machine: is dist-darts right there, and how fast is it?

    pip install --no-deps --no-build-isolation -e .        # a fresh clone; no network, Ray, DALI or graphviz needed
    python benchmarks/gpu_check.py                          # about 5 minutes on one H100/H200
    python benchmarks/gpu_check.py --original /tmp/darts/cnn   # also the original DARTS code, side by side
    python benchmarks/gpu_check.py --device cpu --toy       # every part at toy size on the CPU (what CI runs)

In order:
1. the gpu-marked tests (no host sync in a search or retrain step, a one-rank NCCL group, the GPU data paths);
2. a 20-step bf16 search and a 20-step bf16 retrain on the embedded digits data, through the CLI, in the DARTS
   space and in NAS-Bench-201's (--space nb201): each must end with exit 0 and finite losses in history.json;
3. a dry run of PC-DARTS' ImageNet search recipe (launch/configs/imagenet_search.yaml, the ImageNet stem, K=2,
   subsets, warm-ups) at toy size through the CLI, on a folder of scikit-image's photographs at 224 px (128 px
   with --toy): two epochs, the alphas frozen in the first; exit 0 and finite losses, and its wall time;
4. the search step (1st and 2nd order, fp32 and bf16, batch 64 and 256) and the DARTS_V2 retrain step (batch 96;
   eager, torch.compile, torch.compile with CUDA graphs) in images/s and peak memory, with the host-device
   synchronisations of one step, and the original's steps when --original gives its cnn/ folder (unmodified on
   CUDA). Each configuration runs in its own process (benchmarks/_bench.py).
Prints one table and appends it to benchmarks/RESULTS.md (unless --no-record); exit code 1 if a check failed.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench  # noqa: E402
import torch  # noqa: E402

SEARCH = Path(__file__).with_name("search_step.py")
RECIPE = _bench.ROOT / "launch" / "configs" / "imagenet_search.yaml"
RETRAIN = Path(__file__).with_name("retrain_step.py")
# the paper's sizes; --toy shrinks them so that every part runs in seconds on a CPU
PAPER = {"search": dict(C=16, layers=8, batches=(64, 256)), "retrain": dict(C=36, layers=20, batch=96),
         "job": ["--layers", "5", "--init-channels", "16", "--batch-size", "64"], "steps": 20,
         # the recipe's network (8 cells, C=16, K=2) on 224 px photographs, half its per-GPU batch, 4 steps an epoch
         "recipe": dict(size=224, per_class=(160, 4), args=["--batch-size", "64", "--steps-per-epoch", "4"])}
TOY = {"search": dict(C=4, layers=3, batches=(8,)), "retrain": dict(C=8, layers=4, batch=8),
       "job": ["--layers", "3", "--init-channels", "4", "--batch-size", "8"], "steps": 2,
       "recipe": dict(size=128, per_class=(8, 2), args=["--layers", "3", "--init-channels", "4", "--batch-size", "4",
                                                        "--steps-per-epoch", "2", "--workers", "0"])}


def gpu_tests(device: str) -> tuple[bool, str]:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                           str(_bench.ROOT / "tests")], capture_output=True, text=True, cwd=_bench.ROOT,
                          env=_bench.worker_env(None))
    summary = (proc.stdout.strip().splitlines() or ["no output"])[-1].strip("= ")
    if device == "cpu":
        return proc.returncode in (0, 5), f"{summary} (no GPU: skipped)"
    return proc.returncode == 0, summary


def run_cli(args: list[str], out: Path) -> tuple[str | None, float, str, str]:
    """`dist-darts ARGS` in a child process writing the run folder `out`: (what failed, or None; wall seconds; the
    losses in its history.json, formatted; its stdout). A non-zero exit or a loss that is not finite is a failure."""
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "dist_darts", *args], capture_output=True, text=True,
                          env=_bench.worker_env(None), cwd=_bench.ROOT)
    seconds = time.time() - started
    if proc.returncode != 0:
        return f"exit {proc.returncode}: {(proc.stderr.strip().splitlines() or ['?'])[-1]}", seconds, "", proc.stdout
    history = json.loads((out / "history.json").read_text())
    losses = [v for row in history for k, v in row.items() if k.endswith("loss")]
    shown = ", ".join(f"{v:.3f}" for v in losses)
    error = None if losses and all(math.isfinite(v) for v in losses) else f"losses not finite: {shown}"
    return error, seconds, shown, proc.stdout


def finite_job(kind: str, sizes: dict, device: str, precision: str, space: str = "cnn") -> tuple[bool, str]:
    """A short job of `space` through the CLI: exit 0, and every loss in its history.json finite (NAS-Bench-201's
    network at its benchmark's size, C=16 and N=5 cells per stage, with the same flags)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / kind
        args = [kind, "--space", space, "--dataset", "digits", "--workers", "0", "--epochs", "1",
                "--steps-per-epoch", str(sizes["steps"]), "--device", device, "--precision", precision,
                "--output", str(out), *sizes["job"]]
        if kind == "retrain" and space == "cnn":
            args += ["--genotype", "DARTS_V2", "--drop-path-prob", "0.2"]
        error, seconds, losses, _ = run_cli(args, out)
        if error:
            return False, error
        return True, f"{sizes['steps']} steps in {seconds:.0f} s, losses {losses}"


def recipe_job(sizes: dict, device: str) -> tuple[bool, str]:
    """PC-DARTS' ImageNet search recipe at toy size through the CLI: exit 0 and finite losses, and its wall time."""
    from dist_darts.data import DataError
    from photo_folder import write_folder
    r = sizes["recipe"]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            folder = write_folder(Path(tmp) / "photos", r["size"], *r["per_class"])
        except DataError as exc:  # the photographs come with scikit-image, which a GPU image may lack
            return True, f"skipped: {exc}"
        out = Path(tmp) / "search"
        # a few hundred images: larger subsets than ImageNet's 10 % and 2.5 %, so that an epoch has its steps
        args = ["search", "--config", str(RECIPE), "--dataset", "folder", "--data-dir", str(folder),
                "--train-subset", "0.5", "--arch-subset", "0.25", "--epochs", "2", "--warmup-epochs", "1",
                "--arch-warmup-epochs", "1", "--device", device, "--output", str(out), *r["args"]]
        error, seconds, losses, stdout = run_cli(args, out)
        if error:
            return False, error
        return "supernet stem: imagenet" in stdout, (f"{r['size']} px, 2 epochs in {seconds:.0f} s (start-up "
                                                     f"included), losses {losses}")


def step_configs(args, sizes: dict) -> list[tuple[Path, dict, int]]:
    """(script, worker config, images per step) of every timed configuration."""
    s, r = sizes["search"], sizes["retrain"]
    out = []
    for batch in s["batches"]:
        for order in (1, 2):
            base = {"order": order, "batch": batch, "C": s["C"], "layers": s["layers"], "classes": 10,
                    "image_size": 32, "device": args.device, "threads": None, "seed": 0, "partial_channels": 1,
                    "compile": False, "ablate": [], "channels_last": True, "impl": "ours"}
            for precision in ("fp32", "bf16"):
                out.append((SEARCH, dict(base, precision=precision,
                                         name=f"search order {order} batch {batch} {precision}"), batch))
            if args.original:
                out.append((SEARCH, dict(base, impl="original", original=str(Path(args.original).resolve()),
                                         precision="fp32", channels_last=False,
                                         name=f"original search order {order} batch {batch} fp32"), batch))
    base = {"network": "cifar", "batch": r["batch"], "size": {"C": r["C"], "layers": r["layers"]},
            "device": args.device, "threads": None, "seed": 0, "channels_last": True, "impl": "ours"}
    for compile_mode, label in ((False, "eager"), (True, "torch.compile"), ("cuda-graphs", "compile + CUDA graphs")):
        if compile_mode == "cuda-graphs" and args.device != "cuda":
            continue  # CUDA graphs exist only on a GPU
        out.append((RETRAIN, dict(base, compile=compile_mode, precision="bf16" if args.device == "cuda" else "fp32",
                                  name=f"retrain DARTS_V2 batch {r['batch']} {label}"), r["batch"]))
    if args.original:
        out.append((RETRAIN, dict(base, impl="original", original=str(Path(args.original).resolve()), compile=False,
                                  precision="fp32", channels_last=False,
                                  name=f"original retrain DARTS_V2 batch {r['batch']} fp32"), r["batch"]))
    return out


def time_steps(args, sizes: dict) -> list[list[str]]:
    rows = []
    for script, cfg, images in step_configs(args, sizes):
        print(f"timing {cfg['name']} ...", flush=True)
        worker = _bench.Worker(str(script), cfg, _bench.worker_env(None))
        for _ in range(args.warmup):
            worker.step(timed=False)
        for _ in range(args.steps):
            worker.step(timed=True)
        syncs = worker.host_syncs()
        memory = worker.finish()
        wall = _bench.med(worker.walls)
        rows.append([cfg["name"], f"{wall:.3f}", f"{images / wall:.0f}", _bench.gib(memory["peak_delta_bytes"]),
                     "n/a (CPU)" if syncs is None else str(syncs)])
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="(default cuda)")
    p.add_argument("--toy", action="store_true", help="toy sizes (seconds on a CPU) instead of the paper's")
    p.add_argument("--original", help="the original DARTS cnn/ folder: time its steps side by side")
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--no-record", action="store_true", help="print only; leave benchmarks/RESULTS.md as it is")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA GPU here; use --device cpu --toy to check every part on the CPU")
    sizes = TOY if args.toy else PAPER
    precision = "bf16" if args.device == "cuda" else "fp32"

    checks = [("gpu-marked tests", *gpu_tests(args.device))]
    for space in ("cnn", "nb201"):
        for kind in ("search", "retrain"):
            label = kind if space == "cnn" else f"{space} {kind}"
            checks.append((f"{sizes['steps']}-step {precision} {label} stays finite",
                           *finite_job(kind, sizes, args.device, precision, space)))
    checks.append(("ImageNet search recipe (toy size) runs", *recipe_job(sizes, args.device)))
    for name, ok, detail in checks:
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
    rows = time_steps(args, sizes)

    text = (_bench.table(["check", "result", "detail"], [[n, "ok" if ok else "FAILED", d] for n, ok, d in checks],
                         right_from=3)
            + "\n\n" + _bench.table(["step", "s (median)", "images/s",
                                     "peak GPU mem GiB" if args.device == "cuda" else "peak RSS delta GiB",
                                     "host syncs / step"], rows))
    print(text)
    if not args.no_record:
        size = "toy sizes" if args.toy else "the paper's sizes"
        _bench.record("gpu_check", args.device, {"checks": checks, "steps": rows}, f"GPU check ({size})",
                      f"Median of {args.steps} timed steps after {args.warmup} warm-up steps, each configuration in "
                      f"its own process; the retrain network's drop path 0.2.\n\n{text}")
    sys.exit(0 if all(ok for _, ok, _ in checks) else 1)


if __name__ == "__main__":
    main()
