/* client/pcrpolicy.c: the verifier's PCR policy at enrolment (pcrpolicy.h):
 * the PCRs it requires, the reference values it brings (a golden file),
 * or an explicit trust in the values quoted now.
 *
 * Layering: uses tpmobj.h (JSON members) and protocol/evidence.h only. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pcrpolicy.h"
#include "tpmobj.h"

#define GOLDEN_MAX (1u << 20)

/* 1 when sel holds PCR i (its position in *at). */
static int sel_has(const veil_pcr_sel *sel, unsigned i, unsigned *at)
{
    for (unsigned k = 0; k < sel->n; k++)
        if (sel->index[k] == i) {
            if (at)
                *at = k;
            return 1;
        }
    return 0;
}

/* Reads {"sha256": {"0": "<64 hex>", ...}} (the trust file's pcr_values
 * shape) into p's golden selection and values. */
static int golden_load(const char *path, veil_cl_pcr_policy *p, char *why,
                       size_t n)
{
    FILE *f = fopen(path, "re");
    char *text = NULL;
    size_t len = 0;
    cJSON *j = NULL;
    int ok = 0;

    if (!f) {
        snprintf(why, n, "the golden file %s cannot be read", path);
        return 0;
    }
    if ((text = malloc(GOLDEN_MAX + 1)) != NULL)
        len = fread(text, 1, GOLDEN_MAX + 1, f);
    fclose(f);
    if (!text || len == 0 || len > GOLDEN_MAX) {
        snprintf(why, n, "the golden file %s is empty or too large", path);
        goto out;
    }
    j = cJSON_ParseWithLength(text, len);
    const cJSON *bank = cJSON_GetObjectItemCaseSensitive(j, "sha256");
    if (!cJSON_IsObject(bank) || cJSON_GetArraySize(j) != 1) {
        snprintf(why, n,
                 "the golden file %s is not {\"sha256\": {\"PCR\": \"<64 "
                 "hex>\", ...}} (the trust file's pcr_values)",
                 path);
        goto out;
    }
    const cJSON *v;
    cJSON_ArrayForEach(v, bank)
    {
        char *end;
        unsigned long i = strtoul(v->string, &end, 10);
        if (*v->string == '\0' || *end || i >= VEIL_EV_MAX_PCRS ||
            sel_has(&p->golden_sel, (unsigned)i, NULL) ||
            !veil_cl_json_hex(bank, v->string, p->golden[p->golden_sel.n],
                              32)) {
            snprintf(why, n,
                     "the golden file %s: PCR \"%s\" is not an index 0 to 23 "
                     "given once with 64 hex digits",
                     path, v->string);
            goto out;
        }
        p->golden_sel.index[p->golden_sel.n++] = (unsigned)i;
    }
    if (p->golden_sel.n == 0) {
        snprintf(why, n, "the golden file %s names no PCR", path);
        goto out;
    }
    ok = 1;
out:
    cJSON_Delete(j);
    free(text);
    return ok;
}

int veil_cl_pcr_policy_load(const char *required, const char *golden_file,
                            int accept_current, veil_cl_pcr_policy *p,
                            char *why, size_t n)
{
    memset(p, 0, sizeof *p);
    if (golden_file == NULL && !accept_current) {
        snprintf(why, n,
                 "no PCR policy: give reference values (--golden FILE) or "
                 "trust the values the gateway quotes now "
                 "(--accept-current)");
        return 0;
    }
    if (golden_file != NULL && accept_current) {
        snprintf(why, n,
                 "--golden and --accept-current exclude each other: the "
                 "reference values decide, or the values quoted now");
        return 0;
    }
    if (required != NULL) {
        if (veil_pcr_sel_parse(required, &p->required) != VEIL_OK) {
            snprintf(why, n, "the required PCRs %s: %s", required,
                     veil_cl_why_last());
            return 0;
        }
        p->has_required = 1;
    }
    if (golden_file != NULL && !golden_load(golden_file, p, why, n))
        return 0;
    p->accept_current = accept_current;
    return 1;
}

int veil_cl_pcr_policy_check(const veil_cl_pcr_policy *p,
                             const veil_pcr_sel *sel,
                             const uint8_t (*values)[32], char *why, size_t n)
{
    unsigned at;

    for (unsigned k = 0; p->has_required && k < p->required.n; k++)
        if (!sel_has(sel, p->required.index[k], NULL)) {
            snprintf(why, n,
                     "PCR %u is required but the gateway does not quote it",
                     p->required.index[k]);
            return 0;
        }
    for (unsigned k = 0; k < p->golden_sel.n; k++) {
        unsigned i = p->golden_sel.index[k];
        char want[65], got[65];
        if (!sel_has(sel, i, &at)) {
            snprintf(why, n,
                     "PCR %u has a reference value but the gateway does not "
                     "quote it",
                     i);
            return 0;
        }
        if (memcmp(values[at], p->golden[k], 32) != 0) {
            veil_hex(p->golden[k], 32, want);
            veil_hex(values[at], 32, got);
            snprintf(why, n, "PCR %u is %s, the reference value is %s", i, got,
                     want);
            return 0;
        }
    }
    return 1;
}

const char *veil_cl_pcr_policy_name(const veil_cl_pcr_policy *p)
{
    return p->accept_current ? "accepted-current" : "golden";
}
