#!/bin/bash
# ok and bad always succeed, so "test && ok || bad" is safe here.
# shellcheck disable=SC2015
# veild's reload (SIGHUP), as an operator does it: a real veild over HTTPS
# with its key in a fresh SoftHSM2 token, a config file, an API key file
# and a stand-in inference server (tests/mock-upstream) that can hold a
# request in flight for as long as the test wants.  The files are changed
# and veild gets SIGHUP: new requests see the change, the request in
# flight finishes on the configuration it started with, a config that
# does not load is logged (file and line) and the old one stays, the TLS
# certificate is read again, settings that need a restart say so, and
# veild never exits on SIGHUP.  No timing: every wait polls for what the
# logs say.
#
# Run through tests/env/with-tokens.sh.  Exit 0 pass, 1 fail, 99 setup
# failure.
. "${VEIL_SRCDIR:?}/tests/env/suite.sh" reload openssl curl

# hup: SIGHUP to veild, then waits for its reload to be over (one more
# "reloaded" or "reload failed" line).
hup() {
    local n
    n=$(count "$VEILD_LOG" "reloaded:|reload failed:")
    kill -HUP "$VEILD_PID" || hard "veild is gone"
    wait_for "$VEILD_LOG" "reloaded:|reload failed:" $((n + 1))
}

# the server's certificate as a new connection sees it (SHA-256)
served_cert() {
    openssl s_client -connect "127.0.0.1:$VEILD_PORT" -servername 127.0.0.1 </dev/null 2>/dev/null |
        openssl x509 -noout -fingerprint -sha256 2>/dev/null
}
file_cert() { openssl x509 -in "$1" -noout -fingerprint -sha256; }

# ------------------------------------------------------------------ setup

"$K" generate --token "$TOK" --label reload --bits 2048 --module "$MOD" \
    --pin-source "file:$VEIL_TEST_PIN_FILE" >"$T/keygen.log" 2>&1 || {
    cat "$T/keygen.log"
    hard "veil-keys could not make the server key"
}
key_a="vk-a-$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')"
key_b="vk-b-$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')"
hash_of() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
(umask 077 && printf '%s\n' "$key_a" >"$T/a.key" && printf '%s\n' "$key_b" >"$T/b.key") ||
    hard "cannot write the client key files"
(umask 077 && printf 'sha256:%s alice\n' "$(hash_of "$key_a")" >"$T/api_keys") ||
    hard "cannot write the API key file"

mock_start

# The TLS pair veild reads, in files of this test: replaced later.
fixture_tls || hard "cannot make test certificates"
cp "$FIXTURE_TLS_DIR/server.pem" "$T/tls.pem" && cp "$FIXTURE_TLS_DIR/server.key" "$T/tls.key" &&
    chmod 600 "$T/tls.key" || hard "cannot copy the TLS pair"
CA="$FIXTURE_TLS_DIR/ca.pem"

# write_conf [EXTRA LINE...]: the config file, models as sections
write_conf() {
    {
        echo "server_key = $TOK;object=reload"
        echo "pkcs11_module = $MOD"
        echo "pin_source = file:$VEIL_TEST_PIN_FILE"
        echo "api_keys = $T/api_keys"
        echo "tls_cert = $T/tls.pem"
        echo "tls_key = $T/tls.key"
        echo "rate = 1000"
        echo "burst = 1000"
        for l in "$@"; do echo "$l"; done
    } >"$T/veild.conf.new" && chmod 600 "$T/veild.conf.new" &&
        mv "$T/veild.conf.new" "$T/veild.conf" || hard "cannot write the config file"
}
write_conf "[model echo]" "upstream = echo" "[model mock/hold]" "upstream = $MOCK_URL"

# The TLS pair is the config file's (a flag would win over the file at
# every reload), so the https:// URL is made here.
veild_start reload --config "$T/veild.conf"
URL="https://127.0.0.1:$VEILD_PORT"
PID0=$VEILD_PID

# chat KEYFILE MODEL TEXT: one chat through veild
chat() {
    "$V" chat --url "$URL" --ca-file "$CA" --api-key-file "$1" -m "$2" "$3"
}
models() { curl -sS --cacert "$CA" "$URL/v1/models"; }

# ------------------------------------------------------------------ checks

check "a chat before the reload (key alice, model echo)" 0 "before" -- chat "$T/a.key" echo "before"
[ "$(served_cert)" = "$(file_cert "$T/tls.pem")" ] && ok "veild serves the certificate of tls_cert" ||
    bad "the served certificate is not tls_cert's"

# A request held in flight across the reload.
"$V" chat --url "$URL" --ca-file "$CA" --api-key-file "$T/a.key" -m mock/hold "held" \
    >"$T/held.out" 2>"$T/held.err" &
held=$!
wait_for "$T/mock.log" "holding #"

# The reload: key alice gone, key bob in; model echo2 in, mock/hold out;
# workers (which needs a restart) changed too.
(umask 077 && printf 'sha256:%s bob\n' "$(hash_of "$key_b")" >"$T/api_keys.new" &&
    mv "$T/api_keys.new" "$T/api_keys") || hard "cannot rewrite the API key file"
write_conf "workers = 7" "[model echo]" "upstream = echo" "[model echo2]" "upstream = echo"
hup
grep -q "reloaded: 2 model(s)" "$VEILD_LOG" && ok "the reload is logged with the new models" ||
    bad "no 'reloaded: 2 model(s)' line" "$VEILD_LOG"
grep -qE "warn: reload: workers changed, which needs a restart; the running value stays" "$VEILD_LOG" &&
    ok "a changed workers setting is logged as needing a restart" || bad "no needs-a-restart line for workers" "$VEILD_LOG"

# The request in flight finishes on its configuration (its key and model
# are gone from the new one).
kill -USR1 "$MOCK_PID"
wait "$held"
st=$?
[ "$st" -eq 0 ] && grep -q "mock: held" "$T/held.out" &&
    ok "the request in flight during the reload completed (200, its answer)" ||
    bad "the held request: exit $st" "$T/held.out" "$T/held.err"

check "after the reload the removed key is refused (401)" 12 "" -- chat "$T/a.key" echo "gone"
check "after the reload the added key works" 0 "after" -- chat "$T/b.key" echo2 "after"
check "after the reload the removed model is refused" 11 "not served here" -- chat "$T/b.key" mock/hold "gone"
models >"$out" 2>"$err"
grep -q '"echo2"' "$out" && ! grep -q 'mock/hold' "$out" && ok "GET /v1/models lists the new models" ||
    bad "/v1/models after the reload" "$out" "$err"
[ "$VEILD_PORT" = "$(tr -dc 0-9 <"$VEIL_TEST_DIR/veild-reload.port")" ] && kill -0 "$PID0" &&
    ok "the same process still listens on the same port" || bad "veild moved or went away"

# A config that does not load: logged with its file and line; the running
# configuration stays.
cp "$T/veild.conf" "$T/veild.conf.good"
write_conf "[model echo]" "upstream = echo" "bogus_setting = 1"
hup
grep -qE "error: reload failed: $T/veild.conf:1[0-9]: unknown setting 'bogus_setting'.*; the running configuration stays" "$VEILD_LOG" &&
    ok "a broken config is logged with its file and line, and the old one stays" ||
    bad "no reload failure naming veild.conf and its line" "$VEILD_LOG"
check "after a failed reload the running configuration still serves" 0 "still" -- chat "$T/b.key" echo2 "still"

# An API key file that does not load: the same.
cp "$T/veild.conf.good" "$T/veild.conf"
printf 'sha256:nothex bob\n' >"$T/api_keys" && chmod 600 "$T/api_keys"
hup
grep -qE "error: reload failed: api_keys: .*api_keys:1" "$VEILD_LOG" &&
    ok "a broken API key file is logged (file and line), the old keys stay" ||
    bad "no reload failure naming the API key file" "$VEILD_LOG"
check "the old API keys still work" 0 "keys" -- chat "$T/b.key" echo2 "keys"
(umask 077 && printf 'sha256:%s bob\n' "$(hash_of "$key_b")" >"$T/api_keys")

# The TLS certificate: a new pair from the same CA is served after SIGHUP
# to new connections.
(
    cd "$T" &&
        openssl req -newkey rsa:2048 -nodes -keyout tls2.key -out tls2.csr -subj "/CN=127.0.0.1" &&
        printf '%s\n' "subjectAltName=IP:127.0.0.1" "extendedKeyUsage=serverAuth" >tls2.ext &&
        openssl x509 -req -in tls2.csr -CA "$FIXTURE_TLS_DIR/ca.pem" -CAkey "$FIXTURE_TLS_DIR/ca.key" \
            -set_serial 2 -days 2 -extfile tls2.ext -out tls2.pem
) >"$T/openssl.log" 2>&1 || hard "cannot make the second certificate"
old_fp=$(file_cert "$T/tls.pem")
# a certificate that does not go with the key: refused, naming tls_key
cp "$T/tls2.pem" "$T/tls.pem"
hup
grep -qE "reload failed: tls_key $T/tls.key is not the key of the certificate in tls_cert $T/tls.pem" "$VEILD_LOG" &&
    ok "a certificate and key that do not match are refused, naming the key file" ||
    bad "no reload failure naming tls_key" "$VEILD_LOG"
[ "$(served_cert)" = "$old_fp" ] && ok "the old certificate is still served" || bad "the served certificate changed"
cp "$T/tls2.key" "$T/tls.key"
hup
[ "$(served_cert)" = "$(file_cert "$T/tls2.pem")" ] && ok "after SIGHUP new connections get the new certificate" ||
    bad "the new certificate is not served" "$VEILD_LOG"
check "a chat over the new certificate" 0 "tls" -- chat "$T/b.key" echo2 "tls"

# Start-up messages that say which file or port (issue 15 item 9): the
# pair is checked before listening, and a port in use is named.
VD=("$B/veild" --server-key "$TOK;object=reload" --pkcs11-module "$MOD"
    --pin-source "file:$VEIL_TEST_PIN_FILE" --model m=echo --v2 off --state-dir "$T/second.state")
check "a port in use is named at start-up (1)" 1 \
    "error: port $VEILD_PORT on 127.0.0.1 is in use: another program listens there" -- \
    "${VD[@]}" --port "$VEILD_PORT"
grep -q "Failed to bind to port" "$err" && bad "MHD's 'Failed to bind to port' is still shown" "$err" ||
    ok "no 'Failed to bind to port 0'"
check "a certificate and key that do not match stop the start, naming the key file (2, configuration)" 2 \
    "tls_key $FIXTURE_TLS_DIR/server.key is not the key of the certificate in tls_cert $T/tls2.pem" -- \
    "${VD[@]}" --port 0 --tls-cert "$T/tls2.pem" --tls-key "$FIXTURE_TLS_DIR/server.key"
check "a key given as the certificate is named (2, configuration)" 2 "tls_cert $T/tls2.key: not a PEM certificate chain" -- \
    "${VD[@]}" --port 0 --tls-cert "$T/tls2.key" --tls-key "$T/tls2.key"

# Never an exit on SIGHUP; a clean stop on SIGTERM.
n=$(count "$VEILD_LOG" "reloaded:")
kill -HUP "$VEILD_PID"
kill -HUP "$VEILD_PID"
wait_for "$VEILD_LOG" "reloaded:" $((n + 1))
kill -0 "$VEILD_PID" && ok "veild is still running after every SIGHUP" || bad "veild exited on SIGHUP" "$VEILD_LOG"
grep -qF "$(head -1 "$VEIL_TEST_PIN_FILE")" "$VEILD_LOG" && bad "the PIN is in the log" || ok "no PIN in the log"
grep -qF "$key_b" "$VEILD_LOG" && bad "an API key is in the log" || ok "no API key in the log"
veild_stop && ok "veild stops cleanly on SIGTERM (exit 0)" || bad "veild did not stop cleanly" "$VEILD_LOG"

echo "test_reload: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
