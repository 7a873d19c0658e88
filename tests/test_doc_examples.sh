#!/bin/bash
# The C examples in docs/CLIENT.md, compiled against the built libveil and
# run against the protocol test server (tests/veil-fixture over HTTPS), with
# the token example's key in a fresh SoftHSM2 token.  Each example's output
# is checked for what the page says it prints.
set -u
SRC=${VEIL_SRCDIR:?} B=${VEIL_BUILDDIR:?}
. "$SRC/tests/env/fixture.sh"
W="$VEIL_TEST_DIR/examples"
mkdir -p "$W"
pass=0 fail=0
ok() { echo "ok: $*"; pass=$((pass+1)); }
bad() { echo "FAIL: $*"; fail=$((fail+1)); }

# Extract every ```c block that starts with /* example: NAME */.
awk -v dir="$W" '
    /^```c$/ { inblock = 1; name = ""; next }
    /^```$/ && inblock { inblock = 0; close(file); next }
    inblock && name == "" && match($0, /\/\* example: [a-z]+ \*\//) {
        name = substr($0, RSTART + 12, RLENGTH - 15); file = dir "/" name ".c"
    }
    inblock && name != "" { print > file }
' "$SRC/docs/CLIENT.md"
names=$(cd "$W" && ls *.c 2>/dev/null | sed 's/\.c$//')
[ "$(echo $names | wc -w)" -ge 5 ] || { echo "expected at least 5 examples, found: $names"; exit 99; }

for n in $names; do
    if "$B/libtool" --quiet --mode=link --tag=CC ${VEIL_CC:-cc} ${VEIL_CFLAGS:-} \
        -I"$SRC/engine" -I"$SRC/client" -o "$W/$n" "$W/$n.c" "$B/libveil.la" \
        ${VEIL_LDFLAGS:-} ${VEIL_CJSON_LIBS:--lcjson} >"$W/$n.build" 2>&1; then
        ok "example '$n' compiles"
    else
        bad "example '$n' does not compile"; cat "$W/$n.build"
    fi
done

fixture_start
trap fixture_stop EXIT
export VEIL_URL="$FIXTURE_URL" VEIL_CA_FILE="$FIXTURE_CA"

# run NAME PATTERN [args...]: exit 0 and stdout matching PATTERN
run() {
    local n=$1 pat=$2; shift 2
    [ -x "$W/$n" ] || { bad "$n: not built"; return; }
    if "$W/$n" "$@" >"$W/$n.out" 2>"$W/$n.err" && grep -qE -- "$pat" "$W/$n.out"; then
        ok "example '$n' $* prints /$pat/"
    else
        bad "example '$n' $*: expected /$pat/"; cat "$W/$n.out" "$W/$n.err"
    fi
}

run basic '^Hello, who are you\?$'
run system '^answer: What is PKCS#11\?$'
grep -q '^tier: high$' "$W/system.out" && ok "system: per-request tier reached the server" || bad "system: tier"
grep -qE '^payload id: [0-9a-f-]{36} \(1 attempt\(s\)\)$' "$W/system.out" && ok "system: stats" || bad "system: stats"
run tools '^call get_weather\(\{\}\)$'

"$B/veil-keys" generate --module "$VEIL_TEST_SOFTHSM_MODULE" --pin-source "file:$VEIL_TEST_PIN_FILE" \
    --token "pkcs11:token=$VEIL_TEST_SOFTHSM_TOKEN" --label doc-client --bits 2048 >/dev/null \
    || { echo "could not make the token key"; exit 99; }
VEIL_KEY_URI="pkcs11:token=$VEIL_TEST_SOFTHSM_TOKEN;object=doc-client" \
VEIL_PKCS11_MODULE="$VEIL_TEST_SOFTHSM_MODULE" VEIL_PIN_SOURCE="file:$VEIL_TEST_PIN_FILE" \
    run token '^Opened inside the token\.$'
grep -qE '^client key: sha256:[0-9a-f]{64}$' "$W/token.out" && ok "token: fingerprint printed" || bad "token: fingerprint"

run errors '^ok: Hello$'
run errors '^model not allowed on this tier: fixture: status 403$' fixture/status-403
run errors '^check the API key: fixture: status 401$' fixture/status-401
VEIL_SERVER_PIN="sha256:$(printf '0%.0s' $(seq 64))" run errors '^security: the server key sha256:[0-9a-f]{64} does not match'

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
