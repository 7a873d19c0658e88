#!/bin/bash
# ok and bad always succeed, so "test && ok || bad" is safe here.
# shellcheck disable=SC2015
# The maximum tier end to end (docs/ATTESTATION.md), on swtpm with an EK
# certificate from a local CA (tests/env/with-tokens.sh: swtpm_setup
# --create-ek-cert; VEIL_TEST_EK_CA, VEIL_TEST_OTHER_EK_CA).
#
#   veild: server key RSA-3072 in the tpm2-pkcs11 token (also given as the
#   TPM object, so reports carry its TPM2_Certify), answer-signing key
#   ECDSA P-256 in the SoftHSM2 token, tpm = on.
#
#   The backend statement: a model on a Unix socket (tests/mock-upstream
#   --unix) answers maximum with the statement in its quote, shown by the
#   client; lying or swapped statements are refused; a model on another
#   host gets maximum only over https with tpm_remote_https.
#
#   veil attest enroll -> trust file; veil chat --tier maximum --trust
#   --evidence; veil verify; tpm2_checkquote on the answer's quote and
#   `openssl dgst -verify` on its signature (independent verifiers, with
#   the statement and qualifying data rebuilt by tests/attest_forge.py from
#   the document, not from veil's code); then every forgery the issue lists
#   is rejected.
#
# Run through tests/env/with-tokens.sh ("tpm" in the name starts the TPM).
# Exit 0 pass, 1 fail, 99 setup failure.
. "${VEIL_SRCDIR:?}/tests/env/tpm_suite.sh" attest \
    tpm2_checkquote tpm2_createek tpm2_createak tpm2_quote tpm2_pcrextend tpm2_ptool openssl curl
FORGE="$SRC/tests/attest_forge.py"
stop_at_exit MOCK_PID PROXY_PID

# ------------------------------------------------------------------ setup

"$K" generate --token "$TTOK" --label att-server --bits 3072 --module "$TM" --pin-source "$PINSRC" >"$T/keygen.log" 2>&1 \
    || { cat "$T/keygen.log"; hard "veil-keys could not make the server key in the TPM token"; }
"$K" generate --token "$STOK" --label att-signer --type ec --module "$SM" --pin-source "$PINSRC" >"$T/keygen-ec.log" 2>&1 \
    || { cat "$T/keygen-ec.log"; hard "veil-keys could not make the signing key in the SoftHSM2 token"; }
"$K" show --key "$STOK;object=att-signer" --module "$SM" --pin-source "$PINSRC" >"$T/signer.pem" 2>"$T/show.err" \
    || { cat "$T/show.err"; hard "veil-keys show on the signing key"; }
# The server key as a TPM object: the tpm2-pkcs11 store's blob and auth
# value (the harness's throwaway PIN goes on this tool's command line,
# which takes it no other way).
(cd "$T" && tpm2_ptool export --label="$VEIL_TEST_TPM_TOKEN" --key-label=att-server \
    --userpin="$(cat "$VEIL_TEST_PIN_FILE")" --format=pem --output-prefix="$T/srv") >"$T/export.out" 2>&1 \
    || { cat "$T/export.out"; hard "tpm2_ptool export"; }
(umask 077 && sed -n 's/^object-auth: *//p' "$T/export.out" | tr -d '\n' >"$T/srv.auth")
[ -s "$T/srv.pem" ] && [ -s "$T/srv.auth" ] || { cat "$T/export.out"; hard "tpm2_ptool export wrote no key or auth"; }

ATT_ARGS=(--server-key "$TTOK;object=att-server"
    --pkcs11-module "$TM" --pin-source "$PINSRC"
    --signing-key "$STOK;object=att-signer?module-path=$SM"
    --tpm on --tpm-tcti "$TCTI"
    --tpm-certify-key "$T/srv.pem" --tpm-certify-key-auth "file:$T/srv.auth"
    --model echo=echo,tiers=standard+high+maximum --model plain=echo,tiers=standard
    --rate 100 --burst 100)
veild_start att "${ATT_ARGS[@]}"
URL=$VEILD_URL LOG=$VEILD_LOG ATT_PID=$VEILD_PID
C=(--url "$URL" --allow-http)

grep -q 'software TPM' "$LOG" \
    && ok "veild warns at start-up that a software TPM proves nothing" \
    || bad "no software-TPM warning in veild's log" "$LOG"

# -------------------------------------------------------------- enrolment

check "enrolment with an EK CA that did not issue the EK certificate: refused (exit 19)" 19 "FAIL.*EK certificate" -- \
    "$V" attest enroll --accept-current "${C[@]}" --ek-ca "$OTHERCA" --out "$T/bad-trust.json"
[ ! -e "$T/bad-trust.json" ] && ok "no trust file written after a failed enrolment" || bad "a trust file was written" "$T/bad-trust.json"

check "enrolment against the local EK CA: ENROLLED" 0 "" -- \
    "$V" attest enroll --accept-current "${C[@]}" --ek-ca "$EKCA" --out "$T/trust.json"
cp "$out" "$T/enroll.out"
for what in "EK certificate" "activation" "quote" "certif"; do
    grep -qi "^ok .*$what" "$T/enroll.out" \
        && ok "enrolment checked: $what" \
        || bad "enrolment output has no passed check about '$what'" "$T/enroll.out"
done
[ "$(field "$T/trust.json" 'j["ek_verified"]')" = True ] \
    && ok "trust file: ek_verified true" || bad "trust file ek_verified" "$T/trust.json"
check "enrolment refuses to overwrite the trust file without --force" 21 "" -- \
    "$V" attest enroll --accept-current "${C[@]}" --ek-ca "$EKCA" --out "$T/trust.json"

# The verifier's PCR policy: enrolment needs reference values or an
# explicit trust-on-first-use; a golden file that matches enrols, one PCR
# that differs, a required PCR the gateway does not quote, and a golden
# PCR outside its selection are each refused naming the PCR.
check "enrolment without a PCR policy is refused before any traffic (exit 21)" 21 "no PCR policy.*--golden FILE.*--accept-current" -- \
    "$V" attest enroll "${C[@]}" --ek-ca "$EKCA" --out "$T/nopolicy-trust.json"
grep -q "PCR accepted.*PCR 10 = " "$T/enroll.out" && ok "--accept-current printed each value it accepted" \
    || bad "--accept-current did not print the values" "$T/enroll.out"
[ "$(field "$T/trust.json" 'j["pcr_policy"]["kind"]')" = accepted-current ] \
    && ok "trust file records the policy it enforces (accepted-current)" || bad "trust file pcr_policy" "$T/trust.json"
"$PY" -c 'import json,sys; t=json.load(open(sys.argv[1])); json.dump(t["pcr_values"], open(sys.argv[2],"w"))' \
    "$T/trust.json" "$T/golden.json"
"$PY" -c 'import json,sys; g=json.load(open(sys.argv[1])); v=g["sha256"]["7"]; g["sha256"]["7"]=("0" if v[0]!="0" else "1")+v[1:]; json.dump(g, open(sys.argv[2],"w"))' \
    "$T/golden.json" "$T/golden-bad.json"
"$PY" -c 'import json,sys; g=json.load(open(sys.argv[1])); g["sha256"]["11"]="00"*32; json.dump(g, open(sys.argv[2],"w"))' \
    "$T/golden.json" "$T/golden-extra.json"
check "enrolment with a golden file that matches: ENROLLED" 0 "ok .*PCR policy.*reference value\\(s\\) match" -- \
    "$V" attest enroll --golden "$T/golden.json" --pcrs sha256:0,7 "${C[@]}" --ek-ca "$EKCA" --out "$T/golden-trust.json"
[ "$(field "$T/golden-trust.json" 'j["pcr_policy"]["kind"] + " " + j["pcr_policy"]["required"]')" = "golden sha256:0,7" ] \
    && ok "trust file records the golden policy and the required PCRs" || bad "golden trust file pcr_policy" "$T/golden-trust.json"
check "rejected: one PCR differs from its reference value (exit 19)" 19 "FAIL.*PCR policy.*PCR 7 is [0-9a-f]{64}, the reference value is" -- \
    "$V" attest enroll --golden "$T/golden-bad.json" "${C[@]}" --ek-ca "$EKCA" --out "$T/golden-bad-trust.json"
check "rejected: a required PCR the gateway does not quote (exit 19)" 19 "FAIL.*PCR policy.*PCR 11 is required" -- \
    "$V" attest enroll --accept-current --pcrs sha256:0,7,11 "${C[@]}" --ek-ca "$EKCA" --out "$T/golden-req-trust.json"
check "rejected: a reference value for a PCR the gateway does not quote (exit 19)" 19 "FAIL.*PCR policy.*PCR 11 has a reference value" -- \
    "$V" attest enroll --golden "$T/golden-extra.json" "${C[@]}" --ek-ca "$EKCA" --out "$T/golden-extra-trust.json"
check "--golden and --accept-current together are refused (exit 21)" 21 "exclude each other" -- \
    "$V" attest enroll --golden "$T/golden.json" --accept-current "${C[@]}" --ek-ca "$EKCA" --out "$T/both-trust.json"
[ ! -e "$T/golden-bad-trust.json" ] && [ ! -e "$T/golden-req-trust.json" ] && [ ! -e "$T/golden-extra-trust.json" ] \
    && ok "no trust file for a refused PCR policy" || bad "a trust file was written for a refused PCR policy"

# The EK certificate profile (TCG EK Credential Profile): the TPM's
# certificate passes and its TPM attributes are recorded; certificates for
# the same EK from the same CA (swtpm_localca's intermediate, so the chain
# holds) but with a wrong purpose, key usage or manufacturer are refused.
grep -qE '^ok .*EK certificate profile.*manufacturer id:00001014 .*model swtpm, version id:' "$T/enroll.out" \
    && ok "enrolment checked the EK certificate's profile and names the TPM" \
    || bad "no EK certificate profile line naming the TPM" "$T/enroll.out"
[ "$(field "$T/trust.json" 'j["ek_cert_tpm"]["model"]')" = swtpm ] \
    && ok "trust file records the EK certificate's TPM model" || bad "trust file ek_cert_tpm" "$T/trust.json"
EKDIR="$T/ekcert" LOCALCA="$(dirname "$EKCA")/tpm-localca"
mkdir -p "$EKDIR"
curl -sf "$URL/v1/attestation/report?nonce=$(openssl rand -hex 16)" >"$EKDIR/report.json" \
    || hard "GET /v1/attestation/report for the EK"
field "$EKDIR/report.json" 'j["ek_spki_b64"]' | base64 -d >"$EKDIR/ek.der"
openssl pkey -pubin -inform DER -in "$EKDIR/ek.der" -out "$EKDIR/ek.pem" 2>"$EKDIR/ek.err" || hard "EK SPKI: $(cat "$EKDIR/ek.err")"
# ek_cert NAME EKU KEY-USAGE MANUFACTURER: a certificate for the TPM's EK
# issued by the TPM's own EK CA (the "m." prefixes are openssl's way to
# give OIDs as attribute names).
ek_cert() {
    printf '%s\n' "[v3]" "extendedKeyUsage = $2" "keyUsage = critical, $3" \
        "basicConstraints = critical, CA:FALSE" "subjectAltName = critical, dirName:tpm_dn" \
        "[tpm_dn]" "m.2.23.133.2.1 = $4" "m.2.23.133.2.2 = swtpm" "m.2.23.133.2.3 = id:20191023" \
        >"$EKDIR/$1.cnf"
    openssl x509 -new -force_pubkey "$EKDIR/ek.pem" -subj "/CN=unknown" -days 1 \
        -CA "$LOCALCA/issuercert.pem" -CAkey "$LOCALCA/signkey.pem" \
        -extfile "$EKDIR/$1.cnf" -extensions v3 -outform DER -out "$EKDIR/$1.der" 2>"$EKDIR/$1.err" \
        || hard "openssl could not issue the $1 certificate: $(cat "$EKDIR/$1.err")"
}
# enroll_through_ekcert NAME DESCRIPTION PATTERN STATUS
enroll_through_ekcert() {
    rm -f "$EKDIR/proxy.port"
    "$PY" "$FORGE" proxy-ekcert "$URL" "$EKDIR/proxy.port" "$EKDIR/$1.der" >"$EKDIR/$1.proxy.log" 2>&1 &
    PROXY_PID=$!
    for _ in $(seq 100); do [ -s "$EKDIR/proxy.port" ] && break; sleep 0.05; done
    [ -s "$EKDIR/proxy.port" ] || hard "the forging proxy did not start: $(cat "$EKDIR/$1.proxy.log")"
    check "$2" "$4" "$3" -- "$V" attest enroll --accept-current --url "http://127.0.0.1:$(cat "$EKDIR/proxy.port")" --allow-http \
        --ek-ca "$EKCA" --out "$EKDIR/$1-trust.json"
    kill -TERM "$PROXY_PID" 2>/dev/null; wait "$PROXY_PID" 2>/dev/null; PROXY_PID=""
}
ek_cert good 2.23.133.8.1 keyEncipherment id:00001014
enroll_through_ekcert good "a certificate made like the TPM's by the same CA: ENROLLED (the forging path itself works)" "" 0
ek_cert eku serverAuth keyEncipherment id:00001014
enroll_through_ekcert eku "rejected: an EK certificate for TLS servers, not the EK purpose (exit 19)" "FAIL.*EK certificate profile.*tcg-kp-EKCertificate" 19
ek_cert usage 2.23.133.8.1 digitalSignature id:00001014
enroll_through_ekcert usage "rejected: an EK certificate without keyEncipherment (exit 19)" "FAIL.*EK certificate profile.*keyEncipherment" 19
ek_cert vendor 2.23.133.8.1 keyEncipherment id:49465800
enroll_through_ekcert vendor "rejected: an EK certificate of another manufacturer (IFX) than the TPM reports (IBM) (exit 19)" 'FAIL.*EK certificate profile.*id:49465800 \("IFX"\).*"IBM"' 19
[ ! -e "$EKDIR/eku-trust.json" ] && [ ! -e "$EKDIR/usage-trust.json" ] && [ ! -e "$EKDIR/vendor-trust.json" ] \
    && ok "no trust file for a refused EK certificate" || bad "a trust file was written for a refused EK certificate"

# ------------------------------------------------------- verified answers

P1="a prompt whose answer carries a quote"
check "veil chat --tier maximum --trust: the answer verifies" 0 "" -- \
    "$V" chat "${C[@]}" -m echo --tier maximum --trust "$T/trust.json" --evidence "$T/ev1.json" "$P1"
[ "$(cat "$out")" = "$P1" ] && ok "the verified answer is printed" || bad "answer text" "$out" "$err"
check "a second maximum answer" 0 "" -- \
    "$V" chat "${C[@]}" -m echo --tier maximum --trust "$T/trust.json" --evidence "$T/ev2.json" "second prompt"
check "a standard answer with --trust: its signature verifies" 0 "" -- \
    "$V" chat "${C[@]}" -m echo --trust "$T/trust.json" --evidence "$T/ev-std.json" "standard tier"
check "over protocol v2 with --trust: key configuration and answer signed by the enrolled key" 0 \
    "answer signature verified \(sha256:" -- \
    "$V" chat "${C[@]}" -m echo --protocol v2 -v --trust "$T/trust.json" "standard over v2"
[ "$(cat "$out")" = "standard over v2" ] && ok "the v2 answer is printed" || bad "v2 answer text" "$out" "$err"

check "veil verify: the saved maximum answer is VALID" 0 "verdict: VALID" -- \
    "$V" verify --trust "$T/trust.json" "$T/ev1.json"
check "veil verify: the saved standard answer is VALID" 0 "verdict: VALID" -- \
    "$V" verify --trust "$T/trust.json" "$T/ev-std.json"
grep -q 'plaintext\|a prompt whose' "$T/ev1.json" && bad "the evidence file holds the prompt" "$T/ev1.json" \
    || ok "the evidence file holds no plaintext"
[ "$(field "$T/ev1.json" 'j["tpm_attestation"]["key_certify"] is not None')" = True ] \
    && ok "the answer carries a TPM2_Certify of the server key" || bad "no key_certify in the answer" "$T/ev1.json"

# Independent verifiers.
mkdir -p "$T/cq"
if read -r QUAL PCRS < <("$PY" "$FORGE" checkquote "$T/ev1.json" "$T/trust.json" "$T/cq"); then
    [ "$QUAL" = "$(field "$T/ev1.json" 'j["tpm_attestation"]["qualifying_data"]')" ] \
        && ok "the qualifying data rebuilt from the document equals the quote's" \
        || bad "qualifying data differs from the document's formula" "$T/ev1.json"
    check "tpm2_checkquote accepts the answer's quote (qualifying data and PCR values)" 0 "" -- \
        tpm2_checkquote -u "$T/cq/ak.pub" -m "$T/cq/quote.msg" -s "$T/cq/quote.sig" \
        -f "$T/cq/pcrs.bin" -l "$PCRS" -g sha256 -q "$QUAL"
    # the first byte changed (to 00, or to 01 when it is 00 already)
    case $QUAL in 00*) OTHERQUAL="01${QUAL#00}" ;; *) OTHERQUAL="00${QUAL#??}" ;; esac
    check "tpm2_checkquote rejects the quote for other qualifying data" 1 "" -- \
        tpm2_checkquote -u "$T/cq/ak.pub" -m "$T/cq/quote.msg" -s "$T/cq/quote.sig" \
        -f "$T/cq/pcrs.bin" -l "$PCRS" -g sha256 -q "$OTHERQUAL"
else
    bad "attest_forge.py checkquote failed" "$T/ev1.json"
fi
"$PY" "$FORGE" statement "$T/ev1.json" "$T/stmt" \
    && "$PY" -c 'import json,sys,base64; sys.stdout.buffer.write(base64.b64decode(json.load(open(sys.argv[1]))["signature_b64"]))' "$T/ev1.json" >"$T/sig.der"
check "openssl dgst -verify: the answer signature over the statement rebuilt from the document" 0 "Verified OK" -- \
    openssl dgst -sha256 -verify "$T/signer.pem" -signature "$T/sig.der" "$T/stmt"
PID1=$(field "$T/ev1.json" 'j["payload_id"]')
if curl -fsS "$URL/v1/signatures/$PID1" >"$T/sigfetch.json" 2>"$err" \
    && [ "$(field "$T/sigfetch.json" 'j["signature_b64"]')" = "$(field "$T/ev1.json" 'j["signature_b64"]')" ]; then
    ok "GET /v1/signatures/ID returns the answer's signature"
else
    bad "GET /v1/signatures/$PID1" "$T/sigfetch.json" "$err"
fi

code=$(curl -s -o /dev/null -w '%{http_code}' -I "$URL/v1/attestation/report?nonce=$(printf '%064d' 0)")
[ "$code" = 405 ] && ok "HEAD of the report is refused (405): no TPM quote that nobody reads" \
    || bad "HEAD /v1/attestation/report answered $code, expected 405"

# ---------------------------------------------------------------- forgeries

forged() { # NAME MODE ARGS... : veil verify must say INVALID (exit 19)
    local name=$1
    shift
    "$PY" "$FORGE" "$@" "$T/forged.json" || { bad "$name: attest_forge.py $*"; return; }
    check "rejected: $name" 19 "verdict: INVALID" -- "$V" verify --trust "$T/trust.json" "$T/forged.json" \
        && grep -h -m1 'verdict' "$out" "$err" | sed 's/^/    /'
}
forged "a quote from another request" swap-quote "$T/ev1.json" "$T/ev2.json"
forged "a changed PCR value in the metadata" set-pcr "$T/ev1.json" 10
forged "a flipped byte in the quote" flip "$T/ev1.json" tpm.quote_b64
forged "a flipped byte in the quote's signature" flip "$T/ev1.json" tpm.signature_b64
forged "a flipped byte in the answer signature" flip "$T/ev1.json" signature_b64
forged "a response signature over a different request" swap-sig "$T/ev1.json" "$T/ev2.json"

# An AK that did not pass activation: a man in the middle answers the
# report with a genuine quote of this same TPM, by another AK that it made
# under the same EK; only credential activation can tell.
if (cd "$T" && tpm2_createek -Q -c ek.ctx -G rsa -u ek.pub \
    && tpm2_createak -Q -C ek.ctx -c ak.ctx -G ecc -g sha256 -s ecdsa -u ak.pub -n ak.name) >"$T/ak.log" 2>&1; then
    rm -f "$T/proxy.port"
    "$PY" "$FORGE" proxy "$URL" "$T/proxy.port" "$T" >"$T/proxy.log" 2>&1 &
    PROXY_PID=$!
    for _ in $(seq 100); do [ -s "$T/proxy.port" ] && break; sleep 0.05; done
    [ -s "$T/proxy.port" ] || hard "the forging proxy did not start: $(cat "$T/proxy.log")"
    check "rejected: an AK that did not pass credential activation" 19 "FAIL.*activation" -- \
        "$V" attest enroll --accept-current --url "http://127.0.0.1:$(cat "$T/proxy.port")" --allow-http \
        --ek-ca "$EKCA" --out "$T/mitm-trust.json" \
        && grep -h 'FAIL' "$out" "$err" | sed 's/^/    /'
    [ ! -e "$T/mitm-trust.json" ] && ok "no trust file for the substituted AK" || bad "trust file written for a substituted AK"
    kill -TERM "$PROXY_PID" 2>/dev/null; wait "$PROXY_PID" 2>/dev/null; PROXY_PID=""
else
    bad "tpm2_createek/createak for the substituted AK" "$T/ak.log"
fi

check "a model not allowed on maximum: 403 (exit 13)" 13 "not allowed on the maximum tier" -- \
    "$V" chat "${C[@]}" -m plain --tier maximum --trust "$T/trust.json" "not on maximum"

# Verify before decrypt: a man in the middle changes one character of the
# answer's AES-GCM ciphertext and passes the signature on.  The signature
# check, made before anything is unwrapped, refuses it: the client's key
# is never used on a forged answer (were it opened first, the AES-GCM tag
# would fail first: the error would be the bare security message, without
# the failed check in parentheses).
rm -f "$T/tamper.port"
"$PY" "$FORGE" proxy-tamper "$URL" "$T/tamper.port" >"$T/tamper.log" 2>&1 &
PROXY_PID=$!
for _ in $(seq 100); do [ -s "$T/tamper.port" ] && break; sleep 0.05; done
[ -s "$T/tamper.port" ] || hard "the tampering proxy did not start: $(cat "$T/tamper.log")"
TURL="http://127.0.0.1:$(cat "$T/tamper.port")"
check "enrolment through a proxy that passes reports unchanged" 0 "" -- \
    "$V" attest enroll --accept-current --url "$TURL" --allow-http --ek-ca "$EKCA" --out "$T/tamper-trust.json"
check "rejected before decryption: a changed ciphertext under a passed-on signature (exit 19)" 19 "\\(answer signature: ECDSA" -- \
    "$V" chat --url "$TURL" --allow-http --protocol v1 -m echo --trust "$T/tamper-trust.json" "tampered in transit"
[ ! -s "$out" ] && ok "nothing printed for the tampered answer" || bad "output for a tampered answer" "$out"
kill -TERM "$PROXY_PID" 2>/dev/null; wait "$PROXY_PID" 2>/dev/null; PROXY_PID=""

# ------------------------------------------- a restart keeps the enrolment
# The long-term AK is kept in state_dir (tpm-ak): veild restarted on the
# same TPM and state answers with the same AK, and the trust file of the
# enrolment above still verifies its answers.
# The restart also migrates an older veild's tpm-ak (no auth= line): the
# same AK gets an auth value.  It talks to the TPM through tpm2-tss's pcap
# TCTI, which records every command and answer: the certified key's auth
# value and the AK's cross in none (salted HMAC sessions, encrypted
# parameters), while the AK's template (sent in the clear) shows the
# recording holds the commands.
kill -TERM "$ATT_PID" && wait "$ATT_PID" || bad "the first veild did not stop cleanly"
grep -q "a new long-term AK, kept in" "$LOG" && ok "the first start made and kept a long-term AK" || bad "no AK kept" "$LOG"
AKF="$VEIL_TEST_DIR/veild-att.state/tpm-ak"
[ "$(stat -c %a "$AKF")" = 600 ] && grep -qE '^auth=[0-9a-f]{64}$' "$AKF" \
    && ok "tpm-ak holds the AK's auth value, mode 0600" || bad "tpm-ak: no auth= line, or not 0600" "$AKF"
sed -i '/^auth=/d' "$AKF" # as an older veild wrote it
export TCTI_PCAP_FILE="$T/tpm.pcap"
rm -f "$TCTI_PCAP_FILE"
veild_start att-restarted "${ATT_ARGS[@]}" --state-dir "$VEIL_TEST_DIR/veild-att.state" --port "${URL##*:}" \
    --tpm-tcti "pcap:$TCTI"
unset TCTI_PCAP_FILE
ATT_PID=$VEILD_PID LOG2=$VEILD_LOG
check "after a restart: a maximum answer verifies against the same trust file" 0 "" -- \
    "$V" chat "${C[@]}" -m echo --tier maximum --trust "$T/trust.json" --evidence "$T/ev-restart.json" "after the restart"
[ "$(field "$T/ev-restart.json" 'j["tpm_attestation"]["aik_name"]')" = "$(field "$T/trust.json" 'j["aik_name"]')" ] \
    && ok "the restarted veild quotes with the enrolled AK" || bad "another AK after the restart" "$T/ev-restart.json"
grep -q "a new long-term AK" "$LOG2" && bad "the restart made a new AK" "$LOG2" || ok "the restart made no new AK"
grep -q "tpm-ak had no auth value (an older veild's); the same AK has one now" "$LOG2" && grep -qE '^auth=[0-9a-f]{64}$' "$AKF" \
    && ok "an older veild's tpm-ak: the same AK gets an auth value, written to the file" \
    || bad "no migration of the AK file without auth" "$LOG2" "$AKF"
curl -sf "${URL}/v1/attestation/report?nonce=$(openssl rand -hex 16)" >"$T/report-pcap.json" \
    || bad "GET /v1/attestation/report (through the pcap TCTI)"
check "no auth value crosses to the TPM in the clear; the recording holds the AK's template" 0 "^clear ok" -- \
    "$PY" -c '
import sys
cap = open(sys.argv[1], "rb").read()
kv = dict(l.strip().split("=", 1) for l in open(sys.argv[2]) if "=" in l)
ak_auth = bytes.fromhex(kv["auth"])
unique_x = bytes.fromhex(kv["unique"])[:32]
key_auth = open(sys.argv[3], "rb").read()
bad = []
if len(cap) < 1000 or unique_x not in cap:
    bad.append("the recording does not hold the AK template (%d bytes)" % len(cap))
if ak_auth in cap:
    bad.append("the AK auth value is in a command")
if key_auth in cap:
    bad.append("the tpm_certify_key auth value is in a command")
print("; ".join(bad) if bad else "clear ok (%d bytes recorded)" % len(cap))
sys.exit(1 if bad else 0)
' "$T/tpm.pcap" "$AKF" "$T/srv.auth"

# A PCR changed after enrolment: the live answer is refused, nothing printed.
tpm2_pcrextend "10:sha256=$(printf 'veil test: boot changed' | sha256sum | cut -c1-64)" >"$T/extend.log" 2>&1 \
    || hard "tpm2_pcrextend: $(cat "$T/extend.log")"
check "rejected: an answer after PCR 10 changed (exit 19)" 19 "" -- \
    "$V" chat "${C[@]}" -m echo --tier maximum --trust "$T/trust.json" "after the extend"
[ ! -s "$out" ] && ok "nothing printed for the refused answer" || bad "output for a refused answer" "$out"
grep -qi 'PCR' "$err" && ok "the error names the PCR check" || bad "the error does not name the PCR check" "$err"
check "evidence saved before the change still verifies (it was true then)" 0 "verdict: VALID" -- \
    "$V" verify --trust "$T/trust.json" "$T/ev1.json"

# ------------------------------------------------ per-request attestation keys

veild_start perreq --server-key "$TTOK;object=att-server" \
    --pkcs11-module "$TM" --pin-source "$PINSRC" \
    --signing-key "$STOK;object=att-signer?module-path=$SM" \
    --tpm on --tpm-tcti "$TCTI" --tpm-ak-per-request on \
    --model echo=echo,tiers=standard+maximum --rate 100 --burst 100
URL2=$VEILD_URL
check "per-request AKs: enrolment" 0 "" -- \
    "$V" attest enroll --accept-current --url "$URL2" --allow-http --ek-ca "$EKCA" --out "$T/trust2.json"
check "per-request AKs: a maximum answer verifies" 0 "" -- \
    "$V" chat --url "$URL2" --allow-http -m echo --tier maximum --trust "$T/trust2.json" --evidence "$T/ev3.json" "fresh AK"
[ "$(field "$T/ev3.json" 'j["tpm_attestation"]["aik_certify"] is not None')" = True ] \
    && [ "$(field "$T/ev3.json" 'j["tpm_attestation"]["aik_name"]')" != "$(field "$T/trust2.json" 'j["aik_name"]')" ] \
    && ok "the answer's AK is a fresh one, certified by the enrolled AK" \
    || bad "no aik_certify, or the enrolled AK quoted" "$T/ev3.json"
check "per-request AKs: veil verify VALID" 0 "verdict: VALID" -- \
    "$V" verify --trust "$T/trust2.json" "$T/ev3.json"
"$PY" "$FORGE" flip "$T/ev3.json" tpm.quote_b64 "$T/forged.json"
check "per-request AKs: rejected: a flipped byte in the quote" 19 "verdict: INVALID" -- \
    "$V" verify --trust "$T/trust2.json" "$T/forged.json"
check "per-request AKs: evidence checked against another gateway's trust file: INVALID" 19 "verdict: INVALID" -- \
    "$V" verify --trust "$T/trust.json" "$T/ev3.json"

# ------------------------------------------- where the plaintext goes
# A model whose backend listens on a Unix socket (mock-upstream --unix: no
# TCP port at all), one on another host over https, one over plain http.
# maximum answers state the backend in the quote; the client shows it and
# refuses a statement that lies or is not the quoted one; a backend off
# the attested host gets no maximum unless tpm_remote_https allows https.
SOCK="$T/llama.sock"
rm -f "$SOCK" "$T/mock.port"
"$B/tests/mock-upstream" --port-file "$T/mock.port" --unix "$SOCK" >"$T/mock.log" 2>&1 &
MOCK_PID=$!
for _ in $(seq 100); do [ -s "$T/mock.port" ] && break; sleep 0.05; done
[ -S "$SOCK" ] || hard "mock-upstream did not listen on $SOCK: $(cat "$T/mock.log")"
BK_ARGS=("${ATT_ARGS[@]}" --model "local=unix:$SOCK,tiers=standard+maximum"
    --model "far=https://192.0.2.2:9/v1,tiers=standard+maximum"
    --model "plainfar=http://192.0.2.2:9/v1,tiers=maximum")
veild_start backend "${BK_ARGS[@]}"
BK_PID=$VEILD_PID BURL=$VEILD_URL
grep -q "model 'far' is not allowed on the maximum tier: its upstream is on another host.*maximum requests answer 403" "$VEILD_LOG" \
    && ok "veild warns at start-up that a model's backend is off the attested host" || bad "no start-up warning about 'far'" "$VEILD_LOG"
check "a chat through the Unix socket upstream (standard)" 0 "" -- \
    "$V" chat --url "$BURL" --allow-http -m local "through the socket"
[ "$(cat "$out")" = "mock: through the socket" ] && ok "the backend on the Unix socket answered" || bad "socket answer" "$out" "$err"
grep -q "model=local" "$T/mock.log" && ok "mock-upstream saw the request on its Unix socket" || bad "mock log" "$T/mock.log"
curl -s "$BURL/healthz" >"$T/healthz.json" || bad "GET /healthz" "$T/healthz.json"
[ "$(field "$T/healthz.json" 'j["upstreams"]["local"]')" = True ] \
    && ok "/healthz probes the backend over its Unix socket" || bad "healthz of the socket model" "$T/healthz.json"
curl -sf "$BURL/v1/models" >"$T/models.json" || bad "GET /v1/models"
[ "$(field "$T/models.json" '[",".join(m["tiers"]) for m in j["data"] if m["id"] in ("local","far")]')" = "['standard,maximum', 'standard']" ] \
    && ok "GET /v1/models offers maximum for the socket model, not for the remote one" || bad "models tiers" "$T/models.json"
check "enrolment of the gateway with the socket model" 0 "" -- \
    "$V" attest enroll --accept-current --url "$BURL" --allow-http --ek-ca "$EKCA" --out "$T/trust-bk.json"
check "maximum through the Unix socket: verified, and the client shows the attested backend" 0 \
    "attested backend of model local: unix:$SOCK \(transport unix, this-host\)" -- \
    "$V" chat --url "$BURL" --allow-http -m local --tier maximum --trust "$T/trust-bk.json" --evidence "$T/ev-bk.json" "maximum via socket"
[ "$(cat "$out")" = "mock: maximum via socket" ] && ok "the maximum answer came from the socket backend" || bad "maximum socket answer" "$out" "$err"
printf 'veil-backend-v1\nmodel=local\nupstream=unix:%s\ntransport=unix\nlocation=this-host\n' "$SOCK" >"$T/stmt-want"
"$PY" -c 'import json,sys; sys.stdout.write(json.load(open(sys.argv[1]))["tpm_attestation"]["backend_statement"])' "$T/ev-bk.json" >"$T/stmt-got"
cmp -s "$T/stmt-want" "$T/stmt-got" && ok "the answer's backend statement is the document's bytes" || bad "backend statement" "$T/stmt-got"
check "veil verify shows the backend binding" 0 "^ok   backend: model local: unix:$SOCK, a Unix socket on the attested host" -- \
    "$V" verify --trust "$T/trust-bk.json" "$T/ev-bk.json"
mkdir -p "$T/cq-bk"
if read -r QUAL PCRS < <("$PY" "$FORGE" checkquote "$T/ev-bk.json" "$T/trust-bk.json" "$T/cq-bk"); then
    check "tpm2_checkquote accepts the quote over the statement's hash (formula rebuilt from the document)" 0 "" -- \
        tpm2_checkquote -u "$T/cq-bk/ak.pub" -m "$T/cq-bk/quote.msg" -s "$T/cq-bk/quote.sig" \
        -f "$T/cq-bk/pcrs.bin" -l "$PCRS" -g sha256 -q "$QUAL"
else
    bad "attest_forge.py checkquote on the socket answer" "$T/ev-bk.json"
fi
"$PY" "$FORGE" set-backend "$T/ev-bk.json" "upstream=https://10.1.2.3/v1" "transport=loopback" "$T/forged.json"
check "rejected: a remote backend claimed local in the statement (exit 19)" 19 \
    "verdict: INVALID \(backend statement: .*upstream 'https://10.1.2.3/v1', which is transport=https, location=remote \(a remote backend claimed to be local\)" -- \
    "$V" verify --trust "$T/trust-bk.json" "$T/forged.json"
"$PY" "$FORGE" set-backend "$T/ev-bk.json" "upstream=unix:/run/other.sock" "$T/forged.json"
check "rejected: a valid statement that is not the quoted one (exit 19)" 19 \
    "quote qualifying data does not match \(it covers the payload ID, this request, the keys and the backend statement" -- \
    "$V" verify --trust "$T/trust-bk.json" "$T/forged.json"
check "maximum for a model on another host: 403 (exit 13)" 13 "not allowed on the maximum tier: its upstream is on another host" -- \
    "$V" chat --url "$BURL" --allow-http -m far --tier maximum --trust "$T/trust-bk.json" "to a remote backend"
check "maximum for a model over plain http elsewhere: 403 (exit 13)" 13 "plain http on another host" -- \
    "$V" chat --url "$BURL" --allow-http -m plainfar --tier maximum --trust "$T/trust-bk.json" "plain http"
kill -TERM "$BK_PID" && wait "$BK_PID" || bad "veild (backend) did not stop cleanly"
# tpm_remote_https = on (same state: same AK, same trust file): the https
# model passes to its backend (none listens there: 503), plain http never.
veild_start backend-remote "${BK_ARGS[@]}" --state-dir "$VEIL_TEST_DIR/veild-backend.state" --port "${BURL##*:}" \
    --tpm-remote-https on
BURL=$VEILD_URL
grep -q "model 'far' on maximum: its backend is on another host (tpm_remote_https); its quotes say so" "$VEILD_LOG" \
    && ok "with tpm_remote_https, veild says the remote model's quotes state it" || bad "no remote note" "$VEILD_LOG"
check "tpm_remote_https = on: maximum for the https model goes to its backend (unreachable here: 503, exit 17)" 17 \
    "inference backend unavailable: far" -- \
    "$V" chat --url "$BURL" --allow-http -m far --tier maximum --trust "$T/trust-bk.json" "to a remote backend"
check "tpm_remote_https = on: plain http elsewhere is still refused (exit 13)" 13 "plain http on another host" -- \
    "$V" chat --url "$BURL" --allow-http -m plainfar --tier maximum --trust "$T/trust-bk.json" "plain http"
check "tpm_remote_https = on: the socket model still verifies" 0 "transport unix, this-host" -- \
    "$V" chat --url "$BURL" --allow-http -m local --tier maximum --trust "$T/trust-bk.json" "again via socket"
kill -TERM "$MOCK_PID" && wait "$MOCK_PID" || bad "mock-upstream did not stop cleanly"
MOCK_PID=""
[ ! -e "$SOCK" ] && ok "mock-upstream removed its socket" || bad "the socket is left behind"
check "a Unix socket nobody listens on: 503 (exit 17), naming the model" 17 "inference backend unavailable: local" -- \
    "$V" chat --url "$BURL" --allow-http -m local "nobody there"

# ------------------------------------------------------ no TPM on the gateway

veild_start notpm --server-key "$TTOK;object=att-server" \
    --pkcs11-module "$TM" --pin-source "$PINSRC" \
    --model echo=echo,tiers=standard+maximum --rate 100 --burst 100
check "maximum on a gateway without a TPM: 503 (exit 17)" 17 "no TPM attestation available" -- \
    "$V" chat --url "$VEILD_URL" --allow-http -m echo --tier maximum "no TPM here"

curl -s -D "$T/notpm.h" -o "$T/notpm.json" "$VEILD_URL/v1/attestation/report?nonce=$(openssl rand -hex 16)"
grep -q '^HTTP/[0-9.]* 503' "$T/notpm.h" && grep -q 'no TPM attestation available' "$T/notpm.json" \
    && ! grep -qi '^retry-after:' "$T/notpm.h" \
    && ok "no TPM: the report's 503 is the permanent one (no Retry-After)" \
    || bad "no TPM: report not a 503 without Retry-After" "$T/notpm.h" "$T/notpm.json"

# ----------------------------------------- the TPM's own line (issue 16 item 4)
# One worker slot, one TPM operation at once and one more that may wait;
# the test stand-in tpm_test_delay makes every TPM operation take 10 s (a
# slow hardware TPM).  Two maximum chats fill the TPM's line: more TPM
# work is refused at once with 503 and Retry-After, and a standard chat
# is answered while both maximum chats are still waiting for the TPM
# (which they do without the one worker slot).  Then both maximum chats
# get their attested answers.
veild_start busy "${ATT_ARGS[@]}" --workers 1 --tpm-workers 1 --tpm-queue 1 \
    --tpm-queue-wait 60 --tpm-test-delay 10000 --log-level debug
BURL=$VEILD_URL BLOG=$VEILD_LOG
grep -q 'tpm_test_delay = 10000: .*test stand-in' "$BLOG" \
    && ok "veild warns that the test stand-in tpm_test_delay is set" \
    || bad "no tpm_test_delay warning in veild's log" "$BLOG"
# one answer key for every chat below, made now (a key made per chat
# could take longer than the TPM's 10 s)
check "a standard chat before the TPM is busy (it makes the answer key)" 0 "" -- \
    "$V" chat --url "$BURL" --allow-http -m echo --key-dir "$T/busykey" --retries 0 "warm-up"
MAXC=(chat --url "$BURL" --allow-http -m echo --tier maximum --allow-foreign-attestation --retries 0
    --key-dir "$T/busykey")
"$V" "${MAXC[@]}" "slow quote one" >"$T/max1.out" 2>"$T/max1.err" &
M1=$!
"$V" "${MAXC[@]}" "slow quote two" >"$T/max2.out" 2>"$T/max2.err" &
M2=$!
for ((i = 0; i < 600; i++)); do
    grep -q 'waits for its turn at the TPM' "$BLOG" && break
    sleep 0.1
done
grep -q 'waits for its turn at the TPM' "$BLOG" \
    && ok "two maximum chats fill the TPM's line (one at the TPM, one waiting)" \
    || bad "no request waited for the TPM" "$BLOG" "$T/max1.err" "$T/max2.err"
curl -s -D "$T/busy.h" -o "$T/busy.json" "$BURL/v1/attestation/report?nonce=$(openssl rand -hex 16)"
grep -q '^HTTP/[0-9.]* 503' "$T/busy.h" && grep -qi '^retry-after: [1-9]' "$T/busy.h" \
    && grep -q 'the TPM is busy' "$T/busy.json" \
    && ok "TPM line full: a report is refused at once, 503 with Retry-After" \
    || bad "TPM line full: the report was not a 503 with Retry-After" "$T/busy.h" "$T/busy.json"
check "TPM line full: a third maximum chat gets 503 'the TPM is busy' (exit 17)" 17 "the TPM is busy" -- \
    "$V" "${MAXC[@]}" "one too many"
check "TPM line full: a standard chat is still answered" 0 "standard while the TPM is busy" -- \
    "$V" chat --url "$BURL" --allow-http -m echo --retries 0 --key-dir "$T/busykey" "standard while the TPM is busy"
# The second maximum chat waits for the first one's 10 s at the TPM and
# then takes its own 10 s: it is still running after the standard answer
# unless the standard chat waited behind the TPM (without the TPM's own
# line it would wait for both).  Not a time limit on the standard chat: a
# margin of 20 s on the slowest machine this runs on.
kill -0 "$M2" 2>/dev/null \
    && ok "the standard answer came while a maximum chat still waited for the TPM" \
    || bad "both maximum chats were done before the standard answer (standard waited for the TPM)" "$T/max1.err" "$T/max2.err"
st1=0 st2=0
wait "$M1" || st1=$?
wait "$M2" || st2=$?
[ "$st1" -eq 0 ] && [ "$st2" -eq 0 ] && grep -q 'slow quote one' "$T/max1.out" && grep -q 'slow quote two' "$T/max2.out" \
    && ok "both maximum chats in the TPM's line got their answers" \
    || bad "a maximum chat in the TPM's line failed ($st1, $st2)" "$T/max1.out" "$T/max1.err" "$T/max2.out" "$T/max2.err"

# ---------------------------------------- rotating the AK: a certified hand-over
# tpm_ak_rotate at a start makes a new long-term AK, certified by the kept
# one; the report carries that certification, which an independent reading
# of the TPM structures accepts; the next start keeps the new AK.
kill -TERM "$ATT_PID" && wait "$ATT_PID" || bad "veild (restarted) did not stop cleanly"
veild_start att-rotated "${ATT_ARGS[@]}" --state-dir "$VEIL_TEST_DIR/veild-att.state" --port "${URL##*:}" --tpm-ak-rotate on
ATT_PID=$VEILD_PID
grep -q "long-term AK was rotated" "$VEILD_LOG" && ok "veild logs the AK rotation" || bad "no rotation in the log" "$VEILD_LOG"
curl -sf "$VEILD_URL/v1/attestation/report?nonce=$(openssl rand -hex 16)" >"$T/report-rotated.json" \
    || bad "GET /v1/attestation/report after the rotation"
[ "$(field "$T/report-rotated.json" 'j["aik_name"]')" != "$(field "$T/trust.json" 'j["aik_name"]')" ] \
    && ok "the rotated veild has a new AK" || bad "the AK did not change" "$T/report-rotated.json"
check "the hand-over: the enrolled AK certified the new one (checked from the TPM structures)" 0 "^handover ok" -- \
    "$PY" "$FORGE" handover "$T/report-rotated.json" "$T/trust.json"
check "a hand-over checked against another gateway's trust file is refused" 1 "not the enrolled one" -- \
    "$PY" "$FORGE" handover "$T/report-rotated.json" "$T/trust2.json"
# The client follows the hand-over (veil attest update), and only that:
# a new AK without a hand-over, a hand-over signed by another key, and a
# hand-over for another new AK are refused, the trust file unchanged.
# PCR 10 was extended above, after trust.json was enrolled: this copy
# takes the current value as its reference (as an operator would after a
# planned change), so that only the AK differs.
RURL=$VEILD_URL
"$PY" -c 'import json,sys; t=json.load(open(sys.argv[1])); r=json.load(open(sys.argv[2])); t["pcr_values"]["sha256"]["10"]=r["pcr_values"]["sha256"]["10"]; json.dump(t, open(sys.argv[3],"w"), indent=2)' \
    "$T/trust.json" "$T/report-rotated.json" "$T/trust-rot.json"
cp "$T/trust-rot.json" "$T/trust-rot.orig"
check "rejected: a maximum answer by the rotated AK before the trust file follows it (exit 19)" 19 \
    "not the enrolled one.*veil attest update --trust FILE" -- \
    "$V" chat "${C[@]}" -m echo --tier maximum --trust "$T/trust-rot.json" "before the update"
# handover_through MODE ARG DESCRIPTION PATTERN TRUST: veil attest update
# with $T/TRUST (its URL set to a proxy forging the report's hand-over):
# refused (19), the file unchanged.
handover_through() {
    rm -f "$T/ho.port"
    "$PY" "$FORGE" proxy-handover "$RURL" "$T/ho.port" "$1" "$2" >"$T/ho-$1.log" 2>&1 &
    PROXY_PID=$!
    for _ in $(seq 100); do [ -s "$T/ho.port" ] && break; sleep 0.05; done
    [ -s "$T/ho.port" ] || hard "the hand-over proxy did not start: $(cat "$T/ho-$1.log")"
    "$PY" -c 'import json,sys; t=json.load(open(sys.argv[1])); t["url"]=sys.argv[2]; json.dump(t, open(sys.argv[3],"w"))' \
        "$T/$5" "http://127.0.0.1:$(cat "$T/ho.port")" "$T/ho-trust.json"
    cp "$T/ho-trust.json" "$T/ho-trust.before"
    check "$3" 19 "$4" -- "$V" attest update --allow-http --trust "$T/ho-trust.json"
    cmp -s "$T/ho-trust.json" "$T/ho-trust.before" && ok "  the trust file is unchanged" \
        || bad "the trust file changed after a refused hand-over" "$T/ho-trust.json"
    kill -TERM "$PROXY_PID" 2>/dev/null; wait "$PROXY_PID" 2>/dev/null; PROXY_PID=""
}
handover_through none - "rejected: a new AK without a hand-over (exit 19)" \
    "FAIL AK hand-over: .*no certified hand-over: re-enrol" trust.json
handover_through other-signer "$T" "rejected: a hand-over certified by another AK of the same TPM (exit 19)" \
    "FAIL AK hand-over: the certification of the new AK .* is refused: .*re-enrol" trust.json
handover_through other-new "$T" "rejected: a genuine hand-over for a different new AK than the one quoting (exit 19)" \
    "FAIL AK hand-over: the certification of the new AK .* is refused: .*qualifying data.*re-enrol" trust.json
check "veil attest update follows the certified hand-over: UPDATED" 0 "verdict: UPDATED" -- \
    "$V" attest update --allow-http --trust "$T/trust-rot.json"
grep -q "^ok   AK hand-over: the enrolled AK" "$out" && grep -q "^ok   trust file: .*trust-rot.json updated" "$out" \
    && ok "the update says which AK certified which, and that the file was updated" || bad "update output" "$out"
[ "$(field "$T/trust-rot.json" 'j["aik_name"]')" = "$(field "$T/report-rotated.json" 'j["aik_name"]')" ] \
    && [ "$(field "$T/trust-rot.json" 'j["ak_handover_followed"]["previous_aik_name"]')" = "$(field "$T/trust.json" 'j["aik_name"]')" ] \
    && ok "the trust file now names the new AK and records the previous one" || bad "trust file after the update" "$T/trust-rot.json"
[ "$(field "$T/trust-rot.json" 'json.dumps([j[k] for k in j if not k.startswith(("aik_", "ak_"))], sort_keys=True)')" \
    = "$(field "$T/trust-rot.orig" 'json.dumps([j[k] for k in j if not k.startswith(("aik_", "ak_"))], sort_keys=True)')" ] \
    && ok "everything else in the trust file is kept (policy, EK, keys, PCR values)" || bad "the update changed more than the AK" "$T/trust-rot.json"
check "after the update: a maximum answer by the new AK verifies" 0 "" -- \
    "$V" chat "${C[@]}" -m echo --tier maximum --trust "$T/trust-rot.json" "after the update"
check "veil attest update again: CURRENT, nothing to follow" 0 "verdict: CURRENT" -- \
    "$V" attest update --allow-http --trust "$T/trust-rot.json"
kill -TERM "$ATT_PID" && wait "$ATT_PID" || bad "veild (rotated) did not stop cleanly"
veild_start att-after "${ATT_ARGS[@]}" --state-dir "$VEIL_TEST_DIR/veild-att.state" --port "${URL##*:}"
ATT_PID=$VEILD_PID
curl -sf "$VEILD_URL/v1/attestation/report?nonce=$(openssl rand -hex 16)" >"$T/report-after.json" \
    || bad "GET /v1/attestation/report after the next start"
[ "$(field "$T/report-after.json" 'j["aik_name"]')" = "$(field "$T/report-rotated.json" 'j["aik_name"]')" ] \
    && [ "$(field "$T/report-after.json" 'j["ak_handover"]["previous_aik_name"]')" = "$(field "$T/trust.json" 'j["aik_name"]')" ] \
    && ok "the next start keeps the rotated AK and still shows the hand-over" || bad "AK or hand-over lost after the next start" "$T/report-after.json"

# A second rotation: a client one rotation behind follows it; one two
# rotations behind (the hand-over is from an AK it never enrolled) and a
# replay of the first hand-over (for another new AK) are refused.
kill -TERM "$ATT_PID" && wait "$ATT_PID" || bad "veild (after) did not stop cleanly"
veild_start att-rotated2 "${ATT_ARGS[@]}" --state-dir "$VEIL_TEST_DIR/veild-att.state" --port "${URL##*:}" --tpm-ak-rotate on
ATT_PID=$VEILD_PID RURL=$VEILD_URL
check "rejected: a client two rotations behind (exit 19)" 19 \
    "FAIL AK hand-over: it is from another AK than the enrolled .*rotated more than once.*re-enrol" -- \
    "$V" attest update --allow-http --trust "$T/trust.json"
handover_through replay "$T/report-rotated.json" "rejected: the first hand-over replayed after the second rotation (exit 19)" \
    "FAIL AK hand-over: the certification of the new AK .* is refused: .*re-enrol" trust.json
check "a client one rotation behind follows the second hand-over: UPDATED" 0 "verdict: UPDATED" -- \
    "$V" attest update --allow-http --trust "$T/trust-rot.json"
check "after the second update: a maximum answer verifies" 0 "" -- \
    "$V" chat "${C[@]}" -m echo --tier maximum --trust "$T/trust-rot.json" "after the second rotation"

# ------------------------------------------------------- the TCG event log
# swtpm has no firmware, so the log is synthetic (tests/attest_forge.py
# eventlog): its events are extended into the resettable PCRs 16 and 23,
# which veild quotes; veild ships the file (tpm_event_log) in its reports.
EL="$T/evlog"
mkdir -p "$EL"
"$PY" "$FORGE" eventlog "$EL/log.bin" "$EL/golden.json" \
    "16:EV_S_CRTM_VERSION:veil test firmware 1.0" "16:EV_SEPARATOR:separator" \
    "23:EV_IPL:vmlinuz root=/dev/vda ro" "23:EV_EFI_ACTION:veil test boot" >"$EL/extend.txt" \
    || hard "attest_forge.py eventlog"
tpm2_eventlog "$EL/log.bin" >"$EL/log.yaml" 2>&1 && ok "tpm2_eventlog reads the synthetic log (an independent parser)" \
    || bad "tpm2_eventlog refuses the synthetic log" "$EL/log.yaml"
(tpm2_pcrreset 16 && tpm2_pcrreset 23 && while read -r x; do tpm2_pcrextend "$x" || exit 1; done <"$EL/extend.txt") \
    >"$EL/extend.log" 2>&1 || hard "tpm2_pcrreset/pcrextend: $(cat "$EL/extend.log")"
EV_ARGS=(--server-key "$TTOK;object=att-server" --pkcs11-module "$TM" --pin-source "$PINSRC"
    --signing-key "$STOK;object=att-signer?module-path=$SM" --tpm on --tpm-tcti "$TCTI"
    --tpm-pcrs sha256:0,7,16,23 --model echo=echo,tiers=standard+maximum --rate 100 --burst 100)
veild_start evlog "${EV_ARGS[@]}" --tpm-event-log "$EL/log.bin"
EURL=$VEILD_URL
grep -q "reports carry the event log $EL/log.bin" "$VEILD_LOG" && ok "veild says which event log its reports carry" \
    || bad "no event log line in veild's log" "$VEILD_LOG"
curl -sf "$EURL/v1/attestation/report?nonce=$(openssl rand -hex 16)" >"$EL/report.json" || bad "GET the report with an event log"
[ "$(field "$EL/report.json" 'j["pcr_values"]["sha256"]["23"]')" = "$(sed -n '/^  sha256:/,$s/^ *23 *: 0x//p' "$EL/log.yaml")" ] \
    && ok "the quoted PCR 23 is what tpm2_eventlog replays from the log" || bad "PCR 23 is not tpm2_eventlog's replay" "$EL/report.json" "$EL/log.yaml"
check "enrolment with per-event reference values: the log replays and its events match: ENROLLED" 0 \
    "ok   event log: 5 events; they replay to the quoted PCR 16,23; 4 reference event\(s\) match" -- \
    "$V" attest enroll --golden "$EL/golden.json" --url "$EURL" --allow-http --ek-ca "$EKCA" --out "$EL/trust.json"
[ "$(field "$EL/trust.json" 'j["pcr_policy"]["kind"] + " " + str(j["pcr_policy"]["reference_events"])')" = "golden 4" ] \
    && ok "the trust file records the per-event policy" || bad "trust file pcr_policy with events" "$EL/trust.json"
"$PY" -c 'import json,sys; g=json.load(open(sys.argv[1])); e=g["events"][3]; e["sha256"]=("0" if e["sha256"][0]!="0" else "1")+e["sha256"][1:]; json.dump(g, open(sys.argv[2],"w"))' \
    "$EL/golden.json" "$EL/golden-bad.json"
check "rejected: one event differs from its reference value, the event named (exit 19)" 19 \
    "FAIL event log: event 5 of the log \(PCR 23, EV_EFI_ACTION, event 2 of that PCR\) has SHA-256 [0-9a-f]{64}, the reference event [0-9a-f]{64}" -- \
    "$V" attest enroll --golden "$EL/golden-bad.json" --url "$EURL" --allow-http --ek-ca "$EKCA" --out "$EL/bad-trust.json"
"$PY" -c 'import json,sys; g=json.load(open(sys.argv[1])); del g["events"][1]["sha256"]; g["events"].append({"pcr": 16}); json.dump(g, open(sys.argv[2],"w"))' \
    "$EL/golden.json" "$EL/golden-more.json"
check "rejected: a reference event the log does not have (exit 19)" 19 "FAIL event log: PCR 16: the log has 2 event\(s\), the reference more" -- \
    "$V" attest enroll --golden "$EL/golden-more.json" --url "$EURL" --allow-http --ek-ca "$EKCA" --out "$EL/bad-trust.json"
check "rejected: reference events without an event log in the report (exit 19)" 19 "FAIL event log: .*no event log" -- \
    "$V" attest enroll --golden "$EL/golden.json" "${C[@]}" --ek-ca "$EKCA" --out "$EL/bad-trust.json"
tpm2_pcrextend "23:sha256=$(printf 'measured but not logged' | sha256sum | cut -c1-64)" >"$EL/extend2.log" 2>&1 \
    || hard "tpm2_pcrextend: $(cat "$EL/extend2.log")"
check "rejected: an event log that does not replay to the quoted PCR values, the PCR named (exit 19)" 19 \
    "FAIL event log: PCR 23: the event log replays to [0-9a-f]{64}, the quote says [0-9a-f]{64}" -- \
    "$V" attest enroll --accept-current --url "$EURL" --allow-http --ek-ca "$EKCA" --out "$EL/bad-trust.json"
[ ! -e "$EL/bad-trust.json" ] && ok "no trust file for a refused event log" || bad "a trust file was written for a refused event log"
check "a tpm_event_log that cannot be read stops veild's start before it opens anything, naming the setting (exit 2)" 2 "tpm_event_log .*no-such-log: No such file" -- \
    timeout 120 "$B/veild" "${EV_ARGS[@]}" --port 0 --state-dir "$EL/state" --tpm-event-log "$EL/no-such-log"

# A state_dir/tpm-ak that is not veild's (hand-edited, truncated): veild
# does not start, names the file and says what to do; nothing replaces it.
mkdir -p "$T/badak.state" && chmod 700 "$T/badak.state"
printf 'veil-tpm-ak-v1\nunique=0123\n' >"$T/badak.state/tpm-ak"
check "a truncated tpm-ak stops the start, naming the file (1)" 1 "badak.state/tpm-ak is not a veil AK file" -- \
    timeout 120 "$B/veild" "${ATT_ARGS[@]}" --port 0 --state-dir "$T/badak.state"
grep -qx 'unique=0123' "$T/badak.state/tpm-ak" && ok "the bad tpm-ak file was left as it was" \
    || bad "the bad tpm-ak file was changed" "$T/badak.state/tpm-ak"

grep -qF -- "$P1" "$LOG" && bad "plaintext in veild's log" "$LOG" || ok "no prompt in veild's log"
grep -qF -- "$(cat "$T/srv.auth")" "$LOG" && bad "the key's auth value in veild's log" "$LOG" || ok "no auth value in veild's log"

echo "test_attest_tpm: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
