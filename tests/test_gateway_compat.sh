#!/bin/bash
# ok and bad always succeed, so "test && ok || bad" is safe here.
# shellcheck disable=SC2015
# veild serves the existing NOMYO clients' wire format and veil chat: the
# gateway runs over HTTPS with its server key made in a SoftHSM2 token and
# the built-in echo model; tests/nomyo_client.py, an independent
# re-implementation of the NOMYO Python and JavaScript clients' wire
# handling (written from the protocol description, not from veil's code),
# talks to it in both tag conventions; then `veil chat` does, with its
# answer key in the other SoftHSM2 token.  Also: the tier header, the error
# classes (400, 401, 403, 409, 429, 503) and replay refusal.
#
# Run through tests/env/with-tokens.sh.  Exit 0 pass, 1 fail, 99 setup
# failure.
. "${VEIL_SRCDIR:?}/tests/env/suite.sh" compat curl
nomyo_setup
STOK=$TOK CTOK="pkcs11:token=$VEIL_TEST_SOFTHSM_TOKEN2"

# nomyo VARIANT [options...]: the NOMYO client against the main gateway.
nomyo() {
    local variant=$1
    shift
    "$PY" "$NC" --url "$URL" --ca-file "$CA" --variant "$variant" --bits 2048 "$@"
}

# posts LOG: how many completion requests the gateway has logged.
posts() { grep -c "POST /v1/chat/secure_completion" "$1"; }

# ------------------------------------------------------------------ setup

check "the NOMYO client's self-test (both variants, locally)" 0 "self-test: 0 failed" -- "$PY" "$NC" --self-test --bits 2048

"$K" generate --token "$STOK" --label gw-server --bits 2048 --module "$MOD" --pin-source "$PINSRC" >"$T/keygen.log" 2>&1 \
    || { cat "$T/keygen.log"; hard "veil-keys could not make the server key in SoftHSM2"; }
"$K" generate --token "$CTOK" --label chat-client --bits 2048 --module "$MOD" --pin-source "$PINSRC" >>"$T/keygen.log" 2>&1 \
    || { cat "$T/keygen.log"; hard "veil-keys could not make the client key in the second token"; }
SERVER_FP=$("$K" show --key "$STOK;object=gw-server" --fingerprint --module "$MOD" --pin-source "$PINSRC" 2>"$T/show.err") \
    || { cat "$T/show.err"; hard "veil-keys show"; }
"$K" show --key "$STOK;object=gw-server" --pem --module "$MOD" --pin-source "$PINSRC" >"$T/server.pem" 2>"$T/show.err" \
    || { cat "$T/show.err"; hard "veil-keys show --pem"; }

# The main gateway: server key in SoftHSM2, echo model, a model served on
# the standard tier only; a rate high enough for this test's requests.
veild_start compat --tls --server-key "$STOK;object=gw-server" \
    --pkcs11-module "$MOD" --pin-source "$PINSRC" \
    --model echo=echo --model "std-only=echo,tiers=standard" \
    --rate 1000 --burst 1000
URL=$VEILD_URL CA=$VEILD_CA LOG=$VEILD_LOG

# --------------------------------------------------- the key veild serves

grep -qE "server key: .*RSA-2048 $SERVER_FP, sensitive, not extractable" "$LOG" \
    && ok "veild opened the SoftHSM2 key (RSA-2048, sensitive, not extractable)" \
    || bad "veild's log does not name the token key $SERVER_FP" "$LOG"
if curl -fsS --cacert "$CA" "$URL/pki/public_key" >"$T/served.pem" 2>"$T/curl.err" && cmp -s "$T/served.pem" "$T/server.pem"; then
    ok "GET /pki/public_key serves the token key's PEM, byte for byte"
else
    bad "the served key differs from the token key" "$T/served.pem" "$T/server.pem" "$T/curl.err"
fi

# ------------------------------------------------ NOMYO Python client wire

P1="the NOMYO Python wire format, sealed to a SoftHSM2 key"
check "python variant: round trip (exit 0)" 0 "" -- nomyo python -m echo --prompt "$P1"
answer_is "python variant: the answer's content is the prompt" "a['choices'][0]['message']['content'] == '$P1'"
answer_is "python variant: answered in its own convention (a separate tag field)" "'nomyo_client: answer tag placement: separate' in err"
answer_is "python variant: one X-Payload-ID sent, a UUID v4" "len(ids) == 1 and len(sent) == 36 and sent[14] == '4'"
answer_is "python variant: the server's _metadata.payload_id is the X-Payload-ID sent" "server_md['payload_id'] == sent"
answer_is "python variant: _metadata.payload_id (as the client sets it) is the X-Payload-ID sent" "md['payload_id'] == sent"
answer_is "python variant: _metadata.security_tier is standard (no tier header)" "md['security_tier'] == 'standard'"
answer_is "python variant: _metadata.response_status is success" "md['response_status'] == 'success'"
answer_is "python variant: _metadata.memory_protection: platform linux, three booleans" \
    "all(isinstance(md['memory_protection'][k], bool) for k in ('memory_locking', 'secure_zeroing', 'core_dump_prevention')) and md['memory_protection']['platform'] == 'linux'"
answer_is "python variant: _metadata.is_encrypted is true" "md['is_encrypted'] is True"
answer_is "python variant: _metadata.encryption_algorithm is the package's algorithm" "md['encryption_algorithm'] == 'hybrid-aes256-rsa4096'"
answer_is "python variant: _metadata.processed_at is a time within a minute" "abs(md['processed_at'] - __import__('time').time()) < 60"
answer_is "python variant: a chat.completion from the echo model" "a['object'] == 'chat.completion' and a['model'] == 'echo' and a['choices'][0]['message']['role'] == 'assistant'"

check "python variant with a 4096-bit client key (the clients' default)" 0 "" -- "$PY" "$NC" --url "$URL" --ca-file "$CA" --variant python -m echo --prompt "four thousand and ninety-six"
answer_is "python variant, RSA-4096: the answer's content is the prompt" "a['choices'][0]['message']['content'] == 'four thousand and ninety-six'"

# -------------------------------------------- NOMYO JavaScript client wire

P2="the NOMYO JavaScript wire format: tag appended, ünïcödé ☃"
check "js variant: round trip (exit 0)" 0 "" -- nomyo js -m echo --prompt "$P2"
answer_is "js variant: the answer's content is the prompt" "a['choices'][0]['message']['content'] == '$P2'"
answer_is "js variant: answered in its own convention (tag appended, no tag field)" "'nomyo_client: answer tag placement: appended' in err"
answer_is "js variant: _metadata.payload_id is the X-Payload-ID sent" "server_md['payload_id'] == sent and md['payload_id'] == sent"

# ----------------------------------------------------------- tier header

check "X-Security-Tier: standard is accepted" 0 "" -- nomyo python -m echo --tier standard --prompt "tier standard"
answer_is "X-Security-Tier: standard reaches the server (_metadata.security_tier)" "md['security_tier'] == 'standard'"
nomyo python -m echo --tier high --prompt "tier high" >"$out" 2>"$err"
rc=$?
if [ "$rc" -eq 0 ]; then
    answer_is "X-Security-Tier: high answered on the high tier (memory protection in force)" "md['security_tier'] == 'high' and md['memory_protection']['memory_locking'] is True"
elif [ "$rc" -eq 17 ] && grep -q "high tier needs locked" "$err"; then
    ok "X-Security-Tier: high refused with 503: memory protection is not in force here"
else
    bad "X-Security-Tier: high: exit $rc" "$out" "$err"
fi
check "X-Security-Tier: maximum without a TPM: 503 ServiceUnavailableError (exit 17)" 17 "ServiceUnavailableError \(HTTP 503\)" -- nomyo python -m echo --tier maximum --prompt "tier maximum"
grep -q "no TPM attestation available" "$err" && ok "the 503 carries the gateway's detail" || bad "maximum: detail missing" "$err"
mark=$(posts "$LOG")
check "an unknown tier is refused by the client before sending (exit 11)" 11 "InvalidRequestError" -- nomyo python -m echo --tier extreme --prompt "never sent"
[ "$(posts "$LOG")" -eq "$mark" ] && ok "nothing was posted for the unknown tier" || bad "the gateway saw a post" "$LOG"

# ------------------------------------------------------- error classes

check "a model limited to the standard tier, asked on high: 403 ForbiddenError (exit 13)" 13 "ForbiddenError \(HTTP 403\).*not allowed on the high tier" -- nomyo python -m std-only --tier high --prompt "forbidden"
check "the same model on the standard tier is served" 0 "" -- nomyo js -m std-only --tier standard --prompt "allowed"
answer_is "std-only on standard: the answer's content is the prompt" "a['choices'][0]['message']['content'] == 'allowed'"
check "an unknown model: 400 InvalidRequestError (exit 11)" 11 "InvalidRequestError \(HTTP 400\).*not served here" -- nomyo python -m no/such-model --prompt "which model"

# ---------------------------------------------------------------- replay

check "--send-twice: the second post of the identical package is 409 (exit 14)" 14 "APIError \(HTTP 409\)" -- nomyo python -m echo --send-twice --prompt "say it once"
answer_is "--send-twice: the first post was answered" "a['choices'][0]['message']['content'] == 'say it once'"
answer_is "--send-twice: both posts carried the same X-Payload-ID" "len(ids) == 2 and ids[0] == ids[1]"
grep -q "replays are refused" "$err" && ok "the 409 says replays are refused" || bad "409 detail" "$err"
check "--send-twice, js variant: 409 too" 14 "APIError \(HTTP 409\)" -- nomyo js -m echo --send-twice --prompt "once more"

# ---------------------------------------------- veil chat, token to token

P3="veil chat through veild, both keys in tokens"
check "veil chat (answer key in the other SoftHSM2 token): round trip" 0 "" -- \
    "$V" chat --url "$URL" --ca-file "$CA" -m echo --token-key "$CTOK;object=chat-client" \
    --module "$MOD" --pin-source "$PINSRC" --server-key-pin "$SERVER_FP" "$P3"
[ "$(cat "$out")" = "$P3" ] && ok "veil chat prints the prompt echoed (server key pinned to the token key)" || bad "veil chat output" "$out" "$err"
check "veil chat --tag appended (the JavaScript convention) with the token key" 0 "" -- \
    "$V" chat --url "$URL" --ca-file "$CA" -m echo --token-key "$CTOK;object=chat-client" \
    --module "$MOD" --pin-source "$PINSRC" --tag appended "appended tag"
[ "$(cat "$out")" = "appended tag" ] && ok "veil chat --tag appended prints the prompt echoed" || bad "veil chat --tag appended" "$out" "$err"
check "veil chat --json --tier standard with the token key" 0 "" -- \
    "$V" chat --url "$URL" --ca-file "$CA" -m echo --token-key "$CTOK;object=chat-client" \
    --module "$MOD" --pin-source "$PINSRC" --tier standard --json "json please"
answer_is "veil chat --json: content, tier and the metadata veil adds" \
    "a['choices'][0]['message']['content'] == 'json please' and md['security_tier'] == 'standard' and md['is_encrypted'] is True and len(md['payload_id']) == 36"
check "veil chat with the key in memory against the same veild" 0 "" -- \
    "$V" chat --url "$URL" --ca-file "$CA" -m echo "an ephemeral key"
[ "$(cat "$out")" = "an ephemeral key" ] && ok "veil chat (ephemeral key) prints the prompt echoed" || bad "veil chat ephemeral" "$out" "$err"
check "veil chat --tier maximum: ServiceUnavailableError (exit 17)" 17 "ServiceUnavailableError" -- \
    "$V" chat --url "$URL" --ca-file "$CA" -m echo --retries 0 --tier maximum "max"

# ---------------------------------- API keys and rate limits (second veild)

API_KEY="nk-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
(umask 077 && printf '%s\n' "$API_KEY" >"$T/api.key" && printf '%s\n' "nk-wrong" >"$T/wrong.key" &&
    printf 'sha256:%s compat-test\n' "$(printf '%s' "$API_KEY" | sha256sum | cut -d' ' -f1)" >"$T/api_keys") \
    || hard "cannot write the API key files"
veild_start auth --tls --server-key "$STOK;object=gw-server" \
    --pkcs11-module "$MOD" --pin-source "$PINSRC" --model echo=echo \
    --api-keys "$T/api_keys" --rate 0.001 --burst 2
AURL=$VEILD_URL ALOG=$VEILD_LOG
check "no API key: 401 AuthenticationError (exit 12)" 12 "AuthenticationError \(HTTP 401\).*missing API key" -- \
    "$PY" "$NC" --url "$AURL" --ca-file "$CA" --bits 2048 -m echo --prompt "who am i"
check "a wrong API key: 401 (exit 12)" 12 "AuthenticationError \(HTTP 401\).*invalid API key" -- \
    "$PY" "$NC" --url "$AURL" --ca-file "$CA" --bits 2048 -m echo --api-key-file "$T/wrong.key" --prompt "who am i"
check "the right API key (Authorization: Bearer): answered" 0 "" -- \
    "$PY" "$NC" --url "$AURL" --ca-file "$CA" --bits 2048 -m echo --api-key-file "$T/api.key" --prompt "key ok"
answer_is "with the API key: the answer's content is the prompt" "a['choices'][0]['message']['content'] == 'key ok'"
check "the burst's second request: answered" 0 "" -- \
    "$PY" "$NC" --url "$AURL" --ca-file "$CA" --bits 2048 --variant js -m echo --api-key-file "$T/api.key" --prompt "key ok again"
check "over the rate: 429 RateLimitError (exit 15)" 15 "RateLimitError \(HTTP 429\).*rate limit exceeded" -- \
    "$PY" "$NC" --url "$AURL" --ca-file "$CA" --bits 2048 -m echo --api-key-file "$T/api.key" --prompt "too many"
grep -qF "$API_KEY" "$ALOG" && bad "the API key appears in veild's log" "$ALOG" || ok "the API key is not in veild's log"

# --------------------------------------------------------------- the logs

leaked=0
for p in "$P1" "$P2" "$P3" "say it once" "key ok"; do
    grep -qF -- "$p" "$LOG" "$ALOG" && leaked=1
done
[ "$leaked" = 0 ] && ok "no prompt or answer text in veild's logs" || bad "plaintext in veild's log" "$LOG" "$ALOG"
grep -q "POST /v1/chat/secure_completion 409" "$LOG" && ok "veild logged the refused replay as 409" || bad "no 409 in the log" "$LOG"

if veild_stop; then ok "both gateways stopped cleanly on SIGTERM (exit 0)"; else bad "a gateway did not exit 0 on SIGTERM" "$LOG" "$ALOG"; fi
grep -q "stopped" "$LOG" && ok "veild logged its clean stop" || bad "no clean stop in the log" "$LOG"

echo "test_gateway_compat: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
