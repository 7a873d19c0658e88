/* libFuzzer harness: protocol v2's parsers (docs/PROTOCOL-V2.md).
 *
 * The same bytes go through:
 *  - the Binary HTTP decoder (protocol/bhttp.c) as a request and as a
 *    response.  A message it accepts must encode (known-length) and decode
 *    again to the same control data, fields and content;
 *  - the application/ohttp-keys decoder (protocol/ohttp.c).  A list it
 *    accepts must encode and decode again to the same configurations;
 *  - the gateway's request decapsulation, with RFC 9458 appendix A's
 *    X25519 key (the seeds include that appendix's encapsulated request, so
 *    a mutation that keeps the header and enc reaches the AEAD); what opens
 *    goes to the request decoder, and a response is encapsulated to it.
 * Seeds (fuzz/corpus/ohttp) are the RFC 9292 and RFC 9458 examples. */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "bhttp.h"
#include "fuzz.h"
#include "ohttp.h"

static veil_hpke_key *gw_key;
static veil_ohttp_keyconfig gw_config;

/* The RFC 9458 appendix A gateway key and its configuration. */
static const uint8_t rfc_sk[32] = {
    0x3c, 0x16, 0x89, 0x75, 0x67, 0x4b, 0x2f, 0xa8, 0xe4, 0x65, 0x97,
    0x0b, 0x79, 0xc8, 0xdc, 0xf0, 0x9f, 0x1c, 0x74, 0x16, 0x26, 0x48,
    0x0b, 0xd4, 0xc6, 0x16, 0x2f, 0xc5, 0xb6, 0xa9, 0x8e, 0x1a};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    veil_engine *e = fuzz_engine();
    size_t pk_len = sizeof gw_config.pk;

    (void)argc;
    (void)argv;
    if (veil_hpke_key_from_private(VEIL_HPKE_KEM_X25519, rfc_sk, sizeof rfc_sk,
                                   &gw_key) != VEIL_OK ||
        veil_hpke_key_public(gw_key, gw_config.pk, &pk_len) != VEIL_OK)
        fuzz_die("gateway key");
    gw_config.key_id = 1;
    gw_config.kem = VEIL_HPKE_KEM_X25519;
    gw_config.pk_len = pk_len;
    gw_config.n_algs = 1;
    gw_config.algs[0] =
        (veil_ohttp_alg){VEIL_HPKE_KDF_SHA256, VEIL_HPKE_AEAD_AES128GCM};
    (void)e;
    return 0;
}

static int bstr_eq(veil_bstr a, veil_bstr b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.p, b.p, a.len) == 0);
}

static int section_eq(const veil_bhttp_section *a, const veil_bhttp_section *b)
{
    if (a->n != b->n)
        return 0;
    for (size_t i = 0; i < a->n; i++)
        if (!bstr_eq(a->fields[i].name, b->fields[i].name) ||
            !bstr_eq(a->fields[i].value, b->fields[i].value))
            return 0;
    return 1;
}

static void bhttp_round_trip(const uint8_t *data, size_t size,
                             veil_bhttp_kind kind)
{
    veil_bhttp_msg *m = NULL, *again = NULL;
    veil_secbuf *enc = NULL;
    veil_rc rc = veil_bhttp_decode(data, size, kind, NULL, &m);

    fuzz_say(kind == VEIL_BHTTP_REQUEST ? "bhttp request" : "bhttp response",
             rc);
    if (rc != VEIL_OK)
        return;
    if (veil_bhttp_encode(m, 0, &enc) != VEIL_OK ||
        veil_bhttp_decode(veil_secbuf_data(enc), veil_secbuf_len(enc), kind,
                          NULL, &again) != VEIL_OK)
        abort(); /* what was accepted must encode and decode back */
    if (!bstr_eq(m->method, again->method) || !bstr_eq(m->path, again->path) ||
        !bstr_eq(m->scheme, again->scheme) ||
        !bstr_eq(m->authority, again->authority) ||
        m->status != again->status || m->n_info != again->n_info ||
        !section_eq(&m->headers, &again->headers) ||
        !section_eq(&m->trailers, &again->trailers) ||
        !bstr_eq(m->content, again->content))
        abort();
    for (size_t i = 0; i < m->n_info; i++)
        if (m->info[i].status != again->info[i].status ||
            !section_eq(&m->info[i].headers, &again->info[i].headers))
            abort();
    veil_bhttp_msg_free(again);
    veil_secbuf_free(enc);
    veil_bhttp_msg_free(m);
}

static void keys_round_trip(const uint8_t *data, size_t size)
{
    veil_ohttp_keyconfig *list = NULL, *again = NULL;
    size_t n = 0, n2 = 0, len = 0;
    uint8_t *body = NULL;
    veil_rc rc = veil_ohttp_keys_decode(data, size, &list, &n);

    fuzz_say("ohttp-keys", rc);
    if (rc != VEIL_OK)
        return;
    if (veil_ohttp_keys_encode(list, n, &body, &len) != VEIL_OK ||
        veil_ohttp_keys_decode(body, len, &again, &n2) != VEIL_OK || n2 != n ||
        memcmp(list, again, n * sizeof *list) != 0)
        abort();
    free(again);
    free(body);
    free(list);
}

static void gateway(const uint8_t *data, size_t size)
{
    veil_engine *e = fuzz_engine();
    veil_secbuf *req = NULL;
    veil_ohttp_ctx *ctx = NULL;
    uint8_t *out = NULL;
    size_t out_len = 0;
    veil_rc rc =
        veil_ohttp_decap_request(e, &gw_config, gw_key, data, size, &req, &ctx);

    fuzz_say("ohttp request", rc);
    if (rc != VEIL_OK) {
        if (req || ctx)
            abort(); /* a refusal hands out nothing */
        return;
    }
    bhttp_round_trip(veil_secbuf_data(req), veil_secbuf_len(req),
                     VEIL_BHTTP_REQUEST);
    if (veil_ohttp_encap_response(e, ctx, veil_secbuf_data(req),
                                  veil_secbuf_len(req), NULL, &out,
                                  &out_len) != VEIL_OK)
        abort();
    free(out);
    veil_ohttp_ctx_free(ctx);
    veil_secbuf_free(req);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* a private copy: a read past the end is a finding, not libFuzzer's */
    uint8_t *copy = malloc(size ? size : 1);

    if (!copy)
        return 0;
    memcpy(copy, data, size);
    bhttp_round_trip(copy, size, VEIL_BHTTP_REQUEST);
    bhttp_round_trip(copy, size, VEIL_BHTTP_RESPONSE);
    keys_round_trip(copy, size);
    gateway(copy, size);
    free(copy);
    return 0;
}
