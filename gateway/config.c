/* veild configuration: its rows of the settings table (service/
 * settings.h drives the config file, the command-line flags and --help
 * from them), the kinds only veild has (key references, PIN sources, PCR
 * selections); the models and the [model ID] section are in
 * config_model.c.
 *
 * Besides the settings, the file (docs/veild.conf.example) takes models:
 *
 *   model = ID=UPSTREAM[,tiers=standard+high][,key-file=FILE]
 *                      [,cache-salt=FIELD]
 *   [model ID]              a model section; its lines until the next
 *   upstream = URL|unix:PATH|echo  section: upstream (required),
 *   upstream_key_file = F   upstream_key_file,
 *   tiers = standard,high   tiers (default: all three) and
 *   cache_salt_field = F    cache_salt_field
 *
 * "model" adds a model each time.  Error messages never repeat the value
 * of a key reference or a PIN source (server_key, signing_key, pin_source,
 * tpm_certify_key_auth): an operator may have put a PIN there by mistake.
 */
#include "config.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "config_model.h"
#include "evidence.h"
#include "gateway.h"
#include "settings.h"
#include "tier.h"

#define MSG_SIZE 256
/* veil_pcr_sel_format wants at least 96 bytes */
#define PCRS_TEXT_MAX 128

/* ---- veild's kinds ------------------------------------------------------ */

/* Neither message repeats the value: it may hold a PIN by mistake. */
static int check_keyref(const char *v, char *msg, size_t msize)
{
    if (!((strncmp(v, "pkcs11:", 7) == 0 && v[7]) ||
          (strncmp(v, "dir:", 4) == 0 && v[4]))) {
        svc_put_err(msg, msize, "must be a pkcs11: URI or dir:PATH");
        return -1;
    }
    if (strcasestr(v, "pin-value")) {
        svc_put_err(msg, msize,
                    "a PIN in the URI (pin-value) is refused; use pin_source");
        return -1;
    }
    return 0;
}

/* tls_key: a PEM file, or a private key in a token (a pkcs11: URI
 * without a PIN in it). */
static int check_tls_key(const char *v, char *msg, size_t msize)
{
    if (strncmp(v, "pkcs11:", 7) == 0)
        return check_keyref(v, msg, msize);
    return 0;
}

static int check_pin_source(const char *v, char *msg, size_t msize)
{
    veil_pin_source ps;

    if (veil_pin_source_parse(v, &ps) != VEIL_OK) {
        svc_put_err(msg, msize,
                    "must be file:PATH, credential:NAME, env:NAME, prompt or "
                    "none (a PIN itself is never accepted)");
        return -1;
    }
    return 0;
}

/* A PCR selection, as the TPM module and the evidence formats take it;
 * its canonical form (indices ascending) goes to canon. */
static int check_pcrs(const char *v, char *canon, size_t csize, char *msg,
                      size_t msize)
{
    veil_pcr_sel sel;
    char b[64];

    if (veil_pcr_sel_parse(v, &sel) != VEIL_OK || sel.n == 0) {
        svc_put_err(msg, msize,
                    "'%s' is not a PCR selection such as sha256:0,7,10 (the "
                    "sha256 bank, PCRs 0 to 23, each once)",
                    svc_shown(v, strlen(v), b, sizeof b));
        return -1;
    }
    veil_pcr_sel_format(&sel, canon, csize);
    return 0;
}

static int apply_keyref(void *base, const svc_setting *s, const char *v,
                        char *msg, size_t msize)
{
    if (check_keyref(v, msg, msize) != 0)
        return -1;
    return svc_set_str((char **)((char *)base + s->off), v, strlen(v), msg,
                       msize);
}

static int apply_tls_key(void *base, const svc_setting *s, const char *v,
                         char *msg, size_t msize)
{
    if (check_tls_key(v, msg, msize) != 0)
        return -1;
    return svc_set_str((char **)((char *)base + s->off), v, strlen(v), msg,
                       msize);
}

static int apply_pin(void *base, const svc_setting *s, const char *v, char *msg,
                     size_t msize)
{
    if (check_pin_source(v, msg, msize) != 0)
        return -1;
    return svc_set_str((char **)((char *)base + s->off), v, strlen(v), msg,
                       msize);
}

static int apply_pcrs(void *base, const svc_setting *s, const char *v,
                      char *msg, size_t msize)
{
    char canon[PCRS_TEXT_MAX];

    if (check_pcrs(v, canon, sizeof canon, msg, msize) != 0)
        return -1;
    return svc_set_str((char **)((char *)base + s->off), canon, strlen(canon),
                       msg, msize);
}

static int apply_model(void *base, const svc_setting *s, const char *v,
                       char *msg, size_t msize)
{
    (void)s;
    return gw_model_from_spec(base, v, msg, msize);
}

/* char *: "pkcs11:..." or "dir:PATH" */
static const svc_kind k_keyref = {apply_keyref, svc_release_str,
                                  sizeof(char *)};
/* char *: a PEM file, or "pkcs11:..." */
static const svc_kind k_tlskey = {apply_tls_key, svc_release_str,
                                  sizeof(char *)};
/* char *: file:PATH, credential:NAME, env:NAME, prompt or none */
static const svc_kind k_pin = {apply_pin, svc_release_str, sizeof(char *)};
/* char *: a PCR selection, "sha256:0,7,10" (canonical form) */
static const svc_kind k_pcrs = {apply_pcrs, svc_release_str, sizeof(char *)};
/* appends to models[] (freed by gw_config_free) */
static const svc_kind k_model = {apply_model, NULL, 0};

/* ---- the table ----------------------------------------------------------- */

#define OFF(field) offsetof(gw_config, field)

/* clang-format off */
static const svc_setting settings[] = {
    {"listen", "ADDR", &svc_addr, OFF(listen_addr), 0, 0, "127.0.0.1",
     "IP address to listen on (IPv4 or IPv6; 0.0.0.0 for all IPv4, :: for all IPv4 and IPv6)"},
    {"port", "PORT", &svc_port, OFF(port), 0, 65535, "8443",
     "TCP port; 0 takes any free port (see port_file)"},
    {"port_file", "FILE", &svc_str, OFF(port_file), 0, 0, NULL,
     "write the bound port to FILE once listening"},
    {"tls_cert", "FILE", &svc_str, OFF(tls_cert), 0, 0, NULL,
     "TLS certificate chain (PEM); with tls_key.  Neither: plain HTTP"},
    {"tls_key", "FILE|URI", &k_tlskey, OFF(tls_key), 0, 0, NULL,
     "TLS private key: a PEM file, or a pkcs11: URI (the key stays in the "
     "token; its PIN from pin_source); with tls_cert"},
    {"server_key", "REF", &k_keyref, OFF(server_key), 0, 0, NULL,
     "the server's RSA key: a pkcs11: URI, or dir:PATH (a software key, "
     "for trying out); required"},
    {"server_key_next", "REF", &k_keyref, OFF(server_key_next), 0, 0, NULL,
     "the next server key during a rotation: also opens requests and is "
     "served at /pki/next_public_key so that clients can pin it ahead "
     "(veil-keys rotate); a reload takes a change"},
    {"module", "MODULE", &svc_str, OFF(pkcs11_module), 0, 0, NULL,
     "PKCS#11 module: a path to a .so or a p11-kit module name (as in veil "
     "and veil-keys; env VEIL_PKCS11_MODULE); unset: module-path= or "
     "module-name= of the URI, else the p11-kit module whose token matches"},
    {"pin_source", "SOURCE", &k_pin, OFF(pin_source), 0, 0, NULL,
     "where the token PIN comes from: file:PATH, credential:NAME, env:NAME, "
     "prompt or none (never the PIN itself; env VEIL_PIN_SOURCE)"},
    {"api_keys", "FILE", &svc_str, OFF(api_keys), 0, 0, NULL,
     "API key hashes, lines \"sha256:<64 hex> [name]\"; unset: no API key "
     "needed"},
    {"operator_keys", "NAME[,NAME...]", &svc_str, OFF(operator_keys), 0, 0,
     NULL,
     "API keys (by their name in api_keys) that may fetch every answer's "
     "signature; the others fetch only their own"},
    {"rate", "N", &svc_rate, OFF(rate), 0, 0, "1",
     "requests per second per API key (> 0; fractions allowed)"},
    {"burst", "N", &svc_uint, OFF(burst), 1, 1000000, "2",
     "requests an API key may send at once before the rate applies"},
    {"body_limit", "SIZE", &svc_size, OFF(body_limit), SVC_KIB, SVC_GIB, "16M",
     "largest request body in bytes (suffixes K, M, G; 1K to 1G)"},
    {"workers", "N", &svc_uint, OFF(workers), 1, 256, "4",
     "requests processed at once (1 to 256); a request takes a worker once "
     "its body is in and leaves it when its answer is queued"},
    {"header_timeout", "SECONDS", &svc_uint, OFF(header_timeout), 1, 3600, "5",
     "a request's header block must be complete this long after the connection "
     "opens or the previous answer went (else the connection is closed)"},
    {"body_min_rate", "SIZE", &svc_size, OFF(body_min_rate), 1, SVC_GIB, "16K",
     "bytes per second a request body must average after its first 2 "
     "seconds, else the connection is closed"},
    {"body_timeout", "SECONDS", &svc_uint, OFF(body_timeout), 1, 86400, "120",
     "longest a request body may take to arrive, whatever its rate"},
    {"answer_timeout", "SECONDS", &svc_uint, OFF(answer_timeout), 1, 86400, "60",
     "longest a client may take to read its answer"},
    {"connections_per_address", "N", &svc_uint, OFF(connections_per_address), 1,
     1024, "16",
     "connections one client address may hold open at once (more are closed "
     "at accept)"},
    {"body_memory", "SIZE", &svc_size, OFF(body_memory), 0, 64 * SVC_GIB, "0",
     "request body and unsent answer bytes held at once; past it a body "
     "waits, its bytes unread; 0: 2 x workers x body_limit"},
    {"ipv6_prefix", "BITS", &svc_uint, OFF(ipv6_prefix), 8, 128, "64",
     "without api_keys, IPv6 clients are rate limited by this prefix of their "
     "address (IPv4 by the whole address)"},
    {"shutdown_grace", "SECONDS", &svc_uint, OFF(shutdown_grace), 0, 3600, "30",
     "on SIGTERM, how long requests in flight may take to finish"},
    {"state_dir", "DIR", &svc_str, OFF(state_dir), 0, 0, "/var/lib/veild",
     "what veild keeps across restarts (the replay register, the cache "
     "salt secret); made 0700 if missing, must be ours"},
    {"replay_window", "SECONDS", &svc_uint, OFF(replay_window), 1, 604800,
     "86400", "how long a request is remembered against replay"},
    {"replay_capacity", "N", &svc_uint, OFF(replay_capacity), 1024, 16777216,
     "4194304",
     "marks of the replay register, two per request (28 to 36 bytes each, "
     "in state_dir/replay.db and memory; full: 503)"},
    {"replay_sync", "SECONDS", &svc_uint, OFF(replay_sync), 1, 60, "1",
     "how often the replay register is written to disk (a machine crash "
     "loses at most this much)"},
    {"upstream_timeout", "SECONDS", &svc_uint, OFF(upstream_timeout), 1, 86400,
     "300", "longest wait for an upstream answer"},
    {"connect_timeout", "SECONDS", &svc_uint, OFF(connect_timeout), 1, 3600, "10",
     "longest wait for an upstream connection"},
    {"log_level", "LEVEL", &svc_level, OFF(log_level), 0, 0, "info",
     "error, warn, info or debug"},
    {"log_format", "FORMAT", &svc_format, OFF(log_format), 0, 0, "text",
     "text (a line with an RFC 3339 time) or json (one object a line); "
     "on the journal, lines also start with their priority (<3>...)"},
    {"signing_key", "REF", &k_keyref, OFF(signing_key), 0, 0, NULL,
     "ECDSA P-256 key that signs every answer: a pkcs11: URI, or dir:PATH; "
     "unset: answers are not signed"},
    {"signature_retention", "SECONDS", &svc_uint, OFF(signature_retention), 1,
     31536000, "86400",
     "how long GET /v1/signatures/ID finds an answer's signature"},
    {"signature_capacity", "N", &svc_uint, OFF(signature_capacity), 1, 16777216,
     "65536",
     "signatures kept for GET /v1/signatures/ID (about 1 KiB each; the "
     "oldest go first)"},
    {"tpm", "off|on", &svc_bool, OFF(tpm), 0, 0, "off",
     "attest with the TPM: the maximum tier, /v1/attestation/*; on: start-up "
     "fails without a usable TPM"},
    {"tpm_tcti", "TCTI", &svc_str, OFF(tpm_tcti), 0, 0, NULL,
     "how to reach the TPM (device:/dev/tpmrm0, tabrmd:, swtpm:port=2321); "
     "unset: the tss2 default"},
    {"tpm_pcrs", "SELECTION", &k_pcrs, OFF(tpm_pcrs), 0, 0, "sha256:0,7,10",
     "the PCRs every quote covers (only the sha256 bank)"},
    {"tpm_ak_per_request", "off|on", &svc_bool, OFF(tpm_ak_per_request), 0, 0,
     "off",
     "a fresh attestation key for every maximum answer, certified by the "
     "long-term one (slower)"},
    {"tpm_ak_rotate", "off|on", &svc_bool, OFF(tpm_ak_rotate), 0, 0, "off",
     "make a new long-term attestation key at this start, certified by the "
     "one kept in state_dir (give it once, as a flag; reports carry the "
     "hand-over)"},
    {"tpm_event_log", "FILE", &svc_str, OFF(tpm_event_log), 0, 0, NULL,
     "the TCG event log reports carry (binary, crypto-agile), for per-event "
     "reference values; unset: "
     "/sys/kernel/security/tpm0/binary_bios_measurements with a hardware "
     "TPM, none with a software TPM"},
    {"tpm_certify_key", "FILE", &svc_str, OFF(tpm_certify_key), 0, 0, NULL,
     "the server key as a TPM object (a TSS2 PRIVATE KEY PEM), so that quotes "
     "carry a TPM2_Certify of it; needs tpm = on"},
    {"tpm_certify_key_auth", "SOURCE", &k_pin, OFF(tpm_certify_key_auth), 0, 0,
     NULL,
     "where the auth value of tpm_certify_key comes from: file:PATH, "
     "credential:NAME, env:NAME, prompt or none"},
    {"tpm_remote_https", "off|on", &svc_bool, OFF(tpm_remote_https), 0, 0,
     "off",
     "let maximum use a model whose upstream is an https:// server on another "
     "host (the quoted backend statement then says remote); off: only echo, "
     "unix: sockets and loopback"},
    {"tpm_workers", "N", &svc_uint, OFF(tpm_workers), 1, 16, "1",
     "TPM operations (quotes, reports, activations) at once, apart from the "
     "workers: a request waiting for the TPM holds no worker"},
    {"tpm_queue", "N", &svc_uint, OFF(tpm_queue), 0, 1024, "8",
     "requests that may wait for the TPM beyond tpm_workers; more answer 503 "
     "with Retry-After at once"},
    {"tpm_queue_wait", "SECONDS", &svc_uint, OFF(tpm_queue_wait), 1, 600, "10",
     "longest a request waits for its turn at the TPM (then 503 with "
     "Retry-After)"},
    {"tpm_test_delay", "MS", &svc_uint, OFF(tpm_test_delay), 0, 60000, "0",
     "TEST STAND-IN for a slow hardware TPM: every TPM operation takes this "
     "many ms longer; 0 (never set it in production)"},
    {"v2", "off|on", &svc_bool, OFF(v2), 0, 0, "on",
     "protocol v2 (Oblivious HTTP, docs/PROTOCOL-V2.md) at "
     "/.well-known/ohttp-gateway, beside v1"},
    {"kem_rotate", "SECONDS", &svc_uint, OFF(kem_rotate), 2, 604800, "3600",
     "how often v2's KEM key is replaced by a new one"},
    {"kem_grace", "SECONDS", &svc_uint, OFF(kem_grace), 0, 604800, "300",
     "how long a replaced KEM key still opens requests before it is "
     "destroyed; at most kem_rotate"},
    {"kem_keys", "auto|software|tpm", &svc_str, OFF(kem_keys), 0, 0, "auto",
     "where v2's KEM keys are made: auto (the server key's token if it can "
     "derive, else software), software, or tpm (TPM objects certified by the "
     "attestation key, GET /v2/keys/certify; needs tpm = on)"},
    {"kem_x25519", "off|on", &svc_bool, OFF(kem_x25519), 0, 0, "off",
     "also offer a DHKEM(X25519) key configuration beside each P-256 one, "
     "for OHTTP clients that speak only X25519; its keys are made in "
     "software, so veild refuses on unless the KEM keys are in software "
     "(kem_keys = software, or auto with the server key not in a token)"},
    {"metrics_listen", "ADDR", &svc_addr, OFF(metrics_listen), 0, 0, NULL,
     "also serve GET /metrics, alone and without an API key, over plain HTTP "
     "on this address (keep it private: loopback or an internal network); "
     "unset: only operator keys get /metrics, on the main port"},
    {"metrics_port", "PORT", &svc_port, OFF(metrics_port), 0, 65535, "9464",
     "the port of metrics_listen; 0 takes any free port (logged)"},
    {"audit_log", "FILE", &svc_str, OFF(audit_log), 0, 0, NULL,
     "append one JSON line per inference request (time, API key name, "
     "model, tier, status, token counts, payload ID hash; never content) "
     "to FILE, made 0600; opened again on SIGHUP"},
    {"audit_fsync", "off|on", &svc_bool, OFF(audit_fsync), 0, 0, "off",
     "fdatasync the audit log after every line (on: no line lost to a "
     "machine crash, at a disk flush per request)"},
    {"model", "ID=UPSTREAM[,tiers=A+B][,key-file=FILE][,cache-salt=FIELD]",
     &k_model, 0, 0, 0,
     NULL,
     "a model clients may name; UPSTREAM is echo, unix:/PATH (a Unix socket) "
     "or a base URL such as http://127.0.0.1:8080/v1; repeatable (or a "
     "[model ID] section)"},
};
/* clang-format on */

/* Former names, still taken: one name per concept in veil, veil-keys and
 * veild (the module is --module in all three). */
static const svc_alias aliases[] = {
    {"pkcs11_module", "module"},
};

static const svc_table table = {
    .program = "veild",
    .rows = settings,
    .n_rows = sizeof settings / sizeof settings[0],
    .section = &gw_model_section,
    .aliases = aliases,
    .n_aliases = sizeof aliases / sizeof aliases[0],
};

/* What a reload (SIGHUP) changes in a running veild; every other setting
 * needs a restart (veild(8), SIGNALS).  The models are always taken. */
static const char *const live_settings[] = {
    "tls_cert",    "tls_key",        "api_keys",         "rate",
    "burst",       "log_level",      "upstream_timeout", "connect_timeout",
    "ipv6_prefix", "shutdown_grace", "server_key_next",  "log_format",
};

/* ---- public ------------------------------------------------------------ */

void gw_config_init(gw_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    svc_settings_defaults(&table, cfg);
}

void gw_config_free(gw_config *cfg)
{
    if (!cfg)
        return;
    svc_settings_free(&table, cfg);
    for (size_t i = 0; i < cfg->n_models && i < GW_MAX_MODELS; i++)
        gw_model_clear(&cfg->models[i]);
    memset(cfg, 0, sizeof *cfg);
}

int gw_config_set(gw_config *cfg, const char *name, const char *value,
                  char *err, size_t err_size)
{
    return svc_settings_set(&table, cfg, name, value, err, err_size);
}

gw_rc gw_config_load(gw_config *cfg, const char *path, char *err,
                     size_t err_size)
{
    return svc_settings_load(&table, cfg, path, err, err_size) == 0
               ? GW_OK
               : GW_REFUSED;
}

/* The key references and PIN sources (never repeated in messages). */
static int check_keys(const gw_config *cfg, char *err, size_t err_size)
{
    char msg[MSG_SIZE];

    if (!cfg->server_key) {
        svc_put_err(err, err_size,
                    "server_key is not set (a pkcs11: URI, or dir:PATH)");
        return -1;
    }
    if (check_keyref(cfg->server_key, msg, sizeof msg) != 0) {
        svc_put_err(err, err_size, "server_key: %s", msg);
        return -1;
    }
    if (cfg->server_key_next &&
        check_keyref(cfg->server_key_next, msg, sizeof msg) != 0) {
        svc_put_err(err, err_size, "server_key_next: %s", msg);
        return -1;
    }
    if (cfg->server_key_next &&
        strcmp(cfg->server_key_next, cfg->server_key) == 0) {
        svc_put_err(err, err_size,
                    "server_key_next is the same as server_key: the next "
                    "key is another key (veil-keys rotate makes one)");
        return -1;
    }
    if (cfg->pin_source &&
        check_pin_source(cfg->pin_source, msg, sizeof msg) != 0) {
        svc_put_err(err, err_size, "pin_source: %s", msg);
        return -1;
    }
    if (cfg->tls_key && check_tls_key(cfg->tls_key, msg, sizeof msg) != 0) {
        svc_put_err(err, err_size, "tls_key: %s", msg);
        return -1;
    }
    if (cfg->signing_key &&
        check_keyref(cfg->signing_key, msg, sizeof msg) != 0) {
        svc_put_err(err, err_size, "signing_key: %s", msg);
        return -1;
    }
    return 0;
}

/* The TPM settings: a selection, and certification only with tpm on. */
static int check_tpm(const gw_config *cfg, char *err, size_t err_size)
{
    char msg[MSG_SIZE];

    if (cfg->tpm_pcrs) {
        char canon[PCRS_TEXT_MAX];

        if (check_pcrs(cfg->tpm_pcrs, canon, sizeof canon, msg, sizeof msg) !=
            0) {
            svc_put_err(err, err_size, "tpm_pcrs: %s", msg);
            return -1;
        }
    } else if (cfg->tpm) {
        svc_put_err(err, err_size, "tpm = on needs tpm_pcrs");
        return -1;
    }
    if (cfg->operator_keys && !cfg->api_keys) {
        svc_put_err(err, err_size,
                    "operator_keys names keys of the api_keys file, and "
                    "api_keys is not set");
        return -1;
    }
    /* TPM settings without the TPM would be ignored in silence: an
     * operator who set them expects certified answers, a shipped log. */
    const char *needs = cfg->tpm_certify_key ? "tpm_certify_key"
                        : cfg->tpm_event_log ? "tpm_event_log"
                                             : NULL;
    if (needs && !cfg->tpm) {
        svc_put_err(err, err_size,
                    "%s is set but tpm is off: set tpm = on, or drop %s", needs,
                    needs);
        return -1;
    }
    if (strcmp(cfg->kem_keys, "auto") != 0 &&
        strcmp(cfg->kem_keys, "software") != 0 &&
        (strcmp(cfg->kem_keys, "tpm") != 0 || !cfg->tpm)) {
        svc_put_err(err, err_size, "kem_keys: %s",
                    strcmp(cfg->kem_keys, "tpm") ? "auto, software or tpm"
                                                 : "tpm needs tpm = on");
        return -1;
    }
    if (cfg->kem_x25519 && strcmp(cfg->kem_keys, "tpm") == 0) {
        svc_put_err(err, err_size,
                    "kem_x25519 = on needs the KEM keys in software, and "
                    "kem_keys = tpm keeps them in the TPM: an X25519 key "
                    "would be a software key beside them; set "
                    "kem_x25519 = off, or kem_keys = software");
        return -1;
    }
    if (cfg->kem_x25519 && !cfg->v2) {
        svc_put_err(err, err_size,
                    "kem_x25519 is on but v2 is off: set v2 = on, or drop "
                    "kem_x25519");
        return -1;
    }
    if (cfg->tpm_certify_key_auth && !cfg->tpm_certify_key) {
        svc_put_err(err, err_size,
                    "tpm_certify_key_auth is set but tpm_certify_key is not");
        return -1;
    }
    if (cfg->tpm_certify_key_auth &&
        check_pin_source(cfg->tpm_certify_key_auth, msg, sizeof msg) != 0) {
        svc_put_err(err, err_size, "tpm_certify_key_auth: %s", msg);
        return -1;
    }
    return 0;
}

int gw_config_check(const gw_config *cfg, char *err, size_t err_size)
{
    if (!cfg) {
        svc_put_err(err, err_size, "no configuration");
        return -1;
    }
    if (!cfg->listen_addr || !cfg->log_level || !cfg->log_format ||
        !cfg->kem_keys) {
        svc_put_err(err, err_size, "out of memory");
        return -1;
    }
    if (check_keys(cfg, err, err_size) != 0 ||
        check_tpm(cfg, err, err_size) != 0)
        return -1;
    if (!cfg->tls_cert != !cfg->tls_key) {
        svc_put_err(err, err_size,
                    "%s is set but %s is not: give both or neither",
                    cfg->tls_cert ? "tls_cert" : "tls_key",
                    cfg->tls_cert ? "tls_key" : "tls_cert");
        return -1;
    }
    if (cfg->kem_grace > cfg->kem_rotate) {
        svc_put_err(err, err_size,
                    "kem_grace (%u s) is above kem_rotate (%u s): a replaced "
                    "key must be gone before the next one is replaced",
                    cfg->kem_grace, cfg->kem_rotate);
        return -1;
    }
    if (cfg->body_memory && cfg->body_memory < cfg->body_limit) {
        svc_put_err(err, err_size,
                    "body_memory (%zu bytes) is below body_limit (%zu bytes): "
                    "a body at the limit could never be taken",
                    cfg->body_memory, cfg->body_limit);
        return -1;
    }
    return gw_config_check_models(cfg, err, err_size);
}

int gw_config_live(const char *name)
{
    for (size_t i = 0; i < sizeof live_settings / sizeof live_settings[0]; i++)
        if (strcmp(name, live_settings[i]) == 0)
            return 1;
    return strcmp(name, "model") == 0;
}

int gw_config_keep_fixed(const gw_config *now, gw_config *next,
                         void (*report)(void *ctx, const char *name), void *ctx)
{
    size_t kept = svc_settings_keep(
        &table, now, next, live_settings,
        sizeof live_settings / sizeof live_settings[0], report, ctx);

    if (kept == (size_t)-1)
        return -1;
    /* TLS turned on or off: the listener would have to change */
    if (!now->tls_cert != !next->tls_cert) {
        const char *v[2] = {now->tls_cert, now->tls_key};
        char *copy[2] = {NULL, NULL};

        for (int i = 0; i < 2; i++)
            if (v[i] && (copy[i] = strdup(v[i])) == NULL) {
                free(copy[0]);
                return -1;
            }
        if (report)
            report(ctx, now->tls_cert ? "tls_cert (turning TLS off)"
                                      : "tls_cert (turning TLS on)");
        free(next->tls_cert);
        free(next->tls_key);
        next->tls_cert = copy[0];
        next->tls_key = copy[1];
        kept++;
    }
    return (int)kept;
}

void gw_config_help(FILE *out)
{
    svc_settings_help(&table, out);
}

const gw_model *gw_config_model(const gw_config *cfg, const char *id)
{
    if (!cfg || !id)
        return NULL;
    for (size_t i = 0; i < cfg->n_models && i < GW_MAX_MODELS; i++)
        if (cfg->models[i].id && strcmp(cfg->models[i].id, id) == 0)
            return &cfg->models[i];
    return NULL;
}
