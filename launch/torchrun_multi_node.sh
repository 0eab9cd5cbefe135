#!/usr/bin/env bash
# Several nodes: run this on every node with the same RDZV_ENDPOINT (host:port of any one node) and JOB_ID.
#   NNODES=4 NPROC=8 RDZV_ENDPOINT=node0:29400 JOB_ID=imagenet1 \
#     launch/torchrun_multi_node.sh retrain --config launch/configs/imagenet_retrain.yaml --data-dir /data/imagenet --output /shared/runs/in1
# The run folder must be on storage every node sees (rank 0 writes, all ranks read on resume).
set -euo pipefail
: "${NNODES:?set NNODES}" "${RDZV_ENDPOINT:?set RDZV_ENDPOINT=host:port}" "${JOB_ID:?set JOB_ID}"
exec torchrun --nnodes="$NNODES" --nproc-per-node="${NPROC:-8}" \
    --rdzv-backend=c10d --rdzv-endpoint="$RDZV_ENDPOINT" --rdzv-id="$JOB_ID" \
    --max-restarts="${MAX_RESTARTS:-3}" -m dist_darts "$@" --resume
