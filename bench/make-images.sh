#!/bin/bash
# make-images.sh - build the standard benchmark images with qemu-img/qemu-io.
#
# Idempotent: an image that already exists is kept (delete it to rebuild).
# Images are written to a temporary name and renamed when complete, so an
# interrupted build never leaves a half-made image behind.
#
#   QIMG_BENCH_DIR   where to put them (default: build/bench-images in the
#                    source tree; the file system needs ~30 GB free)
#   QIMG_BENCH_ONLY  build only these (space-separated names, e.g. "A C")
#
# Layout:  $QIMG_BENCH_DIR/pristine/<name>.qcow2  (never modified)
#          $QIMG_BENCH_DIR/copies/                 (copies made by run.py
#                                                  and iocount.py)
#
# Images (apparent size / real disk use, measured):
#   A     1 TiB, 64 KiB clusters, preallocation=metadata   1 TiB / 161 MiB
#   A100  100 GiB, same                                  100 GiB /  16 MiB
#   B     64 GiB, 4 KiB clusters, preallocation=metadata  64 GiB / 161 MiB
#   C     8 GiB of random data, 64 KiB clusters            8 GiB / 8.1 GiB
#   D     4 GiB, 512 MiB random data, 1000 snapshots with
#         a 4 KiB write before each                        4 GiB / 642 MiB
#   F     1 TiB, 64 KiB clusters, 64 KiB of data in every GiB, then
#         1000 snapshots with a 4 KiB write before each   1 TiB / 269 MiB
#   E     a backing chain: E.qcow2, 64 GiB with 8 GiB of random data
#         (one 64 MiB stripe in every 512 MiB), and E-top.qcow2 over it
#         (backing "E.qcow2") with 10% of the disk rewritten: 64 MiB of
#         a pattern in every 640 MiB, partly over the base's data
#                                            64 GiB / 8.1 GiB + 6.4 GiB
#   H     a backing chain of depth 5: H.qcow2, 16 GiB with 2 GiB of
#         random data (one 64 MiB stripe in every 512 MiB), and H-1 ..
#         H-4 over it (H-k's backing "H-(k-1).qcow2", H-1's "H.qcow2"),
#         each writing 4 stripes of 64 MiB of a pattern, at 64 MiB steps
#         from its own start, partly over the data below
#                                           16 GiB / 2 GiB + 4 x 256 MiB
#   G     8 GiB, 64 KiB clusters: 9 rounds writing the same 4 stripes of
#         64 MiB (one every 2 GiB) with random data, a snapshot after
#         each, then 6 of the 9 snapshots deleted: a third of the data
#         left, in holes (the image compact is measured on)
#                                                        8 GiB / 2.3 GiB
# Total real use of the pristine set: ~9.4 GiB without E (14.5 GiB) and H
# (3 GiB); building takes ~15 minutes
# (the 1000 qemu-img snapshot -c calls of D and F are most of it). The
# timing scripts add one working copy of the image being measured (cp --sparse=always)
# and, for convert, one output at a time (8 GiB raw or qcow2 for C), and
# bench-w4k a fresh image (~1.3 GiB after the run), so keep ~30 GB free.
set -euo pipefail

DIR=${QIMG_BENCH_DIR:-$(cd "$(dirname "$0")/.." && pwd)/build/bench-images}
ONLY=${QIMG_BENCH_ONLY:-A A100 B C D E F G H}
P=$DIR/pristine
mkdir -p "$P" "$DIR/copies"

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

wanted() { [[ " $ONLY " == *" $1 "* ]]; }

have() {
    if [[ -e $P/$1.qcow2 ]]; then
        log "$1: exists, kept ($P/$1.qcow2)"
        return 0
    fi
    return 1
}

free_gb() { df -BG --output=avail "$DIR" | tail -1 | tr -dc 0-9; }

# make_meta NAME SIZE CLUSTER
make_meta() {
    local tmp=$P/.$1.tmp
    log "$1: create $2, cluster $3, preallocation=metadata"
    qemu-img create -q -f qcow2 -o cluster_size="$3",preallocation=metadata \
        "$tmp" "$2"
    mv "$tmp" "$P/$1.qcow2"
}

make_c() {
    local raw=$P/.C.raw tmp=$P/.C.tmp
    local avail
    avail=$(free_gb)
    if ((avail < 20)); then
        log "WARNING: only ${avail} GB free in $DIR; C needs 16 GB while" \
            "building and 8 GB after"
    fi
    log "C: 8 GiB of /dev/urandom -> raw"
    dd if=/dev/urandom of="$raw" bs=1M count=8192 iflag=fullblock \
        status=none
    log "C: convert to qcow2 (64 KiB clusters)"
    qemu-img convert -f raw -O qcow2 -o cluster_size=65536 "$raw" "$tmp"
    rm -f "$raw"
    mv "$tmp" "$P/C.qcow2"
}

make_d() {
    local raw=$P/.D.raw tmp=$P/.D.tmp i off
    log "D: 4 GiB with 512 MiB of random data"
    rm -f "$raw"
    truncate -s 4G "$raw"
    dd if=/dev/urandom of="$raw" bs=1M count=512 iflag=fullblock \
        conv=notrunc status=none
    qemu-img convert -f raw -O qcow2 -o cluster_size=65536 "$raw" "$tmp"
    rm -f "$raw"
    log "D: 1000 snapshots (a 4 KiB write before each; takes a minute)"
    for ((i = 1; i <= 1000; i++)); do
        # spread the writes over the whole disk: 4 MiB apart, wrapping
        off=$(((i * 4194304 + i * 65536) % 4294967296))
        qemu-io -f qcow2 -c "write -q -P $((i % 255 + 1)) $off 4k" "$tmp" \
            >/dev/null
        qemu-img snapshot -c "snap$i" "$tmp"
    done
    mv "$tmp" "$P/D.qcow2"
}

make_f() {
    local tmp=$P/.F.tmp i off cmds=()
    log "F: 1 TiB, 64 KiB of data in every GiB"
    qemu-img create -q -f qcow2 -o cluster_size=65536 "$tmp" 1T
    for ((i = 0; i < 1024; i++)); do
        cmds+=(-c "write -q -P $((i % 255 + 1)) $((i << 30)) 64k")
    done
    qemu-io -f qcow2 "${cmds[@]}" "$tmp" >/dev/null
    log "F: 1000 snapshots (a 4 KiB write before each; about 10 minutes)"
    for ((i = 1; i <= 1000; i++)); do
        # each in another GiB (another L2 table), wrapping
        off=$((((i * 37) % 1024) * 1073741824 + (i % 16) * 65536))
        qemu-io -f qcow2 -c "write -q -P $((i % 255 + 1)) $off 4k" "$tmp" \
            >/dev/null
        qemu-img snapshot -c "snap$i" "$tmp"
    done
    mv "$tmp" "$P/F.qcow2"
}

# random_stripes IMAGE END: 64 MiB of /dev/urandom at every 512 MiB below
# END (bytes)
random_stripes() {
    local off
    for ((off = 0; off < $2; off += 512 << 20)); do
        head -c $((64 << 20)) /dev/urandom > "$1.stripe"
        qemu-io -f qcow2 -c "write -q -s $1.stripe $off 64M" "$1" >/dev/null
    done
    rm -f "$1.stripe"
}

make_e() {
    local tmp=$P/.E.tmp top=$P/.E-top.tmp off cmds=()
    log "E: 64 GiB base, 8 GiB of random data in 128 stripes"
    qemu-img create -q -f qcow2 "$tmp" 64G
    random_stripes "$tmp" $((64 << 30))
    mv "$tmp" "$P/E.qcow2"
    log "E-top: 10% of the disk rewritten over E.qcow2"
    qemu-img create -q -f qcow2 -b E.qcow2 -F qcow2 "$top"
    for ((off = 256 << 20; off < 64 << 30; off += 640 << 20)); do
        cmds+=(-c "write -q -P 0x5a $off 64M")
    done
    qemu-io -f qcow2 "${cmds[@]}" "$top" >/dev/null
    mv "$top" "$P/E-top.qcow2"
}

make_g() {
    local tmp=$P/.G.tmp r j slot
    log "G: 8 GiB, 9 rounds over 4 random 64 MiB stripes, a snapshot each"
    qemu-img create -q -f qcow2 "$tmp" 8G
    for ((r = 1; r <= 9; r++)); do
        for ((j = 0; j < 4; j++)); do
            slot=$((j * 8))
            head -c $((64 << 20)) /dev/urandom > "$P/.G.stripe"
            qemu-io -f qcow2 -c "write -q -s $P/.G.stripe $((slot << 28)) 64M" \
                "$tmp" >/dev/null
        done
        qemu-img snapshot -c "s$r" "$tmp"
    done
    rm -f "$P/.G.stripe"
    for r in 1 2 4 5 7 8; do qemu-img snapshot -d "s$r" "$tmp"; done
    mv "$tmp" "$P/G.qcow2"
}

make_h() {
    local d=$P/.H.build off k below cmds
    rm -rf "$d" && mkdir "$d"
    log "H: 16 GiB base, 2 GiB of random data in 32 stripes"
    qemu-img create -q -f qcow2 "$d/H.qcow2" 16G
    random_stripes "$d/H.qcow2" $((16 << 30))
    below=H.qcow2
    for ((k = 1; k <= 4; k++)); do
        log "H-$k: 4 stripes of 64 MiB over $below"
        qemu-img create -q -f qcow2 -b "$below" -F qcow2 "$d/H-$k.qcow2"
        cmds=()
        for ((off = k << 26; off < 16 << 30; off += 4 << 30)); do
            cmds+=(-c "write -q -P $((0x30 + k)) $off 64M")
        done
        qemu-io -f qcow2 "${cmds[@]}" "$d/H-$k.qcow2" >/dev/null
        below=H-$k.qcow2
    done
    # Built under their own names (the overlays name their backing files
    # so); the base moves last, as it marks the chain complete.
    for ((k = 1; k <= 4; k++)); do mv "$d/H-$k.qcow2" "$P/"; done
    mv "$d/H.qcow2" "$P/"
    rmdir "$d"
}

log "images in $P ($(free_gb) GB free)"
if wanted A && ! have A; then make_meta A 1T 65536; fi
if wanted A100 && ! have A100; then make_meta A100 100G 65536; fi
if wanted B && ! have B; then make_meta B 64G 4096; fi
if wanted C && ! have C; then make_c; fi
if wanted D && ! have D; then make_d; fi
if wanted E && ! have E; then make_e; fi
if wanted F && ! have F; then make_f; fi
if wanted G && ! have G; then make_g; fi
if wanted H && ! have H; then make_h; fi
log "done; real disk use:"
du -sh "$P"/*.qcow2 >&2
