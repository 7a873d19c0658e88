/* gateway/maximum.c: what the high and maximum tiers add to an exchange,
 * the same for protocol v1 (v1.c) and v2 (v2.c): the memory the high tier
 * needs; the maximum tier's TPM quote, made in the TPM's own line
 * (tpmline.c) before the backend runs, whose qualifying data binds the
 * request, the keys and the backend statement (docs/ATTESTATION.md); and
 * veild's "_metadata" member, the quote inside as tpm_attestation,
 * spliced into the backend's answer text byte for byte. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/sha.h>

#include "evidence.h"
#include "routes.h"

gw_rc gw_tier_memory(gw_server *s, unsigned tier, const veil_secbuf *plain,
                     char *why, size_t why_size)
{
    /* maximum is high plus the TPM (PROTOCOL-NOMYO.md, tiers). */
    if (tier >= VEIL_TIER_HIGH &&
        !(s->mem.locking && s->mem.core_dumps_off && s->mem.dontdump &&
          veil_secbuf_locked(plain))) {
        snprintf(why, why_size,
                 "the %s tier needs locked, unswappable, undumpable "
                 "memory, which is not in force on this gateway",
                 veil_tier_name(tier));
        return GW_UNAVAILABLE;
    }
    return GW_OK;
}

gw_rc gw_max_quote(gw_server *s, svc_req *r, const gw_max_binding *b,
                   cJSON **attestation, unsigned *retry_s, char *why,
                   size_t why_size)
{
    uint8_t qualifying[32], backend_sha256[32];
    char err[320];
    gw_tpm_turn turn;
    gw_rc rc;

    *attestation = NULL;
    rc = gw_tpm_turn_take(s, r, &turn, retry_s, why, why_size);
    if (rc != GW_OK)
        return rc;
    SHA256((const uint8_t *)b->backend, strlen(b->backend), backend_sha256);
    veil_ev_answer_qualifying(b->id, b->request_sha256, b->key_sha256,
                              s->d.signing_key_sha256, backend_sha256,
                              qualifying);
    double t0 = svc_now();
    cJSON *q =
        gw_tpm_quote(s->d.tpm, qualifying, b->certify_key, err, sizeof err);
    gw_metrics_quote(s->d.metrics, "answer", q != NULL, svc_now() - t0);
    rc = gw_tpm_turn_give(s, r, &turn, why, why_size);
    if (rc != GW_OK) {
        cJSON_Delete(q);
        return rc;
    }
    if (q != NULL &&
        !cJSON_AddStringToObject(q, "backend_statement", b->backend)) {
        cJSON_Delete(q);
        q = NULL;
        snprintf(err, sizeof err, "out of memory");
    }
    if (q == NULL) {
        veil_logf(&s->log, VEIL_LOG_ERROR, "quote for %s failed: %s", b->id,
                  err);
        snprintf(why, why_size, "no TPM attestation for this answer: %s", err);
        return GW_UNAVAILABLE;
    }
    *attestation = q;
    return GW_OK;
}

char *gw_metadata_member(gw_server *s, const char *payload_id, const char *tier,
                         cJSON **attestation, int comma)
{
    cJSON *md = cJSON_CreateObject(), *mp = cJSON_CreateObject();
    char *text = NULL, *out = NULL;
    size_t size;

    if (md && mp && cJSON_AddStringToObject(mp, "platform", "linux") &&
        cJSON_AddBoolToObject(mp, "memory_locking", s->mem.locking) &&
        cJSON_AddBoolToObject(mp, "secure_zeroing", s->mem.zeroing) &&
        cJSON_AddBoolToObject(mp, "core_dump_prevention",
                              s->mem.core_dumps_off) &&
        cJSON_AddItemToObject(md, "memory_protection", mp)) {
        mp = NULL;
        if (cJSON_AddStringToObject(md, "payload_id", payload_id) &&
            cJSON_AddStringToObject(md, "security_tier", tier) &&
            cJSON_AddStringToObject(md, "response_status", "success") &&
            (*attestation == NULL ||
             cJSON_AddItemToObject(md, "tpm_attestation", *attestation))) {
            *attestation = NULL;
            text = cJSON_PrintUnformatted(md);
        }
    }
    cJSON_Delete(mp);
    cJSON_Delete(md);
    if (text == NULL)
        return NULL;
    size = strlen(text) + sizeof ",\"_metadata\":";
    if ((out = malloc(size)) != NULL)
        snprintf(out, size, "%s\"_metadata\":%s", comma ? "," : "", text);
    free(text);
    return out;
}

size_t gw_answer_edits(const gw_upstream_result *up, const char *metadata,
                       veil_json_edit edits[2])
{
    size_t n = 0;

    if (up->has_metadata)
        n = veil_json_remove_members(up->body, up->len, &up->metadata, 1,
                                     edits);
    if (metadata != NULL)
        edits[n++] = (veil_json_edit){up->close, 0, metadata, strlen(metadata)};
    return n;
}
