"""The `dist-darts` command line (also `python -m dist_darts`, so `torchrun -m dist_darts ...` works).

Parses argv, builds what the sub-command needs and calls it. Bad input exits 2 with one line; anything else 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib.metadata import version

from .spaces.cnn import genotype as gt
from . import config
from .config import DATASETS, ConfigError
from .method_table import DEFAULT as DEFAULT_METHOD
from .methods import METHODS
from .spaces import DEFAULT as DEFAULT_SPACE
from .spaces import SPACES, described


class UsageError(ValueError):
    """A bad argument found after parsing (exit code 2, one line)."""


def _bad_input_errors():
    from .checkpoint import CheckpointError
    from .data import DataError
    from .spaces.nb201.bench import BenchmarkError
    from .visualize import DrawingError
    return (gt.GenotypeError, ConfigError, UsageError, DrawingError, CheckpointError, DataError, BenchmarkError)


# --- jobs -------------------------------------------------------------------------------------------------

def _run_job(args, kind: str) -> None:
    """The `kind` job (search or retrain) of the space --space names, with its config from the command line."""
    space = SPACES[args.space]
    space.job(kind)(config.from_args(space.config(kind), args))


def cmd_search(args):
    _run_job(args, "search")


def cmd_retrain(args):
    _run_job(args, "retrain")


def cmd_sweep(args):
    from . import tune
    tune.run(config.from_args(config.SweepConfig, args))


def cmd_evaluate(args):
    space = SPACES[args.space]
    space.evaluate(config.from_args(space.config("evaluate"), args))


# --- genotype ---------------------------------------------------------------------------------------------

def cmd_genotype_list(args):
    from .spaces import rnn
    width = max(map(len, [*gt.GENOTYPES, *rnn.RNN_GENOTYPES]))
    for name, g in gt.GENOTYPES.items():
        print(f"{name:<{width}}  {gt.format_genotype(g)}")
    print("recurrent cells (--space rnn):")
    for name, g in rnn.RNN_GENOTYPES.items():
        print(f"{name:<{width}}  {rnn.format_recurrent(g)}")


def _cell_of_space(key: str, is_name, is_cell_dict, load):
    """load(key) when `key` is one of a space's cells (is_name(key), or a JSON file holding an object that
    is_cell_dict accepts), else None: the convolutional readers take it, and say what is wrong with it."""
    if is_name(key):
        return load(key)
    if os.path.isfile(key):
        try:
            with open(key, "rb") as f:
                is_cell = is_cell_dict(json.loads(f.read()))
        except ValueError:  # not JSON
            return None
        return load(key) if is_cell else None
    return None


def _nb201_cell(key: str) -> str | None:
    """The arch string when `key` is a NAS-Bench-201 cell (an arch string, or a JSON file holding arch_str)."""
    from .spaces import nb201
    return _cell_of_space(key, lambda k: k.lstrip().startswith("|"), nb201.is_arch_dict, nb201.load)


def _recurrent_cell(key: str):
    """The RecurrentGenotype when `key` is a recurrent cell (RNN_..., or a JSON file holding its edges)."""
    from .spaces import rnn
    from .spaces.rnn.genotype import is_recurrent_dict
    return _cell_of_space(key, rnn.RNN_GENOTYPES.__contains__, is_recurrent_dict, rnn.load_recurrent)


def cmd_genotype_show(args):
    arch_str = _nb201_cell(args.genotype)
    if arch_str is not None:
        if args.format == "nni":
            raise UsageError("--format nni: NNI's DARTS space has no NAS-Bench-201 cells; use text or json")
        print(json.dumps({"arch_str": arch_str}, indent=2) if args.format == "json" else arch_str)
        return
    recurrent = _recurrent_cell(args.genotype)
    if recurrent is not None:
        from .spaces import rnn
        if args.format == "nni":
            raise UsageError("--format nni: NNI has no recurrent cells; use text or json")
        print(json.dumps(rnn.recurrent_to_dict(recurrent), indent=2) if args.format == "json"
              else rnn.format_recurrent(recurrent))
        return
    g = gt.load(args.genotype)
    if args.format == "json":
        print(json.dumps(gt.to_dict(g), indent=2))
    elif args.format == "nni":
        print(json.dumps(gt.to_nni_dict(g), indent=2))
    else:
        print(gt.format_genotype(g))


def cmd_genotype_draw(args):
    from .visualize import draw_genotype, draw_recurrent_cell, draw_side_by_side
    arch_str = _nb201_cell(args.genotype)
    if arch_str is not None:  # one cell: PREFIX.FMT
        from .spaces import nb201
        print(nb201.draw(arch_str, f"{args.output}.{args.format}", "NAS-Bench-201 cell"))
        return
    recurrent = _recurrent_cell(args.genotype)
    if recurrent is not None:  # one cell: PREFIX.FMT
        print(draw_recurrent_cell(recurrent, f"{args.output}.{args.format}", args.genotype))
        return
    if args.side_by_side:  # NNI's picture: both cells in one image
        print(draw_side_by_side(gt.load(args.genotype), f"{args.output}.{args.format}", args.genotype))
        return
    for path in draw_genotype(gt.load(args.genotype), args.output, args.format):
        print(path)


def cmd_genotype_convert(args):
    g = gt.load(args.genotype)
    fmt = args.to or args.output.rsplit(".", 1)[-1].lower()
    if fmt == "json":
        gt.save(g, args.output)
    elif fmt == "nni":
        with open(args.output, "w") as f:
            json.dump(gt.to_nni_dict(g), f, indent=2)
            f.write("\n")
    elif fmt in ("png", "svg", "pdf"):
        from .visualize import draw_genotype
        prefix = args.output.rsplit(".", 1)[0] if args.output.lower().endswith(f".{fmt}") else args.output
        for path in draw_genotype(g, prefix, fmt):
            print(path)
        return
    else:
        raise UsageError(f"--to: cannot convert to {fmt!r}; use json, nni, png, svg or pdf")
    print(args.output)


def cmd_genotype_alphas(args):
    import torch

    from .visualize import plot_alpha_history, plot_alphas
    if os.path.isdir(args.alphas):  # RUN/alphas (or RUN): one image over the epochs
        print(plot_alpha_history(args.alphas, args.output))
        return
    try:
        saved = torch.load(args.alphas, map_location="cpu", weights_only=True)
        a_normal, a_reduce = saved["alphas_normal"], saved["alphas_reduce"]
    except FileNotFoundError:
        raise UsageError(f"alphas file {args.alphas} does not exist") from None
    except Exception as e:  # truncated, foreign or tampered files all land here
        raise UsageError(f"alphas file {args.alphas}: not a saved alphas file "
                         f"(needs tensors 'alphas_normal' and 'alphas_reduce'): {type(e).__name__}") from None
    g = gt.derive(a_normal, a_reduce, saved.get("betas_normal"), saved.get("betas_reduce"), max_skip=args.max_skip,
                  mixing=METHODS[args.method].derivation)
    print(gt.format_genotype(g))
    print(plot_alphas(a_normal, a_reduce, args.output, genotype=g))


def cmd_genotype_bench(args):
    from .spaces import nb201
    from .spaces.nb201 import bench
    entry = bench.Benchmark(args.benchmark_file).lookup(nb201.load(args.arch_str))
    print(json.dumps(entry, indent=2) if args.json else bench.format_entry(entry))


def cmd_genotype_animate(args):
    from .visualize import animate
    print(animate(args.run, args.output))


# --- model ------------------------------------------------------------------------------------------------

def cmd_model_summary(args):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .spaces.cnn.model import build_network, count_parameters, paper_size
    info = DATASETS[args.dataset]
    paper_C, paper_layers = paper_size(info.image_size)
    C, layers = args.init_channels or paper_C, args.layers or paper_layers
    net = build_network(gt.load(args.genotype), info.num_classes, info.image_size, layers, C, args.auxiliary).eval()
    x = torch.zeros(1, 3, info.image_size, info.image_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x)
    rows = [
        ("network", f"{type(net).__name__} (C={C}, layers={layers}, classes={info.num_classes})"),
        ("genotype", args.genotype),
        ("parameters", f"{count_parameters(net):,} ({count_parameters(net) / 1e6:.2f} M, without auxiliary head)"),
        ("parameters, all", f"{count_parameters(net, exclude_auxiliary=False):,}"),
        ("multiply-adds", f"{counter.get_total_flops() // 2:,} ({counter.get_total_flops() / 2e6:.1f} M "
                          f"at {info.image_size}x{info.image_size}, counted by torch.utils.flop_counter)"),
    ]
    if info.image_size == 224:
        rows.append(("counting", "convolutions and the classifier; BN, ReLU, pooling and node sums add at most "
                                 "~16 M, so no count of this network reaches the paper's 574 M, whose counting code "
                                 "was never published"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


# --- hub --------------------------------------------------------------------------------------------------

def cmd_hub_list(args):
    from .hub import catalogue
    rows = catalogue()
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    cols = [("name", "name"), ("dataset", "dataset"), ("input", "input"), ("network", "network"),
            ("params", "parameters"), ("reported_error", "reported test error"), ("source", "source")]
    cells = [[f"{r[k]:,}" if k == "params" else str(r[k]) for k, _ in cols] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (_, h) in enumerate(cols)]
    for line in [[h for _, h in cols], *cells]:
        print("  ".join(v.rjust(w) if i == 4 else v.ljust(w) for i, (v, w) in enumerate(zip(line, widths))).rstrip())
    print("\nparameters: counted on the network built here (without the auxiliary head); reported errors: as "
          "published by each source for its own trained network. Released weights: dist-darts hub list --json.")


# --- parser -----------------------------------------------------------------------------------------------

def _add_space(parser: argparse.ArgumentParser, space: str) -> None:
    parser.add_argument("--space", choices=list(SPACES), default=space,
                        help=f"search space: {described()}; it also picks the options listed here (default: "
                             f"{DEFAULT_SPACE})")


def requested_space(argv) -> str:
    """The --space an argument list asks for (the table's default when none): it decides which options the job
    parser has."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--space", default=DEFAULT_SPACE)
    return pre.parse_known_args(argv)[0].space


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default in its help, once: a help text that says its default itself keeps its own words."""

    def _get_help_string(self, action):
        return action.help if "(default:" in (action.help or "") else super()._get_help_string(action)


def build_parser(space: str = DEFAULT_SPACE) -> argparse.ArgumentParser:
    """The parser; `space` picks the option set of the jobs (search, retrain, evaluate)."""
    jobs = {kind: SPACES[space if space in SPACES else DEFAULT_SPACE].config(kind)
            for kind in ("search", "retrain", "evaluate")}
    fmt = _DefaultsHelp
    parser = argparse.ArgumentParser(prog="dist-darts", description="Distributed Differentiable Architecture "
                                     "Search (DARTS): search, retrain, evaluate, sweep, genotypes, models and the "
                                     "published cells (hub).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('dist-darts')}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("search", help="DARTS architecture search (1st/2nd order, PC-DARTS), one or many ranks",
                       description="Search a cell with DARTS. Under torchrun every rank runs this; the run folder "
                                   "ends with genotype.json, alphas.pt, drawings, history.json and checkpoints. "
                                   "--space rnn searches a recurrent cell on text (the original's rnn/ code), "
                                   "--space nb201 NAS-Bench-201's cell (docs/nas-bench-201.md); --space NAME "
                                   "--help lists that space's options.")
    _add_space(p, space)
    config.add_arguments(p, jobs["search"])
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("retrain", help="train a genotype from scratch (auxiliary loss, drop path, cutout, EMA)",
                       description="Train an evaluation network of a genotype. The run folder ends with "
                                   "metrics.json (top1, top5, params), checkpoints/last.pt and best.pt. --space rnn "
                                   "trains a recurrent cell on text (metrics.json: val_perplexity, "
                                   "test_perplexity, params); --space nb201 a NAS-Bench-201 cell with the "
                                   "benchmark's protocol.")
    _add_space(p, space)
    config.add_arguments(p, jobs["retrain"])
    p.set_defaults(func=cmd_retrain)

    p = sub.add_parser("evaluate", help="top-1/top-5 and parameters of a checkpoint",
                       description="Evaluate a retrain checkpoint (or an original DARTS state dict with --genotype) "
                                   "on the test split; prints top-1/top-5 and writes metrics.json into "
                                   "evaluate/NAME/ of the checkpoint's run folder. --space rnn gives the test "
                                   "perplexity of a recurrent checkpoint or of the original's pickled "
                                   "ptb_model.pt.")
    _add_space(p, space)
    config.add_arguments(p, jobs["evaluate"])
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("sweep", help="seeded searches, selection retrains and the winner's retrain with Ray Tune",
                       description="The DARTS authors' protocol in one command: N seeded searches in parallel, a short "
                                   "retrain of each distinct genotype, then the full retrain of the best one (R "
                                   "repeats). Runs on a private local Ray runtime or an existing cluster (--address). "
                                   "The sweep folder ends with report.json (winner, trials, final) and report.md.")
    config.add_arguments(p, config.SweepConfig)
    p.set_defaults(func=cmd_sweep)

    p_gen = sub.add_parser("genotype", help="show, draw and convert genotypes", formatter_class=fmt)
    gsub = p_gen.add_subparsers(dest="action", required=True, metavar="ACTION")
    geno_help = ("a published name (see `genotype list`), a genotype JSON file, an NNI architecture-dict JSON, or a "
                 "NAS-Bench-201 arch string (quoted: |op~0|+...)")

    p = gsub.add_parser("list", help="list the published genotypes", formatter_class=fmt)
    p.set_defaults(func=cmd_genotype_list)

    p = gsub.add_parser("show", help="print a genotype", formatter_class=fmt)
    p.add_argument("genotype", help=geno_help)
    p.add_argument("--format", choices=["text", "json", "nni"], default="text",
                   help="text: the original code's Genotype(...) repr; json: ours; nni: NNI's architecture dict")
    p.set_defaults(func=cmd_genotype_show)

    p = gsub.add_parser("draw", help="draw the normal and reduction cells with graphviz", formatter_class=fmt)
    p.add_argument("genotype", help=geno_help)
    p.add_argument("--output", default="cell", help="file prefix: writes PREFIX_normal.FMT and PREFIX_reduce.FMT")
    p.add_argument("--format", choices=["png", "svg", "pdf"], default="png", help="image format")
    p.add_argument("--side-by-side", action="store_true", help="both cells side by side in one image, PREFIX.FMT")
    p.set_defaults(func=cmd_genotype_draw)

    p = gsub.add_parser("convert", help="convert a genotype to JSON, an NNI dict or drawings", formatter_class=fmt)
    p.add_argument("genotype", help=geno_help)
    p.add_argument("--output", required=True, help="output file (its suffix picks the format unless --to is given)")
    p.add_argument("--to", choices=["json", "nni", "png", "svg", "pdf"], default=None,
                   help="output format (default: unset = from the output file's suffix)")
    p.set_defaults(func=cmd_genotype_convert)

    p = gsub.add_parser("alphas", help="derive the genotype from saved alphas and plot their softmax",
                        formatter_class=fmt)
    p.add_argument("alphas", help="a .pt file with tensors 'alphas_normal' and 'alphas_reduce' (as the search "
                                  "saves each epoch), or a search's alphas/ folder: each op's share over the epochs")
    p.add_argument("--output", default="alphas.png", help="plot file (.png, .svg or .pdf)")
    p.add_argument("--max-skip", type=int, default=None, metavar="N",
                   help="at most N skip_connects in the normal cell (P-DARTS's rule, as search --max-skip)")
    p.add_argument("--method", choices=list(METHODS), default=DEFAULT_METHOD,
                   help="the search's --method: fair-darts's cells rank sigmoids of the alphas, the others' softmax")
    p.set_defaults(func=cmd_genotype_alphas)

    p = gsub.add_parser("animate", help="animate a search: the derived cells and the alphas, epoch by epoch",
                        formatter_class=fmt)
    p.add_argument("run", help="a search's run folder (its genotypes/ and alphas/ per-epoch files)")
    p.add_argument("--output", default=None, help="a .gif, or a .mp4 where ffmpeg exists (default: RUN/search.gif)")
    p.set_defaults(func=cmd_genotype_animate)

    p = gsub.add_parser("bench", help="a NAS-Bench-201 cell's accuracies in the benchmark (200 epochs, mean of "
                        "its trials)", formatter_class=fmt)
    p.add_argument("arch_str", metavar="ARCH_STR",
                   help="the cell's arch string, quoted (| is the shell's pipe), e.g. "
                        "'|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|"
                        "nor_conv_3x3~2|', or its genotype.json")
    p.add_argument("--benchmark-file", required=True, metavar="PATH",
                   help="NAS-Bench-201-v1_0-e61699.pth or -v1_1-096897.pth, NATS-Bench's "
                        "NATS-tss-v1_0-3ffb9.pickle.pbz2 or its NATS-tss-v1_0-3ffb9-simple/ folder (read without "
                        "running code from it)")
    p.add_argument("--json", action="store_true", help="print the entry as JSON")
    p.set_defaults(func=cmd_genotype_bench)

    p_model = sub.add_parser("model", help="inspect evaluation networks", formatter_class=fmt)
    msub = p_model.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = msub.add_parser("summary", help="parameters and multiply-adds of a genotype's evaluation network",
                        formatter_class=fmt)
    p.add_argument("--genotype", default="DARTS_V2", help=geno_help)
    p.add_argument("--dataset", choices=sorted(DATASETS), default="cifar10",
                   help="sets the classes and input size (imagenet builds NetworkImageNet)")
    p.add_argument("--init-channels", type=int, default=None, help="initial channels C (default: 36, ImageNet 48)")
    p.add_argument("--layers", type=int, default=None, help="number of cells (default: 20, ImageNet 14)")
    p.add_argument("--auxiliary", action=argparse.BooleanOptionalAction, default=True,
                   help="build the auxiliary head too, as retrain does (its parameters are listed apart)")
    p.set_defaults(func=cmd_model_summary)
    p_hub = sub.add_parser("hub", help="published genotypes at the papers' sizes", formatter_class=fmt)
    hsub = p_hub.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = hsub.add_parser("list", help="every published genotype: source, reported error, parameters, input size",
                        formatter_class=fmt)
    p.add_argument("--json", action="store_true", help="print the rows as JSON (with the released weights' links)")
    p.set_defaults(func=cmd_hub_list)
    return parser


def main(argv=None) -> int:
    args = build_parser(requested_space(sys.argv[1:] if argv is None else argv)).parse_args(argv)
    from .driver import Diverged
    from .job import StoppedAsAsked
    from .sweep_spaces import SweepFailed
    try:
        args.func(args)
    except StoppedAsAsked as e:
        print(f"dist-darts: {e}")
        return 0
    except _bad_input_errors() as e:
        print(f"dist-darts: error: {e}", file=sys.stderr)
        return 2
    except (Diverged, SweepFailed) as e:
        print(f"dist-darts: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # checkpoints are written atomically: the last one is whole
        print("dist-darts: interrupted; the run's last checkpoint is intact: the same command with --resume "
              "continues it", file=sys.stderr)
        return 130
    return 0
