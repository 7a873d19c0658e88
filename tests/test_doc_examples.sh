#!/bin/bash
# The C examples in docs/CLIENT.md, compiled against the built libveil and
# run against the gateway, veild over HTTPS, serving the echo model under
# the name the examples use (Qwen/Qwen3-0.6B), with its server key in one
# fresh SoftHSM2 token and the token example's client key in the other.
# The error examples meet real refusals of veild: a model not served on
# the standard tier (403) and a second veild that wants an API key (401).
# Only the tools example still runs against the protocol test server
# (tests/veil-fixture): veild's echo model never answers with a tool call.
# Each example's output is checked for what the page says it prints.
set -u
SRC=${VEIL_SRCDIR:?} B=${VEIL_BUILDDIR:?}
. "$SRC/tests/env/fixture.sh"
. "$SRC/tests/env/veild.sh"
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

MOD="$VEIL_TEST_SOFTHSM_MODULE" PINSRC="file:$VEIL_TEST_PIN_FILE"
trap 'fixture_stop; veild_stop' EXIT
"$B/veil-keys" generate --module "$MOD" --pin-source "$PINSRC" \
    --token "pkcs11:token=$VEIL_TEST_SOFTHSM_TOKEN2" --label doc-server --bits 2048 >"$W/server-key.log" 2>&1 \
    || { cat "$W/server-key.log"; echo "could not make the server key"; exit 99; }
# the signing key of answers and of protocol v2's key configurations
"$B/veil-keys" generate --module "$MOD" --pin-source "$PINSRC" --type ec \
    --token "pkcs11:token=$VEIL_TEST_SOFTHSM_TOKEN2" --label doc-signer >"$W/signer-key.log" 2>&1 \
    || { cat "$W/signer-key.log"; echo "could not make the signing key"; exit 99; }
GW=(--server-key "pkcs11:token=$VEIL_TEST_SOFTHSM_TOKEN2;object=doc-server"
    --signing-key "pkcs11:token=$VEIL_TEST_SOFTHSM_TOKEN2;object=doc-signer"
    --pkcs11-module "$MOD" --pin-source "$PINSRC" --rate 100 --burst 100
    --model Qwen/Qwen3-0.6B=echo)
veild_start docs --tls "${GW[@]}" --model "tier/high-only=echo,tiers=high"
export VEIL_URL="$VEILD_URL" VEIL_CA_FILE="$VEILD_CA"
# a gateway that wants an API key (the examples send none)
(umask 077 && printf 'sha256:%s doc-test\n' "$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n' | sha256sum | cut -d' ' -f1)" \
    >"$W/api_keys") || { echo "cannot write the API key file"; exit 99; }
veild_start docs-auth --tls "${GW[@]}" --api-keys "$W/api_keys"
AUTH_URL=$VEILD_URL
# the protocol test server, for the tools example only
fixture_start

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
grep -q "high tier needs locked" "$W/system.err" &&
    echo "    (veild refused the high tier: it cannot lock its memory here; raise RLIMIT_MEMLOCK)"
grep -q '^tier: high$' "$W/system.out" && ok "system: per-request tier reached the server" || bad "system: tier"
grep -qE '^payload id: [0-9a-f-]{36} \(1 attempt\(s\)\)$' "$W/system.out" && ok "system: stats" || bad "system: stats"
run protocol '^answer over v2: Hello over Oblivious HTTP$'
grep -q '^model: Qwen/Qwen3-0.6B$' "$W/protocol.out" && ok "protocol: the models listed" || bad "protocol: models"
run protocol '^answer over v1: Hello over Oblivious HTTP$' v1
VEIL_URL="$FIXTURE_URL" VEIL_CA_FILE="$FIXTURE_CA" run tools '^call get_weather\(\{\}\)$'

"$B/veil-keys" generate --module "$VEIL_TEST_SOFTHSM_MODULE" --pin-source "file:$VEIL_TEST_PIN_FILE" \
    --token "pkcs11:token=$VEIL_TEST_SOFTHSM_TOKEN" --label doc-client --bits 2048 >/dev/null \
    || { echo "could not make the token key"; exit 99; }
VEIL_KEY_URI="pkcs11:token=$VEIL_TEST_SOFTHSM_TOKEN;object=doc-client" \
VEIL_PKCS11_MODULE="$VEIL_TEST_SOFTHSM_MODULE" VEIL_PIN_SOURCE="file:$VEIL_TEST_PIN_FILE" \
    run token '^Opened inside the token\.$'
grep -qE '^client key: sha256:[0-9a-f]{64}$' "$W/token.out" && ok "token: fingerprint printed" || bad "token: fingerprint"

run errors '^ok: Hello$'
run errors "^model not allowed on this tier: model 'tier/high-only' is not allowed on the standard tier \(its tiers: high\)\$" tier/high-only
VEIL_URL="$AUTH_URL" run errors '^check the API key: missing API key \(Authorization: Bearer\)$'
VEIL_SERVER_PIN="sha256:$(printf '0%.0s' $(seq 64))" run errors '^security: the server key sha256:[0-9a-f]{64} does not match'

# The systemd unit: docs/veild.service is what GATEWAY.md shows, and
# systemd takes every line of it (an unknown key is only a warning there).
awk '/^```ini$/ { ini = 1; buf = ""; next }
     /^```$/ && ini { ini = 0; if (buf ~ /^\[Unit\]\nDescription=veil gateway/) printf "%s", buf; next }
     ini { buf = buf $0 "\n" }' "$SRC/docs/GATEWAY.md" >"$W/unit.md"
sed -n '/^\[Unit\]/,$p' "$SRC/docs/veild.service" >"$W/unit.file"
if [ -s "$W/unit.md" ] && cmp -s "$W/unit.md" "$W/unit.file"; then
    ok "docs/veild.service is the unit GATEWAY.md shows"
else
    bad "docs/veild.service and GATEWAY.md's unit differ"; diff "$W/unit.md" "$W/unit.file" | head -20
fi
if command -v systemd-analyze >/dev/null; then
    sed "s|^ExecStart=/usr/local/sbin/veild|ExecStart=$B/veild|" "$SRC/docs/veild.service" >"$W/veild.service"
    if systemd-analyze verify --man=no "$W/veild.service" >"$W/unit.log" 2>&1 && [ ! -s "$W/unit.log" ]; then
        ok "systemd-analyze verify takes docs/veild.service without a warning"
    else
        bad "systemd-analyze verify docs/veild.service"; cat "$W/unit.log"
    fi
fi

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
