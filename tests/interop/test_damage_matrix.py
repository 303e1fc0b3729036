"""The damage matrix: every kind of damage in damage_kinds.py, on a v2
(compat=0.10) and a v3 (compat=1.1) image, times every command below,
each run by qemu-img/qemu-io on one copy and by qimg on an identical
other copy (same relative name "img.qcow2", each in its own directory).

Read-only commands (info, info --output=json, snapshot -l, check,
map --output=json, io read of the damaged and of an undamaged range,
convert -O raw):
  * the same verdict: the same exit code;
  * both succeed (for check: exit 0, 2 or 3): the same stdout (the rate
    line of qemu-io masked); for convert, the same output file;
  * both fail: qimg says why, in no more lines than qemu says it (at
    least one). The words are recorded, not compared (DAMAGE_MATRIX_LOG);
  * qimg leaves the file as it was; for io read only if qemu-io (which
    opens the image read-write) changed its copy too may qimg change its
    own, and not for the worse (below).
Mutations (snapshot -c/-a/-d, io write, check -r all, resize +1G,
amend -o refcount_bits=8, bitmap --add),
never worse (the
exit code may differ from qemu's: qimg may refuse what QEMU does, or do
what QEMU refuses, as long as):
  * qimg succeeds (check -r all: exit 0, 2 or 3): `qemu-img check
    --output=json` on its result finds no more corruptions, leaks or
    check errors than on the damaged input, and still opens it; and the
    image is not left marked corrupt;
  * qimg refuses: the file is byte-identical to the input except the
    corrupt bit (v3: byte 79, bit 1), and has the same size.
Where QEMU itself does something bad (it crashes or aborts, it refuses
after writing, it succeeds and leaves the image worse, or its repair gives
up midway: see qemu_bad()),
the cell must be in QEMU_BAD with the reason; there qimg's exit code need
not equal QEMU's even for a read-only command, and qimg must do better:
not crash, and keep the rules above (refuse without writing, or succeed
without making it worse). An
entry whose QEMU no longer misbehaves fails too, so the list stays true.

Set DAMAGE_MATRIX_LOG=<file> to append one JSON line per cell (both
tools' argv, exit codes, output, the check counts) for a report.
"""
import json
import os
import re
import time

import pytest

import damage_kinds as dk
from conftest import QIMG, run
from matrix_util import first_difference

IMG = "img.qcow2"
CMD_TIMEOUT = 30

READ_ONLY = ["info", "info-json", "snapshot-l", "check", "map-json",
             "read-dmg", "read-ok", "convert"]
MUTATIONS = ["snapshot-c", "snapshot-a", "snapshot-d", "io-write",
             "check-r-all", "resize", "amend", "bitmap"]
COMMANDS = READ_ONLY + MUTATIONS
IO_CMDS = {"read-dmg", "read-ok", "io-write"}
IO_READS = {"read-dmg", "read-ok"}


def tool_args(cmd, rng):
    """Arguments after the program (qemu-img or qimg; for io commands
    qemu-io or `qimg io`). qemu-img snapshot has no -f; the others name
    the format so a broken magic is not probed as raw."""
    dmg, ok, length = rng
    return {
        "info": ["info", "-f", "qcow2", IMG],
        "info-json": ["info", "-f", "qcow2", "--output=json", IMG],
        "snapshot-l": ["snapshot", "-l", IMG],
        "check": ["check", "-f", "qcow2", IMG],
        "map-json": ["map", "-f", "qcow2", "--output=json", IMG],
        "read-dmg": ["-f", "qcow2", "-c", "read -v %d %d" % (dmg, length),
                     IMG],
        "read-ok": ["-f", "qcow2", "-c", "read -v %d %d" % (ok, length),
                    IMG],
        "convert": ["convert", "-f", "qcow2", "-O", "raw", IMG, "out.raw"],
        "snapshot-c": ["snapshot", "-c", "new", IMG],
        "snapshot-a": ["snapshot", "-a", "s1", IMG],
        "snapshot-d": ["snapshot", "-d", "s1", IMG],
        "io-write": ["-f", "qcow2", "-c",
                     "write -P 0x5a %d %d" % (dmg, length), IMG],
        "check-r-all": ["check", "-f", "qcow2", "-r", "all", IMG],
        "resize": ["resize", "-f", "qcow2", IMG, "+1G"],
        "amend": ["amend", "-f", "qcow2", "-o", "refcount_bits=8", IMG],
        "bitmap": ["bitmap", "-f", "qcow2", "--add", IMG, "new"],
    }[cmd]


def argv(tool, cmd, rng):
    rest = tool_args(cmd, rng)
    if cmd in IO_CMDS:
        return (["qemu-io"] if tool == "qemu" else [QIMG, "io"]) + rest
    return (["qemu-img"] if tool == "qemu" else [QIMG]) + rest


def shell(args):
    """The command line as a user would type it (for messages)."""
    def q(a):
        return "'%s'" % a if re.search(r"[^\w@%+=:,./-]", a) else a
    return " ".join(q("qimg" if a == QIMG else a) for a in args)


# ---- QEMU's own failures ----------------------------------------------------

# (kind, version, command) -> why QEMU 7.2's behaviour is no oracle there.
# Each cell was seen so (test_damage_matrix fails if one no longer is).
QEMU_BAD = {}

ABORT_OFFSET_0 = (
    "QEMU aborts (qcow2-cache.c: Assertion `offset != 0'): an active L1 "
    "entry is offset 0 with COPIED (trunc_in_l1: the half-cut entry reads "
    "so) and the request asks its cache for an L2 table at offset 0")
ABORT_CACHE_DISCARD = (
    "QEMU aborts (qcow2_cache_discard: Assertion `c->entries[i].ref == "
    "0'): applying s1 frees the data cluster that is the L2 table in use")
AMEND_SEGV = ("qemu-img amend -o refcount_bits crashes (SIGSEGV) on a "
              "missing or cut refcount structure, after writing to it")
SEGV = ("qemu-img info crashes (SIGSEGV) on crypt_method 2 without a LUKS "
        "header extension")
WRITES_THEN_REFUSES = (
    "QEMU changes the file (refcounts, a new L1/L2 table, refcount block or "
    "snapshot table, the grown file) before it meets the damage, then "
    "refuses, leaving it half-changed")
MARKS_CORRUPT = ("QEMU reports success but leaves the image marked "
                 "corrupt (it can no longer be opened read-write)")
UNCHECKABLE = ("QEMU succeeds and leaves an image that qemu-img check can "
               "no longer open")
MORE_CORRUPTION = (
    "QEMU succeeds and leaves more corruptions than the damaged input had "
    "(qemu-img check): it shares, copies or writes through the damaged "
    "entry")
MORE_LEAKS = (
    "QEMU succeeds and leaves more leaked clusters than the damaged input "
    "had (qemu-img check); on a truncated file it allocates past the cut "
    "and never frees what the missing tables held")

REPAIR_GIVES_UP = (
    "QEMU's check -r all gives up midway (\"Check failed\", often after "
    "its own overlap check), changing at most the corrupt bit and leaving "
    "the damage (as test_check.py's QEMU_REPAIR_FAILS)")


def bad(why, kind, versions, cmds):
    assert kind in dk.KINDS, kind
    for v in versions.split():
        assert v in dk.KINDS[kind].versions, (kind, v)
        for c in cmds.split():
            assert c in COMMANDS, c
            assert (kind, v, c) not in QEMU_BAD, (kind, v, c)
            QEMU_BAD[(kind, v, c)] = why


bad(ABORT_OFFSET_0, "trunc_in_l1", "v2 v3", "snapshot-c io-write")
bad(ABORT_OFFSET_0, "l1e_on_header", "v2 v3",
    "snapshot-c snapshot-a snapshot-d io-write")
bad(ABORT_CACHE_DISCARD, "l2e_on_own_l2", "v2 v3", "snapshot-a")
bad(SEGV, "crypt_luks", "v2 v3", "info info-json")

bad(WRITES_THEN_REFUSES, "trunc_mid_header", "v2",
    "snapshot-c io-write check-r-all")
bad(WRITES_THEN_REFUSES, "trunc_in_reftable", "v2 v3", "check-r-all")
bad(WRITES_THEN_REFUSES, "trunc_at_refblock", "v2 v3", "check-r-all")
bad(WRITES_THEN_REFUSES, "trunc_l1_cluster@512", "v3", "check-r-all")
bad(WRITES_THEN_REFUSES, "l1_off_zero", "v2 v3",
    "snapshot-c snapshot-a io-write")
bad(WRITES_THEN_REFUSES, "l1_off_on_reftable", "v2 v3",
    "snapshot-c snapshot-d")
bad(WRITES_THEN_REFUSES, "l1_off_on_snap_table", "v2 v3",
    "snapshot-c snapshot-a io-write check-r-all")
bad(WRITES_THEN_REFUSES, "l1_off_on_snap_l1", "v2 v3",
    "snapshot-a check-r-all")
bad(WRITES_THEN_REFUSES, "rt_off_past_eof", "v2 v3",
    "snapshot-c snapshot-d io-write")
bad(WRITES_THEN_REFUSES, "rt_off_on_l1", "v2 v3", "snapshot-d")
bad(WRITES_THEN_REFUSES, "rt_clusters_past_eof", "v2 v3",
    "snapshot-d check-r-all")
bad(WRITES_THEN_REFUSES, "nb_snaps_over_limit", "v2 v3", "check-r-all")
bad(WRITES_THEN_REFUSES, "nb_snaps_past_eof", "v2 v3", "check-r-all")
bad(WRITES_THEN_REFUSES, "snap_off_on_l1", "v2 v3", "io-write check-r-all")
bad(WRITES_THEN_REFUSES, "refcount_order_3", "v3", "snapshot-a snapshot-d")
bad(WRITES_THEN_REFUSES, "autoclear_bitmaps_no_ext", "v3", "snapshot-d")
bad(WRITES_THEN_REFUSES, "l1e_misaligned", "v2 v3",
    "snapshot-c snapshot-a snapshot-d")
bad(WRITES_THEN_REFUSES, "l1e_past_eof", "v2 v3", "snapshot-a")
bad(WRITES_THEN_REFUSES, "l1e_past_eof@512", "v2 v3", "snapshot-c snapshot-a")
bad(WRITES_THEN_REFUSES, "l1e_on_reftable", "v2 v3", "snapshot-d io-write")
bad(WRITES_THEN_REFUSES, "l1e_on_refblock", "v2 v3", "snapshot-c snapshot-d")
bad(WRITES_THEN_REFUSES, "l1e_on_l1", "v2 v3",
    "snapshot-c snapshot-a check-r-all")
bad(WRITES_THEN_REFUSES, "l1e_on_snap_table", "v2 v3", "snapshot-c snapshot-a")
bad(WRITES_THEN_REFUSES, "l2e_misaligned", "v2 v3",
    "snapshot-c snapshot-a snapshot-d")
bad(WRITES_THEN_REFUSES, "l2e_past_eof", "v2 v3", "snapshot-a")
bad(WRITES_THEN_REFUSES, "l2e_past_eof@512", "v2 v3", "snapshot-c snapshot-a")
bad(WRITES_THEN_REFUSES, "l2e_compressed_past_eof", "v2 v3",
    "snapshot-a io-write")
bad(WRITES_THEN_REFUSES, "l2e_compressed_garbage", "v2 v3", "io-write")
bad(WRITES_THEN_REFUSES, "rte_zero", "v2 v3", "snapshot-d")
bad(WRITES_THEN_REFUSES, "rte_misaligned", "v2 v3", "snapshot-d")
bad(WRITES_THEN_REFUSES, "rte_past_eof", "v2 v3", "snapshot-a snapshot-d")
bad(WRITES_THEN_REFUSES, "rte_on_header", "v2 v3", "snapshot-d check-r-all")
bad(WRITES_THEN_REFUSES, "rte_on_l1", "v2 v3", "snapshot-d")
bad(WRITES_THEN_REFUSES, "rc_data_zero", "v2 v3", "snapshot-a")
bad(WRITES_THEN_REFUSES, "rc_data_zero@512", "v2 v3", "snapshot-a")
bad(WRITES_THEN_REFUSES, "rc_data_saturated", "v2 v3", "snapshot-c")
bad(WRITES_THEN_REFUSES, "rc_l2_zero", "v2 v3", "snapshot-a snapshot-d")
bad(WRITES_THEN_REFUSES, "rc_header_zero", "v2 v3", "snapshot-d")
bad(WRITES_THEN_REFUSES, "rc_l1_zero", "v2 v3", "snapshot-d")
bad(WRITES_THEN_REFUSES, "rc_l1_zero@512", "v2 v3", "snapshot-d")
bad(WRITES_THEN_REFUSES, "rc_reftable_zero", "v2 v3", "snapshot-d")
bad(WRITES_THEN_REFUSES, "rc_refblock_zero", "v2 v3", "snapshot-d")
bad(WRITES_THEN_REFUSES, "rc_snap_table_zero", "v2 v3", "snapshot-d")
bad(WRITES_THEN_REFUSES, "rc_snap_l1_zero", "v2 v3", "snapshot-d")
bad(WRITES_THEN_REFUSES, "snap_l1_zero", "v2 v3", "snapshot-a snapshot-d")
bad(WRITES_THEN_REFUSES, "snap_l1_is_active", "v2 v3",
    "snapshot-a io-write check-r-all")
bad(WRITES_THEN_REFUSES, "snap_l1_size_over_limit", "v2 v3", "io-write")
bad(WRITES_THEN_REFUSES, "snap_l1_size_past_eof", "v2 v3",
    "snapshot-d io-write")
bad(WRITES_THEN_REFUSES, "snap_l1e_past_eof", "v2 v3", "snapshot-d")
bad(WRITES_THEN_REFUSES, "snap_l1e_on_active_l1", "v2 v3", "snapshot-a")
bad(WRITES_THEN_REFUSES, "snap_l2_past_eof", "v2 v3", "snapshot-d")
bad(WRITES_THEN_REFUSES, "snap_l2_past_eof@512", "v2 v3", "snapshot-d")
bad(WRITES_THEN_REFUSES, "rc_snap_l2_zero", "v2 v3", "snapshot-d")
bad(WRITES_THEN_REFUSES, "rc_snap_l2_zero@512", "v2 v3", "snapshot-d")

bad(REPAIR_GIVES_UP, "trunc_after_header", "v2 v3", "check-r-all")
bad(REPAIR_GIVES_UP, "trunc_in_l1", "v3", "check-r-all")
bad(REPAIR_GIVES_UP, "snap_off_misaligned", "v2 v3", "check-r-all")
bad(REPAIR_GIVES_UP, "l1e_on_header", "v3", "check-r-all")
bad(REPAIR_GIVES_UP, "rte_misaligned", "v2 v3", "check-r-all")
bad(REPAIR_GIVES_UP, "rte_reserved_bits", "v2 v3", "check-r-all")
bad(REPAIR_GIVES_UP, "snap_l1_size_past_eof", "v3", "check-r-all")

bad(MARKS_CORRUPT, "l1e_on_refblock", "v3", "io-write")

bad(UNCHECKABLE, "l1_off_zero", "v2 v3", "snapshot-d")
bad(UNCHECKABLE, "snap_off_zero", "v2 v3", "snapshot-c")

bad(MORE_CORRUPTION, "l1e_on_reftable", "v2 v3", "snapshot-a")
bad(MORE_CORRUPTION, "l1e_dup", "v2 v3", "io-write")
bad(MORE_CORRUPTION, "l1e_copied_on_shared", "v2 v3", "io-write")
bad(MORE_CORRUPTION, "l2e_on_reftable", "v2 v3", "snapshot-a")
bad(MORE_CORRUPTION, "l2e_on_refblock", "v2 v3", "snapshot-a")
bad(MORE_CORRUPTION, "l2e_on_snap_table", "v2", "snapshot-c")
bad(MORE_CORRUPTION, "l2e_on_snap_table", "v3", "snapshot-c snapshot-a")
bad(MORE_CORRUPTION, "l2e_reserved_bits", "v2 v3", "snapshot-c")
bad(MORE_CORRUPTION, "l2e_compressed_past_eof", "v2 v3", "snapshot-c")
bad(MORE_CORRUPTION, "rc_shared_data_zero", "v2", "io-write")
bad(MORE_CORRUPTION, "rc_shared_data_zero", "v3", "snapshot-d io-write")
bad(MORE_CORRUPTION, "rc_l2_low", "v2 v3", "io-write")
bad(MORE_CORRUPTION, "snap_l1e_past_eof", "v2 v3", "snapshot-a")
bad(MORE_CORRUPTION, "snap_id_size_huge_last", "v2 v3", "snapshot-c")
bad(MORE_CORRUPTION, "snap_name_size_huge_last", "v2 v3", "snapshot-c")
bad(MORE_CORRUPTION, "snap_l1e_on_refblock", "v2 v3", "snapshot-c")
bad(MORE_CORRUPTION, "snap_l2_past_eof", "v2 v3",
    "snapshot-c snapshot-a io-write")
bad(MORE_CORRUPTION, "snap_l2_past_eof@512", "v2 v3",
    "snapshot-c snapshot-a io-write")
bad(MORE_CORRUPTION, "rc_snap_l2_zero", "v2 v3", "snapshot-c io-write")
bad(MORE_CORRUPTION, "rc_snap_l2_zero@512", "v2 v3", "io-write")

bad(MORE_LEAKS, "trunc_in_refblock", "v2", "snapshot-c io-write")
bad(MORE_LEAKS, "trunc_in_refblock", "v3", "snapshot-c io-write check-r-all")
bad(MORE_LEAKS, "trunc_at_l1", "v2", "snapshot-c io-write")
bad(MORE_LEAKS, "trunc_at_l1", "v3", "snapshot-c io-write check-r-all")
bad(MORE_LEAKS, "trunc_l1_cluster@512", "v2 v3", "snapshot-c io-write")
bad(MORE_LEAKS, "trunc_at_l2_0", "v2 v3", "snapshot-c io-write")
bad(MORE_LEAKS, "trunc_at_l2_1", "v2 v3", "snapshot-c io-write")
bad(MORE_LEAKS, "trunc_at_l2_1@512", "v2 v3", "snapshot-c io-write")
bad(MORE_LEAKS, "trunc_in_l2_1", "v2 v3", "snapshot-c io-write")
bad(MORE_LEAKS, "trunc_at_data_c", "v2 v3", "snapshot-c io-write")
bad(MORE_LEAKS, "trunc_at_compressed", "v2 v3", "snapshot-c io-write")
bad(MORE_LEAKS, "trunc_mid_compressed", "v2 v3", "snapshot-c io-write")
bad(MORE_LEAKS, "trunc_at_snap_l1_s1", "v2 v3", "snapshot-c io-write")
bad(MORE_LEAKS, "l1_off_on_snap_l1", "v2 v3", "snapshot-d")
bad(MORE_LEAKS, "l1e_on_snap_table", "v2 v3", "io-write")
bad(MORE_LEAKS, "l2e_on_snap_table", "v2", "snapshot-a")
bad(MORE_LEAKS, "rc_shared_data_zero", "v2", "snapshot-d")
bad(MORE_LEAKS, "rc_l2_low", "v2 v3", "snapshot-a")
bad(MORE_LEAKS, "snap_l1_is_active", "v2 v3", "snapshot-d")
bad(MORE_LEAKS, "snap_l1e_on_active_l1", "v2 v3", "snapshot-d")

# resize +1G: QEMU grows the L1 table and refcount structures in place
# and writes the new size; on these kinds it refuses after writing or
# succeeds leaving more damage. qimg refuses (an active table naming
# what the resize frees or reuses) or succeeds without making it worse.
bad(MORE_CORRUPTION, "l1e_on_l1", "v3", "resize")
bad(MORE_CORRUPTION, "l2e_on_l1", "v3", "resize")
bad(MORE_CORRUPTION, "l2e_on_l1@512", "v3", "resize")
bad(MORE_CORRUPTION, "rc_shared_data_zero", "v3", "resize")
bad(MORE_CORRUPTION, "rc_snap_l2_zero", "v3", "resize")
bad(MORE_CORRUPTION, "snap_l2_past_eof", "v3", "resize")
bad(MORE_CORRUPTION, "snap_l2_past_eof@512", "v3", "resize")
bad(MORE_LEAKS, "rc_l1_zero@512", "v3", "resize")
bad(MORE_LEAKS, "trunc_at_compressed", "v3", "resize")
bad(MORE_LEAKS, "trunc_at_data_c", "v3", "resize")
bad(MORE_LEAKS, "trunc_at_l1", "v3", "resize")
bad(MORE_LEAKS, "trunc_at_l2_0", "v3", "resize")
bad(MORE_LEAKS, "trunc_at_l2_1", "v3", "resize")
bad(MORE_LEAKS, "trunc_at_l2_1@512", "v3", "resize")
bad(MORE_LEAKS, "trunc_at_snap_l1_s1", "v3", "resize")
bad(MORE_LEAKS, "trunc_in_l1", "v3", "resize")
bad(MORE_LEAKS, "trunc_in_l2_1", "v3", "resize")
bad(MORE_LEAKS, "trunc_in_refblock", "v3", "resize")
bad(MORE_LEAKS, "trunc_l1_cluster@512", "v3", "resize")
bad(MORE_LEAKS, "trunc_mid_compressed", "v3", "resize")

# amend -o refcount_bits=8: QEMU rewrites the refcount structure in
# place, block by block, trusting it; on these kinds it crashes, refuses
# after writing or succeeds leaving more damage. qimg refuses an image
# its check finds broken before writing anything (a copy of wrong counts
# would free what an entry still names), and copies leaks as leaks.
bad(AMEND_SEGV, "rt_off_past_eof", "v3", "amend")
bad(AMEND_SEGV, "rte_past_eof", "v3", "amend")
bad(AMEND_SEGV, "rte_zero", "v3", "amend")
bad(AMEND_SEGV, "trunc_after_header", "v3", "amend")
bad(AMEND_SEGV, "trunc_at_refblock", "v3", "amend")
bad(AMEND_SEGV, "trunc_in_reftable", "v3", "amend")
bad(WRITES_THEN_REFUSES, "l1_off_on_reftable", "v3", "amend")
bad(WRITES_THEN_REFUSES, "l1e_on_refblock", "v3", "amend")
bad(MORE_CORRUPTION, "l1e_on_header", "v3", "amend")
bad(MORE_CORRUPTION, "l2e_misaligned", "v3", "amend")
bad(MORE_CORRUPTION, "l2e_on_reftable", "v3", "amend")
bad(MORE_CORRUPTION, "rc_shared_data_zero", "v3", "amend")
bad(MORE_CORRUPTION, "rc_snap_l2_zero", "v3", "amend")
bad(MORE_CORRUPTION, "rc_snap_l2_zero@512", "v3", "amend")
bad(MORE_CORRUPTION, "snap_l2_past_eof", "v3", "amend")
bad(MORE_CORRUPTION, "snap_l2_past_eof@512", "v3", "amend")
bad(MORE_LEAKS, "trunc_at_compressed", "v3", "amend")
bad(MORE_LEAKS, "trunc_at_data_c", "v3", "amend")
bad(MORE_LEAKS, "trunc_at_l1", "v3", "amend")
bad(MORE_LEAKS, "trunc_at_l2_0", "v3", "amend")
bad(MORE_LEAKS, "trunc_at_l2_1", "v3", "amend")
bad(MORE_LEAKS, "trunc_at_l2_1@512", "v3", "amend")
bad(MORE_LEAKS, "trunc_at_snap_l1_s1", "v3", "amend")
bad(MORE_LEAKS, "trunc_in_l1", "v3", "amend")
bad(MORE_LEAKS, "trunc_in_l2_1", "v3", "amend")
bad(MORE_LEAKS, "trunc_in_refblock", "v3", "amend")
bad(MORE_LEAKS, "trunc_l1_cluster@512", "v3", "amend")
bad(MORE_LEAKS, "trunc_mid_compressed", "v3", "amend")
bad(WRITES_THEN_REFUSES, "rc_header_zero", "v3", "resize")
bad(WRITES_THEN_REFUSES, "rc_l1_zero", "v3", "resize")
bad(WRITES_THEN_REFUSES, "rc_l2_zero", "v3", "resize")
bad(WRITES_THEN_REFUSES, "rc_refblock_zero", "v3", "resize")
bad(WRITES_THEN_REFUSES, "rc_reftable_zero", "v3", "resize")
bad(WRITES_THEN_REFUSES, "rc_snap_l1_zero", "v3", "resize")
bad(WRITES_THEN_REFUSES, "rc_snap_table_zero", "v3", "resize")
bad(WRITES_THEN_REFUSES, "refcount_order_3", "v3", "resize")
bad(WRITES_THEN_REFUSES, "rt_off_past_eof", "v3", "resize")
bad(WRITES_THEN_REFUSES, "rte_past_eof", "v3", "resize")
bad(WRITES_THEN_REFUSES, "snap_l1_size_over_limit", "v3", "resize")
bad(WRITES_THEN_REFUSES, "snap_l1_size_past_eof", "v3", "resize")
bad(WRITES_THEN_REFUSES, "snap_off_on_l1", "v3", "resize")
bad(WRITES_THEN_REFUSES, "trunc_at_refblock", "v3", "resize")
bad(WRITES_THEN_REFUSES, "trunc_mid_header", "v2", "resize")

# bitmap --add: QEMU stores the new bitmap (a new directory and table)
# through refcounts the damage has broken: it allocates over metadata and
# marks the image corrupt after reporting success, or allocates past a cut
# and leaks. qimg refuses (the refcount census before a commit, the active
# tree checked against what it frees) or adds it cleanly.
bad(MARKS_CORRUPT, "autoclear_bitmaps_no_ext", "v3", "bitmap")
bad(MARKS_CORRUPT, "rc_header_zero", "v3", "bitmap")
bad(MARKS_CORRUPT, "rc_l1_zero", "v3", "bitmap")
bad(MARKS_CORRUPT, "rc_l1_zero@512", "v3", "bitmap")
bad(MARKS_CORRUPT, "rc_refblock_zero", "v3", "bitmap")
bad(MARKS_CORRUPT, "rc_reftable_zero", "v3", "bitmap")
bad(MARKS_CORRUPT, "rc_snap_l1_zero", "v3", "bitmap")
bad(MARKS_CORRUPT, "rc_snap_table_zero", "v3", "bitmap")
bad(MARKS_CORRUPT, "refcount_order_3", "v3", "bitmap")
bad(MARKS_CORRUPT, "rt_clusters_past_eof", "v3", "bitmap")
bad(MARKS_CORRUPT, "rt_off_on_l1", "v3", "bitmap")
bad(MARKS_CORRUPT, "rt_off_past_eof", "v3", "bitmap")
bad(MARKS_CORRUPT, "rt_off_zero", "v3", "bitmap")
bad(MARKS_CORRUPT, "rte_misaligned", "v3", "bitmap")
bad(MARKS_CORRUPT, "rte_on_header", "v3", "bitmap")
bad(MARKS_CORRUPT, "rte_on_l1", "v3", "bitmap")
bad(MARKS_CORRUPT, "rte_past_eof", "v3", "bitmap")
bad(MARKS_CORRUPT, "rte_zero", "v3", "bitmap")
bad(MARKS_CORRUPT, "snap_l1_size_over_limit", "v3", "bitmap")
bad(MARKS_CORRUPT, "snap_l1_size_past_eof", "v3", "bitmap")
bad(MARKS_CORRUPT, "snap_off_on_l1", "v3", "bitmap")
bad(MARKS_CORRUPT, "trunc_after_header", "v3", "bitmap")
bad(MARKS_CORRUPT, "trunc_at_refblock", "v3", "bitmap")
bad(MARKS_CORRUPT, "trunc_in_reftable", "v3", "bitmap")
bad(MORE_CORRUPTION, "l1e_on_header", "v3", "bitmap")
bad(MORE_CORRUPTION, "rc_shared_data_zero", "v3", "bitmap")
bad(MORE_CORRUPTION, "trunc_in_l1", "v3", "bitmap")
bad(MORE_LEAKS, "rc_l2_zero", "v3", "bitmap")
bad(MORE_LEAKS, "rc_snap_l2_zero", "v3", "bitmap")
bad(MORE_LEAKS, "rc_snap_l2_zero@512", "v3", "bitmap")
bad(MORE_LEAKS, "trunc_at_compressed", "v3", "bitmap")
bad(MORE_LEAKS, "trunc_at_data_c", "v3", "bitmap")
bad(MORE_LEAKS, "trunc_at_l1", "v3", "bitmap")
bad(MORE_LEAKS, "trunc_at_l2_0", "v3", "bitmap")
bad(MORE_LEAKS, "trunc_at_l2_1", "v3", "bitmap")
bad(MORE_LEAKS, "trunc_at_l2_1@512", "v3", "bitmap")
bad(MORE_LEAKS, "trunc_at_snap_l1_s1", "v3", "bitmap")
bad(MORE_LEAKS, "trunc_in_l2_1", "v3", "bitmap")
bad(MORE_LEAKS, "trunc_in_refblock", "v3", "bitmap")
bad(MORE_LEAKS, "trunc_l1_cluster@512", "v3", "bitmap")
bad(MORE_LEAKS, "trunc_mid_compressed", "v3", "bitmap")


# ---- the base images --------------------------------------------------------


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Pristine images by (version, geometry), made on first use."""
    root = tmp_path_factory.mktemp("damage-matrix")
    made = {}

    def get(version, geom):
        if (version, geom) not in made:
            d = root / ("base-%s-%s" % (version, geom))
            d.mkdir()
            compat = {"v2": "0.10", "v3": "1.1"}[version]
            for args in dk.base_steps(compat, geom):
                run(args, check=True, cwd=d)
            made[(version, geom)] = (d / "base.qcow2").read_bytes()
        return made[(version, geom)]
    return get


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """One work directory reused by every cell (the copies are removed
    before each), so the matrix does not leave gigabytes behind."""
    return tmp_path_factory.mktemp("damage-matrix-work")


_DAMAGED = {}
_BEFORE = {}


def damaged(bases, kind, version):
    """(bytes, (damaged offset, undamaged offset, length)) of a damaged
    image, cached for the commands of one (kind, version)."""
    key = (kind, version)
    if key not in _DAMAGED:
        pristine = bases(version, dk.KINDS[kind].geom)
        _DAMAGED[key] = (dk.damage(kind, pristine),
                         dk.ranges(kind, pristine))
    return _DAMAGED[key]


# Leaks the damage makes that qemu-img check does not count on the damaged
# file: it looks for leaks only up to the end of the file. A command that
# grows the file over such a cluster shows the leak; it was there before.
HIDDEN_LEAKS = {"rc_free_past_eof": 1}


def before_counts(work, bases, kind, version):
    """qemu-img check's counts on the damaged input (cached), with the
    leaks it cannot see."""
    key = (kind, version)
    if key not in _BEFORE:
        d = fresh_dir(work / "before")
        (d / IMG).write_bytes(damaged(bases, kind, version)[0])
        _BEFORE[key] = check_counts(d)
        if _BEFORE[key] is not None:
            _BEFORE[key]["leaks"] += HIDDEN_LEAKS.get(kind, 0)
    return _BEFORE[key]


def fresh_dir(path):
    """An empty directory at path (what a previous cell left is removed:
    only files, as the tools make no directories)."""
    if path.exists():
        for p in path.iterdir():
            p.unlink()
    else:
        path.mkdir(parents=True)
    return path


# ---- running and judging ----------------------------------------------------


class Outcome:
    def __init__(self, args, d, before):
        self.args = args
        self.dir = d
        t0 = time.monotonic()
        try:
            r = run(args, cwd=d, timeout=CMD_TIMEOUT)
            self.rc, self.out, self.err = r.rc, r.out, r.err
            self.timeout = False
        except Exception as e:     # subprocess.TimeoutExpired
            self.rc, self.out, self.err = None, "", "timeout: %s" % e
            self.timeout = True
        self.secs = time.monotonic() - t0
        self.size_before = len(before)
        self.size_after, self.diff = compare_file(d / IMG, before)
        # The corrupt bit (v3: byte 79, bit 1) newly set; the caller
        # clears it for v2, where byte 79 is no header field.
        self.marked_corrupt = (len(before) > 79 and not before[79] & 2 and
                               read_byte(d / IMG, 79) & 2 != 0)
        self.counts = None

    @property
    def crashed(self):
        return (self.timeout or self.rc < 0 or self.rc >= 128 or
                bool(CRASH.search(self.err)))

    @property
    def changed(self):
        return self.size_before != self.size_after or bool(self.diff)

    def only_corrupt_bit(self, version):
        """Unchanged, or changed only by setting the corrupt bit."""
        if self.size_before != self.size_after:
            return False
        return not self.diff or (version == "v3" and self.diff == [79])

    def said(self, cmd):
        """The lines that say why it failed; for qimg without the indented
        "    referenced by ..." / "    in ..." lines its check adds under
        qemu-img's (see test_check.py)."""
        text = self.err + (self.out if cmd in IO_CMDS else "")
        return [line for line in text.split("\n") if line.strip() and
                not (self.args[0] == QIMG and CONT.match(line))]

    def record(self):
        return {"argv": shell(self.args), "rc": self.rc,
                "out": self.out[-3000:], "err": self.err[-3000:],
                "size": [self.size_before, self.size_after],
                "diff": self.diff[:20], "ndiff": nbytes(self.diff),
                "secs": round(self.secs, 3),
                "counts": self.counts}


CONT = re.compile(r"    (referenced by|in) \S")
CRASH = re.compile(r"Segmentation fault|AddressSanitizer|runtime error|"
                   r"Aborted|core dumped|Assertion|LeakSanitizer")


def read_byte(path, off):
    with open(path, "rb") as f:
        f.seek(off)
        b = f.read(1)
    return b[0] if b else 0


def compare_file(path, before):
    """(size of path, the first DIFF_MAX offsets below len(before) where it
    differs from `before`). Reads no more than len(before) bytes, however
    far a tool grew the file."""
    if not path.exists():
        return 0, []
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        after = f.read(len(before))
    n = min(len(before), len(after))
    if before[:n] == after[:n]:
        return size, []
    out = []
    block = 512
    for base in range(0, n, block):
        a, b = before[base:base + block], after[base:base + block]
        if a != b:
            out += [base + i for i in range(len(a)) if a[i] != b[i]]
            if len(out) >= DIFF_MAX:
                return size, out[:DIFF_MAX]
    return size, out


DIFF_MAX = 64


def nbytes(diff):
    return "%d%s" % (len(diff), "+" if len(diff) >= DIFF_MAX else "")


def check_counts(d):
    """qemu-img check's counts on d/img.qcow2, or None if it cannot
    check the image (it does not open, or gives no JSON)."""
    r = run(["qemu-img", "check", "-f", "qcow2", "--output=json", IMG],
            cwd=d, timeout=CMD_TIMEOUT)
    try:
        j = json.loads(r.out)
    except ValueError:
        return None
    return {k: j.get(k, 0) for k in ("corruptions", "leaks",
                                     "check-errors")}


def worse(before, after):
    """Why `after` is a worse image than `before` by qemu-img check, or
    None."""
    if after is None:
        return None if before is None else "qemu-img check cannot check it"
    if before is None:
        return None
    out = ["%s %d -> %d" % (k, before[k], after[k]) for k in before
           if after[k] > before[k]]
    return ", ".join(out) or None


def succeeded(cmd, rc):
    if cmd in ("check", "check-r-all"):
        return rc in (0, 2, 3)
    return rc == 0


RATE = re.compile(r"^.* ops; .*$", re.M)


def norm_out(cmd, text):
    return RATE.sub("<rate>", text) if cmd in IO_CMDS else text


def qemu_bad(cmd, version, q, before):
    """What QEMU did wrong in this cell, or None."""
    if q.crashed:
        return "QEMU crashed or hung (rc=%s): %s" % (
            q.rc, q.err.strip()[-200:])
    if cmd in READ_ONLY:
        return None
    if not succeeded(cmd, q.rc):
        if not q.only_corrupt_bit(version):
            return ("QEMU refused (rc=%d) after writing (%s bytes changed, "
                    "size %d -> %d)" % (q.rc, nbytes(q.diff), q.size_before,
                                        q.size_after))
        if cmd == "check-r-all" and "Check failed" in q.err:
            return "QEMU's repair gave up midway (Check failed)"
        return None
    if q.marked_corrupt:
        return "QEMU succeeded but left the image marked corrupt"
    w = worse(before, q.counts)
    if w:
        return "QEMU succeeded and left the image worse: " + w
    return None


def judge(kind, version, cmd, q, m, before, out_q, out_m):
    """The list of rules qimg breaks in this cell."""
    probs = []
    key = (kind, version, cmd)
    bad = qemu_bad(cmd, version, q, before)
    if bad and key not in QEMU_BAD:
        probs.append("QEMU misbehaves here, list the cell in QEMU_BAD: "
                     + bad)
    if key in QEMU_BAD and not bad:
        probs.append("QEMU_BAD entry is stale: QEMU behaves (%s)"
                     % QEMU_BAD[key])
    if m.crashed:
        probs.append("qimg crashed or hung (rc=%s)" % m.rc)
        return probs
    if not succeeded(cmd, m.rc) and not m.said(cmd):
        probs.append("qimg fails without a message")
    if cmd in READ_ONLY:
        if m.changed and cmd in IO_READS and q.changed:
            w = worse(before, m.counts)
            if w:
                probs.append("qimg io read changed the file (as qemu-io "
                             "did) and left it worse: " + w)
        elif m.changed:
            probs.append("qimg changed the file on a read-only command "
                         "(%s bytes, size %d -> %d)" % (
                             nbytes(m.diff), m.size_before, m.size_after))
        if key in QEMU_BAD:
            if m.rc not in (0, 1, 2, 3):
                probs.append("qimg exit code %d" % m.rc)
            return probs
        if m.rc != q.rc:
            probs.append("exit code: qemu %d, qimg %d" % (q.rc, m.rc))
        elif succeeded(cmd, m.rc):
            if norm_out(cmd, m.out) != norm_out(cmd, q.out):
                probs.append("stdout differs")
            if cmd == "convert":
                diff = first_difference(out_q, out_m)
                if diff:
                    probs.append("converted raw files differ: " + diff)
        else:
            nq, nm = len(q.said(cmd)), len(m.said(cmd))
            if nm > max(1, nq):
                probs.append("qimg says it in %d lines, qemu in %d" % (
                    nm, nq))
        return probs
    # mutations
    if succeeded(cmd, m.rc):
        w = worse(before, m.counts)
        if m.marked_corrupt:
            w = ", ".join(x for x in (w, "marked corrupt") if x)
        if w:
            probs.append("qimg succeeded (rc=%d) and left the image worse: "
                         "%s" % (m.rc, w))
    elif not m.only_corrupt_bit(version):
        probs.append("qimg refused (rc=%d) but changed the file (%s bytes "
                     "at %s, size %d -> %d)" % (
                         m.rc, nbytes(m.diff), m.diff[:4], m.size_before,
                         m.size_after))
    return probs


# The sanitizer build (about three times slower) runs every third kind,
# as the crash suite runs every third variant there.
STRIDE = 3 if os.environ.get("QIMG_SANITIZE", "none") != "none" else 1
CELLS = [(k, v, c) for i, k in enumerate(dk.KINDS) if i % STRIDE == 0
         for v in dk.KINDS[k].versions for c in COMMANDS]


@pytest.mark.parametrize("kind,version,cmd",
                         [pytest.param(*c, id="-".join(c)) for c in CELLS])
def test_damage_matrix(bases, work, kind, version, cmd):
    data, rng = damaged(bases, kind, version)
    res = {}
    for tool in ("qemu", "qimg"):
        d = fresh_dir(work / tool)
        (d / IMG).write_bytes(data)
        o = Outcome(argv(tool, cmd, rng), d, data)
        o.marked_corrupt = o.marked_corrupt and version == "v3"
        if not o.crashed and (cmd in MUTATIONS and succeeded(cmd, o.rc) or
                              cmd in IO_READS and o.changed):
            o.counts = check_counts(d)
        res[tool] = o
    q, m = res["qemu"], res["qimg"]
    before = (before_counts(work, bases, kind, version)
              if cmd in MUTATIONS or q.changed or m.changed else None)
    probs = judge(kind, version, cmd, q, m, before,
                  work / "qemu" / "out.raw", work / "qimg" / "out.raw")
    log = os.environ.get("DAMAGE_MATRIX_LOG")
    if log:
        with open(log, "a") as f:
            f.write(json.dumps({
                "kind": kind, "version": version, "cmd": cmd,
                "doc": dk.KINDS[kind].doc, "before": before,
                "qemu_bad": qemu_bad(cmd, version, q, before),
                "listed_bad": QEMU_BAD.get((kind, version, cmd)),
                "problems": probs, "qemu": q.record(),
                "qimg": m.record()}) + "\n")
    assert not probs, "%s on %s %s:\n  %s\nqemu:  %s\n%s\nqimg:  %s\n%s" % (
        cmd, kind, version, "\n  ".join(probs), shell(q.args), brief(q),
        shell(m.args), brief(m))


def brief(o):
    def cut(s):
        s = s.strip("\n")
        return s if len(s) < 600 else s[:300] + "\n...\n" + s[-300:]
    return "  rc=%s\n  stdout: %s\n  stderr: %s\n  file: %s" % (
        o.rc, cut(o.out), cut(o.err),
        "unchanged" if not o.changed else "%s bytes changed, size %d -> %d"
        % (nbytes(o.diff), o.size_before, o.size_after))
