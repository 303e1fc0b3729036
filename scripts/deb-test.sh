#!/bin/sh
# deb-test.sh DIR - install the packages `make deb` left in DIR into a
# fresh Debian 12 root (debootstrap, minbase) and use them there: qimg
# --version and a snapshot round trip, man qimg and man libqimg, the
# pkg-config example of libqimg(3) compiled and run, and the nbdkit plugin
# found by name (`nbdkit qimg`) serving an image to nbdinfo. Needs root
# and a Debian mirror (MIRROR, default deb.debian.org).
set -eu
DIR=$(cd "$1" && pwd)
ROOT=$DIR/root
MIRROR=${MIRROR:-http://deb.debian.org/debian}

if [ ! -x "$ROOT/usr/bin/apt-get" ]; then
    rm -rf "$ROOT"
    debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR" >"$DIR/debootstrap.log"
fi
mkdir -p "$ROOT/debs"
rm -f "$ROOT"/debs/*.deb
cp "$DIR"/qimg_*.deb "$DIR"/libqimg0_*.deb "$DIR"/libqimg-dev_*.deb \
    "$DIR"/nbdkit-qimg-plugin_*.deb "$ROOT/debs/"
cat >"$ROOT/debs/example.c" <<'EOF'
#include <stdio.h>
#include <qimg.h>

int main(int argc, char **argv)
{
    struct qimg_open_opts o = QIMG_OPEN_OPTS_INIT;
    qimg_image *img;

    o.read_write = 1;
    if (argc < 2 || qimg_image_open(&img, argv[1], &o) < 0 ||
        qimg_snapshot_create(img, "from-c") < 0) {
        fprintf(stderr, "%s\n", qimg_last_error()->message);
        return 1;
    }
    printf("libqimg %s: %llu bytes\n", qimg_version(),
           (unsigned long long)qimg_image_size(img));
    return qimg_image_close(img) < 0;
}
EOF
cat >"$ROOT/debs/run.sh" <<'EOF'
set -eux
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends /debs/*.deb man-db gcc \
    libc6-dev pkgconf libnbd-bin >/dev/null
cd /tmp
qimg --version | grep -q '^qimg version'
qimg create -q -f qcow2 a.qcow2 64M
qimg io -c 'write -P 7 0 1M' a.qcow2 >/dev/null
qimg snapshot -c one a.qcow2
qimg snapshot -l a.qcow2 | grep -q one
qimg check a.qcow2 | grep -q 'No errors'
man qimg 2>/dev/null | grep -q 'compact'
man libqimg 2>/dev/null | grep -q 'qimg_image_open'
gcc -o example /debs/example.c $(pkg-config --cflags --libs qimg)
./example a.qcow2 | grep -q 'bytes'
qimg snapshot -l a.qcow2 | grep -q from-c
nbdkit -U - qimg file=/tmp/a.qcow2 snapshot=one --run 'nbdinfo --map "$uri"' |
    grep -q data
echo "deb-test: all passed"
EOF
mount --bind /proc "$ROOT/proc" 2>/dev/null || true
trap 'umount "$ROOT/proc" 2>/dev/null || true' EXIT
cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
chroot "$ROOT" /bin/sh /debs/run.sh
