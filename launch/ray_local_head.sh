#!/usr/bin/env bash
# A quiet, private Ray head on this machine, for launch/ray_job_submit.sh and `dist-darts sweep --address auto`:
# dashboard and job server on 127.0.0.1 only, no usage stats, token authentication on.
#   launch/ray_local_head.sh start     # then: launch/ray_job_submit.sh --seeds 2 --output "$PWD/runs/sweep1"
#   RAY_NUM_CPUS=2 launch/ray_local_head.sh start --num-gpus=1   # extra flags go to `ray start`
#   launch/ray_local_head.sh stop      # = `ray stop`: stops EVERY Ray process of this user on this machine
# Ports: RAY_PORT (GCS, default 6379), RAY_DASHBOARD_PORT (dashboard and job server, default 8265).
# Ray 2.60's `ray start` turns token auth on only when it finds a token; we set RAY_AUTH_MODE=token and make sure one
# exists (RAY_AUTH_TOKEN, the file RAY_AUTH_TOKEN_PATH names, else ~/.ray/auth_token, generated if missing).
# RAY_AUTH_MODE=disabled opts out. See docs/cluster.md.
set -euo pipefail
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
case "${1:-}" in
start)
    shift
    if [ "$RAY_AUTH_MODE" = token ]; then ray get-auth-token --generate >/dev/null; fi
    exec ray start --head --port="${RAY_PORT:-6379}" --dashboard-host=127.0.0.1 \
        --dashboard-port="${RAY_DASHBOARD_PORT:-8265}" --disable-usage-stats \
        ${RAY_NUM_CPUS:+--num-cpus="$RAY_NUM_CPUS"} "$@" ;;
stop)
    exec ray stop ;;
*)
    echo "usage: $0 start [ray start flags] | stop" >&2; exit 2 ;;
esac
