/* veil-bench gateway --protocol v2: the latency protocol v2 adds to one
 * request (issue 14: added p50 at most TARGET_V2_ADDED_MS).
 *
 * One client, sequential, so the figure is latency and not queueing.  The
 * backend is tests/mock-upstream, the project's OpenAI-compatible test
 * server, started once for the run; every veild of the run serves it as
 * model V2_LAT_MODEL.  For each of --requests prompts, in alternating
 * order (so that neither side always goes first):
 *
 *   plain  POST /v1/chat/completions of the chat request straight to
 *          mock-upstream (plain HTTP, kept-alive connection): what the
 *          client would wait for with no veil at all;
 *   v2     the same chat request, Binary HTTP inside a fresh HPKE
 *          encapsulation (DHKEM P-256, AES-256-GCM) to the gateway's
 *          current key configuration (fetched once before: a client
 *          caches it), POSTed to veild's gateway resource (kept-alive),
 *          which decapsulates it, forwards it to the same mock-upstream
 *          and encapsulates the answer; then the answer decapsulated and
 *          checked to be an inner 200 holding the prompt.
 *
 * The line gives both p50/p99, the added p50 (v2 p50 - plain p50), the
 * ratio of the p50s and the result against the target; the next line
 * splits v2's p50 into its parts (encapsulate, POST to veild, decapsulate)
 * and says what the gateway path adds over the plain call.  No timed
 * assertions.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>

#include "bench_gw.h"

#define WARM_UP 20 /* requests each way before the measured ones */

/* Starts tests/mock-upstream from veild's build directory. */
int v2_mock_start(const gw *g, tu_proc *mock)
{
    const char *veild = g->o->veild, *slash = strrchr(veild, '/');
    char exe[PATH_MAX], port_file[PATH_MAX + 32];
    const char *argv[4];

    if (slash)
        snprintf(exe, sizeof exe, "%.*s/tests/mock-upstream",
                 (int)(slash - veild), veild);
    else
        snprintf(exe, sizeof exe, "tests/mock-upstream");
    snprintf(port_file, sizeof port_file, "%s/mock-upstream.port", g->dir);
    argv[0] = exe;
    argv[1] = "--port-file";
    argv[2] = port_file;
    argv[3] = NULL;
    memset(mock, 0, sizeof *mock);
    if (tu_proc_start(mock, g->dir, "mock-upstream", argv, port_file,
                      TU_LOG_FRESH) != 0) {
        fprintf(stderr,
                "veil-bench: %s did not start (the latency backend; build "
                "it next to veild: make tests/mock-upstream)\n",
                exe);
        return -1;
    }
    return 0;
}

/* Stops it by PID and removes its log and port file: 0, or -1 when it
 * did not exit 0. */
int v2_mock_stop(const gw *g, tu_proc *mock)
{
    char path[PATH_MAX + 32];
    int st = mock->pid ? tu_proc_stop(mock) : 0;

    snprintf(path, sizeof path, "%s/mock-upstream.port", g->dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/mock-upstream.log", g->dir);
    unlink(path);
    return st == 0 ? 0 : -1;
}

/* mock-upstream's counts so far (GET /mock/stats): 0, or -1. */
static int mock_stats(unsigned port, double *requests, double *connections)
{
    char url[96];
    http c;
    cJSON *j = NULL, *r, *n;
    int ret = -1;

    snprintf(url, sizeof url, "http://127.0.0.1:%u/mock/stats", port);
    if (http_init(&c, url) != 0)
        return -1;
    if (http_get(&c, url) == 0 && (j = cJSON_Parse(c.buf)) &&
        cJSON_IsNumber(r = cJSON_GetObjectItemCaseSensitive(j, "requests")) &&
        cJSON_IsNumber(
            n = cJSON_GetObjectItemCaseSensitive(j, "connections"))) {
        *requests = r->valuedouble;
        *connections = n->valuedouble;
        ret = 0;
    }
    cJSON_Delete(j);
    http_free(&c);
    return ret;
}

/* The chat request's JSON for prompt `seq` (as v2_seal makes it). */
static int chat_body(const gw *g, uint32_t seq, char *body, size_t size,
                     char *prompt)
{
    fill_prompt(prompt, SMALL_PROMPT, g->salt, seq);
    prompt[SMALL_PROMPT] = '\0';
    return snprintf(body, size,
                    "{\"model\":\"" V2_LAT_MODEL "\",\"messages\":[{\"role\":"
                    "\"user\",\"content\":\"%s\"}]}",
                    prompt);
}

/* One POST on c; its wall time in *secs; the HTTP status, 0: none. */
static long post(http *c, struct curl_slist *h, const void *body, size_t len,
                 double *secs)
{
    long status = 0;
    double t0;

    c->len = 0;
    c->err[0] = '\0';
    curl_easy_setopt(c->h, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c->h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c->h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    t0 = now_s();
    if (curl_easy_perform(c->h) == CURLE_OK)
        curl_easy_getinfo(c->h, CURLINFO_RESPONSE_CODE, &status);
    *secs = now_s() - t0;
    return status;
}

typedef struct lat_state {
    const gw *g;
    const veil_ohttp_keyconfig *cfg;
    http plain, v2;
    struct curl_slist *h_json, *h_ohttp;
    unsigned errors;
    char first[200];
} lat_state;

static void lat_error(lat_state *s, const char *what, uint32_t seq, long st)
{
    if (!s->errors++)
        snprintf(s->first, sizeof s->first, "%s, request %u: HTTP %ld", what,
                 seq, st);
}

/* The plain call: its time, or < 0 on an error. */
static double one_plain(lat_state *s, uint32_t seq)
{
    char prompt[SMALL_PROMPT + 1], body[SMALL_PROMPT + 128];
    int n = chat_body(s->g, seq, body, sizeof body, prompt);
    double secs;
    long st = post(&s->plain, s->h_json, body, (size_t)n, &secs);

    if (st != 200 || !s->plain.buf ||
        !memmem(s->plain.buf, s->plain.len, prompt, SMALL_PROMPT)) {
        lat_error(s, "plain", seq, st);
        return -1;
    }
    return secs;
}

/* The v2 call: its parts (encapsulate, POST, decapsulate) and total; -1
 * on an error. */
static int one_v2(lat_state *s, uint32_t seq, double part[3], double *total)
{
    v2_item it = {.seq = seq};
    char why[160];
    double t0 = now_s(), t1, t2;
    long st = 0;
    int ok;

    ok = v2_seal(s->g, s->cfg, V2_LAT_MODEL, &it) == 0;
    t1 = now_s();
    if (ok)
        st = post(&s->v2, s->h_ohttp, it.req, it.len, &part[1]);
    t2 = now_s();
    ok = ok && st == 200 && v2_check(s->g, &s->v2, &it, why, sizeof why) == 0;
    *total = now_s() - t0;
    part[0] = t1 - t0;
    part[2] = t0 + *total - t2;
    v2_items_clear(&it, 1);
    if (!ok)
        lat_error(s, "v2", seq, st);
    return ok ? 0 : -1;
}

int run_v2_latency(const gw *g, target *t, unsigned mock_port, unsigned *seq)
{
    unsigned n = g->o->requests, got = 0;
    double *plain = xcalloc(n, sizeof *plain), *v2 = xcalloc(n, sizeof *v2);
    double *parts[3];
    double pp50, pp99, vp50, vp99, q50[3], q99[3], added;
    double req0, conn0, req1, conn1;
    char url[160], name[64], etext[16];
    veil_ohttp_keyconfig cfg;
    lat_state s = {.g = g, .cfg = &cfg};
    int ret = -1;

    for (unsigned k = 0; k < 3; k++)
        parts[k] = xcalloc(n, sizeof *parts[k]);
    if (v2_config(t, &cfg) != 0)
        goto out;
    snprintf(url, sizeof url, "http://127.0.0.1:%u/v1/chat/completions",
             mock_port);
    if (http_init(&s.plain, url) != 0)
        goto out;
    snprintf(url, sizeof url, "%s" V2_PATH, t->v.url);
    if (http_init(&s.v2, url) != 0)
        goto out;
    s.h_json = curl_slist_append(NULL, "Content-Type: application/json");
    s.h_json = s.h_json ? curl_slist_append(s.h_json, "Expect:") : NULL;
    s.h_ohttp = curl_slist_append(NULL, "Content-Type: " VEIL_OHTTP_MEDIA_REQ);
    s.h_ohttp = s.h_ohttp ? curl_slist_append(s.h_ohttp, "Expect:") : NULL;
    if (!s.h_json || !s.h_ohttp) {
        fprintf(stderr, "veil-bench: curl_slist_append failed\n");
        goto out;
    }
    /* warm-up: both connections open, both paths' code and caches hot */
    for (unsigned i = 0; i < WARM_UP; i++) {
        double p[3], tot;

        one_plain(&s, (*seq)++);
        one_v2(&s, (*seq)++, p, &tot);
    }
    if (s.errors) {
        printf("#   v2 latency, %s: the warm-up failed: %s\n", t->name,
               s.first);
        goto out;
    }
    if (mock_stats(mock_port, &req0, &conn0) != 0)
        goto out;
    for (unsigned i = 0; i < n; i++) {
        uint32_t sp = (*seq)++, sv = (*seq)++;
        double a = 0, b = 0, p[3];
        int ok;

        if (i % 2 == 0) {
            a = one_plain(&s, sp);
            ok = one_v2(&s, sv, p, &b) == 0;
        } else {
            ok = one_v2(&s, sv, p, &b) == 0;
            a = one_plain(&s, sp);
        }
        if (!ok || a < 0)
            continue;
        plain[got] = a;
        v2[got] = b;
        for (unsigned k = 0; k < 3; k++)
            parts[k][got] = p[k];
        got++;
    }
    if (mock_stats(mock_port, &req1, &conn1) != 0)
        goto out;
    if (got == 0) {
        printf("#   v2 latency, %s: no request succeeded: %s\n", t->name,
               s.first);
        goto out;
    }
    p50_p99(plain, got, &pp50, &pp99);
    p50_p99(v2, got, &vp50, &vp99);
    for (unsigned k = 0; k < 3; k++)
        p50_p99(parts[k], got, &q50[k], &q99[k]);
    added = vp50 - pp50;
    snprintf(name, sizeof name, "latency v2 %s", t->name);
    snprintf(etext, sizeof etext, "%u", s.errors);
    printf("%-32s %8.3f %8.3f %8.3f %8.3f %8.3f %6.2f %6s %s\n", name, pp50,
           pp99, vp50, vp99, added, pp50 > 0 ? vp50 / pp50 : 0, etext,
           s.errors                      ? "FAIL (errors)"
           : added <= TARGET_V2_ADDED_MS ? "PASS"
                                         : "FAIL");
    printf("#   v2 p50 by part, ms: encapsulate %.3f, POST to veild %.3f "
           "(p99 %.3f), decapsulate + check %.3f;\n"
           "#   the gateway path over the plain call (POST p50 - plain "
           "p50): %.3f\n",
           q50[0], q50[1], q99[1], q50[2], q50[1] - pp50);
    printf("#   mock-upstream took %.0f requests on %.0f new connections "
           "during the phase\n",
           req1 - req0, conn1 - conn0);
    if (s.errors)
        printf("#   first error: %s\n", s.first);
    fflush(stdout);
    ret = 0;
out:
    curl_slist_free_all(s.h_json);
    curl_slist_free_all(s.h_ohttp);
    if (s.plain.h)
        http_free(&s.plain);
    if (s.v2.h)
        http_free(&s.v2);
    for (unsigned k = 0; k < 3; k++)
        free(parts[k]);
    free(plain);
    free(v2);
    return ret;
}
