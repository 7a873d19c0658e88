/* veil-keys: generate, list, show and delete veil keys, in a PKCS#11 token
 * or in software (NOMYO key directory).  PINs never come from argv. */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "cmdtable.h"
#include "exitcode.h"
#include "toolenv.h"
#include "veil/engine.h"

/* The smallest RSA key veil and veild take (VEIL_PKG_MIN_RSA_BITS in
 * protocol/package.h, which this tool does not link). */
#define MIN_RSA_BITS 2048u

static const char usage_main[] =
    "usage: veil-keys COMMAND [OPTIONS]\n"
    "\n"
    "Commands:\n"
    "  generate   make a key pair in a token or in a key directory\n"
    "  list       list the keys of a token or key directory\n"
    "  show       print a key's public key (PEM) and SHA-256 fingerprint\n"
    "  delete     destroy a key\n"
    "  test       check a key works: wrap in software, unwrap (or sign) with "
    "it\n"
    "  caps       what a token (or the software provider) can do\n"
    "  rotate     make veild's next server key and print the rotation "
    "steps\n"
    "\n"
    "Where the key lives (every command):\n"
    "  --token URI         a PKCS#11 token, e.g. 'pkcs11:token=veil'\n"
    "  --key-dir DIR       a NOMYO key directory (private_key.pem, "
    "public_key.pem)\n"
    "  --module M          PKCS#11 module: a .so path or p11-kit name\n"
    "                      (default: $VEIL_PKCS11_MODULE, module-path= or\n"
    "                      module-name= in the URI, else the p11-kit module\n"
    "                      whose token matches)\n"
    "  --pin-source SPEC   file:PATH, credential:NAME, env:NAME or prompt\n"
    "                      (default: $VEIL_PIN_SOURCE, else prompt on a\n"
    "                      terminal)\n"
    "  -v, --verbose       debug log on stderr (never shows keys or PINs)\n"
    "  --json              list, show, generate, test and caps print JSON on\n"
    "                      stdout; an error is {\"error\": {\"exit_code\",\n"
    "                      \"detail\"}} there too\n"
    "  -h, --help          this help\n"
    "  --version           print the version\n"
    "\n"
    "Run 'veil-keys COMMAND --help' for a command's options.\n"
    "\n"
    "Exit codes (the same in veil and veild): 0 success, 1 other error,\n"
    "2 usage or configuration, 3 token or key not found, 4 PIN wrong,\n"
    "locked, missing or unreadable, 5 module or token failure, 6 already\n"
    "exists.\n"
    "\n"
    "Flags are written with dashes; --pin_source works as --pin-source.\n";

static const char usage_generate[] =
    "usage: veil-keys generate (--token URI --label LABEL | --key-dir DIR)\n"
    "                          [--type rsa|ec] [--bits 2048|3072|4096]\n"
    "                          [--id HEX] [--session]\n"
    "                          [--password-source SPEC]\n"
    "Makes a key pair. In a token the private key is sensitive and not\n"
    "extractable; --session makes it a session object that disappears when\n"
    "veil-keys exits (for trying things out). In a key directory the private\n"
    "key is written as PKCS#8 PEM, encrypted when --password-source is given,\n"
    "files mode 0600. Defaults: --type rsa --bits 4096.\n";

static const char usage_list[] =
    "usage: veil-keys list (--token URI | --key-dir DIR) [--module M]\n"
    "Lists private keys: label, type and size, fingerprint and URI.\n";

static const char usage_show[] =
    "usage: veil-keys show (--key URI|LABEL | --key-dir DIR) [--pem | "
    "--fingerprint]\n"
    "Prints the key's details, public key (PEM SPKI) and fingerprint;\n"
    "--pem or --fingerprint prints only that.\n";

static const char usage_delete[] =
    "usage: veil-keys delete (--key URI|LABEL | --key-dir DIR) --yes\n"
    "Destroys the key (both halves in a token; both files in a directory).\n"
    "Without --yes nothing is deleted.\n";

static const char usage_test[] =
    "usage: veil-keys test (--key URI|LABEL | --key-dir DIR) [-v]\n"
    "Checks that veil can use the key: an RSA key gets a random secret\n"
    "wrapped to its public half in software (RSA-OAEP-SHA256) and unwrapped\n"
    "with the private key where it lives; an EC key signs and the signature\n"
    "is verified in software. With -v the debug log says which mechanism\n"
    "the token used. Prints 'ok' and exits 0 when it works.\n";

static const char usage_rotate[] =
    "usage: veil-keys rotate --token URI --label LABEL [--key CURRENT]\n"
    "                        [--bits 2048|3072|4096]\n"
    "Makes the next server key of a veild (RSA, sensitive, not extractable)\n"
    "in the token and prints the rotation: server_key_next = its URI and a\n"
    "reload (veild then opens requests sealed to either key and serves the\n"
    "next one at /pki/next_public_key), clients pin it ahead (veil chat\n"
    "--server-key-pin takes the current or the next key), the swap\n"
    "(server_key = the new key, server_key_next removed, a restart), and\n"
    "the old key's deletion.  --key names the current server key, for the\n"
    "last step.  Default: --bits 4096.\n";

static const char usage_caps[] =
    "usage: veil-keys caps [--token URI]\n"
    "Prints the mechanisms veil found in the token (or software provider).\n";

struct opts {
    const char *token, *dir, *key, *module, *pin_source, *password_source;
    const char *label, *type, *id_hex;
    unsigned bits;
    int session, pem_only, fp_only, yes, verbose, help, json;
};

/* --json: data and errors as JSON on stdout. */
static int json_out;

/* Prints j (owned) as one JSON document on stdout; 0 when it could not. */
static int print_json(cJSON *j)
{
    char *text = j ? cJSON_Print(j) : NULL;
    int ok = text != NULL;

    if (ok)
        printf("%s\n", text);
    free(text);
    cJSON_Delete(j);
    return ok;
}

/* With --json: {"error": {"exit_code": N, "detail": "..."}} on stdout. */
static void json_error(int code, const char *detail)
{
    cJSON *j = json_out ? cJSON_CreateObject() : NULL;
    cJSON *e = j ? cJSON_AddObjectToObject(j, "error") : NULL;

    if (e && cJSON_AddNumberToObject(e, "exit_code", code) &&
        cJSON_AddStringToObject(e, "detail", detail))
        print_json(j);
    else
        cJSON_Delete(j);
}

/* The last error on stderr (and with --json on stdout); its exit code
 * (engine/exitcode.h). */
static int fail(veil_rc rc)
{
    veil_error e = *veil_last_error();
    int code;

    fprintf(stderr, "veil-keys: %s\n", e.message);
    e.code = rc;
    code = veil_exit_for(&e);
    json_error(code, e.message);
    return code;
}

/* A command used wrongly: its usage on stderr, exit 2. */
static int usage_fail(const char *usage)
{
    fputs(usage, stderr);
    json_error(VEIL_EXIT_USAGE, "usage: see the command's --help");
    return VEIL_EXIT_USAGE;
}

/* A message of this tool (not the engine's) on stderr, and as JSON; the
 * exit code given. */
static int tool_fail(int code, const char *msg)
{
    fprintf(stderr, "veil-keys: %s\n", msg);
    json_error(code, msg);
    return code;
}

static void log_stderr(void *ctx, veil_log_level level, const char *line)
{
    static const char *const names[] = {"error", "warning", "info", "debug"};
    fprintf(stderr, "veil-keys: %s: %s\n", names[level], line);
}

static void spinner(void *ctx)
{
    static const char frames[] = "|/-\\";
    unsigned *n = ctx;

    fprintf(stderr, "\r%c ", frames[(*n)++ % 4]);
    fflush(stderr);
}

static int parse_hex(const char *hex, uint8_t *out, size_t max, size_t *len)
{
    size_t n = strlen(hex);

    if (n % 2 || n / 2 > max)
        return 0;
    for (size_t i = 0; i < n / 2; i++) {
        char b[3] = {hex[2 * i], hex[2 * i + 1], 0};
        char *end;
        unsigned long v = strtoul(b, &end, 16);
        if (*end)
            return 0;
        out[i] = (uint8_t)v;
    }
    *len = n / 2;
    return 1;
}

static int parse_opts(int argc, char **argv, struct opts *o)
{
    static const struct option longopts[] = {
        {"token", required_argument, NULL, 't'},
        {"key-dir", required_argument, NULL, 'd'},
        {"dir", required_argument, NULL, 'd'}, /* the older name */
        {"key", required_argument, NULL, 'k'},
        {"module", required_argument, NULL, 'm'},
        {"pin-source", required_argument, NULL, 'P'},
        {"password-source", required_argument, NULL, 'W'},
        {"label", required_argument, NULL, 'l'},
        {"type", required_argument, NULL, 'T'},
        {"bits", required_argument, NULL, 'b'},
        {"id", required_argument, NULL, 'i'},
        {"session", no_argument, NULL, 's'},
        {"pem", no_argument, NULL, 'p'},
        {"fingerprint", no_argument, NULL, 'f'},
        {"yes", no_argument, NULL, 'y'},
        {"verbose", no_argument, NULL, 'v'},
        {"json", no_argument, NULL, 'J'},
        {"help", no_argument, NULL, 'h'},
        {"pin", required_argument, NULL, 'X'},
        {NULL, 0, NULL, 0},
    };
    int c;

    /* every flag with dashes, and the same with underscores */
    struct option both[2 * sizeof longopts / sizeof longopts[0]];
    char names[512];

    if (veil_longopts_both(longopts, both, sizeof both / sizeof both[0], names,
                           sizeof names) < 0)
        return 0;
    o->bits = 4096;
    o->module = veil_env(VEIL_ENV_MODULE);
    o->pin_source = veil_env(VEIL_ENV_PIN_SOURCE);
    optind = 1;
    while ((c = getopt_long(argc, argv, "vh", both, NULL)) != -1) {
        char *end;
        switch (c) {
        case 't':
            o->token = optarg;
            break;
        case 'd':
            o->dir = optarg;
            break;
        case 'J':
            o->json = json_out = 1;
            break;
        case 'k':
            o->key = optarg;
            break;
        case 'm':
            o->module = optarg;
            break;
        case 'P':
            o->pin_source = optarg;
            break;
        case 'W':
            o->password_source = optarg;
            break;
        case 'l':
            o->label = optarg;
            break;
        case 'T':
            o->type = optarg;
            break;
        case 'i':
            o->id_hex = optarg;
            break;
        case 's':
            o->session = 1;
            break;
        case 'p':
            o->pem_only = 1;
            break;
        case 'f':
            o->fp_only = 1;
            break;
        case 'y':
            o->yes = 1;
            break;
        case 'v':
            o->verbose = 1;
            break;
        case 'h':
            o->help = 1;
            break;
        case 'b':
            o->bits = (unsigned)strtoul(optarg, &end, 10);
            if (*end || !*optarg) {
                fprintf(stderr, "veil-keys: --bits takes a number\n");
                return 0;
            }
            break;
        case 'X':
            fprintf(stderr, "veil-keys: a PIN is never taken on the command "
                            "line; use --pin-source file:PATH, env:NAME or "
                            "prompt\n");
            return 0;
        default:
            return 0;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "veil-keys: unexpected argument '%s'\n", argv[optind]);
        return 0;
    }
    return 1;
}

static veil_rc engine_for(const struct opts *o, veil_engine **e)
{
    veil_engine_config cfg = {0};
    veil_rc rc;

    cfg.pkcs11_module = o->module;
    cfg.default_token = o->token;
    /* A key directory's password comes from --password-source first. */
    if (o->pin_source || (o->dir && o->password_source)) {
        rc = veil_pin_source_parse(
            o->dir && o->password_source ? o->password_source : o->pin_source,
            &cfg.pin);
        if (rc != VEIL_OK)
            return rc;
    } else if (isatty(STDIN_FILENO)) {
        cfg.pin.kind = VEIL_PIN_PROMPT;
    }
    if (o->verbose) {
        cfg.log = log_stderr;
        cfg.log_level = VEIL_LOG_DEBUG;
    } else {
        cfg.log = log_stderr;
        cfg.log_level = VEIL_LOG_WARN;
    }
    return veil_engine_new(&cfg, e);
}

static void print_info(const veil_key_info *i)
{
    printf("label:        %s\n", i->label);
    if (i->type == VEIL_KEY_RSA)
        printf("type:         RSA-%u\n", i->bits);
    else
        printf("type:         EC-P256\n");
    printf("provider:     %s\n", i->provider);
    if (i->uri[0])
        printf("uri:          %s\n", i->uri);
    if (i->id_hex[0])
        printf("id:           %s\n", i->id_hex);
    if (i->sensitive >= 0)
        printf("sensitive:    %s\n", i->sensitive ? "yes" : "no");
    if (i->extractable >= 0)
        printf("extractable:  %s\n", i->extractable ? "yes" : "no");
    printf("persistent:   %s\n", i->persistent ? "yes" : "no (session)");
    printf("fingerprint:  %s\n", i->fingerprint);
}

/* A key's facts as `show` prints them, as a JSON object (NULL: no
 * memory).  sensitive/extractable are null where they do not apply. */
static cJSON *info_json(const veil_key_info *i)
{
    cJSON *j = cJSON_CreateObject();
    int ok = j != NULL;

    ok =
        ok && cJSON_AddStringToObject(j, "label", i->label) &&
        cJSON_AddStringToObject(j, "type",
                                i->type == VEIL_KEY_RSA ? "rsa" : "ec-p256") &&
        cJSON_AddNumberToObject(j, "bits", i->bits) &&
        cJSON_AddStringToObject(j, "provider", i->provider) &&
        (i->uri[0] ? cJSON_AddStringToObject(j, "uri", i->uri)
                   : cJSON_AddNullToObject(j, "uri")) &&
        (i->id_hex[0] ? cJSON_AddStringToObject(j, "id", i->id_hex)
                      : cJSON_AddNullToObject(j, "id")) &&
        (i->sensitive >= 0 ? cJSON_AddBoolToObject(j, "sensitive", i->sensitive)
                           : cJSON_AddNullToObject(j, "sensitive")) &&
        (i->extractable >= 0
             ? cJSON_AddBoolToObject(j, "extractable", i->extractable)
             : cJSON_AddNullToObject(j, "extractable")) &&
        cJSON_AddBoolToObject(j, "persistent", i->persistent) &&
        cJSON_AddStringToObject(j, "fingerprint", i->fingerprint);
    if (!ok) {
        cJSON_Delete(j);
        return NULL;
    }
    return j;
}

/* A key as the command prints it: text, or with --json one object. */
static int print_key(const veil_key_info *i, const char *pem)
{
    cJSON *j;

    if (!json_out) {
        print_info(i);
        if (pem)
            fputs(pem, stdout);
        return 1;
    }
    j = info_json(i);
    if (j && pem && !cJSON_AddStringToObject(j, "public_key_pem", pem)) {
        cJSON_Delete(j);
        j = NULL;
    }
    return print_json(j);
}

static int list_cb(void *ctx, const veil_key_info *i)
{
    struct list_ctx {
        unsigned n;
        cJSON *keys;
    } *l = ctx;
    cJSON *j;

    if (l->keys) {
        if ((j = info_json(i)) == NULL)
            return -1;
        cJSON_AddItemToArray(l->keys, j);
        l->n++;
        return 0;
    }
    if (l->n++)
        printf("\n");
    print_info(i);
    return 0;
}

static veil_rc open_key(veil_engine *e, const struct opts *o, veil_key **k)
{
    char ref[4200];

    if (o->dir) {
        snprintf(ref, sizeof ref, "dir:%s", o->dir);
        return veil_key_open(e, ref, k);
    }
    return veil_key_open(e, o->key, k);
}

static int cmd_generate(veil_engine *e, const struct opts *o)
{
    veil_keygen_params kp = {0};
    veil_key_info info;
    veil_key *k = NULL;
    uint8_t id[64];
    unsigned frame = 0;
    int tty = isatty(STDERR_FILENO);
    veil_rc rc;

    if ((!o->token == !o->dir) || (o->token && !o->label)) {
        return usage_fail(usage_generate);
    }
    kp.type = (!o->type || strcmp(o->type, "rsa") == 0) ? VEIL_KEY_RSA
              : strcmp(o->type, "ec") == 0              ? VEIL_KEY_EC_P256
                                                        : 0;
    if (!kp.type) {
        return tool_fail(VEIL_EXIT_USAGE, "--type is rsa or ec");
    }
    kp.bits = kp.type == VEIL_KEY_RSA ? o->bits : 256;
    kp.label = o->label ? o->label : "veil";
    kp.session_only = o->session;
    if (o->id_hex) {
        if (!parse_hex(o->id_hex, id, sizeof id, &kp.id_len) || !kp.id_len) {
            return tool_fail(VEIL_EXIT_USAGE,
                             "--id takes 1 to 64 bytes in hex");
        }
        kp.id = id;
    }
    kp.progress = tty ? spinner : NULL;
    kp.progress_ctx = &frame;
    fprintf(stderr, "veil-keys: generating %s%.0u key \"%s\" in %s%s\n",
            kp.type == VEIL_KEY_RSA ? "RSA-" : "EC-P256",
            kp.type == VEIL_KEY_RSA ? kp.bits : 0, kp.label,
            o->token ? o->token : "software",
            kp.type == VEIL_KEY_RSA && kp.bits >= 4096 ? " (this takes a while)"
                                                       : "");
    rc = veil_key_generate(e, o->token ? o->token : "software", &kp, &k);
    if (tty)
        fprintf(stderr, "\r  \r");
    if (rc != VEIL_OK)
        return fail(rc);
    if (o->dir) {
        veil_pin_source pw = {0};
        if (o->password_source &&
            (rc = veil_pin_source_parse(o->password_source, &pw)) != VEIL_OK) {
            veil_key_free(k);
            return fail(rc);
        }
        rc = veil_key_save(e, k, o->dir, &pw);
        if (rc != VEIL_OK) {
            veil_key_free(k);
            return fail(rc);
        }
        veil_key_free(k);
        k = NULL;
        rc = open_key(e, o, &k); /* report what was written */
        if (rc != VEIL_OK)
            return fail(rc);
    }
    rc = veil_key_get_info(k, &info);
    veil_key_free(k);
    if (rc != VEIL_OK)
        return fail(rc);
    return print_key(&info, NULL) ? VEIL_EXIT_OK
                                  : tool_fail(VEIL_EXIT_FAIL, "out of memory");
}

static int cmd_show(veil_engine *e, const struct opts *o)
{
    veil_key_info info;
    veil_key *k = NULL;
    char *pem = NULL;
    veil_rc rc;

    if (!o->key == !o->dir) {
        return usage_fail(usage_show);
    }
    rc = open_key(e, o, &k);
    if (rc == VEIL_OK)
        rc = veil_key_get_info(k, &info);
    if (rc == VEIL_OK)
        rc = veil_key_public_pem(k, &pem);
    veil_key_free(k);
    if (rc != VEIL_OK) {
        free(pem);
        return fail(rc);
    }
    int ok = 1;
    if (o->fp_only && !json_out)
        printf("%s\n", info.fingerprint);
    else if (o->pem_only && !json_out)
        fputs(pem, stdout);
    else
        ok = print_key(&info, pem);
    free(pem);
    return ok ? VEIL_EXIT_OK : tool_fail(VEIL_EXIT_FAIL, "out of memory");
}

static int cmd_list(veil_engine *e, const struct opts *o)
{
    char where[4200];
    struct list_ctx {
        unsigned n;
        cJSON *keys;
    } l = {0, NULL};
    cJSON *j = NULL;
    veil_rc rc;

    if (!o->token == !o->dir) {
        return usage_fail(usage_list);
    }
    if (o->dir)
        snprintf(where, sizeof where, "dir:%s", o->dir);
    else
        snprintf(where, sizeof where, "%s", o->token);
    if (json_out && ((j = cJSON_CreateObject()) == NULL ||
                     (l.keys = cJSON_AddArrayToObject(j, "keys")) == NULL)) {
        cJSON_Delete(j);
        return tool_fail(VEIL_EXIT_FAIL, "out of memory");
    }
    rc = veil_key_list(e, where, list_cb, &l);
    if (rc != VEIL_OK) {
        cJSON_Delete(j);
        return fail(rc);
    }
    if (l.n == 0)
        fprintf(stderr, "veil-keys: no keys\n");
    if (j && !print_json(j))
        return tool_fail(VEIL_EXIT_FAIL, "out of memory");
    return VEIL_EXIT_OK;
}

static int cmd_delete(veil_engine *e, const struct opts *o)
{
    veil_key_info info;
    veil_key *k = NULL;
    veil_rc rc;

    if (!o->key == !o->dir) {
        return usage_fail(usage_delete);
    }
    rc = open_key(e, o, &k);
    if (rc != VEIL_OK)
        return fail(rc);
    veil_key_get_info(k, &info);
    if (!o->yes) {
        fprintf(stderr,
                "veil-keys: would delete \"%s\" (%s); add --yes to do it\n",
                info.label, info.fingerprint);
        veil_key_free(k);
        return VEIL_EXIT_USAGE;
    }
    rc = veil_key_delete(e, k);
    if (rc != VEIL_OK)
        return fail(rc);
    fprintf(stderr, "veil-keys: deleted \"%s\" (%s)\n", info.label,
            info.fingerprint);
    return VEIL_EXIT_OK;
}

static int cmd_test(veil_engine *e, const struct opts *o)
{
    static const uint8_t msg[] = "veil-keys test";
    uint8_t secret[32], buf[1024];
    size_t len = sizeof buf;
    veil_secbuf *got = NULL;
    veil_key_info info;
    veil_key *k = NULL;
    veil_rc rc;

    if (!o->key == !o->dir) {
        return usage_fail(usage_test);
    }
    rc = open_key(e, o, &k);
    if (rc == VEIL_OK)
        rc = veil_key_get_info(k, &info);
    if (rc == VEIL_OK && info.type == VEIL_KEY_RSA &&
        info.bits < MIN_RSA_BITS) {
        /* veil and veild refuse such a key; a test that passed would
         * mislead */
        char why[400];

        snprintf(why, sizeof why,
                 "RSA-%u key \"%s\" is too small: veil and veild need an RSA "
                 "key of at least %u bits (make one with veil-keys generate "
                 "--bits 2048|3072|4096)",
                 info.bits, info.label, MIN_RSA_BITS);
        veil_key_free(k);
        return tool_fail(VEIL_EXIT_USAGE, why);
    }
    if (rc == VEIL_OK && info.type == VEIL_KEY_RSA) {
        rc = veil_random(e, secret, sizeof secret);
        if (rc == VEIL_OK)
            rc = veil_rsa_encrypt(e, k, NULL, secret, sizeof secret, buf, &len);
        if (rc == VEIL_OK)
            rc = veil_rsa_decrypt(e, k, NULL, buf, len, &got);
        if (rc == VEIL_OK &&
            (veil_secbuf_len(got) != sizeof secret ||
             memcmp(veil_secbuf_data(got), secret, sizeof secret) != 0)) {
            fprintf(stderr, "veil-keys: unwrapped value differs\n");
            rc = VEIL_E_CRYPTO;
        }
        veil_secbuf_free(got);
    } else if (rc == VEIL_OK) {
        rc = veil_ecdsa_sign(e, k, msg, sizeof msg, buf, &len);
        if (rc == VEIL_OK)
            rc = veil_ecdsa_verify(e, k, msg, sizeof msg, buf, len);
    }
    veil_key_free(k);
    if (rc != VEIL_OK)
        return fail(rc);
    const char *what = info.type == VEIL_KEY_RSA
                           ? "unwrapped a secret wrapped in software"
                           : "signed; signature verified";
    if (json_out) {
        cJSON *j = info_json(&info);
        if (j && (!cJSON_AddBoolToObject(j, "ok", 1) ||
                  !cJSON_AddStringToObject(j, "checked", what))) {
            cJSON_Delete(j);
            j = NULL;
        }
        return print_json(j) ? VEIL_EXIT_OK
                             : tool_fail(VEIL_EXIT_FAIL, "out of memory");
    }
    printf("ok: %s %s-%u key \"%s\" %s\n", info.provider,
           info.type == VEIL_KEY_RSA ? "RSA" : "EC", info.bits, info.label,
           what);
    return VEIL_EXIT_OK;
}

static int cmd_caps(veil_engine *e, const struct opts *o)
{
    static const struct {
        unsigned bit;
        const char *name;
    } names[] = {
        {VEIL_CAP_RSA_GEN, "rsa-generate"},
        {VEIL_CAP_RSA_OAEP_SHA256, "rsa-oaep (mechanism listed)"},
        {VEIL_CAP_RSA_RAW, "rsa-x-509 (raw)"},
        {VEIL_CAP_EC_GEN, "ec-generate"},
        {VEIL_CAP_ECDSA, "ecdsa"},
        {VEIL_CAP_AES_GCM, "aes-gcm"},
        {VEIL_CAP_HKDF, "hkdf"},
        {VEIL_CAP_RANDOM, "random"},
        {VEIL_CAP_PERSIST, "persistent-keys"},
        {VEIL_CAP_ECDH, "ecdh"},
    };
    veil_caps caps;
    veil_rc rc = veil_engine_caps(e, o->token ? o->token : "software", &caps);

    if (rc != VEIL_OK)
        return fail(rc);
    if (json_out) {
        cJSON *j = cJSON_CreateObject(), *m;
        int ok = j && cJSON_AddStringToObject(j, "provider", caps.provider) &&
                 cJSON_AddStringToObject(j, "description", caps.description);
        if (ok && caps.rsa_max_bits)
            ok =
                cJSON_AddNumberToObject(j, "rsa_min_bits", caps.rsa_min_bits) &&
                cJSON_AddNumberToObject(j, "rsa_max_bits", caps.rsa_max_bits);
        ok = ok && (m = cJSON_AddArrayToObject(j, "mechanisms")) != NULL;
        for (size_t i = 0; ok && i < sizeof names / sizeof names[0]; i++)
            if (caps.mechs & names[i].bit) {
                cJSON *n = cJSON_CreateString(names[i].name);
                ok = n != NULL;
                cJSON_AddItemToArray(m, n);
            }
        if (!ok) {
            cJSON_Delete(j);
            j = NULL;
        }
        return print_json(j) ? VEIL_EXIT_OK
                             : tool_fail(VEIL_EXIT_FAIL, "out of memory");
    }
    printf("provider:     %s\n", caps.provider);
    printf("description:  %s\n", caps.description);
    if (caps.rsa_max_bits)
        printf("rsa bits:     %u..%u\n", caps.rsa_min_bits, caps.rsa_max_bits);
    printf("mechanisms:  ");
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (caps.mechs & names[i].bit)
            printf(" %s", names[i].name);
    printf("\n");
    return VEIL_EXIT_OK;
}

/* The steps of a rotation, once the next key is made (current: the
 * current key's info, or NULL). */
static void print_rotation(const veil_key_info *next,
                           const veil_key_info *current)
{
    const char *old = current ? current->uri : "<the current server_key>";

    printf("\nRotating veild's server key to %s:\n"
           "\n"
           "1. Add the next key to veild's settings and reload:\n"
           "     server_key_next = %s\n"
           "     systemctl reload veild   (or: kill -HUP <veild's pid>)\n"
           "   veild logs \"next server key: %s\", opens requests sealed\n"
           "   to either key, serves the new one at GET "
           "/pki/next_public_key\n"
           "   and names it in the X-Veil-Next-Key header of "
           "/pki/public_key.\n"
           "\n"
           "2. Let clients pin ahead: veil chat --server-key-pin %s\n"
           "   is accepted now (the next key) and after the swap (the "
           "current).\n"
           "\n"
           "3. Swap, when the clients have moved (NOMYO clients fetch\n"
           "   /pki/public_key for each session): set\n"
           "     server_key = %s\n"
           "   remove server_key_next, and restart veild (server_key needs\n"
           "   a restart).  From then on requests sealed to the old key get\n"
           "   the one 400 of an undecryptable package.\n"
           "\n"
           "4. Drop the old key:\n"
           "     veil-keys delete --key '%s' --yes\n",
           next->fingerprint, next->uri, next->fingerprint, next->fingerprint,
           next->uri, old);
}

static int cmd_rotate(veil_engine *e, const struct opts *o)
{
    veil_keygen_params kp = {.type = VEIL_KEY_RSA, .bits = o->bits};
    veil_key_info cur, info;
    veil_key *k = NULL, *c = NULL;
    veil_rc rc;

    if (!o->token || !o->label || o->dir || o->type) {
        return usage_fail(usage_rotate);
    }
    if (o->key && ((rc = veil_key_open(e, o->key, &c)) != VEIL_OK ||
                   (rc = veil_key_get_info(c, &cur)) != VEIL_OK)) {
        veil_key_free(c);
        return fail(rc);
    }
    veil_key_free(c);
    kp.label = o->label;
    fprintf(stderr,
            "veil-keys: generating the next server key, RSA-%u \"%s\" in "
            "%s%s\n",
            kp.bits, kp.label, o->token,
            kp.bits >= 4096 ? " (this takes a while)" : "");
    rc = veil_key_generate(e, o->token, &kp, &k);
    if (rc == VEIL_OK)
        rc = veil_key_get_info(k, &info);
    veil_key_free(k);
    if (rc != VEIL_OK)
        return fail(rc);
    print_info(&info);
    print_rotation(&info, o->key ? &cur : NULL);
    return VEIL_EXIT_OK;
}

/* help adds the environment it reads (asked for only) */
static void help_more(FILE *f, int asked)
{
    if (asked)
        veil_env_help(f, VEIL_TOOL_KEYS);
}

int main(int argc, char **argv)
{
    enum { GENERATE, LIST, SHOW, DELETE, TEST, CAPS, ROTATE };
    static int (*const run[])(veil_engine *, const struct opts *) = {
        [GENERATE] = cmd_generate, [LIST] = cmd_list, [SHOW] = cmd_show,
        [DELETE] = cmd_delete,     [TEST] = cmd_test, [CAPS] = cmd_caps,
        [ROTATE] = cmd_rotate,
    };
    static const veil_cmd cmds[] = {
        {"generate", GENERATE, usage_generate},
        {"list", LIST, usage_list},
        {"show", SHOW, usage_show},
        {"delete", DELETE, usage_delete},
        {"test", TEST, usage_test},
        {"caps", CAPS, usage_caps},
        {"rotate", ROTATE, usage_rotate},
    };
    static const veil_cmdtable table = {
        "veil-keys", usage_main, cmds, sizeof cmds / sizeof cmds[0],
        help_more,   0};
    struct opts o = {0};
    veil_engine *e = NULL;
    int code;
    veil_rc rc;
    const veil_cmd *c;

    /* Before a PIN or key password is read: no core file, and no ptrace
     * or /proc/PID/mem from other processes of the user, as in veild. */
    if (veil_disable_core_dumps() != VEIL_OK)
        fprintf(stderr,
                "veil-keys: warning: core dumps could not be turned off: %s\n",
                veil_last_error()->message);
    c = veil_cmdtable_find(&table, argc, argv, &code);
    if (c == NULL)
        return code;
    if (!parse_opts(argc - 1, argv + 1, &o))
        return usage_fail(c->usage);
    if (o.help) {
        fputs(c->usage, stdout);
        return VEIL_EXIT_OK;
    }
    rc = engine_for(&o, &e);
    if (rc != VEIL_OK)
        return fail(rc);
    code = run[c->id](e, &o);
    veil_engine_free(e);
    return code;
}
