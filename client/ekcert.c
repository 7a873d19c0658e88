/* client/ekcert.c: what an EK certificate must say beyond its chain (TCG EK
 * Credential Profile for TPM 2.0, section 3.2): the EK certificate purpose,
 * the key usage of an endorsement key, no CA powers, and the TPM's
 * manufacturer, model and firmware version in the subject alternative
 * name.  Enrolment (enroll.c) runs it on every EK certificate a gateway
 * reports, with or without a CA to chain it to.
 *
 * Layering: uses only OpenSSL and ekcert.h; calls nothing else in client/. */
#include "config.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/x509v3.h>

#include "ekcert.h"

/* TCG OIDs (TCG EK Credential Profile, "TCG OID Registry"). */
#define OID_EK_CERTIFICATE "2.23.133.8.1" /* tcg-kp-EKCertificate */
#define OID_TPM_MANUFACTURER "2.23.133.2.1"
#define OID_TPM_MODEL "2.23.133.2.2"
#define OID_TPM_VERSION "2.23.133.2.3"

static int fail(char *why, size_t n, const char *msg)
{
    snprintf(why, n, "%s", msg);
    return 0;
}

/* 1 when the certificate's extended key usage names the EK purpose. */
static int has_ek_purpose(X509 *x)
{
    EXTENDED_KEY_USAGE *eku =
        X509_get_ext_d2i(x, NID_ext_key_usage, NULL, NULL);
    ASN1_OBJECT *want = OBJ_txt2obj(OID_EK_CERTIFICATE, 1);
    int found = 0;

    for (int i = 0; eku && want && i < sk_ASN1_OBJECT_num(eku); i++)
        if (OBJ_cmp(sk_ASN1_OBJECT_value(eku, i), want) == 0)
            found = 1;
    ASN1_OBJECT_free(want);
    EXTENDED_KEY_USAGE_free(eku);
    return found;
}

/* The value of the attribute oid in a directory name, as printable text
 * (at most out_size - 1 bytes); 0 when absent or not text. */
static int name_attr(X509_NAME *nm, const char *oid, char *out, size_t out_size)
{
    ASN1_OBJECT *o = OBJ_txt2obj(oid, 1);
    int i = o ? X509_NAME_get_index_by_OBJ(nm, o, -1) : -1;
    ASN1_STRING *v;
    int len;

    ASN1_OBJECT_free(o);
    if (i < 0)
        return 0;
    v = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(nm, i));
    len = v ? ASN1_STRING_length(v) : 0;
    if (len <= 0 || (size_t)len >= out_size)
        return 0;
    memcpy(out, ASN1_STRING_get0_data(v), (size_t)len);
    out[len] = '\0';
    for (int k = 0; k < len; k++)
        if (!isprint((unsigned char)out[k]))
            return 0;
    return 1;
}

/* The TPM attributes of the subject alternative name's directory name. */
static int tpm_attrs(X509 *x, veil_cl_ek_attrs *a)
{
    GENERAL_NAMES *san = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    int ok = 0;

    for (int i = 0; san && !ok && i < sk_GENERAL_NAME_num(san); i++) {
        GENERAL_NAME *g = sk_GENERAL_NAME_value(san, i);
        if (g->type != GEN_DIRNAME)
            continue;
        ok = name_attr(g->d.dirn, OID_TPM_MANUFACTURER, a->manufacturer,
                       sizeof a->manufacturer) &&
             name_attr(g->d.dirn, OID_TPM_MODEL, a->model, sizeof a->model) &&
             name_attr(g->d.dirn, OID_TPM_VERSION, a->version,
                       sizeof a->version);
    }
    GENERAL_NAMES_free(san);
    return ok;
}

/* The TCG vendor ID "id:XXXXXXXX" as the TPM reports TPM_PT_MANUFACTURER
 * (four ASCII bytes, NULs and spaces trimmed at the end) into out; 0 when
 * it is not a vendor ID of that form (e.g. a PCI vendor ID). */
static int vendor_text(const char *id, char *out)
{
    int n = 0;

    if (strncmp(id, "id:", 3) != 0 || strlen(id) != 11)
        return 0;
    for (int i = 0; i < 4; i++) {
        unsigned v;
        if (sscanf(id + 3 + 2 * i, "%2x", &v) != 1 ||
            !isxdigit((unsigned char)id[3 + 2 * i]) ||
            !isxdigit((unsigned char)id[4 + 2 * i]))
            return 0;
        out[n++] = (char)v;
    }
    out[n] = '\0';
    while (n > 0 && (out[n - 1] == '\0' || out[n - 1] == ' '))
        out[--n] = '\0';
    if (n == 0)
        return 0;
    for (int i = 0; i < n; i++)
        if (!isprint((unsigned char)out[i]))
            return 0;
    return 1;
}

int veil_cl_ek_profile(X509 *x, const char *reported_manufacturer,
                       veil_cl_ek_attrs *a, char *why, size_t why_size)
{
    EVP_PKEY *k = X509_get0_pubkey(x);
    uint32_t ku = X509_get_key_usage(x);
    uint32_t need = k && EVP_PKEY_get_base_id(k) == EVP_PKEY_RSA
                        ? KU_KEY_ENCIPHERMENT
                        : KU_KEY_AGREEMENT;
    char vendor[8];

    memset(a, 0, sizeof *a);
    if (!has_ek_purpose(x))
        return fail(why, why_size,
                    "its extended key usage does not name the EK certificate "
                    "purpose (tcg-kp-EKCertificate, " OID_EK_CERTIFICATE ")");
    if (ku == UINT32_MAX || !(ku & need))
        return fail(why, why_size,
                    need == KU_KEY_ENCIPHERMENT
                        ? "its key usage lacks keyEncipherment (an RSA "
                          "endorsement key decrypts credentials)"
                        : "its key usage lacks keyAgreement (an ECC "
                          "endorsement key)");
    if ((X509_get_extension_flags(x) & EXFLAG_CA) || (ku & KU_KEY_CERT_SIGN))
        return fail(why, why_size,
                    "it is a CA certificate (an EK certificate may not sign "
                    "certificates)");
    if (!tpm_attrs(x, a))
        return fail(why, why_size,
                    "its subject alternative name lacks the TPM manufacturer, "
                    "model or version (" OID_TPM_MANUFACTURER ", " OID_TPM_MODEL
                    ", " OID_TPM_VERSION ")");
    a->vendor_compared = 0;
    if (vendor_text(a->manufacturer, vendor)) {
        if (reported_manufacturer == NULL ||
            strcmp(vendor, reported_manufacturer) != 0) {
            snprintf(why, why_size,
                     "it names TPM manufacturer %s (\"%s\"), the gateway "
                     "reports \"%s\"",
                     a->manufacturer, vendor,
                     reported_manufacturer ? reported_manufacturer : "none");
            return 0;
        }
        a->vendor_compared = 1;
    }
    return 1;
}
