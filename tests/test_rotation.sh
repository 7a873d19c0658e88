#!/bin/bash
# ok and bad always succeed, so "test && ok || bad" is safe here.
# shellcheck disable=SC2015
# Server-key rotation with overlap (issue 15 item 19), as an operator does
# it: a real veild over HTTPS with its server key in a fresh SoftHSM2
# token; `veil-keys rotate` makes the next key in the token; the config
# file gets server_key_next and veild a SIGHUP.  During the overlap
# packages sealed to either key are answered (the NOMYO client of
# tests/nomyo_client.py seals to a key of the test's choosing), a package
# sealed to a key veild does not hold gets the one 400, the next key is
# served at /pki/next_public_key and named in X-Veil-Next-Key, and `veil
# chat --server-key-pin` takes a pin of either key.  After the swap (a
# restart with server_key = the next key) the old key is refused.  No
# timing: every wait polls for what the log says.
#
# Run through tests/env/with-tokens.sh.  Exit 0 pass, 1 fail, 99 setup
# failure.
. "${VEIL_SRCDIR:?}/tests/env/suite.sh" rotation curl openssl
nomyo_setup

hup() {
    local n
    n=$(grep -cE "reloaded:|reload failed:" "$VEILD_LOG")
    kill -HUP "$VEILD_PID" || hard "veild is gone"
    wait_for "$VEILD_LOG" "reloaded:|reload failed:" $((n + 1))
}
write_conf() {
    { for l in "$@"; do echo "$l"; done; } >"$T/veild.conf.new" && chmod 600 "$T/veild.conf.new" &&
        mv "$T/veild.conf.new" "$T/veild.conf" || hard "cannot write the config file"
}
PIN=(--pin-source "file:$VEIL_TEST_PIN_FILE")

# ------------------------------------------------------------------ setup

"$K" generate --token "$TOK" --label rot-a --bits 2048 --module "$MOD" "${PIN[@]}" \
    >"$T/keygen.log" 2>&1 || { cat "$T/keygen.log"; hard "veil-keys could not make the server key"; }
"$K" show --key "$TOK;object=rot-a" --pem --module "$MOD" "${PIN[@]}" >"$T/a.pem" 2>"$err" ||
    hard "veil-keys show rot-a"
fp_a=$("$K" show --key "$TOK;object=rot-a" --fingerprint --module "$MOD" "${PIN[@]}") || hard "fingerprint of rot-a"
# a key veild never holds
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$T/x.key" 2>/dev/null &&
    openssl pkey -in "$T/x.key" -pubout -out "$T/x.pem" || hard "cannot make the stranger key"
fp_x="sha256:$(openssl pkey -pubin -in "$T/x.pem" -outform DER | sha256sum | cut -d' ' -f1)"

# veil-keys rotate: the next key in the token, and the procedure
check "veil-keys rotate makes the next key and prints the procedure" 0 \
    "server_key_next = pkcs11:.*object=rot-b" -- \
    "$K" rotate --token "$TOK" --label rot-b --bits 2048 --key "$TOK;object=rot-a" --module "$MOD" "${PIN[@]}"
cp "$out" "$T/rotate.out"
grep -qE "veil-keys delete --key 'pkcs11:.*object=rot-a.*' --yes" "$T/rotate.out" &&
    grep -q "systemctl reload veild" "$T/rotate.out" && grep -q "restart veild" "$T/rotate.out" &&
    ok "the procedure names the reload, the swap's restart and the old key's deletion" ||
    bad "the printed procedure is incomplete" "$T/rotate.out"
uri_b=$(sed -n 's/^uri: *//p' "$T/rotate.out")
fp_b=$(sed -n 's/^fingerprint: *//p' "$T/rotate.out")
[ -n "$uri_b" ] && [ -n "$fp_b" ] || hard "no uri or fingerprint in the rotate output"
"$K" show --key "$uri_b" --pem --module "$MOD" "${PIN[@]}" >"$T/b.pem" 2>"$err" || hard "veil-keys show rot-b"
check "veil-keys test: the next key unwraps in the token" 0 "^ok: " -- \
    "$K" test --key "$uri_b" --module "$MOD" "${PIN[@]}"
check "veil-keys rotate refuses a label that exists (6)" 6 "" -- \
    "$K" rotate --token "$TOK" --label rot-b --bits 2048 --module "$MOD" "${PIN[@]}"
check "veil-keys rotate without --label shows its usage (2)" 2 "usage: veil-keys rotate" -- \
    "$K" rotate --token "$TOK" --module "$MOD" "${PIN[@]}"

# ------------------------------------------------------------- overlap

write_conf "# no rotation yet"
VD=(--server-key "$TOK;object=rot-a" --pkcs11-module "$MOD" "${PIN[@]}" --model echo=echo --v2 off
    --rate 1000 --burst 1000)
veild_start rot --tls --config "$T/veild.conf" "${VD[@]}"
CA=$VEILD_CA URL=$VEILD_URL
nomyo() { "$PY" "$NC" --url "$URL" --ca-file "$CA" --bits 2048 -m echo "$@"; }
get() { curl -sS --cacert "$CA" -D "$T/headers" -o "$out" -w '%{http_code}' "$URL$1"; }

[ "$(get /pki/next_public_key)" = 404 ] && grep -q "server_key_next is not set" "$out" &&
    ok "no rotation: /pki/next_public_key is 404, saying why" || bad "/pki/next_public_key before a rotation" "$out"
grep -qi '^X-Veil-Next-Key' "$T/headers" && bad "an X-Veil-Next-Key header without a rotation" ||
    ok "no X-Veil-Next-Key without a rotation"

# a next key that does not open: the reload fails, naming the setting
write_conf "server_key_next = $TOK;object=rot-nope"
hup
grep -qE "reload failed: server_key_next $TOK;object=rot-nope: .*; the running configuration stays" "$VEILD_LOG" &&
    ok "a next key that is not in the token fails the reload, naming server_key_next" ||
    bad "no reload failure naming server_key_next" "$VEILD_LOG"

write_conf "server_key_next = $uri_b"
hup
grep -q "next server key: $fp_b" "$VEILD_LOG" && ok "the reload opens the next key and logs its fingerprint" ||
    bad "no 'next server key' line" "$VEILD_LOG"

code=$(get /pki/public_key)
[ "$code" = 200 ] && cmp -s "$out" "$T/a.pem" && ok "/pki/public_key stays the current key" ||
    bad "/pki/public_key during the overlap ($code)" "$out"
grep -qi "^X-Veil-Next-Key: $fp_b" "$T/headers" && ok "/pki/public_key names the next key in X-Veil-Next-Key" ||
    bad "no X-Veil-Next-Key: $fp_b" "$T/headers"
code=$(get /pki/next_public_key)
[ "$code" = 200 ] && cmp -s "$out" "$T/b.pem" && ok "/pki/next_public_key serves the next key" ||
    bad "/pki/next_public_key ($code)" "$out"

check "a package sealed to the current key is answered" 0 '"content": "current"' -- \
    nomyo --seal-to "$T/a.pem" --prompt current
check "a package sealed to the next key is answered" 0 '"content": "next"' -- \
    nomyo --seal-to "$T/b.pem" --prompt next
check "a package sealed to a key veild does not hold gets the one 400" 11 \
    "InvalidRequestError \(HTTP 400\): the request could not be decrypted$" -- \
    nomyo --seal-to "$T/x.pem" --prompt stranger
grep -q "nomyo_client: InvalidRequestError (HTTP 400): the request could not be decrypted" "$err" &&
    ok "the same detail as any package that does not open (no hint which key failed)" || bad "the 400's detail" "$err"

chat() { "$V" chat --url "$URL" --ca-file "$CA" -m echo "$@"; }
check "veil chat pinned to the current key" 0 "pin-a" -- chat --server-key-pin "$fp_a" pin-a
check "veil chat pinned to the next key seals to it" 0 "pin-b" -- chat -v --server-key-pin "$fp_b" pin-b
grep -q "the pinned key $fp_b is the gateway's next key" "$err" &&
    ok "veil says the pin is the gateway's next key" || bad "no 'next key' line from veil -v" "$err"
check "veil chat pinned to another key is refused before sending (19)" 19 \
    "does not match the pinned $fp_x \(nor does a next key at /pki/next_public_key\)" -- \
    chat --server-key-pin "$fp_x" pin-x

# a reload without server_key_next ends the overlap
write_conf "# rotation over"
hup
[ "$(get /pki/next_public_key)" = 404 ] && ok "a reload without server_key_next stops serving the next key" ||
    bad "the next key is still served" "$out"
check "and a package to the next key gets the one 400 again" 11 "could not be decrypted" -- \
    nomyo --seal-to "$T/b.pem" --prompt after
veild_stop || bad "veild did not stop cleanly" "$VEILD_LOG"

# ---------------------------------------------------------------- swap

write_conf "# swapped"
VD[1]="$uri_b"
veild_start swapped --tls --config "$T/veild.conf" "${VD[@]}"
CA=$VEILD_CA URL=$VEILD_URL
code=$(get /pki/public_key)
[ "$code" = 200 ] && cmp -s "$out" "$T/b.pem" && ok "after the swap /pki/public_key is the new key" ||
    bad "/pki/public_key after the swap ($code)" "$out"
check "after the swap a package to the new key is answered" 0 '"content": "new"' -- \
    nomyo --seal-to "$T/b.pem" --prompt new
check "after the swap a package to the old key gets the one 400" 11 \
    "InvalidRequestError \(HTTP 400\): the request could not be decrypted$" -- \
    nomyo --seal-to "$T/a.pem" --prompt old
check "veil chat pinned ahead to the new key still works after the swap" 0 "ahead" -- \
    chat --server-key-pin "$fp_b" ahead
veild_stop || bad "veild did not stop cleanly" "$VEILD_LOG"

# ------------------------------------------------------- start errors

VS=("$B/veild" --server-key "$TOK;object=rot-a" --pkcs11-module "$MOD" "${PIN[@]}" --model m=echo
    --v2 off --port 0 --state-dir "$T/start.state")
check "a next key not in the token stops the start, naming server_key_next (3)" 3 \
    "error: server_key_next $TOK;object=rot-nope: " -- "${VS[@]}" --server-key-next "$TOK;object=rot-nope"
check "the current key as the next one is a configuration error (2)" 2 \
    "server_key_next is the same as server_key" -- "${VS[@]}" --server-key-next "$TOK;object=rot-a"
check "the same key under another name too (2)" 2 "is the current server_key \(the same public key\)" -- \
    "${VS[@]}" --server-key-next "$TOK;id=$(sed -n 's/^id: *//p' "$T/keygen.log" | sed 's/../%&/g')"
check "a PIN in server_key_next is refused without repeating it (2)" 2 \
    "server-key-next: a PIN in the URI \(pin-value\) is refused" -- \
    "${VS[@]}" --server-key-next "$TOK;object=rot-b?pin-value=1234"
grep -q 1234 "$err" && bad "the refused value is repeated" "$err" || ok "the refused value is not repeated"

for f in "$VEIL_TEST_DIR"/veild-rot.log "$VEIL_TEST_DIR"/veild-swapped.log; do
    grep -qF "$(head -1 "$VEIL_TEST_PIN_FILE")" "$f" && bad "the PIN is in $f" || ok "no PIN in $(basename "$f")"
done

echo "test_rotation: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
