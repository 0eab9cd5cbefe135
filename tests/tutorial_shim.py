"""Stand-ins for `dist-darts` and `torchrun` while tests/test_tutorial.py runs docs/tutorial.md's blocks.

They run the real programs with the block's own arguments, then append toy sizes, so every command of the
tutorial runs as written but finishes in seconds: the embedded digits data instead of CIFAR-10 (ImageNet
commands keep ImageNet and read a generated toy folder from $TOY_IMAGENET), 3 cells, 1 epoch of 2 steps.
torchrun runs 2 local processes (1 per node), and a multi-node command starts each of its nodes here, all
meeting at a free local port.

    python tutorial_shim.py dist-darts ARGS...
    python tutorial_shim.py torchrun ARGS...
"""

import os
import subprocess
import sys

SIZES = ["--layers", "3", "--init-channels", "4", "--workers", "0", "--log-interval", "1"]
TOY = {
    "search": SIZES + ["--batch-size", "16", "--epochs", "1", "--steps-per-epoch", "2"],
    "retrain": SIZES + ["--batch-size", "8", "--epochs", "1", "--steps-per-epoch", "2"],
    "evaluate": ["--workers", "0"],
    "sweep": SIZES[:4] + ["--batch-size", "16", "--steps-per-epoch", "2", "--search-epochs", "1",
                          "--select-epochs", "1", "--final-epochs", "1", "--seeds", "2", "--gpus-per-worker", "0",
                          "--cpus-per-worker", "0.5"],
}


# recurrent jobs: the embedded corpus (evaluate reads the checkpoint's), a 16-unit cell, 2 steps
RNN_TOY = {
    "search": ["--dataset", "pydoc", "--batch-size", "4", "--bptt", "10", "--emsize", "16", "--nhid", "16",
               "--epochs", "1", "--steps-per-epoch", "2", "--log-interval", "1"],
    "evaluate": ["--bptt", "70"],
}
RNN_TOY["retrain"] = RNN_TOY["search"] + ["--test-batch-size", "4"]
# a recurrent sweep takes its sizes from the demo YAMLs its block names; only the length is cut here
RNN_TOY["sweep"] = ["--steps-per-epoch", "2", "--search-epochs", "1", "--select-epochs", "1", "--final-epochs", "1",
                    "--cpus-per-worker", "0.5"]


def toy(args: list[str]) -> list[str]:
    """A dist_darts command line with the toy data and sizes appended (later flags win)."""
    if not args or args[0] not in TOY:
        return args
    if "rnn" in args and args[args.index("rnn") - 1] == "--space":
        return args + RNN_TOY[args[0]]
    data = (["--data-dir", os.environ["TOY_IMAGENET"]] if any("imagenet" in a for a in args)
            else ["--dataset", "digits"])
    return args + data + TOY[args[0]]


def torchrun(args: list[str]) -> int:
    from helpers import free_port  # this script's folder is tests/, first on sys.path
    split = args.index("-m")
    launcher, module, job = args[:split], args[split + 1], args[split + 2:]
    options = dict(a.lstrip("-").split("=", 1) for a in launcher if "=" in a)
    nnodes = int(options.get("nnodes", "1"))
    port = free_port()
    rewritten = []
    for a in launcher:
        key = a.lstrip("-").split("=", 1)[0]
        if key in ("nproc-per-node", "nproc_per_node"):
            a = f"--nproc-per-node={2 if nnodes == 1 else 1}"
        elif key in ("rdzv-endpoint", "rdzv_endpoint"):
            a = f"--rdzv-endpoint=127.0.0.1:{port}"
        rewritten.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", *rewritten, "-m", module, *toy(job)]
    nodes = [subprocess.Popen(cmd) for _ in range(nnodes)]
    return max(node.wait() for node in nodes)


def main() -> int:
    program, args = sys.argv[1], sys.argv[2:]
    if program == "torchrun":
        return torchrun(args)
    return subprocess.call([sys.executable, "-m", "dist_darts", *toy(args)])


if __name__ == "__main__":
    sys.exit(main())
