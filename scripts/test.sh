#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need
# (Debian's etcd-client for the etcdctl compatibility test, etcd-server for
# the comparison benchmarks), checks formatting and lints, then runs every
# test of every crate.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v etcdctl >/dev/null 2>&1 || ! command -v etcd >/dev/null 2>&1 ||
  ! dpkg -s busybox-static >/dev/null 2>&1; then
  echo "installing etcd-client, etcd-server and busybox-static..."
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq etcd-client etcd-server busybox-static >/dev/null
  # The package's service is not wanted: tests start their own processes.
  $SUDO systemctl stop etcd >/dev/null 2>&1 || true
fi
command -v etcdctl >/dev/null || { echo "etcdctl is still missing" >&2; exit 1; }
# The Docker runtime's tests run real containers of locally built images.
bash scripts/test-images.sh

export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
# The real kubectl for cli/tests/kubectl_real.rs (Debian package kubectl).
if [ ! -x /usr/bin/kubectl ]; then
  echo "installing kubectl (the kubectl compatibility test runs it)..."
  AS_ROOT=""; [ "$(id -u)" -eq 0 ] || AS_ROOT="sudo"
  $AS_ROOT apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $AS_ROOT apt-get install -y -qq kubectl >/dev/null
fi
[ -x /usr/bin/kubectl ] || { echo "kubectl is still missing" >&2; exit 1; }
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Two test threads: each end-to-end test runs three or four real masters,
# and the machine has two cores.
cargo test --workspace --no-fail-fast -- --test-threads=2
