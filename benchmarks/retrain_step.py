"""Time one retraining step of the DARTS_V2 evaluation networks: images/s and peak memory.

    cifar     NetworkCIFAR, C=36, 20 cells, auxiliary head (weight 0.4), drop path 0.2, batch 96, 32x32, 10 classes
    imagenet  NetworkImageNet, C=48, 14 cells, auxiliary head, label smoothing 0.1, batch 128, 224x224, 1000 classes

A step is dist_darts.train's loop body: forward, loss (+ 0.4 x auxiliary loss), backward, gradient-norm clip 5,
SGD with momentum. `--original PATH` also runs the original DARTS code's NetworkCIFAR / NetworkImageNet (its
model.py, DARTS_V2 from its genotypes.py) with the same step, alternating step by step. The original is CUDA-only
code; on the CPU its utils.drop_path must create its mask with torch.FloatTensor instead of torch.cuda.FloatTensor
(benchmarks/RESULTS.md). Each configuration runs in its own process (peak memory as in search_step.py).

    python benchmarks/retrain_step.py [--network cifar imagenet] [--batch-size N] [--original /tmp/orig_bench/cnn]
    python benchmarks/retrain_step.py --network imagenet --batch-size 16     # a CPU: smaller ImageNet batch
    python benchmarks/retrain_step.py --device cuda --original /tmp/orig_gpu/cnn   # bf16 + channels_last
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

NETWORKS = {  # the paper's retraining settings (dist_darts.config's cifar10 and imagenet retrain defaults)
    "cifar": dict(C=36, layers=20, classes=10, image_size=32, batch=96, drop_path=0.2, label_smoothing=0.0),
    "imagenet": dict(C=48, layers=14, classes=1000, image_size=224, batch=128, drop_path=0.0, label_smoothing=0.1),
}


def build(cfg, device):
    """A closure taking one retrain step: the original's as its train.py takes it, or dist_darts.train.train_step
    (the job's step function) on a network prepared as the job prepares it."""
    from dist_darts.config import RetrainConfig
    s = RetrainConfig(dataset="synthetic")  # the paper's optimiser settings
    net = dict(NETWORKS[cfg["network"]], **cfg.get("size", {}))  # gpu_check's toy size overrides C and layers
    torch.manual_seed(cfg["seed"])
    if cfg["impl"] == "original":
        sys.path.insert(0, cfg["original"])
        import genotypes
        import model as original_model
        cls = original_model.NetworkCIFAR if cfg["network"] == "cifar" else original_model.NetworkImageNet
        model = cls(net["C"], net["classes"], net["layers"], True, genotypes.DARTS_V2).to(device).train()
    else:
        from dist_darts.job import autocast_factory
        from dist_darts.parallel import prepare_model
        from dist_darts.spaces.cnn.genotype import DARTS_V2
        from dist_darts.spaces.cnn.model import NetworkCIFAR, NetworkImageNet
        cls = NetworkCIFAR if cfg["network"] == "cifar" else NetworkImageNet
        model, train_model = prepare_model(cls(net["C"], net["classes"], net["layers"], True, DARTS_V2), device,
                                           channels_last=cfg["channels_last"], compile=cfg["compile"] is True)
        if cfg["compile"] == "cuda-graphs":  # torch.compile's CUDA graphs: the step replays recorded kernels
            train_model = torch.compile(train_model, mode="reduce-overhead")
        model.train()
        autocast, _ = autocast_factory(cfg["precision"], device)
    model.drop_path_prob = net["drop_path"]
    criterion = nn.CrossEntropyLoss(label_smoothing=net["label_smoothing"])
    optimizer = torch.optim.SGD(model.parameters(), s.learning_rate, momentum=s.momentum, weight_decay=s.weight_decay)
    g = torch.Generator().manual_seed(cfg["seed"])
    x = torch.randn(cfg["batch"], 3, net["image_size"], net["image_size"], generator=g).to(device)
    y = torch.randint(0, net["classes"], (cfg["batch"],), generator=g).to(device)

    if cfg["impl"] == "ours":
        from dist_darts.train import train_step
        scaler = torch.amp.GradScaler(device.type, enabled=False)
        return lambda: train_step(model, train_model, optimizer, scaler, criterion, (x, y), s.grad_clip,
                                  s.auxiliary_weight, autocast, channels_last=cfg["channels_last"])

    def step():
        optimizer.zero_grad()
        logits, logits_aux = model(x)
        loss = criterion(logits, y) + s.auxiliary_weight * criterion(logits_aux, y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        optimizer.step()
    return step


def worker(cfg):
    device = _bench.setup_worker(cfg)
    _bench.serve(build(cfg, device), device, cfg["batch"])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    _bench.add_common_arguments(p)
    p.add_argument("--network", nargs="+", default=["cifar", "imagenet"], choices=sorted(NETWORKS))
    p.add_argument("--batch-size", type=int, help="override the paper's batch (96 cifar, 128 imagenet)")
    p.add_argument("--original", help="path of the original DARTS cnn/ folder: run its networks side by side")
    p.add_argument("--precision", choices=["fp32", "bf16"], help="ours (default: bf16 on cuda, fp32 on cpu)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="ours in channels_last (default yes, as dist-darts retrain)")
    p.add_argument("--compile", action="store_true", help="also time ours with torch.compile")
    args = p.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    if args.precision is None:
        args.precision = "bf16" if args.device == "cuda" else "fp32"

    rows, results, notes = [], [], []
    for network in args.network:
        batch = args.batch_size or NETWORKS[network]["batch"]
        if batch != NETWORKS[network]["batch"]:
            notes.append(f"{network}: batch {batch} instead of the paper's {NETWORKS[network]['batch']}")
        base = {"network": network, "batch": batch, "device": args.device, "threads": args.threads, "seed": 0,
                "precision": args.precision, "channels_last": args.channels_last, "compile": False}
        cfgs = [dict(base, impl="ours", name="dist-darts")]
        if args.compile:
            cfgs.append(dict(base, impl="ours", name="dist-darts + torch.compile", compile=True))
        if args.original:
            cfgs.append(dict(base, impl="original", name="original", original=str(Path(args.original).resolve()),
                             precision="fp32", channels_last=False))
        print(f"{network}, batch {batch}:", flush=True)
        workers = [_bench.Worker(__file__, c, _bench.worker_env(args.threads)) for c in cfgs]
        _bench.alternate(workers, args.warmup, args.steps)
        for w in workers:
            w.finish()
        ref = next((w for w in workers if w.config["impl"] == "original"), None)
        for w in workers:
            res, cells = _bench.measured(w, batch, ref)
            results.append(dict(res, network=network, precision=w.config["precision"],
                                channels_last=w.config["channels_last"], compile=w.config["compile"]))
            rows.append([network, w.config["name"], f"{batch}", *cells])
    text = _bench.table(["network", "code", "batch", *_bench.measured_header(args.device)], rows, right_from=2)
    print(text)
    if args.no_record:
        return
    threads = args.threads or torch.get_num_threads()
    cfg_line = (f"DARTS_V2 networks with auxiliary heads; device {args.device}, ours in {args.precision}"
                + (", channels_last" if args.channels_last else "") + f"; {threads} torch thread(s) per process. "
                f"Median of {args.steps} timed steps after {args.warmup} warm-up step(s), configurations alternating "
                "step by step. " + ("; ".join(notes) + ". " if notes else ""))
    _bench.record("retrain_step", args.device, {"config": vars(args), "results": results}, "Retrain step",
                  cfg_line + "\n\n" + text)


if __name__ == "__main__":
    main()
