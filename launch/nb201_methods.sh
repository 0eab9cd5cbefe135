#!/usr/bin/env bash
# The NAS-Bench-201 table of the methods on CIFAR-10: every --method, 3 seeds, each a 50-epoch first-order search of
# the benchmark's space (C=16, N=5, the DARTS paper's search settings) that looks its cell up in the benchmark every
# epoch; then one line per method: the benchmark's CIFAR-10 test accuracy of the final cells, mean +/- std.
#   launch/nb201_methods.sh ~/data/cifar10 NAS-Bench-201-v1_1-096897.pth          # one GPU, runs in turn
#   GPUS=8 launch/nb201_methods.sh ~/data/cifar10 NAS-Bench-201-v1_1-096897.pth   # 8 searches at a time, a GPU each
# METHODS, SEEDS and OUT (default runs/nb201) override what runs and where; a run already finished is skipped and an
# interrupted one resumes. The NAS-Bench-201 paper timed a first-order DARTS search of this space at about 3.3
# GPU-hours on its GPUs; the 18 searches are a few tens of GPU-hours.
set -euo pipefail
DATA_DIR="$1" BENCH="$2"
METHODS="${METHODS:-darts darts-minus beta-darts sdarts-rs fair-darts drnas}" SEEDS="${SEEDS:-0 1 2}"
OUT="${OUT:-runs/nb201}" GPUS="${GPUS:-1}"
i=0
for method in $METHODS; do
    for seed in $SEEDS; do
        run="$OUT/$method/seed_$seed"
        if [ ! -f "$run/result.json" ]; then
            resume=(); [ -f "$run/checkpoints/last.pt" ] && resume=(--resume)
            CUDA_VISIBLE_DEVICES=$((i % GPUS)) dist-darts search --space nb201 --dataset cifar10 --data-dir "$DATA_DIR" \
                --method "$method" --seed "$seed" --benchmark-file "$BENCH" --output "$run" "${resume[@]}" &
            i=$((i + 1))
            if [ $((i % GPUS)) -eq 0 ]; then wait; fi
        fi
    done
done
wait
python - "$OUT" $METHODS <<'PY'
import json, statistics, sys
from pathlib import Path
out, methods = Path(sys.argv[1]), sys.argv[2:]
print("| method | NAS-Bench-201 CIFAR-10 test % of the final cell (mean +/- std) | cells |")
print("|---|---:|---|")
for method in methods:
    runs = [json.loads(h.read_text())[-1] for h in sorted((out / method).glob("seed_*/history.json"))]
    acc = [r["bench_cifar10_test"] for r in runs if r.get("bench_cifar10_test") is not None]
    spread = f"{statistics.fmean(acc):.2f} +/- {statistics.stdev(acc) if len(acc) > 1 else 0:.2f}" if acc else "-"
    print(f"| {method} | {spread} | {', '.join(r['genotype']['arch_str'] for r in runs)} |")
PY
