#!/usr/bin/python3
"""compact.py - qimg compact beside qemu-img convert, qemu-img's only way
to give a qcow2 file's free space back, on image G of make-images.sh
(snapshots deleted down to a third).

Every timed run starts from a fresh sparse copy of the pristine image
(cp --sparse=always and sync -d, untimed: the page cache is then warm and
the copy durable, so no tool's flush writes the copy). The tools
alternate (qimg, qemu-img, qimg, ...). Printed per tool: the median wall
time, the file it leaves (apparent size and blocks allocated), the peak
extra space the command took on the file system while it ran (the
allocated bytes of the image and of convert's output, sampled every 2 ms,
minus those of the copy before), and the snapshots kept. qemu-img convert
returns with its output in the page cache; it is also timed with a sync
of the output after it (compact's writes are durable when it returns: its
switch needs them so). Beside them the bound: what compact moved (its
--output=json moved-bytes) written into a new file with dd conv=fdatasync
on the same file system. (compact writes into the holes of the image
instead, which costs ext4 about twice as much: filling 512 MiB of holes
in the middle of a file took 0.93 s where a new file took 0.47 s.)
Reading the moved data from the page cache is not counted (a few ms).

  bench/compact.py [-n RUNS] [-i IMAGE] [--qimg PATH]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_DIR = os.environ.get("QIMG_BENCH_DIR",
                           os.path.join(ROOT, "build", "bench-images"))


def allocated(paths):
    n = 0
    for p in paths:
        try:
            n += os.stat(p).st_blocks * 512
        except FileNotFoundError:
            pass
    return n


def timed(argv, watch):
    """Run argv; (seconds, peak extra allocation, stdout)."""
    base = allocated(watch)
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], allocated(watch))
            time.sleep(0.002)

    t = threading.Thread(target=sample)
    t.start()
    t0 = time.monotonic()
    cp = subprocess.run(argv, capture_output=True, text=True)
    dt = time.monotonic() - t0
    done.set()
    t.join()
    peak[0] = max(peak[0], allocated(watch))
    if cp.returncode != 0:
        sys.exit("%s -> %d: %s" % (" ".join(argv), cp.returncode, cp.stderr))
    return dt, peak[0] - base, cp.stdout


def snapshots(path):
    info = json.loads(subprocess.run(
        ["qemu-img", "info", "--output=json", path], capture_output=True,
        text=True, check=True).stdout)
    return len(info.get("snapshots", []))


def check(path):
    r = subprocess.run(["qemu-img", "check", path], capture_output=True,
                       text=True)
    if r.returncode != 0:
        sys.exit("qemu-img check %s -> %d\n%s" % (path, r.returncode, r.out))


def bound(work, nbytes):
    """Seconds to write nbytes into a new file and fdatasync it."""
    out = os.path.join(work, "bound.tmp")
    args = ["dd", "if=/dev/zero", "of=" + out, "bs=1M",
            "count=%d" % max(1, nbytes >> 20), "conv=fdatasync",
            "status=none"]
    t0 = time.monotonic()
    subprocess.run(args, check=True)
    dt = time.monotonic() - t0
    os.unlink(out)
    return dt


def fmt_b(n):
    return "%.2f GiB" % (n / 2**30) if n >= 2**30 else "%.1f MiB" % (n / 2**20)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-n", "--runs", type=int, default=3)
    p.add_argument("-i", "--image", default="G")
    p.add_argument("--qimg", default=os.path.join(ROOT, "build", "qimg"))
    a = p.parse_args()
    src = os.path.join(BENCH_DIR, "pristine", a.image + ".qcow2")
    work = os.path.join(BENCH_DIR, "copies")
    os.makedirs(work, exist_ok=True)
    if not os.path.exists(src):
        sys.exit("%s missing: QIMG_BENCH_ONLY=%s bench/make-images.sh" %
                 (src, a.image))
    img = os.path.join(work, a.image + ".qcow2")
    out = os.path.join(work, "convert-out.qcow2")
    res = {"qimg": [], "qemu": [], "qemu-sync": []}
    for _ in range(a.runs):
        for tool in ("qimg", "qemu", "qemu-sync"):
            for f in (img, out):
                if os.path.exists(f):
                    os.unlink(f)
            subprocess.run(["cp", "--sparse=always", src, img], check=True)
            subprocess.run(["sync", "-d", img], check=True)
            old = (os.path.getsize(img), allocated([img]))
            if tool == "qimg":
                dt, peak, so = timed([a.qimg, "compact", "--output=json",
                                      img], [img])
                moved = json.loads(so)["moved-bytes"]
                left = img
            else:
                conv = ["qemu-img", "convert", "-O", "qcow2", img, out]
                if tool == "qemu-sync":
                    conv = ["sh", "-c", '"$@" && sync -d "$6"', "sh"] + conv
                dt, peak, _ = timed(conv, [img, out])
                moved = None
                left = out
            check(left)
            res[tool].append({"t": dt, "peak": peak, "moved": moved,
                              "size": os.path.getsize(left),
                              "alloc": allocated([left]),
                              "snaps": snapshots(left), "old": old})
    moved = statistics.median(r["moved"] for r in res["qimg"])
    b = statistics.median(bound(work, moved) for _ in range(3))
    for f in (img, out):
        if os.path.exists(f):
            os.unlink(f)
    old = res["qimg"][0]["old"]
    print("image %s: %s apparent, %s allocated, %d snapshots; %d runs each"
          % (a.image, fmt_b(old[0]), fmt_b(old[1]), snapshots(src), a.runs))
    print("| command | time (median) | file after (apparent / allocated) "
          "| peak extra space | snapshots kept |")
    print("|---|---|---|---|---|")
    for tool, name in (("qimg", "qimg compact"),
                       ("qemu", "qemu-img convert -O qcow2"),
                       ("qemu-sync", "qemu-img convert -O qcow2, then sync "
                                     "-d of its output")):
        rs = res[tool]
        print("| %s | %.2f s | %s / %s | %s | %d |" % (
            name, statistics.median(r["t"] for r in rs),
            fmt_b(statistics.median(r["size"] for r in rs)),
            fmt_b(statistics.median(r["alloc"] for r in rs)),
            fmt_b(max(r["peak"] for r in rs)), rs[0]["snaps"]))
    tq = statistics.median(r["t"] for r in res["qimg"])
    te = statistics.median(r["t"] for r in res["qemu"])
    pairs = [e["t"] / q["t"] for q, e in zip(res["qimg"], res["qemu"])]
    ts = statistics.median(r["t"] for r in res["qemu-sync"])
    print("| bound: %s (what compact moved) into a new file, fdatasync "
          "| %.2f s | | | |" % (fmt_b(moved), b))
    print()
    print("qemu-img convert / qimg compact: %.2fx (median of pairs %.2fx), "
          "with its sync %.2fx; qimg compact / bound: %.2fx" % (
              te / tq, statistics.median(pairs), ts / tq, tq / b))
    return 0


if __name__ == "__main__":
    sys.exit(main())
