#!/bin/bash
# ok and bad always succeed, so "test && ok || bad" is safe here.
# shellcheck disable=SC2015
# veil (the chat command) as a user runs it, against the protocol test
# server tests/veil-fixture over HTTPS with a throwaway CA, with answer keys
# made in memory, in a key directory and in a fresh SoftHSM2 token: what it
# prints, its exit codes (documented in `veil --help` and veil(1)), and that
# no secret shows up in the process list or on stderr.
#
# Run through tests/env/with-tokens.sh.  Exit 0 pass, 1 fail, 99 setup
# failure.
set -u
B=${VEIL_BUILDDIR:-.}
V="$B/veil"
K="$B/veil-keys"
FX="$B/tests/veil-fixture"
T="$VEIL_TEST_DIR/cli"
MOD="$VEIL_TEST_SOFTHSM_MODULE"
TOK="pkcs11:token=$VEIL_TEST_SOFTHSM_TOKEN"
SECMSG="the response could not be verified or decrypted"
pass=0 fail=0
out="$T/out" err="$T/err"
. "${VEIL_SRCDIR:?}/tests/env/fixture.sh"

# Nothing from the caller's environment may change what veil does.
unset VEIL_URL VEIL_API_KEY VEIL_PKCS11_MODULE VEIL_PIN_SOURCE VEIL_RELAY
# nor the caller's ~/.config/veil/config: an empty one of our own
export XDG_CONFIG_HOME="$T/xdg"

. "${VEIL_SRCDIR:?}/tests/env/check.sh"

trap fixture_stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for x in "$V" "$K" "$FX"; do
    [ -x "$x" ] || hard "$x is not built"
done
command -v openssl >/dev/null || hard "openssl not found"
command -v python3 >/dev/null || hard "python3 not found"
mkdir -p "$T" || hard "cannot make $T"

# same_out NAME TEXT: stdout of the last check is exactly TEXT + newline.
same_out() {
    if [ "$(cat "$out")" = "$2" ] && [ "$(tail -c 1 "$out" | od -An -c | tr -d ' ')" = '\n' ]; then
        ok "$1"
    else
        bad "$1: stdout is not the expected text" "$out" "$err"
    fi
}

# err_has NAME ERE / err_lacks NAME FIXED-STRING: on the last stderr.
err_has() {
    if grep -qE -- "$2" "$err"; then ok "$1"; else bad "$1: stderr lacks /$2/" "$err"; fi
}
err_lacks() {
    if grep -qF -- "$2" "$err"; then bad "$1" "$err"; else ok "$1"; fi
}

# lines FILE: number of lines (0 when missing).
lines() { if [ -f "$1" ]; then wc -l <"$1"; else echo 0; fi; }
# new_in LOG MARK ERE: the lines of LOG after line MARK matching ERE.
new_in() { tail -n "+$(($2 + 1))" "$1" | grep -cE -- "$3"; }

# ------------------------------------------------------------------ setup

fixture_start tls
URL=$FIXTURE_URL CA=$FIXTURE_CA FXLOG=$FIXTURE_LOG
fixture_start http --http
HTTP_URL=$FIXTURE_URL HTTPLOG=$FIXTURE_LOG
API_KEY="vk-$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')"
(umask 077 && printf '%s\n' "$API_KEY" >"$T/api.key") || hard "cannot write the API key file"
(umask 077 && printf '%s\n' "vk-not-the-key" >"$T/wrong.key") || hard "cannot write a key file"
fixture_start auth --api-key-file "$T/api.key"
AUTH_URL=$FIXTURE_URL AUTHLOG=$FIXTURE_LOG

# A quick 2048-bit answer key for the checks that are not about keys.
"$K" generate --key-dir "$T/fastkey" --bits 2048 >"$T/keygen.log" 2>&1 || {
    cat "$T/keygen.log"
    hard "veil-keys could not make a key directory"
}
FAST=(--url "$URL" --ca-file "$CA" --key-dir "$T/fastkey")

# ------------------------------------------------------------------ usage

check "no arguments is a usage error" 2 "usage: veil" -- "$V"
check "--help lists the exit codes" 0 "12 AuthenticationError" -- "$V" --help
[ ! -s "$err" ] && ok "--help writes nothing on stderr" || bad "--help wrote on stderr" "$err"
grep -q "21 ConfigurationError" "$out" && ok "--help names every class" || bad "--help lacks class 21" "$out"
check "chat --help" 0 "usage: veil chat" -- "$V" chat --help
grep -q "Not a token PIN" "$out" && ok "chat --help says --server-key-pin is not a token PIN" || bad "--server-key-pin wording" "$out"
check "server-key --help" 0 "usage: veil server-key" -- "$V" server-key --help
check "--version" 0 "^veil [0-9]" -- "$V" --version
check "unknown command" 2 "unknown command 'frobnicate'" -- "$V" frobnicate
check "chat without -m" 2 "-m MODEL is required" -- "$V" chat --url "$URL" hello
check "unknown option" 2 "option --frobnicate is unknown" -- "$V" chat -m x --frobnicate hello
check "option without its argument" 2 "needs an argument" -- "$V" chat hello -m
check "--token-key with --key-dir" 2 "exclude each other" -- "$V" chat -m x --token-key "$TOK;object=a" --key-dir "$T/kd" hello
check "an API key on the command line is refused" 2 "never taken on the command line" -- "$V" chat -m x --api-key "$API_KEY" hello
err_lacks "the refused API key is not echoed" "$API_KEY"
check "--pin is refused, naming --pin-source and --server-key-pin" 2 "there is no --pin: a token PIN is never taken on the command line \(use --pin-source.*--server-key-pin sha256:" -- "$V" chat -m x --pin 123456 hello
err_lacks "the value given to --pin is not echoed" "123456"
[ "$(wc -l <"$err")" -eq 1 ] && ok "--pin: one line, no usage dump" || bad "--pin printed more than its message" "$err"
check "--pin=VALUE is refused the same way" 2 "there is no --pin" -- "$V" server-key --pin=123456
err_lacks "the value given to --pin= is not echoed" "123456"
check "--pin alone is refused the same way" 2 "there is no --pin" -- "$V" chat -m x --pin
check "a token PIN given to --server-key-pin is refused" 2 "not a token PIN" -- "$V" chat -m x --server-key-pin 123456 hello
err_lacks "the value given to --server-key-pin is not echoed" "123456"
[ "$(wc -l <"$err")" -eq 1 ] && ok "--server-key-pin: one line, no usage dump" || bad "--server-key-pin printed more than its message" "$err"
# No default server: nothing is sent anywhere not named.
check "chat without --url or VEIL_URL: nothing sent" 2 "no server: give --url URL, set VEIL_URL or put 'url = URL' in $T/xdg/veil/config \(there is no default; nothing was sent\)" -- "$V" chat -m x --key-dir "$T/fastkey" hello
check "--url ending in /v1: drop it, nothing sent" 2 "the URL ends in /v1: give the gateway's base URL without it .*nothing was sent" -- "$V" chat --url http://127.0.0.1:9/v1/ --allow-http -m x --key-dir "$T/fastkey" hello
check "server-key without --url or VEIL_URL" 2 "no server: give --url URL, set VEIL_URL" -- "$V" server-key
mkdir -p "$T/xdg/veil"
printf '# my gateway\n\nurl = %s\n' "$URL" >"$T/xdg/veil/config"
check "the config file's url is used" 0 "BEGIN PUBLIC KEY" -- "$V" server-key --ca-file "$CA"
printf 'url = %s\nmodel = x\n' "$URL" >"$T/xdg/veil/config"
check "an unknown line in the config file" 2 "config:2: only 'url = URL' is known here" -- "$V" server-key --ca-file "$CA"
rm -f "$T/xdg/veil/config"
VEIL_URL="$URL" check "VEIL_URL is used when --url is not given" 0 "BEGIN PUBLIC KEY" -- "$V" server-key --ca-file "$CA"
if grep -rq "nomyo\.ai" "$V" "$B/.libs/libveil.so" 2>/dev/null; then bad "a third-party URL is built into veil or libveil"; else ok "no third-party URL in veil or libveil"; fi
check "bad --tier" 2 "standard, high or maximum" -- "$V" chat -m x --tier extreme hello
check "bad --tag" 2 "separate or appended" -- "$V" chat -m x --tag inline hello
check "bad --timeout" 2 "--timeout takes seconds" -- "$V" chat -m x --timeout soon hello
check "bad --retries" 2 "--retries takes a number" -- "$V" chat -m x --retries -1 hello
check "two prompt arguments" 2 "one argument" -- "$V" chat -m x "secret one" "secret two"
err_lacks "the prompt arguments are not echoed" "secret"
check "chat option given to server-key" 2 "--model is an option of 'veil chat'" -- "$V" server-key -m x
check "bad --pin-source" 2 "pin-source" -- "$V" chat "${FAST[@]}" -m x --pin-source 1234 hello
IN=/dev/null check "an empty prompt on stdin" 2 "prompt is empty" -- "$V" chat "${FAST[@]}" -m x -
check "attest without its subcommand" 2 "attest takes a subcommand: enroll" -- "$V" attest
check "attest enroll --help" 0 "usage: veil attest enroll" -- "$V" attest enroll --help
check "attest enroll without --out" 2 "needs --out FILE" -- "$V" attest enroll --url "$URL"
# attest enroll: a golden file that is not one is refused before any
# traffic (the URL points nowhere), naming the file or the PCR
printf '{"sha256": {"0": "not hex"}}' >"$T/golden-bad-hex.json"
printf '{"sha256": {"24": "%064d"}}' 0 >"$T/golden-bad-pcr.json"
printf '{"sha1": {"0": "%064d"}}' 0 >"$T/golden-bad-bank.json"
printf '{"sha256": {"0": "%064d"' 0 >"$T/golden-truncated.json"
for g in bad-hex bad-pcr; do
    check "attest enroll --golden golden-$g: refused before any traffic (exit 21)" 21 "golden file .*PCR" -- \
        "$V" attest enroll --url http://127.0.0.1:1 --allow-http --allow-unverified-ek \
        --golden "$T/golden-$g.json" --out "$T/never.trust"
done
for g in bad-bank truncated; do
    check "attest enroll --golden golden-$g: refused before any traffic (exit 21)" 21 "is not \\{\"sha256\"" -- \
        "$V" attest enroll --url http://127.0.0.1:1 --allow-http --allow-unverified-ek \
        --golden "$T/golden-$g.json" --out "$T/never.trust"
done
check "attest enroll with a missing golden file (exit 21)" 21 "cannot be read" -- \
    "$V" attest enroll --url http://127.0.0.1:1 --allow-http --allow-unverified-ek \
    --golden "$T/no-such-golden.json" --out "$T/never.trust"
[ ! -e "$T/never.trust" ] && ok "no trust file after a refused golden file" || bad "a trust file was written"
check "verify --help" 0 "usage: veil verify" -- "$V" verify --help
check "verify without --trust" 2 "verify needs --trust FILE" -- "$V" verify "$T/none.json"
check "verify with a missing trust file: configuration error (exit 21)" 21 "trust file: cannot read" -- \
    "$V" verify --trust "$T/no-such.trust" "$T/none.json"
check "chat --trust with a missing trust file: exit 21, nothing sent" 21 "trust file: cannot read" -- \
    "$V" chat "${FAST[@]}" -m x --trust "$T/no-such.trust" hello
: >"$T/exists.json"
check "chat --evidence refuses to overwrite a file (exit 21), nothing sent" 21 "already exists; nothing was sent" -- \
    "$V" chat "${FAST[@]}" -m x --evidence "$T/exists.json" hello

# ----------------------------------------------------------------- http

mark=$(lines "$HTTPLOG")
check "plain http is refused without --allow-http" 19 "SecurityError" -- "$V" chat --url "$HTTP_URL" --key-dir "$T/fastkey" -m fixture/status-503 hello
[ "$(new_in "$HTTPLOG" "$mark" 'GET|POST')" -eq 0 ] && ok "nothing was sent over plain http" || bad "the fixture saw a request over http" "$HTTPLOG"
check "server-key over plain http is refused too" 19 "SecurityError" -- "$V" server-key --url "$HTTP_URL"
check "plain http works with --allow-http" 0 "" -- "$V" chat --url "$HTTP_URL" --allow-http --key-dir "$T/fastkey" -m test/echo "over http"
same_out "the answer over http is the prompt" "over http"
err_has "--allow-http warns" "warning"

# ------------------------------------------------------ default ephemeral key

check "chat round trip (key made for the run)" 0 "" -- "$V" chat --url "$URL" --ca-file "$CA" -m test/echo "hello veil"
same_out "prints the answer's content" "hello veil"
printf 'from stdin\n' >"$T/prompt.txt"
IN="$T/prompt.txt" check "chat reads the prompt from stdin with -" 0 "" -- "$V" chat --url "$URL" --ca-file "$CA" -m test/echo -
same_out "the stdin prompt comes back" "from stdin"
IN="$T/prompt.txt" check "no PROMPT and stdin not a terminal: reads stdin" 0 "" -- "$V" chat "${FAST[@]}" -m test/echo
same_out "the stdin prompt comes back without -" "from stdin"
check "--json" 0 "" -- "$V" chat --url "$URL" --ca-file "$CA" -m test/echo --json "json please"
if python3 -c '
import json, sys
a = json.load(open(sys.argv[1]))
m = a["_metadata"]
assert m["is_encrypted"] is True, m
assert len(m["payload_id"]) == 36, m
assert a["choices"][0]["message"]["content"] == "json please"
' "$out"; then ok "--json has _metadata.payload_id, is_encrypted: true and the content"; else bad "--json output" "$out"; fi
check "--system, --temperature, --max-tokens, --tier, --tag appended" 0 "" -- "$V" chat "${FAST[@]}" -m test/echo --system "be brief" --temperature 0.2 --max-tokens 64 --tier high --tag appended "all options"
same_out "the answer with every option" "all options"
check "a prompt after --" 0 "" -- "$V" chat "${FAST[@]}" -m test/echo -- "-5 degrees"
same_out "the prompt starting with - comes back" "-5 degrees"

# ----------------------------------------------------- the answer key in a token

check "veil-keys makes an RSA key in the SoftHSM2 token" 0 "sensitive: +yes" -- "$K" generate --token "$TOK" --label cli-client --bits 2048 --module "$MOD" --pin-source "file:$VEIL_TEST_PIN_FILE"
"$K" show --key "$TOK;object=cli-client" --fingerprint --module "$MOD" --pin-source "file:$VEIL_TEST_PIN_FILE" >"$T/token.fp" 2>/dev/null || hard "veil-keys show failed"
check "chat with --token-key (the answer is unwrapped in the token)" 0 "" -- "$V" chat --url "$URL" --ca-file "$CA" -m test/echo -v \
    --token-key "$TOK;object=cli-client" --module "$MOD" --pin-source "file:$VEIL_TEST_PIN_FILE" "token round trip"
same_out "the token round trip prints the prompt" "token round trip"
err_has "the client key is the token's key" "client key $(cat "$T/token.fp")"
err_has "-v shows the token unwrapping the answer key" 'key "cli-client".*CKM_RSA_X_509'
err_lacks "the token PIN is not in the log" "$(head -1 "$VEIL_TEST_PIN_FILE")"
err_lacks "the prompt is not in the log" "token round trip"
check "a wrong token PIN: exit 4, as in veil-keys and veild" 4 "ConfigurationError.*CKR_PIN_INCORRECT" -- "$V" chat --url "$URL" --ca-file "$CA" -m test/echo \
    --token-key "$TOK;object=cli-client" --module "$MOD" --pin-source "file:$VEIL_TEST_WRONG_PIN_FILE" hello
check "a token key that does not exist: exit 3, as in veil-keys and veild, listing the token's keys" 3 "ConfigurationError.*no private key matching.*its private keys: .*\"cli-client\"" -- "$V" chat --url "$URL" --ca-file "$CA" -m test/echo \
    --token-key "$TOK;object=nope" --module "$MOD" --pin-source "file:$VEIL_TEST_PIN_FILE" hello

# ------------------------------------------------------------ key directory

KD="$T/keydir"
check "--key-dir makes the key directory" 0 "" -- "$V" chat --url "$URL" --ca-file "$CA" -m test/echo -v --key-dir "$KD" "first"
same_out "the first --key-dir run answers" "first"
fp1=$(grep -oE 'client key sha256:[0-9a-f]{64}' "$err")
[ -s "$KD/private_key.pem" ] && [ -s "$KD/public_key.pem" ] && ok "private_key.pem and public_key.pem written" || bad "key files missing"
[ "$(stat -c %a "$KD/private_key.pem")" = 600 ] && ok "private_key.pem is 0600" || bad "private_key.pem mode $(stat -c %a "$KD/private_key.pem")"
sum1=$(sha256sum <"$KD/public_key.pem")
check "--key-dir reuses the key on a second run" 0 "" -- "$V" chat --url "$URL" --ca-file "$CA" -m test/echo -v --key-dir "$KD" "second"
same_out "the second --key-dir run answers" "second"
fp2=$(grep -oE 'client key sha256:[0-9a-f]{64}' "$err")
[ -n "$fp1" ] && [ "$fp1" = "$fp2" ] && [ "$sum1" = "$(sha256sum <"$KD/public_key.pem")" ] \
    && ok "same public key on both runs" || bad "the key changed: '$fp1' vs '$fp2'"

# --------------------------------------------- server key and --server-key-pin

check "server-key --fingerprint" 0 "^sha256:[0-9a-f]{64}$" -- "$V" server-key --url "$URL" --ca-file "$CA" --fingerprint
FP=$(cat "$out")
check "server-key prints the PEM" 0 "BEGIN PUBLIC KEY" -- "$V" server-key --url "$URL" --ca-file "$CA"
openssl pkey -pubin -in "$out" -outform DER 2>/dev/null | sha256sum | grep -q "${FP#sha256:}" \
    && ok "the fingerprint is the SHA-256 of the PEM's SPKI" || bad "fingerprint mismatch" "$out"
check "--server-key-pin with the server's fingerprint" 0 "" -- "$V" chat "${FAST[@]}" -m test/echo --server-key-pin "$FP" "pinned"
same_out "the pinned chat answers" "pinned"
last=${FP: -1}
[ "$last" = 0 ] && flip=1 || flip=0
WRONG="${FP%?}$flip"
mark=$(lines "$FXLOG")
check "a wrong --server-key-pin is a SecurityError" 19 "SecurityError" -- "$V" chat "${FAST[@]}" -m fixture/status-503 --retries 0 --server-key-pin "$WRONG" hello
[ "$(new_in "$FXLOG" "$mark" 'POST')" -eq 0 ] && ok "nothing was sent to a server with another key" || bad "the fixture received a POST" "$FXLOG"
check "server-key --server-key-pin with a wrong pin" 19 "SecurityError" -- "$V" server-key --url "$URL" --ca-file "$CA" --server-key-pin "$WRONG"

# ------------------------------------------------------------ error classes

check "401 exits 12" 12 "AuthenticationError" -- "$V" chat "${FAST[@]}" -m fixture/status-401 hello
err_has "401: the server's detail" "fixture: status 401"
err_has "401: the HTTP status" "HTTP 401"
check "403 exits 13" 13 "ForbiddenError" -- "$V" chat "${FAST[@]}" -m fixture/status-403 hello
check "404 exits 14" 14 "APIError" -- "$V" chat "${FAST[@]}" -m fixture/status-404 hello
check "400 exits 11" 11 "InvalidRequestError" -- "$V" chat "${FAST[@]}" -m fixture/status-400 hello
check "500 with --retries 0 exits 16" 16 "ServerError" -- "$V" chat "${FAST[@]}" --retries 0 -m fixture/status-500 hello
check "503 with --retries 0 exits 17" 17 "ServiceUnavailableError" -- "$V" chat "${FAST[@]}" --retries 0 -m fixture/status-503 hello
err_has "503: the server's detail" "fixture: status 503"
check "429 with --retries 0 exits 15" 15 "RateLimitError" -- "$V" chat "${FAST[@]}" --retries 0 -m fixture/retry-after-1 hello
check "a timeout exits 18" 18 "APIConnectionError" -- "$V" chat "${FAST[@]}" --retries 0 --timeout 0.3 -m fixture/slow-3000 hello
check "a closed port exits 18" 18 "APIConnectionError" -- "$V" chat --url "https://127.0.0.1:1" --ca-file "$CA" --key-dir "$T/fastkey" --retries 0 -m test/echo hello
check "a TLS certificate from an unknown CA is a SecurityError naming --ca-file" 19 "SecurityError.*certificate.*self-signed CA needs .*--ca-file FILE" -- "$V" chat --url "$URL" --key-dir "$T/fastkey" --retries 0 -m test/echo hello
for mode in ciphertext tag wrapped-key missing-field bad-base64 not-json; do
    check "tampered answer ($mode) exits 19" 19 "SecurityError" -- "$V" chat "${FAST[@]}" -m "fixture/tamper-$mode" "tamper $mode"
    err_has "tamper $mode: the fixed security message" "$SECMSG"
    [ -s "$out" ] && bad "tamper $mode printed something" "$out" || ok "tamper $mode: nothing on stdout"
done

# --------------------------------------------------------------- API keys

check "--api-key-file against a server that needs it" 0 "" -- "$V" chat --url "$AUTH_URL" --ca-file "$CA" --key-dir "$T/fastkey" --api-key-file "$T/api.key" -m test/echo "with key"
same_out "the authenticated chat answers" "with key"
check "a wrong API key exits 12" 12 "AuthenticationError" -- "$V" chat --url "$AUTH_URL" --ca-file "$CA" --key-dir "$T/fastkey" --api-key-file "$T/wrong.key" -m test/echo hello
check "no API key exits 12" 12 "AuthenticationError" -- "$V" chat --url "$AUTH_URL" --ca-file "$CA" --key-dir "$T/fastkey" -m test/echo hello
VEIL_API_KEY=$API_KEY check "VEIL_API_KEY works" 0 "" -- "$V" chat --url "$AUTH_URL" --ca-file "$CA" --key-dir "$T/fastkey" -m test/echo "env key"
same_out "the VEIL_API_KEY chat answers" "env key"
cp "$T/api.key" "$T/open.key" && chmod 644 "$T/open.key"
check "an API key file others can read is refused" 21 "chmod 600" -- "$V" chat --url "$AUTH_URL" --ca-file "$CA" --key-dir "$T/fastkey" --api-key-file "$T/open.key" -m test/echo hello
check "a missing API key file" 21 "cannot read the API key file" -- "$V" chat --url "$AUTH_URL" --ca-file "$CA" --key-dir "$T/fastkey" --api-key-file "$T/nope.key" -m test/echo hello

# The process list while a request is in flight: neither the API key nor a
# prompt read from stdin, and a PROMPT argument is wiped once read.
printf 'stdin secret prompt\n' >"$T/secret.txt"
mark=$(lines "$AUTHLOG")
# (started with core files allowed, to see veil turn them off)
(
    ulimit -S -c unlimited 2>/dev/null || ulimit -S -c "$(ulimit -H -c)"
    exec "$V" chat --url "$AUTH_URL" --ca-file "$CA" --key-dir "$T/fastkey" --api-key-file "$T/api.key" \
        -m fixture/slow-1500 - <"$T/secret.txt" >"$T/ps1.out" 2>"$T/ps1.err"
) &
p1=$!
core_before=$(ulimit -H -c)
"$V" chat --url "$AUTH_URL" --ca-file "$CA" --key-dir "$T/fastkey" --api-key-file "$T/api.key" \
    -m fixture/slow-1500 --system "argv secret system" "argv secret prompt" >"$T/ps2.out" 2>"$T/ps2.err" </dev/null &
p2=$!
for ((i = 0; i < 200; i++)); do
    [ "$(new_in "$AUTHLOG" "$mark" 'POST')" -ge 2 ] && break
    sleep 0.05
done
: >"$T/ps.txt"
if command -v ps >/dev/null 2>&1; then
    ps -ww -o args= -p "$p1" >>"$T/ps.txt" 2>&1
    ps -ww -o args= -p "$p2" >>"$T/ps.txt" 2>&1
fi
cat "/proc/$p1/cmdline" "/proc/$p2/cmdline" 2>/dev/null | tr '\0' ' ' >>"$T/ps.txt"
grep -q "veil" "$T/ps.txt" && ok "both requests were in flight (seen in ps)" || bad "ps did not see veil" "$T/ps.txt"
grep -qF "$API_KEY" "$T/ps.txt" && bad "the API key is in the process list" "$T/ps.txt" || ok "the API key is not in the process list"
grep -qF "stdin secret" "$T/ps.txt" && bad "the stdin prompt is in the process list" "$T/ps.txt" || ok "a prompt read from stdin is not in the process list"
grep -qF "argv secret prompt" "$T/ps.txt" && bad "the PROMPT argument stays in the process list" "$T/ps.txt" || ok "a PROMPT argument is wiped from the process list once read"
grep -qF "argv secret system" "$T/ps.txt" && bad "the --system text stays in the process list" "$T/ps.txt" || ok "a --system text is wiped from the process list once read"
# Core dumps off while it holds the API key, the prompt and its key:
# RLIMIT_CORE 0 (soft and hard) whatever it started with, and not
# dumpable, which makes its /proc/PID files root's (seen only when this
# test does not run as root).
core=$(awk '/^Max core file size/ {print $5 " " $6}' "/proc/$p1/limits" 2>/dev/null)
[ "$core_before" = 0 ] && echo "note: the hard core file size limit here is 0 already"
[ "$core" = "0 0" ] && ok "veil in flight: core file size limit 0 (started with ${core_before:-?})" \
    || bad "veil in flight: core file size limit is '$core', not '0 0'" "/proc/$p1/limits"
if [ "$(id -u)" -ne 0 ]; then
    [ "$(stat -c %u "/proc/$p1")" = 0 ] && ok "veil in flight is not dumpable (/proc/PID is root's)" \
        || bad "veil in flight is dumpable: /proc/$p1 is $(stat -c %U "/proc/$p1")'s"
else
    echo "note: running as root: PR_SET_DUMPABLE is not visible in /proc here (test_secmem checks it)"
fi
wait "$p1"; r1=$?
wait "$p2"; r2=$?
[ "$r1" -eq 0 ] && [ "$(cat "$T/ps1.out")" = "stdin secret prompt" ] && [ "$r2" -eq 0 ] && [ "$(cat "$T/ps2.out")" = "argv secret prompt" ] \
    && ok "both slow requests answered" || bad "slow requests: exit $r1 and $r2" "$T/ps1.err" "$T/ps2.err"

# ---------------------------------------------------------------- spinner

check "a slow answer with stderr not a terminal" 0 "" -- "$V" chat "${FAST[@]}" -m fixture/slow-700 "slow one"
same_out "the slow answer" "slow one"
if LC_ALL=C grep -q $'[\r\033\b]' "$err"; then bad "stderr has spinner control characters" "$err"; else ok "no spinner control characters on a non-terminal stderr"; fi
if command -v script >/dev/null 2>&1 && script -qec true /dev/null </dev/null >/dev/null 2>&1; then
    # Under a pseudo-terminal the spinner turns and is cleared again.
    script -qec "'$V' chat --url '$URL' --ca-file '$CA' --key-dir '$T/fastkey' -m fixture/slow-700 'on a tty'" /dev/null \
        </dev/null >"$T/tty.out" 2>&1
    if grep -q "waiting for the answer" "$T/tty.out" && grep -q $'\033\\[K' "$T/tty.out" && grep -q "on a tty" "$T/tty.out"; then
        ok "on a terminal the spinner shows, is cleared, and the answer follows"
    else
        bad "spinner on a terminal" "$T/tty.out"
    fi
    script -qec "'$V' chat --url '$URL' -m test/echo" /dev/null </dev/null >"$T/tty.out" 2>&1
    r=$?
    [ "$r" -eq 2 ] && grep -q "no prompt" "$T/tty.out" \
        && ok "no PROMPT with stdin a terminal is a usage error" || bad "no PROMPT on a terminal: exit $r" "$T/tty.out"
else
    echo "note: no pseudo-terminal (script(1)); the spinner on a terminal is not checked"
fi

# ------------------------------------------------------ a hostile server

check "--evidence writes the evidence" 0 "" -- "$V" chat "${FAST[@]}" -m test/echo --evidence "$T/ev.json" "evidence please"
[ "$(stat -c %a "$T/ev.json" 2>/dev/null)" = 600 ] && ok "the evidence file is 0600" || bad "evidence file mode $(stat -c %a "$T/ev.json" 2>&1)"

# Escapes in an answer: to a pipe as they came; on a terminal neutralised
# (C0 and C1 controls, bidi overrides) but for newline and tab, or raw
# with --raw.
check "an answer with escapes to a pipe" 0 "" -- "$V" chat "${FAST[@]}" -m fixture/hostile-escapes "escapes"
LC_ALL=C grep -q $'\033\\]0;fixture title' "$out" && ok "to a pipe the answer is printed as it came" || bad "escapes to a pipe" "$out"
if command -v script >/dev/null 2>&1 && script -qec true /dev/null </dev/null >/dev/null 2>&1; then
    script -qec "'$V' chat --url '$URL' --ca-file '$CA' --key-dir '$T/fastkey' -m fixture/hostile-escapes escapes 2>'$T/tty.err'" /dev/null \
        </dev/null >"$T/tty.out"
    if LC_ALL=C grep -qE $'\033|\302\233|\342\200\256' "$T/tty.out"; then
        bad "on a terminal an escape, a C1 control or a bidi override came through" "$T/tty.out"
    elif grep -qF "?desrever?	end" "$T/tty.out" && grep -qF "?verdict: VALID" "$T/tty.out" && ! grep -q "^verdict" "$T/tty.out"; then
        ok "on a terminal escapes and overrides are shown as '?', tab and newline kept, no forged line"
    else
        bad "the neutralised answer on a terminal" "$T/tty.out"
    fi
    script -qec "'$V' chat --url '$URL' --ca-file '$CA' --key-dir '$T/fastkey' --raw -m fixture/hostile-escapes escapes 2>'$T/tty.err'" /dev/null \
        </dev/null >"$T/tty.out"
    LC_ALL=C grep -q $'\033\\]0;fixture title' "$T/tty.out" && ok "--raw prints escapes to a terminal as they came" || bad "--raw on a terminal" "$T/tty.out"
else
    echo "note: no pseudo-terminal (script(1)); the terminal filter is not checked"
fi
check "an error detail with escapes" 16 "ServerError" -- "$V" chat "${FAST[@]}" --retries 0 -m fixture/hostile-detail "detail"
if LC_ALL=C grep -qE $'\033|\302\233|\342\200\256' "$err"; then bad "stderr has an escape, a C1 control or a bidi override" "$err"; else ok "an error detail is neutralised (C0, C1, bidi)"; fi

# --json: valid JSON whatever the answer holds; errors as a JSON object
check "--json with invalid UTF-8 in the answer" 0 "" -- "$V" chat "${FAST[@]}" -m fixture/hostile-badutf8 --json "bad utf-8"
if python3 -c '
import json, sys
a = json.loads(open(sys.argv[1], "rb").read().decode("utf-8"))
assert a["choices"][0]["message"]["content"].count("\ufffd") >= 4, a
' "$out"; then ok "--json replaces invalid UTF-8 with U+FFFD: the output is valid JSON"; else bad "--json with invalid UTF-8" "$out"; fi
check "--json with a deeply nested answer" 0 "" -- "$V" chat "${FAST[@]}" -m fixture/hostile-deep --json "deep"
if [ "$(wc -c <"$out")" -lt 4000000 ] && python3 -c '
import json, sys
sys.setrecursionlimit(10000)
a = json.load(open(sys.argv[1]))
assert a["choices"][0]["message"]["content"] == "deep"
' "$out"; then ok "--json prints a large nested answer compactly"; else bad "--json with a deep answer: $(wc -c <"$out") bytes" "$err"; fi
# json_error NAME EXIT CLASS STATUS DETAIL: stdout of the last check is the error object
json_error() {
    if python3 -c '
import json, sys
e = json.load(open(sys.argv[1]))["error"]
want_status = None if sys.argv[4] == "null" else int(sys.argv[4])
assert e["class"] == sys.argv[2] and e["status"] == want_status, e
assert e["exit_code"] == int(sys.argv[3]) and sys.argv[5] in e["detail"], e
' "$out" "$3" "$2" "$4" "$5"; then ok "$1"; else bad "$1" "$out"; fi
}
check "--json and a 503" 17 "" -- "$V" chat "${FAST[@]}" --retries 0 --json -m fixture/status-503 hello
json_error "--json: a 503 is a JSON error object on stdout" 17 ServiceUnavailableError 503 "fixture: status 503"
check "--json and a tampered answer" 19 "" -- "$V" chat "${FAST[@]}" --json -m fixture/tamper-tag hello
json_error "--json: a SecurityError as a JSON object" 19 SecurityError 200 "$SECMSG"
check "--json and a closed port" 18 "" -- "$V" chat --url "https://127.0.0.1:1" --ca-file "$CA" --key-dir "$T/fastkey" --retries 0 --json -m test/echo hello
json_error "--json: no answer at all: status null" 18 APIConnectionError null ""

# maximum without --trust: the fixture's NOMYO-shaped attestation is not a
# veil quote
check "--tier maximum with a foreign attestation is refused (exit 19)" 19 "not a veil TPM quote" -- "$V" chat "${FAST[@]}" --tier maximum -m test/echo "max"
[ -s "$out" ] && bad "the refused maximum answer was printed" "$out" || ok "nothing printed for the refused maximum answer"
check "--allow-foreign-attestation accepts it" 0 "warning.*another format" -- "$V" chat "${FAST[@]}" --tier maximum --allow-foreign-attestation -m test/echo "max foreign"
same_out "the foreign-attested answer" "max foreign"

# ------------------------------------------------------- secrets on stderr

leaks=0
for f in "$T"/*.err "$err"; do
    [ -f "$f" ] || continue
    grep -qF "$API_KEY" "$f" && leaks=$((leaks + 1))
    grep -qF "$(head -1 "$VEIL_TEST_PIN_FILE")" "$f" && leaks=$((leaks + 1))
done
[ "$leaks" -eq 0 ] && ok "no API key or PIN on any stderr" || bad "$leaks secret(s) on stderr"

fixture_stop
echo "test_cli: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
