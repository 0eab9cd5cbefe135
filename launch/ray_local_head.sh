#!/usr/bin/env bash
# A quiet, private Ray head on this machine, for launch/ray_job_submit.sh and `dist-darts sweep --address auto`:
# every Ray service on 127.0.0.1 only (so no other machine can join or connect), no usage stats, token
# authentication on.
#   launch/ray_local_head.sh start     # then: launch/ray_job_submit.sh --seeds 2 --output "$PWD/runs/sweep1"
#   RAY_NUM_CPUS=2 launch/ray_local_head.sh start --num-gpus=1   # extra flags go to `ray start`
#   launch/ray_local_head.sh stop      # = `ray stop`: stops EVERY Ray process of this user on this machine
# Ports: RAY_PORT (GCS, default 6379), RAY_DASHBOARD_PORT (dashboard and job server, default 8265).
# Loopback: on Linux `ray start` replaces --node-ip-address=127.0.0.1 by the machine's address and then listens on
# every interface; RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is Ray's single-machine mode, which keeps the node, and so
# every server, on 127.0.0.1.
# Ray 2.60's `ray start` turns token auth on only when it finds a token; we set RAY_AUTH_MODE=token and make sure one
# exists (RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH names, else ~/.ray/auth_token; the file is generated if
# missing and always left readable by its owner only, mode 600). RAY_AUTH_MODE=disabled opts out. See docs/cluster.md.
set -euo pipefail
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}" RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
case "${1:-}" in
start)
    shift
    if [ "$RAY_AUTH_MODE" = token ] && [ -z "${RAY_AUTH_TOKEN:-}" ]; then
        token_file="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
        if [ ! -s "$token_file" ]; then
            # 64 random hex characters, like `ray get-auth-token --generate` (which writes world-readable)
            (umask 077 && mkdir -p "$(dirname "$token_file")" &&
                od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$token_file")
        fi
        chmod 600 "$token_file"
    fi
    exec ray start --head --node-ip-address=127.0.0.1 --port="${RAY_PORT:-6379}" --dashboard-host=127.0.0.1 \
        --dashboard-port="${RAY_DASHBOARD_PORT:-8265}" --disable-usage-stats \
        ${RAY_NUM_CPUS:+--num-cpus="$RAY_NUM_CPUS"} "$@" ;;
stop)
    exec ray stop ;;
*)
    echo "usage: $0 start [ray start flags] | stop" >&2; exit 2 ;;
esac
