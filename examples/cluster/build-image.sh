#!/usr/bin/env bash
# Builds the image `hodei:local` from this repository without a registry:
# the hodei binary, the shared libraries it needs (and the dynamic loader),
# and a static busybox so that jobs have `sh` and the usual tools. The root
# filesystem is imported with `docker import`.
#
#   examples/cluster/build-image.sh              # cargo build --release first
#   HODEI_BIN=target/debug/hodei examples/cluster/build-image.sh
#   IMAGE=myorg/hodei:dev examples/cluster/build-image.sh
#
# Needs: cargo, docker, busybox (Debian: busybox-static), ldd, tar.
set -euo pipefail
cd "$(dirname "$0")/../.."

image=${IMAGE:-hodei:local}
bin=${HODEI_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release -p hodei
  bin=target/release/hodei
fi
busybox=$(command -v busybox) || {
  echo "build-image.sh: needs busybox (apt-get install busybox-static)" >&2
  exit 1
}

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,tmp,etc,usr/local/bin,workspace}
chmod 1777 "$root/tmp"
echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"

cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done
# Debug info is not needed in the image.
objcopy --strip-debug "$bin" "$root/usr/local/bin/hodei" 2>/dev/null ||
  cp "$bin" "$root/usr/local/bin/hodei"

# The libraries ldd lists (none for a static binary), at the same paths.
for exe in "$bin" "$busybox"; do
  { ldd "$exe" 2>/dev/null || true; } | { grep -o '/[^ ]*' || true; } | while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
done

tar -C "$root" --numeric-owner -c . |
  docker import \
    --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
    --change 'CMD ["hodei", "--help"]' \
    - "$image" >/dev/null
echo "built $image"
