# shellcheck shell=bash disable=SC2034
# Sourced by the shell tests and scripts (demo, benchmarks): starts the
# gateway ($VEIL_BUILDDIR/veild) on a free port, over plain HTTP unless
# --tls, and stops every one it started, by PID.
#
#   veild_start [NAME] [--tls] [veild flags...]
#       runs veild --port 0 --port-file ... --state-dir $VEIL_TEST_DIR/
#       veild-NAME.state --replay-capacity 65536 with the flags given (at
#       least --server-key and --model; later flags win); waits (polling, at most 15 s) for the
#       port file; sets VEILD_URL (http://127.0.0.1:PORT, https:// with
#       --tls), VEILD_PORT, VEILD_LOG (veild's log: $VEIL_TEST_DIR/
#       veild-NAME.log), VEILD_PID and, with --tls, VEILD_CA (the CA
#       bundle to verify it); exits 99, printing the log, when it cannot
#       start.  NAME defaults to "main".
#   veild_stop
#       SIGTERM to each veild started, then waits for it; returns non-zero
#       when any of them exited non-zero (veild exits 0 after a clean
#       shutdown).
#
# --tls uses the throwaway CA and 127.0.0.1 certificate of fixture.sh
# (FIXTURE_TLS_DIR, made once per test directory).  Needs VEIL_BUILDDIR,
# VEIL_SRCDIR (or this file's location) and VEIL_TEST_DIR
# (tests/env/with-tokens.sh sets the latter).

VEILD_PIDS=()

if ! declare -F fixture_tls >/dev/null; then
    # shellcheck source=tests/env/fixture.sh
    . "$(dirname "${BASH_SOURCE[0]}")/fixture.sh"
fi

veild_start() {
    local name=main scheme=http tls=() pid i
    case "${1:-}" in --* | "") ;; *) name=$1; shift ;; esac
    VEILD_CA=""
    if [ "${1:-}" = --tls ]; then
        scheme=https
        shift
        fixture_tls || { cat "$FIXTURE_TLS_DIR/openssl.log" >&2; echo "veild: could not make test certificates" >&2; exit 99; }
        tls=(--tls-cert "$FIXTURE_TLS_DIR/server.pem" --tls-key "$FIXTURE_TLS_DIR/server.key")
        VEILD_CA="$FIXTURE_TLS_DIR/ca.pem"
    fi
    local pf="$VEIL_TEST_DIR/veild-$name.port"
    VEILD_LOG="$VEIL_TEST_DIR/veild-$name.log"
    rm -f "$pf"
    "$VEIL_BUILDDIR/veild" --port 0 --port-file "$pf" \
        --state-dir "$VEIL_TEST_DIR/veild-$name.state" --replay-capacity 65536 \
        "${tls[@]}" "$@" \
        >"$VEILD_LOG" 2>&1 </dev/null &
    pid=$!
    VEILD_PIDS+=("$pid")
    VEILD_PID=$pid
    for ((i = 0; i < 300; i++)); do
        if [ -s "$pf" ]; then
            VEILD_PORT=$(tr -dc '0-9' <"$pf")
            if [ -n "$VEILD_PORT" ]; then
                VEILD_URL="$scheme://127.0.0.1:$VEILD_PORT"
                return 0
            fi
        fi
        kill -0 "$pid" 2>/dev/null || { cat "$VEILD_LOG" >&2; echo "veild $name exited" >&2; exit 99; }
        sleep 0.05
    done
    cat "$VEILD_LOG" >&2
    echo "veild $name wrote no port file in 15 s" >&2
    exit 99
}

veild_stop() {
    local pid rc=0 st
    for pid in "${VEILD_PIDS[@]}"; do
        if kill -TERM "$pid" 2>/dev/null; then
            st=0
            wait "$pid" 2>/dev/null || st=$?
            [ "$st" -eq 0 ] || { echo "veild (pid $pid) exited with status $st" >&2; rc=1; }
        else
            # already gone: its status is still ours to collect
            st=0
            wait "$pid" 2>/dev/null || st=$?
            [ "$st" -eq 0 ] || [ "$st" -eq 127 ] || { echo "veild (pid $pid) had exited with status $st" >&2; rc=1; }
        fi
    done
    VEILD_PIDS=()
    return "$rc"
}
