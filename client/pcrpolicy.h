/* client/pcrpolicy.h: the verifier's PCR policy at enrolment
 * (pcrpolicy.c), used by enroll.c.  Not installed. */
#ifndef VEIL_CLIENT_PCRPOLICY_H
#define VEIL_CLIENT_PCRPOLICY_H

#include <stddef.h>
#include <stdint.h>

#include "evidence.h"

#pragma GCC visibility push(hidden)

/* A reference value for one event of the TCG event log. */
typedef struct veil_cl_golden_event {
    unsigned pcr;
    int has_type, has_sha256;
    uint32_t type;
    uint8_t sha256[32];
} veil_cl_golden_event;

typedef struct veil_cl_pcr_policy {
    int has_required;
    veil_pcr_sel required;   /* PCRs the gateway's selection must hold */
    veil_pcr_sel golden_sel; /* PCRs with reference values, as read */
    uint8_t golden[VEIL_EV_MAX_PCRS][32];
    int accept_current; /* trust on first use, chosen explicitly */
    /* the golden file's "events" (malloc'd; veil_cl_pcr_policy_free) */
    veil_cl_golden_event *events;
    unsigned n_events;
} veil_cl_pcr_policy;

void veil_cl_pcr_policy_free(veil_cl_pcr_policy *p);

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
/* The gateway's TCG event log (log, len; NULL when the report has none)
 * against the quoted selection and values and the policy's reference
 * events: the log must replay (SHA-256 bank) to every quoted PCR it has
 * events for, and for each PCR with reference events the log's events of
 * that PCR (EV_NO_ACTION aside) must be exactly those, in order.  1 with
 * what was checked in done (or "" when there is no log and no reference
 * event), or 0 with why naming the PCR or the event. */
int veil_cl_event_log_check(const veil_cl_pcr_policy *p, const uint8_t *log,
                            size_t len, const veil_pcr_sel *sel,
                            const uint8_t (*values)[32], char *done,
                            size_t done_size, char *why, size_t n);

/* "golden" or "accepted-current", for the trust file. */
const char *veil_cl_pcr_policy_name(const veil_cl_pcr_policy *p);

#pragma GCC visibility pop

#endif /* VEIL_CLIENT_PCRPOLICY_H */
