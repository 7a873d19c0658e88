#!/bin/bash
# ok and bad always succeed, so "test && ok || bad" is safe here.
# shellcheck disable=SC2015
# Protocol v2 with the KEM keys in the TPM (kem_keys = tpm; issue 14,
# docs/PROTOCOL-V2.md 4.4) from the command line, on swtpm
# (tests/env/with-tokens.sh, "tpm" in the name):
#
#   veild: server key and answer-signing key in key directories, tpm = on,
#   kem_keys = tpm.  `veil chat --protocol v2` works; `veil attest enroll`
#   makes a trust file; on maximum with --trust the client fetches
#   GET /v2/keys/certify and checks the chain before it encapsulates.
#   Through tests/kemcert_forge.py, a STAND-IN for a tampering gateway or
#   relay (it relays to the real veild and changes only the
#   certification), a flipped signature byte, a changed public area, a
#   certification announced for another key ID and a missing one are each
#   refused as a SecurityError naming the check, and nothing is sent.  A
#   real veild whose KEM keys are in software is refused the same way.
#
# Exit 0 pass, 1 fail, 99 setup failure.
. "${VEIL_SRCDIR:?}/tests/env/tpm_suite.sh" v2tpm
FORGE="$SRC/tests/kemcert_forge.py"
stop_at_exit PROXY_PID

"$K" generate --key-dir "$T/server" --bits 2048 >"$T/keygen.log" 2>&1 \
    || { cat "$T/keygen.log"; hard "veil-keys could not make the server key"; }
"$K" generate --key-dir "$T/signer" --type ec >>"$T/keygen.log" 2>&1 \
    || { cat "$T/keygen.log"; hard "veil-keys could not make the signing key"; }

GW_ARGS=(--server-key "dir:$T/server" --signing-key "dir:$T/signer"
    --tpm on --tpm-tcti "$TCTI"
    --model echo=echo,tiers=standard+high+maximum --rate 100 --burst 100)

check "kem_keys = tpm without tpm = on stops the start, naming the setting (exit 2)" 2 "kem_keys: tpm needs tpm = on" -- \
    timeout 120 "$B/veild" --server-key "dir:$T/server" --model echo=echo --kem-keys tpm --port 0 \
    --state-dir "$T/notpm.state"

veild_start v2tpm "${GW_ARGS[@]}" --kem-keys tpm
URL=$VEILD_URL LOG=$VEILD_LOG
C=(--url "$URL" --allow-http)

grep -q 'v2: KEM keys (P-256) are made in the TPM' "$LOG" \
    && ok "veild says its KEM keys are made in the TPM" || bad "no TPM KEM key line in veild's log" "$LOG"

check "veil chat --protocol v2 to a KEM key in the TPM" 0 "" -- \
    "$V" chat "${C[@]}" -m echo --protocol v2 "a prompt sealed to the TPM"
[ "$(cat "$out")" = "a prompt sealed to the TPM" ] && ok "the v2 answer is printed" || bad "v2 answer text" "$out" "$err"
# the other inner routes open with a TPM KEM key alike
check "veil embed (v2) to a KEM key in the TPM" 0 "" -- \
    "$V" embed "${C[@]}" -m echo "embed me in the TPM"
grep -qE '^\[' "$out" && ok "an embedding is printed" || bad "embedding output" "$out" "$err"
check "veil models --protocol v2 to a KEM key in the TPM: echo listed" 0 "^echo" -- \
    "$V" models "${C[@]}" --protocol v2

check "enrolment: ENROLLED" 0 "" -- \
    "$V" attest enroll --accept-current "${C[@]}" --ek-ca "$EKCA" --out "$T/trust.json"
"$PY" -c 'import json,sys; sys.exit(json.load(open(sys.argv[1])).get("kem_keys") != "tpm")' "$T/trust.json" &&
    ok 'the trust file records the KEM keys in the TPM ("kem_keys": "tpm"): maximum over v2 then requires their certification' ||
    bad "kem_keys in the trust file" "$T/trust.json"

# proxy MODE: the stand-in in front of veild; PURL its URL.
proxy() {
    if [ -n "$PROXY_PID" ]; then
        kill -TERM "$PROXY_PID" 2>/dev/null; wait "$PROXY_PID" 2>/dev/null; PROXY_PID=""
    fi
    rm -f "$T/proxy.port" "$T/proxy.port.posts"
    "$PY" "$FORGE" "$URL" "$T/proxy.port" "$1" >"$T/proxy-$1.log" 2>&1 &
    PROXY_PID=$!
    for _ in $(seq 100); do [ -s "$T/proxy.port" ] && break; sleep 0.05; done
    [ -s "$T/proxy.port" ] || hard "the stand-in did not start: $(cat "$T/proxy-$1.log")"
    PURL="http://127.0.0.1:$(cat "$T/proxy.port")"
    # the trust file names the gateway by URL: one for the stand-in's
    "$PY" -c 'import json,sys; t=json.load(open(sys.argv[1])); t["url"]=sys.argv[2]; json.dump(t, open(sys.argv[3],"w"))' \
        "$T/trust.json" "$PURL" "$T/proxy-trust.json"
}
posts() { cat "$T/proxy.port.posts" 2>/dev/null || echo 0; }

# The certification passes: the client says so and sends the request (what
# the gateway then answers on maximum over v2 is not this test's concern).
proxy pass
"$V" chat --url "$PURL" --allow-http -m echo --protocol v2 --tier maximum -v --trust "$T/proxy-trust.json" \
    "maximum over v2" >"$out" 2>"$err"
grep -qE "KEM key [0-9]+ is a TPM object certified by the enrolled AK" "$err" \
    && ok "maximum over v2: the KEM key's certification by the enrolled AK verifies" \
    || bad "no verified certification line" "$out" "$err"
[ "$(posts)" -ge 1 ] && ok "after the check, the request was sent" || bad "no request reached the gateway" "$err"

forged() {
    proxy "$1"
    check "rejected: $2 (SecurityError, exit 19)" 19 "SecurityError.*KEM key [0-9]+: $3.*nothing was sent" -- \
        "$V" chat --url "$PURL" --allow-http -m echo --protocol v2 --tier maximum --trust "$T/proxy-trust.json" "forged"
    [ "$(posts)" -eq 0 ] && ok "$2: nothing was sent" || bad "$2: a request was sent" "$err"
}
forged sig "a flipped byte in the AK's signature" "TPM2_Certify by the enrolled AK"
forged attrs "a public area changed (restricted set)" "the KEM key's public area"
forged keyid "a certification announced for another key ID" "certification: it is for another key ID"
forged none "no certification (404)" "certification: the gateway offers no TPM certification"

# A real gateway whose KEM keys are in software, under a trust file
# enrolled with them in the TPM: refused the same way.
veild_start v2sw "${GW_ARGS[@]}" --kem-keys software
SWURL=$VEILD_URL
"$PY" -c 'import json,sys; t=json.load(open(sys.argv[1])); t["url"]=sys.argv[2]; json.dump(t, open(sys.argv[3],"w"))' \
    "$T/trust.json" "$SWURL" "$T/sw-trust.json"
check "rejected: a gateway whose KEM keys are in software (SecurityError, exit 19)" 19 \
    "SecurityError.*not TPM objects.*nothing was sent" -- \
    "$V" chat --url "$SWURL" --allow-http -m echo --protocol v2 --tier maximum --trust "$T/sw-trust.json" "to software"

grep -qF "a prompt sealed to the TPM" "$LOG" && bad "plaintext in veild's log" "$LOG" || ok "no prompt in veild's log"

# Enrolment checks the chain itself (issue 14): the key configurations
# signed by the reported signing key, and each KEM key certified by the AK
# being enrolled.  A genuine one reports the check.
check "enrolment checks each KEM key's certification by the AK" 0 \
    "^ok   KEM keys: checked 1 KEM key certification\(s\)" -- \
    "$V" attest enroll --accept-current "${C[@]}" --ek-ca "$EKCA" --out "$T/trust2.json"
grep -qE "^ok   KEM key [0-9]+: a TPM object certified by the AK being enrolled" "$out" &&
    grep -q "^verdict: ENROLLED" "$out" &&
    ok "enrolment: one line per KEM key, then ENROLLED" || bad "enrolment KEM key lines" "$out" "$err"

# Through the stand-in: relayed untouched, enrolment succeeds; that trust
# file is then the one a forged enrolment (--force) must leave as it is.
proxy pass
check "enrolment through the stand-in, nothing changed: ENROLLED" 0 "^verdict: ENROLLED" -- \
    "$V" attest enroll --accept-current --url "$PURL" --allow-http --ek-ca "$EKCA" --out "$T/relay-trust.json"
cp "$T/relay-trust.json" "$T/relay-trust.before" || hard "cannot copy the trust file"
enrol_forged() {
    proxy "$1"
    check "enrolment refused: $2 (exit 19, no trust file)" 19 \
        "^verdict: NOT ENROLLED \($3" -- \
        "$V" attest enroll --accept-current --url "$PURL" --allow-http --ek-ca "$EKCA" \
        --out "$T/relay-trust.json" --force
    grep -qE "^FAIL $3" "$out" && ok "$2: the FAIL line names it" || bad "$2: no FAIL line" "$out" "$err"
    cmp -s "$T/relay-trust.json" "$T/relay-trust.before" &&
        ok "$2: the previous trust file is byte-identical" || bad "$2: the trust file changed" "$T/relay-trust.json"
}
enrol_forged sig "a flipped byte in the AK's signature" "KEM key [0-9]+: TPM2_Certify by the AK being enrolled: "
enrol_forged attrs "a public area changed (restricted set)" "KEM key [0-9]+: the KEM key's public area: "
enrol_forged keyid "a certification announced for another key ID" "KEM key [0-9]+: certification: it is for another key ID"
enrol_forged none "no certification (404)" "KEM key [0-9]+: certification: the gateway offers no TPM certification of it \(HTTP 404"
enrol_forged keysig "a flipped byte in the key configurations' signature" "KEM keys: the key configurations' signature does not verify"
check "enrolment refused with no previous file: none written" 19 "^verdict: NOT ENROLLED" -- \
    "$V" attest enroll --accept-current --url "$PURL" --allow-http --ek-ca "$EKCA" --out "$T/new-trust.json"
[ -e "$T/new-trust.json" ] && bad "a refused enrolment wrote a trust file" "$T/new-trust.json" ||
    ok "a refused enrolment writes no trust file"
# KEM keys in software (kem_keys = software): enrolment has no KEM key
# certification to check, and says nothing of one.
check "enrolment, KEM keys in software: ENROLLED" 0 "^verdict: ENROLLED" -- \
    "$V" attest enroll --accept-current --url "$SWURL" --allow-http --ek-ca "$EKCA" --out "$T/sw-enrolled.json"
grep -q "KEM key" "$out" && bad "KEM key lines for software KEM keys" "$out" ||
    ok "enrolment, KEM keys in software: no KEM key check"

echo "test_v2_tpm_cli: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
