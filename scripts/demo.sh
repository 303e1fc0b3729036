#!/bin/sh
# make demo: the main job of qimg on a default image in a temporary folder.
# Creates an image, writes data, shows info, reads the data back and
# verifies it, takes snapshots before and after a change, lists them,
# reverts, proves the data came back, deletes a snapshot, and shows that
# qemu-img accepts the result.
set -eu
QIMG=${1:-build/qimg}
QIMG=$(cd "$(dirname "$QIMG")" && pwd)/$(basename "$QIMG")
DIR=$(mktemp -d "${TMPDIR:-/tmp}/qimg-demo.XXXXXX")
trap 'rm -rf "$DIR"' EXIT
cd "$DIR"
IMG=disk.qcow2

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

step "Create a 1 GiB qcow2 image"
run "$QIMG" create -f qcow2 "$IMG" 1G

step "Write data (0xaa at 0, 0xbb at 512 MiB, a compressed cluster)"
run "$QIMG" io -c "write -P 0xaa 0 4M" -c "write -P 0xbb 512M 1M" \
    -c "write -c -P 0xcc 900M 64k" "$IMG"

step "Image information"
run "$QIMG" info "$IMG"

step "Read the data back and verify the patterns"
run "$QIMG" io -c "read -P 0xaa 0 4M" -c "read -P 0xbb 512M 1M" \
    -c "read -P 0xcc 900M 64k" -c "read -P 0 4M 1M" "$IMG"

step "Snapshot before the change"
run "$QIMG" snapshot -c before "$IMG"

step "Change the disk: overwrite the start, zero the middle"
run "$QIMG" io -c "write -P 0x11 0 1M" -c "write -z 512M 1M" "$IMG"

step "Snapshot after the change, then list"
run "$QIMG" snapshot -c after "$IMG"
run "$QIMG" snapshot -l "$IMG"

step "Revert to 'before' and prove the old data came back"
run "$QIMG" snapshot -a before "$IMG"
run "$QIMG" io -c "read -P 0xaa 0 4M" -c "read -P 0xbb 512M 1M" "$IMG"

step "Delete 'after'; the snapshot list and the image info"
run "$QIMG" snapshot -d after "$IMG"
run "$QIMG" info "$IMG"

step "Consistency: qimg check, then QEMU's own qemu-img check"
run "$QIMG" check "$IMG"
run qemu-img check "$IMG"

step "Export the snapshot 'before' to raw and compare with the active disk"
run "$QIMG" convert -l snapshot.name=before -O raw "$IMG" before.raw
run qemu-img compare -f raw -F qcow2 before.raw "$IMG"

printf '\nDemo finished: all data verified, qemu-img check clean.\n'
