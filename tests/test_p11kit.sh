#!/bin/bash
# ok and bad always succeed, so "test && ok || bad" is safe here.
# shellcheck disable=SC2015
# Module lookup (issue 15, item 6), as veil-keys(1) and veild(8) describe
# it: a PKCS#11 URI that names no module, with no --module and no
# VEIL_PKCS11_MODULE, finds its token among the modules registered with
# p11-kit; module-name= and module-path= are taken where RFC 7512 puts
# them (the query, after '?') and refused, with the right spelling, where
# it does not (the path, after ';': p11-kit would drop them in silence).
# SoftHSM2 is registered with p11-kit by its Debian package; when this
# host's p11-kit does not list the test's module, it is registered in a
# private HOME (~/.config/pkcs11/modules) for this test.
#
# Run through tests/env/with-tokens.sh.  Exit 0 pass, 1 fail, 99 setup
# failure.
set -u
B=${VEIL_BUILDDIR:-.}
K="$B/veil-keys" VD="$B/veild"
T="$VEIL_TEST_DIR/p11kit"
MOD="$VEIL_TEST_SOFTHSM_MODULE"
TOKEN="$VEIL_TEST_SOFTHSM_TOKEN"
RIGHT="file:$VEIL_TEST_PIN_FILE"
pass=0 fail=0
out="$T/out" err="$T/err"
unset VEIL_URL VEIL_API_KEY VEIL_PKCS11_MODULE VEIL_PIN_SOURCE VEIL_RELAY

. "${VEIL_SRCDIR:?}/tests/env/check.sh"
. "${VEIL_SRCDIR:?}/tests/env/veild.sh"
trap veild_stop EXIT

for x in "$K" "$VD"; do
    [ -x "$x" ] || hard "$x is not built"
done
command -v p11-kit >/dev/null || hard "p11-kit (the tool) not found"
mkdir -p "$T" || hard "cannot make $T"

# The p11-kit name of the test's SoftHSM2 module, registering it when
# p11-kit does not list it.
real_mod=$(readlink -f "$MOD")
module_name() {
    p11-kit list-modules 2>/dev/null | awk -v want="$real_mod" '
        /^[^ \t].*: / { name = $1; sub(/:$/, "", name); file = $2
                        cmd = "readlink -f \"" file "\""; cmd | getline full; close(cmd)
                        if (full == want) { print name; exit } }'
}
NAME=$(module_name)
if [ -z "$NAME" ]; then
    export HOME="$T/home"
    mkdir -p "$HOME/.config/pkcs11/modules" &&
        printf 'module: %s\n' "$MOD" >"$HOME/.config/pkcs11/modules/veil-softhsm.module" ||
        hard "cannot register SoftHSM2 with p11-kit"
    NAME=$(module_name)
fi
[ -n "$NAME" ] || hard "SoftHSM2 ($MOD) is not a p11-kit module here, and could not be registered"
echo "# SoftHSM2 is p11-kit's module '$NAME'"

check "a key for the lookups" 0 "RSA-2048" -- "$K" generate --token "pkcs11:token=$TOKEN" \
    --label lookup --bits 2048 --module "$MOD" --pin-source "$RIGHT"

# ---- no module anywhere: p11-kit's registered modules are asked
check "veil-keys finds the token among p11-kit's modules" 0 "label: +lookup" -- \
    "$K" list --token "pkcs11:token=$TOKEN" --pin-source "$RIGHT" -v
grep -q "the token is in p11-kit's module $NAME" "$err" && ok "veil-keys -v says which module" ||
    bad "veil-keys -v does not name the module" "$err"
check "a token no module has is not found (3), the tokens listed" 3 \
    "no token matching the URI in p11-kit's registered modules \(.*$NAME: .*\"$TOKEN\"" -- \
    "$K" list --token "pkcs11:token=no-such-token" --pin-source "$RIGHT"
veild_start lookup --server-key "pkcs11:token=$TOKEN;object=lookup" --pin-source "$RIGHT" \
    --model m=echo --v2 off
grep -q "the token is in p11-kit's module $NAME" "$VEILD_LOG" && ok "veild starts with the token found through p11-kit" ||
    bad "veild's log does not name the module" "$VEILD_LOG"
veild_stop && ok "veild stops cleanly" || bad "veild stop" "$VEILD_LOG"

# ---- RFC 7512: module-name and module-path are query attributes
check "?module-name= in the query is taken" 0 "label: +lookup" -- \
    "$K" list --token "pkcs11:token=$TOKEN?module-name=$NAME" --pin-source "$RIGHT"
check "?module-path= in the query is taken" 0 "label: +lookup" -- \
    "$K" list --token "pkcs11:token=$TOKEN?module-path=$MOD" --pin-source "$RIGHT"
check "?module-name= of a module that does not exist is used, not ignored (5)" 5 "no-such-module" -- \
    "$K" list --token "pkcs11:token=$TOKEN?module-name=no-such-module" --pin-source "$RIGHT"
check ";module-name= in the path is refused with the RFC's spelling (2)" 2 \
    "module-name is a query attribute of a PKCS#11 URI \(RFC 7512\).*after a '\?'" -- \
    "$K" list --token "pkcs11:token=$TOKEN;module-name=$NAME" --pin-source "$RIGHT"
check ";module-path= in the path is refused too (2)" 2 "module-path is a query attribute" -- \
    "$K" show --key "pkcs11:token=$TOKEN;object=lookup;module-path=$MOD" --pin-source "$RIGHT"
check "veild refuses ;module-name= in the path (2)" 2 "module-name is a query attribute" -- \
    "$VD" --port 0 --state-dir "$T/vd.state" --model m=echo --v2 off \
    --server-key "pkcs11:token=$TOKEN;object=lookup;module-name=$NAME" --pin-source "$RIGHT"

echo "test_p11kit: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
