#!/bin/sh
# build-fuzzers.sh - build the libFuzzer targets (fuzz_*.c) with clang,
# AddressSanitizer and UndefinedBehaviorSanitizer.
#
# The meson project is compiled by the system compiler (gcc), which has no
# libFuzzer, so the targets are built here: lib/*.c with coverage
# instrumentation, then each target linked with -fsanitize=fuzzer. Exits 77
# (skipped) when the compiler cannot build a fuzzer.
#
# Usage: tests/fuzz/build-fuzzers.sh [OUTDIR]   (default: build-fuzz)
#        CC=clang-15 tests/fuzz/build-fuzzers.sh
# Then:  tests/fuzz/run-fuzzer.sh fuzz_check 600
set -eu

root=$(cd "$(dirname "$0")/../.." && pwd)
out=${1:-$root/build-fuzz}
CC=${CC:-clang}
san=address,undefined
cflags="-g -O1 -fno-omit-frame-pointer -fno-sanitize-recover=all -std=c17
 -Wall -Wextra -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -I$root/include
 -I$root/lib"
libs="-lz -lzstd"

mkdir -p "$out/obj"
probe=$out/obj/probe.c
echo 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n)
{ (void)d; (void)n; return 0; }' >"$probe"
if ! $CC -fsanitize=fuzzer,$san "$probe" -o "$out/obj/probe" 2>/dev/null; then
    echo "build-fuzzers.sh: $CC cannot build libFuzzer targets; skipped" >&2
    exit 77
fi

# The library, instrumented for coverage but without libFuzzer's main().
objs=
for src in "$root"/lib/*.c "$root"/tests/fuzz/fuzz_common.c; do
    obj=$out/obj/$(basename "$src" .c).o
    # shellcheck disable=SC2086
    $CC $cflags -fsanitize=fuzzer-no-link,$san -DQIMG_BUILDING \
        -DQIMG_VERSION='"fuzz"' -c "$src" -o "$obj"
    objs="$objs $obj"
done

for src in "$root"/tests/fuzz/fuzz_*.c; do
    name=$(basename "$src" .c)
    [ "$name" = fuzz_common ] && continue
    # shellcheck disable=SC2086
    $CC $cflags -fsanitize=fuzzer,$san "$src" $objs $libs -o "$out/$name"
    echo "built $out/$name"
done
