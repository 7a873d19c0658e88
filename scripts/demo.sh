#!/bin/bash
# The main job: an encrypted chat with both private keys in PKCS#11 tokens.
#   - the server key (RSA-4096) is made in one SoftHSM2 token, the client's
#     answer key (RSA-3072) in another; neither ever leaves its token;
#   - the gateway, veild, serves over HTTPS with its key in the first token;
#   - `veil chat` seals the prompt to the server key, veild unwraps it
#     inside its token, hands the plaintext to its model, and seals the
#     answer to the client key, which `veil` unwraps inside the client's
#     token.
# The model is veild's built-in echo model (it answers with the prompt), so
# the demo needs no inference server; a real one is one --model flag away
# (--model ID=http://HOST:PORT/v1, see docs/GATEWAY.md).
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
. "$(dirname "$0")/../tests/env/veild.sh"
trap veild_stop EXIT

echo "-- server key: RSA-4096 in token '$VEIL_TEST_SOFTHSM_TOKEN' (sensitive, not extractable)"
"$K" generate --token "$SERVER_TOK" --label server --bits 4096 | grep -E "label|sensitive|extractable|fingerprint"
echo
echo "-- client key: RSA-3072 in token '$VEIL_TEST_SOFTHSM_TOKEN2'"
"$K" generate --token "$CLIENT_TOK" --label client --bits 3072 | grep -E "label|fingerprint"
echo
echo "-- start veild over HTTPS, its key in the token, serving the echo model as demo/echo"
echo "   \$ veild --server-key '$SERVER_TOK;object=server' --pin-source file:... --model demo/echo=echo ..."
veild_start demo --tls --server-key "$SERVER_TOK;object=server" \
    --pkcs11-module "$VEIL_TEST_SOFTHSM_MODULE" --pin-source "file:$VEIL_TEST_PIN_FILE" \
    --model demo/echo=echo --log-level debug
grep -E "info: (server key:|listening on)" "$VEILD_LOG" | sed 's/^/   /'
FP=$("$V" server-key --url "$VEILD_URL" --ca-file "$VEILD_CA" --fingerprint)
echo "   server key as fetched by the client: $FP"
echo
echo "-- veil chat, server key pinned, answer key in the token; the prompt comes from stdin:"
echo "   \$ echo 'Summarise the attached patient record.' | veil chat --url $VEILD_URL -m demo/echo --token-key '$CLIENT_TOK;object=client' --server-key-pin $FP -"
echo 'Summarise the attached patient record.' |
    "$V" chat --url "$VEILD_URL" --ca-file "$VEILD_CA" -m demo/echo \
        --token-key "$CLIENT_TOK;object=client" --server-key-pin "$FP" -v - 2>"$VEIL_TEST_DIR/demo.err" |
    sed 's/^/   answer: /'
echo
echo "-- where the keys were used (from veil -v and veild's log; no plaintext is ever logged):"
grep -E "CKM_RSA_X_509|server key of" "$VEIL_TEST_DIR/demo.err" | head -4 | sed 's/^/   /' || true
grep -E "CKM_RSA_X_509|POST /v1/chat/secure_completion" "$VEILD_LOG" | sed 's/^/   /' || true
echo
echo "The prompt was opened inside veild's token and the answer inside the client's token."
