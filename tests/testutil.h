/* Shared helpers for the veil test programs: the CUnit registry and run,
 * environment, hex, files, JSON, test-vector location, a client for tests,
 * and direct PKCS#11
 * access (through p11-kit) for setting up token objects outside veil. */
#ifndef VEIL_TESTUTIL_H
#define VEIL_TESTUTIL_H

#include <stddef.h>

#include <CUnit/CUnit.h>
#include <cjson/cJSON.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <p11-kit/pkcs11.h>

#include "veil/client.h"

/* ---- CUnit ---------------------------------------------------------- */

/* One test of a suite: its name in the report and its function. */
typedef struct tu_test {
    const char *name;
    CU_TestFunc fn;
} tu_test;

/* Adds a suite (init and clean may be NULL) holding the n tests, in order;
 * the CUnit registry is initialised on first use.  0 on success, -1 with a
 * message on stderr on failure.  A failure is remembered: later calls add
 * nothing, and tu_run_tests() runs nothing and returns 1, so a main() may
 * add its suites without checking each result. */
int tu_add_suite(const char *name, CU_InitializeFunc init, CU_CleanupFunc clean,
                 const tu_test *tests, size_t n);

/* tu_add_suite() for an array of tu_test (not a pointer). */
#define TU_ADD_SUITE(name, init, clean, tests)                                 \
    tu_add_suite(name, init, clean, tests, sizeof(tests) / sizeof((tests)[0]))

/* Runs every suite added, in CUnit's verbose basic mode, and releases the
 * registry.  Returns the process exit status: 0 when every test ran and
 * passed; 1 on a failed assertion, a failed suite initialisation or
 * cleanup, a CUnit error, or an earlier tu_add_suite() failure. */
int tu_run_tests(void);

/* ---- environment, data and files ------------------------------------ */

/* getenv(name), or exit(99) (automake's "hard error") with a message on
 * stderr when the variable is unset or empty.  The token suites need their
 * environment: a suite that cannot start is a failure, not a skip. */
char *tu_env(const char *name);

/* Decodes hex (upper or lower case, even length) into a malloc'd buffer of
 * *len bytes.  Never returns NULL on success, also for "" (the buffer then
 * holds at least one byte and *len is 0).  NULL on bad input or no memory. */
unsigned char *tu_hex(const char *hex, size_t *len);

/* Reads a whole file into a malloc'd, NUL-terminated buffer; *len (may be
 * NULL) gets the size without the NUL.  NULL with a message on failure. */
char *tu_read_file(const char *path, size_t *len);

/* Parses a JSON file; NULL with a message on failure.  cJSON_Delete it. */
cJSON *tu_json_file(const char *path);

/* obj[key] as a string, or NULL when absent or not a string. */
const char *tu_json_str(const cJSON *obj, const char *key);

/* The Wycheproof vector directory, part of the source tree:
 * $VEIL_SRCDIR/tests/data/wycheproof (else ./tests/data/wycheproof).
 * Exits 99 with a message when it does not exist. */
const char *tu_vectors_dir(void);

/* Makes a fresh directory PREFIX.XXXXXX under $VEIL_TEST_DIR (set by
 * tests/env/with-tokens.sh), else $TMPDIR, else /tmp; its path goes to
 * out.  0 on success, -1 on failure. */
int tu_scratch_dir(const char *prefix, char *out, size_t size);

/* Percent-encodes a PKCS#11 URI path attribute value (RFC 7512) into out;
 * returns 0, or -1 when it does not fit. */
int tu_uri_escape(const char *in, char *out, size_t out_size);

/* The test SoftHSM2 token ($VEIL_TEST_SOFTHSM_TOKEN) as a PKCS#11 URI:
 * the value when it is a URI already, else "pkcs11:token=<escaped
 * label>".  0, or -1 when it does not fit. */
int tu_softhsm_uri(char *out, size_t out_size);
/* An engine for the test token: $VEIL_TEST_SOFTHSM_MODULE, logging in
 * with the PIN in $VEIL_TEST_PIN_FILE. */
veil_rc tu_softhsm_engine(veil_engine **out);

/* A certificate for key, signed by signer: issuer NULL makes a self-signed
 * CA; otherwise a server certificate for IP 127.0.0.1 issued by issuer.
 * Valid from an hour ago for a day.  NULL on failure; X509_free it. */
X509 *tu_make_cert(EVP_PKEY *key, EVP_PKEY *signer, X509 *issuer,
                   const char *cn, long serial);
/* An EK certificate by the TCG EK Credential Profile for key (an RSA EK),
 * issued by issuer with signer: keyEncipherment, the EK purpose
 * (2.23.133.8.1), CA:FALSE, and the TPM's manufacturer ("id:49424D00"),
 * model and version in a critical subject alternative name. */
X509 *tu_make_ek_cert(EVP_PKEY *key, EVP_PKEY *signer, X509 *issuer,
                      const char *manufacturer, long serial);

/* ---- the client ----------------------------------------------------- */

/* veil_client_config_init(), then base_url = url, http allowed and
 * RSA-2048 client keys (quick to make). */
void tu_client_config(veil_client_config *cfg, const char *url);

/* veil_client_new(), or a fatal CUnit failure naming its status and
 * detail. */
veil_client *tu_client_new(const veil_client_config *cfg);

/* A wipe check of cJSON's heap: from tu_wipe_scan_begin(marker), every
 * block cJSON frees in the calling thread is counted and searched for
 * marker before it is freed (other threads, an in-process server's, are
 * not looked at).  tu_wipe_scan_end() puts cJSON's own hooks back and
 * returns how many freed blocks still held marker; *frees (may be NULL)
 * how many were searched. */
void tu_wipe_scan_begin(const char *marker);
int tu_wipe_scan_end(int *frees);

/* ---- PKCS#11 -------------------------------------------------------- */

typedef struct tu_p11 {
    CK_FUNCTION_LIST *f;       /* the module's function list */
    CK_SLOT_ID slot;           /* slot holding the token */
    CK_SESSION_HANDLE session; /* R/W session, logged in as user */
    int initialized;           /* we ran C_Initialize: C_Finalize on close */
} tu_p11;

/* Loads the module (p11-kit, unmanaged), C_Initialize's it (an already
 * initialised module is fine and is then not finalised by us), finds the
 * token labelled token_label, opens an R/W session and logs in as user with
 * the first line of pin_file.  NULL with a message on failure. */
tu_p11 *tu_p11_open(const char *module_path, const char *token_label,
                    const char *pin_file);

/* Closes the session (no C_Logout: other sessions of this process, such as
 * veil's, share the login), C_Finalize's when we initialised, releases the
 * module.  Accepts NULL. */
void tu_p11_close(tu_p11 *t);

/* Imports an RSA key pair as token objects: a private key (private,
 * sensitive, not extractable, decrypt+sign) and the matching public key
 * (encrypt+verify), both with the given label and id.  Returns the private
 * key's handle, or 0 with the CKR code printed on failure. */
CK_OBJECT_HANDLE tu_p11_import_rsa_private(tu_p11 *t, EVP_PKEY *pkey,
                                           const char *label,
                                           const unsigned char *id,
                                           size_t id_len);

/* Destroys every object with this label.  Returns the number destroyed, or
 * -1 on failure (printed). */
int tu_p11_destroy_label(tu_p11 *t, const char *label);

#endif /* VEIL_TESTUTIL_H */
