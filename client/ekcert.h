/* client/ekcert.h: the EK certificate profile checks (ekcert.c), used by
 * enrolment (enroll.c).  Not installed. */
#ifndef VEIL_CLIENT_EKCERT_H
#define VEIL_CLIENT_EKCERT_H

#include <stddef.h>

#include <openssl/x509.h>

#pragma GCC visibility push(hidden)

/* The TPM attributes an EK certificate states (subject alternative name,
 * TCG EK Credential Profile 3.2.9), as text ("id:00001014", "swtpm"). */
typedef struct veil_cl_ek_attrs {
    char manufacturer[64], model[64], version[64];
    /* 1 when the manufacturer is a TCG vendor ID and was compared with
     * the manufacturer the gateway reports (TPM_PT_MANUFACTURER); 0 when
     * it is of another form (swtpm writes IBM's PCI vendor ID) */
    int vendor_compared;
} veil_cl_ek_attrs;

/* 1 when x is an EK certificate by the profile: extended key usage
 * tcg-kp-EKCertificate, keyEncipherment (RSA) or keyAgreement (ECC), not a
 * CA, the TPM's manufacturer, model and version in its subject alternative
 * name, and a manufacturer in the TCG vendor ID form equal to
 * reported_manufacturer.  Fills *a; on 0, why says what is wrong. */
int veil_cl_ek_profile(X509 *x, const char *reported_manufacturer,
                       veil_cl_ek_attrs *a, char *why, size_t why_size);

#pragma GCC visibility pop

#endif /* VEIL_CLIENT_EKCERT_H */
