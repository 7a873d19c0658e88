/* The token conformance suite on SoftHSM2 (started fresh by
 * tests/env/with-tokens.sh). */
#include "testutil.h"
#include "token_suite.h"

int main(void)
{
    ts_token t = {
        .name = "softhsm2",
        .module = tu_env("VEIL_TEST_SOFTHSM_MODULE"),
        .label = tu_env("VEIL_TEST_SOFTHSM_TOKEN"),
        .pin_file = tu_env("VEIL_TEST_PIN_FILE"),
        .wrong_pin_file = tu_env("VEIL_TEST_WRONG_PIN_FILE"),
        .other_label = tu_env("VEIL_TEST_SOFTHSM_TOKEN2"),
        .max_bits = 4096,
        .native_oaep_sha256 = 0, /* SoftHSM2 2.6: OAEP with SHA-1 only */
        .session_keys = 1,
        .has_gcm = 1,
        .has_ecdh = 1,
    };
    return ts_run(&t);
}
