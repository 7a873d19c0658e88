# shellcheck shell=bash disable=SC2034
# Sourced first by the shell tests that run veild with the TPM (swtpm
# behind tpm2-abrmd, the tpm2-pkcs11 token; tests/env/with-tokens.sh
# starts them for a test with "tpm" in its name): their common set-up.
#
#   . "${VEIL_SRCDIR:?}/tests/env/tpm_suite.sh" NAME [COMMAND...]
#       all that tests/env/suite.sh does (and offers: check, veild_start,
#       stop_at_exit, field ...), and sets TM and TTOK (the tpm2-pkcs11
#       token's module and URI), SM and STOK (the SoftHSM2 token's: suite.sh's
#       MOD and TOK), EKCA (the CA bundle that issued the TPM's EK
#       certificate), OTHERCA (an unrelated one) and TCTI (how tpm2-tools
#       reach the TPM); exits 99 (a set-up failure) when the TPM is not
#       set up.
. "${VEIL_SRCDIR:?}/tests/env/suite.sh" "$@"

for x in VEIL_TEST_TPM_MODULE VEIL_TEST_TPM_TOKEN VEIL_TEST_EK_CA VEIL_TEST_OTHER_EK_CA TPM2TOOLS_TCTI; do
    [ -n "${!x:-}" ] || hard "$x is not set: the TPM is not set up (run through tests/env/with-tokens.sh)"
done
TM=$VEIL_TEST_TPM_MODULE
TTOK="pkcs11:token=$VEIL_TEST_TPM_TOKEN"
SM=$MOD STOK=$TOK
EKCA=$VEIL_TEST_EK_CA OTHERCA=$VEIL_TEST_OTHER_EK_CA
TCTI=$TPM2TOOLS_TCTI
