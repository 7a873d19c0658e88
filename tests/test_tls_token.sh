#!/bin/bash
# ok and bad always succeed, so "test && ok || bad" is safe here.
# shellcheck disable=SC2015
# The TLS key in the token (issue 15 item 18), as an operator does it: the
# TLS key is made in a fresh SoftHSM2 token (veil-keys generate), its
# certificate is issued by a test CA with certtool signing through the
# token (certtool --load-privkey pkcs11:...), and a real veild serves
# HTTPS with tls_key = that pkcs11: URI: a chat through it with `veil
# --ca-file`; the served certificate is the token key's; SIGHUP reads a
# new certificate for the same token key; a wrong URI or a wrong PIN stops
# the start with the documented exit code (3, 4) and a message naming
# tls_key, never the PIN; --check-config checks the chain without opening
# the token.
#
# Run through tests/env/with-tokens.sh.  Exit 0 pass, 1 fail, 99 setup
# failure.
. "${VEIL_SRCDIR:?}/tests/env/suite.sh" tlstoken openssl
command -v certtool >/dev/null || hard "certtool not found (gnutls-bin)"
PIN=(--pin-source "file:$VEIL_TEST_PIN_FILE")

served_cert() {
    openssl s_client -connect "127.0.0.1:$VEILD_PORT" -servername 127.0.0.1 </dev/null 2>/dev/null |
        openssl x509 -noout -fingerprint -sha256 2>/dev/null
}
file_cert() { openssl x509 -in "$1" -noout -fingerprint -sha256; }

# ------------------------------------------------------------------ setup

"$K" generate --token "$TOK" --label srv --bits 2048 --module "$MOD" "${PIN[@]}" \
    >"$T/srv.log" 2>&1 || { cat "$T/srv.log"; hard "veil-keys could not make the server key"; }
"$K" generate --token "$TOK" --label tls --type ec --module "$MOD" "${PIN[@]}" \
    >"$T/tls.log" 2>&1 || { cat "$T/tls.log"; hard "veil-keys could not make the TLS key"; }
TLS_URI="$TOK;object=tls;type=private"
fixture_tls || hard "cannot make the test CA"
CA="$FIXTURE_TLS_DIR/ca.pem"
# cert SERIAL FILE: a certificate for the token's TLS key, signed by the CA
cert() {
    printf '%s\n' "cn = 127.0.0.1" "ip_address = 127.0.0.1" "tls_www_server" "signing_key" \
        "serial = $1" "expiration_days = 2" >"$T/tmpl"
    GNUTLS_PIN=$(head -1 "$VEIL_TEST_PIN_FILE") certtool --generate-certificate --provider "$MOD" \
        --load-privkey "$TLS_URI" --load-ca-certificate "$CA" \
        --load-ca-privkey "$FIXTURE_TLS_DIR/ca.key" --template "$T/tmpl" --outfile "$2" \
        >"$T/certtool.log" 2>&1 || { cat "$T/certtool.log"; hard "certtool could not issue the certificate"; }
}
cert 10 "$T/tls.pem"

VD=(--server-key "$TOK;object=srv" --pkcs11-module "$MOD" "${PIN[@]}" --model echo=echo --v2 off)

# ------------------------------------------------------------------ checks

check "--check-config takes a pkcs11: tls_key (the chain read, no token opened)" 0 "configuration OK" -- \
    "$B/veild" "${VD[@]}" --tls-cert "$T/tls.pem" --tls-key "$TLS_URI" --check-config
check "a PIN in the tls_key URI is refused without repeating it (2)" 2 \
    "tls-key: a PIN in the URI \(pin-value\) is refused" -- \
    "$B/veild" "${VD[@]}" --tls-cert "$T/tls.pem" --tls-key "$TLS_URI?pin-value=98765"
grep -q 98765 "$err" && bad "the refused value is repeated" "$err" || ok "the refused value is not repeated"

cp "$T/tls.pem" "$T/served.pem"
write_conf() {
    printf '%s\n' "tls_cert = $T/served.pem" "tls_key = $TLS_URI" >"$T/veild.conf" &&
        chmod 600 "$T/veild.conf" || hard "cannot write the config file"
}
write_conf
veild_start tok --config "$T/veild.conf" "${VD[@]}"
URL="https://127.0.0.1:$VEILD_PORT"
grep -q "info: TLS key: in the token, EC-P256 sha256:" "$VEILD_LOG" &&
    ok "veild says the TLS key is in the token" || bad "no 'TLS key: in the token' line" "$VEILD_LOG"
grep -q "listening on https://" "$VEILD_LOG" && ok "veild listens over HTTPS" || bad "not HTTPS" "$VEILD_LOG"
[ "$(served_cert)" = "$(file_cert "$T/tls.pem")" ] && ok "the certificate of the token key is served" ||
    bad "the served certificate is not tls_cert's" "$VEILD_LOG"
check "a chat over HTTPS with the TLS key in the token (veil --ca-file)" 0 "through the token" -- \
    "$V" chat --url "$URL" --ca-file "$CA" -m echo "through the token"

# SIGHUP: a new certificate for the same token key
cert 11 "$T/tls2.pem"
cp "$T/tls2.pem" "$T/served.pem"
n=$(grep -cE "reloaded:|reload failed:" "$VEILD_LOG")
kill -HUP "$VEILD_PID"
wait_for "$VEILD_LOG" "reloaded:|reload failed:" $((n + 1))
grep -q "reloaded:.*TLS certificate read again" "$VEILD_LOG" && ok "SIGHUP re-imports the token key and the new certificate" ||
    bad "the reload failed" "$VEILD_LOG"
[ "$(served_cert)" = "$(file_cert "$T/tls2.pem")" ] && ok "new connections get the new certificate" ||
    bad "the new certificate is not served" "$VEILD_LOG"
check "a chat after the reload" 0 "after" -- "$V" chat --url "$URL" --ca-file "$CA" -m echo "after"
veild_stop && ok "veild stops cleanly" || bad "veild did not stop cleanly" "$VEILD_LOG"

# start errors: a wrong URI, a wrong PIN, a certificate of another key
VS=("$B/veild" --server-key "$TOK;object=srv" --pkcs11-module "$MOD" --model echo=echo --v2 off
    --port 0 --state-dir "$T/start.state")
check "a TLS key that is not in the token stops the start, naming tls_key (3)" 3 \
    "error: tls_key $TOK;object=nope: " -- \
    "${VS[@]}" "${PIN[@]}" --tls-cert "$T/tls.pem" --tls-key "$TOK;object=nope"
# The TLS key in a token of its own, with another PIN than the server
# key's: the server key's token takes pin_source's PIN, the TLS key's
# token rejects it.
printf '%s\n' 24682468 >"$T/tls-token.pin" && chmod 600 "$T/tls-token.pin"
softhsm2-util --init-token --free --label veil-tls --so-pin 13571357 --pin 24682468 >"$T/init.log" 2>&1 ||
    { cat "$T/init.log"; hard "cannot make the TLS token"; }
TOK3="pkcs11:token=veil-tls"
"$K" generate --token "$TOK3" --label tls3 --type ec --module "$MOD" --pin-source "file:$T/tls-token.pin" \
    >"$T/tls3.log" 2>&1 || { cat "$T/tls3.log"; hard "veil-keys could not make the key of the TLS token"; }
check "a PIN the TLS key's token rejects stops the start, naming tls_key (4)" 4 \
    "error: tls_key $TOK3;object=tls3: .*PIN" -- \
    "${VS[@]}" "${PIN[@]}" --tls-cert "$T/tls.pem" --tls-key "$TOK3;object=tls3"
grep -qF "$(head -1 "$VEIL_TEST_PIN_FILE")" "$out" "$err" && bad "the PIN is in the message" "$err" ||
    ok "the PIN is not in the message"
check "the rejected PIN is not tried again at the next start (4)" 4 "tls_key $TOK3;object=tls3: .*" -- \
    "${VS[@]}" "${PIN[@]}" --tls-cert "$T/tls.pem" --tls-key "$TOK3;object=tls3"
check "a certificate of another key is named (2)" 2 \
    "tls_key $TLS_URI is not the key of the certificate in tls_cert $FIXTURE_TLS_DIR/server.pem" -- \
    "${VS[@]}" "${PIN[@]}" --tls-cert "$FIXTURE_TLS_DIR/server.pem" --tls-key "$TLS_URI"

grep -qF "$(head -1 "$VEIL_TEST_PIN_FILE")" "$VEIL_TEST_DIR/veild-tok.log" && bad "the PIN is in veild's log" ||
    ok "no PIN in veild's log"

echo "test_tls_token: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
