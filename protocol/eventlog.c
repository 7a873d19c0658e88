/* The TCG event log, crypto-agile binary form (eventlog.h): parsed with
 * every length checked against what remains, and replayed. */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "engine_int.h"
#include "eventlog.h"

#define EV "event log"
#define ALG_SHA256 0x000Bu
#define SPEC_ID "Spec ID Event03"
#define STARTUP_LOCALITY "StartupLocality"

/* A cursor over the log: every read checks that the bytes are there. */
typedef struct cur {
    const uint8_t *p;
    size_t len, off;
} cur;

static int take(cur *c, size_t n, const uint8_t **at)
{
    if (n > c->len - c->off)
        return 0;
    *at = c->p + c->off;
    c->off += n;
    return 1;
}

static int u8(cur *c, uint32_t *v)
{
    const uint8_t *b;
    if (!take(c, 1, &b))
        return 0;
    *v = b[0];
    return 1;
}

static int u16(cur *c, uint32_t *v)
{
    const uint8_t *b;
    if (!take(c, 2, &b))
        return 0;
    *v = (uint32_t)b[0] | (uint32_t)b[1] << 8;
    return 1;
}

static int u32(cur *c, uint32_t *v)
{
    const uint8_t *b;
    if (!take(c, 4, &b))
        return 0;
    *v = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
         (uint32_t)b[3] << 24;
    return 1;
}

typedef struct spec {
    unsigned n;
    uint32_t alg[VEIL_EVLOG_MAX_ALGS], size[VEIL_EVLOG_MAX_ALGS];
} spec;

/* The first event: a TCG_PCR_EVENT holding the Spec ID event. */
static veil_rc spec_parse(cur *c, spec *s)
{
    uint32_t pcr, type, size, n, v;
    const uint8_t *digest, *data;
    if (!u32(c, &pcr) || !u32(c, &type) || !take(c, 20, &digest) ||
        !u32(c, &size) || !take(c, size, &data))
        return veil_err(VEIL_E_ARG, EV, NULL,
                        "the first event (TCG_PCR_EVENT) runs past the end");
    cur d = {data, size, 0};
    const uint8_t *sig;
    if (type != VEIL_EVLOG_NO_ACTION || !take(&d, 16, &sig) ||
        memcmp(sig, SPEC_ID, 16) != 0)
        return veil_err(VEIL_E_ARG, EV, NULL,
                        "the first event is not a \"" SPEC_ID
                        "\" (a SHA-1-only log is not supported: only the "
                        "crypto-agile form has SHA-256 digests)");
    /* platformClass, version minor, major, errata, uintnSize */
    if (!u32(&d, &v) || !u8(&d, &v) || !u8(&d, &v) || !u8(&d, &v) ||
        !u8(&d, &v) || !u32(&d, &n) || n == 0 || n > VEIL_EVLOG_MAX_ALGS)
        return veil_err(VEIL_E_ARG, EV, NULL,
                        "the Spec ID event is cut short or lists no (or "
                        "more than %d) algorithms",
                        VEIL_EVLOG_MAX_ALGS);
    s->n = n;
    int sha256 = 0;
    for (unsigned i = 0; i < n; i++) {
        if (!u16(&d, &s->alg[i]) || !u16(&d, &s->size[i]) || s->size[i] == 0 ||
            s->size[i] > 64)
            return veil_err(VEIL_E_ARG, EV, NULL,
                            "the Spec ID event's algorithm %u is cut short or "
                            "has a digest size outside 1 to 64",
                            i);
        for (unsigned k = 0; k < i; k++)
            if (s->alg[k] == s->alg[i])
                return veil_err(VEIL_E_ARG, EV, NULL,
                                "the Spec ID event lists algorithm 0x%04x "
                                "twice",
                                s->alg[i]);
        if (s->alg[i] == ALG_SHA256) {
            if (s->size[i] != 32)
                return veil_err(VEIL_E_ARG, EV, NULL,
                                "the Spec ID event gives SHA-256 a digest "
                                "size of %u",
                                s->size[i]);
            sha256 = 1;
        }
    }
    const uint8_t *vendor;
    if (!u8(&d, &v) || !take(&d, v, &vendor))
        return veil_err(VEIL_E_ARG, EV, NULL,
                        "the Spec ID event's vendor information runs past "
                        "the event");
    if (!sha256)
        return veil_err(VEIL_E_ARG, EV, NULL,
                        "the log has no SHA-256 digests (its Spec ID event "
                        "does not list SHA-256)");
    (void)pcr;
    return VEIL_OK;
}

/* One TCG_PCR_EVENT2 into *e; number is its position (1: the first after
 * the Spec ID event), for the messages. */
static veil_rc event_parse(cur *c, const spec *s, size_t number,
                           veil_evlog_event *e, unsigned *locality)
{
    uint32_t count, size;
    const uint8_t *data;
    int sha256 = 0;
    if (!u32(c, &e->pcr) || !u32(c, &e->type) || !u32(c, &count))
        return veil_err(VEIL_E_ARG, EV, NULL, "event %zu is cut short", number);
    if (e->pcr >= VEIL_EVLOG_PCRS)
        return veil_err(VEIL_E_ARG, EV, NULL,
                        "event %zu is for PCR %u (0 to 23 exist)", number,
                        e->pcr);
    if (count == 0 || count > s->n)
        return veil_err(VEIL_E_ARG, EV, NULL,
                        "event %zu has %u digests; the Spec ID event lists %u "
                        "algorithms",
                        number, count, s->n);
    for (uint32_t i = 0; i < count; i++) {
        uint32_t alg;
        unsigned k = 0;
        const uint8_t *digest;
        if (!u16(c, &alg))
            return veil_err(VEIL_E_ARG, EV, NULL, "event %zu is cut short",
                            number);
        while (k < s->n && s->alg[k] != alg)
            k++;
        if (k == s->n)
            return veil_err(VEIL_E_ARG, EV, NULL,
                            "event %zu has a digest of algorithm 0x%04x, "
                            "which the Spec ID event does not list",
                            number, alg);
        if (!take(c, s->size[k], &digest))
            return veil_err(VEIL_E_ARG, EV, NULL, "event %zu is cut short",
                            number);
        if (alg == ALG_SHA256) {
            if (sha256)
                return veil_err(VEIL_E_ARG, EV, NULL,
                                "event %zu has two SHA-256 digests", number);
            memcpy(e->sha256, digest, 32);
            sha256 = 1;
        }
    }
    if (!sha256)
        return veil_err(VEIL_E_ARG, EV, NULL, "event %zu has no SHA-256 digest",
                        number);
    if (!u32(c, &size))
        return veil_err(VEIL_E_ARG, EV, NULL, "event %zu is cut short", number);
    e->data_off = c->off;
    if (!take(c, size, &data))
        return veil_err(VEIL_E_ARG, EV, NULL,
                        "event %zu's data (%u bytes) runs past the end", number,
                        size);
    e->data_len = size;
    /* TCG_EfiStartupLocalityEvent: "StartupLocality\0", then a u8. */
    if (e->type == VEIL_EVLOG_NO_ACTION && e->pcr == 0 && size == 17 &&
        memcmp(data, STARTUP_LOCALITY, 16) == 0)
        *locality = data[16];
    return VEIL_OK;
}

veil_rc veil_evlog_parse(const uint8_t *log, size_t len, veil_evlog *out)
{
    cur c = {log, len, 0};
    spec s = {0};
    size_t cap = 0;
    veil_rc rc;

    memset(out, 0, sizeof *out);
    if (log == NULL || len == 0)
        return veil_err(VEIL_E_ARG, EV, NULL, "the log is empty");
    if ((rc = spec_parse(&c, &s)) != VEIL_OK)
        return rc;
    while (c.off < c.len) {
        if (out->n == cap) {
            /* An event takes at least 12 + 2 + 1 + 4 bytes. */
            size_t bigger = cap ? 2 * cap : 64;
            veil_evlog_event *ev;
            if (bigger > len / 19 + 1)
                bigger = len / 19 + 1;
            if (bigger <= cap || !(ev = realloc(out->ev, bigger * sizeof *ev)))
                return veil_err(VEIL_E_NOMEM, EV, NULL, "out of memory");
            out->ev = ev;
            cap = bigger;
        }
        if ((rc = event_parse(&c, &s, out->n + 1, &out->ev[out->n],
                              &out->locality)) != VEIL_OK)
            return rc;
        out->n++;
    }
    return VEIL_OK;
}

void veil_evlog_free(veil_evlog *l)
{
    if (l == NULL)
        return;
    free(l->ev);
    memset(l, 0, sizeof *l);
}

void veil_evlog_replay(const veil_evlog *l, uint8_t pcr[VEIL_EVLOG_PCRS][32],
                       int used[VEIL_EVLOG_PCRS])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    for (unsigned i = 0; i < VEIL_EVLOG_PCRS; i++) {
        memset(pcr[i], i >= 17 && i <= 22 ? 0xff : 0, 32);
        used[i] = 0;
    }
    pcr[0][31] = (uint8_t)l->locality;
    for (size_t k = 0; k < l->n; k++) {
        const veil_evlog_event *e = &l->ev[k];
        unsigned n = 32;
        if (e->type == VEIL_EVLOG_NO_ACTION)
            continue;
        used[e->pcr] = 1;
        /* Without a digest context nothing replays: all zero then matches
         * no PCR a TPM extended. */
        if (ctx == NULL || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1 ||
            EVP_DigestUpdate(ctx, pcr[e->pcr], 32) != 1 ||
            EVP_DigestUpdate(ctx, e->sha256, 32) != 1 ||
            EVP_DigestFinal_ex(ctx, pcr[e->pcr], &n) != 1)
            memset(pcr[e->pcr], 0, 32);
    }
    EVP_MD_CTX_free(ctx);
}

static const struct {
    uint32_t type;
    const char *name;
} types[] = {
    {0x00000000, "EV_PREBOOT_CERT"},
    {0x00000001, "EV_POST_CODE"},
    {0x00000002, "EV_UNUSED"},
    {0x00000003, "EV_NO_ACTION"},
    {0x00000004, "EV_SEPARATOR"},
    {0x00000005, "EV_ACTION"},
    {0x00000006, "EV_EVENT_TAG"},
    {0x00000007, "EV_S_CRTM_CONTENTS"},
    {0x00000008, "EV_S_CRTM_VERSION"},
    {0x00000009, "EV_CPU_MICROCODE"},
    {0x0000000a, "EV_PLATFORM_CONFIG_FLAGS"},
    {0x0000000b, "EV_TABLE_OF_DEVICES"},
    {0x0000000c, "EV_COMPACT_HASH"},
    {0x0000000d, "EV_IPL"},
    {0x0000000e, "EV_IPL_PARTITION_DATA"},
    {0x0000000f, "EV_NONHOST_CODE"},
    {0x00000010, "EV_NONHOST_CONFIG"},
    {0x00000011, "EV_NONHOST_INFO"},
    {0x00000012, "EV_OMIT_BOOT_DEVICE_EVENTS"},
    {0x80000000, "EV_EFI_EVENT_BASE"},
    {0x80000001, "EV_EFI_VARIABLE_DRIVER_CONFIG"},
    {0x80000002, "EV_EFI_VARIABLE_BOOT"},
    {0x80000003, "EV_EFI_BOOT_SERVICES_APPLICATION"},
    {0x80000004, "EV_EFI_BOOT_SERVICES_DRIVER"},
    {0x80000005, "EV_EFI_RUNTIME_SERVICES_DRIVER"},
    {0x80000006, "EV_EFI_GPT_EVENT"},
    {0x80000007, "EV_EFI_ACTION"},
    {0x80000008, "EV_EFI_PLATFORM_FIRMWARE_BLOB"},
    {0x80000009, "EV_EFI_HANDOFF_TABLES"},
    {0x8000000a, "EV_EFI_PLATFORM_FIRMWARE_BLOB2"},
    {0x8000000b, "EV_EFI_HANDOFF_TABLES2"},
    {0x8000000c, "EV_EFI_VARIABLE_BOOT2"},
    {0x80000010, "EV_EFI_HCRTM_EVENT"},
    {0x800000e0, "EV_EFI_VARIABLE_AUTHORITY"},
    {0x800000e1, "EV_EFI_SPDM_FIRMWARE_BLOB"},
    {0x800000e2, "EV_EFI_SPDM_FIRMWARE_CONFIG"},
};

const char *veil_evlog_type_name(uint32_t type)
{
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (types[i].type == type)
            return types[i].name;
    return NULL;
}

int veil_evlog_type_parse(const char *text, uint32_t *type)
{
    char *end;
    unsigned long v;
    if (text == NULL || *text == '\0')
        return 0;
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (strcmp(types[i].name, text) == 0) {
            *type = types[i].type;
            return 1;
        }
    if (*text < '0' || *text > '9')
        return 0;
    errno = 0;
    v = strtoul(text, &end, 0);
    if (*end || errno || v > 0xffffffffu)
        return 0;
    *type = (uint32_t)v;
    return 1;
}
