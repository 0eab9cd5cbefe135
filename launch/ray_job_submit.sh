#!/usr/bin/env bash
# Submit `dist-darts sweep ARGS` to a running Ray cluster as a Ray job. The job runs on the cluster's head in a
# copy of this repository (uploaded as the working dir, less what .gitignore and the excludes below name), so the
# cluster runs the code you have here, and on that cluster (--address auto: the job's RAY_ADDRESS; without it the
# sweep would start a private Ray runtime of its own). Paths in ARGS are read in that copy: give --config relative
# to the repository and --output absolute, on storage every node sees (/shared/... with the configs in cluster/).
#   launch/ray_local_head.sh start && launch/ray_job_submit.sh --seeds 2 --output "$PWD/runs/sweep1"
#   ray dashboard cluster/gpu-cloud.yaml &     # tunnel to the cloud head's job server, then:
#   launch/ray_job_submit.sh --config cluster/sweep-cifar10.yaml --output /shared/runs/sweep1 --resume
# Address of the job server (http://, not the GCS host:6379): RAY_API_SERVER_ADDRESS, else RAY_ADDRESS, else
# http://127.0.0.1:8265. Ctrl-C stops following the logs, not the job (`ray job stop ID` does that).
# Token auth: `ray job submit` sends the token (RAY_AUTH_TOKEN, the file RAY_AUTH_TOKEN_PATH names, else
# ~/.ray/auth_token) only when RAY_AUTH_MODE=token, hence that default; docs/cluster.md has the details.
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
exec ray job submit --address "${RAY_API_SERVER_ADDRESS:-${RAY_ADDRESS:-http://127.0.0.1:8265}}" --working-dir . \
    --runtime-env-json '{"excludes": ["/.git/", "/data/", "/runs/", "/tests/fixtures/"],
                         "env_vars": {"RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}}' \
    -- dist-darts sweep --address auto "$@"
