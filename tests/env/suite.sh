# shellcheck shell=bash disable=SC2034
# Sourced first by the shell tests that run veild on the SoftHSM2 test
# token (run through tests/env/with-tokens.sh): their common set-up.
# tests/env/tpm_suite.sh adds the TPM to it.
#
#   . "${VEIL_SRCDIR:?}/tests/env/suite.sh" NAME [COMMAND...]
#       sets B (the build directory), SRC (the source tree), V, K, MOCK
#       (veil, veil-keys, tests/mock-upstream), PY (VEIL_PYTHON or
#       /usr/bin/python3), T ($VEIL_TEST_DIR/NAME, made), MOD and TOK (the
#       test token's module and URI), PINSRC (its PIN source), out and err
#       (files in T), pass and fail; clears what a user's environment could
#       change (VEIL_URL,
#       VEIL_API_KEY, VEIL_PKCS11_MODULE, VEIL_PIN_SOURCE, NOTIFY_SOCKET,
#       JOURNAL_STREAM; XDG_CONFIG_HOME goes under T); sources check.sh and
#       veild.sh; exits 99 (a set-up failure) when veil, veil-keys, veild or
#       one of the COMMANDs is missing.  At exit it stops every veild it
#       started (veild_stop) and then each process in SUITE_PIDS.
#   stop_at_exit VAR...
#       for the helper processes a test starts and stops itself: sets each
#       VAR to "" now; at exit, before the veilds, the process whose PID a
#       VAR then holds is stopped (SIGTERM, then waited for).
#   mock_start
#       starts tests/mock-upstream on a free port (its log: T/mock.log),
#       adds it to SUITE_PIDS, and sets MOCK_PID and MOCK_URL
#       (http://127.0.0.1:PORT/v1).
#   field FILE PYTHON-EXPR
#       prints the value of an expression over the JSON in FILE (bound to
#       `j`).
#   nomyo_setup
#       for the tests that run tests/nomyo_client.py: sets NC (its path);
#       exits 99 when it is missing or PY lacks the cryptography package.
#   token_key LABEL [ARG...]
#       makes the key LABEL in the test token (veil-keys generate --token
#       TOK --module MOD --pin-source PINSRC ARG..., e.g. --bits 2048 or
#       --type ec; its output appended to T/keygen.log); exits 99 when
#       that fails.
#   answer_is NAME PYTHON-EXPR
#       counts a pass when the expression is true of the answer JSON on the
#       last stdout (as `a`, its _metadata as `md`) and the last stderr's
#       lines (as `err`, a list): `sent` is the first X-Payload-ID
#       nomyo_client.py printed, `server_md` the first _metadata it says
#       the server sent.
set -u
B=${VEIL_BUILDDIR:-.}
SRC=${VEIL_SRCDIR:?}
V="$B/veil" K="$B/veil-keys" MOCK="$B/tests/mock-upstream"
PY=${VEIL_PYTHON:-/usr/bin/python3}
T="${VEIL_TEST_DIR:?}/${1:?suite.sh: a test name}"
MOD="$VEIL_TEST_SOFTHSM_MODULE"
TOK="pkcs11:token=$VEIL_TEST_SOFTHSM_TOKEN"
PINSRC="file:$VEIL_TEST_PIN_FILE"
pass=0 fail=0
out="$T/out" err="$T/err"
unset VEIL_URL VEIL_API_KEY VEIL_PKCS11_MODULE VEIL_PIN_SOURCE VEIL_RELAY NOTIFY_SOCKET JOURNAL_STREAM
export XDG_CONFIG_HOME="$T/xdg"
SUITE_PIDS=() SUITE_PID_VARS=()

. "$SRC/tests/env/check.sh"
. "$SRC/tests/env/veild.sh"

suite_cleanup() {
    local p v
    for v in "${SUITE_PID_VARS[@]}"; do
        p=${!v:-}
        if [ -n "$p" ]; then
            kill -TERM "$p" 2>/dev/null
            wait "$p" 2>/dev/null
        fi
    done
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
    command -v "$x" >/dev/null || hard "$x not found (run scripts/install-deps.sh)"
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

stop_at_exit() {
    local v
    for v in "$@"; do
        printf -v "$v" ''
        SUITE_PID_VARS+=("$v")
    done
}

token_key() {
    local label=$1
    shift
    "$K" generate --token "$TOK" --label "$label" --module "$MOD" --pin-source "$PINSRC" "$@" \
        >>"$T/keygen.log" 2>&1 || { cat "$T/keygen.log"; hard "veil-keys could not make the key $label"; }
}

field() {
    "$PY" -c 'import json,sys; j=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}

nomyo_setup() {
    NC="$SRC/tests/nomyo_client.py"
    [ -f "$NC" ] || hard "$NC is missing"
    "$PY" -c 'import cryptography' 2>/dev/null || hard "$PY lacks the cryptography package (Debian: python3-cryptography)"
}

answer_is() {
    if "$PY" - "$out" "$err" "$2" <<'EOF'; then ok "$1"; else bad "$1: not ($2)" "$out" "$err"; fi
import json, sys
a = json.load(open(sys.argv[1]))
err = open(sys.argv[2]).read().splitlines()
ids = [l.split(": ", 2)[2] for l in err if l.startswith("nomyo_client: X-Payload-ID: ")]
sent = ids[0] if ids else None
smd = [json.loads(l.split(": ", 2)[2]) for l in err if l.startswith("nomyo_client: server _metadata: ")]
server_md = smd[0] if smd else None
md = a.get("_metadata", {})
sys.exit(0 if eval(sys.argv[3]) else 1)
EOF
}
