/* service/http_tls.c: the HTTP layer's TLS certificate and key (GnuTLS,
 * which libmicrohttpd uses).  They are read here, checked to belong
 * together, and handed to each handshake by MHD_OPTION_HTTPS_CERT_CALLBACK,
 * so that a reload (svc_http_reload_tls) swaps them for new connections
 * while the listening socket stays.  Connections already open keep the
 * certificate of their handshake. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gnutls/abstract.h>
#include <gnutls/gnutls.h>

#include "http_int.h"

/* The most certificates a chain may have. */
#define CHAIN_MAX 16
/* The largest PEM file read. */
#define PEM_MAX (1u << 20)

struct svc_tls {
    gnutls_pcert_st chain[CHAIN_MAX];
    unsigned n;
    gnutls_privkey_t key;
    struct svc_tls *older; /* replaced ones, freed with the server */
};

/* The whole of a PEM file (NUL-terminated), or NULL with err naming the
 * setting and the file. */
static char *read_file(const char *what, const char *path, size_t *len,
                       char *err, size_t err_size)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    size_t n = 0;

    if (f == NULL) {
        snprintf(err, err_size, "%s %s: %s", what, path, strerror(errno));
        return NULL;
    }
    if ((buf = malloc(PEM_MAX)) != NULL)
        n = fread(buf, 1, PEM_MAX - 1, f);
    fclose(f);
    if (buf == NULL || n == 0) {
        free(buf);
        snprintf(err, err_size, "%s %s: %s", what, path,
                 buf ? "empty or unreadable" : "out of memory");
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

static void tls_free_one(svc_tls *t)
{
    for (unsigned i = 0; i < t->n; i++)
        gnutls_pcert_deinit(&t->chain[i]);
    if (t->key)
        gnutls_privkey_deinit(t->key);
    free(t);
}

void svc_tls_free(svc_tls *t)
{
    while (t) {
        svc_tls *older = t->older;
        tls_free_one(t);
        t = older;
    }
}

/* 1 when the key's public half is the certificate's public key. */
static int key_matches(gnutls_privkey_t key, gnutls_pubkey_t cert_pub)
{
    gnutls_pubkey_t pub = NULL;
    gnutls_datum_t a = {NULL, 0}, b = {NULL, 0};
    int same = 0;

    if (gnutls_pubkey_init(&pub) == 0 &&
        gnutls_pubkey_import_privkey(pub, key, 0, 0) == 0 &&
        gnutls_pubkey_export2(pub, GNUTLS_X509_FMT_DER, &a) == 0 &&
        gnutls_pubkey_export2(cert_pub, GNUTLS_X509_FMT_DER, &b) == 0)
        same = a.size == b.size && memcmp(a.data, b.data, a.size) == 0;
    gnutls_free(a.data);
    gnutls_free(b.data);
    if (pub)
        gnutls_pubkey_deinit(pub);
    return same;
}

svc_tls *svc_tls_load(const char *cert_path, const char *key_path, char *err,
                      size_t err_size)
{
    svc_tls *t = calloc(1, sizeof *t);
    size_t clen = 0, klen = 0;
    char *cert = NULL, *key = NULL;
    int rc;

    if (t == NULL) {
        snprintf(err, err_size, "out of memory");
        return NULL;
    }
    if ((cert = read_file("tls_cert", cert_path, &clen, err, err_size)) ==
            NULL ||
        (key = read_file("tls_key", key_path, &klen, err, err_size)) == NULL)
        goto fail;
    gnutls_datum_t cd = {(unsigned char *)cert, (unsigned)clen};
    gnutls_datum_t kd = {(unsigned char *)key, (unsigned)klen};
    t->n = CHAIN_MAX;
    if ((rc = gnutls_pcert_list_import_x509_raw(t->chain, &t->n, &cd,
                                                GNUTLS_X509_FMT_PEM, 0)) < 0 ||
        t->n == 0) {
        t->n = 0;
        snprintf(err, err_size,
                 "tls_cert %s: not a PEM certificate chain (%s; at most %d "
                 "certificates, the server's first)",
                 cert_path, rc < 0 ? gnutls_strerror(rc) : "none found",
                 CHAIN_MAX);
        goto fail;
    }
    if ((rc = gnutls_privkey_init(&t->key)) < 0 ||
        (rc = gnutls_privkey_import_x509_raw(t->key, &kd, GNUTLS_X509_FMT_PEM,
                                             NULL, 0)) < 0) {
        snprintf(err, err_size,
                 "tls_key %s: not an unencrypted PEM private key (%s)",
                 key_path, gnutls_strerror(rc));
        goto fail;
    }
    if (!key_matches(t->key, t->chain[0].pubkey)) {
        snprintf(err, err_size,
                 "tls_key %s is not the key of the certificate in tls_cert "
                 "%s (the first certificate of the file must be the "
                 "server's)",
                 key_path, cert_path);
        goto fail;
    }
    veil_wipe(key, klen);
    free(key);
    free(cert);
    return t;
fail:
    if (key) {
        veil_wipe(key, klen);
        free(key);
    }
    free(cert);
    tls_free_one(t);
    return NULL;
}

/* MHD_OPTION_HTTPS_CERT_CALLBACK: the current certificate and key, found
 * through the session's MHD connection and its socket context. */
static int tls_retrieve(gnutls_session_t sess, const gnutls_datum_t *req_ca,
                        int nreqs, const gnutls_pk_algorithm_t *algos,
                        int n_algos, gnutls_pcert_st **pcert,
                        unsigned int *pcert_length, gnutls_privkey_t *key)
{
    struct MHD_Connection *c = gnutls_session_get_ptr(sess);
    const union MHD_ConnectionInfo *ci =
        c ? MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT)
          : NULL;
    conn *k = ci ? ci->socket_context : NULL;
    (void)req_ca;
    (void)nreqs;
    (void)algos;
    (void)n_algos;

    if (k == NULL || k->h == NULL)
        return -1;
    pthread_mutex_lock(&k->h->tls_lock);
    svc_tls *t = k->h->tls;
    pthread_mutex_unlock(&k->h->tls_lock);
    if (t == NULL)
        return -1;
    /* replaced ones live as long as the server: a handshake that took
     * them may still be using them */
    *pcert = t->chain;
    *pcert_length = t->n;
    *key = t->key;
    return 0;
}

void *svc_tls_callback(void)
{
    return (void *)tls_retrieve;
}

int svc_http_reload_tls(svc_http *h, const char *cert, const char *key,
                        char *err, size_t err_size)
{
    if (h == NULL || h->tls == NULL) {
        snprintf(err, err_size, "TLS is off: turning it on needs a restart");
        return -1;
    }
    svc_tls *t = svc_tls_load(cert, key, err, err_size);
    if (t == NULL)
        return -1;
    pthread_mutex_lock(&h->tls_lock);
    t->older = h->tls;
    h->tls = t;
    pthread_mutex_unlock(&h->tls_lock);
    return 0;
}

int svc_http_check_tls(const char *cert, const char *key, char *err,
                       size_t err_size)
{
    svc_tls *t = svc_tls_load(cert, key, err, err_size);

    if (t == NULL)
        return -1;
    svc_tls_free(t);
    return 0;
}
