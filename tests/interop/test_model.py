"""Randomized model test: random guest I/O and snapshot operations on one
image, checked against an in-memory model (tests/interop/model.c), with
qimg's check after every step and qemu-img check at random points and at
the end. The seed is printed on failure."""
import os

import pytest

from conftest import run

MODEL = os.environ.get("QIMG_MODEL") or os.path.join(
    os.path.dirname(__file__), "..", "..", "build", "tests", "model")

# cluster_size compat refcount_bits extended_l2 compression_type
VARIANTS = [
    (65536, 3, 16, 0, 0),
    (512, 3, 64, 0, 0),
    (4096, 2, 16, 0, 0),
    (65536, 3, 2, 0, 1),
    (32768, 3, 8, 1, 0),
    (2097152, 3, 32, 0, 0),
]


# The sanitizer build runs one seed per variant (model.c's time is the
# same per step in both builds; the second seed is more orderings).
SANITIZED = os.environ.get("QIMG_SANITIZE", "none") != "none"


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(map(str, v)))
@pytest.mark.parametrize("seed", [1] if SANITIZED else [1, 2])
def test_model(tmp, variant, seed):
    img = tmp / "model.qcow2"
    r = run([MODEL, str(img), str(seed), "300"] + [str(v) for v in variant])
    assert r.rc == 0, r
