/* service/http_tls.c: the HTTP layer's TLS certificate and key (GnuTLS,
 * which libmicrohttpd uses).  They are read here, checked to belong
 * together, and handed to each handshake by MHD_OPTION_HTTPS_CERT_CALLBACK,
 * so that a reload (svc_http_reload_tls) swaps them for new connections
 * while the listening socket stays.  Connections already open keep the
 * certificate of their handshake.
 *
 * The key may stay in a PKCS#11 token (tls_key = pkcs11:...): GnuTLS
 * opens it by its URI (gnutls_privkey_import_url) through the module
 * given (or p11-kit's registered modules) and signs the handshakes there.
 * GnuTLS opens its own session on the token; when the module is the one
 * veild's engine already logged in to (same process, same module), the
 * token's login is shared and the PIN callback is not even asked.  The
 * PIN comes from the PIN source (never argv, never logged), read into a
 * secret buffer for each request of GnuTLS and wiped; a PIN the token
 * rejected is never offered again (the callback refuses a second
 * attempt). */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <gnutls/abstract.h>
#include <gnutls/gnutls.h>
#include <gnutls/pkcs11.h>

#include "http_int.h"

/* The most certificates a chain may have. */
#define CHAIN_MAX 16
/* The largest PEM file read. */
#define PEM_MAX (1u << 20)

struct svc_tls {
    gnutls_pcert_st chain[CHAIN_MAX];
    unsigned n;
    gnutls_privkey_t key;
    char *pin_source;      /* a token key's PIN source (pin_cb), or NULL */
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
    free(t->pin_source);
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

/* GnuTLS's PKCS#11 layer, once per process: the module given (a path),
 * or p11-kit's registered modules.  0, or -1 with err. */
static int p11_init(const char *module, char *err, size_t err_size)
{
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    static int done, rc;

    pthread_mutex_lock(&lock);
    if (!done) {
        int manual = module && strchr(module, '/');
        rc = gnutls_pkcs11_init(
            manual ? GNUTLS_PKCS11_FLAG_MANUAL : GNUTLS_PKCS11_FLAG_AUTO, NULL);
        if (rc == 0 && manual)
            rc = gnutls_pkcs11_add_provider(module, NULL);
        done = 1;
    }
    pthread_mutex_unlock(&lock);
    if (rc < 0)
        snprintf(err, err_size,
                 "tls_key: GnuTLS cannot load the PKCS#11 module %s (%s)",
                 module && strchr(module, '/') ? module
                                               : "(p11-kit's registered ones)",
                 gnutls_strerror(rc));
    return rc < 0 ? -1 : 0;
}

/* GnuTLS's PIN callback for a token key: the PIN from the PIN source,
 * once (a rejected PIN is never offered again). */
static int pin_cb(void *userdata, int attempt, const char *token_url,
                  const char *token_label, unsigned int flags, char *pin,
                  size_t pin_max)
{
    const char *spec = userdata;
    veil_pin_source ps;
    veil_secbuf *p = NULL;
    int rc = -1;
    (void)token_url;
    (void)token_label;

    if (attempt > 0 || (flags & GNUTLS_PIN_WRONG) || spec == NULL ||
        veil_pin_source_parse(spec, &ps) != VEIL_OK)
        return -1;
    if (veil_pin_read(&ps, "PIN for the TLS key's token: ", &p) == VEIL_OK &&
        veil_secbuf_len(p) < pin_max) {
        memcpy(pin, veil_secbuf_data(p), veil_secbuf_len(p));
        pin[veil_secbuf_len(p)] = '\0';
        rc = 0;
    }
    veil_secbuf_free(p);
    return rc;
}

/* The key of tls_key = pkcs11:... into t->key.  0, or -1 with err naming
 * the setting and the URI (never the PIN). */
static int key_from_token(svc_tls *t, const char *uri,
                          const svc_http_config *cfg, char *err,
                          size_t err_size)
{
    int rc;

    if (p11_init(cfg ? cfg->tls_module : NULL, err, err_size) != 0)
        return -1;
    if (cfg && cfg->tls_pin_source &&
        (t->pin_source = strdup(cfg->tls_pin_source)) == NULL) {
        snprintf(err, err_size, "out of memory");
        return -1;
    }
    if ((rc = gnutls_privkey_init(&t->key)) < 0) {
        snprintf(err, err_size, "tls_key: %s", gnutls_strerror(rc));
        return -1;
    }
    gnutls_privkey_set_pin_function(t->key, pin_cb, t->pin_source);
    if ((rc = gnutls_privkey_import_url(t->key, uri, 0)) < 0) {
        snprintf(err, err_size,
                 "tls_key %s: GnuTLS cannot use this key in the token (%s)%s",
                 uri, gnutls_strerror(rc),
                 rc == GNUTLS_E_PKCS11_PIN_ERROR ||
                         rc == GNUTLS_E_PKCS11_PIN_LOCKED
                     ? "; the PIN comes from pin_source"
                     : "");
        return -1;
    }
    return 0;
}

svc_tls *svc_tls_load(const char *cert_path, const char *key_path,
                      const svc_http_config *cfg, char *err, size_t err_size)
{
    svc_tls *t = calloc(1, sizeof *t);
    size_t clen = 0, klen = 0;
    char *cert = NULL, *key = NULL;
    int rc;

    if (t == NULL) {
        snprintf(err, err_size, "out of memory");
        return NULL;
    }
    int in_token = strncmp(key_path, "pkcs11:", 7) == 0;
    if ((cert = read_file("tls_cert", cert_path, &clen, err, err_size)) ==
            NULL ||
        (!in_token &&
         (key = read_file("tls_key", key_path, &klen, err, err_size)) == NULL))
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
    if (in_token) {
        if (key_from_token(t, key_path, cfg, err, err_size) != 0)
            goto fail;
    } else if ((rc = gnutls_privkey_init(&t->key)) < 0 ||
               (rc = gnutls_privkey_import_x509_raw(
                    t->key, &kd, GNUTLS_X509_FMT_PEM, NULL, 0)) < 0) {
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
    svc_tls *t = svc_tls_load(cert, key, &h->cfg, err, err_size);
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
    svc_tls *t;

    if (strncmp(key, "pkcs11:", 7) == 0) { /* no token opened: the chain */
        gnutls_pcert_st chain[CHAIN_MAX];
        unsigned n = CHAIN_MAX;
        size_t len = 0;
        char *pem = read_file("tls_cert", cert, &len, err, err_size);
        int rc;

        if (pem == NULL)
            return -1;
        gnutls_datum_t cd = {(unsigned char *)pem, (unsigned)len};
        rc = gnutls_pcert_list_import_x509_raw(chain, &n, &cd,
                                               GNUTLS_X509_FMT_PEM, 0);
        free(pem);
        if (rc < 0 || n == 0) {
            snprintf(err, err_size,
                     "tls_cert %s: not a PEM certificate chain (%s)", cert,
                     rc < 0 ? gnutls_strerror(rc) : "none found");
            return -1;
        }
        for (unsigned i = 0; i < n; i++)
            gnutls_pcert_deinit(&chain[i]);
        return 0;
    }
    if ((t = svc_tls_load(cert, key, NULL, err, err_size)) == NULL)
        return -1;
    svc_tls_free(t);
    return 0;
}
