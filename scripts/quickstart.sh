#!/bin/bash
# The README's two commands.
#   scripts/quickstart.sh demo   install what is missing, build, and run the
#                                main job on a fresh SoftHSM2 token
#   scripts/quickstart.sh test   install what is missing, build with ASan and
#                                UBSan, run the whole test suite (SoftHSM2 and
#                                TPM suites included), build the libFuzzer
#                                harnesses with clang and run each over its
#                                seeds and for 60 s, then make distcheck
# Run as root on a fresh Debian 12 machine (installing needs root; with
# everything installed, any user can run it).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
JOBS=$(nproc 2>/dev/null || echo 2)
cd "$ROOT"

step() { printf '\n== %s\n' "$*"; }

bootstrap() {
    step "dependencies"
    "$ROOT/scripts/install-deps.sh"
    step "autoreconf"
    [ -x configure ] || autoreconf -fi
}

build_in() { # DIR CONFIGURE-ARGS...
    local dir=$1; shift
    mkdir -p "$dir"
    (cd "$dir" && { [ -f Makefile ] || "$ROOT/configure" -q "$@"; } && make -s -j"$JOBS")
}

demo() {
    bootstrap
    step "build"
    build_in "$ROOT/build" >/dev/null
    step "demo: a server key in a fresh SoftHSM2 token, used through veil"
    exec "$ROOT/tests/env/with-tokens.sh" "$ROOT/scripts/demo.sh" "$ROOT/build"
}

run_tests() {
    bootstrap
    step "build with AddressSanitizer + UndefinedBehaviorSanitizer"
    build_in "$ROOT/build-san" --enable-sanitizers
    step "make check (sanitizers on)"
    if ! (cd "$ROOT/build-san" && make -s check -j"$JOBS"); then
        for log in "$ROOT"/build-san/tests/*.log; do
            grep -qE '^(FAIL|ERROR)' "${log%.log}.trs" 2>/dev/null && { echo "---- $log"; tail -60 "$log"; }
        done
        exit 1
    fi
    step "fuzzing build (clang, libFuzzer, ASan + UBSan): each harness over its seeds, then 60 s"
    build_in "$ROOT/build-fuzz" CC=clang --enable-fuzzing
    if ! (cd "$ROOT/build-fuzz" && make -s check -j"$JOBS"); then
        for log in "$ROOT"/build-fuzz/fuzz/*.log; do
            grep -qE '^(FAIL|ERROR)' "${log%.log}.trs" 2>/dev/null && { echo "---- $log"; tail -60 "$log"; }
        done
        exit 1
    fi
    step "make distcheck"
    build_in "$ROOT/build" >/dev/null
    (cd "$ROOT/build" && make -s distcheck -j"$JOBS" >distcheck.log 2>&1) || { tail -60 "$ROOT/build/distcheck.log"; exit 1; }
    grep -A3 "archives ready" "$ROOT/build/distcheck.log" || true
    step "all tests passed"
}

case "${1:-}" in
demo) demo ;;
test) run_tests ;;
*) echo "usage: $0 demo|test" >&2; exit 2 ;;
esac
