# Sourced by the shell tests: starts the protocol test server
# (tests/veil-fixture) over HTTPS with a throwaway CA, and stops it by PID.
#   fixture_start [veil-fixture options...]   sets FIXTURE_URL, FIXTURE_CA,
#                                              FIXTURE_PID; 99 on failure
#   fixture_stop                               kills and reaps FIXTURE_PID
# Needs VEIL_BUILDDIR and VEIL_TEST_DIR (tests/env/with-tokens.sh).

fixture_tls() { # DIR: a CA and a server certificate for 127.0.0.1
    local d=$1
    [ -f "$d/server.pem" ] && return 0
    mkdir -p "$d" || return 1
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=veil test CA" \
        -keyout "$d/ca.key" -out "$d/ca.pem" >/dev/null 2>&1 &&
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
        -keyout "$d/server.key" -out "$d/server.csr" >/dev/null 2>&1 &&
    printf 'subjectAltName=IP:127.0.0.1\n' >"$d/ext.cnf" &&
    openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" \
        -CAcreateserial -days 2 -extfile "$d/ext.cnf" -out "$d/server.pem" >/dev/null 2>&1
}

fixture_start() {
    local tls="$VEIL_TEST_DIR/tls" port_file="$VEIL_TEST_DIR/fixture.$$.$RANDOM.port"
    fixture_tls "$tls" || { echo "fixture: could not make test certificates" >&2; exit 99; }
    "$VEIL_BUILDDIR/tests/veil-fixture" --port-file "$port_file" \
        --tls-cert "$tls/server.pem" --tls-key "$tls/server.key" "$@" \
        >"$VEIL_TEST_DIR/fixture.log" 2>&1 &
    FIXTURE_PID=$!
    local i
    for i in $(seq 1 200); do
        [ -s "$port_file" ] && break
        kill -0 "$FIXTURE_PID" 2>/dev/null || { cat "$VEIL_TEST_DIR/fixture.log" >&2; exit 99; }
        sleep 0.05
    done
    [ -s "$port_file" ] || { echo "fixture: no port after 10 s" >&2; fixture_stop; exit 99; }
    FIXTURE_URL="https://127.0.0.1:$(head -1 "$port_file")"
    FIXTURE_CA="$tls/ca.pem"
}

fixture_stop() {
    [ -n "${FIXTURE_PID:-}" ] || return 0
    kill "$FIXTURE_PID" 2>/dev/null
    wait "$FIXTURE_PID" 2>/dev/null
    FIXTURE_PID=
}
