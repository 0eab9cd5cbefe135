"""Time one DARTS search step (alpha step + weight step) of dist-darts, optionally side by side with the original.

One step is what dist_darts.search does per batch: `Architect.step` on a validation batch (first order, or
second order through the unrolled virtual step), then the weight step on a training batch (forward, backward,
gradient-norm clip 5, SGD with momentum). The paper's search configuration by default: C=16, 8 cells,
batch 64 of 32x32 images, 10 classes; synthetic batches, identical for every configuration.

`--original PATH` also runs the original DARTS code's step (quark0/darts `cnn/` folder: its `Network` from
model_search.py, its `Architect.step`, then the same weight step as its train_search.py) on the same batches,
in its own process, alternating step by step with ours, and prints the ratios. The original is CUDA-only code:
for the CPU, extract it outside this repository and drop its `.cuda()` calls (benchmarks/RESULTS.md lists the
four); on a GPU, use it unmodified.

Each configuration runs in its own worker process (peak memory per configuration: CPU peak RSS minus RSS before
the first step; GPU max_memory_allocated). Reports the median of `--steps` timed steps after `--warmup` steps.
images/s = batch / step time (one step consumes one training and one validation batch). Appends a JSON line to
benchmarks/results.jsonl and a section to benchmarks/RESULTS.md (unless --no-record).

    python benchmarks/search_step.py [--order 1 2] [--batch-size 64] [--original /tmp/orig_bench/cnn]
    python benchmarks/search_step.py --partial-channels 4            # PC-DARTS, batch 256
    python benchmarks/search_step.py --device cuda --original /tmp/orig_gpu/cnn   # bf16 + channels_last
    python benchmarks/search_step.py --batch-size 32 --ablate depthwise mixed_op channels_last all
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

ABLATIONS = {  # each switches one optimisation off through the supernet's and prepare_model's own arguments
    "depthwise": "stock nn.Conv2d depthwise convs (oneDNN backward)",
    "mixed_op": "MixedOp as sum(w * op(x)): no shared ReLU, no weight folded into BN, no in-place sums",
    "channels_last": "NCHW on the CPU",
    "all": "all three",
}


def synthetic_batches(cfg, device):
    g = torch.Generator().manual_seed(cfg["seed"])
    shape = (cfg["batch"], 3, cfg["image_size"], cfg["image_size"])
    xt, xv = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    yt, yv = torch.randint(0, cfg["classes"], (cfg["batch"],), generator=g), torch.randint(
        0, cfg["classes"], (cfg["batch"],), generator=g)
    return [t.to(device) for t in (xt, yt, xv, yv)]


def build_ours(cfg, device):
    from dist_darts.job import autocast_factory
    from dist_darts.parallel import prepare_model
    from dist_darts.spaces.cnn.supernet import Network
    off = set(cfg["ablate"])
    off = set(ABLATIONS) if "all" in off else off
    torch.manual_seed(cfg["seed"])
    model = Network(cfg["C"], cfg["classes"], cfg["layers"], partial_channels=cfg["partial_channels"],
                    fast_depthwise="depthwise" not in off, fold_alphas="mixed_op" not in off)
    channels_last = cfg["channels_last"] and "channels_last" not in off
    model, train_model = prepare_model(model, device, channels_last=channels_last, compile=cfg["compile"])
    model.train()
    autocast, _ = autocast_factory(cfg["precision"], device)
    return _bench.darts_search_step(model, train_model, cfg["order"], autocast, synthetic_batches(cfg, device),
                                    channels_last=channels_last)


def build_original(cfg, device):
    """The original's objects, driven as its train_search.py drives them."""
    from types import SimpleNamespace
    sys.path.insert(0, cfg["original"])
    import architect as original_architect  # the original's modules, from cfg["original"]
    import model_search
    s = _bench.paper_search_settings()
    torch.manual_seed(cfg["seed"])
    criterion = nn.CrossEntropyLoss().to(device)
    model = model_search.Network(cfg["C"], cfg["classes"], cfg["layers"], criterion).to(device)
    optimizer = torch.optim.SGD(model.parameters(), s.learning_rate, momentum=s.momentum, weight_decay=s.weight_decay)
    args = SimpleNamespace(momentum=s.momentum, weight_decay=s.weight_decay, arch_learning_rate=s.arch_learning_rate,
                           arch_weight_decay=s.arch_weight_decay)
    architect = original_architect.Architect(model, args)
    xt, yt, xv, yv = synthetic_batches(cfg, device)
    model.train()

    def step():
        architect.step(xt, yt, xv, yv, s.learning_rate, optimizer, unrolled=cfg["order"] == 2)
        optimizer.zero_grad()
        logits = model(xt)
        loss = criterion(logits, yt)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        optimizer.step()
    return step


def worker(cfg):
    device = _bench.setup_worker(cfg)
    step = build_original(cfg, device) if cfg["impl"] == "original" else build_ours(cfg, device)
    _bench.serve(step, device, cfg["batch"])


def configs(args, order):
    base = {"order": order, "batch": args.batch_size, "C": args.init_channels, "layers": args.layers,
            "classes": 10, "image_size": 32, "device": args.device, "threads": args.threads, "seed": 0,
            "partial_channels": args.partial_channels, "compile": False, "ablate": [],
            "precision": args.precision, "channels_last": args.channels_last}
    out = [dict(base, impl="ours", name="dist-darts")]
    if args.compile:
        out.append(dict(base, impl="ours", name="dist-darts + torch.compile", compile=True))
    for name in args.ablate:
        out.append(dict(base, impl="ours", name=f"dist-darts without {name}", ablate=[name]))
    if args.original and args.partial_channels == 1:
        out.append(dict(base, impl="original", name="original", original=str(Path(args.original).resolve()),
                        precision="fp32", channels_last=False))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    _bench.add_common_arguments(p)
    p.add_argument("--order", type=int, nargs="+", default=[1, 2], choices=[1, 2], help="DARTS order(s) (1 2)")
    p.add_argument("--batch-size", type=int, help="per step (default 64; 64 x K with --partial-channels K)")
    p.add_argument("--init-channels", type=int, default=16, help="C (default 16)")
    p.add_argument("--layers", type=int, default=8, help="cells (default 8)")
    p.add_argument("--partial-channels", type=int, default=1, help="PC-DARTS K (default 1: plain DARTS)")
    p.add_argument("--original", help="path of the original DARTS cnn/ folder: run its step side by side")
    p.add_argument("--precision", choices=["fp32", "bf16"], help="ours (default: bf16 on cuda, fp32 on cpu)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   help="keep the parameters NCHW (default channels_last, as dist-darts search)")
    p.add_argument("--compile", action="store_true", help="also time ours with torch.compile on the weight step")
    p.add_argument("--ablate", nargs="*", default=[], choices=sorted(ABLATIONS),
                   help="also time ours with an optimisation switched off: " + "; ".join(
                       f"{k}: {v}" for k, v in ABLATIONS.items()))
    args = p.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    if args.batch_size is None:
        args.batch_size = 64 * args.partial_channels
    if args.precision is None:
        args.precision = "bf16" if args.device == "cuda" else "fp32"

    rows, results = [], []
    for order in args.order:
        print(f"order {order}, batch {args.batch_size}:", flush=True)
        workers = [_bench.Worker(__file__, c, _bench.worker_env(args.threads)) for c in configs(args, order)]
        _bench.alternate(workers, args.warmup, args.steps)
        for w in workers:
            w.finish()
        ref = next((w for w in workers if w.config["impl"] == "original"), None)
        ours = workers[0]
        for w in workers:
            res, cells = _bench.measured(w, args.batch_size, ref)
            results.append(dict(res, impl=w.config["impl"], order=order, partial_channels=args.partial_channels,
                                precision=w.config["precision"], ablate=w.config["ablate"],
                                compile=w.config["compile"]))
            rows.append([f"{order}", w.config["name"], *cells,
                         f"{_bench.med(ours.walls) / _bench.med(w.walls):.2f}x"])
    text = _bench.table(["order", "code", *_bench.measured_header(args.device), "speed vs dist-darts"], rows,
                        right_from=2)
    print(text)
    if args.no_record:
        return
    threads = args.threads or torch.get_num_threads()
    cfg_line = (f"Config: C={args.init_channels}, {args.layers} cells, batch {args.batch_size}, 32x32, 10 classes"
                + (f", PC-DARTS K={args.partial_channels}" if args.partial_channels > 1 else "")
                + f"; device {args.device}, ours in {args.precision}"
                + (", channels_last" if args.channels_last else "")
                + f"; {threads} torch thread(s) per process. Median of {args.steps} timed steps after "
                  f"{args.warmup} warm-up step(s), configurations alternating step by step. images/s = batch / "
                  "step time; CPU s/step = process CPU time (robust to other load on the machine); memory: "
                  + ("torch.cuda.max_memory_allocated" if args.device == "cuda"
                     else "peak RSS of the configuration's own process minus its RSS before the first step") + ".")
    _bench.record("search_step", args.device, {"config": vars(args), "results": results},
                  "Search step" + (f", PC-DARTS K={args.partial_channels}" if args.partial_channels > 1 else ""),
                  cfg_line + "\n\n" + text)


if __name__ == "__main__":
    main()
