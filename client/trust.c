/* The trust file (veil-trust-v1, docs/ATTESTATION.md): reading and
 * checking one, and what answer verification (verify.c) and the client
 * (client.c, keys.c) need of it.  Uses tpmobj.c and client_int.h only. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "trust.h"

/* A trust file is a few KiB. */
#define MAX_TRUST_FILE (1u << 20)

/* ---- trust files ------------------------------------------------------- */

/* Reads a whole file of at most max bytes (NUL-terminated). */
static char *read_file(const char *path, size_t max, size_t *len, char *why,
                       size_t why_size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    char *buf = NULL;
    size_t n = 0;
    if (fd < 0 || fstat(fd, &st) != 0) {
        snprintf(why, why_size, "cannot read %s: %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode) || (size_t)st.st_size > max) {
        snprintf(why, why_size, "%s is not a regular file of at most %zu KiB",
                 path, max >> 10);
        goto out;
    }
    if ((buf = malloc((size_t)st.st_size + 1)) == NULL) {
        snprintf(why, why_size, "out of memory");
        goto out;
    }
    while (n < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + n, (size_t)st.st_size - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            snprintf(why, why_size, "cannot read %s: %s", path,
                     r < 0 ? strerror(errno) : "it shrank");
            free(buf);
            buf = NULL;
            goto out;
        }
        n += (size_t)r;
    }
    buf[n] = '\0';
    *len = n;
out:
    if (fd >= 0)
        close(fd);
    return buf;
}

/* Writes text and a newline to path: a temporary file next to it, then
 * renamed over it (or, when overwriting is not allowed, linked: that
 * fails if the target appeared meanwhile), so a reader never sees half a
 * file.  0 on failure, with the step that failed and errno. */
int veil_cl_write_atomic(const char *path, const char *text, int overwrite,
                         const char **step)
{
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 16);
    int fd = -1, saved = 0;
    *step = "out of memory";
    if (tmp != NULL) {
        snprintf(tmp, plen + 16, "%s.tmp.XXXXXX", path);
        *step = "creating a temporary file";
        fd = mkstemp(tmp);
    }
    if (fd >= 0) {
        size_t len = strlen(text), off = 0;
        *step = "writing";
        while (off < len) {
            ssize_t w = write(fd, text + off, len - off);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                break;
            off += (size_t)w;
        }
        if (off == len && write(fd, "\n", 1) == 1 && fchmod(fd, 0644) == 0 &&
            fsync(fd) == 0) {
            *step = overwrite ? "renaming" : "linking";
            if (overwrite ? rename(tmp, path) == 0 : link(tmp, path) == 0) {
                saved = 1;
                if (!overwrite)
                    unlink(tmp);
            }
        }
    }
    int e = errno;
    if (fd >= 0) {
        close(fd);
        if (!saved)
            unlink(tmp);
    }
    free(tmp);
    errno = e;
    return saved;
}

/* The member k of j replaced by the string v (added when absent). */
static int json_set_str(cJSON *j, const char *k, const char *v)
{
    cJSON *s = cJSON_CreateString(v);
    if (s == NULL)
        return 0;
    if (cJSON_GetObjectItemCaseSensitive(j, k))
        return cJSON_ReplaceItemInObjectCaseSensitive(j, k, s);
    if (!cJSON_AddItemToObject(j, k, s)) {
        cJSON_Delete(s);
        return 0;
    }
    return 1;
}

int veil_cl_trust_set_ak(const char *path, const char *ak_pub_b64,
                         const uint8_t name[VEIL_CL_NAME_LEN],
                         const uint8_t previous[VEIL_CL_NAME_LEN],
                         long long now, char *why, size_t why_size)
{
    char hx[2 * VEIL_CL_NAME_LEN + 1], prev[2 * VEIL_CL_NAME_LEN + 1];
    uint8_t on_disk[VEIL_CL_NAME_LEN];
    const char *step;
    size_t len = 0;
    char *text = read_file(path, MAX_TRUST_FILE, &len, why, why_size), *out;
    cJSON *j, *f;
    int ok = 0;

    if (text == NULL)
        return 0;
    j = cJSON_ParseWithLength(text, len);
    free(text);
    veil_hex(name, VEIL_CL_NAME_LEN, hx);
    veil_hex(previous, VEIL_CL_NAME_LEN, prev);
    /* The file may have changed since it was loaded: only the AK that
     * handed over is replaced. */
    if (!cJSON_IsObject(j) ||
        !veil_cl_json_hex(j, "aik_name", on_disk, VEIL_CL_NAME_LEN) ||
        !veil_cl_same(on_disk, previous, VEIL_CL_NAME_LEN)) {
        snprintf(why, why_size,
                 "%s changed meanwhile: its aik_name is no longer %s", path,
                 prev);
        goto out;
    }
    f = cJSON_CreateObject();
    if (f == NULL || !cJSON_AddStringToObject(f, "previous_aik_name", prev) ||
        !cJSON_AddNumberToObject(f, "at", (double)now) ||
        !json_set_str(j, "aik_pubkey_b64", ak_pub_b64) ||
        !json_set_str(j, "aik_name", hx)) {
        cJSON_Delete(f);
        snprintf(why, why_size, "out of memory");
        goto out;
    }
    cJSON_DeleteItemFromObjectCaseSensitive(j, "ak_handover_followed");
    cJSON_AddItemToObject(j, "ak_handover_followed", f);
    if ((out = cJSON_Print(j)) == NULL) {
        snprintf(why, why_size, "out of memory");
        goto out;
    }
    ok = veil_cl_write_atomic(path, out, 1, &step);
    if (!ok)
        snprintf(why, why_size, "%s: %s: %s", path, step, strerror(errno));
    free(out);
out:
    cJSON_Delete(j);
    return ok;
}

void veil_trust_free(veil_trust *t)
{
    if (t == NULL)
        return;
    free(t->url);
    free(t->ek_pub);
    free(t->ak_pub);
    free(t->sign_spki);
    free(t);
}

const char *veil_trust_url(const veil_trust *t)
{
    return t ? t->url : NULL;
}

const uint8_t *veil_cl_trust_encryption_key(const veil_trust *t)
{
    return t->enc_sha;
}

/* The keys of a trust file are checked with the engine they are made in:
 * the AK as an attestation key whose name is aik_name, the EK as an RSA
 * endorsement key, the signing key as P-256 with the recorded hash. */
static int trust_keys_ok(veil_engine *e, const veil_trust *t, char *why,
                         size_t why_size)
{
    veil_tpm_pub p;
    if (!veil_cl_tpm_pub(e, t->ak_pub, t->ak_pub_len, &p)) {
        snprintf(why, why_size, "\"aik_pubkey_b64\": %.200s",
                 veil_cl_why_last());
        return 0;
    }
    int ok = (p.attributes & VEIL_CL_AK_ATTRS) == VEIL_CL_AK_ATTRS &&
             veil_cl_same(p.name, t->ak_name, VEIL_CL_NAME_LEN);
    veil_tpm_pub_clear(&p);
    if (!ok) {
        snprintf(why, why_size,
                 "\"aik_pubkey_b64\" is not an attestation key named "
                 "\"aik_name\"");
        return 0;
    }
    if (!veil_cl_tpm_pub(e, t->ek_pub, t->ek_pub_len, &p)) {
        snprintf(why, why_size, "\"ek_pubkey_b64\": %.200s",
                 veil_cl_why_last());
        return 0;
    }
    ok = p.type == VEIL_CL_TPM_ALG_RSA;
    veil_tpm_pub_clear(&p);
    if (!ok) {
        snprintf(why, why_size, "\"ek_pubkey_b64\" is not an RSA key");
        return 0;
    }
    uint8_t h[32];
    char refused[160];
    veil_cl_sha256(t->sign_spki, t->sign_spki_len, h);
    ok = veil_cl_p256_ok(e, t->sign_spki, t->sign_spki_len, refused,
                         sizeof refused);
    if (refused[0]) {
        snprintf(why, why_size, "\"signing_key_spki_b64\" is refused: %s",
                 refused);
        return 0;
    }
    if (!ok) {
        snprintf(why, why_size,
                 "\"signing_key_spki_b64\" is not a P-256 public key");
        return 0;
    }
    if (!veil_cl_same(h, t->sign_sha, 32)) {
        snprintf(why, why_size,
                 "\"signing_key_sha256\" is not the hash of "
                 "\"signing_key_spki_b64\"");
        return 0;
    }
    return 1;
}

static int trust_parse(const cJSON *j, veil_trust *t, char *why,
                       size_t why_size)
{
    if (!cJSON_IsObject(j))
        VEIL_CL_REFUSE("not a JSON object");
    const char *format = veil_cl_json_str(j, "format");
    if (format == NULL || strcmp(format, VEIL_CL_TRUST_FORMAT) != 0)
        VEIL_CL_REFUSE("\"format\" is not \"" VEIL_CL_TRUST_FORMAT "\"");
    const char *url = veil_cl_json_str(j, "url");
    if (url == NULL ||
        (strncmp(url, "https://", 8) != 0 && strncmp(url, "http://", 7) != 0))
        VEIL_CL_REFUSE("\"url\" is not an http(s) URL");
    if ((t->url = veil_cl_url_dup(url)) == NULL)
        VEIL_CL_REFUSE("out of memory");
    const cJSON *at = cJSON_GetObjectItemCaseSensitive(j, "enrolled_at");
    /* in range before the conversion (found by fuzz/fuzz_attest) */
    if (!cJSON_IsNumber(at) ||
        !(at->valuedouble >= 0 && at->valuedouble < 9.2e18))
        VEIL_CL_REFUSE("\"enrolled_at\" is not a time");
    t->enrolled_at = (long long)at->valuedouble;
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(j, "ek_verified");
    if (!cJSON_IsBool(b))
        VEIL_CL_REFUSE("\"ek_verified\" is not true or false");
    t->ek_verified = cJSON_IsTrue(b);
    b = cJSON_GetObjectItemCaseSensitive(j, "software_tpm");
    if (!cJSON_IsBool(b))
        VEIL_CL_REFUSE("\"software_tpm\" is not true or false");
    t->software_tpm = cJSON_IsTrue(b);
    if (!veil_cl_json_null(j, "ek_cert_sha256")) {
        if (!veil_cl_json_hex(j, "ek_cert_sha256", t->ek_cert_sha256, 32))
            VEIL_CL_REFUSE("\"ek_cert_sha256\" is not 64 hex digits");
        t->has_ek_cert = 1;
    }
    if (!veil_cl_json_b64(j, "ek_pubkey_b64", &t->ek_pub, &t->ek_pub_len))
        VEIL_CL_REFUSE("\"ek_pubkey_b64\" is not base64");
    if (!veil_cl_json_b64(j, "aik_pubkey_b64", &t->ak_pub, &t->ak_pub_len))
        VEIL_CL_REFUSE("\"aik_pubkey_b64\" is not base64");
    if (!veil_cl_json_hex(j, "aik_name", t->ak_name, VEIL_CL_NAME_LEN))
        VEIL_CL_REFUSE("\"aik_name\" is not %d hex digits",
                       2 * VEIL_CL_NAME_LEN);
    if (!veil_cl_json_hex(j, "encryption_key_sha256", t->enc_sha, 32))
        VEIL_CL_REFUSE("\"encryption_key_sha256\" is not 64 hex digits");
    if (!veil_cl_json_b64(j, "signing_key_spki_b64", &t->sign_spki,
                          &t->sign_spki_len))
        VEIL_CL_REFUSE("\"signing_key_spki_b64\" is not base64");
    if (!veil_cl_json_hex(j, "signing_key_sha256", t->sign_sha, 32))
        VEIL_CL_REFUSE("\"signing_key_sha256\" is not 64 hex digits");
    if (!veil_cl_pcrs_parse(j, &t->sel, t->golden, why, why_size))
        return 0;
    /* optional (files enrolled before v2's TPM KEM keys have none) */
    const char *kem = veil_cl_json_str(j, "kem_keys");
    t->kem_tpm = kem && strcmp(kem, "tpm") == 0;
    return 1;
}

veil_client_status veil_trust_load(const char *path, veil_trust **out,
                                   veil_client_error *err)
{
    char why[320] = "";
    size_t len = 0;
    veil_engine *e = NULL;
    if (err)
        memset(err, 0, sizeof *err);
    if (out == NULL)
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                            "veil_trust_load: no output");
    *out = NULL;
    if (path == NULL)
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                            "no trust file given");
    char *text = read_file(path, MAX_TRUST_FILE, &len, why, sizeof why);
    if (text == NULL)
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_IO,
                            "trust file: %s", why);
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    veil_trust *t = calloc(1, sizeof *t);
    int ok = 0;
    if (j == NULL)
        snprintf(why, sizeof why, "not JSON");
    else if (t == NULL)
        snprintf(why, sizeof why, "out of memory");
    else if (trust_parse(j, t, why, sizeof why)) {
        /* The keys are parsed once here so that a damaged file is a
         * configuration error now, not a security error per answer. */
        if (veil_engine_new(NULL, &e) != VEIL_OK)
            snprintf(why, sizeof why, "starting an engine: %.200s",
                     veil_cl_why_last());
        else
            ok = trust_keys_ok(e, t, why, sizeof why);
    }
    veil_engine_free(e);
    cJSON_Delete(j);
    if (!ok) {
        veil_trust_free(t);
        return veil_cl_fail(err, VEIL_CLIENT_E_CONFIG, 0, VEIL_E_ARG,
                            "trust file %s: %s", path, why);
    }
    *out = t;
    return VEIL_CLIENT_OK;
}
