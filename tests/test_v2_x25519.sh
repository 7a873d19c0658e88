#!/bin/bash
# ok and bad always succeed, so "test && ok || bad" is safe here.
# shellcheck disable=SC2015
# kem_x25519 = on (issue 14): veild offers a DHKEM(X25519) key
# configuration beside its P-256 one, for OHTTP clients that speak only
# X25519.  A real veild (server and signing keys in the SoftHSM2 token,
# kem_keys = software) spoken to by tests/ohttp_tool.py, an OHTTP client
# written from RFC 9180, 9458 and 9292 (not from veil's C code): the key
# list has both configurations, P-256 first, under one signature that
# verifies; an X25519 request with AES-128-GCM (RFC 9458's example suite)
# gets the echo in an inner 200; one byte of enc changed gets the uniform
# 400; `veil chat --protocol v2` still works (it takes P-256); after
# rotation and grace the X25519 key is destroyed with its P-256 key and a
# request recorded under it gets the uniform 400.  Refused at start:
# kem_x25519 = on with the KEM keys in the token (kem_keys = auto and the
# server key in SoftHSM2), with kem_keys = tpm, and with v2 = off, each
# said on one line of stderr.  No timed assertions: every wait polls veild's log.
#
# Run through tests/env/with-tokens.sh.  Exit 0 pass, 1 fail, 99 setup
# failure.
. "${VEIL_SRCDIR:?}/tests/env/suite.sh" v2x25519 curl
TOOL="$VEIL_SRCDIR/tests/ohttp_tool.py"
PY=${VEIL_PYTHON:-/usr/bin/python3}
"$PY" -c 'from cryptography.hazmat.primitives.asymmetric import x25519' 2>/dev/null ||
    hard "python3-cryptography (with X25519) not installed"
PIN=(--pin-source "file:$VEIL_TEST_PIN_FILE")
UNIFORM='{"type":"https://iana.org/assignments/http-problem-types#ohttp-key","title":"Oblivious HTTP key configuration not acceptable"}'

token_key x25519-server --bits 2048
token_key x25519-signer --type ec
SK=(--server-key "$TOK;object=x25519-server" --signing-key "$TOK;object=x25519-signer"
    --pkcs11-module "$MOD" "${PIN[@]}" --model echo=echo --rate 1000 --burst 1000)

# ------------------------------------------------------- refused at start

VS=("$B/veild" "${SK[@]}" --port 0 --state-dir "$T/start.state")
said_once() { # one line of the last stderr names kem_x25519: the refusal
    [ "$(count "$err" kem_x25519)" = 1 ] &&
        ok "$1: the refusal is said once" || bad "$1: the refusal is not said exactly once" "$err"
}
check "kem_x25519 = on with the KEM keys in the server key's token is refused (2)" 2 \
    "kem_x25519 = on needs the KEM keys in software, and with kem_keys = auto they are made in the server key's token" -- \
    "${VS[@]}" --kem-x25519 on
said_once "with the KEM keys in the server key's token"
check "kem_x25519 = on with kem_keys = tpm is refused (2)" 2 \
    "kem_x25519 = on needs the KEM keys in software, and kem_keys = tpm keeps them in the TPM" -- \
    "${VS[@]}" --kem-x25519 on --kem-keys tpm --tpm on --tpm-pcrs sha256:0
said_once "with kem_keys = tpm"
check "kem_x25519 = on with v2 = off is refused (2)" 2 "kem_x25519 is on but v2 is off" -- \
    "${VS[@]}" --kem-x25519 on --v2 off
said_once "with v2 = off"

# ------------------------------------------------------------ the default

veild_start x25519off "${SK[@]}" --kem-keys software
"$PY" "$TOOL" keys "$VEILD_URL" >"$out" 2>"$err"
[ "$(grep -c '^config ' "$out")" = 1 ] && grep -q '^config [0-9]* 0010 65 0001/0002 0001/0001$' "$out" &&
    ok "kem_x25519 off (the default): one P-256 configuration, as before" || bad "the default key list" "$out" "$err"
veild_stop || bad "veild did not stop cleanly" "$VEILD_LOG"

# ------------------------------------------------------------------ on

veild_start x25519 "${SK[@]}" --kem-keys software --kem-x25519 on --kem-rotate 8 --kem-grace 5
URL=$VEILD_URL LOG=$VEILD_LOG
grep -q "v2: KEM keys (P-256, each with an X25519 companion) are made in software" "$LOG" &&
    ok "veild says each KEM key has an X25519 companion, in software" || bad "no X25519 line in the log" "$LOG"

"$PY" "$TOOL" keys "$URL" >"$T/keys.txt" 2>"$err"
mapfile -t cf < <(grep '^config ' "$T/keys.txt")
[ "${#cf[@]}" = 2 ] && [[ ${cf[0]} =~ ^config\ [0-9]+\ 0010\ 65\ 0001/0002\ 0001/0001$ ]] &&
    [[ ${cf[1]} =~ ^config\ [0-9]+\ 0020\ 32\ 0001/0002\ 0001/0001$ ]] &&
    ok "the key list has the P-256 configuration, then the X25519 one, same suites" ||
    bad "the key list" "$T/keys.txt" "$err"
grep -qx "signature ok" "$T/keys.txt" &&
    ok "X-Veil-Keys-Signature covers both and verifies under the signing key" || bad "the key list's signature" "$T/keys.txt"
id_p=$(echo "${cf[0]}" | cut -d' ' -f2) id_x=$(echo "${cf[1]}" | cut -d' ' -f2)
[ -n "$id_p" ] && [ -n "$id_x" ] && [ "$id_p" != "$id_x" ] &&
    ok "the two configurations have their own key IDs ($id_p, $id_x)" || bad "key IDs $id_p, $id_x" "$T/keys.txt"

check "an X25519 + AES-128-GCM request gets an inner 200 with the echo" 0 "x25519 over ohttp" -- \
    "$PY" "$TOOL" x25519 "$URL" echo "x25519 over ohttp" "$T/sent.req"
sed -n 1p "$out" | grep -qx "outer 200 message/ohttp-res" && sed -n 2p "$out" | grep -qx "inner 200" &&
    ok "outer 200 message/ohttp-res, inner 200" || bad "the X25519 exchange" "$out" "$err"
check "its replay gets the uniform 400" 0 "" -- "$PY" "$TOOL" post "$URL" "$T/sent.req"
grep -qx "outer 400 application/problem+json" "$out" && grep -qxF "$UNIFORM" "$out" &&
    ok "the replay: the uniform 400" || bad "the replay's answer" "$out"

check "one byte of enc changed gets the uniform 400" 0 "^outer 400 application/problem\+json$" -- \
    "$PY" "$TOOL" x25519 "$URL" echo "tampered" "$T/tampered.req" tamper
grep -qxF "$UNIFORM" "$out" && ok "byte for byte the uniform answer" || bad "the tampered request's answer" "$out"

check "veil chat --protocol v2 still works (it takes P-256)" 0 "p256 beside x25519" -- \
    "$V" chat --url "$URL" --allow-http -m echo --protocol v2 -v "p256 beside x25519"
grep -q "v2 key configuration of .*: key ID $id_p," "$err" &&
    ok "the veil client chose the P-256 configuration (key ID $id_p)" || bad "the key the client chose" "$err"

# rotation: the companion goes with its P-256 key, on the same schedule
"$PY" "$TOOL" x25519 "$URL" echo "in grace" "$T/grace.req" record >"$out" 2>&1 &&
    "$PY" "$TOOL" x25519 "$URL" echo "recorded" "$T/old.req" record >>"$out" 2>&1 ||
    hard "could not record requests"
wait_for "$LOG" "v2: KEM key $(((id_p + 1) % 256)) replaces key $id_p \(and its X25519 companion\)"
"$PY" "$TOOL" keys "$URL" >"$T/keys2.txt" 2>"$err"
grep -q "^config $(((id_p + 1) % 256)) 0010 " "$T/keys2.txt" &&
    grep -q "^config $(((id_x + 1) % 256)) 0020 " "$T/keys2.txt" && grep -qx "signature ok" "$T/keys2.txt" &&
    ok "after rotation both configurations are new (key IDs +1), signed" || bad "the key list after rotation" "$T/keys2.txt"
check "in grace, a request to the replaced X25519 key still opens (outer 200)" 0 \
    "^outer 200 message/ohttp-res$" -- \
    "$PY" "$TOOL" post "$URL" "$T/grace.req"
wait_for "$LOG" "v2: KEM key $id_x destroyed"
grep -q "v2: KEM key $id_p destroyed" "$LOG" &&
    ok "the X25519 key is destroyed with its P-256 key" || bad "the P-256 key's destruction" "$LOG"
check "after the grace, a request recorded under the old X25519 key gets the uniform 400" 0 \
    "^outer 400 application/problem\+json$" -- "$PY" "$TOOL" post "$URL" "$T/old.req"
grep -qxF "$UNIFORM" "$out" && ok "byte for byte the uniform answer" || bad "the recorded request's answer" "$out"
veild_stop || bad "veild did not stop cleanly" "$LOG"

# auto with the server key out of a token: the keys are in software, and
# kem_x25519 = on (here from the config file) is taken
"$K" generate --key-dir "$T/server" --bits 2048 >>"$T/keygen.log" 2>&1 || hard "veil-keys --key-dir"
echo "kem_x25519 = on" >"$T/x25519.conf" && chmod 600 "$T/x25519.conf" || hard "cannot write the config file"
veild_start x25519dir --server-key "dir:$T/server" --model echo=echo --config "$T/x25519.conf"
grep -q "v2: KEM keys (P-256, each with an X25519 companion) are made in software" "$VEILD_LOG" &&
    ok "kem_keys = auto with the server key in a key directory takes kem_x25519 = on (config file)" ||
    bad "no X25519 line with a key directory" "$VEILD_LOG"
veild_stop || bad "veild did not stop cleanly" "$VEILD_LOG"

echo "test_v2_x25519: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
