#!/bin/sh
# Install the Debian packages qimg needs to build, test and demo.
# Idempotent: only missing packages are installed (apt-get, as root).
# `install-deps.sh deb` adds what `make deb` needs.
set -e
PKGS="meson ninja-build pkg-config gcc clang zlib1g-dev libzstd-dev libcmocka-dev python3-pytest qemu-utils nbdkit nbdkit-plugin-dev libnbd-bin scdoc"
[ "${1:-}" = deb ] && PKGS="$PKGS dpkg-dev debhelper lintian debootstrap"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing packages:$missing (run as root to install)" >&2
    exit 1
fi
echo "install-deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q $missing >/dev/null 2>&1 || {
    apt-get update -q >/dev/null
    apt-get install -y -q $missing >/dev/null
}
