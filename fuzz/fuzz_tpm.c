/* libFuzzer harness: the TPM 2.0 structure parsers and checks of
 * protocol/tpm.c and the PCR selections of protocol/evidence.c.
 *
 * The first input byte picks what the rest is:
 *   0  a TPM2B_PUBLIC for veil_tpm_pub_parse
 *   1  [2-byte big-endian length][TPMS_ATTEST][TPMT_SIGNATURE]: a quote
 *      and its signature as received, checked under a P-256 AK
 *   2  the same under an RSA-2048 AK (the RSASSA path)
 *   3  a TPMS_ATTEST of a quote, which the harness signs with its P-256
 *      AK (tpmsim.c, a software stand-in for the TPM) so that the checks
 *      behind the signature run: magic, type, qualifying data, PCR
 *      selection and digest
 *   4  a TPMS_ATTEST of a certification, signed likewise, of the EK in
 *      fuzz/data/ek.pub
 *   5  [1-byte n][n bytes of name][secret] for veil_tpm_make_credential
 *      under that EK
 *   6  a PCR selection text for veil_pcr_sel_parse, printed back and
 *      parsed again
 *   7  a TCG event log (protocol/eventlog.c), parsed and replayed; every
 *      event it accepts lies inside the input (seed corpus/tpm/event-log:
 *      tests/attest_forge.py eventlog, with the byte 7 in front)
 * The qualifying data, PCR selection and values are the ones the seeds
 * were made with (tpmsim.h). */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "eventlog.h"
#include "evidence.h"
#include "fuzz.h"
#include "tpmsim.h"

static struct {
    veil_key *ak_key;
    veil_tpm_pub ak, ak_rsa, ek;
    uint8_t qualifying[32];
    veil_pcr_sel sel;
    uint8_t values[VEIL_EV_MAX_PCRS][32];
} F;

static void make_ak(veil_key_type type, unsigned bits, veil_key **keep,
                    veil_tpm_pub *out)
{
    veil_keygen_params p = {.type = type, .bits = bits};
    veil_key *k = NULL;
    uint8_t pub[1024];
    size_t len;
    if (veil_key_generate(fuzz_engine(), "software", &p, &k) != VEIL_OK ||
        !fsim_public(k, FSIM_AK_ATTRS, pub, sizeof pub, &len) ||
        veil_tpm_pub_parse(fuzz_engine(), pub, len, out) != VEIL_OK)
        fuzz_die("attestation key");
    if (keep)
        *keep = k;
    else
        veil_key_free(k);
}

static void setup(void)
{
    char path[4096];
    uint8_t pub[1024];
    size_t len;
    FILE *f;

    make_ak(VEIL_KEY_EC_P256, 0, &F.ak_key, &F.ak);
    make_ak(VEIL_KEY_RSA, 2048, NULL, &F.ak_rsa);
    fuzz_data_path("ek.pub", path, sizeof path);
    if ((f = fopen(path, "rb")) == NULL)
        fuzz_die(path);
    len = fread(pub, 1, sizeof pub, f);
    fclose(f);
    if (veil_tpm_pub_parse(fuzz_engine(), pub, len, &F.ek) != VEIL_OK)
        fuzz_die("fuzz/data/ek.pub");
    fsim_qualifying(F.qualifying);
    if (veil_pcr_sel_parse(FSIM_PCRS, &F.sel) != VEIL_OK)
        fuzz_die("PCR selection");
    fsim_pcr_values(&F.sel, F.values);
}

static void pub_parse(const uint8_t *d, size_t n)
{
    veil_tpm_pub p;
    veil_rc rc = veil_tpm_pub_parse(fuzz_engine(), d, n, &p);
    fuzz_say("public area", rc);
    if (rc == VEIL_OK) {
        /* a parsed public area has a key and a SHA-256 name */
        if (p.key == NULL || p.name[0] != 0x00 || p.name[1] != 0x0b ||
            (p.type != 0x0001 && p.type != 0x0023))
            abort();
    } else if (p.key != NULL) {
        abort();
    }
    veil_tpm_pub_clear(&p);
}

static void quote_as_received(const veil_tpm_pub *ak, const uint8_t *d,
                              size_t n)
{
    if (n < 2)
        return;
    size_t alen = (size_t)d[0] << 8 | d[1];
    if (alen > n - 2)
        alen = n - 2;
    fuzz_say("quote as received",
             veil_tpm_check_quote(fuzz_engine(), ak, d + 2, alen, d + 2 + alen,
                                  n - 2 - alen, F.qualifying, &F.sel,
                                  (const uint8_t(*)[32])F.values));
}

static void signed_by_ak(const uint8_t *d, size_t n, int certify)
{
    uint8_t sig[256];
    size_t sig_len;
    if (!fsim_sign(fuzz_engine(), F.ak_key, d, n, sig, sizeof sig, &sig_len))
        fuzz_die("signing with the stand-in AK");
    veil_rc rc = certify ? veil_tpm_check_certify(fuzz_engine(), &F.ak, d, n,
                                                  sig, sig_len, F.qualifying,
                                                  &F.ek, VEIL_TPMA_FIXEDTPM)
                         : veil_tpm_check_quote(fuzz_engine(), &F.ak, d, n, sig,
                                                sig_len, F.qualifying, &F.sel,
                                                (const uint8_t(*)[32])F.values);
    fuzz_say(certify ? "certification" : "quote", rc);
    /* the signature is good: nothing may be blamed on it */
    if (rc != VEIL_OK && rc != VEIL_E_ARG && rc != VEIL_E_VERIFY)
        abort();
    if (rc == VEIL_E_VERIFY &&
        strstr(veil_last_error()->message, "signature does not verify"))
        abort();
}

static void make_credential(const uint8_t *d, size_t n)
{
    uint8_t blob[600], enc[600];
    size_t blob_len = sizeof blob, enc_len = sizeof enc;
    if (n < 1 || (size_t)d[0] > n - 1)
        return;
    veil_rc rc = veil_tpm_make_credential(fuzz_engine(), &F.ek, d + 1, d[0],
                                          d + 1 + d[0], n - 1 - d[0], blob,
                                          &blob_len, enc, &enc_len);
    fuzz_say("make credential", rc);
    if (rc == VEIL_OK && (blob_len > sizeof blob || enc_len > sizeof enc))
        abort();
}

static void pcr_sel(const uint8_t *d, size_t n)
{
    char text[256], again[96];
    veil_pcr_sel a, b;
    if (n >= sizeof text)
        return;
    memcpy(text, d, n);
    text[n] = '\0';
    if (veil_pcr_sel_parse(text, &a) != VEIL_OK)
        return;
    /* the canonical form parses back to the same selection */
    veil_pcr_sel_format(&a, again, sizeof again);
    if (veil_pcr_sel_parse(again, &b) != VEIL_OK || a.n != b.n ||
        memcmp(a.index, b.index, a.n * sizeof a.index[0]) != 0)
        abort();
}

static void event_log(const uint8_t *d, size_t n)
{
    veil_evlog l;
    uint8_t pcr[VEIL_EVLOG_PCRS][32];
    int used[VEIL_EVLOG_PCRS];
    if (veil_evlog_parse(d, n, &l) == VEIL_OK) {
        for (size_t i = 0; i < l.n; i++)
            if (l.ev[i].pcr >= VEIL_EVLOG_PCRS || l.ev[i].data_off > n ||
                l.ev[i].data_len > n - l.ev[i].data_off)
                abort();
        veil_evlog_replay(&l, pcr, used);
    }
    veil_evlog_free(&l);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    static const uint8_t warm[] = {0x5a};
    setup();
    signed_by_ak(warm, sizeof warm, 0);
    make_credential((const uint8_t *)"\x01\x00\x01", 3);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const uint8_t *d = data + 1;
    size_t n = size - 1;
    switch (data[0] % 8) {
    case 0:
        pub_parse(d, n);
        break;
    case 1:
        quote_as_received(&F.ak, d, n);
        break;
    case 2:
        quote_as_received(&F.ak_rsa, d, n);
        break;
    case 3:
        signed_by_ak(d, n, 0);
        break;
    case 4:
        signed_by_ak(d, n, 1);
        break;
    case 5:
        make_credential(d, n);
        break;
    case 6:
        pcr_sel(d, n);
        break;
    default:
        event_log(d, n);
        break;
    }
    return 0;
}
