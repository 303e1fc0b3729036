"""Kinds of damage for test_damage_matrix.py.

Each kind is a small function that takes the bytes of a pristine image
(made by qemu-img/qemu-io at test time, see BASE_STEPS) and its parsed
Layout, and returns the damaged bytes. Offsets are found through the
header and tables (docs/qcow2-format.md), never hard-coded, so the same
kind works on the v2 (compat=0.10) and v3 (compat=1.1) base and on both
geometries.

The pristine base, per version and geometry (c = cluster size, S = guest
bytes one L2 table maps, RL = length of a test read):

  guest 0      2 clusters of 0x11   shared by s1, s2 and the active disk
  guest 4c     1 compressed cluster of 0x12
  guest S      1 cluster of 0x13    (second L2 table)
  snapshot s1
  guest c      0x21                 (active L2 table 0 is now a copy)
  snapshot s2
  guest S+c    0x31                 (active L2 table 1 is now a copy;
                                     its data cluster has refcount 1)

Geometry "64k": 64 KiB clusters, 1 GiB virtual (two L2 tables need
S = 512 MiB each); "512": 512-byte clusters, 64 MiB virtual (the L1
table spans 32 clusters).

Not a test module (pytest collects only test_*.py); nothing here runs a
tool.
"""
import struct
from dataclasses import dataclass, field

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

COPIED = 1 << 63
COMPRESSED = 1 << 62
OFF_MASK = 0x00fffffffffffe00
FAR = 16 * MiB  # past the end of every base file (about 1 MiB / 90 KiB)

GEOMETRIES = {
    "64k": (64 * KiB, 1 * GiB),
    "512": (512, 64 * MiB),
}


def base_steps(compat, geom):
    """Commands (argv lists, run in the base's directory on "base.qcow2")
    that make the pristine base."""
    c, size = GEOMETRIES[geom]
    s = c * (c // 8)
    img = "base.qcow2"
    return [
        ["qemu-img", "create", "-q", "-f", "qcow2", "-o",
         "compat=%s,cluster_size=%d" % (compat, c), img, str(size)],
        ["qemu-io", "-f", "qcow2",
         "-c", "write -q -P 0x11 0 %d" % (2 * c),
         "-c", "write -q -c -P 0x12 %d %d" % (4 * c, c),
         "-c", "write -q -P 0x13 %d %d" % (s, c), img],
        ["qemu-img", "snapshot", "-c", "s1", img],
        ["qemu-io", "-f", "qcow2", "-c", "write -q -P 0x21 %d %d" % (c, c),
         img],
        ["qemu-img", "snapshot", "-c", "s2", img],
        ["qemu-io", "-f", "qcow2",
         "-c", "write -q -P 0x31 %d %d" % (s + c, c), img],
    ]


# ---- reading the pristine layout --------------------------------------------


def u64(d, off):
    return struct.unpack_from(">Q", d, off)[0]


def u32(d, off):
    return struct.unpack_from(">I", d, off)[0]


def u16(d, off):
    return struct.unpack_from(">H", d, off)[0]


@dataclass
class Snap:
    off: int            # entry's offset in the file
    l1_off: int
    l1_size: int
    id: bytes
    name: bytes
    raw: bytes          # the entry's 40 fixed bytes
    extra: bytes
    end: int            # offset after the entry and its padding


@dataclass
class Layout:
    """Where the structures of one pristine image are (header fields by
    their qcow2-format.md names)."""
    version: int
    cs: int
    size: int
    l1_off: int
    l1_size: int
    rt_off: int
    rt_clusters: int
    nb_snaps: int
    snap_off: int
    hlen: int
    file_size: int
    l1: list = field(default_factory=list)
    snaps: list = field(default_factory=list)

    @property
    def span(self):
        return self.cs * (self.cs // 8)

    @property
    def rl(self):
        """Length of a test read or write: two clusters with 512-byte
        clusters, 4 KiB within one cluster with 64 KiB clusters."""
        return min(4096, 2 * self.cs)

    def l2(self, i):
        """Host offset of the active L2 table of L1 entry i."""
        return self.l1[i] & OFF_MASK

    def l2e(self, i, j):
        """File offset of entry j of the active L2 table i."""
        return self.l2(i) + 8 * j

    def data(self, i, j):
        return self.l2_entry(i, j) & OFF_MASK

    def l2_entry(self, i, j):
        return u64(self.pristine, self.l2e(i, j))

    def compressed_off(self):
        e = self.l2_entry(0, 4)
        shift = 62 - (self.cs.bit_length() - 1 - 8)
        return e & ((1 << shift) - 1)

    @property
    def rb0(self):
        return u64(self.pristine, self.rt_off) & ~0x1ff

    def rc_pos(self, host_off):
        """File offset of the 16-bit refcount of a host cluster (the bases
        have refcount_order 4 and one refcount block)."""
        return self.rb0 + 2 * (host_off // self.cs)

    def rc(self, host_off):
        return u16(self.pristine, self.rc_pos(host_off))

    @property
    def snap_end(self):
        return self.snaps[-1].end


def parse(d):
    (magic, version, _bfo, _bfs, cbits, size, _crypt, l1_size, l1_off,
     rt_off, rt_clusters, nb_snaps, snap_off) = struct.unpack_from(
         ">IIQIIQIIQQIIQ", d, 0)
    assert magic == 0x514649fb
    hlen = u32(d, 100) if version >= 3 else 72
    lay = Layout(version, 1 << cbits, size, l1_off, l1_size, rt_off,
                 rt_clusters, nb_snaps, snap_off, hlen, len(d))
    lay.pristine = bytes(d)
    lay.l1 = [u64(d, l1_off + 8 * i) for i in range(l1_size)]
    p = snap_off
    for _ in range(nb_snaps):
        raw = bytes(d[p:p + 40])
        l1o, l1s, ids, ns, _ds, _dn, _vc, _vs, eds = struct.unpack(
            ">QIHHIIQII", raw)
        extra = bytes(d[p + 40:p + 40 + eds])
        q = p + 40 + eds
        sid, name = bytes(d[q:q + ids]), bytes(d[q + ids:q + ids + ns])
        end = (q + ids + ns + 7) & ~7
        lay.snaps.append(Snap(p, l1o, l1s, sid, name, raw, extra, end))
        p = end
    return lay


# ---- editing ----------------------------------------------------------------


def put64(d, off, v):
    struct.pack_into(">Q", d, off, v & 0xffffffffffffffff)
    return d


def put32(d, off, v):
    struct.pack_into(">I", d, off, v & 0xffffffff)
    return d


def put16(d, off, v):
    struct.pack_into(">H", d, off, v & 0xffff)
    return d


def put8(d, off, v):
    d[off] = v & 0xff
    return d


def snap_table(lay, snaps):
    """Serialize snapshot entries (Snap objects, possibly edited)."""
    out = bytearray()
    for s in snaps:
        raw = bytearray(s.raw)
        struct.pack_into(">QIHH", raw, 0, s.l1_off, s.l1_size, len(s.id),
                         len(s.name))
        struct.pack_into(">I", raw, 36, len(s.extra))
        ent = bytes(raw) + s.extra + s.id + s.name
        out += ent + bytes(-len(ent) % 8)
    return bytes(out)


def rewrite_snaps(d, lay, snaps):
    """Replace the snapshot table in place (it must fit in the clusters
    the old one had); the header's count is left alone."""
    new = snap_table(lay, snaps)
    room = -(-(lay.snap_end - lay.snap_off) // lay.cs) * lay.cs
    assert len(new) <= room
    d[lay.snap_off:lay.snap_off + room] = new + bytes(room - len(new))
    return d


def replace_snap(lay, i, **kw):
    s = lay.snaps[i]
    vals = dict(off=s.off, l1_off=s.l1_off, l1_size=s.l1_size, id=s.id,
                name=s.name, raw=s.raw, extra=s.extra, end=s.end)
    vals.update(kw)
    out = list(lay.snaps)
    out[i] = Snap(**vals)
    return out


# ---- the kinds --------------------------------------------------------------


@dataclass
class Kind:
    name: str
    fn: object              # (bytearray, Layout) -> bytes
    versions: tuple         # "v2", "v3"
    geom: str
    dmg: object             # Layout -> guest offset of the damaged range
    ok: object              # Layout -> guest offset of an undamaged range
    doc: str


KINDS = {}

# Guest offsets (functions of the layout) of the base's interesting ranges.
G0 = lambda L: 0                        # data shared by s1, s2, active
GC = lambda L: L.cs                     # data shared by s2 and active
GCOMP = lambda L: 4 * L.cs              # compressed cluster
GS = lambda L: L.span                   # second L2 table, shared data
GSC = lambda L: L.span + L.cs           # second L2 table, refcount-1 data
GFREE = lambda L: 2 * L.cs              # unallocated, under L2 table 0


def kind(name, doc, versions=("v2", "v3"), geom="64k", dmg=G0, ok=GSC):
    def reg(fn):
        assert name not in KINDS, name
        KINDS[name] = Kind(name, fn, tuple(versions), geom, dmg, ok, doc)
        return fn
    return reg


def both_geoms(name, doc, **kw):
    """Register the kind on the 64k base and, as name@512, on the 512 one."""
    def reg(fn):
        kind(name, doc, **kw)(fn)
        kind(name + "@512", doc + " (512-byte clusters)", geom="512",
             **kw)(fn)
        return fn
    return reg


# -- truncation at every structure boundary ----------------------------------


def _trunc(name, where, doc, dmg, ok=GSC, geoms=("64k",)):
    for g in geoms:
        n = name if g == "64k" else name + "@" + g
        kind(n, doc, geom=g, dmg=dmg, ok=ok)(
            lambda d, L, where=where: bytes(d[:where(L)]))


_trunc("trunc_mid_header", lambda L: 60,
       "file ends inside the header fields (60 bytes)", G0)
_trunc("trunc_after_header", lambda L: L.cs,
       "file ends after cluster 0 (no refcount table, L1, ...)", G0)
_trunc("trunc_in_reftable", lambda L: L.rt_off + 4,
       "file ends inside refcount table entry 0", G0)
_trunc("trunc_at_refblock", lambda L: L.rb0,
       "file ends where the refcount block starts", G0)
_trunc("trunc_in_refblock", lambda L: L.rb0 + 20,
       "file ends inside the refcount block (refcounts of clusters >= 10 "
       "missing)", G0)
_trunc("trunc_at_l1", lambda L: L.l1_off,
       "file ends where the active L1 table starts", G0)
_trunc("trunc_in_l1", lambda L: L.l1_off + 12,
       "file ends inside active L1 entry 1", GS, ok=G0)
_trunc("trunc_l1_cluster", lambda L: L.l1_off + L.cs,
       "file ends after the first cluster of the 32-cluster L1 table",
       GFREE, ok=G0, geoms=("512",))
_trunc("trunc_at_l2_0", lambda L: L.l2(0),
       "file ends where active L2 table 0 starts", G0, ok=GS)
_trunc("trunc_at_l2_1", lambda L: L.l2(1),
       "file ends where active L2 table 1 starts", GS, ok=G0,
       geoms=("64k", "512"))
_trunc("trunc_in_l2_1", lambda L: L.l2(1) + 12,
       "file ends inside active L2 table 1, entry 1", GSC, ok=G0)
_trunc("trunc_at_data_c", lambda L: L.data(0, 1),
       "file ends where the data cluster of guest offset c starts", GC,
       ok=G0)
_trunc("trunc_mid_data_sc", lambda L: L.data(1, 1) + L.cs // 2,
       "file ends in the middle of the last data cluster (guest S+c)", GSC,
       ok=G0, geoms=("64k", "512"))
_trunc("trunc_at_compressed", lambda L: L.compressed_off() & ~(L.cs - 1),
       "file ends where the compressed cluster's host cluster starts",
       GCOMP, ok=G0)
_trunc("trunc_mid_compressed", lambda L: L.compressed_off() + 64,
       "file ends 64 bytes into the compressed stream", GCOMP, ok=G0)
_trunc("trunc_at_snap_l1_s1", lambda L: L.snaps[0].l1_off,
       "file ends where snapshot s1's L1 table starts", G0)
_trunc("trunc_at_snap_table", lambda L: L.snap_off,
       "file ends where the snapshot table starts", GSC, ok=G0)
_trunc("trunc_in_snap_table", lambda L: L.snaps[1].off + 20,
       "file ends inside snapshot table entry 1", GSC, ok=G0)
_trunc("trunc_last_byte", lambda L: L.file_size - 1,
       "the last byte of the file is missing", GSC, ok=G0)

# -- header fields: 0, misaligned, past the end, onto another structure -------

H_BFO, H_BFS, H_CBITS, H_SIZE, H_CRYPT, H_L1SIZE, H_L1OFF = (
    8, 16, 20, 24, 32, 36, 40)
H_RTOFF, H_RTCL, H_NBSNAP, H_SNAPOFF = 48, 56, 60, 64
H_INCOMPAT, H_COMPAT, H_AUTOCLEAR, H_RORDER, H_HLEN, H_CTYPE = (
    72, 80, 88, 96, 100, 104)


def _hdr(name, doc, at, put, value, versions=("v2", "v3"), dmg=G0, ok=GSC):
    kind(name, doc, versions=versions, dmg=dmg, ok=ok)(
        lambda d, L: put(d, at, value(L)))


_hdr("magic_bad", "magic 0x514649fc", 0, put32, lambda L: 0x514649fc)
_hdr("version_4", "version 4", 4, put32, lambda L: 4)
_hdr("version_3_on_v2", "a v2 image says version 3 (the extension end "
     "marker reads as feature bits, refcount_order 0, header_length 0)",
     4, put32, lambda L: 3, versions=("v2",))
_hdr("version_2_on_v3", "a v3 image says version 2 (its v3 fields read "
     "as header extensions)", 4, put32, lambda L: 2, versions=("v3",))
_hdr("cluster_bits_8", "cluster_bits 8", H_CBITS, put32, lambda L: 8)
_hdr("cluster_bits_22", "cluster_bits 22", H_CBITS, put32, lambda L: 22)
_hdr("cluster_bits_12", "cluster_bits 12 on a 64 KiB-cluster image "
     "(valid, but every table misread)", H_CBITS, put32, lambda L: 12)
_hdr("size_unaligned", "virtual size not a multiple of 512", H_SIZE, put64,
     lambda L: L.size + 100)
_hdr("size_beyond_l1", "virtual size needs more L1 entries than l1_size",
     H_SIZE, put64, lambda L: 4 * L.size)
_hdr("size_huge", "virtual size 2^62", H_SIZE, put64, lambda L: 1 << 62)
_hdr("size_zero", "virtual size 0 (data and L1 entries past the end)",
     H_SIZE, put64, lambda L: 0)
_hdr("crypt_aes", "crypt_method 1 (AES), no key", H_CRYPT, put32,
     lambda L: 1)
_hdr("crypt_luks", "crypt_method 2 (LUKS) without the LUKS header "
     "extension", H_CRYPT, put32, lambda L: 2)
_hdr("crypt_3", "crypt_method 3 (unknown)", H_CRYPT, put32, lambda L: 3)
_hdr("l1_size_zero", "l1_size 0", H_L1SIZE, put32, lambda L: 0)
_hdr("l1_size_one", "l1_size 1 (the disk needs 2)", H_L1SIZE, put32,
     lambda L: 1, dmg=GS, ok=G0)
_hdr("l1_size_over_limit", "l1_size 2^22 + 1 (a 32 MiB + 8 table)",
     H_L1SIZE, put32, lambda L: (1 << 22) + 1)
_hdr("l1_size_plus_one", "l1_size 3 for a disk that needs 2 (the extra "
     "entry reads 0)", H_L1SIZE, put32, lambda L: L.l1_size + 1)
_hdr("l1_off_zero", "l1_table_offset 0 (onto the header)", H_L1OFF,
     put64, lambda L: 0)
_hdr("l1_off_misaligned", "l1_table_offset + 8", H_L1OFF, put64,
     lambda L: L.l1_off + 8)
_hdr("l1_off_past_eof", "l1_table_offset 16 MiB (past the end)", H_L1OFF,
     put64, lambda L: FAR)
_hdr("l1_off_on_reftable", "l1_table_offset = refcount table", H_L1OFF,
     put64, lambda L: L.rt_off)
_hdr("l1_off_on_snap_table", "l1_table_offset = snapshot table",
     H_L1OFF, put64, lambda L: L.snap_off)
_hdr("l1_off_on_snap_l1", "l1_table_offset = snapshot s1's L1 table "
     "(the active disk becomes s1's, sharing its table)", H_L1OFF, put64,
     lambda L: L.snaps[0].l1_off, dmg=GC)
_hdr("rt_off_zero", "refcount_table_offset 0 (onto the header)", H_RTOFF,
     put64, lambda L: 0)
_hdr("rt_off_misaligned", "refcount_table_offset + 8", H_RTOFF, put64,
     lambda L: L.rt_off + 8)
_hdr("rt_off_past_eof", "refcount_table_offset 16 MiB (past the end)",
     H_RTOFF, put64, lambda L: FAR)
_hdr("rt_off_on_l1", "refcount_table_offset = active L1 table", H_RTOFF,
     put64, lambda L: L.l1_off)
_hdr("rt_clusters_zero", "refcount_table_clusters 0", H_RTCL, put32,
     lambda L: 0)
_hdr("rt_clusters_past_eof", "refcount_table_clusters 100 (the table "
     "runs over the L1 table and past the end)", H_RTCL, put32,
     lambda L: 100)
_hdr("rt_clusters_over_limit", "refcount_table_clusters: an 8 MiB + 1 "
     "cluster table", H_RTCL, put32, lambda L: 8 * MiB // L.cs + 1)
_hdr("nb_snaps_zero", "nb_snapshots 0, snapshots_offset still set",
     H_NBSNAP, put32, lambda L: 0)
_hdr("nb_snaps_plus_one", "nb_snapshots 3 for a table of 2 (entry 3 "
     "reads zeros)", H_NBSNAP, put32, lambda L: L.nb_snaps + 1)
_hdr("nb_snaps_over_limit", "nb_snapshots 65537", H_NBSNAP, put32,
     lambda L: 65537)
_hdr("nb_snaps_past_eof", "nb_snapshots 20000 (the table would run past "
     "the end)", H_NBSNAP, put32, lambda L: 20000)
_hdr("snap_off_zero", "snapshots_offset 0 with 2 snapshots", H_SNAPOFF,
     put64, lambda L: 0)
_hdr("snap_off_misaligned", "snapshots_offset + 8", H_SNAPOFF, put64,
     lambda L: L.snap_off + 8)
_hdr("snap_off_past_eof", "snapshots_offset 16 MiB (past the end)",
     H_SNAPOFF, put64, lambda L: FAR)
_hdr("snap_off_on_l1", "snapshots_offset = active L1 table", H_SNAPOFF,
     put64, lambda L: L.l1_off)


@kind("backing_off_past_eof", "backing_file_offset 16 MiB, size 10")
def _(d, L):
    return put32(put64(d, H_BFO, FAR), H_BFS, 10)


@kind("backing_name_1024", "a 1024-byte backing file name (max 1023)")
def _(d, L):
    d[0x200:0x200 + 1024] = b"b" * 1024
    return put32(put64(d, H_BFO, 0x200), H_BFS, 1024)


@kind("backing_missing_file", "backing file name 'nonexistent.qcow2' "
      "(no such file)")
def _(d, L):
    name = b"nonexistent.qcow2"
    d[0x800:0x800 + len(name)] = name
    return put32(put64(d, H_BFO, 0x800), H_BFS, len(name))


V3 = ("v3",)
_hdr("header_length_108", "header_length 108 (not a multiple of 8)",
     H_HLEN, put32, lambda L: 108, versions=V3)


@kind("header_length_108_bare", "header_length 108 with no header "
      "extensions (QEMU reads an end marker at 108)", versions=V3)
def _(d, L):
    d[104:L.cs] = bytes(L.cs - 104)
    return put32(d, H_HLEN, 108)


_hdr("header_length_96", "header_length 96 (< 104)", H_HLEN, put32,
     lambda L: 96, versions=V3)
_hdr("header_length_120", "header_length 120 (8 unknown header bytes; "
     "the feature table then starts 8 bytes late)", H_HLEN, put32,
     lambda L: 120, versions=V3)
_hdr("header_length_past_cluster", "header_length cluster size + 8",
     H_HLEN, put32, lambda L: L.cs + 8, versions=V3)
_hdr("refcount_order_7", "refcount_order 7", H_RORDER, put32,
     lambda L: 7, versions=V3)
_hdr("refcount_order_3", "refcount_order 3 (8-bit refcounts: every "
     "refcount misread)", H_RORDER, put32, lambda L: 3, versions=V3)
_hdr("incompat_unknown_bit", "incompatible bit 8", H_INCOMPAT, put64,
     lambda L: 1 << 8, versions=V3)
_hdr("incompat_dirty", "incompatible bit 0 (dirty) without lazy "
     "refcounts", H_INCOMPAT, put64, lambda L: 1, versions=V3)


@kind("incompat_dirty_stale", "incompatible bit 0 (dirty) with compatible "
      "bit 0 (lazy refcounts) and the refcount of the refcount-1 data "
      "cluster 0, as a crash in lazy mode leaves it", versions=V3, dmg=GSC,
      ok=G0)
def _(d, L):
    put64(d, H_INCOMPAT, 1)
    put64(d, H_COMPAT, 1)
    return put16(d, L.rc_pos(L.data(1, 1)), 0)


_hdr("incompat_corrupt", "incompatible bit 1 (corrupt)", H_INCOMPAT,
     put64, lambda L: 2, versions=V3)
_hdr("incompat_data_file", "incompatible bit 2 (external data file), no "
     "data file name", H_INCOMPAT, put64, lambda L: 4, versions=V3)
_hdr("incompat_compression_no_byte", "incompatible bit 3 (compression "
     "type) with compression_type 0", H_INCOMPAT, put64, lambda L: 8,
     versions=V3)
_hdr("incompat_extended_l2", "incompatible bit 4 (extended L2) on an "
     "image with 8-byte L2 entries", H_INCOMPAT, put64, lambda L: 16,
     versions=V3)
_hdr("compat_unknown_bit", "compatible bit 5", H_COMPAT, put64,
     lambda L: 1 << 5, versions=V3)
_hdr("autoclear_unknown_bit", "autoclear bit 5", H_AUTOCLEAR, put64,
     lambda L: 1 << 5, versions=V3)
_hdr("autoclear_bitmaps_no_ext", "autoclear bit 0 (bitmaps) without a "
     "bitmaps extension", H_AUTOCLEAR, put64, lambda L: 1, versions=V3)
_hdr("compression_type_no_bit", "compression_type 1 (zstd) without "
     "incompatible bit 3", H_CTYPE, put8, lambda L: 1, versions=V3)


@kind("ext_too_large", "the first header extension's length runs past "
      "cluster 0")
def _(d, L):
    at = L.hlen
    if u32(d, at) == 0:     # v2: no extensions, write one of unknown type
        put32(d, at, 0x12345678)
    return put32(d, at + 4, L.cs)


@kind("ext_backing_format_16", "a backing format extension of 16 bytes "
      "(QEMU allows < 16) in front of the others")
def _(d, L):
    at = L.hlen
    rest = bytes(d[at:L.cs - 24])
    d[at:L.cs] = struct.pack(">II", 0xE2792ACA, 16) + b"q" * 16 + rest
    return d


# -- active L1 entries --------------------------------------------------------


def _l1e(name, doc, i, value, dmg=G0, ok=GS, geoms=("64k",)):
    for g in geoms:
        n = name if g == "64k" else name + "@" + g
        kind(n, doc, geom=g, dmg=dmg, ok=ok)(
            lambda d, L, i=i, value=value: put64(
                d, L.l1_off + 8 * i, value(L)))


_l1e("l1e_zero", "active L1 entry 0 = 0 (its L2 table leaks)", 0,
     lambda L: 0)
_l1e("l1e_misaligned", "active L1 entry 1 + 512 (COPIED kept)", 1,
     lambda L: L.l1[1] + 512, dmg=GS, ok=G0)
_l1e("l1e_past_eof", "active L1 entry 1 16 MiB (past the end), COPIED",
     1, lambda L: COPIED | FAR, dmg=GSC, ok=G0, geoms=("64k", "512"))
_l1e("l1e_on_header", "active L1 entry 1 = 0 with COPIED", 1,
     lambda L: COPIED, dmg=GSC, ok=G0)
_l1e("l1e_on_reftable", "active L1 entry 1 = refcount table, COPIED", 1,
     lambda L: COPIED | L.rt_off, dmg=GSC, ok=G0)
_l1e("l1e_on_refblock", "active L1 entry 1 = refcount block, COPIED", 1,
     lambda L: COPIED | L.rb0, dmg=GSC, ok=G0)
_l1e("l1e_on_l1", "active L1 entry 1 = the active L1 table, COPIED", 1,
     lambda L: COPIED | L.l1_off, dmg=GSC, ok=G0)
_l1e("l1e_on_snap_table", "active L1 entry 1 = snapshot table, COPIED",
     1, lambda L: COPIED | L.snap_off, dmg=GSC, ok=G0)
_l1e("l1e_dup", "active L1 entry 1 = entry 0 (one L2 table twice)", 1,
     lambda L: L.l1[0], dmg=GS, ok=G0)
_l1e("l1e_reserved_bits", "active L1 entry 1 with reserved bit 56 set",
     1, lambda L: L.l1[1] | (1 << 56), dmg=GSC, ok=G0)
_l1e("l1e_copied_on_shared", "active L1 entry 0 COPIED while its L2 "
     "table is shared with s2 (refcount 2)", 0,
     lambda L: L.l1[0] | COPIED, dmg=G0, ok=GS)
_l1e("l1e_copied_cleared", "active L1 entry 1 without COPIED (refcount "
     "1)", 1, lambda L: L.l1[1] & ~COPIED, dmg=GSC, ok=G0)

# -- active L2 entries (L2 table 1, entry 1: COPIED, refcount 1) --------------


def _l2e(name, doc, i, j, value, dmg=GSC, ok=G0, geoms=("64k",),
         versions=("v2", "v3")):
    for g in geoms:
        n = name if g == "64k" else name + "@" + g
        kind(n, doc, geom=g, dmg=dmg, ok=ok, versions=versions)(
            lambda d, L, i=i, j=j, value=value: put64(
                d, L.l2e(i, j), value(L)))


_l2e("l2e_zero", "data entry = 0 (its cluster leaks)", 1, 1, lambda L: 0)
_l2e("l2e_misaligned", "data entry + 512, COPIED", 1, 1,
     lambda L: L.l2_entry(1, 1) + 512)
_l2e("l2e_past_eof", "data entry 16 MiB (past the end), COPIED", 1, 1,
     lambda L: COPIED | FAR, geoms=("64k", "512"))
_l2e("l2e_on_header", "data entry = offset 0 with COPIED", 1, 1,
     lambda L: COPIED)
_l2e("l2e_on_l1", "data entry = active L1 table, COPIED", 1, 1,
     lambda L: COPIED | L.l1_off, geoms=("64k", "512"))
_l2e("l2e_on_reftable", "data entry = refcount table, COPIED", 1, 1,
     lambda L: COPIED | L.rt_off)
_l2e("l2e_on_refblock", "data entry = refcount block, COPIED", 1, 1,
     lambda L: COPIED | L.rb0)
_l2e("l2e_on_own_l2", "data entry = its own L2 table, COPIED", 1, 1,
     lambda L: COPIED | L.l2(1))
_l2e("l2e_on_snap_table", "data entry = snapshot table, COPIED", 1, 1,
     lambda L: COPIED | L.snap_off)
_l2e("l2e_dup", "data entry = the cluster of entry 0 (refcount 3, now 4 "
     "references), COPIED", 1, 1, lambda L: COPIED | L.data(1, 0))
_l2e("l2e_reserved_bits", "data entry with reserved bit 56 set", 1, 1,
     lambda L: L.l2_entry(1, 1) | (1 << 56))
_l2e("l2e_zero_flag_v2", "zero flag (bit 0) in a v2 image", 1, 1,
     lambda L: L.l2_entry(1, 1) | 1, versions=("v2",))
_l2e("l2e_copied_cleared", "data entry without COPIED (refcount 1)", 1, 1,
     lambda L: L.l2_entry(1, 1) & ~COPIED)
_l2e("l2e_copied_on_shared", "L2 table 1 entry 0 COPIED while its data "
     "is shared (refcount 3)", 1, 0, lambda L: L.l2_entry(1, 0) | COPIED,
     dmg=GS)


def _compressed(L, off, nsec_minus_1):
    shift = 62 - (L.cs.bit_length() - 1 - 8)
    return COMPRESSED | (nsec_minus_1 << shift) | off


def _comp_nsec(L):
    shift = 62 - (L.cs.bit_length() - 1 - 8)
    return (L.l2_entry(0, 4) >> shift) & ((1 << (L.cs.bit_length() - 9))
                                          - 1)


_l2e("l2e_compressed_past_eof", "compressed entry's stream at 16 MiB",
     0, 4, lambda L: _compressed(L, FAR + 100, _comp_nsec(L)), dmg=GCOMP)
_l2e("l2e_compressed_max_sectors", "compressed entry claims the most "
     "sectors it can (the stream runs past the end)", 0, 4,
     lambda L: _compressed(L, L.compressed_off(),
                           (1 << (L.cs.bit_length() - 9)) - 1),
     dmg=GCOMP)
_l2e("l2e_compressed_garbage", "compressed entry's stream = a plain "
     "data cluster (not deflate)", 0, 4,
     lambda L: _compressed(L, L.data(0, 0), _comp_nsec(L)), dmg=GCOMP)
_l2e("l2e_compressed_copied", "compressed entry with COPIED", 0, 4,
     lambda L: L.l2_entry(0, 4) | COPIED, dmg=GCOMP)

# -- refcount table entries ---------------------------------------------------


def _rte(name, doc, value):
    kind(name, doc, dmg=GSC, ok=G0)(
        lambda d, L, value=value: put64(d, L.rt_off, value(L)))


_rte("rte_zero", "refcount table entry 0 = 0 (every cluster refcount 0)",
     lambda L: 0)
_rte("rte_misaligned", "refcount table entry 0 + 512",
     lambda L: L.rb0 + 512)
_rte("rte_past_eof", "refcount table entry 0 16 MiB (past the end)",
     lambda L: FAR)
_rte("rte_on_header", "refcount table entry 0 = 0x200 (inside cluster 0: "
     "a misaligned block over the header)", lambda L: 0x200)
_rte("rte_on_l1", "refcount table entry 0 = active L1 table",
     lambda L: L.l1_off)
_rte("rte_reserved_bits", "refcount table entry 0 with reserved bit 0 "
     "set", lambda L: L.rb0 | 1)

# -- refcounts: too low, too high, zero for used clusters, saturated ----------


def _rc(name, doc, host, value, dmg=GSC, ok=G0, geoms=("64k",)):
    for g in geoms:
        n = name if g == "64k" else name + "@" + g
        kind(n, doc, geom=g, dmg=dmg, ok=ok)(
            lambda d, L, host=host, value=value: put16(
                d, L.rc_pos(host(L)), value(L)))


_rc("rc_data_zero", "refcount 0 for the refcount-1 data cluster (guest "
    "S+c)", lambda L: L.data(1, 1), lambda L: 0, geoms=("64k", "512"))
_rc("rc_shared_data_zero", "refcount 0 for the data cluster shared by "
    "s1, s2 and the active disk", lambda L: L.data(0, 0), lambda L: 0,
    dmg=G0, ok=GSC)
_rc("rc_data_low", "refcount 1 for the data cluster shared 3 times",
    lambda L: L.data(0, 0), lambda L: 1, dmg=G0, ok=GSC)
_rc("rc_data_high", "refcount 4 for the data cluster shared 3 times "
    "(a leak)", lambda L: L.data(0, 0), lambda L: 4, dmg=G0, ok=GSC)
_rc("rc_data_saturated", "refcount 0xffff for the data cluster shared 3 "
    "times", lambda L: L.data(0, 0), lambda L: 0xffff, dmg=G0, ok=GSC)
_rc("rc_copied_data_two", "refcount 2 for the refcount-1 data cluster "
    "whose entry has COPIED", lambda L: L.data(1, 1), lambda L: 2)
_rc("rc_l2_low", "refcount 1 for active L2 table 0 (shared with s2)",
    lambda L: L.l2(0), lambda L: 1, dmg=GC, ok=GSC)
_rc("rc_l2_zero", "refcount 0 for active L2 table 1", lambda L: L.l2(1),
    lambda L: 0)
_rc("rc_header_zero", "refcount 0 for cluster 0 (the header)",
    lambda L: 0, lambda L: 0)
_rc("rc_l1_zero", "refcount 0 for the active L1 table",
    lambda L: L.l1_off, lambda L: 0, geoms=("64k", "512"))
_rc("rc_reftable_zero", "refcount 0 for the refcount table",
    lambda L: L.rt_off, lambda L: 0)
_rc("rc_refblock_zero", "refcount 0 for the refcount block itself",
    lambda L: L.rb0, lambda L: 0)
_rc("rc_refblock_two", "refcount 2 for the refcount block",
    lambda L: L.rb0, lambda L: 2)
_rc("rc_snap_table_zero", "refcount 0 for the snapshot table",
    lambda L: L.snap_off, lambda L: 0)
_rc("rc_snap_l1_zero", "refcount 0 for snapshot s1's L1 table",
    lambda L: L.snaps[0].l1_off, lambda L: 0)
_rc("rc_free_past_eof", "refcount 1 for a cluster past the end of the "
    "file (a leak)", lambda L: L.file_size + 4 * L.cs, lambda L: 1)
_rc("rc_snap_l2_zero", "refcount 0 for s1's L2 table 0, which only s1 "
    "names (a new cluster must not go there)",
    lambda L: u64(L.pristine, L.snaps[0].l1_off) & OFF_MASK, lambda L: 0,
    dmg=GFREE, geoms=("64k", "512"))


@both_geoms("snap_l2_past_eof", "s1's last L1 entry names the cluster just "
            "past the end of the file (the file must not grow over it)",
            dmg=GFREE)
def _snap_l2_past_eof(d, L):
    eof = (L.file_size + L.cs - 1) // L.cs * L.cs
    return put64(d, L.snaps[0].l1_off + 8 * (L.snaps[0].l1_size - 1), eof)

# -- snapshot table ----------------------------------------------------------


def _snap(kname, doc, i, dmg=G0, ok=GSC, versions=("v2", "v3"),
          geoms=("64k",), **fields):
    """Snapshot entry i with some fields replaced (values: Layout -> v)."""
    def fn(d, L):
        return rewrite_snaps(d, L, replace_snap(
            L, i, **{k: v(L) for k, v in fields.items()}))
    for g in geoms:
        n = kname if g == "64k" else kname + "@" + g
        kind(n, doc, geom=g, dmg=dmg, ok=ok, versions=versions)(fn)


def _snap_raw(name, doc, at, put, value, i=0, dmg=G0, ok=GSC):
    """A field of snapshot entry i written as is (no re-layout)."""
    kind(name, doc, dmg=dmg, ok=ok)(
        lambda d, L: put(d, L.snaps[i].off + at, value(L)))


_snap("snap_l1_zero", "s1's l1_table_offset 0", 0, l1_off=lambda L: 0)
_snap("snap_l1_misaligned", "s1's l1_table_offset + 8", 0,
      l1_off=lambda L: L.snaps[0].l1_off + 8)
_snap("snap_l1_past_eof", "s1's l1_table_offset 16 MiB (past the end)", 0,
      l1_off=lambda L: FAR, geoms=("64k", "512"))
_snap("snap_l1_is_active", "s1's L1 table = the active L1 table", 0,
      l1_off=lambda L: L.l1_off)
_snap("snap_l1_size_zero", "s1's l1_size 0", 0, l1_size=lambda L: 0)
_snap("snap_l1_size_over_limit", "s1's l1_size 2^22 + 1 (over QEMU's "
      "32 MiB)", 0, l1_size=lambda L: (1 << 22) + 1)
_snap("snap_l1_size_past_eof", "s2's l1_size runs its table over the "
      "snapshot table and the last data cluster, 8 bytes past the end", 1,
      l1_size=lambda L: (L.file_size - L.snaps[1].l1_off) // 8 + 1)
_snap_raw("snap_id_size_huge", "s1's id_str_size 0xffff (the table runs "
          "past its cluster and the end of the file)", 12, put16,
          lambda L: 0xffff)
_snap_raw("snap_name_size_huge", "s1's name_size 0xffff", 14, put16,
          lambda L: 0xffff)
_snap_raw("snap_id_size_huge_last", "s2's (the last entry's) id_str_size "
          "0xffff (its ID runs over the next cluster)", 12, put16,
          lambda L: 0xffff, i=1)
_snap_raw("snap_name_size_huge_last", "s2's name_size 0xffff", 14, put16,
          lambda L: 0xffff, i=1)
_snap_raw("snap_extra_size_huge", "s1's extra_data_size 0x10000 (> 1024)",
          36, put32, lambda L: 0x10000)
_snap("snap_id_empty", "s1's ID is empty", 0, id=lambda L: b"")
_snap("snap_extra_short", "s1's extra data 8 bytes (no disk_size; v3 "
      "needs 16)", 0, extra=lambda L: L.snaps[0].extra[:8])
_snap("snap_extra_long", "s1's extra data 1032 bytes (> 1024)", 0,
      extra=lambda L: L.snaps[0].extra + bytes(1008))
_snap("snap_dup_id", "s2's ID = s1's ID ('1')", 1, id=lambda L: b"1")
_snap("snap_dup_name", "s2's name = 's1' (names need not be unique)", 1,
      name=lambda L: b"s1")
_snap("snap_disk_size_huge", "s1's disk_size 2^62", 0,
      extra=lambda L: L.snaps[0].extra[:8] + struct.pack(">Q", 1 << 62)
      + L.snaps[0].extra[16:])
_snap("snap_disk_size_half", "s1's disk_size = half the disk (applying "
      "it shrinks the disk)", 0,
      extra=lambda L: L.snaps[0].extra[:8] + struct.pack(">Q", L.size // 2)
      + L.snaps[0].extra[16:])
_snap_raw("snap_vm_state_huge", "s1's vm_state_size 0xffffffff (VM state "
          "past the end)", 32, put32, lambda L: 0xffffffff)


@kind("snap_l1e_past_eof", "s1's L1 entry 0 = 16 MiB (past the end)")
def _(d, L):
    return put64(d, L.snaps[0].l1_off, FAR)


@kind("snap_l1e_on_active_l1", "s1's L1 entry 0 = the active L1 table "
      "(deleting s1 would free it)")
def _(d, L):
    return put64(d, L.snaps[0].l1_off, L.l1_off)


@kind("snap_l1e_on_refblock", "s2's L1 entry 1 = the refcount block")
def _(d, L):
    return put64(d, L.snaps[1].l1_off + 8, L.rb0)


def damage(name, pristine):
    """The damaged bytes of kind `name` applied to a pristine image."""
    d = bytearray(pristine)
    lay = parse(d)
    out = KINDS[name].fn(d, lay)
    return bytes(out if out is not None else d)


def ranges(name, pristine):
    """(damaged guest offset, undamaged guest offset, length)."""
    lay = parse(bytearray(pristine))
    k = KINDS[name]
    return k.dmg(lay), k.ok(lay), lay.rl
