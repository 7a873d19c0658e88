/* Where a model's plaintext goes, for the maximum tier
 * (docs/ATTESTATION.md, "The backend statement"): a model's backend is
 * stated in the quote only when it is on the attested host (echo, a Unix
 * socket, loopback), or an https:// server elsewhere with
 * tpm_remote_https = on.  The statement itself is protocol/backend.c.
 * Also the 403 detail of a tier a model does not allow. */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include "backend.h"
#include "gateway.h"
#include "tier.h"

gw_rc gw_backend_statement(const gw_config *cfg, const gw_model *m, char *out,
                           size_t size, char *why, size_t why_size)
{
    veil_backend_kind k = veil_backend_classify(m->upstream);
    const char *reason = NULL;

    if (k == VEIL_BACKEND_HTTP_REMOTE)
        reason = "its upstream is plain http on another host, not on the "
                 "attested host (maximum takes echo, a unix: socket or a "
                 "loopback upstream)";
    else if (k == VEIL_BACKEND_HTTPS_REMOTE && !cfg->tpm_remote_https)
        reason = "its upstream is on another host, not on the attested "
                 "host (maximum takes echo, a unix: socket or a loopback "
                 "upstream; tpm_remote_https = on allows an https:// one)";
    else if (k == VEIL_BACKEND_BAD)
        reason = "its upstream cannot be stated in the quote (credentials in "
                 "its URL: give the key with key-file instead)";
    else if (veil_backend_statement(m->id, m->upstream, out, size) == 0)
        reason = "its upstream is too long to be stated in the quote";
    if (reason == NULL)
        return GW_OK;
    if (size > 0)
        out[0] = '\0';
    snprintf(why, why_size,
             "model '%.200s' is not allowed on the maximum "
             "tier: %s",
             m->id, reason);
    return GW_FORBIDDEN;
}

unsigned gw_model_tiers(const gw_config *cfg, const gw_model *m)
{
    char stmt[VEIL_BACKEND_STATEMENT_MAX], why[8];

    if ((m->tiers & VEIL_TIER_MAXIMUM) &&
        gw_backend_statement(cfg, m, stmt, sizeof stmt, why, sizeof why) !=
            GW_OK)
        return m->tiers & ~(unsigned)VEIL_TIER_MAXIMUM;
    return m->tiers;
}

void gw_model_tier_refusal(const gw_model *m, const char *tier, char *why,
                           size_t why_size)
{
    char tiers[64] = "";
    size_t n = 0;

    for (unsigned bit = 1; bit <= VEIL_TIER_MAXIMUM; bit <<= 1)
        if (m->tiers & bit)
            n += (size_t)snprintf(tiers + n, sizeof tiers - n, "%s%s",
                                  n ? ", " : "", veil_tier_name(bit));
    snprintf(why, why_size,
             "model '%.200s' is not allowed on the %s tier (its tiers: %s)",
             m->id, tier, tiers);
}
