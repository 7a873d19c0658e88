/* The token conformance suite on tpm2-pkcs11 over swtpm behind tpm2-abrmd
 * (started fresh by tests/env/with-tokens.sh because the name has "tpm"). */
#include "testutil.h"
#include "token_suite.h"

/* Under ASan: unwind allocation stacks fully, through libraries built
 * without frame pointers, so a leak inside tpm2-pkcs11 is attributed to it
 * and matched by tests/lsan.supp.  Ignored in builds without ASan. */
const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
    return "fast_unwind_on_malloc=0";
}

int main(void)
{
    ts_token t = {
        .name = "tpm2-pkcs11",
        .module = tu_env("VEIL_TEST_TPM_MODULE"),
        .label = tu_env("VEIL_TEST_TPM_TOKEN"),
        .pin_file = tu_env("VEIL_TEST_PIN_FILE"),
        .wrong_pin_file = NULL, /* would count against the TPM's lockout */
        .other_label = NULL,
        .max_bits = 3072,
        .native_oaep_sha256 = 1,
        .session_keys = 0,
        .has_gcm = 0,
        .has_ecdh = 0, /* tpm2-pkcs11 1.9.0 lists no CKM_ECDH1_DERIVE */
    };
    return ts_run(&t);
}
