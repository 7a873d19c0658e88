/* The long-term attestation key across restarts (tpm_int.h).
 *
 * The AK is a primary key of the endorsement hierarchy: the TPM derives it
 * from its endorsement seed, which never leaves it, and the template.  The
 * template's `unique` field is the only thing that differs between two
 * AKs, so keeping those 64 bytes keeps the AK: the same template in the
 * same TPM gives the same key, in any other TPM a different one.  Knowing
 * them makes no key outside this TPM, but lets whoever can talk to this
 * TPM make the same AK again; so they are kept like the AK's auth value,
 * which every use of the AK needs (docs/ATTESTATION.md, "the AK's auth
 * value"): in this file, 0600, in veild's own state_dir.
 *
 * state_dir/tpm-ak holds them as text, one "name=value" a line:
 *   veil-tpm-ak-v1
 *   unique=<128 hex digits>
 *   auth=<64 hex digits>  (absent in an older veild's file: the same AK
 *                          gets one at the next start, and the file too)
 * and after a rotation (tpm_ak_rotate) also the hand-over, the previous
 * AK's TPM2_Certify of the new one:
 *   previous_unique=<128 hex>
 *   previous_aik_pubkey_b64=<TPM2B_PUBLIC>
 *   previous_aik_name=<hex>
 *   handover_attest_b64=<TPMS_ATTEST>
 *   handover_signature_b64=<TPMT_SIGNATURE>
 * Written to a temporary file, synced, then renamed over the old one. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/rand.h>
#include <openssl/sha.h>

#include "evidence.h"
#include "package.h"
#include "tpm_int.h"

#define AK_FILE "tpm-ak"
#define AK_HEAD "veil-tpm-ak-v1"
#define LINE_MAX_LEN 4096

static void path_of(const char *dir, char *out, size_t n, const char *suffix)
{
    snprintf(out, n, "%s/%s%s", dir, AK_FILE, suffix);
}

/* Copies the value of "key=value\n" at line into *out (malloc'd). */
static int take(const char *line, const char *key, char **out)
{
    size_t k = strlen(key), len;

    if (strncmp(line, key, k) != 0 || line[k] != '=')
        return 0;
    line += k + 1;
    len = strcspn(line, "\r\n");
    free(*out);
    if (!(*out = malloc(len + 1)))
        return -1;
    memcpy(*out, line, len);
    (*out)[len] = '\0';
    return 1;
}

void tpm_akstate_free(tpm_akstate *s)
{
    free(s->previous_pub_b64);
    free(s->previous_name_hex);
    free(s->handover_attest_b64);
    free(s->handover_sig_b64);
    veil_wipe(s, sizeof *s);
}

int tpm_akstate_load(const char *dir, tpm_akstate *s, char *err,
                     size_t err_size)
{
    char path[4096], line[LINE_MAX_LEN], *unique = NULL, *prev = NULL,
                                         *auth = NULL;
    int n = 0, ret = -1;
    FILE *f;

    memset(s, 0, sizeof *s);
    path_of(dir, path, sizeof path, "");
    if (!(f = fopen(path, "re"))) {
        if (errno == ENOENT)
            return 1;
        gw_put_err(err, err_size, "TPM: %s: %s", path, strerror(errno));
        return -1;
    }
    while (fgets(line, sizeof line, f)) {
        if (n++ == 0) {
            if (strncmp(line, AK_HEAD "\n", sizeof AK_HEAD) != 0)
                break;
            continue;
        }
        if (take(line, "unique", &unique) < 0 ||
            take(line, "auth", &auth) < 0 ||
            take(line, "previous_unique", &prev) < 0 ||
            take(line, "previous_aik_pubkey_b64", &s->previous_pub_b64) < 0 ||
            take(line, "previous_aik_name", &s->previous_name_hex) < 0 ||
            take(line, "handover_attest_b64", &s->handover_attest_b64) < 0 ||
            take(line, "handover_signature_b64", &s->handover_sig_b64) < 0)
            goto out;
    }
    if (!unique || strlen(unique) != 128 ||
        !veil_hex_decode(unique, TPM_AK_UNIQUE_LEN, s->unique)) {
        gw_put_err(err, err_size,
                   "TPM: %s is not a veil AK file (" AK_HEAD
                   " and unique=<128 hex digits>); move it away to make a "
                   "new AK (clients then enrol again)",
                   path);
        goto out;
    }
    if (auth) {
        s->has_auth = strlen(auth) == 2 * TPM_AK_AUTH_LEN &&
                      veil_hex_decode(auth, TPM_AK_AUTH_LEN, s->auth);
        if (!s->has_auth) {
            gw_put_err(err, err_size,
                       "TPM: %s: auth= is not %d hex digits; move the file "
                       "away to make a new AK (clients then enrol again)",
                       path, 2 * TPM_AK_AUTH_LEN);
            goto out;
        }
    }
    if (prev) {
        s->has_previous =
            strlen(prev) == 128 &&
            veil_hex_decode(prev, TPM_AK_UNIQUE_LEN, s->previous_unique) &&
            s->previous_pub_b64 && s->previous_name_hex &&
            s->handover_attest_b64 && s->handover_sig_b64;
        if (!s->has_previous) {
            gw_put_err(err, err_size, "TPM: %s: an incomplete hand-over", path);
            goto out;
        }
    }
    ret = 0;
out:
    fclose(f);
    veil_wipe(line, sizeof line);
    if (auth)
        veil_wipe(auth, strlen(auth));
    free(auth);
    free(unique);
    free(prev);
    if (ret != 0)
        tpm_akstate_free(s);
    return ret;
}

int tpm_akstate_save(const char *dir, const tpm_akstate *s, char *err,
                     size_t err_size)
{
    char path[4096], tmp[4200], hx[2 * TPM_AK_UNIQUE_LEN + 1],
        phx[2 * TPM_AK_UNIQUE_LEN + 1], ahx[2 * TPM_AK_AUTH_LEN + 1];
    int fd, bad;
    FILE *f;

    path_of(dir, path, sizeof path, "");
    path_of(dir, tmp, sizeof tmp, ".tmp");
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0 || !(f = fdopen(fd, "w"))) {
        gw_put_err(err, err_size, "TPM: %s: %s", tmp, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    veil_hex(s->unique, TPM_AK_UNIQUE_LEN, hx);
    fprintf(f, AK_HEAD "\nunique=%s\n", hx);
    if (s->has_auth) {
        veil_hex(s->auth, TPM_AK_AUTH_LEN, ahx);
        fprintf(f, "auth=%s\n", ahx);
        veil_wipe(ahx, sizeof ahx);
    }
    if (s->has_previous) {
        veil_hex(s->previous_unique, TPM_AK_UNIQUE_LEN, phx);
        fprintf(f,
                "previous_unique=%s\nprevious_aik_pubkey_b64=%s\n"
                "previous_aik_name=%s\nhandover_attest_b64=%s\n"
                "handover_signature_b64=%s\n",
                phx, s->previous_pub_b64, s->previous_name_hex,
                s->handover_attest_b64, s->handover_sig_b64);
    }
    bad = fflush(f) != 0 || fsync(fileno(f)) != 0;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) != 0) {
        gw_put_err(err, err_size, "TPM: writing %s: %s", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

int tpm_ak_rotate(gw_tpm *t, tpm_akstate *s, char *err, size_t err_size)
{
    ESYS_TR old = ESYS_TR_NONE, fresh = ESYS_TR_NONE;
    TPM2B_PUBLIC *old_pub = NULL, *fresh_pub = NULL;
    TPM2B_NAME *old_name = NULL, *fresh_name = NULL;
    TPM2B_ATTEST *info = NULL;
    TPMT_SIGNATURE *sig = NULL;
    EVP_PKEY *old_key = NULL;
    tpm_akstate next = {0};
    uint8_t qual[32];
    int ret = -1;

    memcpy(next.previous_unique, s->unique, TPM_AK_UNIQUE_LEN);
    next.has_previous = 1;
    next.has_auth = 1;
    if (RAND_bytes(next.unique, TPM_AK_UNIQUE_LEN) != 1 ||
        RAND_bytes(next.auth, TPM_AK_AUTH_LEN) != 1) {
        gw_put_err(err, err_size, "TPM: no random bytes for the new AK");
        tpm_akstate_free(&next);
        return -1;
    }
    if (tpm_ak_make(t, s->unique, s->auth, &old, &old_pub, err, err_size) !=
            0 ||
        tpm_ak_make(t, next.unique, next.auth, &fresh, &fresh_pub, err,
                    err_size) != 0 ||
        tpm_object_name(t, old, &old_name, err, err_size) != 0 ||
        tpm_object_name(t, fresh, &fresh_name, err, err_size) != 0)
        goto out;
    /* the qualifying data the client checks (protocol/evidence.c) */
    veil_ev_handover_qualifying(fresh_name->name, fresh_name->size, qual);
    if (!(old_key = tpm_pkey_from_public(&old_pub->publicArea))) {
        gw_put_err(err, err_size, "TPM: out of memory");
        goto out;
    }
    if (tpm_certify(t, fresh, old, old_key, qual, &info, &sig, err, err_size) !=
        0)
        goto out;
    if (!(next.previous_pub_b64 = tpm_b64_public(old_pub)) ||
        !(next.previous_name_hex = tpm_hex(old_name->name, old_name->size)) ||
        !(next.handover_attest_b64 =
              veil_b64_encode(info->attestationData, info->size)) ||
        !(next.handover_sig_b64 = tpm_b64_signature(sig))) {
        gw_put_err(err, err_size, "TPM: out of memory");
        goto out;
    }
    if (tpm_akstate_save(t->state_dir, &next, err, err_size) != 0)
        goto out;
    tpm_akstate_free(s);
    *s = next;
    memset(&next, 0, sizeof next);
    ret = 0;
out:
    tpm_akstate_free(&next);
    if (old != ESYS_TR_NONE)
        Esys_FlushContext(t->ctx, old);
    if (fresh != ESYS_TR_NONE)
        Esys_FlushContext(t->ctx, fresh);
    EVP_PKEY_free(old_key);
    Esys_Free(old_pub);
    Esys_Free(fresh_pub);
    Esys_Free(old_name);
    Esys_Free(fresh_name);
    Esys_Free(info);
    Esys_Free(sig);
    return ret;
}
