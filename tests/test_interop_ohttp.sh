#!/bin/bash
# ok and bad always succeed, so "test && ok || bad" is safe here; single
# quotes hold Python and JavaScript; GW_PID and GW2_PID are read at exit.
# shellcheck disable=SC2015,SC2016,SC2034
# Protocol v2 (docs/PROTOCOL-V2.md) against implementations veil's
# engineers did not write: HPKE from @hpke/core and @hpke/dhkem-x25519
# (RFC 9180) and Binary HTTP from bhttp-js (RFC 9292), npm packages pinned
# in tests/interop/package-lock.json and installed with `npm ci` into
# $builddir/tests/interop-node (kept for the next run while the lock file
# is the same).  The thin OHTTP framing over them (RFC 9458 3, 4.1-4.4) is
# tests/interop/ohttp.mjs, written from the RFC text.
#
# Direction A, tests/interop/client.mjs -> a real veild (server and
# signing keys in the SoftHSM2 token): the key configuration parsed and
# its signature verified with node:crypto; chat (a non-ASCII prompt echoed
# by veild's echo model), models, embeddings (veild's echo vector) and a
# backend's answer (tests/mock-upstream) in inner 200s whose answer
# signatures node:crypto verifies; AES-256-GCM and AES-128-GCM;
# known-length requests by bhttp-js (as they are, zero-padded, without
# their empty trailing sections), indeterminate-length ones by ohttp.mjs
# (as they are, zero-padded, truncated); a connection field accepted (RFC
# 9292 3.6); an unknown model, bad JSON, a model the tier does not allow,
# an unknown route and a field value with outer white space (RFC 9113
# 8.2.1) as inner 4xx in an outer 200, an upper-case field name served
# (a token in any case, RFC 9292 3.6);
# one byte of enc or of the ciphertext changed, an unknown key ID, an AEAD
# not offered, a short body and a replay get the uniform 400 byte for
# byte.  With the KEM key in SoftHSM2, then in software with kem_x25519 =
# on (X25519 with both AEADs; an all-zero enc, RFC 9180 7.1.4's zero
# Diffie-Hellman, the uniform 400).  With API keys: the key in an inner
# authorization field gets the echo, another key or none an inner 401.
#
# Direction B, veil's client -> tests/interop/gateway.mjs, an OHTTP
# gateway on the same packages (node:http, the echo answers, signed key
# configurations and answers; P-384 and X25519 configurations listed
# before the P-256 one, whose first suite is HKDF-SHA384): `veil chat
# --protocol v2` (a known-length answer, an indeterminate-length padded
# one, one after a 103 informational response, a truncated known- and
# indeterminate-length one; the inner request names the gateway's
# authority), `veil models`, `veil embed`; an unsigned and a mis-signed
# answer refused (SecurityError, exit 19); an unknown model an APIError
# 404; an inner 429 with an inner retry-after retried; a wrong
# --signing-key-pin refused with nothing posted; a rotated key: one
# uniform 400, refetch, answer.
#
# Needs node and npm (scripts/install-deps.sh; VEIL_NODE names another
# node) and the npm registry for the first run: without them the test
# fails, saying so.  Run through tests/env/with-tokens.sh.  Exit 0 pass, 1
# fail, 99 setup failure.
. "${VEIL_SRCDIR:?}/tests/env/suite.sh" interop_ohttp curl
NODE=${VEIL_NODE:-node}
PIN=(--pin-source "file:$VEIL_TEST_PIN_FILE")
UNIFORM='{"type":"https://iana.org/assignments/http-problem-types#ohttp-key","title":"Oblivious HTTP key configuration not acceptable"}'
PROMPT='interop héllo, 世界: "quoted" & more'

# ------------------------------------------------ the third-party packages

for x in "$NODE" npm; do
    command -v "$x" >/dev/null || {
        echo "FAIL: $x not found: this test needs Node.js and npm (scripts/install-deps.sh installs them)"
        exit 1
    }
done
IN_DIR="$SRC/tests/interop" D="$B/tests/interop-node"
if ! cmp -s "$IN_DIR/package-lock.json" "$D/installed.lock" 2>/dev/null; then
    rm -rf "$D" && mkdir -p "$D" && install -m 0644 "$IN_DIR/package.json" "$IN_DIR/package-lock.json" "$D/" ||
        hard "cannot make $D"
    if ! (cd "$D" && npm ci --no-audit --no-fund) >"$T/npm.log" 2>&1; then
        sed 's/^/    /' "$T/npm.log"
        echo "FAIL: npm ci could not install the pinned packages of tests/interop/package-lock.json into $D (is the npm registry reachable?)"
        exit 1
    fi
    install -m 0644 "$IN_DIR/package-lock.json" "$D/installed.lock" || hard "cannot write $D/installed.lock"
fi
install -m 0644 "$IN_DIR/ohttp.mjs" "$IN_DIR/client.mjs" "$IN_DIR/gateway.mjs" "$D/" || hard "cannot copy the .mjs files"
(cd "$D" && "$NODE" -e 'for (const p of ["@hpke/core", "@hpke/dhkem-x25519", "bhttp-js"])
    process.stdout.write(p + "@" + JSON.parse(require("fs").readFileSync(`node_modules/${p}/package.json`)).version + " ")') \
    >"$T/versions" 2>&1 || hard "the installed packages cannot be read"
echo "third-party packages: $(cat "$T/versions")(node $("$NODE" --version))"

CL=("$NODE" "$D/client.mjs")
# send NAME URL [client options] METHOD PATH [JSON]: one exchange, its
# lines in $out, the inner content in $T/content
send() {
    local name=$1 url=$2
    shift 2
    rm -f "$T/content"
    check "$name" 0 "" -- "${CL[@]}" send "$url" --out "$T/content" "$@"
}
has() { grep -qxF -- "$1" "$out"; }
content_is() { "$PY" -c 'import json,sys; c=json.load(open(sys.argv[1])); p=sys.argv[3]; sys.exit(0 if eval(sys.argv[2]) else 1)' "$T/content" "$1" "$PROMPT" 2>/dev/null; }
# inner STATUS NAME [PYTHON-EXPR over the content as c, the prompt as p]
inner() {
    local want=$1 name=$2
    if has "outer 200 message/ohttp-res" && has "cache-control no-store" && has "inner $want" &&
        { [ -z "${3:-}" ] || content_is "$3"; }; then
        ok "$name"
    else
        bad "$name" "$out" "$err" "$T/content"
    fi
}
uniform() {
    if has "outer 400 application/problem+json" && has "content $UNIFORM"; then ok "$1"; else bad "$1" "$out" "$err"; fi
}
chat() { printf '{"model":"%s","messages":[{"role":"user","content":%s}]}' "$1" "$("$PY" -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$PROMPT")"; }
ECHOED='c["choices"][0]["message"]["content"] == p'
# veild's echo embedding (protocol/openai.c): 16 numbers from SHA-256(text)
EMBED='(lambda h: c["data"][0]["embedding"] == [((h[2*i] << 8 | h[2*i+1]) - 32768) / 32768 for i in range(16)])(__import__("hashlib").sha256(b"embed me").digest())'

# --------------------------------------------------------------- the keys

token_key interop-server --bits 2048
token_key interop-signer --type ec
SK=(--server-key "$TOK;object=interop-server" --signing-key "$TOK;object=interop-signer"
    --pkcs11-module "$MOD" "${PIN[@]}" --rate 1000 --burst 1000)
mock_start

# ------------------------------- A: third-party client -> veild, SoftHSM2

veild_start interop-tok "${SK[@]}" --model echo=echo --model "high-only=echo,tiers=high" \
    --model "mock/hello=$MOCK_URL"
URL=$VEILD_URL
grep -q "v2: KEM keys (P-256) are made in the server key's token" "$VEILD_LOG" &&
    ok "veild makes its KEM keys in the SoftHSM2 token" || bad "where the KEM keys are" "$VEILD_LOG"

check "GET /.well-known/ohttp-gateway, parsed by client.mjs" 0 "" -- "${CL[@]}" keys "$URL"
has "outer 200 application/ohttp-keys" && [ "$(grep -c '^config ' "$out")" = 1 ] &&
    grep -qE '^config [0-9]+ 0010 65 0001/0002 0001/0001$' "$out" &&
    ok "one P-256 configuration offering AES-256-GCM then AES-128-GCM" || bad "the key list" "$out"
has "signature ok" && ok "its X-Veil-Keys-Signature verifies with node:crypto under /pki/signing_key" ||
    bad "the key list's signature" "$out"

send "chat, AES-256-GCM, known-length (bhttp-js)" "$URL" POST /v1/chat/completions "$(chat echo)"
inner 200 "the prompt comes back echoed in an inner 200" "$ECHOED"
has "signature ok" && ok "the answer signature verifies with node:crypto" || bad "the answer signature" "$out"
send "chat, AES-128-GCM" "$URL" --aead 128 POST /v1/chat/completions "$(chat echo)"
inner 200 "AES-128-GCM: echoed" "$ECHOED"
send "chat, indeterminate-length request" "$URL" --framing indeterminate POST /v1/chat/completions "$(chat echo)"
inner 200 "indeterminate-length request (RFC 9292 3.2): echoed" "$ECHOED"
send "chat through a backend (tests/mock-upstream)" "$URL" --tier high POST /v1/chat/completions "$(chat mock/hello)"
inner 200 "the backend's answer, inner 200, tier high" 'c["choices"][0]["message"]["content"] == "mock: " + p'
has "signature ok" && ok "its signature (tier high in the statement) verifies" || bad "the tier-high signature" "$out"
send "chat, indeterminate-length request truncated" "$URL" --framing indeterminate-truncated POST /v1/chat/completions "$(chat echo)"
inner 200 "indeterminate-length request without its trailer terminator (RFC 9292 3.8): echoed" "$ECHOED"
send "GET, indeterminate-length, truncated" "$URL" --framing indeterminate-truncated GET /v1/models
inner 200 "indeterminate-length GET without content and trailer terminators: the model list" '"echo" in [m["id"] for m in c["data"]]'
send "GET /v1/models, zero-padded request" "$URL" --framing padded GET /v1/models
inner 200 "padded request (RFC 9292 3.8): the model list, high-only left out on standard" \
    '{m["id"] for m in c["data"]} == {"echo", "mock/hello"}'
send "chat, known-length request zero-padded" "$URL" --framing known-padded POST /v1/chat/completions "$(chat echo)"
inner 200 "known-length padded request (RFC 9292 3.8): echoed" "$ECHOED"
send "chat, known-length request truncated" "$URL" --framing known-truncated POST /v1/chat/completions "$(chat echo)"
inner 200 "known-length request without its empty trailer section (RFC 9292 3.8): echoed" "$ECHOED"
send "GET /v1/models, truncated" "$URL" --framing known-truncated GET /v1/models
inner 200 "GET without its empty content and trailer sections: the model list" '"echo" in [m["id"] for m in c["data"]]'
send "embeddings" "$URL" POST /v1/embeddings '{"model":"echo","input":"embed me"}'
inner 200 "embeddings: veild's echo vector" "$EMBED"
has "signature ok" && ok "the embeddings answer signature verifies" || bad "the embeddings signature" "$out"

send "an unknown model" "$URL" POST /v1/chat/completions "$(chat no-such-model)"
inner 400 "an unknown model: an inner 400 in an outer 200" '"not served here" in c["detail"]'
send "bad JSON" "$URL" POST /v1/chat/completions '{"model":'
inner 400 "bad JSON: an inner 400" '"not a JSON object" in c["detail"]'
send "a model the tier does not allow" "$URL" POST /v1/chat/completions "$(chat high-only)"
inner 403 "high-only on standard: an inner 403" '"detail" in c'
send "a connection field" "$URL" --framing indeterminate --field "connection:keep-alive" POST /v1/chat/completions "$(chat echo)"
inner 200 "a connection field does not make the request invalid (RFC 9292 3.6): echoed" "$ECHOED"
send "a field value with outer white space" "$URL" --framing indeterminate --field "x-note: padded" POST /v1/chat/completions "$(chat echo)"
inner 400 "a field value HTTP/2 calls malformed (RFC 9292 3.6, RFC 9113 8.2.1): an inner 400" '"field value" in c["detail"]'
send "an upper-case field name" "$URL" --framing indeterminate --field "X-Note:v" POST /v1/chat/completions "$(chat echo)"
inner 200 "an upper-case field name is a token, matched in any case (RFC 9292 3.6, RFC 9110 5.1): echoed" "$ECHOED"
send "an unknown route" "$URL" POST /v1/nowhere '{}'
inner 404 "an unknown route: an inner 404"

check "one byte of enc changed" 0 "" -- "${CL[@]}" send "$URL" --tamper enc POST /v1/chat/completions "$(chat echo)"
uniform "enc changed: the uniform 400, byte for byte"
check "one byte of the ciphertext changed" 0 "" -- "${CL[@]}" send "$URL" --tamper ct POST /v1/chat/completions "$(chat echo)"
uniform "ciphertext changed: the uniform 400, byte for byte"
check "another key ID" 0 "" -- "${CL[@]}" send "$URL" --tamper keyid POST /v1/chat/completions "$(chat echo)"
uniform "an unknown key ID: the uniform 400, byte for byte"
check "an AEAD the configuration does not offer" 0 "" -- "${CL[@]}" send "$URL" --tamper aead POST /v1/chat/completions "$(chat echo)"
uniform "ChaCha20Poly1305 (not offered): the uniform 400, byte for byte"
check "a body cut inside enc" 0 "" -- "${CL[@]}" send "$URL" --tamper short POST /v1/chat/completions "$(chat echo)"
uniform "a short body: the uniform 400, byte for byte"
send "a request recorded" "$URL" --save "$T/sent.req" POST /v1/chat/completions "$(chat echo)"
inner 200 "the recorded request opens once" "$ECHOED"
check "its replay" 0 "" -- "${CL[@]}" post "$URL" "$T/sent.req"
uniform "the replay: the uniform 400, byte for byte"
veild_stop || bad "veild did not stop cleanly" "$VEILD_LOG"

# ------------------- A: KEM keys in software, with X25519 (kem_x25519 = on)

veild_start interop-sw "${SK[@]}" --model echo=echo --kem-keys software --kem-x25519 on
URL=$VEILD_URL
check "GET /.well-known/ohttp-gateway, kem_x25519 = on" 0 "" -- "${CL[@]}" keys "$URL"
mapfile -t cf < <(grep '^config ' "$out")
[ "${#cf[@]}" = 2 ] && [[ ${cf[0]} =~ ^config\ [0-9]+\ 0010\ 65\ 0001/0002\ 0001/0001$ ]] &&
    [[ ${cf[1]} =~ ^config\ [0-9]+\ 0020\ 32\ 0001/0002\ 0001/0001$ ]] && has "signature ok" &&
    ok "P-256 then X25519, one signature that verifies" || bad "the key list with X25519" "$out"
send "P-256 in software, AES-256-GCM" "$URL" POST /v1/chat/completions "$(chat echo)"
inner 200 "software P-256 key: echoed" "$ECHOED"
send "X25519, AES-128-GCM" "$URL" --kem x25519 --aead 128 POST /v1/chat/completions "$(chat echo)"
inner 200 "X25519 + AES-128-GCM (@hpke/dhkem-x25519): echoed" "$ECHOED"
has "signature ok" && ok "the X25519 answer's signature verifies" || bad "the X25519 answer signature" "$out"
send "X25519, AES-256-GCM, indeterminate-length" "$URL" --kem x25519 --framing indeterminate \
    POST /v1/embeddings '{"model":"echo","input":"embed me"}'
inner 200 "X25519 + AES-256-GCM embeddings: veild's echo vector" "$EMBED"
send "X25519, models" "$URL" --kem x25519 --framing padded GET /v1/models
inner 200 "X25519: the model list" '[m["id"] for m in c["data"]] == ["echo"]'
send "X25519, an unknown model" "$URL" --kem x25519 --aead 128 POST /v1/chat/completions "$(chat nope)"
inner 400 "X25519: an unknown model is an inner 400" '"not served here" in c["detail"]'
check "X25519, one byte of enc changed" 0 "" -- "${CL[@]}" send "$URL" --kem x25519 --tamper enc POST /v1/chat/completions "$(chat echo)"
uniform "X25519 enc changed: the uniform 400"
check "X25519, enc a low-order point (all zero)" 0 "" -- "${CL[@]}" send "$URL" --kem x25519 --tamper zero-enc POST /v1/chat/completions "$(chat echo)"
uniform "X25519 enc all zero (RFC 9180 7.1.4's zero DH): the uniform 400"
send "X25519, recorded" "$URL" --kem x25519 --aead 128 --save "$T/x.req" POST /v1/chat/completions "$(chat echo)"
inner 200 "the recorded X25519 request opens once" "$ECHOED"
check "X25519, its replay" 0 "" -- "${CL[@]}" post "$URL" "$T/x.req"
uniform "the X25519 replay: the uniform 400"
veild_stop || bad "veild did not stop cleanly" "$VEILD_LOG"

# ------------------------------------- A: API keys, in the inner request

key="vk-interop-$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')"
(umask 077 && printf '%s\n' "$key" >"$T/a.key" && printf 'vk-wrong\n' >"$T/wrong.key" &&
    printf 'sha256:%s interop\n' "$(printf '%s' "$key" | sha256sum | cut -d' ' -f1)" >"$T/api_keys") ||
    hard "cannot write the API key files"
veild_start interop-auth "${SK[@]}" --model echo=echo --kem-keys software --api-keys "$T/api_keys"
send "with the API key" "$VEILD_URL" --api-key-file "$T/a.key" POST /v1/chat/completions "$(chat echo)"
inner 200 "an inner authorization field with the API key: echoed" "$ECHOED"
send "with another key" "$VEILD_URL" --api-key-file "$T/wrong.key" POST /v1/chat/completions "$(chat echo)"
inner 401 "another key: an inner 401 in an outer 200" '"detail" in c'
send "without a key" "$VEILD_URL" POST /v1/chat/completions "$(chat echo)"
inner 401 "no key: an inner 401"
veild_stop || bad "veild did not stop cleanly" "$VEILD_LOG"

# ------------------------- B: veil's client -> a third-party-based gateway

stop_at_exit GW_PID GW2_PID
rm -f "$T/gw.port"
"$NODE" "$D/gateway.mjs" --port-file "$T/gw.port" 2>"$T/gw.log" &
GW_PID=$!
wait_for "$T/gw.port" "^[0-9]+$"
GW="http://127.0.0.1:$(tr -dc 0-9 <"$T/gw.port")"
VC=(--url "$GW" --allow-http --protocol v2)

IN=/dev/null check "veil chat --protocol v2 to gateway.mjs" 0 "" -- "$V" chat "${VC[@]}" -m echo -v "$PROMPT"
[ "$(cat "$out")" = "$PROMPT" ] && ok "veil chat prints the prompt echoed by gateway.mjs" || bad "veil chat's answer" "$out" "$err"
grep -q "v2 key configuration of .*: key ID 7," "$err" &&
    ok "veil skipped the P-384 and X25519 configurations and took P-256 key 7 (HKDF-SHA256 + AES-256-GCM, listed third)" ||
    bad "the configuration veil took" "$err"
grep -q "answer signature verified" "$err" && ok "veil verified gateway.mjs's answer signature" || bad "the answer signature" "$err"
grep -qF "POST /v1/chat/completions model echo: inner 200, authority \"${GW#http://}\"" "$T/gw.log" &&
    ! grep -q "empty authority" "$T/gw.log" &&
    ok "veil's inner request names the gateway's authority, which bhttp-js needs (RFC 9292 3.3, RFC 9113 8.3.1)" ||
    bad "the authority of veil's inner request" "$T/gw.log"
check "an indeterminate-length, padded answer" 0 "" -- "$V" chat "${VC[@]}" -m echo-indeterminate "$PROMPT"
[ "$(cat "$out")" = "$PROMPT" ] && ok "veil reads an indeterminate-length, zero-padded answer (RFC 9292 3.2, 3.8)" ||
    bad "the indeterminate-length answer" "$out" "$err"
check "a known-length answer after a 103 informational response" 0 "" -- "$V" chat "${VC[@]}" -m echo-informational "$PROMPT"
[ "$(cat "$out")" = "$PROMPT" ] && ok "veil reads a padded answer after an informational response (RFC 9292 3.5.1)" ||
    bad "the answer after a 103" "$out" "$err"
check "a truncated known-length answer" 0 "" -- "$V" chat "${VC[@]}" -m echo-truncated "$PROMPT"
[ "$(cat "$out")" = "$PROMPT" ] && ok "veil reads a known-length answer without its empty trailer section (RFC 9292 3.8)" ||
    bad "the truncated answer" "$out" "$err"
check "an inner 429 with an inner retry-after" 0 "" -- "$V" chat "${VC[@]}" -v -m busy-once "$PROMPT"
[ "$(cat "$out")" = "$PROMPT" ] && grep -q "2 attempt(s)" "$err" &&
    ok "veil honours gateway.mjs's inner 429 and retry-after, and the second attempt answers" ||
    bad "the retry after an inner 429" "$out" "$err"
check "a truncated indeterminate-length answer" 0 "" -- "$V" chat "${VC[@]}" -m echo-ind-truncated "$PROMPT"
[ "$(cat "$out")" = "$PROMPT" ] && ok "veil reads an indeterminate-length answer without its trailer terminator (RFC 9292 3.8)" ||
    bad "the truncated indeterminate-length answer" "$out" "$err"
check "veil models --protocol v2" 0 "" -- "$V" models "${VC[@]}"
grep -qx echo "$out" && grep -qx echo-indeterminate "$out" && ok "veil models lists gateway.mjs's models" ||
    bad "veil models" "$out" "$err"
check "veil embed --protocol v2" 0 "" -- "$V" embed "${VC[@]}" -m echo "embed me"
cp "$out" "$T/content.raw" && "$PY" -c 'import json,sys; print(json.dumps({"data":[{"embedding":json.load(open(sys.argv[1]))}]}))' \
    "$T/content.raw" >"$T/content" 2>/dev/null && content_is "$EMBED" &&
    ok "veil embed prints the vector gateway.mjs computed" || bad "veil embed's vector" "$out" "$err"
check "an unsigned answer is refused" 19 "SecurityError.*carries no signature" -- "$V" chat "${VC[@]}" -m echo-unsigned "x"
check "a mis-signed answer is refused" 19 "SecurityError.*does not verify" -- "$V" chat "${VC[@]}" -m echo-badsig "x"
check "an unknown model: APIError 404" 14 "APIError \(HTTP 404\): model 'nope' is not served here" -- \
    "$V" chat "${VC[@]}" -m nope "x"
posts=$(count "$T/gw.log" "^gateway.mjs: POST ")
check "a wrong --signing-key-pin is refused" 19 "does not match the pinned" -- \
    "$V" chat "${VC[@]}" --signing-key-pin "sha256:$(printf '%064d' 0)" -m echo "x"
[ "$(count "$T/gw.log" "^gateway.mjs: POST ")" = "$posts" ] && ! grep -q "uniform 400" "$T/gw.log" &&
    ok "nothing was posted under the wrong pin" || bad "a request went out under a wrong pin" "$T/gw.log"

rm -f "$T/gw2.port"
"$NODE" "$D/gateway.mjs" --port-file "$T/gw2.port" --stale-once 2>"$T/gw2.log" &
GW2_PID=$!
wait_for "$T/gw2.port" "^[0-9]+$"
check "a key rotated under the client: refetch and retry" 0 "refetching its key configuration" -- \
    "$V" chat --url "http://127.0.0.1:$(tr -dc 0-9 <"$T/gw2.port")" --allow-http --protocol v2 -v -m echo "$PROMPT"
[ "$(cat "$out")" = "$PROMPT" ] && grep -q "uniform 400: unknown key" "$T/gw2.log" &&
    grep -q "key ID 8," "$err" && ok "one uniform 400 (gateway.mjs's), then key 8 and the answer" ||
    bad "the retry after rotation" "$out" "$err" "$T/gw2.log"

grep -q "^gateway.mjs: error" "$T/gw.log" "$T/gw2.log" && bad "gateway.mjs had errors" "$T/gw.log" "$T/gw2.log"
grep -q "empty authority" "$T/gw.log" "$T/gw2.log" && bad "an inner request without authority" "$T/gw.log" "$T/gw2.log"

echo "test_interop_ohttp: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
