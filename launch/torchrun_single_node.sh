#!/usr/bin/env bash
# One node, NPROC processes (one per GPU). Elastic restarts resume from the run folder's last checkpoint.
# --batch-size is per rank: 8 on 8 GPUs is the paper's global batch of 64; up to 64 (8x, docs/large-batch.md)
#   NPROC=8 launch/torchrun_single_node.sh search --config launch/configs/cifar10_search.yaml --batch-size 8 --output runs/s1
#   NPROC=8 launch/torchrun_single_node.sh retrain --config launch/configs/cifar10_retrain.yaml --genotype runs/s1/genotype.json --output runs/r1
set -euo pipefail
exec torchrun --standalone --nproc-per-node="${NPROC:-$(nvidia-smi -L 2>/dev/null | wc -l | awk '$1 > 0 {print $1; exit} {print 1}')}" \
    --max-restarts="${MAX_RESTARTS:-3}" -m dist_darts "$@" --resume
