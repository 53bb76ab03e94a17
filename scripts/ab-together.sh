#!/usr/bin/env bash
# A/B of two Keel builds' put throughput that gives both the same minute of
# the machine: two 3-master clusters (plain text, loopback, their own ports
# and temp dirs) run side by side, each loaded by its own `keel bench kv`
# started at the same moment; the builds swap places every run, so neither
# is always the one that starts first. On a VM whose speed changes from one
# minute to the next, alternating whole runs compares minutes as much as
# builds (BENCHMARKS.md, issue 13's tenth round).
# Caveat: the two clusters also share the cores, and the busier one gets
# more of them, so a build that needs less CPU per put can still lose here
# (issue 13's fourteenth round), which is why each run also prints each
# side's members' CPU per put (from /proc).
# Usage: scripts/ab-together.sh BIN_A BIN_B [RUNS] [CLIENTS] [SECONDS]
#   Prints each run's puts/s and members' CPU per put for both builds and
#   B/A; needs etcdctl.
#   A_ARGS / B_ARGS (environment): extra `keel master` flags for A's / B's
#   masters, so one build can be compared with itself under other flags.
set -euo pipefail
a="$1" b="$2" runs="${3:-4}" clients="${4:-256}" secs="${5:-6}"
read -ra a_args <<<"${A_ARGS:-}"
read -ra b_args <<<"${B_ARGS:-}"
work=$(mktemp -d)

pids=()
stop() {
  if [ ${#pids[@]} -gt 0 ]; then
    kill "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
  pids=()
}
trap 'stop; rm -rf "$work"' EXIT

# cluster BIN PORT_PREFIX TAG [FLAGS...]: starts three masters (in this
# shell, so that `stop` can end them) and sets `eps` to their client
# endpoints.
cluster() {
  local bin=$1 p=$2 tag=$3 ic=""
  shift 3
  eps=""
  for n in 1 2 3; do
    ic+="${ic:+,}$tag$n=127.0.0.1:${p}8$n"
    eps+="${eps:+,}127.0.0.1:${p}7$n"
  done
  for n in 1 2 3; do
    "$bin" master --name "$tag$n" --data-dir "$work/$tag$n" --listen-peer "127.0.0.1:${p}8$n" \
      --listen-client "127.0.0.1:${p}7$n" --listen-api "127.0.0.1:${p}9$n" --zone "z$n" \
      --initial-cluster "$ic" --insecure "$@" >"$work/$tag$n.log" 2>&1 &
    pids+=($!)
  done
}

# cpu_ticks PID...: user+system clock ticks used so far by these processes.
cpu_ticks() {
  local t=0 p
  for p in "$@"; do t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat"))); done
  echo "$t"
}

# result FILE N: column N of a `keel bench kv` result row (2: ops, 3: ops/s).
result() { grep -E '^\| [0-9]' "$1" | awk -F'|' -v n="$2" '{ gsub(/ /, "", $n); print $n }'; }

# us_per_put TICKS FILE: CPU µs per put, from clock ticks and a result file.
us_per_put() {
  awk -v c="$1" -v n="$(result "$2" 2)" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { printf "%.1f", c / hz * 1e6 / n }'
}

for run in $(seq "$runs"); do
  if (( run % 2 )); then
    first=$a second=$b first_args=("${a_args[@]}") second_args=("${b_args[@]}")
  else
    first=$b second=$a first_args=("${b_args[@]}") second_args=("${a_args[@]}")
  fi
  rm -rf "${work:?}"/*
  # Ports below Linux's ephemeral range (32768-60999): a dial of a port in
  # it can take that port as its own source, before the member binds it.
  cluster "$first" 246 x "${first_args[@]}"
  e1=$eps
  cluster "$second" 247 y "${second_args[@]}"
  e2=$eps
  for e in "$e1" "$e2"; do
    for _ in $(seq 100); do
      etcdctl --endpoints="$e" endpoint health >/dev/null 2>&1 && break
      sleep 0.3
    done
  done
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || {
      echo "a master exited:" >&2
      tail -n 3 "$work"/*.log >&2
      exit 1
    }
  done
  "$first" bench kv --plaintext --endpoints "$e1" --clients 64 --seconds 2 >/dev/null &
  w=$!
  "$second" bench kv --plaintext --endpoints "$e2" --clients 64 --seconds 2 >/dev/null
  wait "$w"
  c1=$(cpu_ticks "${pids[@]:0:3}") c2=$(cpu_ticks "${pids[@]:3:3}")
  "$first" bench kv --plaintext --endpoints "$e1" --clients "$clients" --conns 64 \
    --seconds "$secs" >"$work/out1" &
  w=$!
  "$second" bench kv --plaintext --endpoints "$e2" --clients "$clients" --conns 64 \
    --seconds "$secs" >"$work/out2"
  wait "$w"
  c1=$(($(cpu_ticks "${pids[@]:0:3}") - c1)) c2=$(($(cpu_ticks "${pids[@]:3:3}") - c2))
  u1=$(us_per_put "$c1" "$work/out1") u2=$(us_per_put "$c2" "$work/out2")
  r1=$(result "$work/out1" 3) r2=$(result "$work/out2" 3)
  if (( run % 2 )); then ra=$r1 rb=$r2 ua=$u1 ub=$u2; else ra=$r2 rb=$r1 ua=$u2 ub=$u1; fi
  awk -v run="$run" -v a="$ra" -v b="$rb" -v ua="$ua" -v ub="$ub" \
    'BEGIN { printf "run %d: A %s puts/s (%s µs CPU per put), B %s puts/s (%s µs), B/A %.2f\n", run, a, ua, b, ub, b / a }'
  stop
done
