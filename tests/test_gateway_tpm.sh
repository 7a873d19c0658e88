#!/bin/bash
# ok and bad always succeed, so "test && ok || bad" is safe here.
# shellcheck disable=SC2015
# veild with its server key in a TPM: the key is made in the tpm2-pkcs11
# token (RSA-3072, the largest the TPM makes; OAEP-SHA256 runs inside the
# TPM), veild serves the echo model over HTTPS, and both `veil chat` (its
# answer key in memory) and tests/nomyo_client.py (the NOMYO Python
# client's wire format) get their prompt back.  The "tpm" in the name
# makes tests/env/with-tokens.sh start swtpm, tpm2-abrmd and tpm2-pkcs11.
#
# Run through tests/env/with-tokens.sh.  Exit 0 pass, 1 fail, 99 setup
# failure.
. "${VEIL_SRCDIR:?}/tests/env/tpm_suite.sh" gw-tpm
nomyo_setup
BITS=3072

# ------------------------------------------------------------------ setup

"$K" generate --token "$TTOK" --label gw-tpm-server --bits "$BITS" --module "$TM" --pin-source "$PINSRC" >"$T/keygen.log" 2>&1 \
    || { cat "$T/keygen.log"; hard "veil-keys could not make an RSA-$BITS key in the TPM token"; }
SERVER_FP=$("$K" show --key "$TTOK;object=gw-tpm-server" --fingerprint --module "$TM" --pin-source "$PINSRC" 2>"$T/show.err") \
    || { cat "$T/show.err"; hard "veil-keys show on the TPM key"; }

veild_start tpm --tls --server-key "$TTOK;object=gw-tpm-server" \
    --pkcs11-module "$TM" --pin-source "$PINSRC" --model echo=echo \
    --rate 100 --burst 100 --log-level debug
URL=$VEILD_URL CA=$VEILD_CA LOG=$VEILD_LOG PID=$VEILD_PID

grep -qE "server key: .*RSA-$BITS $SERVER_FP, sensitive, not extractable" "$LOG" \
    && ok "veild opened the TPM key (RSA-$BITS, sensitive, not extractable)" \
    || bad "veild's log does not name the TPM key $SERVER_FP" "$LOG"
grep -q 'key "gw-tpm-server": RSA-OAEP-SHA256 runs natively' "$LOG" \
    && ok "RSA-OAEP-SHA256 runs natively in the TPM (veild's debug log)" \
    || bad "veild did not report native OAEP-SHA256 on the TPM key" "$LOG"
check "veil server-key --fingerprint: the served key is the TPM key" 0 "^$SERVER_FP\$" -- \
    "$V" server-key --url "$URL" --ca-file "$CA" --fingerprint

# -------------------------------------------------------------- round trips

P1="sealed to a key inside the TPM"
check "veil chat (answer key in memory), server key pinned: round trip" 0 "" -- \
    "$V" chat --url "$URL" --ca-file "$CA" -m echo --server-key-pin "$SERVER_FP" "$P1"
[ "$(cat "$out")" = "$P1" ] && ok "veil chat prints the prompt echoed" || bad "veil chat output" "$out" "$err"

P2="the NOMYO Python wire format, opened in the TPM"
check "NOMYO client, python variant: round trip" 0 "" -- \
    "$PY" "$NC" --url "$URL" --ca-file "$CA" --variant python --bits 2048 -m echo --prompt "$P2"
answer_is "python variant: the answer's content is the prompt" "a['choices'][0]['message']['content'] == '$P2'"
answer_is "python variant: _metadata.payload_id is the X-Payload-ID sent; tier standard; encrypted" \
    "md['payload_id'] == sent and md['security_tier'] == 'standard' and md['is_encrypted'] is True"
check "NOMYO client, js variant: round trip" 0 "" -- \
    "$PY" "$NC" --url "$URL" --ca-file "$CA" --variant js --bits 2048 -m echo --prompt "tag appended, TPM"
answer_is "js variant: the answer's content is the prompt" "a['choices'][0]['message']['content'] == 'tag appended, TPM'"
check "a replayed package is refused with 409 (exit 14)" 14 "APIError \(HTTP 409\)" -- \
    "$PY" "$NC" --url "$URL" --ca-file "$CA" --variant python --bits 2048 -m echo --send-twice --prompt "once"

if curl -fsS --cacert "$CA" "$URL/healthz" >"$out" 2>"$err" && grep -q '"token":{"ok":true' "$out"; then
    ok "GET /healthz: the TPM token answers (a secret unwrapped inside it)"
else
    bad "/healthz" "$out" "$err"
fi
grep -qF -- "$P1" "$LOG" || grep -qF -- "$P2" "$LOG" && bad "plaintext in veild's debug log" "$LOG" || ok "no prompt in veild's log, even at debug level"

# ------------------------------------------------------------------ stop

kill -TERM "$PID"
st=0
wait "$PID" || st=$?
[ "$st" -eq 0 ] && ok "veild (pid $PID) stopped cleanly on SIGTERM" || bad "veild exited $st on SIGTERM" "$LOG"

echo "test_gateway_tpm: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
