#!/usr/bin/python3
"""check_layers.py - hold lib/ to the layers of docs/ARCHITECTURE.md.

Reads every lib/*.c and lib/*.h as text and fails (exit 1, one line per
finding) when
  - a file belongs to no layer below (a new module must be placed);
  - a lib file includes internal.h (the aggregate header is for tests);
  - a file includes the header of a module in a higher layer;
  - the modules' includes, or the files' calls (a name one .c file
    defines and another uses), form a circle, other than the one the
    backing chain needs (guest <-> backing);
  - a file writes state another module owns: image.h's fields, or a
    table module's state behind q->rc, q->l1s, q->sn, q->meta.

Between modules, calls follow includes: with -Werror a call needs the
callee's prototype, which lives in its module's header. Within a module
split over several files (txn*, check*, amend*) the files share one private
header, so their calls are read from the code itself.

  tests/check_layers.py [LIB_DIR]
  tests/check_layers.py --self-test   # each rule fires on a planted fault
"""
import os
import re
import shutil
import sys
import tempfile

# Bottom to top. A file may include headers of its own layer or lower.
LAYERS = [
    ("base", ["util", "endian", "error", "idset", "cache", "compress",
              "header", "io", "lock"]),
    ("file", ["image", "file"]),
    ("header sector", ["roots"]),
    ("metadata map", ["meta"]),
    ("tables", ["refcount", "l1l2", "snaptable", "bitmap", "l2runs"]),
    ("flush order, census", ["flush", "metaset", "newrefs"]),
    ("operations", ["guest", "backing", "txn", "rebuild", "amend", "compact"]),
    ("whole image", ["check", "qcow2", "open", "create"]),
    ("public API", ["imageapi", "snapapi", "bitmapapi", "spaceapi",
                    "diffapi", "info"]),
]
# The one circle: a guest read of an unallocated range reads the backing
# image, which is a guest read of the image below.
ALLOWED_CIRCLE = {"guest", "backing"}
EXEMPT = {"internal.h"}

LAYER_OF = {m: i for i, (_, mods) in enumerate(LAYERS) for m in mods}

ASSIGN = r"\s*(?:=(?!=)|\+=|-=|\|=|&=|\^=|<<=|>>=|\+\+|--)"
# (pattern, files allowed to match it, what it protects)
OWNED = [
    (r"(?:\bimg|->img)->(?:io|read_write|unsynced|zero_from)\b" + ASSIGN,
     {"file.c"}, "the file fields of qimg_image"),
    (r"(?:\bq|->q)->file_size\b" + ASSIGN, {"file.c"}, "qcow2.file_size"),
    (r"(?:\bimg|->img)->size\b" + ASSIGN, {"roots.c"}, "qimg_image.size"),
    (r"(?:\bimg|->img)->(?:filename|fmt|is_view|backing)\b" + ASSIGN,
     {"open.c"}, "qimg_image's identity"),
    (r"(?:\bimg|->img)->q\b" + ASSIGN, {"qcow2.c"}, "qimg_image.q"),
    (r"->hdr\.\w+(?:\[[^]]*\])?" + ASSIGN, {"roots.c"}, "the header copy"),
    (r"(?<!const )struct qcow2_header \*\w+ = &", {"roots.c"},
     "the header copy (a writable pointer to it)"),
    (r"->(?:corrupt_signalled)\b" + ASSIGN, {"roots.c"}, "the corrupt flag"),
    (r"->(?:bitmaps_marked|bitmaps_held|tracked)\b" + ASSIGN, {"bitmap.c"},
     "bitmaps_marked, bitmaps_held, tracked"),
    (r"(?:\bq|->q)->(?:cluster_bits|cluster_size|l2_bits|l2_entries|"
     r"l2_entry_size|ext_l2|sc_bits|refcount_order|rb_bits|refcount_max|"
     r"csize_shift|csize_mask|coff_mask)\b" + ASSIGN,
     {"qcow2.c"}, "the geometry"),
]
for field, owner in (("rc", "refcount.c"), ("l1s", "l1l2.c"),
                     ("sn", "snaptable.c"), ("meta", "meta.c")):
    OWNED += [
        (r"->%s\b(?:->\w+(?:\[[^]]*\])?(?:\.\w+)?)?%s" % (field, ASSIGN),
         {owner}, "q->%s" % field),
        # a function's first argument is what it changes, by convention
        (r"\w\(\s*&[\w>.-]*->%s->" % field, {owner},
         "q->%s (by address)" % field),
        (r"\b(?:be16_store|be32_store|be64_store|memcpy|memset|memmove|"
         r"l1_entry_set|refblock_set|l2_entry_set)\(\s*[\w>.-]*->%s->" % field,
         {owner}, "q->%s (its tables)" % field),
    ]
OWNED = [(re.compile(p), f, w) for p, f, w in OWNED]

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
DEFINE = re.compile(r"^(?!static\b)[A-Za-z_][\w \t*]*?\b(\w+)\([^;]*?$", re.M)
CALL = re.compile(r"\b(\w+)\s*\(")


def module_of(name):
    stem = name.rsplit(".", 1)[0]
    if stem.startswith("io-"):
        return "io"
    for prefix in ("txn_", "check_", "amend_", "bitmap_"):
        if stem.startswith(prefix):
            return prefix[:-1]
    return stem


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"),
                  text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def check(lib):
    problems = []
    files = sorted(f for f in os.listdir(lib)
                   if f.endswith((".c", ".h")) and f not in EXEMPT)
    edges = {}
    for f in files:
        mod = module_of(f)
        if mod not in LAYER_OF:
            problems.append("%s: in no layer (add module '%s' to "
                            "tests/check_layers.py)" % (f, mod))
            continue
        text = open(os.path.join(lib, f), encoding="utf-8").read()
        for inc in INCLUDE.findall(text):
            if inc == "qimg.h":
                continue
            if inc in EXEMPT:
                problems.append("%s: includes %s (tests only)" % (f, inc))
                continue
            dep = module_of(inc)
            if dep not in LAYER_OF:
                problems.append("%s: includes %s, in no layer" % (f, inc))
                continue
            if LAYER_OF[dep] > LAYER_OF[mod]:
                problems.append("%s: includes %s: layer '%s' is above '%s'"
                                % (f, inc, LAYERS[LAYER_OF[dep]][0],
                                   LAYERS[LAYER_OF[mod]][0]))
            if dep != mod:
                edges.setdefault(mod, set()).add(dep)
        code = strip_comments(text)
        for lineno, line in enumerate(code.split("\n"), 1):
            for pat, owners, what in OWNED:
                if f.endswith(".c") and f not in owners and pat.search(line):
                    problems.append("%s:%d: writes %s (owned by %s)"
                                    % (f, lineno, what, ", ".join(owners)))
    problems += circles(edges)
    problems += circles(call_edges(lib, files), "files")
    return problems, len(files)


def call_edges(lib, files):
    """.c file -> the .c files whose non-static functions it calls."""
    sources = [f for f in files if f.endswith(".c")]
    code = {f: strip_comments(open(os.path.join(lib, f),
                                   encoding="utf-8").read())
            for f in sources}
    owner = {}
    for f in sources:
        for name in DEFINE.findall(code[f]):
            owner.setdefault(name, f)
    edges = {}
    for f in sources:
        for name in set(CALL.findall(code[f])):
            g = owner.get(name)
            if g and g != f:
                edges.setdefault(f, set()).add(g)
    return edges


def circles(edges, what="modules"):
    """Strongly connected components with more than one member."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            names = {module_of(x) if what == "files" else x for x in comp}
            if len(comp) > 1 and not (names == ALLOWED_CIRCLE and
                                      len(comp) == 2):
                out.append("circle of %s: %s" % (what,
                                                  " -> ".join(sorted(comp))))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def self_test(lib):
    """Plant one fault of each kind in a copy of lib/ and expect a finding."""
    faults = [
        ("file.c", '#include "file.h"\n', '#include "file.h"\n#include "txn.h"\n',
         "layer"),
        ("meta.c", '#include "meta.h"\n', '#include "meta.h"\n#include "internal.h"\n',
         "tests only"),
        ("refcount.c", '#include "refcount.h"\n',
         '#include "refcount.h"\n#include "l1l2.h"\n', "circle"),
        ("txn.c", "\n#include", "\nstatic void f(struct qcow2 *q) { q->rc->free_hint = 0; }\n#include",
         "owned by refcount.c"),
        ("guest.c", "\n#include", "\nstatic void f(qimg_image *img) { img->size = 0; }\n#include",
         "owned by roots.c"),
        ("check.c", "\n#include", "\nstatic void f(struct qcow2 *q) { mcache_clear(&q->l1s->l2c); }\n#include",
         "by address"),
        ("flush.c", "\n#include", "\nstatic void f(qimg_image *img) { img->q->hdr.size = 1; }\n#include",
         "header copy"),
        ("txn_refs.c", "\n#include <errno.h>", "\n#include <errno.h>\nstatic void f(struct txn *t) { txn_place_free(t); }",
         "circle of files"),
    ]
    ok = True
    base, _ = check(lib)
    if base:
        print("self-test needs a clean tree:", *base, sep="\n  ")
        return False
    for name, old, new, expect in faults:
        with tempfile.TemporaryDirectory() as d:
            copy = os.path.join(d, "lib")
            shutil.copytree(lib, copy)
            p = os.path.join(copy, name)
            text = open(p).read()
            if old not in text:
                print("self-test: cannot plant in %s" % name)
                ok = False
                continue
            open(p, "w").write(text.replace(old, new, 1))
            found, _ = check(copy)
            hit = [x for x in found if expect in x]
            print("%s %s: %s" % ("ok  " if hit else "MISS", name,
                                 hit[0] if hit else "no finding"))
            ok &= bool(hit)
    return ok


def main():
    args = sys.argv[1:]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if args and args[0] == "--self-test":
        lib = args[1] if len(args) > 1 else os.path.join(root, "lib")
        return 0 if self_test(lib) else 1
    lib = args[0] if args else os.path.join(root, "lib")
    problems, n = check(lib)
    for p in problems:
        print(p)
    print("%d files in %d layers: %s" % (n, len(LAYERS),
                                        "ok" if not problems else
                                        "%d problems" % len(problems)))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
