#!/bin/bash
# The README's two commands.
#   scripts/quickstart.sh demo   install what is missing, build, and run the
#                                main job on a fresh SoftHSM2 token
#   scripts/quickstart.sh test   install what is missing, build with ASan and
#                                UBSan, run the whole test suite (SoftHSM2 and
#                                TPM suites included), build the libFuzzer
#                                harnesses with clang and run each over its
#                                seeds and for 60 s, then make distcheck
#   scripts/quickstart.sh packages
#                                install what is missing, build the Debian
#                                packages (debian/) from a copy of the tree in
#                                build-deb/, check them with lintian (errors
#                                fail), and list the .deb files
# Run as root on a fresh Debian 12 machine (installing needs root; with
# everything installed, any user can run it).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
JOBS=$(nproc 2>/dev/null || echo 2)
cd "$ROOT"

step() { printf '\n== %s\n' "$*"; }

bootstrap() {
    step "dependencies"
    "$ROOT/scripts/install-deps.sh" "$@"
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

# show_failed DIR: the end of the log of every test in DIR that failed, so
# that a CI log shows why (automake's .trs says ":test-result: FAIL").
show_failed() {
    local trs
    for trs in "$1"/*.trs; do
        grep -qE '^:test-result: (FAIL|ERROR|XPASS)' "$trs" 2>/dev/null || continue
        printf '\n---- %s (last 120 lines)\n' "${trs%.trs}.log"
        tail -n 120 "${trs%.trs}.log"
    done
}

run_tests() {
    bootstrap
    step "build with AddressSanitizer + UndefinedBehaviorSanitizer"
    build_in "$ROOT/build-san" --enable-sanitizers
    step "make check (sanitizers on)"
    if ! (cd "$ROOT/build-san" && make -s check -j"$JOBS"); then
        show_failed "$ROOT/build-san/tests"
        exit 1
    fi
    step "fuzzing build (clang, libFuzzer, ASan + UBSan): each harness over its seeds, then 60 s"
    build_in "$ROOT/build-fuzz" CC=clang --enable-fuzzing
    if ! (cd "$ROOT/build-fuzz" && make -s check -j"$JOBS"); then
        show_failed "$ROOT/build-fuzz/fuzz"
        exit 1
    fi
    step "make distcheck"
    build_in "$ROOT/build" >/dev/null
    (cd "$ROOT/build" && make -s distcheck -j"$JOBS" >distcheck.log 2>&1) || { tail -60 "$ROOT/build/distcheck.log"; exit 1; }
    grep -A3 "archives ready" "$ROOT/build/distcheck.log" || true
    step "all tests passed"
}

packages() {
    local version dir
    "$ROOT/scripts/install-deps.sh" --packaging
    version=$(sed -n '1s/^veil (\([^)]*\)).*/\1/p' "$ROOT/debian/changelog")
    dir="$ROOT/build-deb/veil-$version"
    step "copy of the tree (tracked and new files, nothing ignored) in $dir"
    rm -rf "$ROOT/build-deb"
    mkdir -p "$dir"
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard |
        xargs -0 tar -cf - --no-recursion) | tar -xf - -C "$dir"
    step "dpkg-buildpackage -us -uc -b"
    (cd "$dir" && dpkg-buildpackage -us -uc -b -j"$JOBS" >"$ROOT/build-deb/build.log" 2>&1) ||
        { tail -60 "$ROOT/build-deb/build.log"; exit 1; }
    step "lintian (an error fails)"
    lintian --fail-on error "$ROOT"/build-deb/*.changes
    step "packages in $ROOT/build-deb/"
    ls -1 "$ROOT"/build-deb/*.deb
    echo "install them with: apt install $ROOT/build-deb/veild_${version}_*.deb $ROOT/build-deb/veil_${version}_*.deb $ROOT/build-deb/libveil3_${version}_*.deb"
}

case "${1:-}" in
demo) demo ;;
test) run_tests ;;
packages) packages ;;
*) echo "usage: $0 demo|test|packages" >&2; exit 2 ;;
esac
