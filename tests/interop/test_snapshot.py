"""qimg snapshot against qemu-img snapshot (qemu-ref.md section 4).

Interop both ways over a matrix of image variants: one tool makes the
snapshots, the other lists, applies, exports (convert -l) and deletes
them. After every step `qemu-img check` is clean and every snapshot's
content, exported by the other tool, equals the raw file saved when the
snapshot was taken. Then: listings and JSON equal to qemu-img's on the same
file, unknown extra data kept byte for byte, space given back on delete,
damaged snapshot tables refused without a crash or a write, bitmaps,
overlays, and qemu-img's messages and exit codes for every error.
"""
import filecmp
import hashlib
import json
import os
import shutil
import struct

import pytest

from conftest import check_clean, qemu_img, qemu_io, qimg, strip_prog


# ---- helpers ---------------------------------------------------------------

def io(path, *cmds):
    args = ["-f", "qcow2"]
    for c in cmds:
        args += ["-c", c]
    r = qemu_io(*(args + [str(path)]))
    assert r.rc == 0 and "failed" not in r.out + r.err, r


def mk(path, size, opts=None, backing=None):
    args = ["create", "-q", "-f", "qcow2"]
    if opts:
        args += ["-o", opts]
    if backing:
        args += ["-b", backing, "-F", "qcow2"]
    qemu_img(*(args + [str(path)] + ([size] if size else [])), check=True)


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def tool(name):
    return qimg if name == "qimg" else qemu_img


def other(name):
    return "qemu-img" if name == "qimg" else "qimg"


def export(name, img, out, snap=None):
    """Raw export of the active disk or of snapshot `snap` by a tool."""
    spec = ["-l", "snapshot.name=" + snap] if snap else []
    tool(name)("convert", "-O", "raw", *spec, img, out, check=True)


def same_bytes(a, b):
    assert filecmp.cmp(a, b, shallow=False), "%s != %s" % (a, b)


def norm_err(text, prog):
    return strip_prog(text, prog).replace("Try '%s --help'" % prog,
                                          "Try 'PROG --help'")


def same_result(rq, rr):
    """Same stdout, same stderr after the program name, same exit code."""
    assert rr.out == rq.out, (rq, rr)
    assert norm_err(rr.err, "qimg") == norm_err(rq.err, "qemu-img"), (rq, rr)
    assert rr.rc == rq.rc, (rq, rr)


def twin_files(tmp, src):
    """Copies of `src` for each tool, under the same name in two
    directories (messages name the file)."""
    out = []
    for sub in ("q", "r"):
        (tmp / sub).mkdir(exist_ok=True)
        out.append(tmp / sub / src.name)
        shutil.copyfile(src, out[-1])
    return tuple(out)


def run_twins(fq, fr, *args):
    """`snapshot ARGS FILE` by qemu-img on fq and by qimg on fr, each run
    in its file's directory."""
    rq = qemu_img("snapshot", *args, fq.name, cwd=fq.parent)
    rr = qimg("snapshot", *args, fr.name, cwd=fr.parent)
    return rq, rr


# ---- on-disk structures (qcow2-format.md), for patching -------------------

def be(fmt, data, off):
    return struct.unpack_from(">" + fmt, data, off)[0]


def header(path):
    with open(path, "rb") as f:
        d = f.read(112)
    h = {"version": be("I", d, 4), "cluster_bits": be("I", d, 20),
         "size": be("Q", d, 24), "l1_size": be("I", d, 36),
         "l1_off": be("Q", d, 40), "rt_off": be("Q", d, 48),
         "rt_clusters": be("I", d, 56), "nb_snap": be("I", d, 60),
         "snap_off": be("Q", d, 64)}
    h["refcount_order"] = be("I", d, 96) if h["version"] >= 3 else 4
    return h


def set_header(path, nb_snap=None, snap_off=None):
    with open(path, "r+b") as f:
        if nb_snap is not None:
            f.seek(60)
            f.write(struct.pack(">I", nb_snap))
        if snap_off is not None:
            f.seek(64)
            f.write(struct.pack(">Q", snap_off))


def read_snaps(path):
    """The snapshot table: a list of entry dicts (extra kept as bytes)."""
    h = header(path)
    with open(path, "rb") as f:
        data = f.read()
    pos, out = h["snap_off"], []
    for _ in range(h["nb_snap"]):
        pos = (pos + 7) & ~7
        e = {"l1_off": be("Q", data, pos), "l1_size": be("I", data, pos + 8),
             "date_sec": be("I", data, pos + 16),
             "date_nsec": be("I", data, pos + 20),
             "vm_clock": be("Q", data, pos + 24),
             "vm_state32": be("I", data, pos + 32), "at": pos}
        id_len, name_len = be("H", data, pos + 12), be("H", data, pos + 14)
        xlen = be("I", data, pos + 36)
        pos += 40
        e["extra"] = data[pos:pos + xlen]
        pos += xlen
        e["id"] = data[pos:pos + id_len].decode()
        e["name"] = data[pos + id_len:pos + id_len + name_len].decode()
        pos += id_len + name_len
        out.append(e)
    return out, pos


def encode_snaps(entries):
    out = bytearray()
    for e in entries:
        out += b"\0" * (-len(out) % 8)
        idb, nameb = e["id"].encode(), e["name"].encode()
        out += struct.pack(">QIHHIIQII", e["l1_off"], e["l1_size"], len(idb),
                           len(nameb), e["date_sec"], e["date_nsec"],
                           e["vm_clock"], e["vm_state32"], len(e["extra"]))
        out += e["extra"] + idb + nameb
    return bytes(out)


def rewrite_table(path, entries):
    """Rewrite the table in place. It must still fit the clusters it has,
    so that the refcounts stay right and `qemu-img check` stays clean."""
    h = header(path)
    _, end = read_snaps(path)
    cs = 1 << h["cluster_bits"]
    room = (end - h["snap_off"] + cs - 1) // cs * cs
    data = encode_snaps(entries)
    assert len(data) <= room
    with open(path, "r+b") as f:
        f.seek(h["snap_off"])
        f.write(data + b"\0" * (room - len(data)))
    set_header(path, nb_snap=len(entries))


def refcounts(path):
    """{cluster index: refcount} for every cluster with a nonzero one."""
    h = header(path)
    cs, bits = 1 << h["cluster_bits"], 1 << h["refcount_order"]
    per_block, out = cs * 8 // bits, {}
    with open(path, "rb") as f:
        f.seek(h["rt_off"])
        rt = f.read(h["rt_clusters"] * cs)
        blocks = {}
        for i in range(len(rt) // 8):
            rb = be("Q", rt, 8 * i)
            if rb:
                f.seek(rb)
                blocks[i] = f.read(cs)
    for i, data in blocks.items():
        block = int.from_bytes(data, "big")
        for j in range(per_block):
            v = (block >> ((per_block - 1 - j) * bits)) & ((1 << bits) - 1)
            if v:
                out[i * per_block + j] = v
    return out


# ---- interop over a variant matrix ----------------------------------------

# compat, cluster size, refcount bits, extended L2, compression, backing:
# a pairwise cover (every pair of values of two dimensions appears where
# the format allows it: extended L2 needs compat 1.1 and clusters of at
# least 16k, zstd and refcount widths other than 16 need compat 1.1).
VARIANTS = [
    ("0.10", "64k", 16, False, "zlib", False),
    ("0.10", "512", 16, False, "zlib", True),
    ("0.10", "2M", 16, False, "zlib", False),
    ("0.10", "4k", 16, False, "zlib", True),
    ("1.1", "4k", 2, False, "zstd", False),
    ("1.1", "64k", 64, True, "zlib", True),
    ("1.1", "2M", 16, True, "zstd", False),
    ("1.1", "512", 64, False, "zstd", True),
    ("1.1", "2M", 2, False, "zlib", True),
    ("1.1", "64k", 2, True, "zstd", True),
    ("1.1", "4k", 64, False, "zlib", False),
    ("1.1", "512", 2, False, "zlib", False),
]


# Most of test_interop's time is qemu-img's and qemu-io's, the same in
# both builds: the sanitizer build runs every other variant (as the damage
# matrix and the crash suite thin theirs there), which still takes qimg
# through every geometry's code paths; the release build runs them all.
SANITIZED = os.environ.get("QIMG_SANITIZE", "none") != "none"
INTEROP_VARIANTS = VARIANTS[::2] if SANITIZED else VARIANTS


def variant_id(v):
    return "compat%s-c%s-rc%d%s-%s%s" % (v[0], v[1], v[2],
                                        "-extl2" if v[3] else "", v[4],
                                        "-backing" if v[5] else "")


def cluster_bytes(s):
    return {"512": 512, "4k": 4096, "64k": 65536, "2M": 2 << 20}[s]


def make_variant(d, v):
    compat, cs, rc, ext, comp, backing = v
    opts = "compat=%s,cluster_size=%s,refcount_bits=%d,extended_l2=%s" % (
        compat, cs, rc, "on" if ext else "off")
    if comp != "zlib":
        opts += ",compression_type=" + comp
    img = d / "img.qcow2"
    if backing:
        mk(d / "base.qcow2", "32M")
        io(d / "base.qcow2", "write -P 0xb0 0 6M", "write -P 0xb1 10M 3M",
           "write -P 0xb2 29M 2M")
        mk(img, None, opts, backing="base.qcow2")
    else:
        mk(img, "32M", opts)
    return img


def workload(img, step, cs, compress=True):
    """Guest writes of every kind, different at each step: unaligned data,
    compressed clusters (fresh ones: QEMU only compresses into unallocated
    clusters), zero writes and cluster-aligned discards. (With 2-bit
    refcounts no compression: compressed clusters share host clusters,
    whose refcounts would overflow at the first snapshot.)"""
    p = 0x10 + step * 0x11
    off = (step * 3 % 7) * (1 << 20) + step * 4096 + 512
    comp = 16 * (1 << 20) + step * max(cs, 64 * 1024)
    disc = ((step * 2 % 5) * 3 * (1 << 20) + cs - 1) // cs * cs
    io(img, "write -P %d %d 100k" % (p, off),
       "write %s -P %d %d %d" % ("-c" if compress else "", p + 1, comp,
                                 max(cs, 64 * 1024)),
       "write -z %d 192k" % ((step * 5 % 7) * (1 << 20) + 65536),
       "write -P %d %d 8k" % (p + 2, 30 * (1 << 20) + step * 8192),
       "discard %d %d" % (disc, max(cs, 256 * 1024)))


def verify(d, img, refs, exporter):
    """check clean; each snapshot (by name) exported equals its reference."""
    check_clean(img)
    listed = [e["name"] for e in read_snaps(img)[0]]
    assert sorted(listed) == sorted(refs), (listed, refs)
    for name, ref in refs.items():
        out = d / ("exp_%s.raw" % name)
        export(exporter, img, out, name)
        same_bytes(out, ref)


def take(d, img, maker, name, refs):
    ref = d / ("ref_%s.raw" % name)
    export("qemu-img", img, ref)  # the active disk, as the snapshot holds it
    tool(maker)("snapshot", "-c", name, img, check=True)
    refs[name] = ref


@pytest.mark.parametrize("maker", ["qimg", "qemu-img"])
@pytest.mark.parametrize("v", INTEROP_VARIANTS, ids=variant_id)
def test_interop(tmp, v, maker):
    """`maker` creates snapshots between guest writes; the other tool lists
    them the same way, exports, applies and deletes them; qemu-io keeps
    writing in between (copy-on-write of shared clusters)."""
    user = other(maker)
    cs = cluster_bytes(v[1])
    img = make_variant(tmp, v)
    # refcount_bits=2 counts to 3: the active disk and one snapshot, plus
    # the extra reference qemu-img takes for a moment while applying.
    nb = 1 if v[2] == 2 else 3
    comp = v[2] != 2
    refs = {}
    for step in range(nb):
        workload(img, step, cs, comp)
        take(tmp, img, maker, "s%d" % step, refs)
        verify(tmp, img, refs, user)
    workload(img, nb, cs, comp)
    verify(tmp, img, refs, user)
    same_result(qemu_img("snapshot", "-l", img), qimg("snapshot", "-l", img))

    # Apply by the other tool: the active disk becomes the snapshot.
    last = "s%d" % (nb - 1)
    tool(user)("snapshot", "-a", last, img, check=True)
    export(maker, img, tmp / "active.raw")
    same_bytes(tmp / "active.raw", refs[last])
    verify(tmp, img, refs, user)
    workload(img, nb + 1, cs, comp)  # writes after apply: COW again
    verify(tmp, img, refs, maker)

    # Delete by the other tool, one at a time; then create again.
    for name in sorted(refs):
        tool(user)("snapshot", "-d", name, img, check=True)
        del refs[name]
        verify(tmp, img, refs, maker)
    take(tmp, img, maker, "again", refs)
    verify(tmp, img, refs, user)
    if v[5]:
        # The overlay alone changed: reads still fall through to it.
        assert read_snaps(tmp / "base.qcow2")[0] == []


# ---- listings --------------------------------------------------------------

def patch(path, idx, **fields):
    """Set fields of snapshot `idx` in place (the table keeps its size
    unless the extra data changes length)."""
    entries, _ = read_snaps(path)
    e = entries[idx]
    for k, val in fields.items():
        if k in ("vm_state_large", "disk_size", "icount"):
            o = {"vm_state_large": 0, "disk_size": 8, "icount": 16}[k]
            x = bytearray(e["extra"])
            x[o:o + 8] = struct.pack(">Q", val)
            e["extra"] = bytes(x)
        else:
            e[k] = val
    rewrite_table(path, entries)


def make_listing_image(d):
    """qemu-ref.md 4.8's column edge cases, made by qimg: VM SIZE units,
    VM CLOCK past 24 and 100 hours, unknown ICOUNT, long, spaced and
    UTF-8 names, a v2-style 16-byte extra data entry."""
    img = d / "list.qcow2"
    mk(img, "64M")
    io(img, "write -P 1 0 64k")
    names = ["a", "bb", "c" * 17, "d" * 18, "with space", "h\u00e9llo",
             "N" * 300, "", "j", "k", "l"]
    for n in names:
        qimg("snapshot", "-c", n, img, check=True)
    values = [(1, 1), (1023, 999999999), (1024, 10 ** 9), (1536, 615 * 10 ** 8),
              (1048576, 3600 * 10 ** 9), (10 ** 9, 86399999 * 10 ** 6),
              (5368709120, 360000 * 10 ** 9), (1048575, 3600000 * 10 ** 9),
              (12345678, 123456789), (100, 0), (10240, 0)]
    for i, (vm, clock) in enumerate(values):
        patch(img, i, vm_state_large=vm, vm_clock=clock,
              date_sec=1700000000 + i * 3456789, date_nsec=i * 1000)
    patch(img, 8, icount=12345, date_sec=4294967295)
    patch(img, 9, icount=(1 << 64) - 1)
    entries, _ = read_snaps(img)
    entries[10]["extra"] = entries[10]["extra"][:16]  # no icount field
    entries[10]["vm_state32"] = 7
    rewrite_table(img, entries)
    check_clean(img)
    return img


@pytest.mark.parametrize("tz", ["UTC", "America/New_York"])
def test_listing_matches(tmp, tz):
    img = make_listing_image(tmp)
    env = {"TZ": tz}
    rq = qemu_img("snapshot", "-l", img, env=env)
    same_result(rq, qimg("snapshot", "-l", img, env=env))
    assert rq.out.count("\n") == 13 and "100:00:00.000" in rq.out
    same_result(qemu_img("snapshot", "-q", "-l", img, env=env),
                qimg("snapshot", "-q", "-l", img, env=env))
    # `info` prints the same table: the same file, so even "disk size".
    same_result(qemu_img("info", img, env=env), qimg("info", img, env=env))


def test_json_matches(tmp):
    img = make_listing_image(tmp)
    rq = qemu_img("info", "--output=json", img)
    rr = qimg("info", "--output=json", img)
    same_result(rq, rr)
    snaps = json.loads(rq.out)["snapshots"]
    rl = qimg("snapshot", "-l", "--output=json", img)
    assert rl.rc == 0 and json.loads(rl.out) == snaps
    # Printed the way `info` prints the array, one level less indented.
    inner = rq.out.split('"snapshots": ')[1].split("\n    ],\n")[0]
    assert rl.out == "\n".join(l[4:] if l.startswith("    ") else l
                               for l in (inner + "\n    ]").split("\n")) \
        + "\n"


def test_listing_empty(tmp):
    img = tmp / "e.qcow2"
    mk(img, "1M")
    same_result(qemu_img("snapshot", "-l", img), qimg("snapshot", "-l", img))
    assert qimg("snapshot", "-l", img).out == ""
    # qimg extension: JSON of no snapshots is an empty array.
    assert qimg("snapshot", "-l", "--output=json", img).out == "[]\n"


# ---- unknown extra data and VM state --------------------------------------

def test_extra_data_kept(tmp):
    """A 40-byte extra data area (16 bytes qimg does not know) survives
    qimg creating and deleting other snapshots, byte for byte."""
    img = tmp / "x.qcow2"
    mk(img, "16M")
    io(img, "write -P 1 0 1M")
    for n in ("keep", "other", "third"):
        qemu_img("snapshot", "-c", n, img, check=True)
    entries, _ = read_snaps(img)
    unknown = bytes(range(0xe0, 0xf0))
    entries[0]["extra"] = entries[0]["extra"] + unknown
    entries[0]["vm_state32"] = 0
    rewrite_table(img, entries)
    patch(img, 0, vm_state_large=1536)
    check_clean(img)
    before = read_snaps(img)[0][0]
    assert len(before["extra"]) == 40
    ref = tmp / "keep.raw"
    export("qemu-img", img, ref, "keep")
    io(img, "write -P 2 0 2M")
    qimg("snapshot", "-c", "new", img, check=True)
    qimg("snapshot", "-d", "other", img, check=True)
    qimg("snapshot", "-a", "third", img, check=True)
    qimg("snapshot", "-d", "third", img, check=True)
    check_clean(img)
    after = [e for e in read_snaps(img)[0] if e["name"] == "keep"][0]
    for k in ("extra", "id", "l1_off", "l1_size", "date_sec", "date_nsec",
              "vm_clock"):
        assert after[k] == before[k], k
    export("qemu-img", img, tmp / "k2.raw", "keep")
    same_bytes(tmp / "k2.raw", ref)
    same_result(qemu_img("snapshot", "-l", img), qimg("snapshot", "-l", img))
    assert " 1.5 KiB " in qimg("snapshot", "-l", img).out


def test_vm_state_size_listed(tmp):
    """The VM SIZE column: the 64-bit extra-data field wins over the 32-bit
    one (qemu-ref.md 4.8), also for v2 images."""
    img = tmp / "v2.qcow2"
    mk(img, "64M", "compat=0.10")
    qimg("snapshot", "-c", "v2snap", img, check=True)
    qimg("snapshot", "-c", "v2b", img, check=True)
    patch(img, 0, vm_state32=1536, vm_clock=5 * 10 ** 9)
    patch(img, 1, vm_state_large=2048)
    rq = qemu_img("snapshot", "-l", img)
    same_result(rq, qimg("snapshot", "-l", img))
    assert "   0 B " in rq.out and " 2 KiB " in rq.out
    check_clean(img)


# ---- space ----------------------------------------------------------------

def metadata_clusters(path):
    """Clusters of the active state's metadata: L1 table, L2 tables,
    refcount table and blocks."""
    h = header(path)
    cs = 1 << h["cluster_bits"]
    with open(path, "rb") as f:
        f.seek(h["l1_off"])
        l1 = f.read(h["l1_size"] * 8)
        f.seek(h["rt_off"])
        rt = f.read(h["rt_clusters"] * cs)
    l2 = sum(1 for i in range(h["l1_size"])
             if be("Q", l1, 8 * i) & 0x00fffffffffffe00)
    rb = sum(1 for i in range(len(rt) // 8) if be("Q", rt, 8 * i))
    return -(-h["l1_size"] * 8 // cs) + l2 + h["rt_clusters"] + rb


def allocated_but_free(path):
    """Clusters the file has blocks for whose refcount is 0."""
    cs = 1 << header(path)["cluster_bits"]
    used, out, off = refcounts(path), 0, 0
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        while off < size:
            try:
                start = os.lseek(fd, off, os.SEEK_DATA)
            except OSError:
                break
            off = os.lseek(fd, start, os.SEEK_HOLE)
            out += sum(1 for c in range(start // cs, -(-off // cs))
                       if c not in used)
    finally:
        os.close(fd)
    return out


@pytest.mark.parametrize("cs,rc", [("64k", 16), ("4k", 16), ("64k", 8),
                                   ("64k", 32), ("64k", 64)])
def test_kept_metadata_is_reused(tmp, cs, rc):
    """qimg leaves the old copies of the tables an operation replaced
    allocated (no hole punch), and takes runs of them first when it
    allocates: however many snapshots are created and deleted, free
    clusters left allocated stay within two copies of the metadata (runs
    for the next operation, and scattered single clusters, which guest
    writes take), and the file stops growing (for each refcount width its
    free-cluster search tests several entries at once)."""
    img = tmp / "i.qcow2"
    mk(img, "256M", "cluster_size=%s,refcount_bits=%d" % (cs, rc))
    io(img, "write -P 1 0 100M", "write -P 2 200M 8M")
    sizes = []
    for i in range(12):
        qimg("snapshot", "-c", "s%d" % i, img, check=True)
        if i >= 3:
            qimg("snapshot", "-d", "s%d" % (i - 3), img, check=True)
        if i % 4 == 0:
            qimg("snapshot", "-a", "s%d" % i, img, check=True)
        io(img, "write -P %d %dM 1M" % (i + 3, 10 * i))
        sizes.append(os.stat(img).st_blocks)
        assert allocated_but_free(img) <= 2 * metadata_clusters(img) + 2, i
    check_clean(img)
    assert sizes[-1] <= sizes[5] + 512, sizes  # ~ what the writes add


def l2_runs(path):
    """Runs of consecutive clusters the active L2 tables lie in."""
    h = header(path)
    cs = 1 << h["cluster_bits"]
    with open(path, "rb") as f:
        f.seek(h["l1_off"])
        l1 = f.read(h["l1_size"] * 8)
    offs = sorted(o for o in (be("Q", l1, 8 * i) & 0x00fffffffffffe00
                              for i in range(h["l1_size"])) if o)
    return 1 + sum(1 for a, b in zip(offs, offs[1:]) if b != a + cs)


def test_copies_stay_side_by_side(tmp):
    """qemu-img lays the L2 tables of a preallocated image out one per
    512 MiB. Once qimg has copied them, those clusters are free, and
    filling them again would make every copy a write of its own: qimg
    writes its copies in runs (at most about 8 per operation). It leaves
    the scattered clusters allocated (punching them one by one cost a
    file system seconds on big images) for guest writes to take, so free
    clusters the file holds stay within two copies of the metadata, and
    a guest write of single clusters fills them before growing the
    file."""
    img = tmp / "i.qcow2"
    mk(img, "32G", "preallocation=metadata")  # 64 L2 tables
    assert l2_runs(img) == 64
    for i in range(4):
        qemu_img("snapshot", "-c", "s", img, check=True)
        qimg("snapshot", "-d", "s", img, check=True)
        assert l2_runs(img) <= 9, i
        held = allocated_but_free(img)
        assert held <= 2 * metadata_clusters(img) + 2, i
        assert held >= 64, i  # the 64 scattered ones, not punched
    # Copy-on-write of single clusters takes the held clusters first.
    qemu_img("snapshot", "-c", "x", img, check=True)
    held = allocated_but_free(img)
    size = os.path.getsize(img)
    io(img, *["write -P 9 %dk 64k" % (1024 * 1024 + 64 * 3 * k)
              for k in range(16)])
    assert os.path.getsize(img) == size
    assert allocated_but_free(img) <= held - 16
    check_clean(img)
    qemu_img("snapshot", "-d", "x", img, check=True)
    check_clean(img)


def set_refcount(path, cluster, value):
    """Set a 16-bit refcount in the first refcount block."""
    h = header(path)
    with open(path, "r+b") as f:
        f.seek(h["rt_off"])
        rb = be("Q", f.read(8), 0)
        f.seek(rb + 2 * cluster)
        f.write(struct.pack(">H", value))


@pytest.mark.parametrize("op,value,msg", [
    ("-c", 0xffff, "Refcount of cluster %d would exceed its maximum of 65535"),
    ("-d", 0, "Refcount of cluster %d is lower than its references")])
def test_refcount_out_of_range_named(tmp, op, value, msg):
    """A refcount the operation would take out of its range, inside a run
    of 16 data clusters (counted four at a time), is refused and named;
    a refused create leaves the file as it was."""
    img = tmp / "i.qcow2"
    mk(img, "16M")
    io(img, "write -P 1 0 1M")
    if op == "-d":
        qemu_img("snapshot", "-c", "s", img, check=True)
    m = json.loads(qemu_img("map", "--output=json", img, check=True).out)
    cluster = m[0]["offset"] // 65536 + 5
    set_refcount(img, cluster, value)
    before = sha(img)
    r = qimg("snapshot", op, "s", img)
    assert r.rc == 1 and msg % cluster in r.err, r
    if op == "-c":
        assert sha(img) == before


def heavy(img, maker):
    """(No compressed writes: a host cluster holding several compressed
    clusters rightly keeps a refcount above 1.)"""
    io(img, "write -P 1 0 16M", "write -P 2 20M 2M")
    tool(maker)("snapshot", "-c", "a", img, check=True)
    io(img, "write -P 3 4M 8M", "write -z 0 1M", "discard 20M 1M")
    tool(maker)("snapshot", "-c", "b", img, check=True)
    io(img, "write -P 4 8M 16M", "write -P 5 30M 1M")
    tool(maker)("snapshot", "-c", "c", img, check=True)
    io(img, "write -P 6 0 2M")
    tool(maker)("snapshot", "-c", "d", img, check=True)


@pytest.mark.parametrize("opts", ["cluster_size=64k", "cluster_size=4k",
                                  "compat=0.10"])
def test_delete_gives_space_back(tmp, opts):
    """Deleting every snapshot returns every refcount to 1 and the file
    holds no more blocks than after the same sequence with qemu-img, but
    for old metadata copies qimg leaves allocated for the next operation
    (at most what one operation writes: about one copy of the metadata,
    with the L1 and snapshot tables)."""
    files = {}
    for t in ("qimg", "qemu-img"):
        img = tmp / ("%s.qcow2" % t)
        mk(img, "64M", opts)
        heavy(img, t)
        for n in "cadb":
            tool(t)("snapshot", "-d", n, img, check=True)
        check_clean(img)
        rc = refcounts(img)
        assert set(rc.values()) == {1}, {c: r for c, r in rc.items()
                                         if r != 1}
        files[t] = img
    export("qemu-img", files["qimg"], tmp / "a.raw")
    export("qemu-img", files["qemu-img"], tmp / "b.raw")
    same_bytes(tmp / "a.raw", tmp / "b.raw")
    cs = 65536 if "64k" in opts or "compat" in opts else 4096
    slack = 4 * max(cs, 65536) // 512  # file-system granularity
    slack += (metadata_clusters(files["qimg"]) + 2) * cs // 512
    bq = os.stat(files["qemu-img"]).st_blocks
    br = os.stat(files["qimg"]).st_blocks
    assert br <= bq + slack, (br, bq)


# ---- damaged snapshot tables ----------------------------------------------

def base_image(d):
    img = d / "bad.qcow2"
    mk(img, "16M")
    io(img, "write -P 1 0 1M")
    qemu_img("snapshot", "-c", "one", img, check=True)
    io(img, "write -P 2 0 512k")
    qemu_img("snapshot", "-c", "two", img, check=True)
    return img


def bad_offset_eof(img):
    set_header(img, snap_off=(os.path.getsize(img) + (1 << 20)) & ~0xffff)


def bad_offset_unaligned(img):
    set_header(img, snap_off=header(img)["snap_off"] + 8)


def bad_nb_too_large(img):
    set_header(img, nb_snap=65537)


def bad_nb_past_entries(img):
    set_header(img, nb_snap=header(img)["nb_snap"] + 3)


def bad_entry_past_table(img):
    entries, _ = read_snaps(img)
    with open(img, "r+b") as f:  # name length of the last entry: 0xffff
        f.seek(entries[-1]["at"] + 14)
        f.write(b"\xff\xff")
    set_header(img, snap_off=header(img)["snap_off"])
    # Put the table at the very end so the name runs past the file.
    with open(img, "rb") as f:
        data = f.read()
    h = header(img)
    _, end = read_snaps_raw(data, h)
    with open(img, "r+b") as f:
        f.truncate(max(end - 0xffff + 10, h["snap_off"] + 64))


def read_snaps_raw(data, h):
    pos = h["snap_off"]
    for _ in range(h["nb_snap"]):
        pos = (pos + 7) & ~7
        xlen = be("I", data, pos + 36)
        pos += 40 + xlen + be("H", data, pos + 12) + be("H", data, pos + 14)
    return None, pos


def bad_extra_too_big(img):
    entries, _ = read_snaps(img)
    entries[1]["extra"] = entries[1]["extra"] + b"\x01" * 1010
    rewrite_table(img, entries)


def bad_l1_unaligned(img):
    patch(img, 0, l1_off=read_snaps(img)[0][0]["l1_off"] + 512)


def bad_l1_past_eof(img):
    patch(img, 0, l1_off=1 << 40)


def bad_l1_too_large(img):
    patch(img, 0, l1_size=0x10000000)


def bad_l1_shared(img):
    entries, _ = read_snaps(img)
    patch(img, 1, l1_off=entries[0]["l1_off"])


BAD_TABLES = [bad_offset_eof, bad_offset_unaligned, bad_nb_too_large,
              bad_nb_past_entries, bad_entry_past_table, bad_extra_too_big,
              bad_l1_unaligned, bad_l1_past_eof, bad_l1_too_large,
              bad_l1_shared]
ACTIONS = [["-l"], ["-c", "new"], ["-a", "one"], ["-a", "two"],
           ["-d", "one"], ["-d", "two"]]


@pytest.mark.parametrize("action", ACTIONS, ids=lambda a: " ".join(a))
@pytest.mark.parametrize("damage", BAD_TABLES, ids=lambda f: f.__name__)
def test_bad_table(tmp, damage, action):
    """Where qemu-img refuses, qimg refuses too (exit 1, a one-line message,
    the file byte-identical but the corrupt bit, which a table past the
    end of the file sets when something would write); qimg never crashes;
    when qimg goes ahead it does what qemu-img does to the file (qemu-img
    check verdict equal)."""
    src = base_image(tmp)
    damage(src)
    fq, fr = twin_files(tmp, src)
    before = fr.read_bytes()
    rq, rr = run_twins(fq, fr, *action)
    assert rr.rc in (0, 1), rr  # never a signal / abort
    if rq.rc != 0:
        assert rr.rc != 0, (rq, rr)
    if rr.rc != 0:
        after = fr.read_bytes()
        assert len(after) == len(before), rr
        diff = [i for i in range(len(after)) if after[i] != before[i]]
        assert diff == [] or (diff == [79] and
                              after[79] == before[79] | 2), (diff, rr)
        lines = [l for l in rr.err.strip("\n").split("\n")
                 if not l.startswith("You can force-remove")]  # QEMU's hint
        assert all(l.startswith("qimg: ") for l in lines) and \
            1 <= len(lines) <= 2, rr
    elif action[0] == "-l":
        assert rr.out == rq.out, (rq, rr)
    else:
        assert qemu_img("check", fr).rc == qemu_img("check", fq).rc, (rq, rr)


@pytest.mark.parametrize("damage,action", [
    (bad_offset_unaligned, ["-l"]), (bad_nb_too_large, ["-c", "x"]),
    (bad_extra_too_big, ["-l"]), (bad_l1_unaligned, ["-a", "one"]),
    (bad_l1_unaligned, ["-d", "one"]), (bad_l1_too_large, ["-d", "one"]),
    (bad_l1_too_large, ["-a", "one"]),
], ids=lambda x: x.__name__ if callable(x) else " ".join(x))
def test_bad_table_messages(tmp, damage, action):
    """Where qemu-img refuses cleanly, qimg's words are the same."""
    src = base_image(tmp)
    damage(src)
    fq, fr = twin_files(tmp, src)
    rq, rr = run_twins(fq, fr, *action)
    assert rq.rc == 1
    rq.err = rq.err.replace("qemu-img check -r", "PROG check -r")
    rr.err = rr.err.replace("qimg check -r", "PROG check -r")
    same_result(rq, rr)


# ---- bitmaps and overlays -------------------------------------------------

def test_bitmaps(tmp):
    img = tmp / "bm.qcow2"
    mk(img, "16M")
    io(img, "write -P 1 0 1M")
    qemu_img("bitmap", "--add", img, "bm0", check=True)
    qimg("snapshot", "-c", "s1", img, check=True)
    io(img, "write -P 2 0 1M")
    qimg("snapshot", "-c", "s2", img, check=True)
    qimg("snapshot", "-d", "s1", img, check=True)
    info = qemu_img("info", "--output=json", img).out
    bms = json.loads(info)["format-specific"]["data"]["bitmaps"]
    assert [b["name"] for b in bms] == ["bm0"]
    check_clean(img)
    fq, fr = twin_files(tmp, img)
    before = sha(fr)
    rq, rr = run_twins(fq, fr, "-a", "s2")
    same_result(rq, rr)
    assert "Device has active dirty bitmaps" in rr.err
    assert sha(fr) == before


def test_overlay(tmp):
    """Snapshots of an overlay cover the overlay alone; after apply, the
    ranges the overlay leaves unallocated read from the backing file."""
    base = tmp / "base.qcow2"
    mk(base, "8M")
    io(base, "write -P 0x11 0 8M")
    base_sum = sha(base)
    top = tmp / "top.qcow2"
    mk(top, None, backing="base.qcow2")
    io(top, "write -P 0x22 1M 64k")
    refs = {}
    take(tmp, top, "qimg", "one", refs)
    io(top, "write -P 0x33 0 4M", "write -z 6M 1M", "discard 1M 64k")
    take(tmp, top, "qimg", "two", refs)
    io(top, "write -P 0x44 2M 4M")
    qimg("snapshot", "-a", "one", top, check=True)
    export("qemu-img", top, tmp / "active.raw")
    same_bytes(tmp / "active.raw", refs["one"])
    io(top, "read -P 0x11 0 1M", "read -P 0x22 1M 64k",
       "read -P 0x11 2M 6M")
    verify(tmp, top, refs, "qimg")
    qimg("snapshot", "-a", "two", top, check=True)
    export("qimg", top, tmp / "active2.raw")
    same_bytes(tmp / "active2.raw", refs["two"])
    for n in ("one", "two"):
        qimg("snapshot", "-d", n, top, check=True)
    check_clean(top)
    assert sha(base) == base_sum and read_snaps(base)[0] == []


# ---- semantics and messages -----------------------------------------------

def simple(d, name="s.qcow2", opts=None):
    img = d / name
    mk(img, "64M", opts)
    io(img, "write -P 0x11 0 64k")
    return img


ERRORS = [
    ["-a", "nonexist"], ["-d", "nonexist"], ["-a", "99"], ["-d", "99"],
    ["-c", "a", "-l"], ["-l", "-c", "a"], ["-l", "-l"], ["-c", "x", "-c", "y"],
    ["-a", "a", "-d", "a"], [], ["-Z"], ["--foo"], ["-U", "-c", "x"],
    ["-U", "-a", "a"], ["-U", "-d", "a"], ["-U", "-l"], ["-q", "-a", "nope"],
    ["-q", "-d", "a"], ["-c", ""], ["-c", "N" * 300],
]


@pytest.mark.parametrize("args", ERRORS, ids=lambda a: " ".join(a)[:40])
def test_messages(tmp, args):
    img = simple(tmp)
    qemu_img("snapshot", "-c", "a", img, check=True)
    fq, fr = twin_files(tmp, img)
    rq, rr = run_twins(fq, fr, *args)
    same_result(rq, rr)
    if rr.rc:
        assert sha(fq) == sha(fr) == sha(img)
    check_clean(fr)


@pytest.mark.parametrize("args", [[], ["-l"], ["-c"], ["-c", "x"],
                                  ["-l", "nonexist.qcow2"],
                                  ["-c", "x", "nonexist.qcow2"],
                                  ["-l", "a", "b"]])
def test_argument_errors(tmp, args):
    same_result(qemu_img("snapshot", *args, cwd=tmp),
                qimg("snapshot", *args, cwd=tmp))


def test_raw_image(tmp):
    raw = tmp / "r.raw"
    qemu_img("create", "-q", "-f", "raw", raw, "64M", check=True)
    for args in (["-l"], ["-c", "x"], ["-a", "x"], ["-d", "x"]):
        same_result(qemu_img("snapshot", *args, "r.raw", cwd=tmp),
                    qimg("snapshot", *args, "r.raw", cwd=tmp))
    # qimg extension: -f raw (qemu-img snapshot has no -f) skips the
    # probing warning but refuses the same way.
    r = qimg("snapshot", "-f", "raw", "-c", "x", "r.raw", cwd=tmp)
    assert r.rc == 1 and r.err == (
        "qimg: Could not create snapshot 'x': -95 (Operation not "
        "supported)\n")


def test_corrupt_and_dirty_bits(tmp):
    img = simple(tmp, "c.qcow2")
    qemu_img("snapshot", "-c", "a", img, check=True)
    with open(img, "r+b") as f:
        f.seek(79)
        f.write(bytes([2]))
    for args in (["-l"], ["-c", "x"], ["-a", "a"], ["-d", "a"]):
        fq, fr = twin_files(tmp, img)
        same_result(*run_twins(fq, fr, *args))
        assert sha(fr) == sha(img)
    d = simple(tmp, "d.qcow2")
    with open(d, "r+b") as f:
        f.seek(79)
        f.write(bytes([1]))
    fq, fr = twin_files(tmp, d)
    same_result(*run_twins(fq, fr, "-c", "x"))
    for f in (fq, fr):  # the dirty bit is gone after a write
        with open(f, "rb") as fh:
            fh.seek(72)
            assert fh.read(8) == bytes(8)
        check_clean(f)


@pytest.mark.parametrize("rc_bits,nb_ok", [(1, 0), (2, 2)])
def test_refcount_limit(tmp, rc_bits, nb_ok):
    """A snapshot that would push a refcount past its width: qemu-img says
    "-22 (Invalid argument)" (and leaks a cluster); qimg says why on one
    line first, then the same line, and leaves the file as it was."""
    img = tmp / "rc.qcow2"
    mk(img, "64M", "refcount_bits=%d" % rc_bits)
    io(img, "write -P 0x11 0 128k")
    for i in range(nb_ok):
        qimg("snapshot", "-c", "s%d" % i, img, check=True)
    fq, fr = twin_files(tmp, img)
    before = sha(fr)
    rq, rr = run_twins(fq, fr, "-c", "over")
    assert rq.rc == rr.rc == 1
    lines = rr.err.split("\n")
    assert lines[0] == ("qimg: Refcount of cluster %d would exceed its "
                        "maximum of %d" % (int(lines[0].split()[4]),
                                           (1 << rc_bits) - 1))
    assert norm_err("\n".join(lines[1:]), "qimg") == norm_err(rq.err,
                                                              "qemu-img")
    assert rq.err == "qemu-img: Could not create snapshot 'over': -22 " \
        "(Invalid argument)\n"
    assert sha(fr) == before
    check_clean(fr)
    same_result(*run_twins(fq, fr, "-l"))


def test_v2_apply_other_size(tmp):
    """qemu-ref.md 4.4: v2 cannot resize to the snapshot's size; v3 can."""
    for compat in ("0.10", "1.1"):
        img = simple(tmp, "p%s.qcow2" % compat, "compat=" + compat)
        qemu_img("snapshot", "-c", "s", img, check=True)
        patch(img, 0, disk_size=128 << 20)
        fq, fr = twin_files(tmp, img)
        same_result(*run_twins(fq, fr, "-a", "s"))
        # The same virtual size (and everything else) afterwards.
        iq = json.loads(qemu_img("info", "--output=json", fq).out)
        ir = json.loads(qemu_img("info", "--output=json", fr).out)
        for i in (iq, ir):  # host allocation may differ
            del i["actual-size"], i["filename"]
        assert iq == ir
        check_clean(fr)
        if compat == "0.10":
            assert sha(fr) == sha(img)


def test_resize_both_ways(tmp):
    """v3 apply resizes to the snapshot's size, growing and shrinking."""
    img = simple(tmp, "rs.qcow2")
    qimg("snapshot", "-c", "small", img, check=True)
    qemu_img("resize", "-q", img, "128M", check=True)
    io(img, "write -P 0x22 100M 64k")
    qimg("snapshot", "-c", "big", img, check=True)
    qimg("snapshot", "-a", "small", img, check=True)
    assert json.loads(qemu_img("info", "--output=json", img).out)[
        "virtual-size"] == 64 << 20
    check_clean(img)
    qimg("snapshot", "-a", "big", img, check=True)
    assert json.loads(qemu_img("info", "--output=json", img).out)[
        "virtual-size"] == 128 << 20
    io(img, "read -P 0x22 100M 64k", "read -P 0x11 0 64k")
    check_clean(img)


def test_ids_names_and_lookup(tmp):
    """IDs: max numeric + 1; duplicate names accepted; names cut to 255
    bytes; -a by ID then name; -d by name then (qimg only) ID."""
    img = tmp / "idn.qcow2"
    mk(img, "64M")
    io(img, "write -P 0xa1 0 64k")
    qimg("snapshot", "-c", "2", img, check=True)
    io(img, "write -P 0xa2 0 64k")
    qimg("snapshot", "-c", "1", img, check=True)
    io(img, "write -P 0xa3 0 64k")
    qimg("snapshot", "-c", "dup", img, check=True)
    qimg("snapshot", "-c", "dup", img, check=True)
    qimg("snapshot", "-c", "L" * 300, img, check=True)
    entries = read_snaps(img)[0]
    assert [(e["id"], e["name"]) for e in entries] == [
        ("1", "2"), ("2", "1"), ("3", "dup"), ("4", "dup"), ("5", "L" * 255)]
    same_result(qemu_img("snapshot", "-l", img), qimg("snapshot", "-l", img))
    qimg("snapshot", "-a", "1", img, check=True)  # ID 1, named "2"
    io(img, "read -P 0xa1 0 64k")
    qimg("snapshot", "-a", "2", img, check=True)
    io(img, "read -P 0xa2 0 64k")
    fq, fr = twin_files(tmp, img)
    for args in (["-a", "L" * 300], ["-d", "L" * 300]):
        same_result(*run_twins(fq, fr, *args))
    qimg("snapshot", "-d", "L" * 255, img, check=True)
    qimg("snapshot", "-d", "dup", img, check=True)  # the first one
    assert [e["id"] for e in read_snaps(img)[0]] == ["1", "2", "4"]
    qimg("snapshot", "-c", "next", img, check=True)  # max + 1
    assert read_snaps(img)[0][-1]["id"] == "5"
    check_clean(img)


def test_delete_by_id_extension(tmp):
    """qimg extension (pinned): -d falls back to the ID when no snapshot has
    that name; qemu-img only matches names. A name still wins."""
    img = tmp / "did.qcow2"
    mk(img, "64M")
    for n in ("alpha", "beta", "gamma", "1"):
        qemu_img("snapshot", "-c", n, img, check=True)
    fq, fr = twin_files(tmp, img)
    rq, rr = run_twins(fq, fr, "-d", "2")
    assert rq.rc == 1 and "snapshot not found" in rq.err
    assert rr.rc == 0 and rr.err == ""
    assert [e["name"] for e in read_snaps(fr)[0]] == ["alpha", "gamma", "1"]
    qimg("snapshot", "-d", "1", fr, check=True)  # the one named "1" (ID 4)
    assert [e["id"] for e in read_snaps(fr)[0]] == ["1", "3"]
    check_clean(fr)


def test_no_action(tmp):
    img = simple(tmp)
    same_result(qemu_img("snapshot", img), qimg("snapshot", img))


def test_too_many_snapshots(tmp):
    """65536 snapshots (a forged table: copies of one entry, new IDs, no
    names): the next -c fails like qemu-img's, without writing."""
    img = tmp / "many.qcow2"
    mk(img, "1M", "cluster_size=2M")
    qemu_img("snapshot", "-c", "x", img, check=True)
    entries, _ = read_snaps(img)
    e0 = entries[0]
    many = []
    for i in range(65536):
        e = dict(e0)
        e["id"], e["name"] = str(i + 1), ""
        many.append(e)
    data = encode_snaps(many)
    h = header(img)
    off = (os.path.getsize(img) + (2 << 20) - 1) & ~((2 << 20) - 1)
    with open(img, "r+b") as f:
        f.seek(off)
        f.write(data)
    set_header(img, nb_snap=65536, snap_off=off)
    assert h["nb_snap"] == 1
    fq, fr = twin_files(tmp, img)
    before = sha(fr)
    rq, rr = run_twins(fq, fr, "-c", "one-more")
    assert rq.rc == 1 and rq.err == (
        "qemu-img: Could not create snapshot 'one-more': -27 (File too "
        "large)\n")
    # qimg: its reason, then qemu-img's errno line.
    assert rr.rc == 1 and norm_err(rr.err, "qimg") == "Too many snapshots\n" \
        + norm_err(rq.err, "qemu-img")
    assert sha(fr) == before


@pytest.mark.parametrize("op", ["-c", "-d", "-a"])
def test_new_metadata_never_overwrites_live_tables(tmp_path, op):
    """The active L1 table's cluster has refcount 0 (damage): the first
    free cluster is the live L1 table. For -c QEMU's overlap check refuses
    to write its new L1 there, marks the image corrupt and fails; so does
    qimg, leaving the file as it was plus the corrupt bit (fuzzing found
    qimg writing a new snapshot's L1 table over the active one). For -d
    and -a QEMU updates tables in place and succeeds on the damaged image;
    qimg, which writes new copies first-fit, refuses before writing
    anything, in the same words (deliberate)."""
    path = tmp_path / "img.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=512", path,
             "1M", check=True)
    io(path, "write -P 1 0 4k")
    if op != "-c":
        qemu_img("snapshot", "-c", "s", path, check=True)
        io(path, "write -P 2 0 4k")
    with open(path, "r+b") as f:
        hdr = f.read(72)
        l1_off = struct.unpack(">Q", hdr[40:48])[0]
        rt_off = struct.unpack(">Q", hdr[48:56])[0]
        f.seek(rt_off)
        rb_off = struct.unpack(">Q", f.read(8))[0]
        f.seek(rb_off + 2 * (l1_off // 512))
        f.write(b"\0\0")
    qpath = tmp_path / "q.qcow2"
    shutil.copy(path, qpath)
    before = path.read_bytes()
    rq = qemu_img("snapshot", op, "s", qpath)
    rm = qimg("snapshot", op, "s", path)
    frame = ("qcow2: Marking image as corrupt: Preventing invalid write on "
             "metadata (overlaps with active L1 table); further corruption "
             "events will be suppressed")
    assert rm.rc == 1 and frame in rm.err, rm
    if op == "-c":
        assert rq.rc == 1 and frame in rq.err, rq
        assert strip_prog(rm.err, "qimg") == strip_prog(rq.err, "qemu-img"), (
            rq, rm)
    else:
        assert rq.rc == 0, rq
    after = path.read_bytes()
    assert len(after) == len(before)
    assert [i for i in range(len(before)) if before[i] != after[i]] == [79]
