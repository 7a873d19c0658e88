#!/bin/bash
# Runs one libFuzzer harness (automake FUZZ_LOG_COMPILER in a build made
# with configure CC=clang --enable-fuzzing; scripts/fuzz.sh for longer runs):
#
#   fuzz/run.sh fuzz/NAME.fuzz [extra libFuzzer options]
#
# Runs fuzz/fuzz_NAME (from VEIL_BUILDDIR) over its seeds in
# VEIL_SRCDIR/fuzz/corpus/NAME, then fuzzes for VEIL_FUZZ_SECONDS seconds
# (default 60) with the options in fuzz/NAME.fuzz (one per line, '#'
# comments).  New inputs go to BUILDDIR/fuzz/work/NAME (never into the
# source tree); a crash, leak, timeout or sanitizer report leaves its input
# in BUILDDIR/fuzz/artifacts/NAME/ and fails (exit 1).  Prints libFuzzer's
# final statistics, stat::number_of_executed_units among them.
set -euo pipefail
spec=${1:?usage: run.sh fuzz/NAME.fuzz [libFuzzer options]}
shift
name=$(basename "$spec" .fuzz)
B=${VEIL_BUILDDIR:-.}
SRC=${VEIL_SRCDIR:-$(cd "$(dirname "$0")/.." && pwd)}
secs=${VEIL_FUZZ_SECONDS:-60}
bin="$B/fuzz/fuzz_$name"
[ -x "$bin" ] || { echo "run.sh: $bin is not built" >&2; exit 99; }
seeds="$SRC/fuzz/corpus/$name"
[ -d "$seeds" ] || { echo "run.sh: no seed corpus $seeds" >&2; exit 99; }
work="$B/fuzz/work/$name"
art="$B/fuzz/artifacts/$name"
mkdir -p "$work" "$art"
opts=()
[ -f "$spec" ] || spec="$SRC/fuzz/$name.fuzz"
while read -r line; do
    case $line in '' | '#'*) continue ;; esac
    opts+=("$line")
done <"$spec"
# ASan as make check sets it, plus a ceiling on one allocation
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}:max_allocation_size_mb=1024:allocator_may_return_null=0"
echo "run.sh: $bin over $seeds, then ${secs} s; options: ${opts[*]} $*"
exec "$bin" "${opts[@]}" -max_total_time="$secs" -print_final_stats=1 \
    -artifact_prefix="$art/" "$@" "$work" "$seeds"
