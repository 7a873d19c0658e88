# shellcheck shell=bash disable=SC2034
# Sourced first by the shell tests that run veild on the SoftHSM2 test
# token (run through tests/env/with-tokens.sh): their common set-up.
#
#   . "${VEIL_SRCDIR:?}/tests/env/suite.sh" NAME [COMMAND...]
#       sets B (the build directory), V, K, MOCK (veil, veil-keys,
#       tests/mock-upstream), T ($VEIL_TEST_DIR/NAME, made), MOD and TOK
#       (the test token's module and URI), out and err (files in T), pass
#       and fail; clears what a user's environment could change (VEIL_URL,
#       VEIL_API_KEY, VEIL_PKCS11_MODULE, VEIL_PIN_SOURCE, NOTIFY_SOCKET,
#       JOURNAL_STREAM; XDG_CONFIG_HOME goes under T); sources check.sh and
#       veild.sh; exits 99 (a set-up failure) when veil, veil-keys, veild or
#       one of the COMMANDs is missing.  At exit it stops every veild it
#       started (veild_stop) and then each process in SUITE_PIDS.
#   mock_start
#       starts tests/mock-upstream on a free port (its log: T/mock.log),
#       adds it to SUITE_PIDS, and sets MOCK_PID and MOCK_URL
#       (http://127.0.0.1:PORT/v1).
set -u
B=${VEIL_BUILDDIR:-.}
V="$B/veil" K="$B/veil-keys" MOCK="$B/tests/mock-upstream"
T="${VEIL_TEST_DIR:?}/${1:?suite.sh: a test name}"
MOD="$VEIL_TEST_SOFTHSM_MODULE"
TOK="pkcs11:token=$VEIL_TEST_SOFTHSM_TOKEN"
pass=0 fail=0
out="$T/out" err="$T/err"
unset VEIL_URL VEIL_API_KEY VEIL_PKCS11_MODULE VEIL_PIN_SOURCE NOTIFY_SOCKET JOURNAL_STREAM
export XDG_CONFIG_HOME="$T/xdg"
SUITE_PIDS=()

. "${VEIL_SRCDIR:?}/tests/env/check.sh"
. "${VEIL_SRCDIR:?}/tests/env/veild.sh"

suite_cleanup() {
    local p
    veild_stop
    for p in "${SUITE_PIDS[@]}"; do
        kill -TERM "$p" 2>/dev/null && wait "$p"
    done
}
trap suite_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for x in "$V" "$K" "$B/veild"; do
    [ -x "$x" ] || hard "$x is not built"
done
shift
for x in "$@"; do
    command -v "$x" >/dev/null || hard "$x not found"
done
mkdir -p "$T" "$XDG_CONFIG_HOME" || hard "cannot make $T"

mock_start() {
    [ -x "$MOCK" ] || hard "$MOCK is not built"
    rm -f "$T/mock.port"
    "$MOCK" --port-file "$T/mock.port" 2>"$T/mock.log" &
    MOCK_PID=$!
    SUITE_PIDS+=("$MOCK_PID")
    wait_for "$T/mock.port" "^[0-9]+$"
    MOCK_URL="http://127.0.0.1:$(tr -dc 0-9 <"$T/mock.port")/v1"
}
