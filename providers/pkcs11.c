/* The PKCS#11 provider: any module, loaded through p11-kit; token and keys
 * chosen by PKCS#11 URI (RFC 7512, parsed with p11-kit's URI API).
 *
 * Layout of this file:
 *   1. CKR names and the one wrapper every PKCS#11 call goes through
 *   2. modules (loaded once per process, reference counted)
 *   3. token instance: slot, mechanisms, login, session pool
 *   4. keys: find, load, generate, list, delete
 *   5. operations: RSA-OAEP (native or raw + host decode), ECDSA, and the
 *      optional in-token public/symmetric operations
 *
 * Threading: the module is initialised with CKF_OS_LOCKING_OK; each
 * operation borrows a session from the instance's pool (never shared by
 * two threads at once); the user logs in once per token.  Pool sessions
 * are closed only when the instance closes, so session objects (ephemeral
 * keys) live as long as the instance.
 */
#include "config.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <p11-kit/p11-kit.h>
#include <p11-kit/pkcs11.h>
#include <p11-kit/uri.h>

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/param_build.h>
#include <openssl/rand.h>

#include "engine_int.h"
#include "pin_memory.h"

#define PK "pkcs11"

/* ---- 1. CKR names and the call wrapper -------------------------------- */

static const struct {
    CK_RV rv;
    const char *name;
} ckr_names[] = {
#define N(x)                                                                   \
    {                                                                          \
        x, #x                                                                  \
    }
    N(CKR_OK),
    N(CKR_CANCEL),
    N(CKR_HOST_MEMORY),
    N(CKR_SLOT_ID_INVALID),
    N(CKR_GENERAL_ERROR),
    N(CKR_FUNCTION_FAILED),
    N(CKR_ARGUMENTS_BAD),
    N(CKR_ATTRIBUTE_READ_ONLY),
    N(CKR_ATTRIBUTE_SENSITIVE),
    N(CKR_ATTRIBUTE_TYPE_INVALID),
    N(CKR_ATTRIBUTE_VALUE_INVALID),
    N(CKR_DATA_INVALID),
    N(CKR_DATA_LEN_RANGE),
    N(CKR_DEVICE_ERROR),
    N(CKR_DEVICE_MEMORY),
    N(CKR_DEVICE_REMOVED),
    N(CKR_ENCRYPTED_DATA_INVALID),
    N(CKR_ENCRYPTED_DATA_LEN_RANGE),
    N(CKR_FUNCTION_NOT_SUPPORTED),
    N(CKR_KEY_HANDLE_INVALID),
    N(CKR_KEY_SIZE_RANGE),
    N(CKR_KEY_TYPE_INCONSISTENT),
    N(CKR_KEY_FUNCTION_NOT_PERMITTED),
    N(CKR_MECHANISM_INVALID),
    N(CKR_MECHANISM_PARAM_INVALID),
    N(CKR_OBJECT_HANDLE_INVALID),
    N(CKR_OPERATION_ACTIVE),
    N(CKR_OPERATION_NOT_INITIALIZED),
    N(CKR_PIN_INCORRECT),
    N(CKR_PIN_INVALID),
    N(CKR_PIN_LEN_RANGE),
    N(CKR_PIN_EXPIRED),
    N(CKR_PIN_LOCKED),
    N(CKR_SESSION_CLOSED),
    N(CKR_SESSION_COUNT),
    N(CKR_SESSION_HANDLE_INVALID),
    N(CKR_SESSION_READ_ONLY),
    N(CKR_SIGNATURE_INVALID),
    N(CKR_SIGNATURE_LEN_RANGE),
    N(CKR_TEMPLATE_INCOMPLETE),
    N(CKR_TEMPLATE_INCONSISTENT),
    N(CKR_TOKEN_NOT_PRESENT),
    N(CKR_TOKEN_NOT_RECOGNIZED),
    N(CKR_TOKEN_WRITE_PROTECTED),
    N(CKR_USER_ALREADY_LOGGED_IN),
    N(CKR_USER_NOT_LOGGED_IN),
    N(CKR_USER_PIN_NOT_INITIALIZED),
    N(CKR_USER_TYPE_INVALID),
    N(CKR_BUFFER_TOO_SMALL),
    N(CKR_CRYPTOKI_NOT_INITIALIZED),
    N(CKR_CRYPTOKI_ALREADY_INITIALIZED),
    N(CKR_DOMAIN_PARAMS_INVALID),
    N(CKR_CURVE_NOT_SUPPORTED),
    N(CKR_RANDOM_NO_RNG),
    N(CKR_NEED_TO_CREATE_THREADS),
    N(CKR_CANT_LOCK),
#undef N
};

static const char *ckr_name(CK_RV rv, char *buf, size_t n)
{
    for (size_t i = 0; i < sizeof ckr_names / sizeof ckr_names[0]; i++)
        if (ckr_names[i].rv == rv)
            return ckr_names[i].name;
    snprintf(buf, n, "CKR_0x%08lx", (unsigned long)rv);
    return buf;
}

static veil_rc rc_of(CK_RV rv)
{
    switch (rv) {
    case CKR_OK:
        return VEIL_OK;
    case CKR_PIN_INCORRECT:
    case CKR_PIN_INVALID:
    case CKR_PIN_LEN_RANGE:
    case CKR_PIN_EXPIRED:
        return VEIL_E_PIN;
    case CKR_PIN_LOCKED:
        return VEIL_E_PIN_LOCKED;
    case CKR_USER_NOT_LOGGED_IN:
    case CKR_USER_PIN_NOT_INITIALIZED:
        return VEIL_E_PIN_REQUIRED;
    case CKR_ENCRYPTED_DATA_INVALID:
    case CKR_ENCRYPTED_DATA_LEN_RANGE:
        return VEIL_E_DECRYPT;
    case CKR_SIGNATURE_INVALID:
    case CKR_SIGNATURE_LEN_RANGE:
        return VEIL_E_VERIFY;
    case CKR_MECHANISM_INVALID:
    case CKR_MECHANISM_PARAM_INVALID:
    case CKR_FUNCTION_NOT_SUPPORTED:
    case CKR_CURVE_NOT_SUPPORTED:
        return VEIL_E_UNSUPPORTED;
    case CKR_HOST_MEMORY:
    case CKR_DEVICE_MEMORY:
        return VEIL_E_NOMEM;
    case CKR_TOKEN_NOT_PRESENT:
    case CKR_SLOT_ID_INVALID:
    case CKR_DEVICE_REMOVED:
        return VEIL_E_NOT_FOUND;
    case CKR_KEY_SIZE_RANGE:
    case CKR_KEY_TYPE_INCONSISTENT:
    case CKR_KEY_FUNCTION_NOT_PERMITTED:
    case CKR_KEY_HANDLE_INVALID:
        return VEIL_E_KEY;
    case CKR_BUFFER_TOO_SMALL:
        return VEIL_E_BUFFER;
    default:
        return VEIL_E_TOKEN;
    }
}

typedef struct pk_module pk_module;

typedef struct pk_state {
    pk_module *mod;
    CK_FUNCTION_LIST *f;
    CK_SLOT_ID slot;
    CK_TOKEN_INFO token;
    char token_label[33];
    char token_serial[17];
    pthread_mutex_t pool_lock;
    CK_SESSION_HANDLE *pool; /* idle sessions */
    size_t pool_n, pool_cap;
    CK_SESSION_HANDLE *all; /* every session opened, to close at the end */
    unsigned char *owns;    /* per all[i]: holds session objects */
    unsigned char *active;  /* per all[i]: pk_op that may still be active */
    size_t all_n, all_cap;
    size_t parked; /* sessions kept out of the pool (see retire) */
    int logged_in;
    int lock_ready;
    int cancel_ok;           /* Cryptoki >= 3.0: C_XxxInit(NULL) ends an op */
    atomic_int no_ec_import; /* the token refused an EC public key object */
    unsigned quirks;         /* QUIRK_* from the table below */
} pk_state;

/* Per-module quirks, found by the module's C_GetInfo manufacturer, kept
 * here rather than in if-statements through the code.  (SoftHSM2's refusal
 * of OAEP-SHA256 is not listed: it is probed per key, so a fixed SoftHSM
 * is used natively without a change here.) */
#define QUIRK_NO_SESSION_KEYS (1u << 0)

static const struct {
    const char *manufacturer;
    unsigned quirks;
    const char *why;
} quirk_table[] = {
    {"tpm2-software.github.io", QUIRK_NO_SESSION_KEYS,
     "tpm2-pkcs11 keeps every generated key in its store (CKA_TOKEN=FALSE "
     "is refused)"},
};

static pk_state *st_of(veil_provider *p)
{
    return p->state;
}

/* Every PKCS#11 call goes through CALL(): it checks the function pointer
 * and logs a failing call with its CKR name at debug level. */
static CK_RV pk_done(veil_provider *p, const char *fn, CK_RV rv)
{
    char buf[24];

    if (rv != CKR_OK)
        veil_log(p->engine, VEIL_LOG_DEBUG, "pkcs11: %s -> %s", fn,
                 ckr_name(rv, buf, sizeof buf));
    return rv;
}

#define CALL(p, fn, ...)                                                       \
    pk_done((p), #fn,                                                          \
            st_of(p)->f->fn ? st_of(p)->f->fn(__VA_ARGS__)                     \
                            : CKR_FUNCTION_NOT_SUPPORTED)

/* Records an error of the token: code, "pkcs11 (token)", CKR name or
 * NULL. */
static veil_rc pk_verr(veil_provider *p, veil_rc code, const char *ckr,
                       const char *fmt, va_list ap)
    __attribute__((format(printf, 4, 0)));
static veil_rc pk_verr(veil_provider *p, veil_rc code, const char *ckr,
                       const char *fmt, va_list ap)
{
    char what[200], prov[48];

    vsnprintf(what, sizeof what, fmt, ap);
    snprintf(prov, sizeof prov, "pkcs11 (%s)",
             p && st_of(p)->token_label[0] ? st_of(p)->token_label : "module");
    return veil_err(code, prov, ckr, "%s", what);
}

/* Records a PKCS#11 failure: code, "pkcs11 (token)", CKR name. */
static veil_rc pk_fail(veil_provider *p, CK_RV rv, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static veil_rc pk_fail(veil_provider *p, CK_RV rv, const char *fmt, ...)
{
    char buf[24];
    va_list ap;
    veil_rc rc;

    va_start(ap, fmt);
    rc = pk_verr(p, rc_of(rv), ckr_name(rv, buf, sizeof buf), fmt, ap);
    va_end(ap);
    return rc;
}

/* A token's answer that cannot be true (a length past the buffer, a
 * value that is no key): VEIL_E_TOKEN, naming the token, no CKR (the
 * token said CKR_OK). */
static veil_rc pk_bad(veil_provider *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static veil_rc pk_bad(veil_provider *p, const char *fmt, ...)
{
    va_list ap;
    veil_rc rc;

    va_start(ap, fmt);
    rc = pk_verr(p, VEIL_E_TOKEN, NULL, fmt, ap);
    va_end(ap);
    return rc;
}

/* ---- 2. modules ------------------------------------------------------- */

struct pk_module {
    char key[512];  /* path or name as asked for */
    char name[128]; /* for messages */
    CK_FUNCTION_LIST *f;
    int refs;
    int finalize; /* we initialised it */
    pk_module *next;
};

static pthread_mutex_t modules_lock = PTHREAD_MUTEX_INITIALIZER;
static pk_module *modules;

/* PINs a token rejected (by token serial+label and SHA-256 of the PIN):
 * never sent again in this process, so veil cannot lock a token. */
typedef struct rejected_pin {
    char token[64];
    uint8_t pin_hash[32];
    struct rejected_pin *next;
} rejected_pin;
static rejected_pin *rejected_pins;

static int is_path(const char *m)
{
    return strchr(m, '/') != NULL || strstr(m, ".so") != NULL;
}

/* Loads a module by path, or by p11-kit module name (e.g. "softhsm2"). */
static veil_rc module_load(const char *which, CK_FUNCTION_LIST **out)
{
    CK_FUNCTION_LIST **all;
    char *file = NULL;

    *out = NULL;
    if (is_path(which)) {
        *out = p11_kit_module_load(which, P11_KIT_MODULE_UNMANAGED);
        if (!*out)
            return veil_err(
                VEIL_E_MODULE, PK, NULL, "cannot load PKCS#11 module %s: %s",
                which, p11_kit_message() ? p11_kit_message() : "not found");
        return VEIL_OK;
    }
    all = p11_kit_modules_load(NULL, P11_KIT_MODULE_UNMANAGED);
    for (size_t i = 0; all && all[i] && !file; i++) {
        char *name = p11_kit_module_get_name(all[i]);
        if (name && strcmp(name, which) == 0)
            file = p11_kit_module_get_filename(all[i]);
        free(name);
    }
    if (all)
        p11_kit_modules_release(all);
    if (!file)
        return veil_err(VEIL_E_MODULE, PK, NULL,
                        "no p11-kit module named \"%s\" (see `p11-kit "
                        "list-modules`; or give the module's path)",
                        which);
    *out = p11_kit_module_load(file, P11_KIT_MODULE_UNMANAGED);
    if (!*out) {
        veil_rc rc =
            veil_err(VEIL_E_MODULE, PK, NULL,
                     "cannot load PKCS#11 module %s (%s)", which, file);
        free(file);
        return rc;
    }
    free(file);
    return VEIL_OK;
}

static veil_rc module_acquire(const char *which, pk_module **out)
{
    CK_C_INITIALIZE_ARGS args = {0};
    pk_module *m;
    CK_RV rv;
    veil_rc rc;

    pthread_mutex_lock(&modules_lock);
    for (m = modules; m; m = m->next) {
        if (strcmp(m->key, which) == 0) {
            m->refs++;
            pthread_mutex_unlock(&modules_lock);
            *out = m;
            return VEIL_OK;
        }
    }
    m = calloc(1, sizeof *m);
    if (!m) {
        pthread_mutex_unlock(&modules_lock);
        return veil_err(VEIL_E_NOMEM, PK, NULL, "out of memory");
    }
    rc = module_load(which, &m->f);
    if (rc != VEIL_OK) {
        pthread_mutex_unlock(&modules_lock);
        free(m);
        return rc;
    }
    /* OS locking: the gateway calls from many threads at once. */
    args.flags = CKF_OS_LOCKING_OK;
    rv = m->f->C_Initialize(&args);
    if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
        char buf[24];
        p11_kit_module_release(m->f);
        pthread_mutex_unlock(&modules_lock);
        free(m);
        return veil_err(VEIL_E_MODULE, PK, ckr_name(rv, buf, sizeof buf),
                        "C_Initialize of %s failed", which);
    }
    m->finalize = rv == CKR_OK;
    m->refs = 1;
    snprintf(m->key, sizeof m->key, "%s", which);
    snprintf(m->name, sizeof m->name, "%s",
             strrchr(which, '/') ? strrchr(which, '/') + 1 : which);
    m->next = modules;
    modules = m;
    pthread_mutex_unlock(&modules_lock);
    *out = m;
    return VEIL_OK;
}

static void module_release(pk_module *m)
{
    pk_module **pp;

    if (!m)
        return;
    pthread_mutex_lock(&modules_lock);
    if (--m->refs == 0) {
        for (pp = &modules; *pp; pp = &(*pp)->next)
            if (*pp == m) {
                *pp = m->next;
                break;
            }
        if (m->finalize)
            m->f->C_Finalize(NULL);
        p11_kit_module_release(m->f);
        free(m);
    }
    pthread_mutex_unlock(&modules_lock);
}

/* ---- 3. token instance ------------------------------------------------ */

static void trim(char *dst, const CK_UTF8CHAR *src, size_t n)
{
    memcpy(dst, src, n);
    dst[n] = '\0';
    while (n > 0 && dst[n - 1] == ' ')
        dst[--n] = '\0';
}

/* trim() for a token's text that is shown (messages, logs, prompts):
 * control bytes become '?', a token's bytes are not ours to print. */
static void trim_shown(char *dst, const CK_UTF8CHAR *src, size_t n)
{
    trim(dst, src, n);
    for (char *c = dst; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f)
            *c = '?';
}

/* RFC 7512 puts module-name and module-path in the query ("?module-name=
 * softhsm2"); p11-kit drops them in silence from the path, where they would
 * be ignored.  The name of the first found there, or NULL. */
static const char *module_in_path(const char *where)
{
    static const char *const names[] = {"module-name", "module-path"};
    size_t end = strcspn(where, "?");
    const char *p = where + 7; /* past "pkcs11:" */

    while (p < where + end) {
        size_t len = strcspn(p, ";?");
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
            size_t n = strlen(names[i]);
            if (len > n && strncasecmp(p, names[i], n) == 0 && p[n] == '=')
                return names[i];
        }
        p += len;
        if (*p == ';')
            p++;
        else
            break;
    }
    return NULL;
}

/* Parses a URI; refuses pin-value (a PIN must not live in a URI that ends
 * up in argv, config files or logs), and module-name or module-path in the
 * path (RFC 7512 allows them in the query only). */
static veil_rc uri_parse(const char *where, P11KitUri **out)
{
    P11KitUri *uri = p11_kit_uri_new();
    const char *misplaced = module_in_path(where);
    int r;

    *out = NULL;
    if (!uri)
        return veil_err(VEIL_E_NOMEM, PK, NULL, "out of memory");
    if (misplaced) {
        p11_kit_uri_free(uri);
        return veil_err(VEIL_E_ARG, PK, NULL,
                        "%s is a query attribute of a PKCS#11 URI (RFC "
                        "7512): write pkcs11:token=...;object=...?%s=..., "
                        "after a '?', not after a ';'",
                        misplaced, misplaced);
    }
    r = p11_kit_uri_parse(where, P11_KIT_URI_FOR_ANY, uri);
    if (r != P11_KIT_URI_OK) {
        p11_kit_uri_free(uri);
        return veil_err(VEIL_E_ARG, PK, NULL, "bad PKCS#11 URI: %s",
                        p11_kit_uri_message(r));
    }
    if (p11_kit_uri_get_pin_value(uri)) {
        p11_kit_uri_free(uri);
        return veil_err(VEIL_E_ARG, PK, NULL,
                        "pin-value in a URI is refused (it would end up in "
                        "argv or logs); use pin-source=file:... or a PIN "
                        "source option");
    }
    *out = uri;
    return VEIL_OK;
}

static int pk_claims(const char *where)
{
    return strncmp(where, "pkcs11:", 7) == 0;
}

/* The module a URI asks for, else the engine's default. */
static const char *uri_module(const veil_engine *e, P11KitUri *uri)
{
    const char *m = p11_kit_uri_get_module_path(uri);

    if (!m)
        m = p11_kit_uri_get_module_name(uri);
    if (!m)
        m = e->cfg.pkcs11_module;
    return m;
}

/* Whether the URI names a token at all. */
static int uri_has_token(P11KitUri *uri)
{
    CK_TOKEN_INFO *t = p11_kit_uri_get_token_info(uri);
    static const CK_UTF8CHAR zero[32];

    return t &&
           (memcmp(t->label, zero, sizeof t->label) != 0 ||
            memcmp(t->serialNumber, zero, sizeof t->serialNumber) != 0 ||
            memcmp(t->model, zero, sizeof t->model) != 0 ||
            memcmp(t->manufacturerID, zero, sizeof t->manufacturerID) != 0);
}

/* A URI with no token attributes means the default token. */
static const char *token_uri_for(const veil_engine *e, const char *where,
                                 P11KitUri *uri)
{
    if (!uri_has_token(uri) && e->cfg.default_token)
        return e->cfg.default_token;
    return where;
}

static veil_rc pk_instance_id(const veil_engine *e, const char *where, char *id,
                              size_t n)
{
    P11KitUri *uri, *tok = NULL;
    const char *twhere, *module;
    CK_TOKEN_INFO *t;
    char label[33], serial[17], model[17], manuf[33];
    veil_rc rc;

    rc = uri_parse(where, &uri);
    if (rc != VEIL_OK)
        return rc;
    twhere = token_uri_for(e, where, uri);
    if (twhere != where) {
        rc = uri_parse(twhere, &tok);
        if (rc != VEIL_OK) {
            p11_kit_uri_free(uri);
            return rc;
        }
    }
    module = uri_module(e, uri);
    if (!module && tok)
        module = uri_module(e, tok);
    t = p11_kit_uri_get_token_info(tok ? tok : uri);
    trim(label, t->label, 32);
    trim(serial, t->serialNumber, 16);
    trim(model, t->model, 16);
    trim(manuf, t->manufacturerID, 32);
    snprintf(id, n, "%s|%s|%s|%s|%s", module ? module : "(p11-kit)", label,
             serial, model, manuf);
    p11_kit_uri_free(uri);
    p11_kit_uri_free(tok);
    return VEIL_OK;
}

/* Sessions.  An operation borrows an idle session from the pool
 * (session_get) and gives it back (session_put).  A session goes back into
 * the pool only in a known-idle state.  After a failure that may leave an
 * operation active -- an init succeeded and the call after it failed;
 * tpm2-pkcs11 leaves C_Decrypt active after a refused ciphertext, against
 * the standard -- the caller marks the session with session_mark() before
 * giving it back, and session_put() then ends the operation or replaces the
 * session, so one bad ciphertext cannot leave every later operation failing
 * with CKR_OPERATION_ACTIVE. */
typedef enum pk_op {
    PK_OP_NONE = 0,
    PK_OP_DECRYPT,
    PK_OP_ENCRYPT,
    PK_OP_SIGN,
    PK_OP_VERIFY,
    PK_OP_FIND,
} pk_op;

/* Index of h in all[], or all_n.  Called with pool_lock held. */
static size_t session_index(const pk_state *s, CK_SESSION_HANDLE h)
{
    size_t i;

    for (i = 0; i < s->all_n && s->all[i] != h; i++)
        ;
    return i;
}

/* Records a new session in all[] and makes room for it in the pool.
 * Called with pool_lock held. */
static veil_rc session_track(pk_state *s, CK_SESSION_HANDLE h)
{
    if (s->all_n == s->all_cap) {
        size_t cap = s->all_cap ? 2 * s->all_cap : 8;
        CK_SESSION_HANDLE *a = realloc(s->all, cap * sizeof *a);
        CK_SESSION_HANDLE *b = a ? realloc(s->pool, cap * sizeof *b) : NULL;
        unsigned char *o = b ? realloc(s->owns, cap) : NULL;
        unsigned char *m = o ? realloc(s->active, cap) : NULL;

        if (a)
            s->all = a;
        if (b)
            s->pool = b;
        if (o)
            s->owns = o;
        if (m)
            s->active = m;
        if (!m)
            return veil_err(VEIL_E_NOMEM, PK, NULL, "out of memory");
        s->all_cap = s->pool_cap = cap;
    }
    s->owns[s->all_n] = 0;
    s->active[s->all_n] = PK_OP_NONE;
    s->all[s->all_n++] = h;
    return VEIL_OK;
}

static veil_rc session_get(veil_provider *p, CK_SESSION_HANDLE *out)
{
    pk_state *s = st_of(p);
    CK_SESSION_HANDLE h;
    CK_RV rv;
    veil_rc rc;

    pthread_mutex_lock(&s->pool_lock);
    if (s->pool_n > 0) {
        *out = s->pool[--s->pool_n];
        pthread_mutex_unlock(&s->pool_lock);
        return VEIL_OK;
    }
    pthread_mutex_unlock(&s->pool_lock);
    rv = CALL(p, C_OpenSession, s->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION,
              NULL, NULL, &h);
    if (rv != CKR_OK)
        return pk_fail(p, rv, "cannot open a session");
    pthread_mutex_lock(&s->pool_lock);
    rc = session_track(s, h);
    pthread_mutex_unlock(&s->pool_lock);
    if (rc != VEIL_OK) {
        CALL(p, C_CloseSession, h);
        return rc;
    }
    *out = h;
    return VEIL_OK;
}

/* The operation `op` may still be active on h (set before session_put). */
static void session_mark(veil_provider *p, CK_SESSION_HANDLE h, pk_op op)
{
    pk_state *s = st_of(p);
    size_t i;

    pthread_mutex_lock(&s->pool_lock);
    i = session_index(s, h);
    if (i < s->all_n)
        s->active[i] = (unsigned char)op;
    pthread_mutex_unlock(&s->pool_lock);
}

/* h holds session objects (session-only keys): closing it would destroy
 * them, so it is never replaced. */
static void session_owns_objects(veil_provider *p, CK_SESSION_HANDLE h)
{
    pk_state *s = st_of(p);
    size_t i;

    pthread_mutex_lock(&s->pool_lock);
    i = session_index(s, h);
    if (i < s->all_n)
        s->owns[i] = 1;
    pthread_mutex_unlock(&s->pool_lock);
}

/* Ends `op` on h where the module supports it: Cryptoki 3.0 terminates an
 * active operation when its init is called with a NULL mechanism.  Older
 * modules are not asked (a 2.x module need not expect NULL there). */
static int session_cancel(veil_provider *p, CK_SESSION_HANDLE h, pk_op op)
{
    CK_RV rv = CKR_FUNCTION_NOT_SUPPORTED;

    if (!st_of(p)->cancel_ok)
        return 0;
    switch (op) {
    case PK_OP_DECRYPT:
        rv = CALL(p, C_DecryptInit, h, NULL, CK_INVALID_HANDLE);
        break;
    case PK_OP_ENCRYPT:
        rv = CALL(p, C_EncryptInit, h, NULL, CK_INVALID_HANDLE);
        break;
    case PK_OP_SIGN:
        rv = CALL(p, C_SignInit, h, NULL, CK_INVALID_HANDLE);
        break;
    case PK_OP_VERIFY:
        rv = CALL(p, C_VerifyInit, h, NULL, CK_INVALID_HANDLE);
        break;
    case PK_OP_FIND:
        rv = CALL(p, C_FindObjectsFinal, h);
        break;
    case PK_OP_NONE:
        rv = CKR_OK;
        break;
    }
    return rv == CKR_OK;
}

/* A marked session: back to the pool when its operation could be ended;
 * otherwise a fresh session takes its place.  The fresh one is opened
 * before the old one is closed, so the application never drops to zero
 * sessions (which logs the token out).  A session holding session objects,
 * or one that cannot be replaced, is parked: kept open, never used again,
 * closed with the instance. */
static void session_retire(veil_provider *p, CK_SESSION_HANDLE h, pk_op op,
                           int owns)
{
    pk_state *s = st_of(p);
    CK_SESSION_HANDLE fresh = CK_INVALID_HANDLE;
    size_t i;

    if (session_cancel(p, h, op)) {
        pthread_mutex_lock(&s->pool_lock);
        i = session_index(s, h);
        if (i < s->all_n)
            s->active[i] = PK_OP_NONE;
        s->pool[s->pool_n++] = h;
        pthread_mutex_unlock(&s->pool_lock);
        return;
    }
    if (!owns &&
        CALL(p, C_OpenSession, s->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION,
             NULL, NULL, &fresh) == CKR_OK) {
        pthread_mutex_lock(&s->pool_lock);
        i = session_index(s, h);
        if (i < s->all_n) {
            s->all[i] = fresh;
            s->owns[i] = 0;
            s->active[i] = PK_OP_NONE;
        }
        s->pool[s->pool_n++] = fresh;
        pthread_mutex_unlock(&s->pool_lock);
        CALL(p, C_CloseSession, h);
        veil_log(p->engine, VEIL_LOG_DEBUG,
                 "pkcs11: %s: a session kept an operation active after a "
                 "failure; replaced it",
                 p->caps.description);
        return;
    }
    pthread_mutex_lock(&s->pool_lock);
    s->parked++;
    pthread_mutex_unlock(&s->pool_lock);
    veil_log(p->engine, VEIL_LOG_WARN,
             "pkcs11: %s: a session kept an operation active after a failure "
             "and %s; it is no longer used",
             p->caps.description,
             owns ? "holds session keys" : "could not be replaced");
}

/* After an init (init_rv) and the call that should end its operation
 * (rv): marks sh when that operation may still be active.  Any failure
 * after a successful init counts, whatever the standard says it does, and
 * so does an init refused because an operation is already active. */
static void session_check(veil_provider *p, CK_SESSION_HANDLE sh, pk_op op,
                          CK_RV init_rv, CK_RV rv)
{
    if ((init_rv == CKR_OK && rv != CKR_OK) || init_rv == CKR_OPERATION_ACTIVE)
        session_mark(p, sh, op);
}

/* Gives a session back: into the pool when idle, through session_retire()
 * when session_mark() said an operation may still be active. */
static void session_put(veil_provider *p, CK_SESSION_HANDLE h)
{
    pk_state *s = st_of(p);
    pk_op op = PK_OP_NONE;
    int owns = 0;
    size_t i;

    pthread_mutex_lock(&s->pool_lock);
    i = session_index(s, h);
    if (i < s->all_n) {
        op = (pk_op)s->active[i];
        owns = s->owns[i];
    }
    if (op == PK_OP_NONE) {
        s->pool[s->pool_n++] = h; /* pool_cap == all_cap >= sessions opened */
        pthread_mutex_unlock(&s->pool_lock);
        return;
    }
    pthread_mutex_unlock(&s->pool_lock);
    session_retire(p, h, op, owns);
}

static void pin_hash(const veil_secbuf *pin, uint8_t out[32])
{
    EVP_Digest(veil_secbuf_data((veil_secbuf *)pin), veil_secbuf_len(pin), out,
               NULL, EVP_sha256(), NULL);
}

static veil_rc pk_login(veil_provider *p, P11KitUri *uri)
{
    pk_state *s = st_of(p);
    const char *src = p11_kit_uri_get_pin_source(uri);
    veil_pin_source ps = p->engine->cfg.pin;
    char prompt[80], tok[64];
    veil_secbuf *pin = NULL;
    uint8_t h[32];
    const char *memdir = p->engine->cfg.pin_memory_dir;
    char file[4200], why[4300];
    CK_SESSION_HANDLE sh;
    CK_RV rv;
    veil_rc rc;

    if (!(s->token.flags & CKF_LOGIN_REQUIRED))
        return VEIL_OK;
    if (src) {
        rc = veil_pin_source_parse(src, &ps);
        if (rc != VEIL_OK)
            return rc;
    }
    if (ps.kind == VEIL_PIN_NONE &&
        !(s->token.flags & CKF_PROTECTED_AUTHENTICATION_PATH))
        return veil_err(VEIL_E_PIN_REQUIRED, "pkcs11", NULL,
                        "token \"%s\" needs a PIN: give a PIN source "
                        "(file:, env: or prompt)",
                        s->token_label);
    snprintf(prompt, sizeof prompt, "PIN for token \"%s\": ", s->token_label);
    snprintf(tok, sizeof tok, "%s|%s", s->token_serial, s->token_label);
    if (ps.kind != VEIL_PIN_NONE) {
        rc = veil_pin_read(&ps, prompt, &pin);
        if (rc != VEIL_OK)
            return rc;
        pin_hash(pin, h);
        pthread_mutex_lock(&modules_lock);
        for (rejected_pin *r = rejected_pins; r; r = r->next)
            if (strcmp(r->token, tok) == 0 && memcmp(r->pin_hash, h, 32) == 0) {
                pthread_mutex_unlock(&modules_lock);
                veil_secbuf_free(pin);
                return veil_err(VEIL_E_PIN, "pkcs11", "CKR_PIN_INCORRECT",
                                "token \"%s\" already rejected this PIN; not "
                                "sending it again (the token could lock)",
                                s->token_label);
            }
        pthread_mutex_unlock(&modules_lock);
        /* a rejection seen by an earlier run on this host */
        if (memdir && pinmem_rejected_before(memdir, s->token_serial, pin, file,
                                             sizeof file)) {
            veil_secbuf_free(pin);
            veil_wipe(h, sizeof h);
            return veil_err(VEIL_E_PIN, "pkcs11", "CKR_PIN_INCORRECT",
                            "token \"%s\" rejected this PIN before; not "
                            "sent again (the token could lock): fix the PIN "
                            "source, or delete %s if the token now has this "
                            "PIN",
                            s->token_label, file);
        }
    }
    rc = session_get(p, &sh);
    if (rc != VEIL_OK) {
        veil_secbuf_free(pin);
        return rc;
    }
    rv = CALL(p, C_Login, sh, CKU_USER, pin ? veil_secbuf_data(pin) : NULL,
              pin ? veil_secbuf_len(pin) : 0);
    session_put(p, sh);
    if (rv == CKR_PIN_INCORRECT) {
        rejected_pin *r = calloc(1, sizeof *r);
        if (r) {
            snprintf(r->token, sizeof r->token, "%s", tok);
            memcpy(r->pin_hash, h, 32);
            pthread_mutex_lock(&modules_lock);
            r->next = rejected_pins;
            rejected_pins = r;
            pthread_mutex_unlock(&modules_lock);
        }
        if (memdir && pin &&
            pinmem_remember(memdir, s->token_serial, pin, why, sizeof why))
            veil_log(p->engine, VEIL_LOG_WARN,
                     "cannot remember the rejected PIN: %s", why);
    } else if (memdir && (rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN)) {
        pinmem_forget(memdir, s->token_serial);
    }
    veil_secbuf_free(pin);
    veil_wipe(h, sizeof h);
    if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN)
        return pk_fail(p, rv, "login to token \"%s\" failed", s->token_label);
    s->logged_in = rv == CKR_OK;
    return VEIL_OK;
}

/* The most slots or mechanisms veil reads from a module's list. */
#define PK_LIST_MAX 4096

/* Narrows the capabilities to the token's mechanism list. */
static void pk_read_mechs(veil_provider *p)
{
    pk_state *s = st_of(p);
    CK_MECHANISM_TYPE *list = NULL;
    CK_ULONG n = 0, n2;
    unsigned caps = 0;

    /* A list longer than was allocated (n2 > n) is not read: the token
     * then offers nothing but what needs no mechanism. */
    if (CALL(p, C_GetMechanismList, s->slot, NULL, &n) != CKR_OK ||
        n > PK_LIST_MAX)
        n = 0;
    if (n > 0 && (list = calloc(n, sizeof *list)) != NULL) {
        n2 = n;
        if (CALL(p, C_GetMechanismList, s->slot, list, &n2) != CKR_OK ||
            n2 > n) {
            veil_log(p->engine, VEIL_LOG_WARN,
                     "pkcs11: %s: the mechanism list could not be read "
                     "(%lu entries said for a list of %lu); no mechanism "
                     "is used",
                     s->mod->name, (unsigned long)n2, (unsigned long)n);
            n2 = 0;
        }
        for (CK_ULONG i = 0; i < n2; i++) {
            CK_MECHANISM_INFO mi = {0};
            CALL(p, C_GetMechanismInfo, s->slot, list[i], &mi);
            switch (list[i]) {
            case CKM_RSA_PKCS_KEY_PAIR_GEN:
                caps |= VEIL_CAP_RSA_GEN;
                p->caps.rsa_min_bits = (unsigned)mi.ulMinKeySize;
                p->caps.rsa_max_bits = (unsigned)mi.ulMaxKeySize;
                break;
            case CKM_RSA_PKCS_OAEP:
                /* Which hashes really work is probed per key. */
                caps |= VEIL_CAP_RSA_OAEP_SHA256 | VEIL_CAP_RSA_OAEP_SHA1;
                break;
            case CKM_RSA_X_509:
                caps |= VEIL_CAP_RSA_RAW;
                break;
            case CKM_EC_KEY_PAIR_GEN:
                caps |= VEIL_CAP_EC_GEN;
                break;
            case CKM_ECDSA:
                caps |= VEIL_CAP_ECDSA;
                break;
            case CKM_AES_GCM:
                caps |= VEIL_CAP_AES_GCM;
                break;
            case CKM_ECDH1_DERIVE:
                /* tpm2-pkcs11 1.9.0 lists none: it never gets the bit. */
                if (mi.flags & CKF_DERIVE)
                    caps |= VEIL_CAP_ECDH;
                break;
            default:
                break;
            }
        }
    }
    free(list);
    if (s->token.flags & CKF_RNG)
        caps |= VEIL_CAP_RANDOM;
    if (!(s->token.flags & CKF_WRITE_PROTECTED))
        caps |= VEIL_CAP_PERSIST;
    p->caps.mechs &= caps;
}

static veil_rc pk_find_slot(veil_provider *p, P11KitUri *turi)
{
    pk_state *s = st_of(p);
    CK_SLOT_ID *slots = NULL;
    CK_ULONG n = 0;
    char seen[256] = "";
    int found = 0;
    CK_RV rv;

    rv = CALL(p, C_GetSlotList, CK_TRUE, NULL, &n);
    if (rv == CKR_OK && n > PK_LIST_MAX)
        return pk_bad(NULL, "%s says it has %lu slots (veil reads at most %d)",
                      s->mod->name, (unsigned long)n, PK_LIST_MAX);
    if (rv == CKR_OK && n > 0) {
        CK_ULONG size = n;
        slots = calloc(n, sizeof *slots);
        if (!slots)
            return veil_err(VEIL_E_NOMEM, PK, NULL, "out of memory");
        rv = CALL(p, C_GetSlotList, CK_TRUE, slots, &n);
        if (rv == CKR_OK && n > size) {
            free(slots);
            return pk_bad(NULL, "%s returned %lu slots into a list of %lu",
                          s->mod->name, (unsigned long)n, (unsigned long)size);
        }
    }
    if (rv != CKR_OK) {
        free(slots);
        return pk_fail(NULL, rv, "cannot list the slots of %s", s->mod->name);
    }
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        char label[33];
        if (CALL(p, C_GetTokenInfo, slots[i], &ti) != CKR_OK)
            continue;
        trim_shown(label, ti.label, 32);
        if (!(ti.flags & CKF_TOKEN_INITIALIZED))
            continue;
        if (strlen(seen) + strlen(label) + 4 < sizeof seen)
            snprintf(seen + strlen(seen), sizeof seen - strlen(seen),
                     "%s\"%s\"", seen[0] ? ", " : "", label);
        if (!p11_kit_uri_match_token_info(turi, &ti))
            continue;
        if (found++) {
            free(slots);
            return veil_err(VEIL_E_AMBIGUOUS, PK, NULL,
                            "more than one token in %s matches; name one with "
                            "token= or serial= (tokens: %s)",
                            s->mod->name, seen);
        }
        s->slot = slots[i];
        s->token = ti;
    }
    free(slots);
    if (!found)
        return veil_err(VEIL_E_NOT_FOUND, PK, NULL,
                        "no token matching the URI in %s (tokens: %s)",
                        s->mod->name, seen[0] ? seen : "none");
    trim_shown(s->token_label, s->token.label, 32);
    trim(s->token_serial, s->token.serialNumber, 16);
    return VEIL_OK;
}

static void pk_read_quirks(veil_provider *p)
{
    pk_state *s = st_of(p);
    CK_INFO info;
    char manuf[33];

    if (CALL(p, C_GetInfo, &info) != CKR_OK)
        return;
    s->cancel_ok = info.cryptokiVersion.major >= 3;
    trim_shown(manuf, info.manufacturerID, 32);
    for (size_t i = 0; i < sizeof quirk_table / sizeof quirk_table[0]; i++)
        if (strcmp(manuf, quirk_table[i].manufacturer) == 0) {
            s->quirks |= quirk_table[i].quirks;
            veil_log(p->engine, VEIL_LOG_DEBUG, "pkcs11: quirk: %s",
                     quirk_table[i].why);
        }
}

/* Appends text to buf (cut when full). */
static void append(char *buf, size_t size, const char *text)
{
    size_t used = strlen(buf);

    if (used + 1 < size)
        snprintf(buf + used, size - used, "%s", text);
}

/* A URI that names no module (nor does the engine): its token is looked
 * for in every module registered with p11-kit (p11-kit list-modules), as
 * veild(8) and veil-keys(1) say.  VEIL_OK with the module's file in *file
 * (malloc'd) and its name in name; VEIL_E_NOT_FOUND (the modules and their
 * tokens named) or VEIL_E_AMBIGUOUS (tokens of more than one module
 * match). */
static veil_rc search_modules(veil_provider *p, CK_FUNCTION_LIST **all,
                              P11KitUri *turi, char **file, char *name,
                              size_t name_size);

/* The registered modules, loaded once and kept mapped until exit (each
 * lookup initialises and finalises them): a module that fails or leaks in
 * C_Initialize stays under its own name for the leak checker
 * (tests/lsan.supp), and is not loaded and unloaded again and again. */
static pthread_mutex_t lookup_lock = PTHREAD_MUTEX_INITIALIZER;
static CK_FUNCTION_LIST **lookup_modules;

static veil_rc module_for_token(veil_provider *p, P11KitUri *turi, char **file,
                                char *name, size_t name_size)
{
    veil_rc rc;

    pthread_mutex_lock(&lookup_lock);
    if (lookup_modules == NULL)
        lookup_modules = p11_kit_modules_load(NULL, 0);
    if (lookup_modules == NULL) {
        pthread_mutex_unlock(&lookup_lock);
        return veil_err(VEIL_E_MODULE, PK, NULL,
                        "no PKCS#11 module given and p11-kit's registered "
                        "modules cannot be loaded (%s): give --module, or "
                        "?module-name= in the URI",
                        p11_kit_message() ? p11_kit_message() : "none");
    }
    /* a module that fails to initialise leaves the list (not unloaded) */
    p11_kit_modules_initialize(lookup_modules, NULL);
    rc = search_modules(p, lookup_modules, turi, file, name, name_size);
    p11_kit_modules_finalize(lookup_modules);
    pthread_mutex_unlock(&lookup_lock);
    return rc;
}

static veil_rc search_modules(veil_provider *p, CK_FUNCTION_LIST **all,
                              P11KitUri *turi, char **file, char *name,
                              size_t name_size)
{
    char seen[600] = "", matched[200] = "";
    int found = 0;

    *file = NULL;
    for (size_t i = 0; all[i]; i++) {
        char *mname = p11_kit_module_get_name(all[i]);
        CK_SLOT_ID slots[64];
        CK_ULONG n = sizeof slots / sizeof slots[0];
        int hit = 0, tokens = 0;

        if (all[i]->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK ||
            n > sizeof slots / sizeof slots[0])
            n = 0;
        append(seen, sizeof seen, seen[0] ? "; " : "");
        append(seen, sizeof seen, mname ? mname : "?");
        append(seen, sizeof seen, ":");
        for (CK_ULONG j = 0; j < n; j++) {
            CK_TOKEN_INFO ti;
            char label[33];

            if (all[i]->C_GetTokenInfo(slots[j], &ti) != CKR_OK ||
                !(ti.flags & CKF_TOKEN_INITIALIZED))
                continue;
            trim_shown(label, ti.label, 32);
            append(seen, sizeof seen, tokens++ ? ", \"" : " \"");
            append(seen, sizeof seen, label);
            append(seen, sizeof seen, "\"");
            hit |= p11_kit_uri_match_token_info(turi, &ti);
        }
        if (!tokens)
            append(seen, sizeof seen, " no token");
        if (hit) {
            append(matched, sizeof matched, found++ ? ", " : "");
            append(matched, sizeof matched, mname ? mname : "?");
            if (*file == NULL) {
                *file = p11_kit_module_get_filename(all[i]);
                snprintf(name, name_size, "%s", mname ? mname : "?");
            }
        }
        free(mname);
    }
    if (found == 1 && *file) {
        veil_log(p->engine, VEIL_LOG_INFO,
                 "pkcs11: no module given; the token is in p11-kit's module "
                 "%s (%s)",
                 name, *file);
        return VEIL_OK;
    }
    free(*file);
    *file = NULL;
    if (found > 1)
        return veil_err(VEIL_E_AMBIGUOUS, PK, NULL,
                        "tokens matching the URI are in more than one "
                        "p11-kit module (%s); name one with --module or "
                        "?module-name=",
                        matched);
    return veil_err(VEIL_E_NOT_FOUND, PK, NULL,
                    "no PKCS#11 module given and no token matching the URI "
                    "in p11-kit's registered modules (%s); give --module, "
                    "or ?module-name= in the URI",
                    seen[0] ? seen : "none registered");
}

static void pk_close(veil_provider *p);

static veil_rc pk_open(veil_provider *p, const char *where)
{
    pk_state *s = st_of(p);
    P11KitUri *uri = NULL, *turi = NULL;
    const char *module, *twhere;
    char manuf[33], model[17];
    veil_rc rc;

    rc = uri_parse(where, &uri);
    if (rc != VEIL_OK)
        return rc;
    twhere = token_uri_for(p->engine, where, uri);
    if (twhere != where)
        rc = uri_parse(twhere, &turi);
    if (rc != VEIL_OK)
        goto out;
    module = uri_module(p->engine, uri);
    if (!module && turi)
        module = uri_module(p->engine, turi);
    pthread_mutex_init(&s->pool_lock, NULL);
    s->lock_ready = 1;
    if (module) {
        rc = module_acquire(module, &s->mod);
    } else {
        char *file = NULL, name[128] = "";

        rc = module_for_token(p, turi ? turi : uri, &file, name, sizeof name);
        if (rc == VEIL_OK)
            rc = module_acquire(file, &s->mod);
        if (rc == VEIL_OK)
            snprintf(s->mod->name, sizeof s->mod->name, "%s", name);
        free(file);
    }
    if (rc != VEIL_OK)
        goto out;
    s->f = s->mod->f;
    rc = pk_find_slot(p, turi ? turi : uri);
    if (rc != VEIL_OK)
        goto out;
    trim_shown(manuf, s->token.manufacturerID, 32);
    trim_shown(model, s->token.model, 16);
    /* Each part bounded so that the whole fits (at most 118 bytes). */
    snprintf(p->caps.description, sizeof p->caps.description,
             "token \"%.32s\" (%.24s %.16s, %.32s)", s->token_label, manuf,
             model, s->mod->name);
    pk_read_mechs(p);
    pk_read_quirks(p);
    rc = pk_login(p, turi ? turi : uri);
out:
    p11_kit_uri_free(uri);
    p11_kit_uri_free(turi);
    if (rc != VEIL_OK)
        pk_close(p);
    return rc;
}

static void pk_close(veil_provider *p)
{
    pk_state *s = st_of(p);

    if (s->f) {
        if (s->logged_in && s->all_n > 0)
            CALL(p, C_Logout, s->all[0]);
        for (size_t i = 0; i < s->all_n; i++)
            CALL(p, C_CloseSession, s->all[i]);
    }
    free(s->all);
    free(s->pool);
    free(s->owns);
    free(s->active);
    s->owns = s->active = NULL;
    s->all = s->pool = NULL;
    s->all_n = s->pool_n = 0;
    if (s->lock_ready)
        pthread_mutex_destroy(&s->pool_lock);
    s->lock_ready = 0;
    module_release(s->mod);
    s->mod = NULL;
    s->f = NULL;
}

/* ---- 4. keys ---------------------------------------------------------- */

enum { OAEP_UNKNOWN = 0, OAEP_NATIVE = 1, OAEP_RAW = 2 };

typedef struct pk_key {
    CK_OBJECT_HANDLE priv, pub;
    /* OAEP path per [hash][has label], probed once and cached. */
    atomic_int oaep_mode[2][2];
} pk_key;

/* An attribute's name for messages ("attribute 0x..." for others). */
static const char *attr_name(CK_ATTRIBUTE_TYPE t, char *buf, size_t size)
{
    switch (t) {
    case CKA_LABEL:
        return "CKA_LABEL";
    case CKA_ID:
        return "CKA_ID";
    case CKA_MODULUS:
        return "CKA_MODULUS";
    case CKA_PUBLIC_EXPONENT:
        return "CKA_PUBLIC_EXPONENT";
    case CKA_EC_PARAMS:
        return "CKA_EC_PARAMS";
    case CKA_EC_POINT:
        return "CKA_EC_POINT";
    default:
        snprintf(buf, size, "attribute 0x%lx", (unsigned long)t);
        return buf;
    }
}

/* The longest attribute value veil reads from a token (labels, ids,
 * moduli of up to 16384 bits, EC parameters and points): a token that says
 * more is not believed. */
#define PK_ATTR_MAX 4096

static veil_rc get_attr(veil_provider *p, CK_SESSION_HANDLE sh,
                        CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE t, uint8_t **val,
                        size_t *len)
{
    CK_ATTRIBUTE a = {t, NULL, 0};
    CK_ULONG size;
    CK_RV rv;
    char buf[24];

    *val = NULL;
    *len = 0;
    rv = CALL(p, C_GetAttributeValue, sh, o, &a, 1);
    if (rv != CKR_OK || a.ulValueLen == CK_UNAVAILABLE_INFORMATION)
        return pk_fail(p, rv == CKR_OK ? CKR_ATTRIBUTE_TYPE_INVALID : rv,
                       "cannot read %s", attr_name(t, buf, sizeof buf));
    if (a.ulValueLen > PK_ATTR_MAX)
        return pk_bad(p,
                      "token says %s is %lu bytes long (veil reads at most %d)",
                      attr_name(t, buf, sizeof buf),
                      (unsigned long)a.ulValueLen, PK_ATTR_MAX);
    size = a.ulValueLen;
    a.pValue = malloc(size ? size : 1);
    if (!a.pValue)
        return veil_err(VEIL_E_NOMEM, PK, NULL, "out of memory");
    rv = CALL(p, C_GetAttributeValue, sh, o, &a, 1);
    if (rv == CKR_OK && a.ulValueLen > size) {
        free(a.pValue);
        return pk_bad(p,
                      "token returned %lu bytes of %s into a %lu-byte buffer",
                      (unsigned long)a.ulValueLen,
                      attr_name(t, buf, sizeof buf), (unsigned long)size);
    }
    if (rv != CKR_OK) {
        free(a.pValue);
        return pk_fail(p, rv, "cannot read %s", attr_name(t, buf, sizeof buf));
    }
    *val = a.pValue;
    *len = a.ulValueLen;
    return VEIL_OK;
}

static int get_bool(veil_provider *p, CK_SESSION_HANDLE sh, CK_OBJECT_HANDLE o,
                    CK_ATTRIBUTE_TYPE t)
{
    CK_BBOOL v = CK_FALSE;
    CK_ATTRIBUTE a = {t, &v, sizeof v};

    if (CALL(p, C_GetAttributeValue, sh, o, &a, 1) != CKR_OK)
        return -1;
    return v == CK_TRUE;
}

/* Finds up to `max` objects matching a template. */
static veil_rc find_objects(veil_provider *p, CK_SESSION_HANDLE sh,
                            CK_ATTRIBUTE *tmpl, CK_ULONG n,
                            CK_OBJECT_HANDLE *found, CK_ULONG max,
                            CK_ULONG *count)
{
    CK_RV rv = CALL(p, C_FindObjectsInit, sh, tmpl, n), final_rv;

    *count = 0;
    if (rv != CKR_OK)
        return pk_fail(p, rv, "object search failed");
    rv = CALL(p, C_FindObjects, sh, found, max, count);
    final_rv = CALL(p, C_FindObjectsFinal, sh);
    if (final_rv != CKR_OK) {
        session_mark(p, sh, PK_OP_FIND);
        *count = 0;
        return pk_fail(p, final_rv, "object search could not be ended");
    }
    if (rv != CKR_OK)
        return pk_fail(p, rv, "object search failed");
    if (*count > max) {
        CK_ULONG said = *count;
        *count = 0;
        return pk_bad(p,
                      "token returned %lu objects for a search of at most %lu",
                      (unsigned long)said, (unsigned long)max);
    }
    return VEIL_OK;
}

/* The DER of the P-256 OID, as CKA_EC_PARAMS. */
static const uint8_t p256_oid[] = {0x06, 0x08, 0x2a, 0x86, 0x48,
                                   0xce, 0x3d, 0x03, 0x01, 0x07};

static veil_rc pkey_from_rsa(const uint8_t *n, size_t nl, const uint8_t *e,
                             size_t el, EVP_PKEY **out)
{
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    BIGNUM *bn = BN_bin2bn(n, (int)nl, NULL), *be = BN_bin2bn(e, (int)el, NULL);
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    int ok = bld && bn && be && ctx &&
             OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) &&
             OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be) &&
             (params = OSSL_PARAM_BLD_to_param(bld)) != NULL &&
             EVP_PKEY_fromdata_init(ctx) > 0 &&
             EVP_PKEY_fromdata(ctx, out, EVP_PKEY_PUBLIC_KEY, params) > 0;

    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn);
    BN_free(be);
    EVP_PKEY_CTX_free(ctx);
    return ok ? VEIL_OK
              : veil_err_ossl(VEIL_E_KEY, PK, "token RSA public key unusable");
}

/* What a token says an RSA public key is, before it is believed: a
 * modulus of at least 1024 bits (veil makes 2048 and more; 1024 is for
 * conformance vectors) and odd; an exponent odd, at least 3 and below
 * the modulus.  A 512-bit modulus or e = 1 would make every ciphertext
 * to the key readable. */
static veil_rc rsa_public_sane(veil_provider *p, const char *label,
                               const uint8_t *n, size_t nl, const uint8_t *e,
                               size_t el)
{
    BIGNUM *bn = BN_bin2bn(n, (int)nl, NULL), *be = BN_bin2bn(e, (int)el, NULL);
    int bits = bn ? BN_num_bits(bn) : 0;
    veil_rc rc = VEIL_OK;

    if (!bn || !be)
        rc = veil_err(VEIL_E_NOMEM, PK, NULL, "out of memory");
    else if (bits < 1024 || !BN_is_odd(bn))
        rc = veil_err(VEIL_E_KEY, PK, NULL,
                      "token RSA key \"%s\" has a%s %d-bit modulus (veil "
                      "takes odd moduli of 1024 bits and more)",
                      label, BN_is_odd(bn) ? "" : "n even", bits);
    else if (!BN_is_odd(be) || BN_cmp(be, BN_value_one()) <= 0 ||
             BN_cmp(be, bn) >= 0)
        rc = veil_err(VEIL_E_KEY, PK, NULL,
                      "token RSA key \"%s\" has an unusable public exponent "
                      "(%d bits, %s)",
                      label, BN_num_bits(be),
                      BN_is_odd(be) ? "1 or not below the modulus" : "even");
    BN_free(bn);
    BN_free(be);
    (void)p;
    return rc;
}

/* CKA_EC_POINT is a DER OCTET STRING around the point (some tokens give
 * the bare point); returns the bare point. */
static int ec_point_unwrap(const uint8_t *v, size_t len, const uint8_t **pt,
                           size_t *pt_len)
{
    if (len == 65 && v[0] == 0x04) {
        *pt = v;
        *pt_len = 65;
        return 1;
    }
    if (len == 67 && v[0] == 0x04 && v[1] == 65 && v[2] == 0x04) {
        *pt = v + 2;
        *pt_len = 65;
        return 1;
    }
    return 0;
}

static veil_rc pkey_from_ec(const uint8_t *point, size_t len, EVP_PKEY **out)
{
    OSSL_PARAM params[3];
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    int ok;

    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME,
                                                 (char *)"prime256v1", 0);
    params[1] = OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY,
                                                  (void *)point, len);
    params[2] = OSSL_PARAM_construct_end();
    ok = ctx && EVP_PKEY_fromdata_init(ctx) > 0 &&
         EVP_PKEY_fromdata(ctx, out, EVP_PKEY_PUBLIC_KEY, params) > 0;
    EVP_PKEY_CTX_free(ctx);
    return ok ? VEIL_OK
              : veil_err_ossl(VEIL_E_KEY, PK, "token EC public key unusable");
}

/* The public-key object paired with a private key (same CKA_ID, else the
 * same label); *n: how many there are (0, 1, or 2 for two or more, when
 * none is chosen). */
static CK_OBJECT_HANDLE find_pub(veil_provider *p, CK_SESSION_HANDLE sh,
                                 const veil_key *k, CK_ULONG *n_out)
{
    CK_OBJECT_CLASS cls = CKO_PUBLIC_KEY;
    CK_ATTRIBUTE t[2] = {{CKA_CLASS, &cls, sizeof cls}};
    CK_OBJECT_HANDLE h[2];
    CK_ULONG n = 0, *nn = n_out ? n_out : &n;

    *nn = 0;

    if (k->id_len) {
        t[1] = (CK_ATTRIBUTE){CKA_ID, (void *)k->id, k->id_len};
    } else if (k->label[0]) {
        t[1] = (CK_ATTRIBUTE){CKA_LABEL, (void *)k->label, strlen(k->label)};
    } else {
        return CK_INVALID_HANDLE;
    }
    if (find_objects(p, sh, t, 2, h, 2, nn) != VEIL_OK || *nn != 1) {
        if (*nn != 2)
            *nn = 0;
        veil_err_clear();
        return CK_INVALID_HANDLE;
    }
    return h[0];
}

/* Fills a veil_key from a private-key object handle. */
static veil_rc load_key(veil_provider *p, CK_SESSION_HANDLE sh,
                        CK_OBJECT_HANDLE priv, veil_key *k)
{
    pk_key *pk = k->state;
    CK_KEY_TYPE kt = 0;
    CK_ATTRIBUTE a = {CKA_KEY_TYPE, &kt, sizeof kt};
    uint8_t *v1 = NULL, *v2 = NULL;
    size_t l1, l2;
    CK_ULONG npub = 0;
    CK_RV rv;
    veil_rc rc;

    pk->priv = priv;
    rv = CALL(p, C_GetAttributeValue, sh, priv, &a, 1);
    if (rv != CKR_OK)
        return pk_fail(p, rv, "cannot read the key type");
    if (get_attr(p, sh, priv, CKA_LABEL, &v1, &l1) == VEIL_OK) {
        snprintf(k->label, sizeof k->label, "%.*s", (int)l1, (char *)v1);
        free(v1);
    }
    if (get_attr(p, sh, priv, CKA_ID, &v1, &l1) == VEIL_OK) {
        k->id_len = l1 < sizeof k->id ? l1 : sizeof k->id;
        memcpy(k->id, v1, k->id_len);
        free(v1);
    }
    veil_err_clear();
    k->has_private = 1;
    k->persistent = get_bool(p, sh, priv, CKA_TOKEN) == 1;
    pk->pub = find_pub(p, sh, k, &npub);
    if (kt == CKK_RSA) {
        k->type = VEIL_KEY_RSA;
        /* The modulus and exponent are public even on sensitive keys; fall
         * back to the public object when a token hides them. */
        rc = get_attr(p, sh, priv, CKA_MODULUS, &v1, &l1);
        if (rc == VEIL_OK)
            rc = get_attr(p, sh, priv, CKA_PUBLIC_EXPONENT, &v2, &l2);
        if (rc != VEIL_OK && pk->pub != CK_INVALID_HANDLE) {
            free(v1);
            free(v2);
            v1 = v2 = NULL;
            rc = get_attr(p, sh, pk->pub, CKA_MODULUS, &v1, &l1);
            if (rc == VEIL_OK)
                rc = get_attr(p, sh, pk->pub, CKA_PUBLIC_EXPONENT, &v2, &l2);
        }
        if (rc == VEIL_OK)
            rc = rsa_public_sane(p, k->label, v1, l1, v2, l2);
        if (rc == VEIL_OK)
            rc = pkey_from_rsa(v1, l1, v2, l2, &k->pub);
    } else if (kt == CKK_EC) {
        const uint8_t *pt = NULL;
        size_t pt_len = 0;
        k->type = VEIL_KEY_EC_P256;
        if (npub > 1)
            return veil_err(VEIL_E_AMBIGUOUS, PK, NULL,
                            "EC key \"%s\" has more than one public-key "
                            "object with the same id; veil does not choose",
                            k->label);
        if (pk->pub == CK_INVALID_HANDLE)
            return veil_err(VEIL_E_KEY, PK, NULL,
                            "EC key \"%s\" has no public-key object with the "
                            "same id",
                            k->label);
        rc = get_attr(p, sh, pk->pub, CKA_EC_PARAMS, &v1, &l1);
        if (rc == VEIL_OK &&
            (l1 != sizeof p256_oid || memcmp(v1, p256_oid, l1) != 0))
            rc = veil_err(VEIL_E_KEY, PK, NULL, "EC key \"%s\" is not on P-256",
                          k->label);
        if (rc == VEIL_OK)
            rc = get_attr(p, sh, pk->pub, CKA_EC_POINT, &v2, &l2);
        if (rc == VEIL_OK && !ec_point_unwrap(v2, l2, &pt, &pt_len))
            rc = veil_err(VEIL_E_KEY, PK, NULL, "EC point not understood");
        if (rc == VEIL_OK)
            rc = pkey_from_ec(pt, pt_len, &k->pub);
    } else {
        rc = veil_err(VEIL_E_KEY, PK, NULL, "key \"%s\" is neither RSA nor EC",
                      k->label);
    }
    free(v1);
    free(v2);
    if (rc == VEIL_OK)
        k->bits = (unsigned)EVP_PKEY_get_bits(k->pub);
    return rc;
}

static veil_rc pk_rsa_decrypt(veil_provider *p, const veil_key *k,
                              const veil_oaep *oaep, const uint8_t *in,
                              size_t in_len, veil_secbuf **out);

/* CKM_RSA_PKCS_OAEP parameters for veil's OAEP settings (hash = MGF1 hash;
 * NULL: SHA-256, empty label). */
/* OAEP parameters for the token: MGF1 with the OAEP hash (tpm2-pkcs11 also
 * wants that hash to be the key's name algorithm; where it is not, the
 * probe finds the refusal and decryption takes the raw-RSA path), and
 * source = CKZ_DATA_SPECIFIED always, even with no label: strict HSMs
 * (Thales Luna among them) refuse OAEP otherwise. */
static CK_RSA_PKCS_OAEP_PARAMS oaep_params(const veil_oaep *oaep)
{
    int sha1 = oaep && oaep->hash == VEIL_HASH_SHA1;
    int with_label = oaep && oaep->label_len;
    CK_RSA_PKCS_OAEP_PARAMS op = {
        sha1 ? CKM_SHA_1 : CKM_SHA256, sha1 ? CKG_MGF1_SHA1 : CKG_MGF1_SHA256,
        CKZ_DATA_SPECIFIED, with_label ? (void *)oaep->label : NULL,
        with_label ? oaep->label_len : 0};
    return op;
}

/* A mechanism listed by the token but refused in use: stop advertising
 * (and routing) it.  Other threads may read caps meanwhile. */
static void caps_drop(veil_provider *p, unsigned cap)
{
    __atomic_fetch_and(&p->caps.mechs, ~cap, __ATOMIC_RELAXED);
}

/* Probe: does the token's own OAEP work for this hash / label form?  A
 * value is wrapped in software to the key's public half and unwrapped in
 * the token.  The answer is cached on the key. */
static int oaep_probe(veil_provider *p, const veil_key *k, veil_hash hash,
                      int with_label)
{
    static const uint8_t probe_label[] = "veil-probe";
    veil_oaep o = {hash, with_label ? probe_label : NULL,
                   with_label ? sizeof probe_label - 1 : 0};
    pk_key *pk = k->state;
    uint8_t secret[32], ct[1024];
    size_t ct_len = sizeof ct;
    veil_secbuf *got = NULL;
    int mode = OAEP_RAW;
    veil_rc rc;

    if (!(p->caps.mechs & veil_oaep_cap(&o))) {
        mode = OAEP_RAW;
    } else if (RAND_bytes(secret, sizeof secret) == 1 &&
               veil_provider_software.rsa_encrypt(p->engine->software, k, &o,
                                                  secret, sizeof secret, ct,
                                                  &ct_len) == VEIL_OK) {
        atomic_store(&pk->oaep_mode[hash][with_label], OAEP_NATIVE);
        rc = pk_rsa_decrypt(p, k, &o, ct, ct_len, &got);
        if (rc == VEIL_OK && veil_secbuf_len(got) == sizeof secret &&
            memcmp(veil_secbuf_data(got), secret, sizeof secret) == 0)
            mode = OAEP_NATIVE;
        veil_secbuf_free(got);
    }
    veil_wipe(secret, sizeof secret);
    veil_err_clear();
    if (mode == OAEP_RAW && !with_label)
        /* Listed in the mechanism list but refused: stop advertising it. */
        caps_drop(p, veil_oaep_cap(&o));
    if (mode == OAEP_RAW && !(p->caps.mechs & VEIL_CAP_RSA_RAW)) {
        atomic_store(&pk->oaep_mode[hash][with_label], OAEP_UNKNOWN);
        return OAEP_UNKNOWN;
    }
    atomic_store(&pk->oaep_mode[hash][with_label], mode);
    /* the fallback at info: an auditor wants to know that the OAEP
     * decoding of this key's requests runs on the host */
    veil_log(p->engine, mode == OAEP_NATIVE ? VEIL_LOG_DEBUG : VEIL_LOG_INFO,
             "pkcs11: %s, key \"%s\": RSA-OAEP-%s%s %s", p->caps.description,
             k->label, hash == VEIL_HASH_SHA1 ? "SHA1" : "SHA256",
             with_label ? " with label" : "",
             mode == OAEP_NATIVE
                 ? "runs natively (CKM_RSA_PKCS_OAEP)"
                 : "is refused by the token; using raw RSA (CKM_RSA_X_509) in "
                   "the token and OAEP decoding on the host");
    return mode;
}

/* The labels of the token's private keys (at most 16, printable, quoted,
 * comma-separated) into out, for a message when a URI matched none; "none"
 * when there are none; never fails (out is then what could be read). */
static void private_key_labels(veil_provider *p, CK_SESSION_HANDLE sh,
                               char *out, size_t size)
{
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE t = {CKA_CLASS, &cls, sizeof cls};
    CK_OBJECT_HANDLE h[16];
    CK_ULONG count = 0;
    size_t n = 0;

    snprintf(out, size, "none");
    if (CALL(p, C_FindObjectsInit, sh, &t, 1) != CKR_OK)
        return;
    if (CALL(p, C_FindObjects, sh, h, 16, &count) != CKR_OK || count > 16)
        count = 0;
    if (CALL(p, C_FindObjectsFinal, sh) != CKR_OK)
        session_mark(p, sh, PK_OP_FIND);
    for (CK_ULONG i = 0; i < count && n + 8 < size; i++) {
        char label[65] = "";
        CK_ATTRIBUTE a = {CKA_LABEL, label, sizeof label - 1};

        if (CALL(p, C_GetAttributeValue, sh, h[i], &a, 1) != CKR_OK ||
            a.ulValueLen >= sizeof label)
            continue;
        label[a.ulValueLen] = '\0';
        for (char *c = label; *c; c++)
            if (*c < 0x20 || *c > 0x7e || *c == '"')
                *c = '?'; /* a token's bytes, not ours to print */
        int w = snprintf(out + n, size - n, "%s\"%s\"", n ? ", " : "", label);
        if (w < 0 || (size_t)w >= size - n) {
            out[n] = '\0';
            break;
        }
        n += (size_t)w;
    }
    if (count == 16 && n + 6 < size)
        snprintf(out + n, size - n, ", ...");
}

static veil_rc build_private_template_search(veil_provider *p, P11KitUri *uri,
                                             const char *bare_label,
                                             veil_key *k, int probe)
{
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE t[3] = {{CKA_CLASS, &cls, sizeof cls}};
    CK_ULONG nt = 1, count = 0;
    CK_OBJECT_HANDLE h[2];
    CK_SESSION_HANDLE sh;
    CK_ATTRIBUTE *ua;
    veil_rc rc;

    if (bare_label) {
        t[nt++] =
            (CK_ATTRIBUTE){CKA_LABEL, (void *)bare_label, strlen(bare_label)};
    } else {
        ua = p11_kit_uri_get_attribute(uri, CKA_LABEL);
        if (ua)
            t[nt++] = *ua;
        ua = p11_kit_uri_get_attribute(uri, CKA_ID);
        if (ua)
            t[nt++] = *ua;
        ua = p11_kit_uri_get_attribute(uri, CKA_CLASS);
        if (ua && (ua->ulValueLen != sizeof(CK_OBJECT_CLASS) ||
                   *(CK_OBJECT_CLASS *)ua->pValue != CKO_PRIVATE_KEY))
            return veil_err(VEIL_E_ARG, PK, NULL,
                            "the URI must name a private key (type=private)");
        if (nt == 1)
            return veil_err(VEIL_E_ARG, PK, NULL,
                            "the URI names no key: add object= or id=");
    }
    rc = session_get(p, &sh);
    if (rc != VEIL_OK)
        return rc;
    rc = find_objects(p, sh, t, nt, h, 2, &count);
    if (rc == VEIL_OK && count == 0) {
        char labels[300];

        private_key_labels(p, sh, labels, sizeof labels);
        rc = veil_err(VEIL_E_NOT_FOUND, PK, NULL,
                      "no private key matching that URI in token \"%s\" "
                      "(its private keys: %s)",
                      st_of(p)->token_label, labels);
    } else if (rc == VEIL_OK && count > 1)
        rc = veil_err(VEIL_E_AMBIGUOUS, PK, NULL,
                      "more than one private key matches in token \"%s\"; "
                      "add id= to the URI",
                      st_of(p)->token_label);
    if (rc == VEIL_OK)
        rc = load_key(p, sh, h[0], k);
    session_put(p, sh);
    if (rc == VEIL_OK && probe && k->type == VEIL_KEY_RSA)
        oaep_probe(p, k, VEIL_HASH_SHA256, 0);
    return rc;
}

static veil_rc pk_key_open(veil_provider *p, const char *ref, veil_key *k)
{
    P11KitUri *uri = NULL;
    veil_rc rc;

    if (strncmp(ref, "pkcs11:", 7) != 0)
        return build_private_template_search(p, NULL, ref, k, 1);
    rc = uri_parse(ref, &uri);
    if (rc != VEIL_OK)
        return rc;
    rc = build_private_template_search(p, uri, NULL, k, 1);
    p11_kit_uri_free(uri);
    return rc;
}

static veil_rc pk_key_generate(veil_provider *p, const veil_keygen_params *kp,
                               veil_key *k)
{
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE,
             token = kp->session_only ? CK_FALSE : CK_TRUE;
    CK_ULONG bits = kp->bits;
    CK_BYTE exp[] = {0x01, 0x00, 0x01};
    CK_MECHANISM mech = {kp->type == VEIL_KEY_RSA ? CKM_RSA_PKCS_KEY_PAIR_GEN
                                                  : CKM_EC_KEY_PAIR_GEN,
                         NULL, 0};
    CK_OBJECT_HANDLE pub, priv, existing[1];
    CK_OBJECT_CLASS pcls = CKO_PRIVATE_KEY;
    CK_SESSION_HANDLE sh;
    uint8_t id[16];
    const uint8_t *idp = kp->id;
    size_t id_len = kp->id_len;
    CK_ULONG count = 0;
    CK_RV rv;
    veil_rc rc;

    if (!kp->label || !*kp->label)
        return veil_err(VEIL_E_ARG, PK, NULL, "a token key needs a label");
    if (kp->session_only && (st_of(p)->quirks & QUIRK_NO_SESSION_KEYS))
        return veil_err(VEIL_E_UNSUPPORTED, PK, NULL,
                        "%s cannot make session (temporary) keys; generate a "
                        "persistent key and delete it afterwards",
                        p->caps.description);
    if (!idp) {
        if (RAND_bytes(id, sizeof id) != 1)
            return veil_err_ossl(VEIL_E_CRYPTO, PK, "random id");
        idp = id;
        id_len = sizeof id;
    }
    CK_ATTRIBUTE label = {CKA_LABEL, (void *)kp->label, strlen(kp->label)};
    CK_ATTRIBUTE idattr = {CKA_ID, (void *)idp, id_len};
    CK_ATTRIBUTE rsa_pub[] = {
        {CKA_TOKEN, &token, sizeof token},
        {CKA_ENCRYPT, &yes, sizeof yes},
        {CKA_VERIFY, &yes, sizeof yes},
        {CKA_MODULUS_BITS, &bits, sizeof bits},
        {CKA_PUBLIC_EXPONENT, exp, sizeof exp},
        label,
        idattr,
    };
    CK_ATTRIBUTE ec_pub[] = {
        {CKA_TOKEN, &token, sizeof token},
        {CKA_VERIFY, &yes, sizeof yes},
        {CKA_EC_PARAMS, (void *)p256_oid, sizeof p256_oid},
        label,
        idattr,
    };
    CK_ATTRIBUTE priv_t[] = {
        {CKA_TOKEN, &token, sizeof token},
        {CKA_PRIVATE, &yes, sizeof yes},
        {CKA_SENSITIVE, &yes, sizeof yes},
        {CKA_EXTRACTABLE, &no, sizeof no},
        {kp->type == VEIL_KEY_RSA ? CKA_DECRYPT
         : kp->derive             ? CKA_DERIVE
                                  : CKA_SIGN,
         &yes, sizeof yes},
        label,
        idattr,
    };
    CK_ATTRIBUTE dup[] = {{CKA_CLASS, &pcls, sizeof pcls}, label};

    rc = session_get(p, &sh);
    if (rc != VEIL_OK)
        return rc;
    /* One label, one key: a second key with the same label would make
     * every later lookup ambiguous. */
    rc = find_objects(p, sh, dup, 2, existing, 1, &count);
    if (rc == VEIL_OK && count > 0)
        rc = veil_err(VEIL_E_EXISTS, PK, NULL,
                      "token \"%s\" already has a key labelled \"%s\"",
                      st_of(p)->token_label, kp->label);
    if (rc == VEIL_OK) {
        if (kp->type == VEIL_KEY_RSA)
            rv = CALL(p, C_GenerateKeyPair, sh, &mech, rsa_pub,
                      sizeof rsa_pub / sizeof rsa_pub[0], priv_t,
                      sizeof priv_t / sizeof priv_t[0], &pub, &priv);
        else
            rv = CALL(p, C_GenerateKeyPair, sh, &mech, ec_pub,
                      sizeof ec_pub / sizeof ec_pub[0], priv_t,
                      sizeof priv_t / sizeof priv_t[0], &pub, &priv);
        if (rv != CKR_OK)
            rc = pk_fail(p, rv, "key generation in token \"%s\" failed",
                         st_of(p)->token_label);
        else if (token == CK_FALSE)
            /* Session objects die with the session that made them. */
            session_owns_objects(p, sh);
    }
    if (rc == VEIL_OK) {
        rc = load_key(p, sh, priv, k);
        if (rc != VEIL_OK) {
            CALL(p, C_DestroyObject, sh, priv);
            CALL(p, C_DestroyObject, sh, pub);
        }
    }
    session_put(p, sh);
    if (rc == VEIL_OK && k->type == VEIL_KEY_RSA)
        oaep_probe(p, k, VEIL_HASH_SHA256, 0);
    return rc;
}

static veil_rc pk_key_info(veil_provider *p, const veil_key *k,
                           veil_key_info *info)
{
    const pk_key *pk = k->state;
    pk_state *s = st_of(p);
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    P11KitUri *uri = p11_kit_uri_new();
    CK_SESSION_HANDLE sh;
    char *str = NULL;

    if (session_get(p, &sh) == VEIL_OK) {
        info->sensitive = get_bool(p, sh, pk->priv, CKA_SENSITIVE);
        info->extractable = get_bool(p, sh, pk->priv, CKA_EXTRACTABLE);
        session_put(p, sh);
    }
    if (uri) {
        CK_ATTRIBUTE a[3] = {
            {CKA_CLASS, &cls, sizeof cls},
            {CKA_LABEL, (void *)k->label, strlen(k->label)},
            {CKA_ID, (void *)k->id, k->id_len},
        };
        *p11_kit_uri_get_token_info(uri) = s->token;
        p11_kit_uri_set_attributes(uri, a, k->id_len ? 3 : 2);
        if (p11_kit_uri_format(uri, P11_KIT_URI_FOR_OBJECT_ON_TOKEN, &str) ==
            P11_KIT_URI_OK)
            snprintf(info->uri, sizeof info->uri, "%s", str);
        free(str);
        p11_kit_uri_free(uri);
    }
    veil_err_clear();
    return VEIL_OK;
}

static veil_rc pk_key_list(veil_provider *p, const char *where,
                           veil_key_list_fn cb, void *ctx)
{
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE t = {CKA_CLASS, &cls, sizeof cls};
    CK_OBJECT_HANDLE h[64];
    CK_ULONG n = 0;
    CK_SESSION_HANDLE sh;
    veil_rc rc;

    rc = session_get(p, &sh);
    if (rc != VEIL_OK)
        return rc;
    rc = find_objects(p, sh, &t, 1, h, 64, &n);
    for (CK_ULONG i = 0; rc == VEIL_OK && i < n; i++) {
        veil_key k = {.prov = p};
        pk_key pk = {0};
        veil_key_info info;
        k.state = &pk;
        if (load_key(p, sh, h[i], &k) != VEIL_OK) {
            veil_log(p->engine, VEIL_LOG_INFO, "pkcs11: skipping key: %s",
                     veil_last_error()->message);
            veil_err_clear();
            EVP_PKEY_free(k.pub);
            continue;
        }
        veil_key_info_base(&k, &info);
        session_put(p, sh); /* pk_key_info borrows one */
        pk_key_info(p, &k, &info);
        EVP_PKEY_free(k.pub);
        if (cb(ctx, &info))
            return VEIL_OK;
        rc = session_get(p, &sh);
        if (rc != VEIL_OK)
            return rc;
    }
    session_put(p, sh);
    return rc;
}

static veil_rc pk_key_delete(veil_provider *p, veil_key *k)
{
    pk_key *pk = k->state;
    CK_SESSION_HANDLE sh;
    CK_RV rv;
    veil_rc rc;

    rc = session_get(p, &sh);
    if (rc != VEIL_OK)
        return rc;
    rv = CALL(p, C_DestroyObject, sh, pk->priv);
    if (rv == CKR_OK && pk->pub != CK_INVALID_HANDLE)
        rv = CALL(p, C_DestroyObject, sh, pk->pub);
    session_put(p, sh);
    if (rv != CKR_OK)
        return pk_fail(p, rv, "cannot delete key \"%s\"", k->label);
    return VEIL_OK;
}

/* ---- 5. operations ---------------------------------------------------- */

/* One private-key decryption in the token: init + decrypt on a pooled
 * session.  `out` holds up to *out_len bytes. */
static CK_RV decrypt_once(veil_provider *p, CK_MECHANISM *m,
                          CK_OBJECT_HANDLE key, const uint8_t *in,
                          size_t in_len, uint8_t *out, CK_ULONG *out_len,
                          CK_RV *init_rv)
{
    CK_SESSION_HANDLE sh;
    CK_RV rv;

    if (session_get(p, &sh) != VEIL_OK)
        return CKR_SESSION_COUNT;
    rv = *init_rv = CALL(p, C_DecryptInit, sh, m, key);
    if (rv == CKR_OK)
        rv = CALL(p, C_Decrypt, sh, (CK_BYTE_PTR)in, in_len, out, out_len);
    session_check(p, sh, PK_OP_DECRYPT, *init_rv, rv);
    session_put(p, sh);
    return rv;
}

/* A token that says it wrote more than the buffer it was given holds
 * (CK_UNAVAILABLE_INFORMATION too): nothing of it is used. */
static veil_rc token_len_lie(veil_provider *p, veil_secbuf *buf, CK_ULONG n,
                             size_t size)
{
    veil_secbuf_free(buf);
    if (n == CK_UNAVAILABLE_INFORMATION)
        return pk_bad(p, "token returned CKR_OK but no output length "
                         "(CK_UNAVAILABLE_INFORMATION) for an RSA decryption");
    return pk_bad(p,
                  "token returned %lu bytes of RSA decryption output for a "
                  "%zu-byte buffer",
                  (unsigned long)n, size);
}

static veil_rc pk_rsa_decrypt(veil_provider *p, const veil_key *k,
                              const veil_oaep *oaep, const uint8_t *in,
                              size_t in_len, veil_secbuf **out)
{
    pk_key *pk = k->state;
    veil_hash hash = oaep ? oaep->hash : VEIL_HASH_SHA256;
    int with_label = oaep && oaep->label_len;
    size_t kbytes = (k->bits + 7) / 8;
    int mode = atomic_load(&pk->oaep_mode[hash][with_label]);
    CK_RSA_PKCS_OAEP_PARAMS op = oaep_params(oaep);
    CK_MECHANISM m_oaep = {CKM_RSA_PKCS_OAEP, &op, sizeof op};
    CK_MECHANISM m_raw = {CKM_RSA_X_509, NULL, 0};
    veil_secbuf *buf = NULL;
    CK_ULONG n = kbytes;
    CK_RV rv, init_rv = CKR_OK;
    veil_rc rc;

    if (mode == OAEP_UNKNOWN)
        mode = oaep_probe(p, k, hash, with_label);
    if (mode == OAEP_UNKNOWN)
        return veil_err(VEIL_E_UNSUPPORTED, PK, NULL,
                        "%s offers neither RSA-OAEP with this hash nor raw RSA",
                        p->caps.description);
    rc = veil_secbuf_new(kbytes, &buf);
    if (rc != VEIL_OK)
        return rc;
    if (mode == OAEP_NATIVE) {
        rv = decrypt_once(p, &m_oaep, pk->priv, in, in_len,
                          veil_secbuf_data(buf), &n, &init_rv);
        if (rv == CKR_OK && n > kbytes)
            return token_len_lie(p, buf, n, kbytes);
        if (rv == CKR_OK) {
            veil_secbuf_truncate(buf, n);
            *out = buf;
            return VEIL_OK;
        }
    } else {
        /* Raw path: the RSA private operation in the token, padding on the
         * host.  A wrong-length input fails like any bad ciphertext. */
        if (in_len != kbytes) {
            veil_secbuf_free(buf);
            return veil_err(VEIL_E_DECRYPT, PK, NULL, "decryption failed");
        }
        rv = decrypt_once(p, &m_raw, pk->priv, in, in_len,
                          veil_secbuf_data(buf), &n, &init_rv);
        if (rv == CKR_OK && n > kbytes)
            return token_len_lie(p, buf, n, kbytes);
        if (rv == CKR_OK) {
            /* Tokens may strip leading zeros: realign without a branch
             * on n (veil_ct_right_align says why). */
            veil_ct_right_align(veil_secbuf_data(buf), n, kbytes);
            rc = veil_oaep_decode_inplace(oaep, buf);
            if (rc == VEIL_OK) {
                *out = buf;
                return VEIL_OK;
            }
            veil_secbuf_free(buf);
            if (rc == VEIL_E_DECRYPT)
                return veil_err(VEIL_E_DECRYPT, PK, NULL, "decryption failed");
            return rc;
        }
    }
    veil_secbuf_free(buf);
    /* A ciphertext the token rejects is a decryption failure with the same
     * message as any other; anything else names the CKR. */
    if (init_rv == CKR_OK &&
        (rv == CKR_ENCRYPTED_DATA_INVALID ||
         rv == CKR_ENCRYPTED_DATA_LEN_RANGE || rv == CKR_DATA_INVALID ||
         rv == CKR_DATA_LEN_RANGE || rv == CKR_FUNCTION_FAILED ||
         rv == CKR_GENERAL_ERROR))
        return veil_err(VEIL_E_DECRYPT, PK, NULL, "decryption failed");
    return pk_fail(p, rv, "RSA decryption in the token failed");
}

static veil_rc pk_ecdsa_sign(veil_provider *p, const veil_key *k,
                             const uint8_t *msg, size_t len, uint8_t *sig,
                             size_t *sig_len)
{
    const pk_key *pk = k->state;
    CK_MECHANISM m = {CKM_ECDSA, NULL, 0};
    uint8_t digest[32], rs[132];
    CK_ULONG rs_len = sizeof rs;
    CK_SESSION_HANDLE sh;
    ECDSA_SIG *es;
    EVP_PKEY_CTX *vc;
    unsigned char *q = sig;
    CK_RV rv, init_rv;
    veil_rc rc;
    int n, ok;

    if (!EVP_Digest(msg, len, digest, NULL, EVP_sha256(), NULL))
        return veil_err_ossl(VEIL_E_CRYPTO, PK, "SHA-256");
    rc = session_get(p, &sh);
    if (rc != VEIL_OK)
        return rc;
    rv = init_rv = CALL(p, C_SignInit, sh, &m, pk->priv);
    if (rv == CKR_OK)
        rv = CALL(p, C_Sign, sh, digest, sizeof digest, rs, &rs_len);
    session_check(p, sh, PK_OP_SIGN, init_rv, rv);
    session_put(p, sh);
    if (rv != CKR_OK)
        return pk_fail(p, rv, "ECDSA signing in the token failed");
    if (rs_len != 64)
        return veil_err(VEIL_E_TOKEN, PK, NULL,
                        "token returned a %lu-byte ECDSA signature",
                        (unsigned long)rs_len);
    es = ECDSA_SIG_new();
    if (!es || !ECDSA_SIG_set0(es, BN_bin2bn(rs, 32, NULL),
                               BN_bin2bn(rs + 32, 32, NULL))) {
        ECDSA_SIG_free(es);
        return veil_err_ossl(VEIL_E_NOMEM, PK, "ECDSA signature");
    }
    n = i2d_ECDSA_SIG(es, &q);
    ECDSA_SIG_free(es);
    if (n <= 0 || (size_t)n > *sig_len)
        return veil_err(VEIL_E_BUFFER, PK, NULL, "signature buffer too small");
    /* The token's signature is checked with the key's public half before
     * anyone sees it: a wrong one (all zeros, a bit off) is not handed
     * out as veil's. */
    vc = EVP_PKEY_CTX_new_from_pkey(NULL, k->pub, NULL);
    ok = vc && EVP_PKEY_verify_init(vc) > 0 &&
         EVP_PKEY_verify(vc, sig, (size_t)n, digest, sizeof digest) == 1;
    EVP_PKEY_CTX_free(vc);
    ERR_clear_error();
    if (!ok)
        return pk_bad(p, "the token's ECDSA signature does not verify with "
                         "the key's public half");
    *sig_len = (size_t)n;
    return VEIL_OK;
}

/* ECDH (CKM_ECDH1_DERIVE, CKD_NULL, no shared data): the token derives Z
 * into a session object that is extractable and not sensitive (the only
 * way to read it; SoftHSM2 2.6 refuses CKA_VALUE otherwise); the value is
 * read into a secret buffer and the object destroyed at once, whatever
 * happened.  The private key needs CKA_DERIVE.  A token that lists the
 * mechanism but refuses it loses the capability (caps_drop). */
static veil_rc pk_ecdh_derive(veil_provider *p, const veil_key *k,
                              const uint8_t *peer, size_t peer_len,
                              veil_secbuf **z)
{
    const pk_key *pk = k->state;
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
    CK_BBOOL no = CK_FALSE, yes = CK_TRUE;
    CK_ULONG zlen = VEIL_ECDH_P256_Z_LEN;
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof cls},
        {CKA_KEY_TYPE, &kt, sizeof kt},
        {CKA_TOKEN, &no, sizeof no},
        {CKA_PRIVATE, &yes, sizeof yes},
        {CKA_SENSITIVE, &no, sizeof no},
        {CKA_EXTRACTABLE, &yes, sizeof yes},
        {CKA_VALUE_LEN, &zlen, sizeof zlen},
    };
    CK_ECDH1_DERIVE_PARAMS dp = {CKD_NULL, 0, NULL, (CK_ULONG)peer_len,
                                 (CK_BYTE_PTR)peer};
    CK_MECHANISM m = {CKM_ECDH1_DERIVE, &dp, sizeof dp};
    CK_OBJECT_HANDLE obj = CK_INVALID_HANDLE;
    CK_SESSION_HANDLE sh;
    veil_secbuf *out = NULL;
    CK_ATTRIBUTE val = {CKA_VALUE, NULL, 0};
    CK_ULONG z_len = VEIL_ECDH_P256_Z_LEN; /* what the token said, if not */
    CK_RV rv;
    veil_rc rc;

    rc = veil_secbuf_new(VEIL_ECDH_P256_Z_LEN, &out);
    if (rc != VEIL_OK)
        return rc;
    rc = session_get(p, &sh);
    if (rc != VEIL_OK) {
        veil_secbuf_free(out);
        return rc;
    }
    rv =
        CALL(p, C_DeriveKey, sh, &m, pk->priv, t, sizeof t / sizeof t[0], &obj);
    if (rv == CKR_OK) {
        val.pValue = veil_secbuf_data(out);
        val.ulValueLen = VEIL_ECDH_P256_Z_LEN;
        rv = CALL(p, C_GetAttributeValue, sh, obj, &val, 1);
        if (rv == CKR_OK && val.ulValueLen != VEIL_ECDH_P256_Z_LEN) {
            z_len = val.ulValueLen;
            rv = CKR_ATTRIBUTE_VALUE_INVALID;
        }
        if (CALL(p, C_DestroyObject, sh, obj) != CKR_OK)
            veil_log(p->engine, VEIL_LOG_WARN,
                     "pkcs11: %s: a derived ECDH secret could not be "
                     "destroyed; it goes with the session",
                     p->caps.description);
    }
    session_put(p, sh);
    if (rv == CKR_MECHANISM_INVALID || rv == CKR_MECHANISM_PARAM_INVALID ||
        rv == CKR_FUNCTION_NOT_SUPPORTED || rv == CKR_TEMPLATE_INCONSISTENT) {
        caps_drop(p, VEIL_CAP_ECDH);
        veil_log(p->engine, VEIL_LOG_INFO,
                 "pkcs11: %s lists CKM_ECDH1_DERIVE but refuses it; ECDH "
                 "is no longer offered for this token",
                 p->caps.description);
    }
    if (z_len != VEIL_ECDH_P256_Z_LEN) {
        veil_secbuf_free(out);
        if (z_len == CK_UNAVAILABLE_INFORMATION)
            return pk_bad(p, "token returned CKR_OK but no length for the "
                             "derived ECDH secret");
        return pk_bad(p, "token returned a %lu-byte ECDH secret (P-256: %d)",
                      (unsigned long)z_len, VEIL_ECDH_P256_Z_LEN);
    }
    if (rv != CKR_OK) {
        veil_secbuf_free(out);
        return pk_fail(p, rv, "%s",
                       rv == CKR_KEY_FUNCTION_NOT_PERMITTED
                           ? "ECDH: the key may not derive (CKA_DERIVE false)"
                           : "ECDH derive in the token failed");
    }
    *z = out;
    return VEIL_OK;
}

/* A public key as a session object in the token, for in-token public
 * operations on software keys.  Destroyed by the caller. */
static veil_rc import_public(veil_provider *p, CK_SESSION_HANDLE sh,
                             const veil_key *k, CK_OBJECT_HANDLE *out)
{
    CK_OBJECT_CLASS cls = CKO_PUBLIC_KEY;
    CK_BBOOL no = CK_FALSE, yes = CK_TRUE;
    CK_KEY_TYPE kt = k->type == VEIL_KEY_RSA ? CKK_RSA : CKK_EC;
    uint8_t n[1024], e[16], pt[67];
    size_t nl = 0, el = 0, ptl = 0;
    BIGNUM *bn = NULL, *be = NULL;
    CK_RV rv;

    if (k->type == VEIL_KEY_RSA) {
        if (!EVP_PKEY_get_bn_param(k->pub, OSSL_PKEY_PARAM_RSA_N, &bn) ||
            !EVP_PKEY_get_bn_param(k->pub, OSSL_PKEY_PARAM_RSA_E, &be) ||
            BN_num_bytes(bn) > (int)sizeof n ||
            BN_num_bytes(be) > (int)sizeof e) {
            BN_free(bn);
            BN_free(be);
            return veil_err_ossl(VEIL_E_KEY, PK, "RSA public key");
        }
        nl = (size_t)BN_bn2bin(bn, n);
        el = (size_t)BN_bn2bin(be, e);
        BN_free(bn);
        BN_free(be);
        CK_ATTRIBUTE t[] = {
            {CKA_CLASS, &cls, sizeof cls}, {CKA_KEY_TYPE, &kt, sizeof kt},
            {CKA_TOKEN, &no, sizeof no},   {CKA_ENCRYPT, &yes, sizeof yes},
            {CKA_MODULUS, n, nl},          {CKA_PUBLIC_EXPONENT, e, el},
        };
        rv = CALL(p, C_CreateObject, sh, t, sizeof t / sizeof t[0], out);
    } else {
        if (!EVP_PKEY_get_octet_string_param(k->pub, OSSL_PKEY_PARAM_PUB_KEY,
                                             pt + 2, 65, &ptl) ||
            ptl != 65)
            return veil_err_ossl(VEIL_E_KEY, PK, "EC public key");
        pt[0] = 0x04; /* DER OCTET STRING */
        pt[1] = 65;
        CK_ATTRIBUTE t[] = {
            {CKA_CLASS, &cls, sizeof cls},
            {CKA_KEY_TYPE, &kt, sizeof kt},
            {CKA_TOKEN, &no, sizeof no},
            {CKA_VERIFY, &yes, sizeof yes},
            {CKA_EC_PARAMS, (void *)p256_oid, sizeof p256_oid},
            {CKA_EC_POINT, pt, sizeof pt},
        };
        rv = CALL(p, C_CreateObject, sh, t, sizeof t / sizeof t[0], out);
        if (rv != CKR_OK && !atomic_exchange(&st_of(p)->no_ec_import, 1))
            veil_log(p->engine, VEIL_LOG_INFO,
                     "pkcs11: %s cannot hold an EC public key; ECDSA "
                     "verification with keys from outside it runs in "
                     "software",
                     p->caps.description);
    }
    if (rv != CKR_OK) {
        /* A public operation the token cannot do: the engine computes it
         * in software instead. */
        char buf[24];

        return veil_err(VEIL_E_UNSUPPORTED, PK, ckr_name(rv, buf, sizeof buf),
                        "%s cannot import this public key",
                        p->caps.description);
    }
    return VEIL_OK;
}

/* The public object to use for k, imported when k is not from this token. */
static veil_rc public_handle(veil_provider *p, CK_SESSION_HANDLE sh,
                             const veil_key *k, CK_OBJECT_HANDLE *h,
                             int *imported)
{
    *imported = 0;
    if (k->prov == p && ((pk_key *)k->state)->pub != CK_INVALID_HANDLE) {
        *h = ((pk_key *)k->state)->pub;
        return VEIL_OK;
    }
    *imported = 1;
    return import_public(p, sh, k, h);
}

static veil_rc pk_rsa_encrypt(veil_provider *p, const veil_key *k,
                              const veil_oaep *oaep, const uint8_t *in,
                              size_t in_len, uint8_t *out, size_t *out_len)
{
    CK_RSA_PKCS_OAEP_PARAMS op = oaep_params(oaep);
    CK_MECHANISM m = {CKM_RSA_PKCS_OAEP, &op, sizeof op};
    CK_OBJECT_HANDLE h;
    CK_SESSION_HANDLE sh;
    CK_ULONG n = *out_len;
    int imported;
    CK_RV rv, init_rv;
    veil_rc rc;

    rc = session_get(p, &sh);
    if (rc != VEIL_OK)
        return rc;
    rc = public_handle(p, sh, k, &h, &imported);
    if (rc == VEIL_OK) {
        rv = init_rv = CALL(p, C_EncryptInit, sh, &m, h);
        if (rv == CKR_OK)
            rv = CALL(p, C_Encrypt, sh, (CK_BYTE_PTR)in, in_len, out, &n);
        session_check(p, sh, PK_OP_ENCRYPT, init_rv, rv);
        if (imported)
            CALL(p, C_DestroyObject, sh, h);
        if (rv == CKR_MECHANISM_PARAM_INVALID || rv == CKR_ARGUMENTS_BAD ||
            rv == CKR_MECHANISM_INVALID) {
            /* Learnt: this hash is not available here; stop routing it. */
            caps_drop(p, veil_oaep_cap(oaep));
            rc = veil_err(VEIL_E_UNSUPPORTED, PK, NULL,
                          "%s refuses RSA-OAEP with this hash",
                          p->caps.description);
        } else if (rv != CKR_OK) {
            rc = pk_fail(p, rv, "RSA encryption in the token failed");
        } else if (n != (k->bits + 7) / 8) {
            /* tpm2-pkcs11 1.9 leaves the output length at the buffer's
             * size: a ciphertext of any other length than the modulus is
             * not trusted, and the engine encrypts in software instead. */
            rc = veil_err(VEIL_E_UNSUPPORTED, PK, NULL,
                          "%s returned a %lu-byte RSA ciphertext for a "
                          "%u-bit key",
                          p->caps.description, (unsigned long)n, k->bits);
        } else {
            *out_len = n;
        }
    }
    session_put(p, sh);
    return rc;
}

static veil_rc pk_ecdsa_verify(veil_provider *p, const veil_key *k,
                               const uint8_t *msg, size_t len,
                               const uint8_t *sig, size_t sig_len)
{
    const unsigned char *q = sig;
    CK_MECHANISM m = {CKM_ECDSA, NULL, 0};
    uint8_t digest[32], rs[64];
    unsigned char *der = NULL;
    ECDSA_SIG *es;
    const BIGNUM *r, *s;
    CK_OBJECT_HANDLE h;
    CK_SESSION_HANDLE sh;
    int imported, strict;
    CK_RV rv, init_rv;
    veil_rc rc;

    /* Strict DER: decode, re-encode, compare (as OpenSSL does). */
    es = sig_len <= LONG_MAX ? d2i_ECDSA_SIG(NULL, &q, (long)sig_len) : NULL;
    strict = es && q == sig + sig_len;
    if (strict) {
        int n = i2d_ECDSA_SIG(es, &der);
        strict =
            n > 0 && (size_t)n == sig_len && memcmp(der, sig, sig_len) == 0;
        OPENSSL_free(der);
    }
    if (strict) {
        ECDSA_SIG_get0(es, &r, &s);
        strict = BN_num_bytes(r) <= 32 && BN_num_bytes(s) <= 32 &&
                 !BN_is_negative(r) && !BN_is_negative(s) &&
                 BN_bn2binpad(r, rs, 32) == 32 &&
                 BN_bn2binpad(s, rs + 32, 32) == 32;
    }
    ECDSA_SIG_free(es);
    ERR_clear_error();
    if (!strict)
        return veil_err(VEIL_E_VERIFY, PK, NULL, "signature does not verify");
    if (!EVP_Digest(msg, len, digest, NULL, EVP_sha256(), NULL))
        return veil_err_ossl(VEIL_E_CRYPTO, PK, "SHA-256");
    if (k->prov != p && atomic_load(&st_of(p)->no_ec_import))
        return veil_err(VEIL_E_UNSUPPORTED, PK, NULL,
                        "%s cannot hold an EC public key", p->caps.description);
    rc = session_get(p, &sh);
    if (rc != VEIL_OK)
        return rc;
    rc = public_handle(p, sh, k, &h, &imported);
    if (rc == VEIL_OK) {
        rv = init_rv = CALL(p, C_VerifyInit, sh, &m, h);
        if (rv == CKR_OK)
            rv = CALL(p, C_Verify, sh, digest, sizeof digest, rs, sizeof rs);
        session_check(p, sh, PK_OP_VERIFY, init_rv, rv);
        if (imported)
            CALL(p, C_DestroyObject, sh, h);
        if (rv == CKR_SIGNATURE_INVALID || rv == CKR_SIGNATURE_LEN_RANGE)
            rc = veil_err(VEIL_E_VERIFY, PK, NULL, "signature does not verify");
        else if (rv != CKR_OK)
            rc = pk_fail(p, rv, "ECDSA verification in the token failed");
    }
    session_put(p, sh);
    return rc;
}

static veil_rc pk_aes_gcm(veil_provider *p, int enc, const uint8_t *key,
                          size_t key_len, const uint8_t *iv, size_t iv_len,
                          const uint8_t *aad, size_t aad_len, const uint8_t *in,
                          size_t len, uint8_t *out, uint8_t *tag)
{
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_BBOOL no = CK_FALSE, yes = CK_TRUE;
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof cls},     {CKA_KEY_TYPE, &kt, sizeof kt},
        {CKA_TOKEN, &no, sizeof no},       {CKA_SENSITIVE, &yes, sizeof yes},
        {CKA_ENCRYPT, &yes, sizeof yes},   {CKA_DECRYPT, &yes, sizeof yes},
        {CKA_VALUE, (void *)key, key_len},
    };
    CK_GCM_PARAMS gp = {(CK_BYTE_PTR)iv,  iv_len,  iv_len * 8,
                        (CK_BYTE_PTR)aad, aad_len, VEIL_GCM_TAG_LEN * 8};
    CK_MECHANISM m = {CKM_AES_GCM, &gp, sizeof gp};
    CK_OBJECT_HANDLE h;
    CK_SESSION_HANDLE sh;
    CK_ULONG n = len + VEIL_GCM_TAG_LEN;
    veil_secbuf *pt = NULL; /* open: the token's plaintext output */
    uint8_t *ct = NULL;     /* seal: output, open: input; ct||tag */
    CK_RV rv, init_rv = CKR_OK;
    veil_rc rc = VEIL_OK;

    /* Tokens built on OpenSSL 3.0 (SoftHSM2) share its 128-byte IV limit:
     * decline, and the engine computes it in software. */
    if (iv_len > 128)
        return veil_err(VEIL_E_UNSUPPORTED, PK, NULL,
                        "AES-GCM nonces over 128 bytes are not sent to tokens");
    /* Ciphertext||tag is not secret: plain memory.  Plaintext is: the token
     * may want room for as much output as input, so it lands in a secret
     * buffer first. */
    ct = malloc(len + VEIL_GCM_TAG_LEN);
    if (!ct)
        return veil_err(VEIL_E_NOMEM, PK, NULL, "out of memory");
    if (!enc) {
        if (len)
            memcpy(ct, in, len);
        memcpy(ct + len, tag, VEIL_GCM_TAG_LEN);
        rc = veil_secbuf_new(len + VEIL_GCM_TAG_LEN, &pt);
    }
    if (rc == VEIL_OK)
        rc = session_get(p, &sh);
    if (rc != VEIL_OK) {
        free(ct);
        veil_secbuf_free(pt);
        return rc;
    }
    rv = CALL(p, C_CreateObject, sh, t, sizeof t / sizeof t[0], &h);
    if (rv == CKR_OK) {
        rv = init_rv = enc ? CALL(p, C_EncryptInit, sh, &m, h)
                           : CALL(p, C_DecryptInit, sh, &m, h);
        if (rv == CKR_OK && enc)
            rv = CALL(p, C_Encrypt, sh, (CK_BYTE_PTR)(len ? in : ct), len, ct,
                      &n);
        else if (rv == CKR_OK)
            rv = CALL(p, C_Decrypt, sh, ct, len + VEIL_GCM_TAG_LEN,
                      veil_secbuf_data(pt), &n);
        session_check(p, sh, enc ? PK_OP_ENCRYPT : PK_OP_DECRYPT, init_rv, rv);
        CALL(p, C_DestroyObject, sh, h);
    }
    session_put(p, sh);
    if (rv == CKR_OK && n == (enc ? len + VEIL_GCM_TAG_LEN : len)) {
        if (len)
            memcpy(out, enc ? ct : veil_secbuf_data(pt), len);
        if (enc)
            memcpy(tag, ct + len, VEIL_GCM_TAG_LEN);
    } else if (!enc && init_rv == CKR_OK && rv != CKR_HOST_MEMORY &&
               rv != CKR_DEVICE_MEMORY && rv != CKR_DEVICE_REMOVED) {
        /* Any refusal after a successful init: the tag did not verify. */
        if (len)
            veil_wipe(out, len);
        rc = veil_err(VEIL_E_DECRYPT, PK, NULL, "decryption failed");
    } else {
        rc = pk_fail(p, rv == CKR_OK ? CKR_GENERAL_ERROR : rv,
                     "AES-GCM in the token failed");
    }
    free(ct);
    veil_secbuf_free(pt);
    return rc;
}

static veil_rc pk_random(veil_provider *p, uint8_t *buf, size_t len)
{
    CK_SESSION_HANDLE sh;
    CK_RV rv;
    veil_rc rc;

    rc = session_get(p, &sh);
    if (rc != VEIL_OK)
        return rc;
    rv = CALL(p, C_GenerateRandom, sh, buf, len);
    session_put(p, sh);
    if (rv != CKR_OK)
        return pk_fail(p, rv, "random generation in the token failed");
    return VEIL_OK;
}

const veil_provider_ops veil_provider_pkcs11 = {
    .abi = VEIL_PROVIDER_ABI,
    .ops_size = sizeof(veil_provider_ops),
    .name = PK,
    .static_caps = VEIL_CAP_RSA_GEN | VEIL_CAP_RSA_OAEP_SHA256 |
                   VEIL_CAP_RSA_OAEP_SHA1 | VEIL_CAP_RSA_RAW | VEIL_CAP_EC_GEN |
                   VEIL_CAP_ECDSA | VEIL_CAP_AES_GCM | VEIL_CAP_RANDOM |
                   VEIL_CAP_PERSIST | VEIL_CAP_ECDH,
    .state_size = sizeof(pk_state),
    .key_state_size = sizeof(pk_key),
    .claims = pk_claims,
    .instance_id = pk_instance_id,
    .open = pk_open,
    .close = pk_close,
    .key_generate = pk_key_generate,
    .key_open = pk_key_open,
    .key_list = pk_key_list,
    .key_delete = pk_key_delete,
    .key_info = pk_key_info,
    .rsa_decrypt = pk_rsa_decrypt,
    .ecdsa_sign = pk_ecdsa_sign,
    .rsa_encrypt = pk_rsa_encrypt,
    .ecdsa_verify = pk_ecdsa_verify,
    .aes_gcm = pk_aes_gcm,
    .random = pk_random,
    .ecdh_derive = pk_ecdh_derive,
};
