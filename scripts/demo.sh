#!/bin/bash
# The main job: an encrypted chat with both private keys in PKCS#11 tokens.
#   - the server key (RSA-4096) is made in one SoftHSM2 token, the client's
#     answer key (RSA-3072) in another; neither ever leaves its token;
#   - `veil chat` seals the prompt to the server key, the server unwraps it
#     inside its token, answers, and seals the answer to the client key,
#     which `veil` unwraps inside the client's token.
# Until the gateway (veild) lands, the server is tests/veil-fixture, the
# protocol test server: a stand-in that answers by echoing the prompt.
# Run by scripts/quickstart.sh demo under tests/env/with-tokens.sh, which
# provides the fresh tokens and removes them (and the server) afterwards.
set -euo pipefail
B=$1
export VEIL_BUILDDIR=$B
K="$B/veil-keys" V="$B/veil"
export VEIL_PKCS11_MODULE="$VEIL_TEST_SOFTHSM_MODULE"
export VEIL_PIN_SOURCE="file:$VEIL_TEST_PIN_FILE"
SERVER_TOK="pkcs11:token=$VEIL_TEST_SOFTHSM_TOKEN"
CLIENT_TOK="pkcs11:token=$VEIL_TEST_SOFTHSM_TOKEN2"
. "$(dirname "$0")/../tests/env/fixture.sh"
trap fixture_stop EXIT

echo "-- server key: RSA-4096 in token '$VEIL_TEST_SOFTHSM_TOKEN' (sensitive, not extractable)"
"$K" generate --token "$SERVER_TOK" --label server --bits 4096 | grep -E "label|sensitive|extractable|fingerprint"
echo
echo "-- client key: RSA-3072 in token '$VEIL_TEST_SOFTHSM_TOKEN2'"
"$K" generate --token "$CLIENT_TOK" --label client --bits 3072 | grep -E "label|fingerprint"
echo
echo "-- start the test server (stand-in for veild) over HTTPS with its key in the token"
fixture_start demo --server-key "$SERVER_TOK;object=server" \
    --pkcs11-module "$VEIL_TEST_SOFTHSM_MODULE" --pin-source "file:$VEIL_TEST_PIN_FILE"
echo "   $FIXTURE_URL"
FP=$("$V" server-key --url "$FIXTURE_URL" --ca-file "$FIXTURE_CA" --fingerprint)
echo "   server key as fetched by the client: $FP"
echo
echo "-- veil chat, server key pinned, answer key in the token; the prompt comes from stdin:"
echo "   \$ echo 'Summarise the attached patient record.' | veil chat -m demo/echo --token-key '$CLIENT_TOK;object=client' --pin $FP -"
echo 'Summarise the attached patient record.' |
    "$V" chat --url "$FIXTURE_URL" --ca-file "$FIXTURE_CA" -m demo/echo \
        --token-key "$CLIENT_TOK;object=client" --pin "$FP" -v - 2>"$VEIL_TEST_DIR/demo.err" |
    sed 's/^/   answer: /'
echo
echo "-- where the keys were used (from veil -v; no plaintext is ever logged):"
grep -E "CKM_RSA_X_509|server key of" "$VEIL_TEST_DIR/demo.err" | head -4 | sed 's/^/   /' || true
echo
echo "The answer was sealed to the client's token key and opened inside that token."
