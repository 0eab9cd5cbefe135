"""Shared plumbing of the step benchmarks: worker subprocesses driven step by step, machine and version facts,
statistics, and the records (a JSON line in results.jsonl, a section in RESULTS.md).

Each configuration runs in its own worker process, so its peak memory is its own: on the CPU the peak resident
set (ru_maxrss) minus the resident set just before the first step; on a GPU torch.cuda.max_memory_allocated.
The parent tells the workers to take one step at a time, so configurations alternate step by step and share
whatever else the machine is doing at that moment.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

from dist_darts.methods import METHODS

HERE = Path(__file__).resolve().parent
METHOD_NAMES = tuple(METHODS)  # the search methods (--method), in dist_darts's order
ROOT = HERE.parent


def paper_search_settings():
    """The paper's search hyper-parameters: dist_darts.config.SearchConfig's defaults."""
    from dist_darts.config import SearchConfig
    return SearchConfig(dataset="synthetic")


# ---- worker side ------------------------------------------------------------------------------------------------

def setup_worker(cfg: dict) -> torch.device:
    """Threads and cuDNN/TF32 settings as the jobs use them; the worker's device."""
    import warnings
    warnings.filterwarnings("ignore")  # the original's deprecated overloads warn on every call
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    device = torch.device(cfg["device"])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def supernet_cost_arguments(p, batch_help: str) -> None:
    """The arguments of the benchmarks that time one supernet's search steps against an extra (hessian_cost.py,
    noise_scale_cost.py)."""
    p.add_argument("--init-channels", type=int, default=8, help="supernet C (default 8)")
    p.add_argument("--layers", type=int, default=5, help="supernet cells (default 5)")
    p.add_argument("--batch-size", type=int, default=32, help=batch_help)
    p.add_argument("--order", type=int, default=1, choices=[1, 2], help="DARTS order of the timed steps")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")


def supernet_with_batches(args):
    """(device, supernet, batches, autocast, precision) for the arguments above: a seeded supernet in channels_last
    and a training and a validation batch of random CIFAR-size images, as a search step takes them (only time is
    measured)."""
    from dist_darts.job import autocast_factory
    from dist_darts.parallel import to_memory_format
    from dist_darts.spaces.cnn.supernet import Network
    device = setup_worker({"device": args.device, "threads": args.threads})
    torch.manual_seed(0)
    model = Network(args.init_channels, 10, args.layers).to(device).to(memory_format=torch.channels_last)

    def batch():
        return (to_memory_format(torch.randn(args.batch_size, 3, 32, 32, device=device), True),
                torch.randint(0, 10, (args.batch_size,), device=device))
    autocast, precision = autocast_factory("auto", device)
    return device, model, (*batch(), *batch()), autocast, precision


def seconds_per_call(fn, calls: int, device: torch.device) -> float:
    """Mean wall seconds of `calls` calls of fn, the GPU's queue drained before the clock stops."""
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / calls


def darts_search_step(model, train_model, order: int, autocast, batches, average=None, channels_last=True,
                      noise=None):
    """A closure taking one step of dist_darts.search.search_step (the job's step function) on fixed batches,
    with the paper's optimizers and hyper-parameters (and a noise-scale monitor measuring it, if given)."""
    from dist_darts.architect import Architect
    from dist_darts.search import search_step
    s = paper_search_settings()
    criterion = nn.CrossEntropyLoss()
    w_opt = torch.optim.SGD(model.weights(), s.learning_rate, momentum=s.momentum, weight_decay=s.weight_decay)
    a_opt = torch.optim.Adam(model.arch_parameters(), s.arch_learning_rate, betas=(s.arch_beta1, s.arch_beta2),
                             weight_decay=s.arch_weight_decay)
    architect = Architect(model, criterion, a_opt, w_opt, s.momentum, s.weight_decay, unrolled=order == 2,
                          autocast=autocast, **({"average": average} if average else {}))
    xt, yt, xv, yv = batches

    def step():
        search_step(model, train_model, architect, w_opt, criterion, ((xt, yt), (xv, yv)), s.learning_rate,
                    s.grad_clip, autocast, channels_last, noise=noise)
    return step


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def serve(step, device: torch.device, images_per_step: int) -> None:
    """The worker loop: 'step' runs one timed step, 'end' reports peak memory and exits; one JSON line each."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device) if cuda else rss_bytes()
    _reply({"ready": True, "images_per_step": images_per_step})
    for line in sys.stdin:
        if line.strip() == "step":
            if cuda:
                torch.cuda.synchronize(device)
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            if cuda:
                torch.cuda.synchronize(device)
            _reply({"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0})
        elif line.strip() == "syncs":
            _reply({"syncs": count_host_syncs(step) if cuda else None})
        else:
            if cuda:
                peak = torch.cuda.max_memory_allocated(device)
                _reply({"peak_bytes": peak, "peak_delta_bytes": peak - base, "memory": "cuda max_memory_allocated"})
            else:
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
                _reply({"peak_bytes": peak, "peak_delta_bytes": peak - base, "memory": "peak RSS"})
            return


def count_host_syncs(step) -> int:
    """Host-device synchronisations during one step, as torch's sync debug mode reports them (one warning each)."""
    import warnings
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return sum("synchroniz" in str(w.message) for w in caught)


def _reply(obj) -> None:
    sys.stdout.write("@@ " + json.dumps(obj) + "\n")
    sys.stdout.flush()


# ---- parent side ------------------------------------------------------------------------------------------------

class Worker:
    """One configuration in its own process: `python <script> --worker '<json>'`."""

    def __init__(self, script: str, config: dict, env: dict | None = None, wait: bool = True):
        self.config = config
        self.walls, self.cpus = [], []
        self.proc = subprocess.Popen([sys.executable, script, "--worker", json.dumps(config)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=str(ROOT))
        if wait:
            self.wait_ready()

    def wait_ready(self) -> dict:
        self.info = self._read()
        return self.info

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith("@@ "):
                return json.loads(line[3:])
            sys.stderr.write(line)  # anything else the worker prints
        raise RuntimeError(f"worker {self.config.get('name')} died (exit {self.proc.wait()})")

    def send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def step(self, timed: bool) -> dict:
        self.send("step")
        return self.collect(timed)

    def collect(self, timed: bool) -> dict:
        r = self._read()
        if timed:
            self.walls.append(r["wall"])
            self.cpus.append(r["cpu"])
        return r

    def host_syncs(self) -> int | None:
        self.send("syncs")
        return self._read()["syncs"]

    def finish(self) -> dict:
        self.send("end")
        self.memory = self._read()
        self.proc.stdin.close()
        self.proc.wait(timeout=120)
        return self.memory


def worker_env(threads: int | None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def alternate(workers: list[Worker], warmup: int, steps: int, log=print) -> None:
    """warmup + steps rounds; each round steps every worker once, the order reversed every other round."""
    for r in range(warmup + steps):
        order = workers if r % 2 == 0 else workers[::-1]
        for w in order:
            res = w.step(timed=r >= warmup)
            log(f"  round {r + 1}/{warmup + steps} {w.config['name']}: {res['wall']:.2f} s wall, "
                f"{res['cpu']:.2f} s CPU" + ("" if r >= warmup else " (warm-up)"))


def add_common_arguments(p, threads_default=None, threads_help="torch threads per worker (default: torch's, = "
                                                                  "cores)") -> None:
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="(default cpu)")
    p.add_argument("--threads", type=int, default=threads_default, help=threads_help)
    p.add_argument("--steps", type=int, default=5, help="timed steps (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    p.add_argument("--no-record", action="store_true", help="print only")


def measured(w: Worker, batch: int, ref: Worker | None) -> tuple[dict, list[str]]:
    """A worker's timings as a JSON record and as table cells (step, range, images/s, CPU s, memory, ratios)."""
    wall = med(w.walls)
    record = {"name": w.config["name"], "batch": batch, "wall_s": w.walls, "cpu_s": w.cpus, "median_s": wall,
              "images_per_s": batch / wall, "median_cpu_s": med(w.cpus),
              **{k: w.memory[k] for k in ("peak_bytes", "peak_delta_bytes")}}
    cells = [f"{wall:.2f}", f"{min(w.walls):.2f} - {max(w.walls):.2f}", f"{batch / wall:.1f}", f"{med(w.cpus):.2f}",
             gib(w.memory["peak_delta_bytes"]),
             "" if ref is None else f"{med(ref.walls) / wall:.2f}x",
             "" if ref is None else f"{w.memory['peak_delta_bytes'] / ref.memory['peak_delta_bytes']:.2f}"]
    return record, cells


def measured_header(device: str) -> list[str]:
    return ["step s (median)", "min - max", "images/s", "CPU s/step",
            "peak GPU mem GiB" if device == "cuda" else "peak RSS delta GiB", "speed vs original", "memory vs original"]


def med(xs):
    return statistics.median(xs) if xs else float("nan")


# ---- facts and records ------------------------------------------------------------------------------------------

def machine(device: str) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    info = {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "memory_gib": round(
        os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30), "python": platform.python_version()}
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpus"] = torch.cuda.device_count()
    return info


def versions() -> dict:
    out = {}
    for dist in ("torch", "torchvision", "numpy"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    if torch.version.cuda:
        out["cuda"] = torch.version.cuda
    return out


def command_line() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])


def describe_machine(m: dict, v: dict) -> str:
    gpu = f", {m.get('gpus', 1)} x {m['gpu']}" if "gpu" in m else ", no GPU"
    return (f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB{gpu}. "
            f"Versions: Python {m['python']}, " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".")


def record(benchmark: str, device: str, payload: dict, title: str, markdown: str) -> None:
    """Append the JSON line and the RESULTS.md section."""
    date = datetime.datetime.now().isoformat(timespec="seconds")
    rec = {"benchmark": benchmark, "date": date, "command": command_line(), "device": device,
           "machine": machine(device), "versions": versions(), **payload}
    with open(HERE / "results.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    with open(HERE / "RESULTS.md", "a") as f:
        f.write(f"\n## {title} ({date[:10]})\n\n`{rec['command']}`\n\n"
                f"{describe_machine(rec['machine'], rec['versions'])}\n\n{markdown.strip()}\n")


def recorded(benchmark: str) -> list[dict]:
    """The runs of `benchmark` that record() appended to results.jsonl, oldest first (what --redraw reads)."""
    return [r for r in map(json.loads, (HERE / "results.jsonl").read_text().splitlines())
            if r["benchmark"] == benchmark]


def table(header: list[str], rows: list[list[str]], right_from: int = 1) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < right_from else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def spread(xs: list[float], fmt: str = ".2f") -> str:
    """mean ± standard deviation (the mean alone for one value)."""
    return f"{statistics.fmean(xs):{fmt}}" + (f" ± {statistics.stdev(xs):{fmt}}" if len(xs) > 1 else "")


def short_retrain(dataset: str, genotype_file: str, seed: int, epochs: int, steps: int, layers: int,
                  channels: int, output: str, image_size: int = 0, data_dir: str | None = None) -> dict:
    """A short retrain of a derived genotype, the study benchmarks' measure of a cell's quality (batch 64, lr 0.05,
    no auxiliary head, so a few epochs of a small network separate good cells from bad). Its keys: the top-1 on a
    class-balanced tenth of the training images held out (`retrain_val_top1`, what a study chooses by, as a sweep
    does) and on the test split (`retrain_top1`, read once, to report)."""
    from dist_darts import train
    from dist_darts.config import RetrainConfig
    cfg = RetrainConfig(dataset=dataset, data_dir=data_dir, image_size=image_size, workers=0, device="cpu", seed=seed,
                        genotype=genotype_file, epochs=epochs,
                        steps_per_epoch=steps, layers=layers, init_channels=channels, batch_size=64,
                        base_batch_size=64, learning_rate=0.05, auxiliary=False, val_portion=0.1,
                        log_interval=10**6, output=output)
    result = train.run(cfg)
    return {"retrain_val_top1": result.val_top1, "retrain_top1": result.test_top1}


def method_list(parser, text: str) -> list[str]:
    """--methods as a list of search methods, each one of METHOD_NAMES (else the parser's error)."""
    methods = text.split(",")
    unknown = [m for m in methods if m not in METHOD_NAMES]
    if unknown:
        parser.error(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHOD_NAMES)}")
    return methods


def pyplot():
    """matplotlib's pyplot on its file backend, or None (saying so) where matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no plot: matplotlib is not installed")
        return None
    return plt


def save_figure(fig, path: str) -> str:
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def gib(n: float) -> str:
    return f"{n / 2**30:.2f}"
