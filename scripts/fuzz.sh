#!/bin/bash
# Longer fuzzing runs than `make check`'s 60 s per harness (docs/SECURITY.md,
# "Fuzzing").
#
#   scripts/fuzz.sh [--time SECONDS] [--runs N] [NAME...]
#       builds build-fuzz/ (CC=clang --enable-fuzzing) if it is not there,
#       then runs each harness (default: all of fuzz/*.fuzz) one after the
#       other at nice 10, until SECONDS (default 600) or N executions,
#       whichever comes first, through fuzz/run.sh (seeds, options and
#       sanitizers as in make check).  Prints one line per harness:
#         NAME: EXECUTIONS executions in SECONDS s, RESULT
#       and its log is build-fuzz/fuzz/long-NAME.log.  Exit 1 when a
#       harness failed (its input is in build-fuzz/fuzz/artifacts/NAME/).
#   scripts/fuzz.sh --seed
#       rewrites the seed corpora with fuzz/gen_corpus (keys in fuzz/data
#       are kept).
#   scripts/fuzz.sh --seed-attest
#       runs tests/test_attest_tpm.sh (real swtpm) in build-san/ and copies
#       its trust files and evidence into fuzz/corpus/attest, and its
#       trust file and first maximum evidence into fuzz/data/trust.json and
#       fuzz/data/evidence.json.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B="$ROOT/build-fuzz"
JOBS=$(nproc 2>/dev/null || echo 2)

build() {
    [ -x "$ROOT/configure" ] || (cd "$ROOT" && autoreconf -fi)
    mkdir -p "$B"
    (cd "$B" && { [ -f Makefile ] || "$ROOT/configure" -q CC=clang --enable-fuzzing; } &&
        make -s -j"$JOBS" && make -s -j"$JOBS" fuzz/fuzz_package fuzz/fuzz_json_scan \
            fuzz/fuzz_tpm fuzz/fuzz_attest fuzz/fuzz_http fuzz/fuzz_ohttp)
}

seed_attest() {
    local san="$ROOT/build-san" keep dir T u
    [ -x "$san/veil" ] || { echo "fuzz.sh: build build-san first (scripts/quickstart.sh test)" >&2; exit 2; }
    # the test's backend (a check program, which plain make does not build)
    (cd "$san" && make -s -j"$JOBS" tests/mock-upstream)
    keep=$(cd "$san" && VEIL_SRCDIR="$ROOT" VEIL_BUILDDIR="$san" VEIL_KEEP_TEST_DIR=1 \
        ASAN_OPTIONS=detect_leaks=0 "$ROOT/tests/env/with-tokens.sh" \
        "$ROOT/tests/test_attest_tpm.sh" 2>&1 | tee /dev/stderr |
        sed -n 's/^with-tokens: keeping test directory //p' | tail -1)
    T="$keep/attest"
    [ -f "$T/trust.json" ] || { echo "fuzz.sh: no trust file in $T" >&2; exit 1; }
    dir="$ROOT/fuzz/corpus/attest"
    mkdir -p "$dir"
    u=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["url"])' "$T/trust.json")
    cp "$T/trust.json" "$ROOT/fuzz/data/trust.json"
    cp "$T/trust.json" "$dir/trust.json"
    cp "$T/trust2.json" "$dir/trust-ak-per-request.json"
    # a trust file that followed an AK hand-over (veil attest update)
    cp "$T/trust-rot.json" "$dir/trust-ak-handover.json"
    cp "$T/ev1.json" "$dir/evidence-maximum.json"
    # fuzz_attest's set-up checks that this one verifies, quote included
    cp "$T/ev1.json" "$ROOT/fuzz/data/evidence.json"
    cp "$T/ev2.json" "$dir/evidence-maximum-2.json"
    cp "$T/ev-std.json" "$dir/evidence-standard.json"
    # evidence from the test's other gateways, moved to the enrolled URL so
    # that it gets past the URL check to the key certification
    python3 - "$u" "$T/ev3.json" "$dir/evidence-ak-per-request.json" \
        "$T/forged.json" "$dir/evidence-forged.json" <<'PY'
import json, sys
url = sys.argv[1]
for src, dst in zip(sys.argv[2::2], sys.argv[3::2]):
    j = json.load(open(src))
    j["url"] = url
    json.dump(j, open(dst, "w"), indent="\t")
PY
    rm -rf "$keep"
    echo "fuzz.sh: attest seeds written to $dir"
}

secs=600 runs=-1 names=()
while [ $# -gt 0 ]; do
    case $1 in
    --time) secs=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --seed) build; "$B/fuzz/gen_corpus" "$ROOT/fuzz"; exit 0 ;;
    --seed-attest) seed_attest; exit 0 ;;
    -h | --help) sed -n '2,/^set -e/p' "$0" | sed 's/^# \{0,1\}//; /^set -e/d'; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
    *) names+=("$1"); shift ;;
    esac
done
if [ "${#names[@]}" -eq 0 ]; then
    for f in "$ROOT"/fuzz/*.fuzz; do names+=("$(basename "$f" .fuzz)"); done
fi
build
failed=0
echo "fuzz.sh: commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)," \
    "$(date -u '+%Y-%m-%d %H:%M UTC'), up to ${secs} s / $runs runs per harness"
for n in "${names[@]}"; do
    log="$B/fuzz/long-$n.log"
    start=$(date +%s)
    if (cd "$B" && VEIL_SRCDIR="$ROOT" VEIL_BUILDDIR="$B" VEIL_FUZZ_SECONDS="$secs" \
        ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
        UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        nice -n 10 "$ROOT/fuzz/run.sh" "$ROOT/fuzz/$n.fuzz" -runs="$runs") >"$log" 2>&1; then
        result="0 crashes"
    else
        result="FAILED (see $log and $B/fuzz/artifacts/$n/)"
        failed=1
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    echo "$n: ${execs:-?} executions in $(($(date +%s) - start)) s, $result"
done
exit $failed
