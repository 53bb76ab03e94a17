#!/usr/bin/env bash
# Builds the images the Docker runtime's tests use, locally (no registry is
# reachable): `keel-test/busybox:latest`, a rootfs of Debian's static
# busybox plus its applet links, made with `docker import`; and
# `keel-test/pause:latest`, the pod sandbox image (busybox sleeping
# forever, as the Kubernetes pause image does). Idempotent: an image that
# exists is kept. Fails loudly when the Docker daemon is unreachable.
set -euo pipefail

BUSYBOX_IMAGE="${KEEL_TEST_BUSYBOX_IMAGE:-keel-test/busybox:latest}"
PAUSE_IMAGE="${KEEL_TEST_PAUSE_IMAGE:-keel-test/pause:latest}"

docker version --format '{{.Server.Version}}' >/dev/null || {
  echo "test-images.sh: the Docker daemon is unreachable" >&2
  exit 1
}

if docker image inspect "$BUSYBOX_IMAGE" >/dev/null 2>&1 &&
  docker image inspect "$PAUSE_IMAGE" >/dev/null 2>&1; then
  exit 0
fi

BB=/bin/busybox
if ! [ -x "$BB" ] || ! "$BB" --list | grep -qx httpd; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  if ! dpkg -s busybox-static >/dev/null 2>&1; then
    echo "installing busybox-static (for the test images)..." >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq busybox-static >/dev/null
  fi
fi
file_static() { ! ldd "$1" >/dev/null 2>&1; }
file_static "$BB" || { echo "test-images.sh: $BB is not static" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
mkdir -p "$root/bin" "$root/tmp" "$root/etc" "$root/www" "$root/proc" "$root/sys" "$root/dev"
chmod 1777 "$root/tmp"
cp "$BB" "$root/bin/busybox"
for applet in $("$BB" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
echo 'root:x:0:' >"$root/etc/group"
echo 'keel-test busybox' >"$root/www/index.html"
tar -C "$root" -cf "$work/rootfs.tar" .

if ! docker image inspect "$BUSYBOX_IMAGE" >/dev/null 2>&1; then
  docker import -c 'ENV PATH=/bin' -c 'CMD ["sh"]' "$work/rootfs.tar" "$BUSYBOX_IMAGE" >/dev/null
fi
if ! docker image inspect "$PAUSE_IMAGE" >/dev/null 2>&1; then
  docker import -c 'ENV PATH=/bin' -c 'ENTRYPOINT ["/bin/sleep", "2147483647"]' \
    "$work/rootfs.tar" "$PAUSE_IMAGE" >/dev/null
fi
echo "built $BUSYBOX_IMAGE and $PAUSE_IMAGE" >&2
