#!/bin/bash
# ok and bad always succeed, so "test && ok || bad" is safe here.
# shellcheck disable=SC2015
# veild's metrics and usage accounting, as an operator's Prometheus and
# billing see them (issue 15, items 11 and 17): a real veild over HTTPS
# with its keys in a fresh SoftHSM2 token, three API keys (alice, bob,
# and ops, an operator key), models served by a stand-in inference server
# (tests/mock-upstream, which reports usage: 1 prompt token, and
# len("mock: " + prompt) / 4 + 1 completion tokens), chats over protocol
# v1 and v2.  GET /metrics is scraped from metrics_listen and parsed by
# the Prometheus client's own parser (tests/metrics_check.py); the audit
# log is read as JSON lines.  Neither holds a prompt, an answer or a key.
#
# Run through tests/env/with-tokens.sh.  Exit 0 pass, 1 fail, 99 setup
# failure.
. "${VEIL_SRCDIR:?}/tests/env/suite.sh" metrics curl
CHECK="${VEIL_SRCDIR:?}/tests/metrics_check.py"
"$PY" -c "import prometheus_client" 2>/dev/null ||
    hard "python3-prometheus-client is not installed (scripts/install-deps.sh)"

# ------------------------------------------------------------------ setup

token_key metrics --bits 2048
token_key metrics-signer --type ec
rnd() { od -An -tx1 -N12 /dev/urandom | tr -d ' \n'; }
key_a="vk-a-$(rnd)" key_b="vk-b-$(rnd)" key_o="vk-o-$(rnd)"
hash_of() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
(umask 077 && printf '%s\n' "$key_a" >"$T/a.key" && printf '%s\n' "$key_b" >"$T/b.key" &&
    printf 'sha256:%s alice\nsha256:%s bob\nsha256:%s ops\n' "$(hash_of "$key_a")" \
        "$(hash_of "$key_b")" "$(hash_of "$key_o")" >"$T/api_keys" &&
    printf 'vk-nobody\n' >"$T/n.key") ||
    hard "cannot write the API key files"

mock_start

AUDIT="$T/audit.log"
veild_start metrics --tls --server-key "$TOK;object=metrics" \
    --signing-key "$TOK;object=metrics-signer" --module "$MOD" \
    --pin-source "file:$VEIL_TEST_PIN_FILE" --api-keys "$T/api_keys" \
    --operator-keys ops --rate 1000 --burst 1000 \
    --metrics-listen 127.0.0.1 --metrics-port 0 --audit-log "$AUDIT" \
    --model "mock-a=$MOCK_URL" --model "mock-b=$MOCK_URL,tiers=standard" \
    --model "mock/status-500=$MOCK_URL"
wait_for "$VEILD_LOG" "metrics on http://127\.0\.0\.1:[0-9]+/metrics"
MPORT=$(grep -oE "metrics on http://127\.0\.0\.1:[0-9]+" "$VEILD_LOG" | grep -oE "[0-9]+$")
MURL="http://127.0.0.1:$MPORT/metrics"

# chat KEYFILE PROTOCOL MODEL PROMPT [more flags]: one chat through veild
chat() {
    local kf=$1 p=$2 m=$3 text=$4
    shift 4
    "$V" chat --url "$VEILD_URL" --ca-file "$VEILD_CA" --api-key-file "$kf" \
        --protocol "$p" -m "$m" -v "$@" "$text"
}
# the completion tokens the mock reports for a prompt
ctok() { echo $(((6 + ${#1}) / 4 + 1)); }
scrape() { curl -sS -o "$1" -w '%{http_code}' "$MURL"; }
P1="first prompt of alice" P2="second prompt of alice, a longer one"
P3="bob asks something" P4="alice over oblivious http" P5="bob over v2 too"

# ------------------------------------------------------------------ chats

check "v1 chat: alice, mock-a" 0 "" -- chat "$T/a.key" v1 mock-a "$P1"
pid1=$(grep -oE "payload [^:]+:" "$err" | head -1 | sed 's/^payload //; s/:$//' | tr 'A-Z' 'a-z')
check "v1 chat: alice, mock-a again" 0 "" -- chat "$T/a.key" v1 mock-a "$P2"
check "v1 chat: bob, mock-b" 0 "" -- chat "$T/b.key" v1 mock-b "$P3"
check "v2 chat: alice, mock-b" 0 "" -- chat "$T/a.key" v2 mock-b "$P4"
check "v2 chat: bob, mock-b" 0 "" -- chat "$T/b.key" v2 mock-b "$P5"
check "v1 chat the backend fails (502): bob" 14 "HTTP 502" -- \
    chat "$T/b.key" v1 mock/status-500 "fails" --retries 0
check "v1 chat on a tier the model does not serve (403): bob" 13 "HTTP 403" -- \
    chat "$T/b.key" v1 mock-b "wrong tier" --tier high
check "v1 chat with an unknown API key (401)" 12 "HTTP 401" -- chat "$T/n.key" v1 mock-a "no key"

# ------------------------------------------------------------------ scrape

code=$(scrape "$T/metrics.txt")
[ "$code" = 200 ] && ok "GET /metrics on metrics_listen: 200 without an API key" ||
    bad "GET /metrics on metrics_listen answered $code" "$T/metrics.txt"
check "the exposition parses (prometheus_client), with HELP, TYPE, _total, histograms" 0 \
    "family veild_token_operation_duration_seconds histogram" -- "$PY" "$CHECK" valid "$T/metrics.txt"

# metric SAMPLE LABELS EXPECTED
metric() {
    check "$1{$2} = $3" 0 "" -- "$PY" "$CHECK" sum "$T/metrics.txt" "$1" "$2" "$3"
}
R='route=/v1/chat/secure_completion,method=POST'
O='route=/.well-known/ohttp-gateway,method=POST'
metric veild_requests_total "$R,status=200,tier=standard,model=mock-a" 2
metric veild_requests_total "$R,status=200,tier=standard,model=mock-b" 1
metric veild_requests_total "$R,status=502,tier=standard,model=mock/status-500" 1
metric veild_requests_total "$R,status=403,tier=high,model=mock-b" 1
metric veild_requests_total "$R,status=401" 1
# v2: the inner answer's status, tier and model
metric veild_requests_total "$O,status=200,tier=standard,model=mock-b" 2
metric veild_usage_requests_total "key=alice,model=mock-a" 2
metric veild_usage_requests_total "key=alice,model=mock-b" 1
# two answered, one refused on the high tier (403)
metric veild_usage_requests_total "key=bob,model=mock-b" 3
metric veild_usage_requests_total "key=bob,model=mock/status-500" 1
metric veild_usage_prompt_tokens_total "key=alice,model=mock-a" 2
metric veild_usage_completion_tokens_total "key=alice,model=mock-a" $(($(ctok "$P1") + $(ctok "$P2")))
metric veild_usage_completion_tokens_total "key=alice,model=mock-b" "$(ctok "$P4")"
metric veild_usage_completion_tokens_total "key=bob,model=mock-b" $(($(ctok "$P3") + $(ctok "$P5")))
metric veild_usage_completion_tokens_total "key=bob,model=mock/status-500" 0
metric veild_usage_requests_total "key=ops" 0
# every v1 request was opened inside the token: RSA decryptions timed
metric veild_token_operation_duration_seconds_count "provider=pkcs11,operation=rsa_decrypt" ">=5"
metric veild_token_operation_duration_seconds_count "provider=pkcs11,operation=ecdsa_sign" ">=5"
metric veild_upstream_duration_seconds_count "model=mock-a,outcome=ok" 2
metric veild_upstream_duration_seconds_count "model=mock/status-500,outcome=error" 1
metric veild_worker_slots "" 4
metric veild_worker_slots_busy "" 0
# two marks per v1 request opened, one per v2 request
metric veild_replay_register_marks "" ">=10"
metric veild_replay_register_capacity "" 65536

leaks=0
for s in "$P1" "$P2" "$P3" "$P4" "$P5" "mock: " "$key_a" "$key_b" "$key_o" "$pid1"; do
    grep -qF -- "$s" "$T/metrics.txt" && { leaks=1; echo "in /metrics: $s"; }
done
[ "$leaks" = 0 ] && ok "/metrics holds no prompt, answer, API key or payload ID" ||
    bad "/metrics holds what it must not"

# On the main port: operator keys only.
mget() { curl -sS --cacert "$VEILD_CA" -o "$out" -w '%{http_code}' "$@" "$VEILD_URL/metrics"; }
[ "$(mget -H "Authorization: Bearer $key_o")" = 200 ] && grep -q '^veild_requests_total{' "$out" &&
    ok "GET /metrics on the main port with the operator key: 200" ||
    bad "GET /metrics with the operator key" "$out"
[ "$(mget -H "Authorization: Bearer $key_a")" = 403 ] && grep -q "operator" "$out" &&
    ok "GET /metrics on the main port with a client key: 403, naming operator keys" ||
    bad "GET /metrics with a client key" "$out"
[ "$(mget)" = 401 ] && ok "GET /metrics on the main port without a key: 401" ||
    bad "GET /metrics without a key" "$out"
[ "$(curl -sS -o "$out" -w '%{http_code}' "http://127.0.0.1:$MPORT/v1/models")" = 404 ] &&
    ok "metrics_listen serves /metrics only (404 for /v1/models)" ||
    bad "metrics_listen served /v1/models" "$out"

# ------------------------------------------------------------------ audit

check "the audit log: one JSON object per line, the audit fields only" 0 "" -- \
    "$PY" "$CHECK" audit "$AUDIT"
cp "$out" "$T/audit.txt"
n=$(wc -l <"$T/audit.txt")
[ "$n" = 7 ] && ok "seven audit lines: the keyed inference requests (not the 401)" ||
    bad "audit lines: $n, expected 7" "$T/audit.txt"
want() {
    grep -qE -- "$2" "$T/audit.txt" && ok "audit: $1" || bad "audit: $1 (/$2/)" "$T/audit.txt"
}
want "alice mock-a v1 with its tokens and payload ID hash" \
    "^alice mock-a standard v1 200 1 $(ctok "$P1") $(printf '%s' "$pid1" | sha256sum | cut -d' ' -f1)\$"
want "alice mock-b over v2" "^alice mock-b standard v2 200 1 $(ctok "$P4") [0-9a-f]{64}\$"
want "bob mock-b over v2" "^bob mock-b standard v2 200 1 $(ctok "$P5") [0-9a-f]{64}\$"
want "bob's 502: no tokens" "^bob mock/status-500 standard v1 502 - - [0-9a-f]{64}\$"
want "bob's 403 on the high tier" "^bob mock-b high v1 403 - - [0-9a-f]{64}\$"
leaks=0
for s in "$P1" "$P2" "$P3" "$P4" "$P5" "mock: " "$key_a" "$key_b" "$key_o" "$pid1"; do
    grep -qF -- "$s" "$AUDIT" && { leaks=1; echo "in the audit log: $s"; }
done
[ "$leaks" = 0 ] && ok "the audit log holds no prompt, answer, API key or payload ID" ||
    bad "the audit log holds what it must not"
[ "$(stat -c %a "$AUDIT")" = 600 ] && ok "the audit log is made 0600" ||
    bad "audit log mode $(stat -c %a "$AUDIT")"

# A log rotation: the file moved, SIGHUP, and the next line goes to a new
# file.
mv "$AUDIT" "$AUDIT.1" || hard "cannot move the audit log"
kill -HUP "$VEILD_PID" || hard "veild is gone"
wait_for "$VEILD_LOG" "reloaded:|reload failed:"
check "a chat after the rotation" 0 "" -- chat "$T/a.key" v1 mock-a "after the rotation"
wait_for "$AUDIT" '"key":"alice"'
[ "$(wc -l <"$AUDIT")" = 1 ] && [ "$(wc -l <"$AUDIT.1")" = 7 ] &&
    ok "after SIGHUP the audit log is opened again: the new line in a new file" ||
    bad "audit log after rotation" "$AUDIT" "$AUDIT.1"

# A rotation while the configuration does not load (an API key file
# broken by an edit): the reload fails, the running configuration stays,
# and the audit log is opened again all the same.
mv "$AUDIT" "$AUDIT.2" || hard "cannot move the audit log"
cp "$T/api_keys" "$T/api_keys.good"
echo "not a key line" >>"$T/api_keys"
kill -HUP "$VEILD_PID" || hard "veild is gone"
wait_for "$VEILD_LOG" "reload failed:"
grep -q "reload failed: api_keys" "$VEILD_LOG" && ok "a broken API key file: the reload fails, naming it" ||
    bad "no failed reload naming api_keys" "$VEILD_LOG"
check "a chat after the failed reload, on the running configuration" 0 "" -- \
    chat "$T/a.key" v1 mock-a "after the failed reload"
wait_for "$AUDIT" '"key":"alice"'
[ -f "$AUDIT" ] && [ "$(wc -l <"$AUDIT")" = 1 ] && [ "$(wc -l <"$AUDIT.2")" = 1 ] &&
    ok "a failed reload still opens the audit log again: the new line in a new file" ||
    bad "audit log after a rotation with a failed reload" "$AUDIT" "$AUDIT.2"
cp "$T/api_keys.good" "$T/api_keys"

# An audit log that cannot be opened stops the start (exit 2), naming it.
check "veild --audit-log in a missing directory: exit 2, naming the file" 2 \
    "audit_log: cannot open $T/no/such/dir/audit.log" -- \
    "$B/veild" --server-key "$TOK;object=metrics" --module "$MOD" \
    --pin-source "file:$VEIL_TEST_PIN_FILE" --state-dir "$T/state2" \
    --port 0 --model "mock-a=$MOCK_URL" --audit-log "$T/no/such/dir/audit.log"

veild_stop || bad "veild did not stop cleanly" "$VEILD_LOG"
VEILD_PIDS=()
echo "metrics: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
