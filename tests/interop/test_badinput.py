"""Damaged qcow2 files: qimg never crashes, refuses with a clear message,
exits non-zero where qemu-img does, and never changes a file it refuses.

Each damaged file is a byte edit of one image qemu-img/qemu-io made here
(v3, 64 KiB clusters, 64 GiB, data, a compressed cluster, snapshot "s1",
then more data so the active L2 table is a copy). Every kind of damage
meets every command below, on two copies: qemu-img/qemu-io run on one,
qimg on the other, both on the relative name "img.qcow2".

test_invariants (must always hold):
  * exit code in 0..127, no crash or sanitizer report on stderr;
  * where qemu-img/qemu-io exits non-zero, qimg does too;
  * a non-zero exit leaves the file byte-identical (sha256), except that
    a request that meets a corrupt L2 entry may set the corrupt bit as
    QEMU does: then only bytes 72..79 may differ;
  * a read-only command never changes the file, whatever its exit code;
  * a failing qimg says why (stderr, or stdout for qemu-io's "read
    failed: ..." and check's findings), with no empty message.
test_same_as_qemu: exit code, stdout and stderr after the program name
equal qemu-img's (qemu-io's for io), except
  * deliberate refusals (DELIBERATE, each with the reason): where qimg
    refuses a file qemu-img accepts (or refuses for another reason), its
    exact output is pinned: one line when it refuses to open the file;
    when a corrupt entry is met later, QEMU's corruption frame line plus
    the command's own failure line, the shape qemu-img itself uses;
  * differences the library does not reproduce yet (FILED below):
    strict xfail, reason "lib-requests: <name>".
Then the autoclear and corrupt bits, written or not, as QEMU does.
"""
import hashlib
import os
import re
import struct

import pytest

from conftest import QIMG, run, strip_prog

CS = 1 << 16
COPIED = 1 << 63
OFF_MASK = 0x00fffffffffffe00
# qcow2-format.md "Header" (big-endian)
H_VERSION, H_BFO, H_BFS, H_CBITS, H_CRYPT, H_L1SIZE = 4, 8, 16, 20, 32, 36
H_L1OFF, H_RTOFF, H_RTCL, H_INCOMPAT, H_AUTOCLEAR = 40, 48, 56, 72, 88
H_RORDER, H_HLEN, H_CTYPE = 96, 100, 104
FEATURE_TABLE = 0x6803f857
ACTIVE_L2 = 0xa0000     # where qemu-img 7.2 puts the base's active L2


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("badinput")
    for args in (["qemu-img", "create", "-q", "-f", "qcow2", "b.qcow2",
                  "64G"],
                 ["qemu-io", "-c", "write -q -P 0x11 0 128k",
                  "-c", "write -q -c -P 0x22 1M 64k", "b.qcow2"],
                 ["qemu-img", "snapshot", "-c", "s1", "b.qcow2"],
                 ["qemu-io", "-c", "write -q -P 0x33 0 64k", "b.qcow2"]):
        run(args, check=True, cwd=d)
    data = (d / "b.qcow2").read_bytes()
    assert l2_off(data) == ACTIVE_L2    # messages below name it
    return data


# ---- byte edits -------------------------------------------------------------


def get(data, fmt, off):
    return struct.unpack_from(fmt, data, off)[0]


def put(data, fmt, off, value):
    b = bytearray(data)
    struct.pack_into(fmt, b, off, value)
    return bytes(b)


def put_bytes(data, off, chunk):
    return data[:off] + chunk + data[off + len(chunk):]


def l2_off(data):
    l1 = get(data, ">Q", H_L1OFF)
    return get(data, ">Q", l1) & OFF_MASK


def set_l2_entry0(data, entry):
    return put(data, ">Q", l2_off(data), entry)


def data0(data):
    return get(data, ">Q", l2_off(data)) & OFF_MASK


def feature_table(data, incompat, entries):
    """Set incompatible_features and replace the header extensions with a
    feature name table of (type, bit, name) entries."""
    body = b"".join(struct.pack(">BB46s", t, b, n) for t, b, n in entries)
    ext = struct.pack(">II", FEATURE_TABLE, len(body)) + body + bytes(8)
    hlen = get(data, ">I", H_HLEN)
    return put(put_bytes(data, hlen, ext), ">Q", H_INCOMPAT, incompat)


def backing_name(data, length):
    data = put_bytes(data, 0x1000, b"b" * length)
    return put(put(data, ">Q", H_BFO, 0x1000), ">I", H_BFS, length)


def header_length_108(data):
    """header_length 108: not a multiple of 8; with no extensions after it
    QEMU reads an end marker there and opens the image."""
    return put(put_bytes(data, 104, bytes(16)), ">I", H_HLEN, 108)


DAMAGES = {
    "trunc0": lambda d: b"",
    "trunc50": lambda d: d[:50],
    "trunc100": lambda d: d[:100],
    "trunc511": lambda d: d[:511],
    "header_only": lambda d: d[:get(d, ">I", H_HLEN)],
    "cut_in_l1": lambda d: d[:get(d, ">Q", H_L1OFF)
                             + get(d, ">I", H_L1SIZE) * 4 + 4],
    "cut_in_reftable": lambda d: d[:get(d, ">Q", H_RTOFF) + 4],
    "cut_in_l2": lambda d: d[:l2_off(d) + CS // 2],
    "bad_magic": lambda d: put(d, ">I", 0, 0x514649fc),
    "version1": lambda d: put(d, ">I", H_VERSION, 1),
    "version4": lambda d: put(d, ">I", H_VERSION, 4),
    "cluster_bits8": lambda d: put(d, ">I", H_CBITS, 8),
    "cluster_bits22": lambda d: put(d, ">I", H_CBITS, 22),
    "l1_unaligned": lambda d: put(d, ">Q", H_L1OFF,
                                  get(d, ">Q", H_L1OFF) + 8),
    "l1_past_eof": lambda d: put(d, ">Q", H_L1OFF, 1 << 24),
    "reftable_unaligned": lambda d: put(d, ">Q", H_RTOFF,
                                        get(d, ">Q", H_RTOFF) + 8),
    "reftable_past_eof": lambda d: put(d, ">Q", H_RTOFF, 1 << 24),
    "reftable_clusters0": lambda d: put(d, ">I", H_RTCL, 0),
    "l1_size_too_large": lambda d: put(d, ">I", H_L1SIZE,
                                       32 * 1024 * 1024 // 8 + 1),
    "l1_size_too_small": lambda d: put(d, ">I", H_L1SIZE, 64),
    "header_length96": lambda d: put(d, ">I", H_HLEN, 96),
    "header_length113": lambda d: put(d, ">I", H_HLEN, 113),
    "header_length108": header_length_108,
    "header_length_over_cluster": lambda d: put(d, ">I", H_HLEN, CS + 8),
    "backing_offset_crosses_cluster": lambda d: put(
        put(d, ">Q", H_BFO, CS - 4), ">I", H_BFS, 10),
    "backing_offset_past_cluster": lambda d: put(
        put(d, ">Q", H_BFO, CS + 8), ">I", H_BFS, 10),
    "backing_offset_past_eof": lambda d: put(
        put(d, ">Q", H_BFO, 1 << 24), ">I", H_BFS, 10),
    "backing_name1024": lambda d: backing_name(d, 1024),
    "backing_name1100": lambda d: backing_name(d, 1100),
    "extension_past_cluster": lambda d: put(
        d, ">I", get(d, ">I", H_HLEN) + 4, CS),
    "incompat_bit8": lambda d: put(d, ">Q", H_INCOMPAT, 1 << 8),
    "incompat_bits_8_9_63": lambda d: put(d, ">Q", H_INCOMPAT,
                                          (1 << 8) | (1 << 9) | (1 << 63)),
    "incompat_bit8_named": lambda d: feature_table(
        d, 1 << 8, [(0, 0, b"dirty bit"), (0, 1, b"corrupt bit"),
                    (0, 8, b"shiny new thing")]),
    "incompat_bits_8_9_one_named": lambda d: feature_table(
        d, (1 << 8) | (1 << 9), [(0, 8, b"shiny new thing"),
                                 (1, 9, b"a compatible bit")]),
    "incompat_bit8_name46": lambda d: feature_table(d, 1 << 8,
                                                    [(0, 8, b"x" * 46)]),
    "autoclear_bit5": lambda d: put(d, ">Q", H_AUTOCLEAR, 1 << 5),
    "corrupt_bit": lambda d: put(d, ">Q", H_INCOMPAT, 2),
    "l2_entry_past_eof": lambda d: set_l2_entry0(d, COPIED | (1 << 24)),
    "l2_entry_unaligned": lambda d: set_l2_entry0(d, COPIED |
                                                  (data0(d) + 0x200)),
    "compression_type9": lambda d: put(put(d, ">Q", H_INCOMPAT, 1 << 3),
                                       "B", H_CTYPE, 9),
    "compression_type1_no_bit": lambda d: put(d, "B", H_CTYPE, 1),
    "refcount_order7": lambda d: put(d, ">I", H_RORDER, 7),
    "crypt_method1": lambda d: put(d, ">I", H_CRYPT, 1),
    "crypt_method2": lambda d: put(d, ">I", H_CRYPT, 2),
    "crypt_method3": lambda d: put(d, ">I", H_CRYPT, 3),
    "external_data_file": lambda d: put(d, ">Q", H_INCOMPAT, 1 << 2),
}

# Probing would not take these as qcow2 (an empty file is raw, version 1
# is QEMU's old "qcow" format): both tools get -f qcow2. qemu-img snapshot
# has no -f (qimg's is an extension), so there qemu-img info -f qcow2 is
# the oracle for the open error.
FORCE_QCOW2 = {"bad_magic", "version1"}
# Requests meeting these may set the corrupt bit (bytes 72..79) even when
# they fail.
MAY_MARK_CORRUPT = {"l2_entry_past_eof", "l2_entry_unaligned", "cut_in_l2",
                    "trunc511", "header_only", "cut_in_l1",
                    "cut_in_reftable", "l1_past_eof", "reftable_past_eof"}

# ---- commands ---------------------------------------------------------------

IMG = "img.qcow2"
COMMANDS = {
    "info": ["info"],
    "info-json": ["info", "--output=json"],
    "check": ["check"],
    "snapshot-l": ["snapshot", "-l"],
    "snapshot-c": ["snapshot", "-c", "new"],
    "snapshot-a": ["snapshot", "-a", "s1"],
    "snapshot-d": ["snapshot", "-d", "s1"],
    "io-read-r": ["io", "-r", "-c", "read -q 0 64k"],
    "io-read": ["io", "-c", "read -q 0 64k"],
    "io-write": ["io", "-c", "write -q -P 0x44 0 64k"],
    "convert": ["convert", "-O", "raw"],
}
READ_ONLY = {"info", "info-json", "check", "snapshot-l", "io-read-r",
             "convert"}


def argv(tool, case, cmd):
    """The command line of `cmd` for tool "qemu" or "qimg"."""
    sub, rest = COMMANDS[cmd][0], COMMANDS[cmd][1:]
    fmt = ["-f", "qcow2"] if case in FORCE_QCOW2 else []
    tail = [IMG, "out.raw"] if cmd == "convert" else [IMG]
    if tool == "qimg":
        return [QIMG, sub] + fmt + rest + tail
    if sub == "io":
        return ["qemu-io"] + fmt + rest + tail
    if sub == "snapshot" and fmt:
        return ["qemu-img", "info", "-f", "qcow2", IMG]
    return ["qemu-img", sub] + fmt + rest + tail


def sha(data):
    return hashlib.sha256(data).hexdigest()


class Outcome:
    def __init__(self, r, before, after):
        self.rc, self.out, self.err = r.rc, r.out, r.err
        self.before, self.after = before, after

    def __repr__(self):
        return "rc=%d changed=%s\nstdout:\n%s\nstderr:\n%s" % (
            self.rc, self.before != self.after, self.out[:2000],
            self.err[:2000])


def run_pair(tmp, base, case, cmd):
    """The damaged file under both tools; (qemu Outcome, qimg Outcome)."""
    data = DAMAGES[case](base)
    res = []
    for tool in ("qemu", "qimg"):
        d = tmp / tool
        d.mkdir()
        (d / IMG).write_bytes(data)
        r = run(argv(tool, case, cmd), cwd=d)
        res.append(Outcome(r, data, (d / IMG).read_bytes()))
    return res


CASES = [(c, m) for c in DAMAGES for m in COMMANDS]


def case_id(cm):
    return "%s-%s" % cm


# ---- invariants -------------------------------------------------------------

CRASH = re.compile(r"Segmentation fault|AddressSanitizer|runtime error|"
                   r"Aborted|core dumped|LeakSanitizer|Assertion")


# "qimg: " with nothing after it, or a message ending in ": ".
EMPTY_MSG = re.compile(r"^qimg:\s*$|: $")


def changed_bytes(a, b):
    if len(a) != len(b):
        return None
    return [i for i in range(len(a)) if a[i] != b[i]]


@pytest.mark.parametrize("case,cmd", CASES, ids=map(case_id, CASES))
def test_invariants(tmp, base, case, cmd):
    q, m = run_pair(tmp, base, case, cmd)
    assert 0 <= m.rc < 128, m
    assert not CRASH.search(m.err), m
    if q.rc != 0:
        assert m.rc != 0, "qemu refuses, qimg accepts:\n%r\n%r" % (q, m)
    if m.rc != 0:
        said = [l for l in (m.err + m.out).split("\n") if l.strip()]
        assert said, m
        assert not [l for l in said if EMPTY_MSG.search(l)], m
    if cmd in READ_ONLY or m.rc != 0:
        if sha(m.after) == sha(m.before):
            return
        diff = changed_bytes(m.before, m.after)
        assert (cmd not in READ_ONLY and case in MAY_MARK_CORRUPT and
                diff and all(72 <= i < 80 for i in diff)), (
            "file changed: %s\n%r" % (diff and diff[:10], m))
        assert get(m.after, ">Q", H_INCOMPAT) & 2, m


# ---- the same as qemu-img ---------------------------------------------------

CONT = re.compile(r"    (referenced by|in) \S")


def norm_err(text, prog):
    """stderr after the program name; for qimg without the indented
    continuation lines `qimg check` adds under qemu-img's (see
    test_check.py)."""
    text = strip_prog(text, prog)
    if prog == "qimg":
        text = "\n".join(l for l in text.split("\n") if not CONT.match(l))
    return text


# (case, cmd) -> (why, stderr regex, stdout). qimg refuses, exactly so,
# where qemu-img accepts the file or fails in another way.
DELIBERATE = {}
ALL = list(COMMANDS)
OPENING = [c for c in ALL if c != "check"]


def open_error(cmd, msg):
    head = ("can't open device %s: " % IMG if cmd.startswith("io")
            else "Could not open '%s': " % IMG)
    return re.escape("qimg: " + head + msg + "\n")


def refuse_open(cases, cmds, why, msg):
    """qimg refuses to open the file: one line."""
    for case in cases:
        for cmd in cmds:
            DELIBERATE[(case, cmd)] = (why, open_error(cmd, msg), "")


# Tables past the end of the file. QEMU 7.2 checks table offsets for
# alignment and size limits only; past the end it reads zeros and carries
# on, and so does qimg for everything that reads. A write is another
# matter: QEMU writes there as it goes (a zero refcount table hands out
# clusters in use; it often ends in "Preventing invalid write on
# metadata" after changing the file, or succeeds and leaves the image
# worse). qimg refuses any write to such an image before writing, in
# QEMU's corruption frame, and marks it corrupt.
ROOT_PAST_EOF = {
    "trunc511": "Active L1 table", "header_only": "Active L1 table",
    "cut_in_l1": "Active L1 table", "l1_past_eof": "Active L1 table",
    "cut_in_reftable": "Active L1 table",   # it lies after the cut too
    "reftable_past_eof": "Reference count table",
}
ROOT_FRAME = ("qcow2: Marking image as corrupt: %s exceeds the end of the "
              "file; further corruption events will be suppressed\n")
ROOT_REFUSALS = {   # cmd -> (stderr after the frame, stdout)
    "io-write": ("", "write failed: Input/output error\n"),
    "snapshot-c": (re.escape("qimg: Could not create snapshot 'new': -5 "
                             "(Input/output error)\n"), ""),
    "snapshot-a": (re.escape("qimg: Could not apply snapshot 's1': Failed to "
                             "load snapshot: Input/output error\n"), ""),
    "snapshot-d": (None, ""),   # one line: the frame follows the command's
}
# With the file cut short the snapshot table reads as zeros: there is no
# snapshot "s1" to apply or delete, in either tool.
SNAPSHOT_GONE = {"trunc511", "header_only", "cut_in_l1", "cut_in_reftable"}
for _case, _table in ROOT_PAST_EOF.items():
    for _cmd, (_last, _out) in ROOT_REFUSALS.items():
        if _case in SNAPSHOT_GONE and _cmd in ("snapshot-a", "snapshot-d"):
            continue
        _frame = re.escape(ROOT_FRAME % _table)
        if _cmd == "snapshot-d":
            _err = re.escape("qimg: Could not delete snapshot 's1': ") + _frame
        else:
            _err = ("qimg: " if _cmd != "io-write" else "") + _frame + _last
        DELIBERATE[(_case, _cmd)] = ("table past EOF, write refused", _err,
                                     _out)

# A LUKS image (crypt method 2) without its crypto header extension:
# qemu-img info crashes (SIGSEGV); qimg says what is missing, as QEMU's
# other commands do.
refuse_open(["crypt_method2"], ["info", "info-json"], "QEMU crashes",
            "Missing CRYPTO header for crypt method 2")

# An L2 table (cut_in_l2) or a data cluster (l2_entry_past_eof) past the
# end of the file, met when the guest cluster is accessed. QEMU reads
# zeros there, and so does qimg; QEMU also writes the guest data at that
# offset (growing the file to 16 MiB + 64 KiB). qimg refuses to write
# through such an entry, as qemu-img check counts it corrupt ("exceeding
# the end of the file"), and says so in QEMU's corruption frame, then the
# command's own failure line.
MARKING = ("qcow2: Marking image as corrupt: %s; further corruption events "
           "will be suppressed\n")
COMMAND_FAILS = {
    "io-write": (MARKING, "", "write failed: Input/output error\n"),
    "snapshot-c": (MARKING, "qimg: Could not create snapshot 'new': -5 "
                   "(Input/output error)\n", ""),
    "snapshot-a": (MARKING, "qimg: Could not apply snapshot 's1': Failed "
                   "to load snapshot: Input/output error\n", ""),
    "snapshot-d": (MARKING, None, ""),
}
PAST_EOF_DETAIL = {
    "cut_in_l2": "L2 table offset %#x beyond end of file" % ACTIVE_L2,
    "l2_entry_past_eof": "Cluster allocation offset 0x1000000 beyond end "
                         "of file (L2 offset: %#x, L2 index: 0)" % ACTIVE_L2,
}
for _case, _detail in PAST_EOF_DETAIL.items():
    for _cmd, (_frame, _last, _out) in COMMAND_FAILS.items():
        _last = (re.escape(_last) if _last is not None else
                 r"qimg: Could not delete snapshot 's1': [^\n]+\n")
        DELIBERATE[(_case, _cmd)] = ("entry past EOF",
                                     re.escape(_frame % _detail) + _last,
                                     _out)

# Differences the library does not reproduce yet; strict xfail, so each
# entry must go once it does.
FILED = {}


def filed(name, cases, cmds):
    for case in cases:
        for cmd in cmds:
            FILED[(case, cmd)] = name


filed("corruption frame outside qimg io",
      ["cut_in_l2", "l2_entry_past_eof"],
      ["snapshot-c", "snapshot-a", "snapshot-d"])
filed("corruption frame outside qimg io",
      ["l2_entry_unaligned"], ["snapshot-d", "convert"])
filed("write-path corruption message", ["l2_entry_unaligned"], ["io-write"])


def with_marks(case, cmd, table):
    marks = []
    if (case, cmd) in table:
        marks.append(pytest.mark.xfail(
            strict=True, reason="lib-requests: " + table[(case, cmd)]))
    return pytest.param(case, cmd, id=case_id((case, cmd)), marks=marks)


# The sanitizer build compares every other case with qemu-img (the
# comparison is the release build's; test_invariants still runs every
# case under the sanitizers).
SANITIZED = os.environ.get("QIMG_SANITIZE", "none") != "none"


@pytest.mark.parametrize("case,cmd", [with_marks(c, m, FILED)
                                      for c, m in CASES][::2 if SANITIZED
                                                         else 1])
def test_same_as_qemu(tmp, base, case, cmd):
    q, m = run_pair(tmp, base, case, cmd)
    if (case, cmd) in DELIBERATE:
        why, err, out = DELIBERATE[(case, cmd)]
        assert m.rc == 1, (why, m)
        assert re.fullmatch(err, m.err), (why, m)
        assert m.out == out, (why, m)
        return
    assert m.rc == q.rc, "qemu:\n%r\nqimg:\n%r" % (q, m)
    assert norm_err(m.err, "qimg") == norm_err(q.err, "qemu-img").replace(
        "qemu-io: ", ""), "qemu:\n%r\nqimg:\n%r" % (q, m)
    if not (cmd.startswith("snapshot-") and case in FORCE_QCOW2):
        assert m.out == q.out, "qemu:\n%r\nqimg:\n%r" % (q, m)


# ---- feature bits: autoclear, corrupt ---------------------------------------


@pytest.mark.parametrize("cmd", ["io-write", "snapshot-c", "snapshot-a",
                                 "snapshot-d"])
def test_unknown_autoclear_cleared_by_writes(tmp, base, cmd):
    """A writer clears autoclear bits it does not know, as QEMU does; the
    read-only commands leave the file alone (test_invariants). So does
    `qimg io` that only reads: it clears the bits when it first writes,
    which is what the format asks ("may only write to an image with
    unknown auto-clear features if it clears the respective bits first");
    qemu-io clears them as soon as it opens read-write."""
    q, m = run_pair(tmp, base, "autoclear_bit5", cmd)
    assert (q.rc, m.rc) == (0, 0), (q, m)
    assert get(q.after, ">Q", H_AUTOCLEAR) == 0
    assert get(m.after, ">Q", H_AUTOCLEAR) == 0
    assert get(m.after, ">Q", H_INCOMPAT) == 0
    r = run(["qemu-img", "check", IMG], cwd=tmp / "qimg")
    assert r.rc == 0 and "No errors were found" in r.out, r


def test_unknown_autoclear_kept_by_reading_io(tmp, base):
    q, m = run_pair(tmp, base, "autoclear_bit5", "io-read")
    assert (q.rc, m.rc) == (0, 0), (q, m)
    assert get(q.after, ">Q", H_AUTOCLEAR) == 0     # opened read-write
    assert m.after == m.before


CORRUPTING = ["io-read", "io-write", "snapshot-c", "snapshot-a",
              "snapshot-d"]


@pytest.mark.parametrize("cmd", CORRUPTING)
def test_unaligned_l2_entry_sets_corrupt_bit(tmp, base, cmd):
    """A misaligned data cluster offset met by a read-write request: QEMU
    prints "Marking image as corrupt" and sets the corrupt bit (byte 79,
    bit 1) and nothing else for io read/write. For snapshot commands QEMU
    has already changed refcounts (and more) when it notices; qimg changes
    nothing, so it ends where QEMU's io does: the old file plus the
    corrupt bit. A read never changes the file in qimg (deliberate: the
    bit is set by the first command that would write)."""
    q, m = run_pair(tmp, base, "l2_entry_unaligned", cmd)
    assert q.rc == m.rc == 1
    marked = put(m.before, ">Q", H_INCOMPAT, 2)
    if cmd.startswith("io-"):
        assert q.after == marked
    if cmd == "io-read":
        assert m.after == m.before
        return
    assert changed_bytes(m.before, m.after) == [79]
    assert m.after == marked
