#!/usr/bin/env bash
# Backup figures for BENCHMARKS.md: 100k keys of 1 KiB loaded into a 3-member
# Keel cluster and a 3-member etcd cluster (one after the other), then the
# time and size of save, verify and restore with each tool. Restores run
# after the source cluster has stopped (a restore is offline: it fills a new
# data dir), so neither tool's restore shares the CPU with its cluster.
# Usage: scripts/bench-backup.sh [KEYS] [keel-first|etcd-first]
#   (needs target/release/keel, or the binary KEEL_BIN names, etcd,
#   etcdctl). The second half runs on memory the first half's processes
#   touched and freed, which on a VM is cheaper than fresh memory: run both
#   orders to see how much that is.
set -euo pipefail
cd "$(dirname "$0")/.."
keys="${1:-100000}"
order="${2:-keel-first}"
keel="${KEEL_BIN:-$PWD/target/release/keel}"
[ -x "$keel" ] || cargo build --release -p keel
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
t() { local s=$EPOCHREALTIME; "$@" >/dev/null; awk "BEGIN { printf \"%.2f\", $EPOCHREALTIME - $s }"; }

keel_half() {
  "$keel" up --data-dir "$work/keel" --peer-port 17101 --client-port 12479 >"$work/keel.out" 2>&1 &
  local up=$!
  until grep -q "Keel is up" "$work/keel.out"; do sleep 0.2; done
  local eps=127.0.0.1:12479,127.0.0.1:12480,127.0.0.1:12481
  "$keel" bench load --endpoints "$eps" --keys "$keys" --value-size 1024
  ks=$(t "$keel" backup save --endpoints 127.0.0.1:12479 --out "$work/k.keelbak")
  kv=$(t "$keel" backup verify "$work/k.keelbak")
  ksize=$(stat -c %s "$work/k.keelbak")
  kill -INT $up; wait $up || true
  # The stopped cluster's dirty pages, not the restore's fsync, pay for
  # their writeback (for both tools).
  sync
  kr=$(t "$keel" backup restore "$work/k.keelbak" --data-dir "$work/krestore")
}

etcd_half() {
  bash scripts/etcd-cluster.sh "$work/etcd" >"$work/etcd.out" 2>&1 &
  local etcd_up=$!
  # Every member healthy, not just the first: the load spreads over all three.
  until ETCDCTL_API=3 etcdctl --endpoints 127.0.0.1:22379,127.0.0.1:22479,127.0.0.1:22579 \
    endpoint health >/dev/null 2>&1; do sleep 0.2; done
  "$keel" bench load --endpoints 127.0.0.1:22379,127.0.0.1:22479,127.0.0.1:22579 --plaintext --keys "$keys" --value-size 1024
  es=$(t env ETCDCTL_API=3 etcdctl --endpoints 127.0.0.1:22379 snapshot save "$work/e.db")
  ev=$(t env ETCDCTL_API=3 etcdctl snapshot status "$work/e.db")
  esize=$(stat -c %s "$work/e.db")
  kill "$etcd_up"; wait "$etcd_up" || true
  sync
  er=$(t env ETCDCTL_API=3 etcdctl snapshot restore "$work/e.db" --data-dir "$work/erestore")
}

case "$order" in
  keel-first) keel_half; etcd_half ;;
  etcd-first) etcd_half; keel_half ;;
  *) echo "order must be keel-first or etcd-first, not $order" >&2; exit 2 ;;
esac

echo "| tool | keys | save s | verify s | restore s | file bytes | order |"
echo "|---|---|---|---|---|---|---|"
echo "| keel backup | $keys | $ks | $kv | $kr | $ksize | $order |"
echo "| etcdctl snapshot (3.4; verify = snapshot status) | $keys | $es | $ev | $er | $esize | $order |"
