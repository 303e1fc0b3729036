#!/bin/sh
# libqimg.so exports only the public API: every defined dynamic symbol
# starts with qimg_.
set -eu
lib=$1
bad=$(nm -D --defined-only "$lib" | awk '{print $3}' | grep -v '^qimg_' || true)
if [ -n "$bad" ]; then
    echo "symbols exported beyond qimg_*:" >&2
    echo "$bad" >&2
    exit 1
fi
n=$(nm -D --defined-only "$lib" | grep -c ' qimg_')
[ "$n" -gt 10 ] || { echo "only $n qimg_ symbols exported" >&2; exit 1; }
echo "$n symbols, all qimg_*"
