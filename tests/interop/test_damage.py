"""Damaged images: metadata writes that would land on another structure.

An image whose active L1 table was moved onto another structure (the
header, the refcount table, a refcount block, the snapshot table) takes a
guest write that needs a new L2 table. The L1 entry that would name it
lies on that other structure. QEMU refuses the write, marks the image
corrupt and names what it would have overwritten; so must qimg, and
qimg refuses before it allocates anything, so the file is the original
but for the corrupt bit (QEMU leaks the L2 cluster it allocated first).

Where QEMU's message differs, it is because QEMU writes the new refcount
block first and names the structure that write would hit; qimg checks
the L1 entry before allocating. Both refuse the same request.
"""
import json
import shutil
import struct
from pathlib import Path

import pytest

from conftest import QIMG, qemu_img, qemu_io, run, strip_prog

INCOMPAT_CORRUPT = 2


def header(path):
    with open(path, "rb") as f:
        d = f.read(80)
    return {"l1": struct.unpack(">Q", d[40:48])[0],
            "rt": struct.unpack(">Q", d[48:56])[0],
            "snap": struct.unpack(">Q", d[64:72])[0],
            "version": struct.unpack(">I", d[4:8])[0]}


def first_refblock(path):
    with open(path, "rb") as f:
        f.seek(header(path)["rt"])
        return struct.unpack(">Q", f.read(8))[0]


def set_l1_offset(path, off):
    with open(path, "r+b") as f:
        f.seek(40)
        f.write(struct.pack(">Q", off))


# name: (compat, snapshot, new L1 offset, what QEMU names, what qimg names)
CASES = {
    "l1-on-header": ("1.1", False, lambda p: 0, "qcow2_header",
                     "qcow2_header"),
    "l1-on-header-v2": ("0.10", False, lambda p: 0, "qcow2_header",
                        "qcow2_header"),
    "l1-on-reftable": ("1.1", False, lambda p: header(p)["rt"],
                       "active L2 table", "refcount table"),
    "l1-on-refblock": ("1.1", False, first_refblock, "active L1 table",
                       "refcount block"),
}


def frame(what):
    return ("qcow2: Marking image as corrupt: Preventing invalid write on "
            "metadata (overlaps with %s); further corruption events will "
            "be suppressed" % what)


@pytest.mark.parametrize("name", sorted(CASES))
def test_l1_entry_write_onto_other_metadata(tmp_path, name):
    compat, snap, where, qemu_says, qimg_says = CASES[name]
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "compat=" + compat, base,
             "2G", check=True)
    qemu_io("-c", "write -P 1 0 4k", base, check=True)
    if snap:
        qemu_img("snapshot", "-c", "s", base, check=True)
    set_l1_offset(base, where(base))
    q, m = tmp_path / "q.qcow2", tmp_path / "m.qcow2"
    shutil.copy(base, q)
    shutil.copy(base, m)
    cmd = "write -P 7 1G 4k"  # L1 entry 2: a new L2 table
    rq = qemu_io("-c", cmd, q)
    rm = run([QIMG, "io", "-c", cmd, str(m)])
    assert rq.rc == 1 and rq.out == "write failed: Input/output error\n", rq
    assert rm.rc == rq.rc and rm.out == rq.out, (rq, rm)
    assert rq.err.strip() == frame(qemu_says), rq
    assert rm.err.strip() == frame(qimg_says), rm
    # Nothing written but the corrupt bit (v3; v2 has no field for it).
    before, after = base.read_bytes(), m.read_bytes()
    assert len(after) == len(before)
    diff = [i for i in range(len(before)) if before[i] != after[i]]
    if compat == "1.1":
        assert diff == [79], diff
        assert after[79] == before[79] | INCOMPAT_CORRUPT
    else:
        assert diff == [], diff


@pytest.mark.parametrize("onto", ["reftable", "refblock"])
def test_l2_table_write_onto_other_metadata(tmp_path, onto):
    """L1 entry 0 names (with COPIED) a cluster that holds other metadata
    as its L2 table: a write into it would rewrite that structure. qimg
    refuses the request before writing anything, as QEMU does for the
    refcount table. Over a refcount block QEMU takes the request, writes
    the data and refuses only when it writes the table back (exit 0, the
    image marked corrupt, naming the refcount block it wrote first as the
    L2 table); qimg refuses the request (deliberate: nothing is
    written)."""
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", base, "2G", check=True)
    qemu_io("-c", "write -P 1 0 4k", base, check=True)
    h = header(base)
    target = {"reftable": h["rt"], "refblock": first_refblock(base)}[onto]
    with open(base, "r+b") as f:
        f.seek(h["l1"])
        f.write(struct.pack(">Q", target | (1 << 63)))
    q, m = tmp_path / "q.qcow2", tmp_path / "m.qcow2"
    shutil.copy(base, q)
    shutil.copy(base, m)
    cmd = "write -P 7 64k 4k"
    rq = qemu_io("-c", cmd, q)
    rm = run([QIMG, "io", "-c", cmd, str(m)])
    what = {"reftable": "refcount table", "refblock": "refcount block"}[onto]
    assert rm.rc == 1 and rm.out == "write failed: Input/output error\n", rm
    assert rm.err.strip() == frame(what), rm
    if onto == "reftable":
        assert (rm.rc, rm.out, rm.err) == (rq.rc, rq.out, rq.err), (rq, rm)
    else:  # QEMU names the block it wrote back first, as an L2 table
        assert rq.rc == 0 and "Preventing invalid write" in rq.err, rq
    before, after = base.read_bytes(), m.read_bytes()
    assert len(after) == len(before)
    diff = [i for i in range(len(before)) if before[i] != after[i]]
    assert diff == [79], diff


def test_l1_entry_naming_offset_0_as_l2_table(tmp_path):
    """L1 entry 0 says the L2 table is at offset 0 (with COPIED): QEMU 7.2
    aborts on a write there (an assertion in its cache); qimg takes the
    entry as no table, allocates one, and the write succeeds without
    making the image worse."""
    path = tmp_path / "img.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", path, "2G", check=True)
    qemu_io("-c", "write -P 1 0 4k", path, check=True)
    with open(path, "r+b") as f:
        f.seek(header(path)["l1"])
        f.write(struct.pack(">Q", 1 << 63))
    q = tmp_path / "q.qcow2"
    shutil.copy(path, q)
    rq = qemu_io("-c", "write -P 7 64k 4k", q)
    assert rq.rc < 0 or "Assertion" in rq.err, rq  # QEMU's own failure
    before = qemu_img("check", "--output=json", path)
    rm = run([QIMG, "io", "-c", "write -P 7 64k 4k", str(path)])
    assert rm.rc == 0, rm
    after = qemu_img("check", "--output=json", path)
    b, a = json.loads(before.out), json.loads(after.out)
    assert a.get("corruptions", 0) <= b.get("corruptions", 0), (before, after)
    assert a.get("leaks", 0) <= b.get("leaks", 0), (before, after)
    r = qemu_io("-c", "read -P 7 64k 4k", path)
    assert r.rc == 0 and "wrote" not in r.out, r


@pytest.mark.parametrize("size", [(1 << 64) - 512, 1 << 63, 1 << 62, 1 << 56])
def test_apply_snapshot_with_absurd_disk_size(tmp_path, size):
    """A snapshot whose extra data claims a disk size no image can have:
    qemu-img refuses to resize to it (negative as a signed size, or an L1
    table past QEMU's limit) and changes nothing; so does qimg, with the
    same words (it used to apply it and leave an image neither opens)."""
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", base, "1G", check=True)
    qemu_io("-c", "write -P 1 0 4k", base, check=True)
    qemu_img("snapshot", "-c", "s", base, check=True)
    with open(base, "r+b") as f:
        f.seek(header(base)["snap"] + 40 + 8)  # extra data: disk_size
        f.write(struct.pack(">Q", size))
    q, m = tmp_path / "q.qcow2", tmp_path / "m.qcow2"
    shutil.copy(base, q)
    shutil.copy(base, m)
    rq = qemu_img("snapshot", "-a", "s", q)
    rm = run([QIMG, "snapshot", "-a", "s", str(m)])
    assert rq.rc == 1, rq
    assert rm.rc == rq.rc, (rq, rm)
    assert (strip_prog(rm.err, "qimg") == strip_prog(rq.err, "qemu-img")), (
        rq, rm)
    assert m.read_bytes() == base.read_bytes()
    assert qemu_img("info", m).rc == 0


def test_apply_snapshot_whose_l1_table_is_the_active_one(tmp_path):
    """The snapshot table names the active L1 table as the snapshot's.
    QEMU refuses to apply it (it would copy the table onto itself), marks
    the image corrupt, and has changed refcounts by then; qimg refuses in
    the same words and writes nothing but the corrupt bit. (It used to
    apply it as a no-op and exit 0.)"""
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", base, "1G", check=True)
    qemu_io("-c", "write -P 1 0 4k", base, check=True)
    qemu_img("snapshot", "-c", "s", base, check=True)
    qemu_io("-c", "write -P 2 0 4k", base, check=True)
    h = header(base)
    with open(base, "r+b") as f:
        f.seek(h["snap"])  # entry 0: l1_table_offset
        f.write(struct.pack(">Q", h["l1"]))
    q, m = tmp_path / "q.qcow2", tmp_path / "m.qcow2"
    shutil.copy(base, q)
    shutil.copy(base, m)
    rq = qemu_img("snapshot", "-a", "s", q)
    rm = run([QIMG, "snapshot", "-a", "s", str(m)])
    assert rq.rc == 1 and frame("inactive L1 table") in rq.err, rq
    assert rm.rc == rq.rc, (rq, rm)
    assert strip_prog(rm.err, "qimg") == strip_prog(rq.err, "qemu-img"), (
        rq, rm)
    before, after = base.read_bytes(), m.read_bytes()
    assert len(after) == len(before)
    diff = [i for i in range(len(before)) if before[i] != after[i]]
    assert diff == [79], diff


def zero_refcount_of_first_data_cluster(path):
    with open(path, "r+b") as f:
        d = f.read()
        h = header(path)
        l2 = struct.unpack(">Q", d[h["l1"]:h["l1"] + 8])[0] & ((1 << 56) - 1)
        data = struct.unpack(">Q", d[l2:l2 + 8])[0] & ((1 << 56) - 1)
        rb = first_refblock(path)
        f.seek(rb + 2 * (data // 65536))
        f.write(b"\0\0")


@pytest.mark.parametrize("compat", ["0.10", "1.1"])
def test_free_of_zero_refcount_leaks_and_goes_on(tmp_path, compat):
    """A data cluster in use whose refcount is already 0, freed by a
    discard: QEMU cannot decrement it, says "qcow2_free_clusters failed:
    Invalid argument", leaks it and goes on. So does qimg (it kept the
    decrement queued, and every later flush, the close included, failed
    behind it). Both files come out byte-identical and clean."""
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "compat=" + compat, base,
             "64M", check=True)
    qemu_io("-c", "write -P 1 0 128k", base, check=True)
    zero_refcount_of_first_data_cluster(base)
    q, m = tmp_path / "q.qcow2", tmp_path / "m.qcow2"
    shutil.copy(base, q)
    shutil.copy(base, m)
    cmds = ["-c", "discard 0 64k", "-c", "write -P 5 1M 64k",
            "-c", "read -P 1 64k 64k"]
    rq = qemu_io(*cmds, q)
    rm = run([QIMG, "io"] + cmds + [str(m)])
    said = "qcow2_free_clusters failed: Invalid argument\n"
    assert rq.rc == 0 and rq.err == said, rq
    assert rm.rc == 0 and rm.err == said, rm
    assert q.read_bytes() == m.read_bytes()
    r = qemu_img("check", m)
    assert r.rc == 0 and "No errors were found" in r.out, r


@pytest.mark.parametrize("op", [["-c", "new"], ["-a", "s"]])
def test_snapshot_refuses_used_cluster_with_refcount_zero(tmp_path, op):
    """A data cluster the active tree (create) or the snapshot's tree
    (apply) uses has refcount 0. The operation adds a reference to it:
    QEMU raises the refcount to 1 and goes on, so the cluster ends shared
    with a refcount of 1 (and COPIED where it must not be: a later guest
    write would overwrite the snapshot's data in place); qemu-img check
    then finds more corruption than before. qimg refuses before writing
    anything, marks the image corrupt and names the cluster."""
    base = tmp_path / "base.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", base, "64M", check=True)
    qemu_io("-c", "write -P 1 0 128k", base, check=True)
    qemu_img("snapshot", "-c", "s", base, check=True)
    if op[0] == "-a":  # the active tree moves on; cluster 5 stays shared
        qemu_io("-c", "write -P 2 64k 4k", base, check=True)
    zero_refcount_of_first_data_cluster(base)
    before_check = qemu_img("check", "--output=json", base)
    m = tmp_path / "m.qcow2"
    shutil.copy(base, m)
    r = run([QIMG, "snapshot"] + op + [str(m)])
    assert r.rc == 1, r
    assert "Refcount of cluster 5 is lower than its references" in r.err, r
    before, after = base.read_bytes(), m.read_bytes()
    diff = [i for i in range(len(before)) if before[i] != after[i]]
    assert len(after) == len(before) and diff == [79], diff
    assert after[79] == before[79] | INCOMPAT_CORRUPT
    assert json.loads(before_check.out)["corruptions"] >= 1


REGRESSIONS = Path(__file__).parents[1] / "fuzz" / "regressions"


def test_repair_keeps_what_the_walk_did_not_count(tmp_path):
    """The old refcount table (31 clusters from 0x200) runs more than a
    cluster past the end of the file, so the walk does not count it; it
    covers the active L1 table. The rebuild took one reference off every
    cluster in its range all the same, and left the active L1 table with
    refcount 0 ("rebuilt refcount structure is still broken"). Now only
    the L1 entry with reserved bits is left, which no repair fixes.
    (qemu-img check -r all gives up on this file: "Check failed".)"""
    img = tmp_path / "img.qcow2"
    shutil.copy(REGRESSIONS / "fuzz_write-dirty-repair-drops-l1-refcount",
                img)
    r = run([QIMG, "check", "-r", "all", str(img)])
    assert r.rc == 2, r
    assert "still broken" not in r.out + r.err, r
    r = qemu_img("check", "--output=json", img)
    assert json.loads(r.out)["corruptions"] == 2, r
    assert "refcount=0" not in r.err, r


def test_repair_places_refcounts_past_tables_past_the_end(tmp_path):
    """Active L2 tables (clusters 8 and 9) lie past the end of the file,
    and other entries name a cluster at a bogus offset near 2^54. That
    bogus offset hid the near ones: the rebuilt refcount structure went to
    cluster 8, onto those tables, and the COPIED repair then wrote an L2
    entry's flag into the new refcount table (qemu-img check: "refcount
    block 0 is outside image", 10 internal errors). qemu-img check -r all
    refuses that write and fails. Now the structure goes past them and the
    image ends with fewer errors than it had."""
    img = tmp_path / "img.qcow2"
    shutil.copy(REGRESSIONS / "fuzz_write-dirty-repair-reftable-on-l2-past-eof",
                img)
    before = json.loads(qemu_img("check", "--output=json", img).out)
    r = run([QIMG, "check", "-r", "all", str(img)])
    assert r.rc == 2, r
    after = json.loads(qemu_img("check", "--output=json", img).out)
    assert after.get("check-errors", 0) == 0, after
    assert after["corruptions"] < before["corruptions"], (before, after)


def test_repair_sets_copied_freed_by_snapshot_table_fix(tmp_path):
    """Snapshot entry 1 is incomplete and the table it makes runs over the
    active disk's data cluster 14 (refcount 2: the entry and the table).
    -r all writes the table anew and frees the old one, leaving cluster
    14 at refcount 1 after the COPIED pass had run: qemu-img's repair ends
    with that flag wrong ("1 errors"). qimg's runs the pass again."""
    img = tmp_path / "img.qcow2"
    shutil.copy(
        REGRESSIONS / "fuzz_check-repair-snapshot-table-over-data-copied", img)
    q = tmp_path / "q.qcow2"
    shutil.copy(img, q)
    rq = qemu_img("check", "-r", "all", q)
    assert rq.rc == 2 and "l2_entry=1c00 refcount=1" in rq.err, rq
    r = run([QIMG, "check", "-r", "all", str(img)])
    assert r.rc == 0, r
    r = qemu_img("check", img)
    assert r.rc == 0 and "No errors were found" in r.out, r
