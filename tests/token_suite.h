/* One conformance suite for every PKCS#11 token veil is tested on.  A test
 * program describes its token and calls ts_run(). */
#ifndef VEIL_TOKEN_SUITE_H
#define VEIL_TOKEN_SUITE_H

typedef struct ts_token {
    const char *name;       /* "softhsm2", "tpm2-pkcs11": for messages */
    const char *module;     /* module path */
    const char *label;      /* token label */
    const char *pin_file;   /* user PIN file */
    const char *wrong_pin_file; /* NULL: skip the wrong-PIN case (a TPM
                                 * counts failures against its lockout) */
    const char *other_label; /* a second token in the same module, or NULL */
    unsigned max_bits;       /* largest RSA key the token makes */
    int native_oaep_sha256;  /* 1: the token does OAEP-SHA256 itself */
    int has_gcm;             /* 1: CKM_AES_GCM in the token */
    int session_keys;        /* 1: can generate session (CKA_TOKEN=FALSE) keys */
    int has_ecdh;            /* 1: CKM_ECDH1_DERIVE (VEIL_CAP_ECDH) */
} ts_token;

/* Runs the suite; returns the process exit code. */
int ts_run(const ts_token *t);

#endif
