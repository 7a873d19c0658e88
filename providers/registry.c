/* The provider registry: adding a provider is one file and one line here.
 * The engine asks each in order whether it claims a key reference. */
#include "config.h"

#include "provider.h"

const veil_provider_ops *const veil_provider_registry[] = {
    &veil_provider_software,
    &veil_provider_pkcs11,
    &veil_provider_tpm2,
    NULL,
};
