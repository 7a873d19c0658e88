/* Following an AK rotation (veil attest update, docs/ATTESTATION.md):
 * the gateway's report on a fresh nonce, its attestation key checked
 * against the enrolled one, a new AK accepted only through the certified
 * hand-over (TPM2_Certify of the new AK by the enrolled one), and the
 * trust file rewritten with the new AK, its policy kept.
 *
 * Every check is reported through a veil_check_fn as it is made; the
 * first one that fails decides the error.  Uses trust.c, tpmobj.c and
 * client_int.h; never calls client.c or enroll.c. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "trust.h"

#define REENROL "re-enrol with 'veil attest enroll'"

typedef struct follow {
    const veil_update_options *opt;
    veil_engine *e;
    veil_cl_transport *tx;
    veil_trust *t;
    veil_cl_checker ck;
    cJSON *report;
    uint8_t nonce[VEIL_CL_NONCE_LEN];
    veil_tpm_pub enrolled, fresh;
} follow;

/* The report on a fresh nonce, which it must echo (report.c). */
static veil_client_status fetch_report(follow *f, veil_client_error *err)
{
    veil_client_status st =
        veil_cl_report_fetch(f->e, f->tx, f->t->url, f->opt->api_key, &f->ck,
                             f->nonce, &f->report, err);
    if (st == VEIL_CLIENT_OK)
        veil_cl_check(&f->ck, "attestation report", 1, "on a fresh nonce");
    return st;
}

/* 1 when member k of the report is base64 of exactly the n bytes at p. */
static int b64_is(const cJSON *o, const char *k, const uint8_t *p, size_t n)
{
    uint8_t *b = NULL;
    size_t len = 0;
    int same =
        veil_cl_json_b64(o, k, &b, &len) && len == n && veil_cl_same(b, p, n);
    free(b);
    return same;
}

/* The same TPM (EK) and the same gateway keys as enrolled: a hand-over
 * changes the AK only. */
static int same_gateway(follow *f)
{
    uint8_t enc[32], sign[32];
    if (!b64_is(f->report, "ek_pubkey_b64", f->t->ek_pub, f->t->ek_pub_len))
        return veil_cl_check(&f->ck, "endorsement key", 0,
                             "the report's EK is not the enrolled one (another "
                             "TPM): " REENROL);
    veil_cl_check(&f->ck, "endorsement key", 1, "the enrolled TPM's EK");
    if (!veil_cl_json_hex(f->report, "encryption_key_sha256", enc, 32) ||
        !veil_cl_json_hex(f->report, "signing_key_sha256", sign, 32) ||
        !veil_cl_same(enc, f->t->enc_sha, 32) ||
        !veil_cl_same(sign, f->t->sign_sha, 32))
        return veil_cl_check(&f->ck, "gateway keys", 0,
                             "the encryption or signing key is not the "
                             "enrolled one: " REENROL);
    return veil_cl_check(&f->ck, "gateway keys", 1,
                         "the enrolled encryption and signing keys");
}

/* The report's AK (into f->fresh): an attestation key named aik_name. */
static int report_ak(follow *f)
{
    uint8_t *pub = NULL, name[VEIL_CL_NAME_LEN];
    size_t len = 0;
    int ok = 0;
    const char *n = "attestation key";
    if (!veil_cl_json_b64(f->report, "aik_pubkey_b64", &pub, &len) ||
        !veil_cl_tpm_pub(f->e, pub, len, &f->fresh))
        veil_cl_check(&f->ck, n, 0, "aik_pubkey_b64 is not a TPM public area");
    else if ((f->fresh.attributes & VEIL_CL_AK_ATTRS) != VEIL_CL_AK_ATTRS)
        veil_cl_check(&f->ck, n, 0,
                      "lacks fixedTPM, fixedParent, sensitiveDataOrigin, "
                      "restricted or sign");
    else if (!veil_cl_json_hex(f->report, "aik_name", name, VEIL_CL_NAME_LEN) ||
             !veil_cl_same(name, f->fresh.name, VEIL_CL_NAME_LEN))
        veil_cl_check(&f->ck, n, 0,
                      "aik_name is not the name of aik_pubkey_b64");
    else
        ok = 1;
    free(pub);
    return ok;
}

/* The hand-over from the enrolled AK to f->fresh: the report's
 * ak_handover names the enrolled AK and its public area, and its
 * TPM2_Certify, signed by the enrolled AK, certifies the report's AK
 * (name, attributes) with qualifying data over that name. */
static int check_handover(follow *f)
{
    const char *n = "AK hand-over";
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(f->report, "ak_handover");
    uint8_t prev[VEIL_CL_NAME_LEN], qual[32];
    uint8_t *attest = NULL, *sig = NULL;
    size_t attest_len = 0, sig_len = 0;
    char was[2 * VEIL_CL_NAME_LEN + 1], is[2 * VEIL_CL_NAME_LEN + 1];
    int ok = 0;

    veil_hex(f->t->ak_name, VEIL_CL_NAME_LEN, was);
    veil_hex(f->fresh.name, VEIL_CL_NAME_LEN, is);
    if (!cJSON_IsObject(h))
        return veil_cl_check(
            &f->ck, n, 0,
            "the gateway's AK %s is not the enrolled %s, and "
            "the report carries no certified hand-over: " REENROL,
            is, was);
    if (!veil_cl_json_hex(h, "previous_aik_name", prev, VEIL_CL_NAME_LEN) ||
        !veil_cl_same(prev, f->t->ak_name, VEIL_CL_NAME_LEN))
        return veil_cl_check(
            &f->ck, n, 0,
            "it is from another AK than the enrolled %s (the "
            "AK was rotated more than once since enrolment, "
            "or the hand-over is not for this trust file): " REENROL,
            was);
    if (!b64_is(h, "previous_aik_pubkey_b64", f->t->ak_pub, f->t->ak_pub_len))
        return veil_cl_check(&f->ck, n, 0,
                             "previous_aik_pubkey_b64 is not the enrolled AK's "
                             "public area: " REENROL);
    veil_ev_handover_qualifying(f->fresh.name, VEIL_CL_NAME_LEN, qual);
    if (!veil_cl_json_b64(h, "attest_b64", &attest, &attest_len) ||
        !veil_cl_json_b64(h, "signature_b64", &sig, &sig_len))
        veil_cl_check(&f->ck, n, 0,
                      "attest_b64 or signature_b64 is not base64: " REENROL);
    else if (veil_tpm_check_certify(f->e, &f->enrolled, attest, attest_len, sig,
                                    sig_len, qual, &f->fresh,
                                    VEIL_CL_AK_ATTRS) != VEIL_OK)
        veil_cl_check(&f->ck, n, 0,
                      "the certification of the new AK %s by the enrolled AK "
                      "is refused: %s: " REENROL,
                      is, veil_cl_why_last());
    else
        ok = veil_cl_check(&f->ck, n, 1,
                           "the enrolled AK %s certified the new AK %s "
                           "(fixedTPM, fixedParent, sensitiveDataOrigin, "
                           "restricted, sign) for this hand-over",
                           was, is);
    free(attest);
    free(sig);
    return ok;
}

/* The report's quote under signer: this nonce and the enrolled keys, the
 * enrolled PCR selection and values. */
static int check_quote(follow *f, const veil_tpm_pub *signer)
{
    veil_cl_quote q;
    char why[256], want[96], got[96], bad[128] = "";
    uint8_t qual[32];
    size_t nb = 0;
    int ok = 0;
    if (!veil_cl_quote_decode(f->report, 0, &q, why, sizeof why)) {
        veil_cl_check(&f->ck, "quote", 0, "%s", why);
        goto out;
    }
    veil_ev_report_qualifying(f->nonce, sizeof f->nonce, f->t->enc_sha,
                              f->t->sign_sha, qual);
    if (veil_tpm_check_quote(f->e, signer, q.quote, q.quote_len, q.sig,
                             q.sig_len, qual, &q.sel,
                             (const uint8_t(*)[32])q.values) != VEIL_OK) {
        veil_cl_check(&f->ck, "quote", 0, "%s", veil_cl_why_last());
        goto out;
    }
    veil_cl_check(&f->ck, "quote", 1,
                  "signed by the gateway's AK over this nonce and the "
                  "enrolled keys");
    veil_pcr_sel_format(&f->t->sel, want, sizeof want);
    veil_pcr_sel_format(&q.sel, got, sizeof got);
    if (q.sel.n != f->t->sel.n ||
        memcmp(q.sel.index, f->t->sel.index, q.sel.n * sizeof q.sel.index[0])) {
        veil_cl_check(&f->ck, "PCR selection", 0, "%s, not the enrolled %s",
                      got, want);
        goto out;
    }
    for (unsigned i = 0; i < q.sel.n; i++)
        if (!veil_cl_same(q.values[i], f->t->golden[i], 32) &&
            nb < sizeof bad - 8)
            nb += (size_t)snprintf(bad + nb, sizeof bad - nb, "%s%u",
                                   nb ? ", " : "", q.sel.index[i]);
    if (nb)
        veil_cl_check(&f->ck, "PCR values", 0,
                      "PCR %s %s from the enrolled values", bad,
                      strchr(bad, ',') ? "differ" : "differs");
    else
        ok = veil_cl_check(&f->ck, "PCR values", 1, "as enrolled (%s)", want);
    if (ok && q.has_kc)
        ok = veil_cl_key_certify_check(f->e, signer, &q, f->t->enc_sha, qual,
                                       &f->ck);
out:
    veil_cl_quote_free(&q);
    return ok;
}

/* The checks after the report arrived; *updated when the trust file was
 * rewritten. */
static veil_client_status follow_report(follow *f, int *updated,
                                        veil_client_error *err)
{
    const char *path = f->opt->trust_file;
    char why[400], was[2 * VEIL_CL_NAME_LEN + 1], is[2 * VEIL_CL_NAME_LEN + 1];
    if (!same_gateway(f) || !report_ak(f))
        goto refused;
    if (!veil_cl_tpm_pub(f->e, f->t->ak_pub, f->t->ak_pub_len, &f->enrolled)) {
        veil_cl_check(&f->ck, "attestation key", 0, "the enrolled AK: %s",
                      veil_cl_why_last());
        goto refused;
    }
    veil_hex(f->t->ak_name, VEIL_CL_NAME_LEN, was);
    veil_hex(f->fresh.name, VEIL_CL_NAME_LEN, is);
    if (veil_cl_same(f->fresh.name, f->t->ak_name, VEIL_CL_NAME_LEN)) {
        veil_cl_check(&f->ck, "attestation key", 1, "the enrolled AK %s", was);
        if (!check_quote(f, &f->enrolled))
            goto refused;
        veil_cl_check(&f->ck, "trust file", 1,
                      "%s is current: nothing to follow", path);
        return VEIL_CLIENT_OK;
    }
    veil_cl_check(&f->ck, "attestation key", 1,
                  "a new AK %s, not the enrolled %s: it needs a certified "
                  "hand-over",
                  is, was);
    if (!check_handover(f) || !check_quote(f, &f->fresh))
        goto refused;
    if (!veil_cl_trust_set_ak(
            path, veil_cl_json_str(f->report, "aik_pubkey_b64"), f->fresh.name,
            f->t->ak_name, (long long)time(NULL), why, sizeof why)) {
        veil_cl_check(&f->ck, "trust file", 0, "%s", why);
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_IO, "%s",
                            f->ck.failed);
    }
    veil_cl_check(&f->ck, "trust file", 1,
                  "%s updated: attestation key %s replaced by %s through its "
                  "certified hand-over; PCR policy, EK and keys kept",
                  path, was, is);
    *updated = 1;
    return VEIL_CLIENT_OK;
refused:
    return veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 200, VEIL_E_VERIFY,
                        "%s; %s is unchanged", f->ck.failed, path);
}

veil_client_status veil_attest_update(const veil_update_options *opt,
                                      int *updated, veil_client_error *err)
{
    follow f = {.opt = opt};
    veil_client_status st = VEIL_CLIENT_E_CONFIG;
    int dummy = 0;
    if (err)
        memset(err, 0, sizeof *err);
    if (updated == NULL)
        updated = &dummy;
    *updated = 0;
    if (opt == NULL || opt->trust_file == NULL)
        return veil_cl_fail(err, st, 0, VEIL_E_ARG,
                            "following a hand-over needs a trust file");
    f.ck.fn = opt->on_check;
    f.ck.ctx = opt->check_ctx;
    if (opt->api_key &&
        (opt->api_key[0] == '\0' || strpbrk(opt->api_key, "\r\n")))
        return veil_cl_fail(err, st, 0, VEIL_E_ARG,
                            "the API key is empty or contains a line break");
    if ((st = veil_trust_load(opt->trust_file, &f.t, err)) != VEIL_CLIENT_OK)
        return st;
    if (!strncmp(f.t->url, "http://", 7) && !opt->allow_http) {
        char shown[512];
        veil_cl_redact_url(f.t->url, shown, sizeof shown);
        st = veil_cl_fail(err, VEIL_CLIENT_E_SECURITY, 0, VEIL_E_ARG,
                          "plain http is refused (%s): use https, or allow "
                          "http for local development only",
                          shown);
        goto out;
    }
    st = VEIL_CLIENT_E_CONFIG;
    f.e = opt->engine;
    if (f.e == NULL && veil_engine_new(NULL, &f.e) != VEIL_OK) {
        f.e = NULL;
        veil_cl_fail(err, st, 0, VEIL_E_NOMEM, "starting an engine: %s",
                     veil_cl_why_last());
        goto out;
    }
    if ((f.tx = veil_cl_transport_new(
             opt->ca_file, opt->timeout_ms ? opt->timeout_ms : 60000)) ==
        NULL) {
        veil_cl_fail(err, st, 0, VEIL_E_NOMEM, "could not start libcurl");
        goto out;
    }
    if ((st = fetch_report(&f, err)) == VEIL_CLIENT_OK)
        st = follow_report(&f, updated, err);
out:
    veil_tpm_pub_clear(&f.enrolled);
    veil_tpm_pub_clear(&f.fresh);
    cJSON_Delete(f.report);
    veil_cl_transport_free(f.tx);
    if (f.e != opt->engine)
        veil_engine_free(f.e);
    veil_trust_free(f.t);
    return st;
}
