/* client/pcrpolicy.h: the verifier's PCR policy at enrolment
 * (pcrpolicy.c), used by enroll.c.  Not installed. */
#ifndef VEIL_CLIENT_PCRPOLICY_H
#define VEIL_CLIENT_PCRPOLICY_H

#include <stddef.h>
#include <stdint.h>

#include "evidence.h"

#pragma GCC visibility push(hidden)

typedef struct veil_cl_pcr_policy {
    int has_required;
    veil_pcr_sel required;   /* PCRs the gateway's selection must hold */
    veil_pcr_sel golden_sel; /* PCRs with reference values, as read */
    uint8_t golden[VEIL_EV_MAX_PCRS][32];
    int accept_current; /* trust on first use, chosen explicitly */
} veil_cl_pcr_policy;

/* The policy of required ("sha256:0,7" or NULL), golden_file (JSON
 * {"sha256": {"0": "<64 hex>", ...}}, or NULL) and accept_current; one of
 * the last two and not both.  1, or 0 with why. */
int veil_cl_pcr_policy_load(const char *required, const char *golden_file,
                            int accept_current, veil_cl_pcr_policy *p,
                            char *why, size_t n);
/* 1 when the quoted selection and values meet the policy; 0 with why
 * naming the PCR. */
int veil_cl_pcr_policy_check(const veil_cl_pcr_policy *p,
                             const veil_pcr_sel *sel,
                             const uint8_t (*values)[32], char *why, size_t n);
/* "golden" or "accepted-current", for the trust file. */
const char *veil_cl_pcr_policy_name(const veil_cl_pcr_policy *p);

#pragma GCC visibility pop

#endif /* VEIL_CLIENT_PCRPOLICY_H */
