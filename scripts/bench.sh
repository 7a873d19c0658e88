#!/bin/bash
# Runs veil-bench against a fresh SoftHSM2 token.
#
#   scripts/bench.sh [veil-bench arguments...]     e.g. --quick, --seconds 1
#   scripts/bench.sh client [arguments...]         the client benchmark
#   scripts/bench.sh gateway [arguments...]        the gateway benchmark
#   scripts/bench.sh attest [arguments...]         signing and TPM attestation
#
# tests/env/with-tokens.sh creates the token in a temporary directory,
# exports VEIL_TEST_SOFTHSM_MODULE, VEIL_TEST_SOFTHSM_TOKEN and
# VEIL_TEST_PIN_FILE (which veil-bench uses by default) and removes it all
# afterwards.  For "client" it also starts the protocol test server
# (tests/veil-fixture, over HTTPS with a throwaway CA: tests/env/fixture.sh),
# passes its --url and --ca-file to veil-bench, and stops it by PID.
#
# For "gateway" veil-bench starts veild itself ($VEIL_BUILDDIR/veild, passed
# as --veild): it needs a veild per server key (a software key it saves to
# a key directory, and a key it makes in the SoftHSM2 token) and a fresh
# one for the memory measurement, and it knows each one's PID.  Each veild
# runs with the echo model, the rate limits out of the way and --port 0;
# veil-bench stops them by PID (they also get SIGTERM should veil-bench
# die: PR_SET_PDEATHSIG) and deletes the keys.
#
# "attest" is run the same way, with VEIL_TEST_TPM=1: with-tokens.sh also
# starts swtpm, a private dbus session bus and tpm2-abrmd, and exports
# TPM2TOOLS_TCTI (tabrmd:bus_type=session) and DBUS_SESSION_BUS_ADDRESS;
# veil-bench passes TPM2TOOLS_TCTI to its veild instances as --tpm-tcti
# (unless given --tcti) and they inherit the bus address.  It makes the
# signing key in the SoftHSM2 token and deletes it at the end.
#
# The programs come from the build directory VEIL_BUILDDIR (default: the
# source tree, for an in-tree build).  The exit status is veil-bench's (see
# veil-bench --help).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${VEIL_BUILDDIR:-$ROOT}
BUILD=$(cd "$BUILD" 2>/dev/null && pwd) || {
    echo "bench.sh: VEIL_BUILDDIR=$VEIL_BUILDDIR is not a directory" >&2
    exit 2
}
export VEIL_BUILDDIR="$BUILD"

if [ ! -x "$BUILD/veil-bench" ]; then
    echo "bench.sh: $BUILD/veil-bench not found; build it first: make" \
        "(or set VEIL_BUILDDIR to the build directory)" >&2
    exit 2
fi
if [ ! -x "$ROOT/tests/env/with-tokens.sh" ]; then
    echo "bench.sh: tests/env/with-tokens.sh missing or not executable" >&2
    exit 2
fi

# ENGINE is veil-bench's first argument that is not an option or an
# option's value.
engine=""
skip=0
for arg in "$@"; do
    if [ "$skip" = 1 ]; then
        skip=0
        continue
    fi
    case $arg in
    --seconds | --rounds | --module | --token | --pin-source | --url | --ca-file | \
        --veild | --requests | --clients | --bits | --workers | --timing | --memory-waves | \
        --tcti)
        skip=1 ;;
    -*) ;;
    *)
        engine=$arg
        break
        ;;
    esac
done
if [ "$engine" = gateway ] || [ "$engine" = attest ]; then
    if [ ! -x "$BUILD/veild" ]; then
        echo "bench.sh: $BUILD/veild not found; build it first: make veild" >&2
        exit 2
    fi
    if [ "$engine" = attest ]; then
        export VEIL_TEST_TPM=1
    fi
    exec "$ROOT/tests/env/with-tokens.sh" "$BUILD/veil-bench" "$@" \
        --veild "$BUILD/veild"
fi
if [ "$engine" != client ]; then
    exec "$ROOT/tests/env/with-tokens.sh" "$BUILD/veil-bench" "$@"
fi

if [ ! -x "$BUILD/tests/veil-fixture" ]; then
    echo "bench.sh: $BUILD/tests/veil-fixture not found; build it first:" \
        "make tests/veil-fixture" >&2
    exit 2
fi

# Runs inside with-tokens.sh: start the fixture, run the benchmark in the
# background (so that a signal is handled at once), stop both by PID.
# shellcheck disable=SC2016 # expanded by the inner shell
inner='
set -u
. "$1/tests/env/fixture.sh"
shift
BENCH_PID=
stop() {
    if [ -n "$BENCH_PID" ]; then
        kill "$BENCH_PID" 2>/dev/null
        wait "$BENCH_PID" 2>/dev/null
    fi
    fixture_stop
}
trap stop EXIT
trap "exit 130" INT
trap "exit 143" TERM
fixture_start
"$VEIL_BUILDDIR/veil-bench" "$@" --url "$FIXTURE_URL" \
    --ca-file "$FIXTURE_CA" &
BENCH_PID=$!
rc=0
wait "$BENCH_PID" || rc=$?
BENCH_PID=
exit "$rc"
'
exec "$ROOT/tests/env/with-tokens.sh" bash -c "$inner" bench-client \
    "$ROOT" "$@"
