#!/bin/sh
# make_corpus.sh - regenerate the fuzz seed corpus (tests/fuzz/corpus/) with
# qemu-img and qemu-io.
#
# One small, valid qcow2 image per variant the library must read: v2/v3,
# 512-byte/4k/16k/64k clusters, every refcount width, extended L2, zlib and
# zstd compressed clusters, zero clusters, discarded clusters, internal
# snapshots, backing file names, persistent bitmaps, lazy refcounts and a
# dirty image. Virtual sizes stay at a few MiB and clusters small so the
# whole corpus is well under 1 MB.
#
# Deterministic: qemu-img writes only what the commands say, except the
# creation time of a snapshot, which is replaced afterwards by a fixed
# value (snapshot table field "date", qcow2-format.md §5.1).
#
# Usage: tests/fuzz/make_corpus.sh [OUTDIR]   (default: tests/fuzz/corpus)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/corpus}
QEMU_IMG=${QEMU_IMG:-qemu-img}
QEMU_IO=${QEMU_IO:-qemu-io}
PYTHON=${PYTHON:-/usr/bin/python3}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# new NAME SIZE OPTIONS [qemu-img create args...]
new() {
    name=$1 size=$2 opts=$3
    shift 3
    "$QEMU_IMG" create -q -f qcow2 -o "$opts" "$@" "$tmp/$name" "$size"
}

# io NAME CMD...: run qemu-io commands on the image, in order.
io() {
    img=$tmp/$1
    shift
    for c in "$@"; do
        set -- "$@" -c "$c"
        shift
    done
    "$QEMU_IO" -f qcow2 "$@" "$img" >/dev/null
}

snap() {
    "$QEMU_IMG" snapshot -c "$2" "$tmp/$1"
}

# Replace each snapshot's creation time (seconds, nanoseconds) by a fixed
# value so the corpus is byte-for-byte reproducible.
fix_dates() {
    "$PYTHON" - "$tmp/$1" <<'EOF'
import struct, sys
with open(sys.argv[1], 'r+b') as f:
    hdr = f.read(72)
    nb, off = struct.unpack('>IQ', hdr[60:72])
    for i in range(nb):
        f.seek(off)
        e = f.read(40)
        id_len, name_len = struct.unpack('>HH', e[12:16])
        extra = struct.unpack('>I', e[36:40])[0]
        f.seek(off + 16)
        f.write(struct.pack('>II', 1700000000 + i, 0))
        n = 40 + extra + id_len + name_len
        off += (n + 7) & ~7
EOF
}

# ---- Plain data, each cluster size and version ------------------------------
new v3-c512 2M cluster_size=512
io v3-c512 'write -P 0x11 0 1k' 'write -P 0x22 31k 2k' 'write -P 0x33 1M 512'

new v2-c512 2M compat=0.10,cluster_size=512
io v2-c512 'write -P 0x44 512 1k' 'write -P 0x55 1536k 3k'

new v3-c4k 4M cluster_size=4k
io v3-c4k 'write -P 0x66 0 6k' 'write -P 0x77 2M 4k' 'write -P 0x78 4092k 4k'

new v2-c4k 1M compat=0.10,cluster_size=4k
io v2-c4k 'write -P 0x88 4k 8k'

new v3-c64k 1M cluster_size=64k

# Many L2 tables: with 512-byte clusters one table maps 32 KiB.
new many-l2 4M cluster_size=512
io many-l2 'write -P 1 0 512' 'write -P 2 512k 512' 'write -P 3 1M 512' \
    'write -P 4 1536k 512' 'write -P 5 2M 512' 'write -P 6 4095k 1k'

# ---- Refcount widths ---------------------------------------------------------
for bits in 1 2 4 8 32 64; do
    new refcount-$bits 1M cluster_size=512,refcount_bits=$bits
    io refcount-$bits 'write -P 0x99 0 2k' 'write -P 0x9a 600k 512'
done
new v2-refcount16-c4k 1M compat=0.10,cluster_size=4k,refcount_bits=16
io v2-refcount16-c4k 'write -P 0x9b 0 4k'

# ---- Extended L2 (subclusters of 512 bytes) ----------------------------------
new extl2 1M cluster_size=16k,extended_l2=on
io extl2 'write -P 0xa1 0 512' 'write -P 0xa2 4k 1k' 'write -z 8k 512' \
    'write -z 16k 16k' 'write -P 0xa3 40k 2k'

# ---- Compressed clusters -----------------------------------------------------
# One cluster per command: qemu-io compresses the clusters of one request in
# parallel, so their order in the file would vary.
new zlib-c4k 1M cluster_size=4k
io zlib-c4k 'write -c -P 0xb1 0 4k' 'write -c -P 0xb2 8k 4k' \
    'write -c -P 0xb2 12k 4k' 'write -P 0xb3 64k 4k'

new zlib-c512 1M cluster_size=512
io zlib-c512 'write -c -P 0xb4 0 512' 'write -c -P 0xb5 1k 512' \
    'write -c -P 0xb5 1536 512'

new zstd-c4k 1M cluster_size=4k,compression_type=zstd
io zstd-c4k 'write -c -P 0xc1 0 4k' 'write -c -P 0xc2 12k 4k' \
    'write -P 0xc3 32k 4k'

new v2-zlib-c4k 1M compat=0.10,cluster_size=4k
io v2-zlib-c4k 'write -c -P 0xc4 0 4k' 'write -c -P 0xc5 4k 4k'

# ---- Zero and discarded clusters ---------------------------------------------
new zero-c512 1M cluster_size=512
io zero-c512 'write -P 0xd1 0 4k' 'write -z 1k 1k' 'write -z -u 2k 1k' \
    'write -z 64k 2k' 'discard 3k 512'

new discard-c4k 1M cluster_size=4k
io discard-c4k 'write -P 0xd2 0 16k' 'discard 4k 8k' 'write -P 0xd3 32k 4k'

new v2-zero-c512 1M compat=0.10,cluster_size=512
io v2-zero-c512 'write -P 0xd4 0 2k' 'write -z 512 512' 'discard 1k 512'

new prealloc-meta 32k cluster_size=512,preallocation=metadata

# ---- Internal snapshots ------------------------------------------------------
new snap-c512 1M cluster_size=512
io snap-c512 'write -P 0xe1 0 1k'
snap snap-c512 first
io snap-c512 'write -P 0xe2 512 1k' 'write -z 4k 512'
snap snap-c512 second
io snap-c512 'write -P 0xe3 0 512' 'write -c -P 0xe4 8k 512'
snap snap-c512 third
"$QEMU_IMG" snapshot -d second "$tmp/snap-c512"
fix_dates snap-c512

new v2-snap-c512 1M compat=0.10,cluster_size=512
io v2-snap-c512 'write -P 0xe5 0 2k'
snap v2-snap-c512 s1
io v2-snap-c512 'write -P 0xe6 1k 2k'
snap v2-snap-c512 s2
fix_dates v2-snap-c512

new snap-resized 1M cluster_size=512
io snap-resized 'write -P 0xe9 0 512'
snap snap-resized small
"$QEMU_IMG" resize -q "$tmp/snap-resized" 2M
io snap-resized 'write -P 0xea 1536k 512'
fix_dates snap-resized

# ---- Backing file names (the backing file itself is not in the corpus) -------
"$QEMU_IMG" create -q -f qcow2 -o cluster_size=512 "$tmp/base.qcow2" 1M
new backing-qcow2 1M cluster_size=512 -b base.qcow2 -F qcow2
io backing-qcow2 'write -P 0xf1 1k 1k'
rm -f "$tmp/base.qcow2"

"$QEMU_IMG" create -q -f raw "$tmp/base.raw" 1M
new backing-raw 1M cluster_size=512 -b base.raw -F raw -u
new v2-backing 1M compat=0.10,cluster_size=512 -b base.raw -F raw -u
"$QEMU_IMG" create -q -f qcow2 -o cluster_size=16k,extended_l2=on \
    -b base.raw -F raw -u "$tmp/extl2-snap-backing" 512k
io extl2-snap-backing 'write -P 0xf2 1k 512'
snap extl2-snap-backing a
io extl2-snap-backing 'write -P 0xf3 512 1k'
fix_dates extl2-snap-backing
rm -f "$tmp/base.raw"

# ---- Persistent bitmaps ------------------------------------------------------
new bitmaps 1M cluster_size=512
"$QEMU_IMG" bitmap --add "$tmp/bitmaps" b0
"$QEMU_IMG" bitmap --add -g 4k "$tmp/bitmaps" b1
io bitmaps 'write -P 0x12 0 8k' 'write -P 0x13 512k 4k'
"$QEMU_IMG" bitmap --disable "$tmp/bitmaps" b1

# ---- Lazy refcounts and a dirty image ----------------------------------------
new lazy-c512 1M cluster_size=512,lazy_refcounts=on
io lazy-c512 'write -P 0x21 0 1k' 'write -P 0x23 8k 512'

# qemu-io is killed before it closes the image: the dirty bit stays set and
# the refcounts of the new clusters were never written.
new dirty-c512 1M cluster_size=512,lazy_refcounts=on
# (In the background: the shell would report the kill.)
"$QEMU_IO" -f qcow2 -c 'write -P 0x24 0 2k' -c 'write -P 0x25 32k 512' \
    -c 'sigraise 9' "$tmp/dirty-c512" >/dev/null &
wait $! 2>/dev/null || true

# ---- Install -----------------------------------------------------------------
mkdir -p "$out"
rm -f "$out"/*.qcow2
for f in "$tmp"/*; do
    cp "$f" "$out/$(basename "$f").qcow2"
done
