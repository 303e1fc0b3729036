#!/usr/bin/python3
"""run.py - time qimg beside qemu-img on the standard images.

Each (operation, image) pair runs the two tools alternately on the same
working copy (qimg, qemu-img, qimg, qemu-img, ...): one warm-up pair, then
--runs counted pairs. Set-up and tear-down (making the snapshot to apply or
delete, deleting the snapshot just made, rewriting part of the disk,
removing convert output) are untimed and always done with qemu-img/qemu-io,
so both tools start every timed run from the same state.

Printed per operation and image: the median wall time of each tool, the
paired ratio (median over the pairs of qemu-img time / qimg time: > 1 means
qimg is faster) and the peak RSS of each tool (ru_maxrss from wait4, the
largest over the counted runs). For `bench` the time is the one the tool
prints ("Run completed in T seconds"), which leaves out open and close.

Images come from make-images.sh (QIMG_BENCH_DIR, default
build/bench-images in the source tree); working copies go to
$QIMG_BENCH_DIR/copies and are made
with cp --sparse=always, again for every operation when they are small.

--first-op starts every timed run (both tools) from a fresh sparse copy of
the pristine, QEMU-made image, made durable before (untimed): a user's
first operation on an image, not a copy only the tools have touched.
--bound adds, for the snapshot operations, the bytes the operation must
write (bench/iocount.py's lower bound, from the image just before the
operation) written with dd conv=fdatasync into new blocks and over
existing ones on the same file system, and qimg's time as a multiple of
each (in the notes); and the time to read the clusters it must read (its
L2 tables and refcount blocks, one pread each from the page cache as the
timed run finds it), with qimg's time as a multiple of read + write.

  bench/run.py                         # everything (about an hour)
  bench/run.py -i A,A100,B -o snap-c,snap-d --bound [--first-op]
  bench/run.py -i A,C -o snap-c,check -n 3
  bench/run.py --markdown > table.md
  bench/run.py --list                  # operations and images

The "-a after 10% rewrite" set-up writes 10% of the virtual disk in ten
stripes (one at every tenth of the disk) with qemu-io before each timed
apply: real data (`write -P 0x5a`) when 10% of the disk is at most 1 GiB
(C, D), else zeroes (`write -z`, metadata only) so that A's 100 GiB
stripes take seconds, not hours. --rewrite=data|zero overrides this.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_DIR = os.environ.get("QIMG_BENCH_DIR",
                           os.path.join(ROOT, "build", "bench-images"))
IMAGES = ["A", "A100", "B", "C", "D"]
SMALL_COPY = 2 << 30        # re-copy working images smaller than this
FRESH_SIZE = 2 << 30        # bench-w4k: fresh 2 GiB image
# bench-w4k step: 4 KiB x odd number near 0.618 x (blocks in 2 GiB), a Weyl
# sequence that scatters the writes over the whole disk
W4K_STEP = 4096 * 324035
W4K_COUNT = 20000
R64K_COUNT = (8 << 30) // 65536     # all of C


class Fail(Exception):
    pass


def sh(args, ok=(0,)):
    """Untimed helper command; raises on an unexpected exit code."""
    cp = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        text=True)
    if cp.returncode not in ok:
        raise Fail("%s -> %d\n%s%s" % (" ".join(args), cp.returncode,
                                        cp.stdout[-2000:], cp.stderr[-2000:]))
    return cp


def spawn_helper(work):
    """Build bench/spawn-time.c once (see there why it exists)."""
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                       "spawn-time.c")
    exe = os.path.join(work, "spawn-time")
    if (not os.path.exists(exe) or
            os.path.getmtime(exe) < os.path.getmtime(src)):
        sh(["cc", "-O2", "-o", exe, src])
    return exe


def timed(ctx, args, want_out=False):
    """Run once; return (seconds, peak RSS KiB, exit code, stdout, stderr)."""
    res = os.path.join(ctx.work, "spawn-time.out")
    out = subprocess.PIPE if want_out else subprocess.DEVNULL
    cp = subprocess.run([ctx.spawn, res] + args, stdout=out,
                        stderr=subprocess.PIPE)
    if cp.returncode != 0:
        raise Fail("spawn-time failed: %s" % cp.stderr.decode()[-500:])
    with open(res) as f:
        dt, rss, rc = f.read().split()
    return float(dt), int(rss), int(rc), \
        (cp.stdout or b"").decode(errors="replace"), \
        cp.stderr.decode(errors="replace")


def real_bytes(path):
    return os.stat(path).st_blocks * 512


def virtual_size(path):
    out = sh(["qemu-img", "info", "--output=json", "-U", path]).stdout
    return json.loads(out)["virtual-size"]


def rewrite_stripes(size):
    """10% of the disk in ten stripes, one at each tenth, MiB-aligned."""
    mib = 1 << 20
    length = size // 100 // mib * mib
    return [(k * size // 10 // mib * mib, length) for k in range(10)]


def rewrite_mode(size, mode):
    if mode == "auto":
        mode = "data" if size // 10 <= (1 << 30) else "zero"
    return mode


def rewrite_cmds(size, mode):
    """qemu-io -c arguments rewriting the stripes (requests <= 1 GiB: qemu-io
    refuses longer ones)."""
    w = "write -P 0x5a" if mode == "data" else "write -z"
    cmds = []
    for off, length in rewrite_stripes(size):
        end = off + length
        while off < end:
            n = min(end - off, 1 << 30)
            cmds += ["-c", "%s %d %d" % (w, off, n)]
            off += n
    return cmds


# ---- Operations ---------------------------------------------------------

class Op:
    """One timed command with its untimed set-up and tear-down."""
    name = ""
    desc = ""
    images = IMAGES
    ok_rc = (0,)
    reported_time = False        # take the time the tool prints

    def __init__(self, ctx):
        self.ctx = ctx

    def setup(self, img):        # once per image, untimed
        pass

    def pre(self, img):          # before each timed run, untimed
        pass

    def argv(self, img):         # the timed command, without the tool
        raise NotImplementedError

    def tool_argv(self, tool, img):  # the whole timed command line
        return [self.ctx.tools[tool]] + self.argv(img)

    def post(self, img):         # after each timed run, untimed
        pass

    def teardown(self, img):     # once per image, untimed
        pass


class SnapCreate(Op):
    name, desc = "snap-c", "snapshot -c (then untimed -d)"

    def argv(self, img):
        return ["snapshot", "-c", "bench-c", img]

    def post(self, img):
        sh(["qemu-img", "snapshot", "-d", "bench-c", img])


class SnapDelete(Op):
    name, desc = "snap-d", "snapshot -d (after untimed -c)"

    def pre(self, img):
        sh(["qemu-img", "snapshot", "-c", "bench-d", img])

    def argv(self, img):
        return ["snapshot", "-d", "bench-d", img]


class SnapApplySteady(Op):
    name, desc = "snap-a", "snapshot -a, disk already equal to the snapshot"

    def setup(self, img):
        sh(["qemu-img", "snapshot", "-c", "bench-a", img])

    def argv(self, img):
        return ["snapshot", "-a", "bench-a", img]

    def teardown(self, img):
        sh(["qemu-img", "snapshot", "-d", "bench-a", img])


class SnapApplyRewrite(SnapApplySteady):
    name, desc = "snap-a10", "snapshot -a after an untimed 10% rewrite"

    def setup(self, img):
        super().setup(img)
        self.size = virtual_size(img)
        self.mode = rewrite_mode(self.size, self.ctx.rewrite)
        self.cmds = rewrite_cmds(self.size, self.mode)

    def pre(self, img):
        sh(["qemu-io", "-f", "qcow2"] + self.cmds + [img])


class QimgOnly(Op):
    """A command qemu-img has none of, timed beside a yardstick: qimg
    check of the same copy (the qemu-img columns are that check)."""
    images = ["A100", "D", "F"]

    def __init__(self, ctx, name, desc, args):
        super().__init__(ctx)
        self.name, self.args = name, args
        self.desc = desc + " (beside qimg check: qemu-img has none)"

    def argv(self, img):
        return self.args + [img]

    def tool_argv(self, tool, img):
        if tool == "qemu":
            return [self.ctx.tools["qimg"], "check", img]
        return super().tool_argv(tool, img)


class ReadOnly(Op):
    def __init__(self, ctx, name, desc, args, ok_rc=(0,), images=None):
        super().__init__(ctx)
        self.name, self.desc, self.args, self.ok_rc = name, desc, args, ok_rc
        if images:
            self.images = images

    def argv(self, img):
        return self.args + [img]


class Convert(Op):
    images = ["C", "D"]

    def __init__(self, ctx, fmt):
        super().__init__(ctx)
        self.fmt = fmt
        self.name = "convert-" + fmt
        self.desc = "convert -O %s (output removed untimed)" % fmt

    def out(self):
        return os.path.join(self.ctx.work, "convert-out." + self.fmt)

    def pre(self, img):
        if os.path.exists(self.out()):
            os.unlink(self.out())

    def argv(self, img):
        return ["convert", "-O", self.fmt, img, self.out()]

    def post(self, img):
        self.pre(img)


class Compare(Op):
    name, desc = "compare", "compare with an identical copy (made untimed)"
    images = ["A100", "C", "D"]

    def setup(self, img):
        self.twin = img + ".twin"
        sh(["cp", "--sparse=always", img, self.twin])

    def argv(self, img):
        return ["compare", img, self.twin]

    def teardown(self, img):
        os.unlink(self.twin)


class ChainOp(Op):
    """On E (the base) and E-top.qcow2 over it (make-images.sh)."""
    images = ["E"]

    def setup(self, img):
        self.top = os.path.join(self.ctx.work, "E-top.qcow2")
        self.twin = os.path.join(self.ctx.work, "E-twin.qcow2")
        self.fresh_top()
        sh(["sync"])  # no timed run waits for the copy's write-back

    def fresh_top(self):
        if os.path.exists(self.top):
            os.unlink(self.top)
        sh(["cp", "--sparse=always",
            os.path.join(self.ctx.pristine, "E-top.qcow2"), self.top])

    def make_twin(self, img):
        sh(["cp", "--sparse=always", img, self.twin])

    def teardown(self, img):
        for f in (self.top, self.twin):
            if os.path.exists(f):
                os.unlink(f)


class Commit(ChainOp):
    name = "commit"
    desc = "commit E-top into E (both copied afresh before each run)"

    def pre(self, img):
        self.fresh_top()
        os.unlink(img)
        sh(["cp", "--sparse=always",
            os.path.join(self.ctx.pristine, "E.qcow2"), img])
        sh(["sync"])

    def argv(self, img):
        return ["commit", self.top]


class RebaseSafe(ChainOp):
    name = "rebase"
    desc = "rebase E-top onto an identical copy of E (compares all)"

    def setup(self, img):
        super().setup(img)
        self.make_twin(img)
        sh(["sync"])

    def argv(self, img):
        return ["rebase", "-b", "E-twin.qcow2", "-F", "qcow2", self.top]

    def post(self, img):
        sh(["qemu-img", "rebase", "-u", "-b", "E.qcow2", "-F", "qcow2",
            self.top])


class RebaseUnsafe(RebaseSafe):
    name = "rebase-u"
    desc = "rebase -u E-top onto a copy of E (header only)"

    def argv(self, img):
        return ["rebase", "-u", "-b", "E-twin.qcow2", "-F", "qcow2",
                self.top]


class Chain5(Op):
    """On H, the chain of depth 5 (make-images.sh): H.qcow2 <- H-1 <- ...
    <- H-4.qcow2, copied into the working directory (the base by
    work_copy); fresh: every image copied again before each run."""
    images = ["H"]
    fresh = False

    def path(self, k):
        return os.path.join(self.ctx.work,
                            "H.qcow2" if k == 0 else "H-%d.qcow2" % k)

    def copy(self, k):
        if os.path.exists(self.path(k)):
            os.unlink(self.path(k))
        name = os.path.basename(self.path(k))
        sh(["cp", "--sparse=always", os.path.join(self.ctx.pristine, name),
            self.path(k)])

    def setup(self, img):
        for k in range(1, 5):
            self.copy(k)
        sh(["sync"])  # no timed run waits for the copies' write-back

    def pre(self, img):
        if self.fresh:
            for k in range(5):
                self.copy(k)
            sh(["sync"])
        self.clean_out()

    def out(self):
        return os.path.join(self.ctx.work, "chain-out.qcow2")

    def clean_out(self):
        if os.path.exists(self.out()):
            os.unlink(self.out())

    def post(self, img):
        self.clean_out()

    def teardown(self, img):
        self.clean_out()
        for k in range(1, 5):
            os.unlink(self.path(k))


class Chain5Convert(Chain5):
    name = "chain-convert"
    desc = "convert -O qcow2 of H-4 (depth 5, flattened; output removed)"

    def argv(self, img):
        return ["convert", "-O", "qcow2", self.path(4), self.out()]


class Chain5ConvertB(Chain5):
    name = "chain-convert-B"
    desc = "convert -O qcow2 -B H-3.qcow2 of H-4 (only H-4's clusters)"

    def argv(self, img):
        return ["convert", "-O", "qcow2", "-B", "H-3.qcow2", "-F", "qcow2",
                self.path(4), self.out()]


class Chain5Map(Chain5):
    name = "chain-map"
    desc = "map of H-4 through 5 images (human output to /dev/null)"

    def argv(self, img):
        return ["map", self.path(4)]


class Chain5Commit(Chain5):
    name = "chain-commit"
    desc = "commit -b H.qcow2 H-4 (4 overlays into the base; all copied " \
           "afresh before each run)"
    fresh = True

    def argv(self, img):
        return ["commit", "-b", self.path(0), self.path(4)]


class Chain5Rebase(Chain5):
    name = "chain-rebase"
    desc = "rebase -b H.qcow2 H-4 (safe: H-1..H-3's data into H-4; " \
           "copied afresh before each run)"
    fresh = True

    def argv(self, img):
        return ["rebase", "-b", "H.qcow2", "-F", "qcow2", self.path(4)]


class CommitEmpty(Chain5):
    name = "commit-empty"
    desc = "commit of an empty overlay (made untimed) into H-4"

    def pre(self, img):
        super().pre(img)
        sh(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "H-4.qcow2",
            "-F", "qcow2", self.out()])

    def argv(self, img):
        return ["commit", self.out()]


class Chain5RebaseUnsafe(Chain5):
    name = "chain-rebase-u"
    desc = "rebase -u H-4 onto H-3.qcow2 (its own backing file: header only)"

    def argv(self, img):
        return ["rebase", "-u", "-b", "H-3.qcow2", "-F", "qcow2",
                self.path(4)]


class ResizeGrow(Op):
    name, desc = "resize+", "resize +1T (then untimed resize --shrink -1T)"
    images = ["A100", "D", "F"]

    def argv(self, img):
        return ["resize", img, "+1T"]

    def post(self, img):
        sh(["qemu-img", "resize", "-q", "--shrink", img, "-1T"])


class ResizeShrink(Op):
    name, desc = "resize-", "resize --shrink -1T (after untimed resize +1T)"
    images = ["A100", "D", "F"]

    def pre(self, img):
        sh(["qemu-img", "resize", "-q", img, "+1T"])

    def argv(self, img):
        return ["resize", "--shrink", img, "-1T"]


class Amend(Op):
    """amend -o OPTION, then the untimed qimg amend -o RESTORE."""
    images = ["A100", "D", "F"]

    def __init__(self, ctx, name, option, restore):
        super().__init__(ctx)
        self.name, self.option, self.restore = name, option, restore
        self.desc = "amend -o %s (then untimed qimg amend -o %s)" % (
            option, restore)

    def argv(self, img):
        return ["amend", "-o", self.option, img]

    def post(self, img):
        sh([self.ctx.tools["qimg"], "amend", "-o", self.restore, img])


class BenchWrite(Op):
    name = "bench-w4k"
    desc = ("bench -w -s 4k -c %d, scattered (step %d), fresh 2 GiB image"
            % (W4K_COUNT, W4K_STEP))
    images = ["fresh"]
    reported_time = True

    def path(self):
        return os.path.join(self.ctx.work, "fresh.qcow2")

    def trash(self):
        return os.path.join(self.ctx.work, "trash")

    def pre(self, img):
        sh(["qemu-img", "create", "-q", "-f", "qcow2", self.path(),
            str(FRESH_SIZE)])

    def argv(self, img):
        return ["bench", "-w", "-s", "4k", "-c", str(W4K_COUNT),
                "-S", str(W4K_STEP), self.path()]

    def post(self, img):
        # Deleting an image qemu-img bench wrote takes ext4 a minute or
        # more (qimg's: half a second), long enough to disturb the next
        # run: set it aside and delete them all in teardown.
        os.makedirs(self.trash(), exist_ok=True)
        n = len(os.listdir(self.trash()))
        os.rename(self.path(), os.path.join(self.trash(), "%d.qcow2" % n))

    def teardown(self, img):
        shutil.rmtree(self.trash(), ignore_errors=True)


class BenchRead(Op):
    name = "bench-r64k"
    desc = "bench -s 64k -c %d, sequential reads of all of C" % R64K_COUNT
    images = ["C"]
    reported_time = True

    def argv(self, img):
        return ["bench", "-s", "64k", "-c", str(R64K_COUNT), img]


def make_ops(ctx):
    ops = [
        ReadOnly(ctx, "snap-l", "snapshot -l", ["snapshot", "-l"]),
        ReadOnly(ctx, "info", "info", ["info"]),
        ReadOnly(ctx, "check", "check", ["check"], images=IMAGES + ["F"]),
        QimgOnly(ctx, "space", "snapshot -l --space --output=json",
                 ["snapshot", "-l", "--space", "--output=json"]),
        ReadOnly(ctx, "map", "map (human output to /dev/null)", ["map"]),
        Convert(ctx, "raw"),
        Convert(ctx, "qcow2"),
        Compare(ctx),
        Commit(ctx),
        RebaseSafe(ctx),
        RebaseUnsafe(ctx),
        Chain5Convert(ctx),
        Chain5ConvertB(ctx),
        Chain5Map(ctx),
        Chain5Commit(ctx),
        Chain5Rebase(ctx),
        Chain5RebaseUnsafe(ctx),
        CommitEmpty(ctx),
        ResizeGrow(ctx),
        ResizeShrink(ctx),
        Amend(ctx, "amend-rb", "refcount_bits=32", "refcount_bits=16"),
        Amend(ctx, "amend-compat", "compat=0.10", "compat=1.1"),
        SnapCreate(ctx),
        SnapDelete(ctx),
        SnapApplySteady(ctx),
        SnapApplyRewrite(ctx),
        BenchWrite(ctx),
        BenchRead(ctx),
    ]
    return {op.name: op for op in ops}


# ---- Running ------------------------------------------------------------

RUN_RE = re.compile(r"Run completed in ([0-9.]+) seconds")


def one_run(ctx, op, tool, img, before=None):
    """Set-up, timed command, tear-down. Returns (secs, rss KiB) or
    (None, reason). before(img): untimed, right before the command."""
    op.pre(img)
    if before:
        before(img)
    argv = op.tool_argv(tool, img)
    dt, rss, rc, so, se = timed(ctx, argv, want_out=op.reported_time)
    if rc not in op.ok_rc:
        msg = se.strip().splitlines()[-1] if se.strip() else "rc=%d" % rc
        if tool == "qimg" and "not implemented" in se:
            return None, "n/a"
        raise Fail("%s -> %d: %s" % (" ".join(argv), rc, msg))
    op.post(img)
    if op.reported_time:
        m = RUN_RE.search(so)
        if not m:
            raise Fail("%s: no 'Run completed' line" % " ".join(argv))
        dt = float(m.group(1))
    return dt, rss


def work_copy(ctx, image, fresh):
    """Path of the working copy, (re)made from the pristine image."""
    if image == "fresh":
        return None
    src = os.path.join(ctx.pristine, image + ".qcow2")
    dst = os.path.join(ctx.work, image + ".qcow2")
    if not os.path.exists(src):
        raise Fail("%s missing: run bench/make-images.sh" % src)
    if fresh or not os.path.exists(dst) or real_bytes(src) < SMALL_COPY:
        if os.path.exists(dst):
            os.unlink(dst)
        sh(["cp", "--sparse=always", src, dst])
    return dst


def verify(ctx, img):
    """Untimed qemu-img check of the working copy after an operation."""
    if img is None or not ctx.verify:
        return ""
    cp = sh(["qemu-img", "check", img], ok=(0, 1, 2, 3))
    if cp.returncode == 0:
        return ""
    return "qemu-img check rc=%d afterwards" % cp.returncode


# The snapshot to name for each operation's lower bound (bench/iocount.py).
BOUND_OPS = {"snap-c": None, "snap-d": "bench-d", "snap-a": "bench-a",
             "snap-a10": "bench-a"}


def write_bound(ctx, nbytes):
    """Median seconds to write nbytes with dd conv=fdatasync on the
    working copies' file system: into a new file, and over a file of
    that size already written and synced."""
    out = os.path.join(ctx.work, "bound.tmp")
    count = max(1, (nbytes + 4095) // 4096)
    dd = ["dd", "if=/dev/zero", "of=" + out, "bs=4k", "count=%d" % count,
          "status=none"]

    def one(extra):
        t0 = time.monotonic()
        sh(dd + [extra])
        return time.monotonic() - t0
    new, over = [], []
    for _ in range(3):
        if os.path.exists(out):
            os.unlink(out)
        new.append(one("conv=fdatasync"))
        over.append(one("conv=notrunc,fdatasync"))
    os.unlink(out)
    return statistics.median(new), statistics.median(over)


def op_bound(op, img):
    """iocount's lower bound for the operation, from the image just
    before it: .w bytes it must write, .read_offs clusters it must read."""
    import iocount
    im = iocount.Image(img)
    if op.name == "snap-c":
        return iocount.bound_create(im)
    if op.name == "snap-d":
        return iocount.bound_delete(im, BOUND_OPS[op.name])
    return iocount.bound_apply(im, BOUND_OPS[op.name])


def read_bound(path, offs, cs):
    """Median seconds to read the clusters at offs, one os.preadv each,
    in file order, from the page cache as the timed run finds it (about
    0.5 us of each read is Python's)."""
    buf = bytearray(cs)
    fd = os.open(path, os.O_RDONLY)
    times = []
    try:
        for _ in range(3):
            t0 = time.monotonic()
            for o in offs:
                os.preadv(fd, [buf], o)
            times.append(time.monotonic() - t0)
    finally:
        os.close(fd)
    return statistics.median(times)


def measure(ctx, op, image, first):
    img = work_copy(ctx, image, first)
    res = {"op": op.name, "image": image, "qimg": [], "qemu": [],
           "qimg_rss": [], "qemu_rss": [], "note": ""}
    bound = {}

    def take_bound(path):
        if not bound:
            b = op_bound(op, path)
            bound["w"] = b.w
            bound["nr"] = len(b.read_offs)
            bound["r"] = read_bound(path, b.read_offs, b.img.cs)
    want_bound = ctx.bound and op.name in BOUND_OPS and img is not None
    if not ctx.first_op:
        op.setup(img)
    if getattr(op, "mode", None):
        res["note"] = "rewrite: %s" % op.mode
    na = False
    for i in range(ctx.warmup + ctx.runs):
        for tool in ("qimg", "qemu"):
            if tool == "qimg" and na:
                continue
            if ctx.first_op and img is not None:
                # A fresh copy of the image qemu-img made, durable.
                img = work_copy(ctx, image, True)
                sh(["sync", "-d", img])
                op.setup(img)
            hook = take_bound if want_bound and tool == "qimg" and \
                i >= ctx.warmup else None
            t, rss = one_run(ctx, op, tool, img, hook)
            if ctx.first_op and img is not None:
                op.teardown(img)
            if t is None:
                na = True
                continue
            if i >= ctx.warmup:
                res[tool].append(t)
                res[tool + "_rss"].append(rss)
    if not ctx.first_op:
        op.teardown(img)
    note = verify(ctx, img)
    if note:
        res["note"] = (res["note"] + "; " + note).strip("; ")
    if ctx.first_op:
        res["note"] = (res["note"] + "; first operation").strip("; ")
    if bound and res["qimg"]:
        new, over = write_bound(ctx, bound["w"])
        q = statistics.median(res["qimg"])
        r = bound["r"]
        res["note"] = (res["note"] + "; write bound %.0f KiB: new blocks "
                       "%s (qimg %.2fx), over existing %s (%.2fx); read "
                       "bound %d clusters %s: read + new %.2fx, read + "
                       "over %.2fx" % (
                           bound["w"] / 1024, fmt_t(new), q / new,
                           fmt_t(over), q / over, bound["nr"], fmt_t(r),
                           q / (r + new), q / (r + over))).strip("; ")
    return res


def summarize(res):
    q, e = res["qimg"], res["qemu"]
    s = {"op": res["op"], "image": res["image"], "note": res["note"]}
    s["qimg"] = statistics.median(q) if q else None
    s["qemu"] = statistics.median(e) if e else None
    pairs = [b / a for a, b in zip(q, e) if a > 0]
    s["ratio"] = statistics.median(pairs) if pairs else None
    s["qimg_rss"] = max(res["qimg_rss"]) / 1024 if q else None
    s["qemu_rss"] = max(res["qemu_rss"]) / 1024 if e else None
    s["n"] = len(q) or len(e)
    return s


def fmt_t(v):
    if v is None:
        return "n/a"
    if v < 0.01:
        return "%.2f ms" % (v * 1e3)
    if v < 1:
        return "%.1f ms" % (v * 1e3)
    return "%.2f s" % v


def fmt_r(v):
    return "n/a" if v is None else ("%.1fx" % v if v < 100 else "%.0fx" % v)


def fmt_m(v):
    return "n/a" if v is None else "%.1f" % v


HEAD = ["operation", "image", "qimg", "qemu-img", "qemu/qimg",
        "qimg RSS MiB", "qemu RSS MiB", "notes"]


def rows(summaries):
    for s in summaries:
        yield [s["op"], s["image"], fmt_t(s["qimg"]), fmt_t(s["qemu"]),
               fmt_r(s["ratio"]), fmt_m(s["qimg_rss"]), fmt_m(s["qemu_rss"]),
               s["note"]]


def print_table(summaries, markdown, f=sys.stdout):
    body = list(rows(summaries))
    if markdown:
        print("| " + " | ".join(HEAD) + " |", file=f)
        print("|" + "|".join("---" for _ in HEAD) + "|", file=f)
        for r in body:
            print("| " + " | ".join(r) + " |", file=f)
        return
    w = [max(len(x) for x in col) for col in zip(HEAD, *body)]
    for r in [HEAD] + body:
        print("  ".join(x.ljust(n) for x, n in zip(r, w)).rstrip(), file=f)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-i", "--images",
                   default=",".join(IMAGES + ["E", "F", "H", "fresh"]),
                   help="comma-separated images (default: all)")
    p.add_argument("-o", "--ops", default="",
                   help="comma-separated operations (default: all)")
    p.add_argument("-n", "--runs", type=int, default=5)
    p.add_argument("-w", "--warmup", type=int, default=1)
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--json", help="also write raw timings to this file")
    p.add_argument("--rewrite", choices=["auto", "data", "zero"],
                   default="auto")
    p.add_argument("--first-op", action="store_true",
                   help="every timed run on a fresh sparse copy of the "
                   "pristine image (copy untimed, synced)")
    p.add_argument("--bound", action="store_true",
                   help="snapshot operations: time writing what the "
                   "operation must write (bench/iocount.py's bound) with "
                   "dd conv=fdatasync, into new blocks and over existing "
                   "ones, and reading what it must read (one pread per "
                   "cluster), and give qimg's time as a multiple of them")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the untimed qemu-img check after each op")
    p.add_argument("--any-image", action="store_true",
                   help="run every op on every selected image (convert of "
                   "A reads 1 TiB)")
    p.add_argument("--qimg", default=os.path.join(ROOT, "build", "qimg"))
    p.add_argument("--qemu-img", default="qemu-img")
    p.add_argument("--list", action="store_true")
    p.add_argument("--from-json", metavar="FILE",
                   help="print the tables of an earlier --json run")
    return p.parse_args()


def main():
    ctx = parse_args()
    ctx.pristine = os.path.join(BENCH_DIR, "pristine")
    ctx.work = os.path.join(BENCH_DIR, "copies")
    ctx.tools = {"qimg": ctx.qimg, "qemu": ctx.qemu_img}
    os.makedirs(ctx.work, exist_ok=True)
    ctx.spawn = spawn_helper(ctx.work)
    ops = make_ops(ctx)
    if ctx.from_json:
        with open(ctx.from_json) as f:
            print_table([summarize(r) for r in json.load(f)], ctx.markdown)
        return 0
    if ctx.list:
        for op in ops.values():
            print("%-11s %-22s %s" % (op.name, ",".join(op.images), op.desc))
        return 0
    names = ctx.ops.split(",") if ctx.ops else list(ops)
    images = ctx.images.split(",")
    bad = [n for n in names if n not in ops]
    if bad:
        sys.exit("unknown operation(s): %s (see --list)" % ", ".join(bad))
    summaries, raw = [], []
    for image in images:
        first = True
        for name in names:
            op = ops[name]
            if image not in op.images and not (ctx.any_image and
                                               image != "fresh" and
                                               op.images != ["fresh"]):
                continue
            print("# %s on %s ..." % (name, image), file=sys.stderr,
                  flush=True)
            try:
                res = measure(ctx, op, image, first)
            except Fail as e:
                res = {"op": name, "image": image, "qimg": [], "qemu": [],
                       "qimg_rss": [], "qemu_rss": [],
                       "note": "FAILED: %s" % str(e).splitlines()[0][:200]}
                print("#   %s" % e, file=sys.stderr)
            first = False
            raw.append(res)
            s = summarize(res)
            summaries.append(s)
            print_table([s], False, sys.stderr)
        if image != "fresh":
            dst = os.path.join(ctx.work, image + ".qcow2")
            if os.path.exists(dst):
                os.unlink(dst)
    print_table(summaries, ctx.markdown)
    if ctx.json:
        with open(ctx.json, "w") as f:
            json.dump(raw, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
