"""Time one recurrent DARTS search step of dist-darts side by side with the original code's (quark0/darts rnn/).

One step is what the original train_search.py does per batch, first order: the alpha step (validation loss of
the search network, its alpha gradient, Adam lr 3e-3, weight decay 1e-3), then the weight step (forward with
the temporal activation regularisation beta = 1e-3, backward, gradient-norm clip 0.25, SGD lr 20, weight decay
5e-7). Both hidden states (training and validation) are carried from step to step, as the original does.
Dropouts are train_search.py's (0.75, 0.25, 0.75, 0.2, 0). The batches are real text: the embedded pydoc corpus
(dist_darts.data.text), batchified, the same rows for both codes.

`--original PATH` is the original's rnn/ folder, extracted outside this repository and made to run on the CPU
with the edits tests/fixtures/README.md lists (no `.cuda()`, the legacy embedding backend replaced by
F.embedding); ours: the recurrent search job's own step (dist_darts.spaces.rnn.architect.RecurrentArchitect,
first order, then dist_darts.spaces.rnn.jobs.weight_step) on dist_darts.spaces.rnn.RNNModelSearch.
Each code runs in its own worker process (benchmarks/_bench.py), alternating step by step; the median of
`--steps` timed steps after `--warmup` is reported. Appends to benchmarks/results.jsonl and RESULTS.md.

    python benchmarks/rnn_search_step.py --original /tmp/orig_rnn/rnn --setting small ptb
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

LR, CLIP, WDECAY, ARCH_LR, ARCH_WDECAY, BETA = 20.0, 0.25, 5e-7, 3e-3, 1e-3, 1e-3
DROPOUTS = (0.75, 0.25, 0.75, 0.2, 0.0)  # dropout, dropouth, dropoutx, dropouti, dropoute of train_search.py
SETTINGS = {  # name: (ntoken, emsize = nhid, batch, bptt)
    "ptb": (10000, 300, 64, 35),  # the search network's size, PTB's vocabulary, batch 64
    "small": (10000, 64, 32, 20),
}


def batches(cfg):
    """Training and validation rows of the embedded corpus, batchified for cfg's batch and bptt."""
    from dist_darts.data import text
    corpus = text.embedded_corpus()
    train = text.batchify(corpus.train, cfg["batch"])
    valid = text.batchify(corpus.valid, cfg["batch"])
    return text.get_batch(train, 0, cfg["bptt"]), text.get_batch(valid, 0, cfg["bptt"])


def weight_step(model, optimizer, hidden, x, y, ntoken):
    log_prob, hidden, raw, _ = model(x, hidden, return_h=True)
    loss = F.nll_loss(log_prob.view(-1, ntoken), y.reshape(-1))
    loss = loss + BETA * (raw[-1][1:] - raw[-1][:-1]).pow(2).mean()
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), CLIP)
    optimizer.step()
    return hidden


def build_ours(cfg):
    """The library's own step: RecurrentArchitect (first order) then spaces.rnn.jobs.weight_step, as the search job runs."""
    import contextlib

    from dist_darts.spaces.rnn.architect import RecurrentArchitect
    from dist_darts.spaces.rnn.networks import RNNModelSearch
    from dist_darts.spaces.rnn.jobs import weight_step as library_weight_step
    ntoken, nhid = cfg["ntoken"], cfg["nhid"]
    torch.manual_seed(0)
    model = RNNModelSearch(ntoken, nhid, nhid, nhid, *DROPOUTS).train()
    optimizer = torch.optim.SGD(model.weights(), LR, weight_decay=WDECAY)
    arch_optimizer = torch.optim.Adam(model.arch_parameters(), ARCH_LR, weight_decay=ARCH_WDECAY)
    architect = RecurrentArchitect(model, arch_optimizer, WDECAY, CLIP)
    job = SimpleNamespace(alpha=0.0, beta=BETA, grad_clip=CLIP)
    (x, y), (xv, yv) = batches(cfg)
    state = {"train": model.init_hidden(cfg["batch"]), "valid": model.init_hidden(cfg["batch"])}

    def step():
        _, state["valid"] = architect.step(state["train"], x, y, state["valid"], xv, yv, LR)
        _, _, state["train"] = library_weight_step(model, model, optimizer, model.weights(), state["train"], x, y,
                                                   LR, job, contextlib.nullcontext)
    return step


def build_original(cfg):
    """The original's model and Architect, driven as its train_search.py drives them."""
    sys.path.insert(0, cfg["original"])
    import architect as original_architect  # the original's modules, from cfg["original"]
    import model_search
    # the original's repackage_hidden recurses forever on torch >= 0.4
    from dist_darts.spaces.rnn.networks import detach_hidden
    ntoken, nhid = cfg["ntoken"], cfg["nhid"]
    torch.manual_seed(0)
    model = model_search.RNNModelSearch(ntoken, nhid, nhid, nhid, *DROPOUTS).train()
    optimizer = torch.optim.SGD(model.parameters(), LR, weight_decay=WDECAY)
    architect = original_architect.Architect(model, SimpleNamespace(
        wdecay=WDECAY, clip=CLIP, arch_lr=ARCH_LR, arch_wdecay=ARCH_WDECAY))
    (x, y), (xv, yv) = batches(cfg)
    state = {"train": model.init_hidden(cfg["batch"]), "valid": model.init_hidden(cfg["batch"])}

    def step():
        state["valid"], _ = architect.step(detach_hidden(state["train"]), x, y.reshape(-1),
                                           detach_hidden(state["valid"]), xv, yv.reshape(-1), optimizer, False)
        optimizer.zero_grad()
        state["train"] = weight_step(model, optimizer, detach_hidden(state["train"]), x, y, ntoken)
    return step


def worker(cfg):
    device = _bench.setup_worker(cfg)
    step = build_original(cfg) if cfg["impl"] == "original" else build_ours(cfg)
    _bench.serve(step, device, cfg["batch"] * cfg["bptt"])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    _bench.add_common_arguments(p)
    p.add_argument("--setting", nargs="+", default=["small", "ptb"], choices=sorted(SETTINGS),
                   help="; ".join(f"{k}: ntoken {v[0]}, emsize = nhid {v[1]}, batch {v[2]}, bptt {v[3]}"
                                  for k, v in SETTINGS.items()))
    p.add_argument("--original", required=False, help="the original DARTS rnn/ folder (CPU-patched)")
    args = p.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    if args.device != "cpu":
        p.error("the original rnn/ code is run on the CPU here (--device cpu)")

    rows, results = [], []
    for setting in args.setting:
        ntoken, nhid, batch, bptt = SETTINGS[setting]
        base = {"setting": setting, "ntoken": ntoken, "nhid": nhid, "batch": batch, "bptt": bptt,
                "device": "cpu", "threads": args.threads}
        configs = [dict(base, impl="ours", name="dist-darts")]
        if args.original:
            configs.append(dict(base, impl="original", name="original", original=str(Path(args.original).resolve())))
        print(f"setting {setting}:", flush=True)
        workers = [_bench.Worker(__file__, c, _bench.worker_env(args.threads)) for c in configs]
        _bench.alternate(workers, args.warmup, args.steps)
        for w in workers:
            w.finish()
        ref = workers[-1] if args.original else None
        for w in workers:
            wall = _bench.med(w.walls)
            results.append({"name": w.config["name"], "setting": setting, "wall_s": w.walls, "cpu_s": w.cpus,
                            "median_s": wall, "tokens_per_s": batch * bptt / wall,
                            "peak_delta_bytes": w.memory["peak_delta_bytes"]})
            rows.append([setting, w.config["name"], f"{1000 * wall:.0f}", f"{1000 * min(w.walls):.0f} - "
                         f"{1000 * max(w.walls):.0f}", f"{batch * bptt / wall:.0f}", f"{_bench.med(w.cpus):.2f}",
                         _bench.gib(w.memory["peak_delta_bytes"]),
                         "" if ref is None else f"{_bench.med(ref.walls) / wall:.2f}x"])
    table = _bench.table(["setting", "code", "ms/step (median)", "min - max", "tokens/s", "CPU s/step",
                          "peak RSS delta GiB", "speed vs original"], rows, right_from=2)
    print(table)
    if args.no_record:
        return
    threads = args.threads or torch.get_num_threads()
    settings = "; ".join(f"{s}: ntoken {SETTINGS[s][0]}, emsize = nhid {SETTINGS[s][1]}, batch {SETTINGS[s][2]}, "
                         f"bptt {SETTINGS[s][3]}" for s in args.setting)
    _bench.record("rnn_search_step", "cpu", {"config": vars(args), "results": results},
                  "Recurrent search step, first order",
                  f"Config: {settings}; first order (alpha step on the validation batch, then the weight step "
                  f"with TAR beta 1e-3, clip 0.25, SGD lr 20), train_search.py's dropouts, both hidden states "
                  f"carried; {threads} torch thread(s) per process. Median of {args.steps} timed steps after "
                  f"{args.warmup} warm-up step(s), the two codes alternating step by step; tokens/s = batch x "
                  f"bptt / step time.\n\n{table}\n")


if __name__ == "__main__":
    main()
