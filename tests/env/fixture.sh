# Sourced by the shell tests and scripts/bench.sh: starts the protocol test
# server (tests/veil-fixture), over HTTPS with a throwaway CA unless --http,
# and stops every one it started, by PID.
#
#   fixture_start [NAME] [--http] [veil-fixture options...]
#       waits (polling, at most 15 s) for the port file; sets FIXTURE_URL,
#       FIXTURE_PORT, FIXTURE_LOG (the server's log: $VEIL_TEST_DIR/
#       fixture-NAME.log) and FIXTURE_CA (the CA bundle to verify it);
#       exits 99 when it cannot start.  NAME defaults to "main".
#   fixture_stop
#       SIGTERM to each server started, then waits for it.
#
# FIXTURE_TLS_DIR holds ca.pem, server.pem and server.key.  Needs
# VEIL_BUILDDIR and VEIL_TEST_DIR (tests/env/with-tokens.sh sets the latter).

FIXTURE_PIDS=()
FIXTURE_TLS_DIR="$VEIL_TEST_DIR/fixture-tls"

fixture_tls() { # a CA and a server certificate for 127.0.0.1, made once
    local d=$FIXTURE_TLS_DIR
    [ -s "$d/server.pem" ] && return 0
    mkdir -p "$d" && (
        cd "$d" &&
            openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem \
                -days 2 -subj "/CN=veil test CA" \
                -addext "basicConstraints=critical,CA:TRUE" \
                -addext "keyUsage=critical,keyCertSign,cRLSign" &&
            openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr \
                -subj "/CN=127.0.0.1" &&
            printf '%s\n' "subjectAltName=IP:127.0.0.1" "basicConstraints=CA:FALSE" \
                "extendedKeyUsage=serverAuth" >server.ext &&
            openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -set_serial 1 \
                -days 2 -extfile server.ext -out server.pem
    ) >"$d/openssl.log" 2>&1
}

fixture_start() {
    local name=main scheme=https tls=() pid i
    case "${1:-}" in --* | "") ;; *) name=$1; shift ;; esac
    if [ "${1:-}" = --http ]; then
        scheme=http
        shift
    else
        fixture_tls || { cat "$FIXTURE_TLS_DIR/openssl.log" >&2; echo "fixture: could not make test certificates" >&2; exit 99; }
        tls=(--tls-cert "$FIXTURE_TLS_DIR/server.pem" --tls-key "$FIXTURE_TLS_DIR/server.key")
    fi
    local pf="$VEIL_TEST_DIR/fixture-$name.port"
    FIXTURE_LOG="$VEIL_TEST_DIR/fixture-$name.log"
    rm -f "$pf"
    "$VEIL_BUILDDIR/tests/veil-fixture" --port-file "$pf" --verbose "${tls[@]}" "$@" \
        >"$FIXTURE_LOG" 2>&1 &
    pid=$!
    FIXTURE_PIDS+=("$pid")
    for ((i = 0; i < 300; i++)); do
        if [ -s "$pf" ]; then
            FIXTURE_PORT=$(tr -dc '0-9' <"$pf")
            if [ -n "$FIXTURE_PORT" ]; then
                FIXTURE_URL="$scheme://127.0.0.1:$FIXTURE_PORT"
                FIXTURE_CA="$FIXTURE_TLS_DIR/ca.pem"
                return 0
            fi
        fi
        kill -0 "$pid" 2>/dev/null || { cat "$FIXTURE_LOG" >&2; echo "fixture $name exited" >&2; exit 99; }
        sleep 0.05
    done
    echo "fixture $name wrote no port file in 15 s" >&2
    exit 99
}

fixture_stop() {
    local pid
    for pid in "${FIXTURE_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    done
    FIXTURE_PIDS=()
}
