#!/usr/bin/env bash
# Runs the same `keel bench` workloads against a 3-member Keel cluster and a
# 3-member etcd cluster (Debian's etcd-server) on this machine, one after the
# other, and prints the tables used in BENCHMARKS.md.
# Usage: scripts/bench-compare.sh [SECONDS]   (needs target/release/keel)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
keel=target/release/keel
[ -x "$keel" ] || cargo build --release -p keel
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

run_kv() { # label endpoints [credential flags]
  for c in 1 64 256; do
    "$keel" bench kv --endpoints "$2" --clients "$c" --seconds "$secs" --label "$1" "${@:3}" | tail -1 | sed "s/^/| $1 | $c /"
  done
}

echo "| target | clients | ops | ops/s | p50 ms | p99 ms | max ms | errors |"
echo "|---|---|---|---|---|---|---|---|"
# Keel runs with TLS on (as always); its client config goes to $work.
"$keel" up --data-dir "$work/keel" --peer-port 17101 --client-port 12479 --api-port 16443 \
  --agents 0 --config "$work/keel.config" >"$work/keel.out" 2>&1 &
up=$!
until grep -q "Client config" "$work/keel.out"; do sleep 0.2; done
run_kv keel 127.0.0.1:12479,127.0.0.1:12480,127.0.0.1:12481 --config "$work/keel.config"
kill -INT $up; wait $up || true

bash scripts/etcd-cluster.sh "$work/etcd" >"$work/etcd.out" 2>&1 &
etcd_up=$!
until ETCDCTL_API=3 etcdctl --endpoints 127.0.0.1:22379 endpoint health >/dev/null 2>&1; do sleep 0.2; done
# etcd as Debian's defaults run it: plain text.
run_kv etcd 127.0.0.1:22379,127.0.0.1:22479,127.0.0.1:22579 --plaintext
kill "$etcd_up"; wait "$etcd_up" || true

echo
"$keel" bench failover --target keel --kills 5 | tail -4
"$keel" bench failover --target etcd --kills 5 | tail -4
