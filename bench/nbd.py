#!/usr/bin/python3
"""nbd.py - nbdkit-qimg-plugin beside qemu-nbd serving the same qcow2.

For each server, on a fresh sparse copy of the pristine image (made
durable before, untimed), over a Unix socket on the same machine:
  read   nbdcopy of the whole disk to null: (extents first, so holes are
         skipped and the data is read, 4 connections as nbdcopy chooses)
  w4k    qemu-img bench -w of COUNT 4 KiB writes scattered over the disk
         (a Weyl step, queue depth 1, then a flush)
Servers alternate per run; the median of --runs is printed with the
paired ratio (qemu-nbd time / plugin time: > 1, the plugin is faster).
qemu-nbd runs as qemu-img would use it: -f qcow2, cache=writeback,
--discard=unmap.

  bench/nbd.py [-i IMAGE] [-n RUNS] [--count N] [--plugin PATH]
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_DIR = os.environ.get("QIMG_BENCH_DIR",
                           os.path.join(ROOT, "build", "bench-images"))


def serve(server, img, sock, plugin):
    if os.path.exists(sock):
        os.unlink(sock)
    if server == "plugin":
        argv = ["nbdkit", "-f", "-U", sock, plugin, "file=" + img]
    else:
        argv = ["qemu-nbd", "-f", "qcow2", "--cache=writeback",
                "--discard=unmap", "-k", sock, "--shared=8", img]
    p = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
    for _ in range(500):
        if os.path.exists(sock):
            break
        time.sleep(0.01)
    time.sleep(0.1)
    return p


def timed(argv):
    t0 = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-i", "--image", default="G")
    p.add_argument("-n", "--runs", type=int, default=3)
    p.add_argument("--count", type=int, default=20000)
    p.add_argument("--plugin",
                   default=os.path.join(ROOT, "build",
                                        "nbdkit-qimg-plugin.so"))
    a = p.parse_args()
    src = os.path.join(BENCH_DIR, "pristine", a.image + ".qcow2")
    work = os.path.join(BENCH_DIR, "copies")
    os.makedirs(work, exist_ok=True)
    img = os.path.join(work, "nbd-" + a.image + ".qcow2")
    sock = os.path.join(work, "nbd.sock")
    uri = "nbd+unix:///?socket=" + sock
    size = int(subprocess.run(["qemu-img", "info", "--output=json", src],
                              capture_output=True, text=True,
                              check=True).stdout.split('"virtual-size": ')[1]
               .split(",")[0])
    step = 4096 * 324035 % size
    res = {(s, k): [] for s in ("plugin", "qemu-nbd") for k in ("read", "w4k")}
    for _ in range(a.runs):
        for server in ("plugin", "qemu-nbd"):
            for kind in ("read", "w4k"):
                subprocess.run(["cp", "--sparse=always", src, img], check=True)
                subprocess.run(["sync", "-d", img], check=True)
                srv = serve(server, img, sock, a.plugin)
                try:
                    if kind == "read":
                        t = timed(["nbdcopy", uri, "null:"])
                    else:
                        t = timed(["qemu-img", "bench", "-f", "raw", "-w",
                                   "-c", str(a.count), "-s", "4k", "-S",
                                   str(step), "-d", "1", uri])
                finally:
                    srv.terminate()
                    srv.wait()
                res[(server, kind)].append(t)
                r = subprocess.run(["qemu-img", "check", img],
                                   capture_output=True, text=True)
                if r.returncode != 0:
                    sys.exit("qemu-img check after %s %s: %s" %
                             (server, kind, r.stdout))
    os.unlink(img)
    print("image %s (%d GiB virtual), %d runs" % (a.image, size >> 30,
                                                  a.runs))
    print("| operation | nbdkit qimg | qemu-nbd | qemu-nbd/plugin |")
    print("|---|---|---|---|")
    for kind, name in (("read", "nbdcopy whole disk to null:"),
                       ("w4k", "%d x 4 KiB writes, QD1 (qemu-img bench)"
                        % a.count)):
        q, n = res[("plugin", kind)], res[("qemu-nbd", kind)]
        pairs = [b / x for x, b in zip(q, n)]
        print("| %s | %.2f s | %.2f s | %.2fx |" % (
            name, statistics.median(q), statistics.median(n),
            statistics.median(pairs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
