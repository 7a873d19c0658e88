/* client/pcrpolicy.c: the verifier's PCR policy at enrolment (pcrpolicy.h):
 * the PCRs it requires, the reference values it brings (a golden file),
 * or an explicit trust in the values quoted now.
 *
 * Layering: uses tpmobj.h (JSON members) and protocol/evidence.h only. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eventlog.h"
#include "pcrpolicy.h"
#include "tpmobj.h"

#define GOLDEN_MAX (1u << 20)
#define GOLDEN_EVENTS_MAX 4096

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

/* The golden file's "events": [{"pcr": N, "type": "EV_..." or a number,
 * "sha256": "<64 hex>"}, ...] into p->events; type and sha256 may be left
 * out (any). */
static int golden_events(const char *path, const cJSON *a,
                         veil_cl_pcr_policy *p, char *why, size_t n)
{
    const cJSON *e;
    int count = cJSON_GetArraySize(a);
    if (!cJSON_IsArray(a) || count == 0 || count > GOLDEN_EVENTS_MAX) {
        snprintf(why, n,
                 "the golden file %s: \"events\" is not a list of 1 to %d "
                 "events",
                 path, GOLDEN_EVENTS_MAX);
        return 0;
    }
    if ((p->events = calloc((size_t)count, sizeof *p->events)) == NULL) {
        snprintf(why, n, "out of memory");
        return 0;
    }
    cJSON_ArrayForEach(e, a)
    {
        veil_cl_golden_event *g = &p->events[p->n_events];
        const cJSON *pcr = cJSON_GetObjectItemCaseSensitive(e, "pcr");
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(e, "type");
        unsigned idx = p->n_events + 1;
        if (!cJSON_IsNumber(pcr) || !(pcr->valuedouble >= 0) ||
            pcr->valuedouble >= VEIL_EV_MAX_PCRS ||
            pcr->valuedouble != (double)(unsigned)pcr->valuedouble) {
            snprintf(why, n,
                     "the golden file %s: event %u has no \"pcr\" 0 to 23",
                     path, idx);
            return 0;
        }
        g->pcr = (unsigned)pcr->valuedouble;
        if (type != NULL) {
            if (!cJSON_IsString(type) ||
                !veil_evlog_type_parse(type->valuestring, &g->type)) {
                snprintf(why, n,
                         "the golden file %s: event %u: \"type\" is not an "
                         "event type (\"EV_SEPARATOR\", ... or a number)",
                         path, idx);
                return 0;
            }
            g->has_type = 1;
        }
        if (cJSON_GetObjectItemCaseSensitive(e, "sha256") != NULL) {
            if (!veil_cl_json_hex(e, "sha256", g->sha256, 32)) {
                snprintf(why, n,
                         "the golden file %s: event %u (PCR %u): \"sha256\" "
                         "is not 64 hex digits",
                         path, idx, g->pcr);
                return 0;
            }
            g->has_sha256 = 1;
        }
        if (cJSON_GetArraySize(e) != 1 + g->has_type + g->has_sha256) {
            snprintf(why, n,
                     "the golden file %s: event %u (PCR %u) has members other "
                     "than \"pcr\", \"type\" and \"sha256\"",
                     path, idx, g->pcr);
            return 0;
        }
        p->n_events++;
    }
    return 1;
}

/* Reads {"sha256": {"0": "<64 hex>", ...}} (the trust file's pcr_values
 * shape) into p's golden selection and values, and "events" (per-event
 * reference values) when there are. */
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
    const cJSON *events = cJSON_GetObjectItemCaseSensitive(j, "events");
    if ((bank != NULL && !cJSON_IsObject(bank)) ||
        (bank == NULL && events == NULL) ||
        cJSON_GetArraySize(j) != (bank != NULL) + (events != NULL)) {
        snprintf(why, n,
                 "the golden file %s is not {\"sha256\": {\"PCR\": \"<64 "
                 "hex>\", ...}} (the trust file's pcr_values) with, or "
                 "instead, \"events\": [...]",
                 path);
        goto out;
    }
    if (events != NULL && !golden_events(path, events, p, why, n))
        goto out;
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
    if (p->golden_sel.n == 0 && p->n_events == 0) {
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
    if (golden_file != NULL && !golden_load(golden_file, p, why, n)) {
        veil_cl_pcr_policy_free(p);
        return 0;
    }
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

void veil_cl_pcr_policy_free(veil_cl_pcr_policy *p)
{
    free(p->events);
    p->events = NULL;
    p->n_events = 0;
}

/* "EV_NAME" or "type 0x..." of an event type, into out. */
static const char *type_text(uint32_t type, char out[24])
{
    const char *name = veil_evlog_type_name(type);
    if (name)
        return name;
    snprintf(out, 24, "type 0x%08x", type);
    return out;
}

/* The log's events of each PCR with reference events, against them. */
static int golden_events_check(const veil_cl_pcr_policy *p, const veil_evlog *l,
                               const veil_pcr_sel *sel, char *why, size_t n)
{
    char t1[24], t2[24], want[65], got[65];
    for (unsigned k = 0; k < p->n_events; k++) {
        unsigned pcr = p->events[k].pcr, g = 0, seen = 0;
        int first = 1;
        for (unsigned m = 0; m < k; m++)
            if (p->events[m].pcr == pcr)
                first = 0;
        if (!first)
            continue;
        if (!sel_has(sel, pcr, NULL)) {
            snprintf(why, n,
                     "PCR %u has reference events but the gateway does not "
                     "quote it",
                     pcr);
            return 0;
        }
        /* g walks the reference events of this PCR, i the log's. */
        for (size_t i = 0; i < l->n; i++) {
            const veil_evlog_event *e = &l->ev[i];
            if (e->pcr != pcr || e->type == VEIL_EVLOG_NO_ACTION)
                continue;
            seen++;
            while (g < p->n_events && p->events[g].pcr != pcr)
                g++;
            if (g == p->n_events) {
                snprintf(why, n,
                         "event %zu of the log (PCR %u, %s) is not among the "
                         "reference events: the log has more events for PCR "
                         "%u than the reference",
                         i + 1, pcr, type_text(e->type, t1), pcr);
                return 0;
            }
            const veil_cl_golden_event *r = &p->events[g++];
            if (r->has_type && r->type != e->type) {
                snprintf(why, n,
                         "event %zu of the log (PCR %u, event %u of that PCR) "
                         "is %s, the reference event is %s",
                         i + 1, pcr, seen, type_text(e->type, t1),
                         type_text(r->type, t2));
                return 0;
            }
            if (r->has_sha256 && memcmp(r->sha256, e->sha256, 32) != 0) {
                veil_hex(e->sha256, 32, got);
                veil_hex(r->sha256, 32, want);
                snprintf(why, n,
                         "event %zu of the log (PCR %u, %s, event %u of that "
                         "PCR) has SHA-256 %s, the reference event %s",
                         i + 1, pcr, type_text(e->type, t1), seen, got, want);
                return 0;
            }
        }
        while (g < p->n_events && p->events[g].pcr != pcr)
            g++;
        if (g < p->n_events) {
            snprintf(why, n,
                     "PCR %u: the log has %u event(s), the reference more: "
                     "reference event %u is missing",
                     pcr, seen, g + 1);
            return 0;
        }
    }
    return 1;
}

int veil_cl_event_log_check(const veil_cl_pcr_policy *p, const uint8_t *log,
                            size_t len, const veil_pcr_sel *sel,
                            const uint8_t (*values)[32], char *done,
                            size_t done_size, char *why, size_t n)
{
    veil_evlog l;
    uint8_t pcr[VEIL_EVLOG_PCRS][32];
    int used[VEIL_EVLOG_PCRS], ok = 0;
    char list[96] = "", want[65], got[65];
    size_t at = 0;

    done[0] = '\0';
    if (log == NULL) {
        if (p->n_events == 0)
            return 1;
        snprintf(why, n,
                 "the golden file gives reference events, but the gateway's "
                 "report carries no event log (event_log_b64 is null)");
        return 0;
    }
    if (veil_evlog_parse(log, len, &l) != VEIL_OK) {
        snprintf(why, n, "%s", veil_cl_why_last());
        goto out;
    }
    veil_evlog_replay(&l, pcr, used);
    for (unsigned k = 0; k < sel->n; k++) {
        unsigned i = sel->index[k];
        if (!used[i])
            continue;
        if (memcmp(pcr[i], values[k], 32) != 0) {
            veil_hex(pcr[i], 32, got);
            veil_hex(values[k], 32, want);
            snprintf(why, n,
                     "PCR %u: the event log replays to %s, the quote says %s",
                     i, got, want);
            goto out;
        }
        at += (size_t)snprintf(list + at, sizeof list - at, "%s%u",
                               at ? "," : "", i);
        if (at >= sizeof list)
            at = sizeof list - 1;
    }
    if (!golden_events_check(p, &l, sel, why, n))
        goto out;
    snprintf(done, done_size,
             "%zu events; they replay to the quoted PCR %s; %u reference "
             "event(s) match",
             l.n, at ? list : "(none: no quoted PCR has events)", p->n_events);
    ok = 1;
out:
    veil_evlog_free(&l);
    return ok;
}

const char *veil_cl_pcr_policy_name(const veil_cl_pcr_policy *p)
{
    return p->accept_current ? "accepted-current" : "golden";
}
