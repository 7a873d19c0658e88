/* client/report.c: what enrolment (enroll.c) and the AK hand-over
 * (handover.c) both ask of the gateway: one authenticated HTTP exchange,
 * and the attestation report on a fresh nonce (docs/ATTESTATION.md).
 * Uses client_int.h and tpmobj.h only. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "tpmobj.h"

#define REPORT_FORMAT "veil-attestation-report-v1"
/* A report has about 40 JSON values, an activation answer one: what a
 * gateway answers is parsed only when it is this small (it is checked
 * only after parsing). */
#define GW_MAX_VALUES 4096
#define GW_MAX_DEPTH 16

veil_client_status veil_cl_gw_call(veil_cl_transport *tx, const char *base,
                                   const char *api_key, const char *path,
                                   const char *body, veil_cl_http_response *r,
                                   veil_client_error *err)
{
    char url[2048];
    const char *h[6];
    int n = 0;
    char *auth = NULL;
    size_t auth_len = 0;
    if (snprintf(url, sizeof url, "%s%s", base, path) >= (int)sizeof url)
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                            "the URL is too long");
    h[n++] = "Accept: application/json";
    if (body) {
        h[n++] = "Content-Type: application/json";
        h[n++] = "Expect:";
    }
    if (api_key) {
        auth_len = strlen(api_key) + 32;
        if ((auth = malloc(auth_len)) == NULL)
            return veil_cl_fail(err, VEIL_CLIENT_E_CONNECTION, 0, VEIL_E_NOMEM,
                                "out of memory");
        snprintf(auth, auth_len, "Authorization: Bearer %s", api_key);
        h[n++] = auth;
    }
    h[n] = NULL;
    veil_client_status st = veil_cl_transport_send(
        tx, url, h, body, body ? strlen(body) : 0, 0, r, err);
    if (auth)
        veil_wipe(auth, auth_len);
    free(auth);
    if (st != VEIL_CLIENT_OK)
        return st;
    if (r->status != 200)
        st = veil_cl_http_fail(r, err);
    else if (r->body &&
             !veil_cl_json_small(r->body, r->len, GW_MAX_VALUES, GW_MAX_DEPTH))
        st = veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 200, VEIL_E_VERIFY,
                          "the answer has more than %u JSON values or nests "
                          "deeper than %u; refused unparsed",
                          GW_MAX_VALUES, GW_MAX_DEPTH);
    if (st != VEIL_CLIENT_OK) {
        free(r->body);
        r->body = NULL;
    }
    return st;
}

veil_client_status veil_cl_report_fetch(veil_engine *e, veil_cl_transport *tx,
                                        const char *base, const char *api_key,
                                        veil_cl_checker *ck,
                                        uint8_t nonce[VEIL_CL_NONCE_LEN],
                                        cJSON **report, veil_client_error *err)
{
    char nonce_hex[2 * VEIL_CL_NONCE_LEN + 1], path[160];
    veil_cl_http_response r;
    const char *n = "attestation report";
    *report = NULL;
    if (veil_random(e, nonce, VEIL_CL_NONCE_LEN) != VEIL_OK)
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_CRYPTO,
                            "no random nonce: %s", veil_cl_why_last());
    veil_hex(nonce, VEIL_CL_NONCE_LEN, nonce_hex);
    snprintf(path, sizeof path, "/v1/attestation/report?nonce=%s", nonce_hex);
    veil_client_status st =
        veil_cl_gw_call(tx, base, api_key, path, NULL, &r, err);
    if (st != VEIL_CLIENT_OK) {
        veil_cl_check(ck, n, 0, "GET /v1/attestation/report: %s",
                      err ? err->detail : "failed");
        return st;
    }
    *report = cJSON_ParseWithLength(r.body ? r.body : "", r.len);
    free(r.body);
    const char *format = veil_cl_json_str(*report, "format");
    const char *echo = veil_cl_json_str(*report, "nonce");
    if (format == NULL || strcmp(format, REPORT_FORMAT) != 0)
        veil_cl_check(ck, n, 0, "not a " REPORT_FORMAT " object");
    else if (echo == NULL || strcasecmp(echo, nonce_hex) != 0)
        veil_cl_check(ck, n, 0, "it answers another nonce");
    else
        return VEIL_CLIENT_OK;
    return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 200, VEIL_E_VERIFY, "%s",
                        ck->failed);
}
