"""qimg bitmap, and persistent bitmaps across qimg's other commands, beside
qemu-img 7.2 and qemu-io.

Each tool changes its own copy of the same image; the bitmaps are then read
from the file (directory, tables, data clusters: qcow2-format.md §9) and
must be the same: names, order, flags, granularity and every bit. `qemu-img
check` finds qimg's copy clean, and qemu-img reads what qimg wrote (info,
its own bitmap merge, convert --bitmaps). Messages and exit codes are
qemu-img's; a refusal leaves the file byte for byte as it was (qemu-img
stores each action that succeeded before the one that failed: qimg
commits all or nothing)."""
import json
import os
import re
import shutil
import struct

import pytest

from conftest import (QIMG, check_clean, create_argv as create, qemu_img,
                      qemu_io, qimg, qio_argv as qio, run, strip_prog)

BITMAPS_EXT = 0x23852875


def read_bitmaps(path):
    """[(name, flags, granularity, set of bit indexes)] in directory order;
    None without a (trusted) bitmaps extension."""
    with open(path, "rb") as f:
        data = f.read()
    version, = struct.unpack_from(">I", data, 4)
    cluster_bits, = struct.unpack_from(">I", data, 20)
    size, = struct.unpack_from(">Q", data, 24)
    cs = 1 << cluster_bits
    if version < 3:
        return None
    autoclear, = struct.unpack_from(">Q", data, 88)
    hlen, = struct.unpack_from(">I", data, 100)
    pos, ext = hlen, None
    while pos + 8 <= cs:
        t, ln = struct.unpack_from(">II", data, pos)
        if t == 0:
            break
        if t == BITMAPS_EXT:
            ext = struct.unpack_from(">IIQQ", data, pos + 8)
        pos += 8 + (ln + 7) // 8 * 8
    if ext is None or not autoclear & 1:
        assert ext is None or not autoclear & 1
        return None
    nb, _, dsize, doff = ext
    out, p = [], doff
    for _ in range(nb):
        toff, tsize, flags, typ, gran, nlen, elen = struct.unpack_from(
            ">QIIBBHI", data, p)
        name = data[p + 24 + elen:p + 24 + elen + nlen].decode()
        p += (24 + elen + nlen + 7) // 8 * 8
        bits = set()
        nbits = -(-size // (1 << gran))
        assert tsize == -(-(-(-nbits // 8)) // cs), name
        for k in range(tsize):
            e, = struct.unpack_from(">Q", data, toff + 8 * k)
            off = e & 0x00fffffffffffe00
            assert e & 0xff000000000001fe == 0
            if off:
                chunk = data[off:off + cs]
            elif e & 1:
                chunk = b"\xff" * cs
            else:
                continue
            for i, byte in enumerate(chunk):
                if byte:
                    for b in range(8):
                        if byte >> b & 1:
                            bits.add((k * cs + i) * 8 + b)
        assert all(b < nbits for b in bits), name
        out.append((name, flags, 1 << gran, bits))
    assert p - doff == dsize
    return out


def both(tmp, steps):
    """Two copies (q: qemu's, m: qimg's) of an image steps make."""
    for s in steps:
        run(s, check=True, cwd=tmp)
    shutil.copy(tmp / "a.img", tmp / "q.img")
    os.rename(tmp / "a.img", tmp / "m.img")
    return tmp / "q.img", tmp / "m.img"


def norm_err(text, prog, name):
    """stderr without the program name, the image's name and the node
    name QEMU generates anew on every run."""
    text = strip_prog(text, prog).replace(name, "X")
    text = text.replace("'qemu-img ", "'qimg ")  # Try 'qimg --help' ...
    return re.sub(r"#block\d+", "#block", text)


def same_result(tmp, qemu_args, qimg_args, allow_rc=(0,)):
    q = qemu_img(*[a if a != "IMG" else tmp / "q.img" for a in qemu_args])
    m = qimg(*[a if a != "IMG" else tmp / "m.img" for a in qimg_args])
    assert m.rc == q.rc and q.rc in allow_rc, (q, m)
    assert m.out == q.out
    assert norm_err(m.err, "qimg", "m.img") == \
        norm_err(q.err, "qemu-img", "q.img"), (q, m)
    return q, m


WRITES = ["write -P 1 0 4k", "write -P 2 1M 4k", "write -P 3 5181440 8k",
          "write -z 3M 64k", "discard 4M 128k"]


def base(opts=(), size="64M", bitmaps=(("b0", ()), ("b4k", ("-g", "4k")),
                                       ("off", ("--disable",)))):
    steps = [create("a.img", size, *opts)]
    for name, extra in bitmaps:
        steps.append(["qemu-img", "bitmap", "--add", *extra, "a.img", name])
    return steps


CLUSTERS = ["512", "4k", "64k", "2M"]


@pytest.mark.parametrize("cs", CLUSTERS)
def test_add_as_qemu(tmp, cs):
    """--add with the default granularity (the cluster size within 4k..64k)
    and with -g, --add --disable: the same directory, tables and info."""
    q, m = both(tmp, [create("a.img", "64M", "-o", "cluster_size=" + cs)])
    for args in (["--add"], ["--add", "-g", "1M"], ["--add", "--disable"],
                 ["--add", "-g", "512"]):
        name = "n%d" % len(args) + args[-1].strip("-")
        same_result(tmp, ["bitmap", *args, "IMG", name],
                    ["bitmap", *args, "IMG", name])
    assert read_bitmaps(m) == read_bitmaps(q)
    check_clean(m)
    qi = qemu_img("info", "--output=json", q).out
    mi = qemu_img("info", "--output=json", m).out
    assert json.loads(mi)["format-specific"] == \
        json.loads(qi)["format-specific"]


def test_guest_writes_set_bits(tmp):
    """Writes, zero writes and discards through qimg io set the bits of
    every enabled bitmap, as qemu-io's do; disabled ones stay as they
    were; the close stores them with in_use clear."""
    q, m = both(tmp, base())
    for w in WRITES:
        run(qio(q, w), check=True)
        r = qimg("io", "-c", w, m)
        assert r.rc == 0, r
    got, want = read_bitmaps(m), read_bitmaps(q)
    assert got == want
    assert got[0][3] and got[1][3] and not got[2][3]
    check_clean(m)
    assert qemu_img("compare", q, m).rc == 0


@pytest.mark.parametrize("opts", [["-o", "cluster_size=512"],
                                  ["-o", "cluster_size=2M"],
                                  ["-o", "extended_l2=on"],
                                  ["-o", "refcount_bits=1"]])
def test_guest_writes_geometries(tmp, opts):
    q, m = both(tmp, base(opts))
    cmds = sum((["-c", w] for w in WRITES), [])
    run(["qemu-io", "-f", "qcow2", *cmds, str(q)], check=True)
    assert qimg("io", *cmds, m).rc == 0
    assert read_bitmaps(m) == read_bitmaps(q)
    check_clean(m)


def test_in_use_left_alone(tmp):
    """A bitmap already in use (a crash while QEMU had it open) is neither
    updated nor cleared by writes; the enabled ones still are."""
    q, m = both(tmp, base())
    for p in (q, m):
        set_in_use(p, 1)
    run(qio(q, "write 0 64k"), check=True)
    assert qimg("io", "-c", "write 0 64k", m).rc == 0
    assert read_bitmaps(m) == read_bitmaps(q)
    assert read_bitmaps(m)[1][1] & 1
    check_clean(m)


def set_in_use(path, index):
    """Set in_use on bitmap `index` by hand, as a crash leaves it."""
    with open(path, "r+b") as f:
        data = f.read(1 << 21)
        hlen, = struct.unpack_from(">I", data, 100)
        pos = hlen
        while True:
            t, ln = struct.unpack_from(">II", data, pos)
            assert t
            if t == BITMAPS_EXT:
                _, _, _, doff = struct.unpack_from(">IIQQ", data, pos + 8)
                break
            pos += 8 + (ln + 7) // 8 * 8
        f.seek(doff)
        d = f.read(65536)
        p = 0
        for _ in range(index):
            nlen, elen = struct.unpack_from(">HI", d, p + 18)
            p += (24 + elen + nlen + 7) // 8 * 8
        flags, = struct.unpack_from(">I", d, p + 12)
        f.seek(doff + p + 12)
        f.write(struct.pack(">I", flags | 1))


ACTIONS = [
    ["--remove"], ["--clear"], ["--disable"], ["--enable"],
    ["--merge", "b4k"], ["--merge", "off"], ["--remove", "--add"],
    ["--remove", "--add", "-g", "4k"], ["--clear", "--merge", "b4k"],
    ["--disable", "--enable"], ["--enable", "--disable"], ["--merge", "b0"],
]


@pytest.mark.parametrize("args", ACTIONS, ids=lambda a: "".join(a))
@pytest.mark.parametrize("target", ["b0", "off"])
def test_actions_as_qemu(tmp, args, target):
    q, m = both(tmp, base() + [qio("a.img", *WRITES)])
    same_result(tmp, ["bitmap", *args, "IMG", target],
                ["bitmap", *args, "IMG", target])
    assert read_bitmaps(m) == read_bitmaps(q)
    check_clean(m)
    # qemu-img takes qimg's bitmaps as its own
    r = qemu_img("bitmap", "--add", m, "later")
    assert r.rc == 0, r
    check_clean(m)


def test_merge_other_image(tmp):
    """-b FILE [-F fmt]: the source bitmap read from another image."""
    q, m = both(tmp, base() + [qio("a.img", *WRITES)])
    run(create(tmp / "o.img", "64M"), check=True)
    run(["qemu-img", "bitmap", "--add", "-g", "512", tmp / "o.img", "ob"],
        check=True)
    run(qio(tmp / "o.img", "write 7M 1k", "write 40M 64k"), check=True)
    for extra in (["-b", "o.img", "-F", "qcow2"], ["-b", "o.img"]):
        same_result(tmp, ["bitmap", "--merge", "ob", *extra, "IMG", "off"],
                    ["bitmap", "--merge", "ob", *extra, "IMG", "off"])
    # run from tmp so that -b o.img resolves there for both
    assert read_bitmaps(m) == read_bitmaps(q)
    check_clean(m)


@pytest.fixture(autouse=True)
def _cwd(tmp, monkeypatch):
    monkeypatch.chdir(tmp)


def unchanged(path, fn):
    before = path.read_bytes()
    r = fn()
    assert path.read_bytes() == before, r
    return r


REFUSALS = [
    (["--remove"], "nope"),
    (["--clear"], "nope"),
    (["--enable"], "nope"),
    (["--disable"], "nope"),
    (["--merge", "nope"], "b0"),
    (["--merge", "b0"], "nope"),
    (["--add"], "b0"),
    (["--add", "-g", "4k"], "b4k"),
    (["--add", "-g", "100"], "x"),
    (["--add", "-g", "3k"], "x"),
    (["--add", "-g", "4G"], "x"),
    (["--add", "-g", "256"], "x"),
    (["--add"], ""),
    (["--add"], "n" * 1024),
    (["--merge", "in"], "b0"),
    (["--merge", "b0"], "in"),
    (["--clear"], "in"),
    (["--enable"], "in"),
    (["--disable"], "in"),
    (["--disable", "--add"], "d1"),
    (["--merge", "ob", "-b", "o.img"], "b0"),
    (["--merge", "ob", "-b", "small.img"], "b0"),
    (["--merge", "ob", "-b", "o.img", "-F", "raw"], "b0"),
]


@pytest.mark.parametrize("args,name", REFUSALS,
                         ids=lambda v: (v if len(v) < 20 else "long")
                         if isinstance(v, str) else None)
def test_refusals(tmp, args, name):
    """Each refusal with qemu-img's message and exit code; qimg's file
    unchanged."""
    q, m = both(tmp, base() + [["qemu-img", "bitmap", "--add", "a.img",
                                "in"]])
    for p in (q, m):
        set_in_use(p, 3)
    run(create(tmp / "o.img", "64M"), check=True)
    run(create(tmp / "small.img", "32M"), check=True)
    run(["qemu-img", "bitmap", "--add", tmp / "small.img", "ob"], check=True)
    unchanged(m, lambda: same_result(
        tmp, ["bitmap", *args, "IMG", name], ["bitmap", *args, "IMG", name],
        allow_rc=(1,)))


def test_failing_action_commits_nothing(tmp):
    """qemu-img keeps the add that precedes a failing merge; qimg writes
    nothing (same message and exit code)."""
    q, m = both(tmp, base())
    unchanged(m, lambda: same_result(
        tmp, ["bitmap", "--add", "--merge", "nope", "IMG", "new"],
        ["bitmap", "--add", "--merge", "nope", "IMG", "new"], allow_rc=(1,)))
    assert [b[0] for b in read_bitmaps(q)] == ["b0", "b4k", "off", "new"]


def test_remove_in_use(tmp):
    """An inconsistent bitmap can still be removed."""
    q, m = both(tmp, base())
    for p in (q, m):
        set_in_use(p, 0)
    same_result(tmp, ["bitmap", "--remove", "IMG", "b0"],
                ["bitmap", "--remove", "IMG", "b0"])
    assert read_bitmaps(m) == read_bitmaps(q)
    check_clean(m)


def test_remove_last_drops_extension(tmp):
    q, m = both(tmp, base(bitmaps=(("only", ()),)))
    same_result(tmp, ["bitmap", "--remove", "IMG", "only"],
                ["bitmap", "--remove", "IMG", "only"])
    assert read_bitmaps(m) is None and read_bitmaps(q) is None
    check_clean(m)


ARG_ERRORS = [
    [], ["IMG"], ["IMG", "b0"], ["-g", "1k"], ["--remove", "-g", "4k", "IMG",
                                              "b0"],
    ["--remove", "-F", "qcow2", "IMG", "b0"], ["--remove", "-b", "x", "IMG",
                                               "b0"],
    ["--remove", "IMG"], ["--remove", "IMG", "b0", "extra"],
    ["--merge"], ["--bogus", "IMG", "b0"], ["-q", "--remove", "IMG", "b0"],
    ["--add", "-g", "abc", "IMG", "b0"], ["--add", "-g", "-1", "IMG", "b0"],
    ["--remove", "-f", "qcow2", "--image-opts", "IMG", "b0"],
    ["--add", "-f", "bogus", "IMG", "b0"],
    ["--add", "nonexistent.img", "b0"],
]


@pytest.mark.parametrize("args", ARG_ERRORS, ids=lambda a: " ".join(a))
def test_argument_errors(tmp, args):
    q, m = both(tmp, base())
    unchanged(m, lambda: same_result(tmp, ["bitmap", *args],
                                     ["bitmap", *args], allow_rc=(1,)))


def test_v2_and_raw(tmp):
    run(create(tmp / "v2.img", "64M", "-o", "compat=0.10"), check=True)
    run(create(tmp / "r.img", "64M", fmt="raw"), check=True)
    for f in ("v2.img", "r.img"):
        for args in (["--add"], ["--remove"], ["--merge", "x"]):
            q = qemu_img("bitmap", "-f", "qcow2" if f == "v2.img" else "raw",
                         *args, f, "b0")
            m = unchanged(tmp / f, lambda: qimg(
                "bitmap", "-f", "qcow2" if f == "v2.img" else "raw", *args,
                f, "b0"))
            assert m.rc == q.rc == 1
            assert norm_err(m.err, "qimg", f) == \
                norm_err(q.err, "qemu-img", f), (q, m)


def test_locked(tmp):
    """An image another process writes is refused, unchanged."""
    q, m = both(tmp, base())
    holder = run_bg(["qemu-io", "-f", "qcow2", "-c", "sleep 100000", str(m)])
    try:
        r = unchanged(m, lambda: qimg("bitmap", "--add", m, "x"))
        assert r.rc == 1
        assert 'Failed to get "write" lock' in r.err
    finally:
        holder.kill()
        holder.wait()


def run_bg(args):
    import subprocess
    import time
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return p


@pytest.mark.parametrize("size", ["100G", "+1M", "2M"])
def test_resize_keeps_bitmaps(tmp, size):
    """Growing and shrinking resize every bitmap's table as qemu-img does:
    bits kept, bits past a smaller end dropped."""
    q, m = both(tmp, base() + [qio("a.img", *WRITES, "write 60M 4k")])
    extra = ["--shrink"] if size == "2M" else []
    same_result(tmp, ["resize", *extra, "IMG", size],
                ["resize", *extra, "IMG", size])
    assert read_bitmaps(m) == read_bitmaps(q)
    check_clean(m)


def test_resize_in_use_refused(tmp):
    q, m = both(tmp, base())
    for p in (q, m):
        set_in_use(p, 1)
    unchanged(m, lambda: same_result(tmp, ["resize", "IMG", "1G"],
                                     ["resize", "IMG", "1G"], allow_rc=(1,)))


def test_snapshot_apply_refused(tmp):
    q, m = both(tmp, base() + [["qemu-img", "snapshot", "-c", "s1",
                                "a.img"]])
    unchanged(m, lambda: same_result(
        tmp, ["snapshot", "-a", "s1", "IMG"], ["snapshot", "-a", "s1", "IMG"],
        allow_rc=(1,)))


def test_snapshot_create_delete_keep_bitmaps(tmp):
    q, m = both(tmp, base() + [qio("a.img", *WRITES)])
    for args in (["-c", "s1"], ["-c", "s2"], ["-d", "s1"]):
        same_result(tmp, ["snapshot", *args, "IMG"],
                    ["snapshot", *args, "IMG"])
    assert read_bitmaps(m) == read_bitmaps(q)
    check_clean(m)


def test_qemu_reads_qimg_bitmaps(tmp):
    """Bitmaps qimg made and filled are what QEMU copies and merges."""
    run(create(tmp / "m.img", "64M"), check=True)
    assert qimg("bitmap", "--add", "-g", "4k", "m.img", "a").rc == 0
    assert qimg("io", "-c", "write 0 4k", "-c", "write 9M 12k",
                "m.img").rc == 0
    assert qimg("bitmap", "--add", "m.img", "b").rc == 0
    assert qimg("bitmap", "--merge", "a", "m.img", "b").rc == 0
    r = qemu_img("convert", "-O", "qcow2", "--bitmaps", "m.img", "c.img")
    assert r.rc == 0, r
    assert read_bitmaps(tmp / "c.img") == read_bitmaps(tmp / "m.img")
    bits = {b[0]: b[3] for b in read_bitmaps(tmp / "m.img")}
    assert bits["a"] == {0, 9 * 256, 9 * 256 + 1, 9 * 256 + 2}
    assert bits["b"] == {0, 9 * 16}


def convert_both(tmp, args, allow_rc=(0,)):
    """qemu-img and qimg convert the same source into q.out / m.out."""
    q = qemu_img("convert", *args, "q.out")
    m = qimg("convert", *args, "m.out")
    assert m.rc == q.rc and q.rc in allow_rc, (q, m)
    assert norm_err(m.err, "qimg", "m.out") == \
        norm_err(q.err, "qemu-img", "q.out"), (q, m)
    assert (tmp / "m.out").exists() == (tmp / "q.out").exists()
    return q, m


CONVERTS = [
    ["-O", "qcow2"], ["-O", "qcow2", "-o", "cluster_size=4k"],
    ["-O", "qcow2", "-o", "cluster_size=512,refcount_bits=1"],
    ["-O", "qcow2", "-B", "base.img", "-F", "qcow2"], ["-O", "qcow2", "-c"],
]


@pytest.mark.parametrize("args", CONVERTS, ids=lambda a: " ".join(a))
def test_convert_bitmaps(tmp, args):
    """Names, order, granularity, enabled or not, and every bit."""
    for s in base() + [qio("a.img", *WRITES),
                       ["qemu-img", "bitmap", "--merge", "b0", "a.img",
                        "off"]]:
        run(s, check=True)
    run(create("base.img", "64M"), check=True)
    convert_both(tmp, [*args, "--bitmaps", "a.img"])
    assert read_bitmaps(tmp / "m.out") == read_bitmaps(tmp / "q.out")
    assert read_bitmaps(tmp / "m.out") == read_bitmaps(tmp / "a.img")
    check_clean(tmp / "m.out")


@pytest.mark.parametrize("skip", [False, True])
def test_convert_in_use(tmp, skip):
    """A bitmap in use: refused before the target is made, or skipped with
    qemu-img's warnings (last bitmap first)."""
    for s in base() + [qio("a.img", *WRITES)]:
        run(s, check=True)
    set_in_use(tmp / "a.img", 0)
    set_in_use(tmp / "a.img", 2)
    extra = ["--skip-broken-bitmaps"] if skip else []
    convert_both(tmp, ["-O", "qcow2", "--bitmaps", *extra, "a.img"],
                 allow_rc=(0,) if skip else (1,))
    if skip:
        assert read_bitmaps(tmp / "m.out") == read_bitmaps(tmp / "q.out")
        assert [b[0] for b in read_bitmaps(tmp / "m.out")] == ["b4k"]
        check_clean(tmp / "m.out")


@pytest.mark.parametrize("case", ["raw-target", "v2-target", "raw-source",
                                  "skip-alone", "two-sources"])
def test_convert_bitmaps_refused(tmp, case):
    for s in base():
        run(s, check=True)
    run(create("r.img", "64M", fmt="raw"), check=True)
    args = {
        "raw-target": ["-O", "raw", "--bitmaps", "a.img"],
        "v2-target": ["-O", "qcow2", "-o", "compat=0.10", "--bitmaps",
                      "a.img"],
        "raw-source": ["-f", "raw", "-O", "qcow2", "--bitmaps", "r.img"],
        "skip-alone": ["-O", "qcow2", "--skip-broken-bitmaps", "a.img"],
        "two-sources": ["-O", "qcow2", "--bitmaps", "a.img", "a.img"],
    }[case]
    convert_both(tmp, args, allow_rc=(1,))


def test_convert_into_existing(tmp):
    """-n: the target's own bitmaps stay; a clash is named as qemu-img
    names it (the last of the source's bitmaps that clashes)."""
    for s in base() + [qio("a.img", *WRITES)]:
        run(s, check=True)
    for t in ("q.out", "m.out"):
        run(create(t, "64M"), check=True)
        run(["qemu-img", "bitmap", "--add", "--disable", t, "mine"],
            check=True)
    convert_both(tmp, ["-n", "-O", "qcow2", "--bitmaps", "a.img"])
    assert read_bitmaps(tmp / "m.out") == read_bitmaps(tmp / "q.out")
    check_clean(tmp / "m.out")
    # now every source bitmap clashes
    convert_both(tmp, ["-n", "-O", "qcow2", "--bitmaps", "a.img"],
                 allow_rc=(1,))
    check_clean(tmp / "m.out")


def test_snapshots_and_backing(tmp):
    """On an overlay with internal snapshots: bitmap actions and guest
    writes change no snapshot and no guest data, as qemu-img's do."""
    steps = [create("b.img", "64M"), qio("b.img", "write -P 9 0 64M"),
             create("a.img", "64M", backing="b.img"),
             qio("a.img", "write -P 1 1M 1M"),
             ["qemu-img", "snapshot", "-c", "s1", "a.img"],
             qio("a.img", "write -P 2 1M 64k"),
             ["qemu-img", "bitmap", "--add", "a.img", "b0"],
             ["qemu-img", "snapshot", "-c", "s2", "a.img"]]
    q, m = both(tmp, steps)
    for args in (["--add", "-g", "4k"], ["--merge", "b0"], ["--disable"]):
        same_result(tmp, ["bitmap", *args, "IMG", "n"],
                    ["bitmap", *args, "IMG", "n"])
    for w in ("write -P 3 3M 8k", "write -z 1M 64k"):
        run(qio(q, w), check=True)
        assert qimg("io", "-c", w, m).rc == 0
    assert read_bitmaps(m) == read_bitmaps(q)
    check_clean(m)
    assert qemu_img("compare", q, m).rc == 0
    for s in ("s1", "s2"):
        for p, out in ((q, "q.raw"), (m, "m.raw")):
            run(["qemu-img", "convert", "-l", s, "-O", "raw", p, out],
                check=True)
        assert (tmp / "q.raw").read_bytes() == (tmp / "m.raw").read_bytes()
