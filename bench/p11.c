/* veil-bench: the bare PKCS#11 side the engine and gateway benchmarks
 * compare veil with (bench.h): the module loaded beside veil's, a session
 * on the token, the private key object behind a veil key, C_Decrypt, and
 * CKR_ names for messages.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include <p11-kit/p11-kit.h>
#include <p11-kit/pkcs11.h>

#include "bench.h"

/* ---- errors ------------------------------------------------------------- */

const char *ckr_name(CK_RV rv)
{
    switch (rv) {
    case CKR_OK:
        return "CKR_OK";
    case CKR_ARGUMENTS_BAD:
        return "CKR_ARGUMENTS_BAD";
    case CKR_BUFFER_TOO_SMALL:
        return "CKR_BUFFER_TOO_SMALL";
    case CKR_CRYPTOKI_NOT_INITIALIZED:
        return "CKR_CRYPTOKI_NOT_INITIALIZED";
    case CKR_CRYPTOKI_ALREADY_INITIALIZED:
        return "CKR_CRYPTOKI_ALREADY_INITIALIZED";
    case CKR_DEVICE_ERROR:
        return "CKR_DEVICE_ERROR";
    case CKR_ENCRYPTED_DATA_INVALID:
        return "CKR_ENCRYPTED_DATA_INVALID";
    case CKR_ENCRYPTED_DATA_LEN_RANGE:
        return "CKR_ENCRYPTED_DATA_LEN_RANGE";
    case CKR_FUNCTION_FAILED:
        return "CKR_FUNCTION_FAILED";
    case CKR_GENERAL_ERROR:
        return "CKR_GENERAL_ERROR";
    case CKR_HOST_MEMORY:
        return "CKR_HOST_MEMORY";
    case CKR_KEY_FUNCTION_NOT_PERMITTED:
        return "CKR_KEY_FUNCTION_NOT_PERMITTED";
    case CKR_KEY_HANDLE_INVALID:
        return "CKR_KEY_HANDLE_INVALID";
    case CKR_KEY_TYPE_INCONSISTENT:
        return "CKR_KEY_TYPE_INCONSISTENT";
    case CKR_MECHANISM_INVALID:
        return "CKR_MECHANISM_INVALID";
    case CKR_MECHANISM_PARAM_INVALID:
        return "CKR_MECHANISM_PARAM_INVALID";
    case CKR_OPERATION_ACTIVE:
        return "CKR_OPERATION_ACTIVE";
    case CKR_SESSION_HANDLE_INVALID:
        return "CKR_SESSION_HANDLE_INVALID";
    case CKR_TEMPLATE_INCOMPLETE:
        return "CKR_TEMPLATE_INCOMPLETE";
    case CKR_TEMPLATE_INCONSISTENT:
        return "CKR_TEMPLATE_INCONSISTENT";
    case CKR_TOKEN_NOT_PRESENT:
        return "CKR_TOKEN_NOT_PRESENT";
    case CKR_USER_NOT_LOGGED_IN:
        return "CKR_USER_NOT_LOGGED_IN";
    default:
        return "CKR_?";
    }
}

int ckr_fail(const char *what, CK_RV rv)
{
    fprintf(stderr, "veil-bench: %s failed: %s (0x%lx)\n", what, ckr_name(rv),
            (unsigned long)rv);
    return -1;
}

/* ---- PKCS#11: the bare side --------------------------------------------- */

static int token_label_is(const CK_UTF8CHAR label[32], const char *want)
{
    size_t n = strlen(want), i;

    if (n > 32 || memcmp(label, want, n) != 0)
        return 0;
    for (i = n; i < 32; i++)
        if (label[i] != ' ')
            return 0;
    return 1;
}

static int p11_open_session(p11_bare *b)
{
    CK_RV rv =
        b->f->C_OpenSession(b->slot, CKF_SERIAL_SESSION, NULL, NULL, &b->s);
    if (rv != CKR_OK)
        return ckr_fail("C_OpenSession", rv);
    b->have_session = 1;
    return 0;
}

static void p11_close_session(p11_bare *b)
{
    if (b->have_session)
        b->f->C_CloseSession(b->s);
    b->have_session = 0;
}

/* Loads the module the engine already uses (the same shared object, so the
 * same initialised library and login state), finds the token by label and
 * opens a session of our own.  The user login is per application, so the
 * new session is logged in already. */
int p11_bare_open(p11_bare *b, const char *module, const char *token)
{
    CK_C_INITIALIZE_ARGS args;
    CK_SLOT_ID *slots = NULL;
    CK_ULONG n = 0, i;
    CK_RV rv;
    int found = 0;

    memset(b, 0, sizeof *b);
    b->f = p11_kit_module_load(module, P11_KIT_MODULE_UNMANAGED);
    if (!b->f) {
        const char *m = p11_kit_message();
        fprintf(stderr, "veil-bench: p11_kit_module_load %s failed: %s\n",
                module, m ? m : "unknown error");
        return -1;
    }
    memset(&args, 0, sizeof args);
    args.flags = CKF_OS_LOCKING_OK;
    rv = b->f->C_Initialize(&args);
    if (rv == CKR_OK) {
        /* The engine's instance of the module is not this one: the token
         * key will most likely not be visible from here. */
        b->we_initialized = 1;
        fprintf(stderr,
                "veil-bench: warning: C_Initialize returned CKR_OK: "
                "the engine did not initialise %s in this process\n",
                module);
    } else if (rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
        return ckr_fail("C_Initialize", rv);
    }

    rv = b->f->C_GetSlotList(CK_TRUE, NULL, &n);
    if (rv != CKR_OK)
        return ckr_fail("C_GetSlotList", rv);
    slots = calloc(n ? n : 1, sizeof *slots);
    if (!slots) {
        fprintf(stderr, "veil-bench: out of memory\n");
        return -1;
    }
    rv = b->f->C_GetSlotList(CK_TRUE, slots, &n);
    if (rv != CKR_OK) {
        free(slots);
        return ckr_fail("C_GetSlotList", rv);
    }
    for (i = 0; i < n && !found; i++) {
        CK_TOKEN_INFO ti;
        if (b->f->C_GetTokenInfo(slots[i], &ti) == CKR_OK &&
            token_label_is(ti.label, token)) {
            b->slot = slots[i];
            found = 1;
        }
    }
    free(slots);
    if (!found) {
        fprintf(stderr, "veil-bench: no token labelled '%s' in %s\n", token,
                module);
        return -1;
    }
    return p11_open_session(b);
}

void p11_bare_close(p11_bare *b)
{
    if (!b->f)
        return;
    p11_close_session(b);
    if (b->we_initialized)
        b->f->C_Finalize(NULL);
    p11_kit_module_release(b->f);
    memset(b, 0, sizeof *b);
}

/* Finds the private key veil generated: CKO_PRIVATE_KEY + CKA_LABEL, plus
 * the CKA_ID veil reports, so that a leftover key never gets in the way.
 * (Session objects are visible to every session of the application.) */
int p11_find_private_key(p11_bare *b, const veil_key *k, CK_OBJECT_HANDLE *out)
{
    veil_key_info info;
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    uint8_t id[64];
    size_t id_len = 0;
    CK_ATTRIBUTE tmpl[3];
    CK_ULONG nt = 0, found = 0;
    CK_OBJECT_HANDLE h[2];
    CK_RV rv;

    if (veil_key_get_info(k, &info) != VEIL_OK)
        return veil_fail("veil_key_get_info");
    tmpl[nt++] = (CK_ATTRIBUTE){CKA_CLASS, &cls, sizeof cls};
    tmpl[nt++] = (CK_ATTRIBUTE){CKA_LABEL, info.label, strlen(info.label)};
    if (info.id_hex[0]) {
        id_len = strlen(info.id_hex) / 2;
        if (strlen(info.id_hex) % 2 || id_len > sizeof id ||
            !veil_hex_decode(info.id_hex, id_len, id)) {
            fprintf(stderr, "veil-bench: veil_key_get_info: bad id_hex '%s'\n",
                    info.id_hex);
            return -1;
        }
        tmpl[nt++] = (CK_ATTRIBUTE){CKA_ID, id, id_len};
    }
    rv = b->f->C_FindObjectsInit(b->s, tmpl, nt);
    if (rv != CKR_OK)
        return ckr_fail("C_FindObjectsInit", rv);
    rv = b->f->C_FindObjects(b->s, h, 2, &found);
    b->f->C_FindObjectsFinal(b->s);
    if (rv != CKR_OK)
        return ckr_fail("C_FindObjects", rv);
    if (found != 1) {
        fprintf(stderr,
                "veil-bench: %lu private keys labelled '%s' (id %s) "
                "visible from a new session; expected 1\n",
                (unsigned long)found, info.label, info.id_hex);
        return -1;
    }
    *out = h[0];
    return 0;
}

/* ---- PKCS#11 RSA -------------------------------------------------------- */

CK_RV p11_decrypt_once(p11_rsa_ctx *c)
{
    CK_RV rv = c->b->f->C_DecryptInit(c->b->s, &c->mech, c->h);

    if (rv != CKR_OK)
        return rv;
    c->out_len = (CK_ULONG)c->k;
    return c->b->f->C_Decrypt(c->b->s, c->ct, (CK_ULONG)c->ct_len, c->out,
                              &c->out_len);
}

/* Picks the baseline mechanism: native OAEP with SHA-256 if the token
 * takes it, else CKM_RSA_X_509 (what veil itself falls back to, doing the
 * OAEP decoding on the host).  Checks the result either way. */
int p11_pick_mechanism(p11_rsa_ctx *c, const uint8_t *msg, size_t msg_len,
                       const char **mech_name)
{
    CK_RV rv;

    c->oaep.hashAlg = CKM_SHA256;
    c->oaep.mgf = CKG_MGF1_SHA256;
    c->oaep.source = CKZ_DATA_SPECIFIED;
    c->oaep.pSourceData = NULL;
    c->oaep.ulSourceDataLen = 0;
    c->mech.mechanism = CKM_RSA_PKCS_OAEP;
    c->mech.pParameter = &c->oaep;
    c->mech.ulParameterLen = sizeof c->oaep;
    rv = p11_decrypt_once(c);
    if (rv == CKR_OK && c->out_len == msg_len &&
        memcmp(c->out, msg, msg_len) == 0) {
        *mech_name = "OAEP";
        return 0;
    }
    printf("#   rsa%zu: token refused CKM_RSA_PKCS_OAEP with SHA-256 (%s); "
           "bare loop uses CKM_RSA_X_509\n",
           c->k * 8, rv == CKR_OK ? "wrong plaintext" : ckr_name(rv));
    /* Start again from a clean session: no operation left half-done. */
    p11_close_session(c->b);
    if (p11_open_session(c->b) != 0)
        return -1;
    c->mech.mechanism = CKM_RSA_X_509;
    c->mech.pParameter = NULL;
    c->mech.ulParameterLen = 0;
    rv = p11_decrypt_once(c);
    if (rv != CKR_OK)
        return ckr_fail("C_Decrypt(CKM_RSA_X_509)", rv);
    /* The raw result is the k-byte OAEP encoding: it starts with 0x00. */
    if (c->out_len != c->k || c->out[0] != 0) {
        fprintf(stderr,
                "veil-bench: C_Decrypt(CKM_RSA_X_509) returned %lu "
                "bytes that are not an OAEP encoding\n",
                (unsigned long)c->out_len);
        return -1;
    }
    *mech_name = "X_509";
    return 0;
}
