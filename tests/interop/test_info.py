"""qimg info against qemu-img info (7.2), on images qemu-img made.

Both tools read the very same file, so everything is compared unmasked,
"disk size" / "actual-size" included: those are the file's st_blocks, the
same number for both readers (they would differ between two copies of an
image, which is why no test compares across copies). Snapshot dates are
wall-clock times stored in the file, the same for both readers too.
Compared: stdout exactly, stderr after the program name, exit code; human
and JSON, with and without --backing-chain.
"""
import os
import struct

import pytest

from conftest import QIMG, qemu_img, qemu_io, run, strip_prog

N300 = "N" * 300


def norm_err(text, prog):
    """stderr without the program name, wherever qemu-img prints it."""
    return strip_prog(text, prog).replace("Try '%s --help'" % prog,
                                          "Try 'PROG --help'")


def compare(d, args, env=None):
    r1 = run(["qemu-img", "info"] + args, cwd=d, env=env)
    r2 = run([QIMG, "info"] + args, cwd=d, env=env)
    assert r2.out == r1.out
    assert norm_err(r2.err, "qimg") == norm_err(r1.err, "qemu-img")
    assert r2.rc == r1.rc
    return r1


def patch(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def set_incompat_bits(path, bits):
    """OR `bits` into the header's incompatible_features (byte 79 holds
    the low 8 bits)."""
    with open(path, "r+b") as f:
        f.seek(72)
        v = struct.unpack(">Q", f.read(8))[0] | bits
        f.seek(72)
        f.write(struct.pack(">Q", v))


# Snapshot table entry (qcow2-format.md, "Snapshot table"): fixed part
# offsets, then extra data: vm_state_size_large, disk_size, icount.
SNAP_FIELDS = {"date_sec": (16, ">I"), "date_nsec": (20, ">I"),
               "vm_clock_nsec": (24, ">Q"), "vm_state_size": (32, ">I"),
               "vm_state_size_large": (40, ">Q"), "icount": (56, ">Q")}


def snapshot_entries(path):
    with open(path, "rb") as f:
        f.seek(60)
        nb, off = struct.unpack(">IQ", f.read(12))
        out = []
        for _ in range(nb):
            f.seek(off)
            e = f.read(40)
            id_len, name_len = struct.unpack(">HH", e[12:16])
            extra = struct.unpack(">I", e[36:40])[0]
            out.append(off)
            off = (off + 40 + extra + id_len + name_len + 7) & ~7
        return out


def spread_header(path, ext_len):
    """Insert an unknown header extension of ext_len bytes before the end
    marker and move the backing file name behind the extensions."""
    with open(path, "rb") as f:
        c0 = bytearray(f.read(65536))
    hlen, = struct.unpack_from(">I", c0, 100)
    boff, bsize = struct.unpack_from(">QI", c0, 8)
    name = bytes(c0[boff:boff + bsize])
    off = hlen
    while struct.unpack_from(">I", c0, off)[0]:  # up to the end marker
        off += 8 + -(-struct.unpack_from(">I", c0, off + 4)[0] // 8) * 8
    tail = struct.pack(">II", 0x12345678, ext_len) + bytes(-(-ext_len // 8) * 8)
    tail += bytes(8)  # end marker
    c0[off:off + len(tail) + bsize] = tail + name
    struct.pack_into(">Q", c0, 8, off + len(tail))
    patch(path, 0, bytes(c0))


def patch_snapshot(path, index, **fields):
    entry = snapshot_entries(path)[index]
    for name, value in fields.items():
        rel, fmt = SNAP_FIELDS[name]
        patch(path, entry + rel, struct.pack(fmt, value))


def q(d, *args):
    qemu_img(*args, cwd=d, check=True)


def make_plain(d):
    """Fresh images in every header variant."""
    q(d, "create", "-q", "-f", "qcow2", "v3.qcow2", "64M")
    q(d, "create", "-q", "-f", "qcow2", "-o", "compat=0.10", "v2.qcow2", "64M")
    q(d, "create", "-q", "-f", "qcow2", "-o", "extended_l2=on", "el2.qcow2",
      "64M")
    q(d, "create", "-q", "-f", "qcow2", "-o", "compression_type=zstd",
      "zstd.qcow2", "64M")
    q(d, "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on",
      "lazy.qcow2", "64M")
    q(d, "create", "-q", "-f", "qcow2", "-o", "refcount_bits=1", "rc1.qcow2",
      "64M")
    q(d, "create", "-q", "-f", "qcow2", "-o",
      "cluster_size=4k,refcount_bits=64", "rc64.qcow2", "1G")
    q(d, "create", "-q", "-f", "qcow2", "-o", "cluster_size=512",
      "c512.qcow2", "64M")
    q(d, "create", "-q", "-f", "qcow2", "-o", "cluster_size=2M", "c2m.qcow2",
      "64M")
    q(d, "create", "-q", "-f", "qcow2", "-o",
      "cluster_size=16k,extended_l2=on,lazy_refcounts=on,"
      "compression_type=zstd,refcount_bits=8", "combo.qcow2", "10G")
    q(d, "create", "-q", "-f", "qcow2", "-o", "preallocation=metadata",
      "prealloc.qcow2", "8M")
    for size in ("0", "1", "1000", "1536", "1000k", "1023k", "1.5M",
                 "1000M", "1023M", "1.25G", "1000G", "2T"):
        q(d, "create", "-q", "-f", "qcow2", "sz_%s.qcow2" % size, size)


def make_data(d):
    """Images with guest data written by qemu-io."""
    q(d, "create", "-q", "-f", "qcow2", "data.qcow2", "64M")
    qemu_io("-f", "qcow2", "-c", "write -P 0xab 0 1M", "-c",
            "write -P 0xcd 10M 64k", "-c", "write -z 20M 1M", "data.qcow2",
            cwd=d, check=True)
    q(d, "create", "-q", "-f", "qcow2", "-o", "compression_type=zstd",
      "compressed.qcow2", "64M")
    qemu_io("-f", "qcow2", "-c", "write -c -P 0x11 0 128k", "compressed.qcow2",
            cwd=d, check=True)
    q(d, "create", "-q", "-f", "qcow2", "-o", "compat=0.10", "v2data.qcow2",
      "64M")
    qemu_io("-f", "qcow2", "-c", "write -P 0x22 1M 2M", "v2data.qcow2",
            cwd=d, check=True)


def make_backing(d, absdir):
    """Chains: relative, absolute, raw, in a subdirectory, broken."""
    q(d, "create", "-q", "-f", "qcow2", "base.qcow2", "64M")
    qemu_io("-f", "qcow2", "-c", "write -P 0x11 0 1M", "base.qcow2", cwd=d,
            check=True)
    q(d, "create", "-q", "-f", "raw", "base.raw", "32M")
    q(d, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
      "ovq.qcow2")
    q(d, "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw",
      "ovr.qcow2")
    q(d, "create", "-q", "-f", "qcow2", "-b", "ovq.qcow2", "-F", "qcow2",
      "top.qcow2", "128M")
    q(d, "create", "-q", "-f", "qcow2", "-b", os.path.join(absdir, "abs.qcow2"),
      "-F", "qcow2", "ovabs.qcow2")
    q(d, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "raw",
      "asraw.qcow2")
    q(d, "create", "-q", "-f", "qcow2", "-o", "compat=0.10", "-b",
      "base.qcow2", "-F", "qcow2", "v2ov.qcow2")
    os.mkdir(os.path.join(d, "sub"))
    q(d, "create", "-q", "-f", "qcow2", "sub/b.qcow2", "64M")
    q(d, "create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2",
      "sub/o.qcow2")
    q(d, "create", "-q", "-f", "qcow2", "-b", "sub/o.qcow2", "-F", "qcow2",
      "top2.qcow2")
    q(d, "create", "-q", "-f", "qcow2", "-u", "-b", "gone.qcow2", "-F",
      "qcow2", "ovgone.qcow2", "64M")
    # No backing format: rename the header extension so qemu ignores it.
    q(d, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
      "nbf.qcow2")
    data = open(os.path.join(d, "nbf.qcow2"), "rb").read(65536)
    patch(os.path.join(d, "nbf.qcow2"), data.index(bytes.fromhex("e2792aca")),
          bytes.fromhex("12345678"))
    # The backing file name past the first 4 KiB of cluster 0, behind an
    # unknown 6000-byte header extension: qimg reads the rest of the
    # cluster only when the first 4 KiB do not hold the header.
    q(d, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
      "bigext.qcow2")
    spread_header(os.path.join(d, "bigext.qcow2"), 6000)
    # A loop: la -> lb -> la.
    q(d, "create", "-q", "-f", "qcow2", "-u", "-b", "lb.qcow2", "-F", "qcow2",
      "la.qcow2", "1M")
    q(d, "create", "-q", "-f", "qcow2", "-u", "-b", "la.qcow2", "-F", "qcow2",
      "lb.qcow2", "1M")


def make_snapshots(d):
    q(d, "create", "-q", "-f", "qcow2", "snap.qcow2", "64M")
    qemu_io("-f", "qcow2", "-c", "write -P 0x11 0 1M", "snap.qcow2", cwd=d,
            check=True)
    q(d, "snapshot", "-c", "s1", "snap.qcow2")
    q(d, "snapshot", "-c", N300, "snap.qcow2")
    q(d, "snapshot", "-c", "with space", "snap.qcow2")
    q(d, "create", "-q", "-f", "qcow2", "-o", "compat=0.10", "snapv2.qcow2",
      "64M")
    q(d, "snapshot", "-c", "v2a", "snapv2.qcow2")
    q(d, "snapshot", "-c", "v2b", "snapv2.qcow2")
    patch_snapshot(os.path.join(d, "snapv2.qcow2"), 0, date_sec=1700000000,
                   vm_state_size=1536, vm_clock_nsec=5000000000)
    # Every column at its edges: VM SIZE units, VM CLOCK overflowing its
    # column, ICOUNT unknown / wide, dates at the ends of 32 bits.
    q(d, "create", "-q", "-f", "qcow2", "vm.qcow2", "64M")
    names = ["a", "bb", "c" * 17, "d" * 18, "e", "f", "g", "h", "i", "j", "k",
             "l", "m"]
    for n in names:
        q(d, "snapshot", "-c", n, "vm.qcow2")
    path = os.path.join(d, "vm.qcow2")
    edits = [
        dict(vm_state_size_large=1, vm_clock_nsec=1),
        dict(vm_state_size_large=1023, vm_clock_nsec=999999999),
        dict(vm_state_size_large=1024, vm_clock_nsec=10 ** 9),
        dict(vm_state_size_large=1536, vm_clock_nsec=61500000000),
        dict(vm_state_size_large=1048576, vm_clock_nsec=3600 * 10 ** 9),
        dict(vm_state_size_large=10 ** 9, vm_clock_nsec=86399999000000),
        dict(vm_state_size_large=2 ** 32 - 1, vm_clock_nsec=86400 * 10 ** 9),
        dict(vm_state_size=7, vm_state_size_large=5 * 2 ** 30,
             vm_clock_nsec=360000 * 10 ** 9),
        dict(vm_state_size_large=1048575, vm_clock_nsec=3600000 * 10 ** 9),
        dict(vm_state_size_large=1023488, vm_clock_nsec=123456789),
        dict(vm_state_size_large=12345678, date_sec=2 ** 32 - 1,
             icount=12345),
        dict(vm_state_size_large=100, icount=2 ** 64 - 1),
        dict(vm_state_size_large=10240, icount=99999999999, date_sec=0),
    ]
    for i, e in enumerate(edits):
        e.setdefault("date_sec", 1700000000)
        patch_snapshot(path, i, **e)


def make_flags(d):
    for name, bits in (("corrupt", 2), ("dirty", 1), ("both", 3)):
        q(d, "create", "-q", "-f", "qcow2", name + ".qcow2", "64M")
        set_incompat_bits(os.path.join(d, name + ".qcow2"), bits)
    q(d, "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on",
      "dirtylazy.qcow2", "64M")
    set_incompat_bits(os.path.join(d, "dirtylazy.qcow2"), 1)
    q(d, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
      "dirtyov.qcow2")
    set_incompat_bits(os.path.join(d, "dirtyov.qcow2"), 1)
    q(d, "create", "-q", "-f", "qcow2", "unkc.qcow2", "64M")
    patch(os.path.join(d, "unkc.qcow2"), 87, b"\x04")
    for name, off, data in (("unk", 79, b"\x20"), ("unk63", 72, b"\x80"),
                            ("ver4", 4, b"\0\0\0\4"),
                            ("cb", 20, b"\0\0\0\x08")):
        q(d, "create", "-q", "-f", "qcow2", name + ".qcow2", "64M")
        patch(os.path.join(d, name + ".qcow2"), off, data)
    q(d, "create", "-q", "-f", "qcow2", "ver1.qcow2", "64M")
    patch(os.path.join(d, "ver1.qcow2"), 4, b"\0\0\0\1")
    v3 = open(os.path.join(d, "v3.qcow2"), "rb").read()
    open(os.path.join(d, "trunc50.qcow2"), "wb").write(v3[:50])
    open(os.path.join(d, "trunc.qcow2"), "wb").write(v3[:512])


def make_bitmaps(d):
    q(d, "create", "-q", "-f", "qcow2", "bm.qcow2", "64M")
    q(d, "bitmap", "--add", "bm.qcow2", "b1")
    q(d, "bitmap", "--add", "-g", "512k", "bm.qcow2", "b2")
    q(d, "create", "-q", "-f", "qcow2", "bmoff.qcow2", "64M")
    q(d, "bitmap", "--add", "bmoff.qcow2", "on")
    q(d, "bitmap", "--add", "--disable", "bmoff.qcow2", "off")


def make_raw(d):
    q(d, "create", "-q", "-f", "raw", "r.raw", "64M")
    with open(os.path.join(d, "rd.raw"), "wb") as f:
        f.write(os.urandom(1 << 20))
    with open(os.path.join(d, "garbage.bin"), "w") as f:
        f.write("this is not an image at all, just some garbage text\n")
    open(os.path.join(d, "empty.bin"), "wb").close()
    for size in (999, 1025, 1047552, 1048064, 1023488, 1048063488):
        with open(os.path.join(d, "e%d.bin" % size), "wb") as f:
            f.truncate(size)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("info"))
    absdir = str(tmp_path_factory.mktemp("info-abs"))
    q(absdir, "create", "-q", "-f", "qcow2", "abs.qcow2", "48M")
    make_plain(d)
    make_data(d)
    make_backing(d, absdir)
    make_snapshots(d)
    make_flags(d)
    make_bitmaps(d)
    make_raw(d)
    return d


MODES = {
    "human": [],
    "json": ["--output=json"],
    "chain": ["--backing-chain"],
    "chain-json": ["--backing-chain", "--output=json"],
}

IMAGES = [
    "v3.qcow2", "v2.qcow2", "el2.qcow2", "zstd.qcow2", "lazy.qcow2",
    "rc1.qcow2", "rc64.qcow2", "c512.qcow2", "c2m.qcow2", "combo.qcow2",
    "prealloc.qcow2",
    "data.qcow2", "compressed.qcow2", "v2data.qcow2",
    "base.qcow2", "ovq.qcow2", "ovr.qcow2", "top.qcow2", "ovabs.qcow2",
    "asraw.qcow2", "v2ov.qcow2", "sub/o.qcow2", "top2.qcow2", "nbf.qcow2",
    "bigext.qcow2",
    "snap.qcow2", "snapv2.qcow2", "vm.qcow2",
    "corrupt.qcow2", "dirty.qcow2", "both.qcow2", "dirtylazy.qcow2",
    "dirtyov.qcow2", "unkc.qcow2",
    "bm.qcow2",
    "r.raw", "rd.raw", "garbage.bin", "empty.bin", "base.raw",
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("image", IMAGES)
def test_image(images, image, mode):
    r = compare(images, MODES[mode] + [image])
    assert r.rc == 0


SIZE_IMAGES = ["sz_0.qcow2", "sz_1.qcow2", "sz_1000.qcow2", "sz_1536.qcow2",
               "sz_1000k.qcow2", "sz_1023k.qcow2", "sz_1.5M.qcow2",
               "sz_1000M.qcow2", "sz_1023M.qcow2", "sz_1.25G.qcow2",
               "sz_1000G.qcow2", "sz_2T.qcow2",
               "e999.bin", "e1025.bin", "e1047552.bin", "e1048064.bin",
               "e1023488.bin", "e1048063488.bin"]


@pytest.mark.parametrize("mode", ["human", "json"])
@pytest.mark.parametrize("image", SIZE_IMAGES)
def test_sizes(images, image, mode):
    r = compare(images, MODES[mode] + [image])
    assert r.rc == 0


@pytest.mark.parametrize("mode", ["json", "chain-json"])
def test_bitmap_without_flags_json(images, mode):
    compare(images, MODES[mode] + ["bmoff.qcow2"])


@pytest.mark.parametrize("mode", ["human", "chain"])
def test_bitmap_without_flags_human(images, mode):
    compare(images, MODES[mode] + ["bmoff.qcow2"])


@pytest.mark.parametrize("tz", ["UTC", "America/New_York", "Asia/Kolkata"])
def test_snapshot_dates_follow_tz(images, tz):
    for image in ("snap.qcow2", "vm.qcow2"):
        compare(images, [image], env={"TZ": tz})


OPTIONS = [
    ["-f", "qcow2", "v3.qcow2"],
    ["-f", "raw", "v3.qcow2"],
    ["--output=json", "-f", "raw", "v3.qcow2"],
    ["-f", "raw", "r.raw"],
    ["--format=qcow2", "v3.qcow2"],
    ["--output", "json", "v3.qcow2"],
    ["--output=human", "v3.qcow2"],
    ["-U", "data.qcow2"],
    ["--force-share", "--output=json", "data.qcow2"],
    ["--out=json", "--back", "top.qcow2"],
    ["v3.qcow2", "--output=json"],
    ["-f", "qcow2", "--backing-chain", "ovr.qcow2"],
    ["-f", "raw", "--backing-chain", "--output=json", "ovq.qcow2"],
    # plain info does not open the backing file
    ["ovgone.qcow2"],
    ["--output=json", "ovgone.qcow2"],
    ["la.qcow2"],
]


@pytest.mark.parametrize("args", OPTIONS, ids=lambda a: " ".join(a))
def test_options(images, args):
    r = compare(images, args)
    assert r.rc == 0


ERRORS = [
    [],
    ["v3.qcow2", "extra"],
    ["--output=foo"],
    ["--output=foo", "v3.qcow2"],
    ["--output=JSON", "v3.qcow2"],
    ["--output=", "v3.qcow2"],
    ["--output"],
    ["v3.qcow2", "--output"],
    ["-q", "v3.qcow2"],
    ["-Z", "v3.qcow2"],
    ["--foo", "v3.qcow2"],
    ["-f"],
    ["v3.qcow2", "-f"],
    ["--f", "v3.qcow2"],
    ["nonexist.qcow2"],
    ["--output=json", "nonexist.qcow2"],
    ["-f", "raw", "nonexist"],
    ["-f", "foo", "nonexist"],
    ["-f", "foo", "v3.qcow2"],
    ["-f", "qcow2", "r.raw"],
    ["-f", "qcow2", "empty.bin"],
    ["unk.qcow2"],
    ["unk63.qcow2"],
    ["ver4.qcow2"],
    ["cb.qcow2"],
    ["trunc50.qcow2"],
    ["-f", "qcow2", "trunc50.qcow2"],
    ["-f", "qcow2", "ver1.qcow2"],
    ["--backing-chain", "ovgone.qcow2"],
    ["--backing-chain", "--output=json", "ovgone.qcow2"],
    ["--backing-chain", "la.qcow2"],
    ["--backing-chain", "--output=json", "lb.qcow2"],
]


@pytest.mark.parametrize("args", ERRORS, ids=lambda a: " ".join(a))
def test_errors(images, args):
    r = compare(images, args)
    assert r.rc == 1
    assert r.out == ""


def test_help(images):
    r = run([QIMG, "info", "-h"], cwd=images)
    assert r.rc == 0 and r.out.startswith("qimg version") and r.err == ""


# Where the library does not yet behave like QEMU (lib-requests.md).
# strict: these start failing once the library is fixed.
def _xf(args, why):
    return pytest.param(args, marks=pytest.mark.xfail(strict=True,
                                                      reason=why))


LIB_CASES = [
    ["sub"],                 # a directory: "'file' driver requires ..."
    ["-f", "raw", "sub"],
    # version 1 is probed as QEMU's old qcow format (not supported)
    _xf(["ver1.qcow2"], "qimg has no qcow (v1) driver"),
    # Tables past the end of the file read as zeros, in both tools.
    ["trunc.qcow2"],
    ["--output=json", "trunc.qcow2"],
]


@pytest.mark.parametrize("args", LIB_CASES,
                         ids=lambda a: " ".join(a) if isinstance(a, list)
                         else None)
def test_lib_cases(images, args):
    compare(images, args)
