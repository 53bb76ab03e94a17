#!/usr/bin/env bash
# Starts a 3-member etcd cluster (Debian's etcd-server) on loopback for
# comparison benchmarks. Member i listens for peers on 22i80 (22380, 22480,
# 22580) and for clients on 22i79 (22379, 22479, 22579). Ctrl-C stops it.
# Usage: scripts/etcd-cluster.sh [DATA_DIR]
set -euo pipefail
dir="${1:-$(mktemp -d)}"
mkdir -p "$dir"
command -v etcd >/dev/null || { echo "etcd not found: apt-get install etcd-server" >&2; exit 1; }
initial="e1=http://127.0.0.1:22380,e2=http://127.0.0.1:22480,e3=http://127.0.0.1:22580"
pids=()
for i in 3 4 5; do
  n=$((i - 2))
  peer="http://127.0.0.1:22${i}80"
  client="http://127.0.0.1:22${i}79"
  etcd --name "e$n" --data-dir "$dir/e$n" \
    --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
    --listen-client-urls "$client" --advertise-client-urls "$client" \
    --initial-cluster "$initial" --initial-cluster-state new \
    --initial-cluster-token keel-bench >"$dir/e$n.log" 2>&1 &
  pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
echo "etcd up: endpoints 127.0.0.1:22379,127.0.0.1:22479,127.0.0.1:22579 (data $dir)"
wait
