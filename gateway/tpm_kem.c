/* The gateway's TPM and protocol v2's KEM keys (docs/PROTOCOL-V2.md 4.4):
 * the TPM module lends its ESYS context and lock to the engine's tpm2
 * provider (engine/tpm2_hook.h), so that the KEM keys made with `tpm2:`
 * are objects of this very connection, and the long-term AK certifies
 * each with TPM2_Certify (tpm_certify, tpm_quote.c), once, when the key is
 * made.  Uses tpm.c's session helpers; nothing calls back into kemkeys.c.
 */
#include "config.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <tss2/tss2_esys.h>

#include "evidence.h"
#include "package.h"
#include "tpm2_hook.h"
#include "tpm_int.h"

void gw_tpm_lend(gw_tpm *t, veil_engine *e)
{
    if (t)
        veil_engine_tpm2_lend(e, t->ctx, &t->lock);
    else
        veil_engine_tpm2_lend(e, NULL, NULL);
}

/* The JSON of section 4.4 from a certification (t->lock held: ak_name). */
static char *certify_json(gw_tpm *t, uint8_t key_id, const TPM2B_ATTEST *info,
                          const TPMT_SIGNATURE *sig, const TPM2B_PUBLIC *pub)
{
    char *pub_b64 = tpm_b64_public(pub), *sig_b64 = tpm_b64_signature(sig),
         *info_b64 = veil_b64_encode(info->attestationData, info->size),
         *out = NULL;
    cJSON *o = cJSON_CreateObject();

    if (o && pub_b64 && sig_b64 && info_b64 &&
        cJSON_AddNumberToObject(o, "key_id", key_id) &&
        cJSON_AddStringToObject(o, "certify_info_b64", info_b64) &&
        cJSON_AddStringToObject(o, "signature_b64", sig_b64) &&
        cJSON_AddStringToObject(o, "public_b64", pub_b64) &&
        cJSON_AddStringToObject(o, "ak_name_hex", t->ak_name_hex))
        out = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    free(pub_b64);
    free(sig_b64);
    free(info_b64);
    return out;
}

gw_rc gw_tpm_certify_kem(gw_tpm *t, const veil_key *kem, uint8_t key_id,
                         const uint8_t *pk, size_t pk_len, char **json,
                         char *err, size_t err_size)
{
    TPM2B_ATTEST *info = NULL;
    TPMT_SIGNATURE *sig = NULL;
    TPM2B_PUBLIC *pub = NULL;
    uint8_t qualifying[32];
    gw_rc grc = GW_INTERNAL;
    uint32_t obj;
    TSS2_RC rc;

    *json = NULL;
    veil_ev_kem_certify_qualifying(key_id, pk, pk_len, qualifying);
    pthread_mutex_lock(&t->lock);
    if (veil_tpm2_key_object(kem, t->ctx, &obj) != VEIL_OK) {
        gw_put_err(err, err_size,
                   "TPM: the KEM key is not an object of veild's TPM "
                   "connection");
        goto out;
    }
    rc = Esys_ReadPublic(t->ctx, obj, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                         &pub, NULL, NULL);
    if (rc != TSS2_RC_SUCCESS) {
        tpm_put_rc(err, err_size, "ReadPublic (KEM key)", rc);
        goto out;
    }
    /* the public area published must be the KEM key's (pk: 0x04 || x || y) */
    if (pub->publicArea.type != TPM2_ALG_ECC || pk_len != 65 ||
        pub->publicArea.unique.ecc.x.size != 32 ||
        pub->publicArea.unique.ecc.y.size != 32 ||
        memcmp(pub->publicArea.unique.ecc.x.buffer, pk + 1, 32) != 0 ||
        memcmp(pub->publicArea.unique.ecc.y.buffer, pk + 33, 32) != 0) {
        gw_put_err(err, err_size,
                   "TPM: ReadPublic (KEM key): not the public key of the KEM "
                   "key");
        goto out;
    }
    if (tpm_certify(t, obj, t->ak, t->ak_key, qualifying, &info, &sig, err,
                    err_size) != 0)
        goto out;
    *json = certify_json(t, key_id, info, sig, pub);
    grc = *json ? GW_OK : GW_NOMEM;
    if (!*json)
        gw_put_err(err, err_size, "out of memory");
out:
    pthread_mutex_unlock(&t->lock);
    Esys_Free(info);
    Esys_Free(sig);
    Esys_Free(pub);
    return grc;
}
