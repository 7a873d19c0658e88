/* What answer signatures and TPM quotes cover (docs/ATTESTATION.md), and
 * PCR selections.  The TPM structure checks are in tpm.c. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "evidence.h"
#include "engine_int.h"
#include "package.h"

#define EV "evidence"

/* SHA-256 over a label (with its NUL) and up to five more parts. */
static void hash_parts(const char *label, const void *a, size_t a_len,
                       const void *b, size_t b_len, const void *c, size_t c_len,
                       const void *d, size_t d_len, const void *e, size_t e_len,
                       uint8_t out[32])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned n = 32;
    /* Allocation failure of a digest context cannot be reported through
     * this void interface; a zero hash then matches nothing a TPM made. */
    memset(out, 0, 32);
    if (ctx == NULL)
        return;
    if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1 ||
        EVP_DigestUpdate(ctx, label, strlen(label) + 1) != 1 ||
        EVP_DigestUpdate(ctx, a, a_len) != 1 ||
        EVP_DigestUpdate(ctx, b, b_len) != 1 ||
        EVP_DigestUpdate(ctx, c, c_len) != 1 ||
        EVP_DigestUpdate(ctx, d, d_len) != 1 ||
        EVP_DigestUpdate(ctx, e, e_len) != 1 ||
        EVP_DigestFinal_ex(ctx, out, &n) != 1)
        memset(out, 0, 32);
    EVP_MD_CTX_free(ctx);
}

void veil_ev_answer_qualifying(const char *payload_id,
                               const uint8_t request_sha256[32],
                               const uint8_t encryption_key_sha256[32],
                               const uint8_t signing_key_sha256[32],
                               const uint8_t backend_sha256[32],
                               uint8_t out[32])
{
    hash_parts(VEIL_EV_ANSWER_QUOTE_LABEL, payload_id, strlen(payload_id),
               request_sha256, 32, encryption_key_sha256, 32,
               signing_key_sha256, 32, backend_sha256, 32, out);
}

void veil_ev_report_qualifying(const uint8_t *nonce, size_t nonce_len,
                               const uint8_t encryption_key_sha256[32],
                               const uint8_t signing_key_sha256[32],
                               uint8_t out[32])
{
    hash_parts(VEIL_EV_REPORT_QUOTE_LABEL, nonce, nonce_len,
               encryption_key_sha256, 32, signing_key_sha256, 32, "", 0, "", 0,
               out);
}

void veil_ev_handover_qualifying(const uint8_t *new_name, size_t len,
                                 uint8_t out[32])
{
    hash_parts(VEIL_EV_AK_HANDOVER_LABEL, new_name, len, "", 0, "", 0, "", 0,
               "", 0, out);
}

void veil_ev_kem_certify_qualifying(uint8_t key_id, const uint8_t *pk,
                                    size_t pk_len, uint8_t out[32])
{
    hash_parts(VEIL_EV_KEM_CERTIFY_LABEL, &key_id, 1, pk, pk_len, "", 0, "", 0,
               "", 0, out);
}

size_t veil_ev_statement(const char *payload_id, const char *tier,
                         const uint8_t request_sha256[32],
                         const uint8_t response_sha256[32],
                         const uint8_t signing_key_sha256[32],
                         long long signed_at, char *out, size_t out_size)
{
    char req[65], resp[65], key[65];

    if (out == NULL || out_size == 0)
        return 0;
    out[0] = '\0';
    if (!veil_payload_id_valid(payload_id) || tier == NULL || *tier == '\0' ||
        strlen(tier) > 16 || signed_at < 0)
        return 0;
    for (const char *p = tier; *p; p++)
        if (*p < 'a' || *p > 'z')
            return 0;
    veil_hex(request_sha256, 32, req);
    veil_hex(response_sha256, 32, resp);
    veil_hex(signing_key_sha256, 32, key);
    static const char fmt[] = VEIL_EV_STATEMENT_HEAD "\n"
                                                     "payload_id=%s\n"
                                                     "security_tier=%s\n"
                                                     "request_sha256=%s\n"
                                                     "response_sha256=%s\n"
                                                     "signing_key_sha256=%s\n"
                                                     "signed_at=%lld\n";
    int n = snprintf(out, out_size, fmt, payload_id, tier, req, resp, key,
                     signed_at);
    if (n < 0 || (size_t)n >= out_size) {
        out[0] = '\0';
        return 0;
    }
    return (size_t)n;
}

veil_rc veil_pcr_sel_parse(const char *text, veil_pcr_sel *out)
{
    static const char bank[] = "sha256:";
    uint32_t seen = 0;

    memset(out, 0, sizeof *out);
    if (text == NULL || strncmp(text, bank, sizeof bank - 1) != 0)
        return veil_err(VEIL_E_ARG, EV, NULL,
                        "PCR selection '%.64s': must start with \"sha256:\" "
                        "(only the SHA-256 bank is supported)",
                        text ? text : "");
    const char *p = text + sizeof bank - 1;
    for (;;) {
        if (*p < '0' || *p > '9')
            return veil_err(VEIL_E_ARG, EV, NULL,
                            "PCR selection '%.64s': expected a PCR number "
                            "at '%.8s'",
                            text, p);
        unsigned v = 0;
        while (*p >= '0' && *p <= '9' && v < 100)
            v = v * 10 + (unsigned)(*p++ - '0');
        if (v >= VEIL_EV_MAX_PCRS)
            return veil_err(VEIL_E_ARG, EV, NULL,
                            "PCR selection '%.64s': PCR %u is out of range "
                            "(0 to %d)",
                            text, v, VEIL_EV_MAX_PCRS - 1);
        if (seen & (1u << v))
            return veil_err(VEIL_E_ARG, EV, NULL,
                            "PCR selection '%.64s': PCR %u is named twice",
                            text, v);
        seen |= 1u << v;
        if (*p == '\0')
            break;
        if (*p++ != ',')
            return veil_err(VEIL_E_ARG, EV, NULL,
                            "PCR selection '%.64s': expected ',' between "
                            "PCR numbers",
                            text);
    }
    for (unsigned i = 0; i < VEIL_EV_MAX_PCRS; i++)
        if (seen & (1u << i))
            out->index[out->n++] = i;
    return VEIL_OK;
}

void veil_pcr_sel_format(const veil_pcr_sel *sel, char *out, size_t size)
{
    size_t used;

    if (size == 0)
        return;
    used = (size_t)snprintf(out, size, "sha256:");
    for (unsigned i = 0; i < sel->n && used < size; i++)
        used += (size_t)snprintf(out + used, size - used, "%s%u", i ? "," : "",
                                 sel->index[i]);
}
