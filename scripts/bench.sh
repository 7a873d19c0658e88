#!/bin/bash
# Runs veil-bench against a fresh SoftHSM2 token.
#
#   scripts/bench.sh [veil-bench arguments...]     e.g. --quick, --seconds 1
#
# tests/env/with-tokens.sh creates the token in a temporary directory,
# exports VEIL_TEST_SOFTHSM_MODULE, VEIL_TEST_SOFTHSM_TOKEN and
# VEIL_TEST_PIN_FILE (which veil-bench uses by default) and removes it all
# afterwards.  The exit status is veil-bench's (see veil-bench --help).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [ ! -x "$ROOT/veil-bench" ]; then
    echo "bench.sh: $ROOT/veil-bench not found; build it first: make" >&2
    exit 2
fi
if [ ! -x "$ROOT/tests/env/with-tokens.sh" ]; then
    echo "bench.sh: tests/env/with-tokens.sh missing or not executable" >&2
    exit 2
fi

exec "$ROOT/tests/env/with-tokens.sh" "$ROOT/veil-bench" "$@"
