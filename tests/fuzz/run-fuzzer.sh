#!/bin/sh
# run-fuzzer.sh - run one libFuzzer target (built by build-fuzzers.sh) for a
# while, starting from the seed corpus.
#
# New inputs go to a working corpus beside the binary (never into
# tests/fuzz/corpus); crashes, timeouts, leaks and out-of-memory inputs go
# to OUTDIR/artifacts-TARGET/. Copy one that reproduces into
# tests/fuzz/regressions/ as TARGET-<what>.
#
# Usage: tests/fuzz/run-fuzzer.sh TARGET SECONDS [OUTDIR] [-- LIBFUZZER-ARGS]
# The binary is taken from $FUZZ_BUILD (default: build-fuzz); OUTDIR
# defaults to the same directory.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
target=$1
seconds=$2
shift 2
bin=${FUZZ_BUILD:-$here/../../build-fuzz}
out=$bin
if [ $# -gt 0 ] && [ "$1" != -- ]; then
    out=$1
    shift
fi
[ $# -gt 0 ] && [ "$1" = -- ] && shift

work=$out/corpus-$target
art=$out/artifacts-$target
mkdir -p "$work" "$art"
exec "$bin/$target" -max_len=1048576 -timeout=10 -rss_limit_mb=2048 \
    -max_total_time="$seconds" -print_final_stats=1 \
    -artifact_prefix="$art/" "$@" "$work" "$here/corpus"
