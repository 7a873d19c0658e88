#!/bin/bash
# ok and bad always succeed, so "test && ok || bad" is safe here.
# shellcheck disable=SC2015
# The maximum tier over protocol v2 (docs/PROTOCOL-V2.md section 8,
# docs/ATTESTATION.md "Over protocol v2"), on swtpm with an EK certificate
# from a local CA (tests/env/with-tokens.sh).
#
#   veild: server key RSA in the SoftHSM2 token (so the KEM keys too), the
#   answer-signing key ECDSA P-256 in a key directory, tpm = on.
#
#   veil attest enroll -> trust file; veil chat --protocol v2 --tier
#   maximum --trust: the quote inside the encapsulated answer verified (its
#   qualifying data over the request identifier, the inner request, the
#   KEM key and the backend statement); --protocol auto on maximum takes
#   v2; embeddings too.  What the gateway answers inside (inner 403, inner
#   503 with and without retry-after) is read by tests/ohttp_tool.py, an
#   OHTTP client written from the RFCs.  Evidence from another request, a
#   missing and a changed quote come from a stand-in gateway
#   (tests/ohttp_tool.py standin, named as such) that holds the signing
#   key and relays to the real veild: the signature then verifies, and
#   only the quote can tell.
#
# Run through tests/env/with-tokens.sh ("tpm" in the name starts the TPM).
# Exit 0 pass, 1 fail, 99 setup failure.
. "${VEIL_SRCDIR:?}/tests/env/tpm_suite.sh" v2max openssl
TOOL="$SRC/tests/ohttp_tool.py"
stop_at_exit SI_PID
mkdir -p "$T/signer" || hard "cannot make $T"

# ------------------------------------------------------------------ setup

"$K" generate --token "$STOK" --label v2m-server --bits 2048 --module "$SM" --pin-source "$PINSRC" >"$T/keygen.log" 2>&1 \
    || { cat "$T/keygen.log"; hard "veil-keys could not make the server key"; }
# The signing key in a key directory (PKCS#8), so that the stand-in
# gateway below can hold it too.
(umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$T/signer/private_key.pem" \
    && openssl pkey -in "$T/signer/private_key.pem" -pubout -out "$T/signer/public_key.pem") >"$T/ec.log" 2>&1 \
    || { cat "$T/ec.log"; hard "openssl could not make the signing key"; }

MAX_ARGS=(--server-key "$STOK;object=v2m-server" --pkcs11-module "$SM" --pin-source "$PINSRC"
    --signing-key "dir:$T/signer" --tpm on --tpm-tcti "$TCTI"
    --model echo=echo,tiers=standard+high+maximum --model plain=echo,tiers=standard
    --model far=https://192.0.2.2:9/v1,tiers=standard+maximum
    --rate 100 --burst 100)
veild_start v2max "${MAX_ARGS[@]}"
URL=$VEILD_URL LOG=$VEILD_LOG V2_PID=$VEILD_PID
C=(--url "$URL" --allow-http)

check "enrolment: ENROLLED" 0 "" -- \
    "$V" attest enroll --accept-current "${C[@]}" --ek-ca "$EKCA" --out "$T/trust.json"
# KEM keys in SoftHSM2 (kem_keys = auto): the trust file says so, and
# maximum over v2 rests on the configuration's signature and the quote
"$PY" -c 'import json,sys; sys.exit(json.load(open(sys.argv[1])).get("kem_keys") != "token")' "$T/trust.json" &&
    ok 'the trust file records where the KEM keys are ("kem_keys": "token")' ||
    bad "kem_keys in the trust file" "$T/trust.json"

# --------------------------------------------------- verified over v2

P1="a maximum prompt over protocol v2"
check "veil chat --protocol v2 --tier maximum --trust: the quote inside verifies" 0 \
    "answer check: ok quote: signature, qualifying data \(payload [0-9a-f]{64}, this request, the KEM key and the enrolled signing key, backend statement\) and PCR digest" -- \
    "$V" chat "${C[@]}" -m echo --protocol v2 --tier maximum --trust "$T/trust.json" -v "$P1"
[ "$(cat "$out")" = "$P1" ] && ok "the verified answer is printed" || bad "answer text" "$out" "$err"
grep -q "answer check: ok PCR values: as enrolled" "$err" && grep -q "attested backend of model echo: echo (transport echo, this-host)" "$err" \
    && grep -qE "protocol v2, request [0-9a-f]{64}" "$err" \
    && ok "PCR values as enrolled, the attested backend shown, over protocol v2" \
    || bad "no PCR, backend or protocol line" "$err"

check "--json: the answer's _metadata as the client checked it" 0 "" -- \
    "$V" chat "${C[@]}" -m echo --protocol v2 --tier maximum --trust "$T/trust.json" --json "json prompt"
cp "$out" "$T/answer.json"
[ "$(field "$T/answer.json" 'j["_metadata"]["payload_id"] == j["_metadata"]["request_id"] and j["_metadata"]["protocol"]')" = v2 ] \
    && [ "$(field "$T/answer.json" 'j["_metadata"]["security_tier"]')" = maximum ] \
    && [ "$(field "$T/answer.json" 'j["_metadata"]["tpm_attestation"]["format"]')" = veil-tpm2-quote-v1 ] \
    && [ "$(field "$T/answer.json" 'j["_metadata"]["tpm_attestation"]["key_certify"]')" = None ] \
    && [ "$(field "$T/answer.json" 'j["_metadata"]["attested_backend"]["transport"]')" = echo ] \
    && ok "_metadata: veild's (payload_id = the request identifier, the quote, no key_certify) and the attested backend" \
    || bad "_metadata of the v2 maximum answer" "$T/answer.json"

check "--protocol auto on maximum takes v2 and verifies" 0 "protocol v2, request [0-9a-f]{64}" -- \
    "$V" chat "${C[@]}" -m echo --tier maximum --trust "$T/trust.json" -v "auto on maximum"
check "without a trust file: the quote checked against this request and KEM key, with the warning" 0 \
    "TPM quote matches this request" -- \
    "$V" chat "${C[@]}" -m echo --protocol v2 --tier maximum "no trust file"
check "veil embed --tier maximum: the embeddings answer's quote is checked too" 0 "TPM quote matches this request" -- \
    "$V" embed "${C[@]}" -m echo --tier maximum "embed me"

# ------------------------------------------- refusals, inside the answer

check "a model without maximum: 403 (exit 13)" 13 "model 'plain' is not allowed on the maximum tier" -- \
    "$V" chat "${C[@]}" -m plain --protocol v2 --tier maximum --trust "$T/trust.json" "not on maximum"
"$PY" "$TOOL" ask "$URL" maximum plain "not on maximum" >"$T/ask403.txt" 2>&1
[ "$(sed -n 1p "$T/ask403.txt")" = "outer 200 message/ohttp-res" ] && [ "$(sed -n 2p "$T/ask403.txt")" = "inner 403" ] \
    && ok "an OHTTP client from the RFCs: the 403 travels inside the encapsulated answer (outer 200)" \
    || bad "the model's 403 over v2" "$T/ask403.txt"
check "a model whose backend is off the attested host: 403 (exit 13)" 13 "its upstream is on another host" -- \
    "$V" chat "${C[@]}" -m far --protocol v2 --tier maximum --trust "$T/trust.json" "far away"
"$PY" "$TOOL" ask "$URL" maximum echo "asked from python" "$T/signer/public_key.pem" >"$T/ask200.txt" 2>&1
sed -n 2p "$T/ask200.txt" | grep -qx "inner 200" && grep -q '"tpm_attestation":{"is_available":true' "$T/ask200.txt" \
    && ok "an OHTTP client from the RFCs gets the quote in _metadata.tpm_attestation" \
    || bad "maximum answer read by ohttp_tool.py" "$T/ask200.txt"
# The quote's qualifying data is the document's formula: rebuilt in Python
# from the request identifier, the JSON sent, the KEM key, the signing key
# and the backend statement, it is the extraData the TPM quoted.
QD=$(sed -n 's/^qualifying data: //p' "$T/ask200.txt")
[ -n "$QD" ] && [ "$QD" = "$(sed -n 's/^quoted extraData: //p' "$T/ask200.txt")" ] \
    && ok "the qualifying data rebuilt from docs/ATTESTATION.md equals the quote's" \
    || bad "qualifying data differs from the document's formula" "$T/ask200.txt"

# ---------------------------- the stand-in gateway: evidence it cannot forge
# standin MODE: starts the stand-in (a mock) relaying to the real veild;
# sets SURL and STRUST (the trust file with its URL).
standin() {
    if [ -n "$SI_PID" ]; then
        kill -TERM "$SI_PID" 2>/dev/null; wait "$SI_PID" 2>/dev/null; SI_PID=""
    fi
    rm -f "$T/si.port"
    "$PY" "$TOOL" standin "$URL" "$T/si.port" "$T/signer" "$1" >"$T/si-$1.log" 2>&1 &
    SI_PID=$!
    for _ in $(seq 100); do [ -s "$T/si.port" ] && break; sleep 0.05; done
    [ -s "$T/si.port" ] || hard "the stand-in gateway did not start: $(cat "$T/si-$1.log")"
    SURL="http://127.0.0.1:$(cat "$T/si.port")"
    STRUST="$T/si-trust.json"
    "$PY" -c 'import json,sys; t=json.load(open(sys.argv[1])); t["url"]=sys.argv[2]; json.dump(t, open(sys.argv[3],"w"))' \
        "$T/trust.json" "$SURL" "$STRUST"
}
standin relay
check "stand-in: a standard answer, relayed and signed with the enrolled key, is taken (the stand-in itself is sound)" 0 \
    "answer signature verified" -- \
    "$V" chat --url "$SURL" --allow-http -m echo --protocol v2 --trust "$STRUST" -v "relayed standard"
[ "$(cat "$out")" = "relayed standard" ] && ok "  its answer is printed" || bad "stand-in standard answer" "$out" "$err"
check "rejected: a genuine quote for another request (the relayed one), payload ID set to this one (exit 19)" 19 \
    "SecurityError.*quote: .*qualifying data" -- \
    "$V" chat --url "$SURL" --allow-http -m echo --protocol v2 --tier maximum --trust "$STRUST" "relayed maximum"
[ ! -s "$out" ] && ok "  nothing printed" || bad "output for a refused answer" "$out"
standin keep-id
check "rejected: an answer naming another request's identifier (exit 19)" 19 \
    "SecurityError.*another request than this one" -- \
    "$V" chat --url "$SURL" --allow-http -m echo --protocol v2 --tier maximum --trust "$STRUST" "relayed, id kept"
standin strip
check "rejected: a maximum answer without its quote (exit 19)" 19 "SecurityError.*carries no TPM quote" -- \
    "$V" chat --url "$SURL" --allow-http -m echo --protocol v2 --tier maximum --trust "$STRUST" "quote stripped"
check "rejected: the same without a trust file (exit 19)" 19 "SecurityError.*no TPM attestation" -- \
    "$V" chat --url "$SURL" --allow-http -m echo --protocol v2 --tier maximum "quote stripped, no trust"
standin flip
check "rejected: one byte of the quote changed (exit 19)" 19 "SecurityError.*quote" -- \
    "$V" chat --url "$SURL" --allow-http -m echo --protocol v2 --tier maximum --trust "$STRUST" "quote flipped"
kill -TERM "$SI_PID" 2>/dev/null; wait "$SI_PID" 2>/dev/null; SI_PID=""

# ------------------------------------------------ no TPM on the gateway
veild_start v2max-notpm --server-key "$STOK;object=v2m-server" --pkcs11-module "$SM" --pin-source "$PINSRC" \
    --signing-key "dir:$T/signer" --model echo=echo,tiers=standard+maximum --rate 100 --burst 100
NURL=$VEILD_URL
check "maximum over v2 on a gateway without a TPM: 503 (exit 17)" 17 "no TPM attestation available" -- \
    "$V" chat --url "$NURL" --allow-http -m echo --protocol v2 --tier maximum "no TPM here"
"$PY" "$TOOL" ask "$NURL" maximum echo "no TPM here" >"$T/notpm.txt" 2>&1
[ "$(sed -n 1p "$T/notpm.txt")" = "outer 200 message/ohttp-res" ] && [ "$(sed -n 2p "$T/notpm.txt")" = "inner 503" ] \
    && grep -q 'no TPM attestation available' "$T/notpm.txt" && ! grep -qi '^retry-after:' "$T/notpm.txt" \
    && ok "no TPM: the inner 503 is the permanent one (no retry-after), inside the encapsulated answer" \
    || bad "no TPM over v2" "$T/notpm.txt"

# ------------------------------------------------ the TPM's own line
# One worker slot, one TPM operation at once and one more that may wait;
# the test stand-in tpm_test_delay makes every TPM operation take 10 s.
# Two maximum requests over v2 fill the line (their places taken once
# each request is open); a third gets the inner 503 with an inner
# retry-after; a standard request is answered meanwhile (the waiting
# requests gave their worker slot back); both maximum answers verify.
kill -TERM "$V2_PID" && wait "$V2_PID" || bad "veild (v2max) did not stop cleanly"
veild_start v2max-busy "${MAX_ARGS[@]}" --state-dir "$VEIL_TEST_DIR/veild-v2max.state" \
    --workers 1 --tpm-workers 1 --tpm-queue 1 --tpm-queue-wait 60 --tpm-test-delay 10000 --log-level debug
BURL=$VEILD_URL BLOG=$VEILD_LOG
BTRUST="$T/busy-trust.json"
"$PY" -c 'import json,sys; t=json.load(open(sys.argv[1])); t["url"]=sys.argv[2]; json.dump(t, open(sys.argv[3],"w"))' \
    "$T/trust.json" "$BURL" "$BTRUST"
MAXC=(chat --url "$BURL" --allow-http -m echo --protocol v2 --tier maximum --trust "$BTRUST" --retries 0)
"$V" "${MAXC[@]}" "slow quote one" >"$T/max1.out" 2>"$T/max1.err" &
M1=$!
"$V" "${MAXC[@]}" "slow quote two" >"$T/max2.out" 2>"$T/max2.err" &
M2=$!
wait_for "$BLOG" 'waits for its turn at the TPM'
ok "two maximum requests over v2 fill the TPM's line (one at the TPM, one waiting)"
"$PY" "$TOOL" ask "$BURL" maximum echo "one too many" >"$T/busy.txt" 2>&1
[ "$(sed -n 1p "$T/busy.txt")" = "outer 200 message/ohttp-res" ] && [ "$(sed -n 2p "$T/busy.txt")" = "inner 503" ] \
    && grep -qE '^retry-after: [1-9][0-9]*$' "$T/busy.txt" && grep -q 'the TPM is busy' "$T/busy.txt" \
    && ok "TPM line full: the inner 503 with an inner retry-after, inside the encapsulated answer" \
    || bad "TPM line full over v2" "$T/busy.txt"
check "TPM line full: veil chat over v2 gets 503 'the TPM is busy' (exit 17)" 17 "the TPM is busy" -- \
    "$V" "${MAXC[@]}" "one too many"
check "TPM line full: a standard request over v2 is still answered" 0 "standard while the TPM is busy" -- \
    "$V" chat --url "$BURL" --allow-http -m echo --protocol v2 --retries 0 "standard while the TPM is busy"
kill -0 "$M2" 2>/dev/null \
    && ok "the standard answer came while a maximum request still waited for the TPM" \
    || bad "both maximum requests were done before the standard answer" "$T/max1.err" "$T/max2.err"
st1=0 st2=0
wait "$M1" || st1=$?
wait "$M2" || st2=$?
[ "$st1" -eq 0 ] && [ "$st2" -eq 0 ] && grep -q 'slow quote one' "$T/max1.out" && grep -q 'slow quote two' "$T/max2.out" \
    && ok "both maximum requests in the TPM's line got verified answers" \
    || bad "a maximum request in the TPM's line failed ($st1, $st2)" "$T/max1.out" "$T/max1.err" "$T/max2.out" "$T/max2.err"

grep -qF -- "$P1" "$LOG" && bad "plaintext in veild's log" "$LOG" || ok "no prompt in veild's log"

echo "test_v2_max_tpm: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
