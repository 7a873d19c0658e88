#!/bin/bash
# ok and bad always succeed, so "test && ok || bad" is safe here.
# shellcheck disable=SC2015
# One vocabulary for veil-keys and veild (issue 15, items 4 and 5), as a
# user meets it: the environment variables both read (VEIL_PKCS11_MODULE,
# VEIL_PIN_SOURCE; a flag wins over them, they win over veild's config
# file), the flags printed with dashes and taken with underscores, and one
# name for the PKCS#11 module (--module; veild's former --pkcs11-module
# still taken).  Against a fresh SoftHSM2 token and real veild processes.
#
# Run through tests/env/with-tokens.sh.  Exit 0 pass, 1 fail, 99 setup
# failure.
set -u
B=${VEIL_BUILDDIR:-.}
K="$B/veil-keys" VD="$B/veild"
T="$VEIL_TEST_DIR/vocabulary"
MOD="$VEIL_TEST_SOFTHSM_MODULE"
TOK="pkcs11:token=$VEIL_TEST_SOFTHSM_TOKEN"
RIGHT="file:$VEIL_TEST_PIN_FILE"
NOPIN="file:$VEIL_TEST_DIR/no-such.pin"
pass=0 fail=0
out="$T/out" err="$T/err"
unset VEIL_URL VEIL_API_KEY VEIL_PKCS11_MODULE VEIL_PIN_SOURCE VEIL_RELAY

. "${VEIL_SRCDIR:?}/tests/env/check.sh"
. "${VEIL_SRCDIR:?}/tests/env/veild.sh"
trap veild_stop EXIT

for x in "$K" "$VD"; do
    [ -x "$x" ] || hard "$x is not built"
done
mkdir -p "$T" || hard "cannot make $T"

# out_has NAME ERE / out_lacks NAME ERE: on the last stdout
out_has() { grep -qE -- "$2" "$out" && ok "$1" || bad "$1: stdout lacks /$2/" "$out"; }
out_lacks() { grep -qE -- "$2" "$out" && bad "$1: stdout has /$2/" "$out" || ok "$1"; }

# starts NAME [env...] -- veild flags...: veild starts with them (then
# stopped); each start has a log of its own (a log shared with the start
# before could say "listening" before this veild blocks its signals)
runs=0
starts() {
    local name=$1 envs=() log
    shift
    while [ "$1" != -- ]; do envs+=("$1"); shift; done
    shift
    runs=$((runs + 1))
    log="$T/vd.$runs.log"
    if env "${envs[@]}" "$VD" --port 0 --port-file "$T/vd.port" --state-dir "$T/vd.state" \
        --replay-capacity 65536 --v2 off --model m=echo "$@" >"$log" 2>&1 </dev/null &
    then
        local pid=$! i
        for ((i = 0; i < 600; i++)); do
            if grep -q "listening on" "$log" 2>/dev/null; then
                kill -TERM "$pid"
                local st=0
                wait "$pid" || st=$?
                [ "$st" -eq 0 ] && ok "$name" || bad "$name: veild did not stop cleanly (exit $st)" "$log"
                rm -f "$T/vd.port"
                return
            fi
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
        done
        kill -TERM "$pid" 2>/dev/null
        wait "$pid"
        bad "$name: veild did not start" "$log"
    fi
}

check "a server key in the token" 0 "RSA-2048" -- "$K" generate --token "$TOK" --label vocab --bits 2048 --module "$MOD" --pin-source "$RIGHT"
KEY="$TOK;object=vocab"

# ---- --help: dashes, and the one table of variables
check "veild --help" 0 "" -- "$VD" --help
out_has "veild --help prints --server-key" "^  --server-key REF"
out_has "veild --help prints --pin-source" "^  --pin-source SOURCE"
out_has "veild --help prints --module" "^  --module MODULE"
out_lacks "veild --help prints no flag with an underscore" "^  --[a-z0-9-]*_"
out_lacks "veild --help no longer prints --pkcs11-module" "pkcs11.module"
out_has "veild --help lists VEIL_PKCS11_MODULE" "^  VEIL_PKCS11_MODULE .*--module"
out_has "veild --help lists VEIL_PIN_SOURCE" "^  VEIL_PIN_SOURCE .*--pin-source"
check "veil-keys --help" 0 "" -- "$K" --help
out_has "veil-keys --help lists VEIL_PKCS11_MODULE" "^  VEIL_PKCS11_MODULE .*--module"
out_has "veil-keys --help lists VEIL_PIN_SOURCE" "^  VEIL_PIN_SOURCE .*--pin-source"

# ---- veild honours the environment of veil and veil-keys
starts "veild takes the module and PIN source from VEIL_PKCS11_MODULE and VEIL_PIN_SOURCE" \
    VEIL_PKCS11_MODULE="$MOD" VEIL_PIN_SOURCE="$RIGHT" -- --server-key "$KEY"
check "veild without them has no PIN source (4)" 4 "" -- env VEIL_PKCS11_MODULE="$MOD" \
    "$VD" --port 0 --state-dir "$T/vd.state" --model m=echo --server-key "$KEY" --pin-source "$NOPIN"
starts "a flag wins over VEIL_PIN_SOURCE" \
    VEIL_PKCS11_MODULE="$MOD" VEIL_PIN_SOURCE="$NOPIN" -- --server-key "$KEY" --pin-source "$RIGHT"
starts "a flag wins over VEIL_PKCS11_MODULE" \
    VEIL_PKCS11_MODULE=/nonexistent/libnothing.so VEIL_PIN_SOURCE="$RIGHT" -- --server-key "$KEY" --module "$MOD"
check "a bad VEIL_PKCS11_MODULE alone is used (5)" 5 "cannot load PKCS#11 module" -- env \
    VEIL_PKCS11_MODULE=/nonexistent/libnothing.so VEIL_PIN_SOURCE="$RIGHT" \
    "$VD" --port 0 --state-dir "$T/vd.state" --model m=echo --server-key "$KEY"
check "a PIN itself in VEIL_PIN_SOURCE is refused, naming the variable (2)" 2 \
    "VEIL_PIN_SOURCE in the environment: --pin-source: must be file:PATH" -- env VEIL_PIN_SOURCE=1234 \
    "$VD" --port 0 --state-dir "$T/vd.state" --model m=echo --server-key "$KEY" --module "$MOD"
grep -q 1234 "$err" && bad "the refused PIN source is repeated" "$err" || ok "the refused value is not repeated"

# the environment wins over the config file
printf '%s\n' "server_key = $KEY" "module = /nonexistent/libnothing.so" "pin_source = $NOPIN" >"$T/vd.conf"
chmod 600 "$T/vd.conf"
check "the config file alone: its PIN source is used (4)" 4 "" -- env VEIL_PKCS11_MODULE="$MOD" \
    "$VD" --config "$T/vd.conf" --port 0 --state-dir "$T/vd.state" --model m=echo
starts "VEIL_PKCS11_MODULE and VEIL_PIN_SOURCE win over the config file" \
    VEIL_PKCS11_MODULE="$MOD" VEIL_PIN_SOURCE="$RIGHT" -- --config "$T/vd.conf"

# ---- one spelling printed, both taken; --module in veild too
starts "veild --module" -- --server-key "$KEY" --module "$MOD" --pin-source "$RIGHT"
starts "veild --pkcs11-module (the former name) is still taken" -- --server-key "$KEY" --pkcs11-module "$MOD" --pin-source "$RIGHT"
starts "veild --server_key --pin_source --pkcs11_module (underscores) are taken" -- \
    --server_key "$KEY" --pkcs11_module "$MOD" --pin_source "$RIGHT"
printf '%s\n' "server_key = $KEY" "pkcs11_module = $MOD" "pin_source = $RIGHT" >"$T/old.conf"
chmod 600 "$T/old.conf"
starts "a config file with the former pkcs11_module is still taken" -- --config "$T/old.conf"
check "a flag's error names it with dashes" 2 "^veild: --body-limit: " -- \
    "$VD" --server-key "$KEY" --model m=echo --body_limit 1x
check "veil-keys takes --pin_source and --module" 0 "label: +vocab" -- \
    "$K" list --token "$TOK" --module "$MOD" --pin_source "$RIGHT"
check "veil-keys takes VEIL_PKCS11_MODULE and VEIL_PIN_SOURCE" 0 "label: +vocab" -- \
    env VEIL_PKCS11_MODULE="$MOD" VEIL_PIN_SOURCE="$RIGHT" "$K" list --token "$TOK"
check "veil-keys: a flag wins over VEIL_PIN_SOURCE" 0 "label: +vocab" -- \
    env VEIL_PKCS11_MODULE="$MOD" VEIL_PIN_SOURCE="$NOPIN" "$K" list --token "$TOK" --pin-source "$RIGHT"
check "veil-keys: an unknown flag is still refused" 2 "" -- "$K" list --token "$TOK" --no_such_flag

# ---- veil: the same table and spellings
V="$B/veil"
check "veil --help" 0 "" -- "$V" --help
out_has "veil --help lists VEIL_URL" "^  VEIL_URL .*--url"
out_has "veil --help lists VEIL_PIN_SOURCE" "^  VEIL_PIN_SOURCE .*--pin-source"
out_has "veil --help lists VEIL_RELAY" "^  VEIL_RELAY .*--relay"
check "veil takes --server_key_pin as --server-key-pin (and says what it wants)" 2 "^veil: --server-key-pin takes" -- \
    "$V" chat --url http://127.0.0.1:1 --server_key_pin nonsense -m m hello
check "veil server-key takes --allow_http and VEIL_URL (a connection error, 18)" 18 "APIConnectionError" -- \
    env VEIL_URL=http://127.0.0.1:1 "$V" server-key --allow_http --retries 0
check "veil: an unknown flag is still refused" 2 "is unknown" -- "$V" chat --no_such_flag -m m hello

echo "test_vocabulary: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
