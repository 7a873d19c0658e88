#!/bin/bash
# The main job as far as it exists today: a server key made in a token,
# a 32-byte AES key wrapped to it in software (as a client does) and
# unwrapped inside the token, an AES-256-GCM payload opened with it.
# Run by scripts/quickstart.sh demo under tests/env/with-tokens.sh, which
# provides a fresh SoftHSM2 token and removes it afterwards.
set -euo pipefail
B=$1
K="$B/veil-keys"
export VEIL_PKCS11_MODULE="$VEIL_TEST_SOFTHSM_MODULE"
export VEIL_PIN_SOURCE="file:$VEIL_TEST_PIN_FILE"
TOK="pkcs11:token=$VEIL_TEST_SOFTHSM_TOKEN"

echo "-- token:"
"$K" caps --token "$TOK"
echo
echo "-- generate the server key (RSA-4096, sensitive, never leaves the token):"
"$K" generate --token "$TOK" --label server --bits 4096
echo
echo "-- public key, as a client would fetch it from /pki/public_key:"
"$K" show --key "$TOK;object=server" --pem
echo "-- wrap a secret to it in software, unwrap it inside the token:"
"$K" test --key "$TOK;object=server" -v 2>&1 | grep -E "^ok|RSA-OAEP" | sed 's/^veil-keys: debug: //'
echo
echo "The encrypted chat round trip (veil chat -> veild -> an inference"
echo "server) is built on this engine by the client and gateway work."
