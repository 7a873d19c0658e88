/* Binary HTTP (protocol/bhttp.c) and Oblivious HTTP (protocol/ohttp.c):
 * the examples of RFC 9292 section 5 and RFC 9458 appendix A, byte for
 * byte, then hostile input: every truncation, every flipped byte, bad
 * varints, huge lengths, too many fields, invalid names and values.  A
 * P-256 round trip runs with the gateway key in the software provider
 * (its DH through veil_ecdh_derive). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bhttp.h"
#include "engine_int.h"
#include "hpke.h"
#include "ohttp.h"
#include "testutil.h"

static veil_engine *e;

static uint8_t *hx(const char *s, size_t *n)
{
    uint8_t *b = tu_hex(s, n);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    return b;
}

static int bstr_is(veil_bstr b, const char *s)
{
    return b.len == strlen(s) && (b.len == 0 || memcmp(b.p, s, b.len) == 0);
}

static int secbuf_is(veil_secbuf *b, const uint8_t *p, size_t n)
{
    return b && veil_secbuf_len(b) == n &&
           (n == 0 || memcmp(veil_secbuf_data(b), p, n) == 0);
}

/* ---- RFC 9292 section 5 ------------------------------------------------ */

/* 5.1, known length */
static const char req_kl[] =
    "0003474554056874747073000a2f68656c6c6f2e747874406c0a757365722d6167656e74"
    "346375726c2f372e31362e33206c69626375726c2f372e31362e33204f70656e53534c2f"
    "302e392e376c207a6c69622f312e322e3304686f73740f7777772e6578616d706c652e63"
    "6f6d0f6163636570742d6c616e677561676506656e2c206d690000";
/* 5.1, indeterminate length, 10 bytes of padding */
static const char req_il[] =
    "0203474554056874747073000a2f68656c6c6f2e7478740a757365722d6167656e743463"
    "75726c2f372e31362e33206c69626375726c2f372e31362e33204f70656e53534c2f302e"
    "392e376c207a6c69622f312e322e3304686f73740f7777772e6578616d706c652e636f6d"
    "0f6163636570742d6c616e677561676506656e2c206d6900000000000000000000000000";
/* 5.2, indeterminate length with informational responses 102 and 103 */
static const char res_il[] =
    "0340660772756e6e696e670a22736c65657020313522004067046c696e6b233c2f737479"
    "6c652e6373733e3b2072656c3d7072656c6f61643b2061733d7374796c65046c696e6b24"
    "3c2f7363726970742e6a733e3b2072656c3d7072656c6f61643b2061733d736372697074"
    "0040c804646174651d4d6f6e2c203237204a756c20323030392031323a32383a35332047"
    "4d540673657276657206417061636865"
    "0d6c6173742d6d6f6469666965641d5765642c"
    "203232204a756c20323030392031393a31353a353620474d5404657461671422333461"
    "613338372d642d3135363865623030220d6163636570742d72616e6765730562797465"
    "730e636f6e74656e742d6c656e67746802353104766172790f4163636570742d456e63"
    "6f64696e670c636f6e74656e742d747970650a746578742f706c61696e003348656c6c"
    "6f20576f726c6421204d7920636f6e74656e7420696e636c75646573206120747261696c"
    "696e672043524c462e0d0a0000";
/* 5.2, known-length encoding of the chunked response */
static const char res_chunked[] =
    "0140c8001d5468697320636f6e74656e7420636f6e7461696e732043524c462e0d0a0d07"
    "747261696c65720474657874";

static const veil_bhttp_field hello_fields[] = {
    {VEIL_BSTR("user-agent"),
     VEIL_BSTR("curl/7.16.3 libcurl/7.16.3 OpenSSL/0.9.7l zlib/1.2.3")},
    {VEIL_BSTR("host"), VEIL_BSTR("www.example.com")},
    {VEIL_BSTR("accept-language"), VEIL_BSTR("en, mi")},
};

static void check_hello(const veil_bhttp_msg *m)
{
    CU_ASSERT_FATAL(m != NULL);
    CU_ASSERT(m->is_request);
    CU_ASSERT(bstr_is(m->method, "GET") && bstr_is(m->scheme, "https") &&
              bstr_is(m->authority, "") && bstr_is(m->path, "/hello.txt"));
    CU_ASSERT_EQUAL_FATAL(m->headers.n, 3);
    for (size_t i = 0; i < 3; i++) {
        CU_ASSERT(m->headers.fields[i].name.len == hello_fields[i].name.len &&
                  memcmp(m->headers.fields[i].name.p, hello_fields[i].name.p,
                         hello_fields[i].name.len) == 0);
        CU_ASSERT(m->headers.fields[i].value.len == hello_fields[i].value.len &&
                  memcmp(m->headers.fields[i].value.p, hello_fields[i].value.p,
                         hello_fields[i].value.len) == 0);
    }
    CU_ASSERT_EQUAL(m->content.len, 0);
    CU_ASSERT_EQUAL(m->trailers.n, 0);
}

static void test_rfc9292_request(void)
{
    veil_bhttp_msg req = {.is_request = 1,
                          .method = VEIL_BSTR("GET"),
                          .scheme = VEIL_BSTR("https"),
                          .authority = VEIL_BSTR(""),
                          .path = VEIL_BSTR("/hello.txt"),
                          .headers = {hello_fields, 3}};
    size_t kl_len, il_len;
    uint8_t *kl = hx(req_kl, &kl_len), *il = hx(req_il, &il_len);
    veil_secbuf *enc = NULL;
    veil_bhttp_msg *m = NULL;

    /* encoding gives the RFC's bytes */
    CU_ASSERT_EQUAL(veil_bhttp_encode(&req, 0, &enc), VEIL_OK);
    CU_ASSERT(secbuf_is(enc, kl, kl_len));
    veil_secbuf_free(enc);
    /* decoding, whole and with the last one or two bytes truncated */
    for (size_t cut = 0; cut <= 2; cut++) {
        CU_ASSERT_EQUAL(
            veil_bhttp_decode(kl, kl_len - cut, VEIL_BHTTP_REQUEST, NULL, &m),
            VEIL_OK);
        check_hello(m);
        CU_ASSERT(m && m->known_length);
        veil_bhttp_msg_free(m);
        m = NULL;
    }
    /* the indeterminate-length form, up to 12 bytes removable */
    for (size_t cut = 0; cut <= 12; cut++) {
        CU_ASSERT_EQUAL(
            veil_bhttp_decode(il, il_len - cut, VEIL_BHTTP_REQUEST, NULL, &m),
            VEIL_OK);
        check_hello(m);
        CU_ASSERT(m && !m->known_length);
        veil_bhttp_msg_free(m);
        m = NULL;
    }
    /* a request is not a response */
    CU_ASSERT_EQUAL(
        veil_bhttp_decode(kl, kl_len, VEIL_BHTTP_RESPONSE, NULL, &m),
        VEIL_E_ARG);
    CU_ASSERT_PTR_NULL(m);
    free(kl);
    free(il);
}

static void test_rfc9292_responses(void)
{
    static const char body[] =
        "Hello World! My content includes a trailing CRLF.\r\n";
    static const veil_bhttp_field trailer[] = {
        {VEIL_BSTR("trailer"), VEIL_BSTR("text")}};
    static const char chunked_body[] = "This content contains CRLF.\r\n";
    veil_bhttp_msg res = {.is_request = 0,
                          .status = 200,
                          .content = VEIL_BSTR(chunked_body),
                          .trailers = {trailer, 1}};
    size_t il_len, ch_len;
    uint8_t *il = hx(res_il, &il_len), *ch = hx(res_chunked, &ch_len);
    veil_bhttp_msg *m = NULL;
    veil_secbuf *enc = NULL;
    const veil_bhttp_field *f;

    CU_ASSERT_EQUAL_FATAL(
        veil_bhttp_decode(il, il_len, VEIL_BHTTP_RESPONSE, NULL, &m), VEIL_OK);
    CU_ASSERT_EQUAL(m->n_info, 2);
    CU_ASSERT(m->n_info == 2 && m->info[0].status == 102 &&
              m->info[1].status == 103 && m->info[0].headers.n == 1 &&
              m->info[1].headers.n == 2);
    CU_ASSERT_EQUAL(m->status, 200);
    CU_ASSERT_EQUAL(m->headers.n, 8);
    f = veil_bhttp_field_get(&m->headers, "vary");
    CU_ASSERT(f && bstr_is(f->value, "Accept-Encoding"));
    CU_ASSERT(bstr_is(m->content, body));
    CU_ASSERT_EQUAL(m->trailers.n, 0);
    veil_bhttp_msg_free(m);
    m = NULL;

    CU_ASSERT_EQUAL(veil_bhttp_encode(&res, 0, &enc), VEIL_OK);
    CU_ASSERT(secbuf_is(enc, ch, ch_len));
    veil_secbuf_free(enc);
    CU_ASSERT_EQUAL_FATAL(
        veil_bhttp_decode(ch, ch_len, VEIL_BHTTP_RESPONSE, NULL, &m), VEIL_OK);
    CU_ASSERT(m->status == 200 && bstr_is(m->content, chunked_body) &&
              m->trailers.n == 1);
    veil_bhttp_msg_free(m);
    free(il);
    free(ch);
}

/* ---- RFC 9458 appendix A ------------------------------------------------ */

static const char a_sk[] =
    "3c168975674b2fa8e465970b79c8dcf09f1c741626480bd4c6162fc5b6a98e1a";
static const char a_config[] = "01002031e1f05a740102115220e9af918f738674aec95f"
                               "54db6e04eb705aae8e79815500080001000100010003";
static const char a_request[] =
    "00034745540568747470730b6578616d706c652e636f6d012f";
static const char a_eph[] =
    "bc51d5e930bda26589890ac7032f70ad12e4ecb37abb1b65b1256c9c48999c73";
static const char a_enc_request[] =
    "010020000100014b28f881333e7c164ffc499ad9796f877f4e1051ee6d31bad19dec96c2"
    "08b4726374e469135906992e1268c594d2a10c695d858c40a026e7965e7d86b83dd440b2"
    "c0185204b4d63525";
static const char a_response[] = "0140c8";
static const char a_nonce[] = "c789e7151fcba46158ca84b04464910d";
static const char a_enc_response[] =
    "c789e7151fcba46158ca84b04464910d86f9013e404feea014e7be4a441f234f857fbd";

static void test_rfc9458_example(void)
{
    size_t sk_len, cfg_len, rq_len, eph_len, erq_len, rs_len, n_len, ers_len;
    uint8_t *sk = hx(a_sk, &sk_len), *cfgb = hx(a_config, &cfg_len),
            *rq = hx(a_request, &rq_len), *ephb = hx(a_eph, &eph_len),
            *erq = hx(a_enc_request, &erq_len), *rs = hx(a_response, &rs_len),
            *nonce = hx(a_nonce, &n_len), *ers = hx(a_enc_response, &ers_len);
    veil_ohttp_keyconfig cfg, *list = NULL;
    veil_hpke_key *skR = NULL, *eph = NULL;
    veil_ohttp_ctx *cctx = NULL, *gctx = NULL;
    veil_ohttp_alg aes128 = {VEIL_HPKE_KDF_SHA256, VEIL_HPKE_AEAD_AES128GCM};
    uint8_t pk[32], *out = NULL, prefixed[2 + 64];
    size_t pk_len = sizeof pk, out_len = 0, n = 0;
    veil_secbuf *got = NULL;
    veil_bhttp_msg *m = NULL;
    veil_bhttp_msg get = {.is_request = 1,
                          .method = VEIL_BSTR("GET"),
                          .scheme = VEIL_BSTR("https"),
                          .authority = VEIL_BSTR("example.com"),
                          .path = VEIL_BSTR("/")};
    veil_bhttp_msg ok = {.status = 200};

    /* the key configuration: X25519, HKDF-SHA256 with AES-128-GCM and
     * ChaCha20-Poly1305 (which veil does not offer, so it is dropped) */
    CU_ASSERT_EQUAL_FATAL(veil_ohttp_keyconfig_decode(cfgb, cfg_len, &cfg),
                          VEIL_OK);
    CU_ASSERT(cfg.key_id == 1 && cfg.kem == VEIL_HPKE_KEM_X25519 &&
              cfg.pk_len == 32 && cfg.n_algs == 1 &&
              cfg.algs[0].aead == VEIL_HPKE_AEAD_AES128GCM);
    CU_ASSERT_EQUAL_FATAL(
        veil_hpke_key_from_private(VEIL_HPKE_KEM_X25519, sk, sk_len, &skR),
        VEIL_OK);
    CU_ASSERT_EQUAL(veil_hpke_key_public(skR, pk, &pk_len), VEIL_OK);
    CU_ASSERT_EQUAL(memcmp(pk, cfg.pk, 32), 0);
    /* the same configuration in an application/ohttp-keys list */
    prefixed[0] = 0;
    prefixed[1] = (uint8_t)cfg_len;
    memcpy(prefixed + 2, cfgb, cfg_len);
    CU_ASSERT_EQUAL(veil_ohttp_keys_decode(prefixed, 2 + cfg_len, &list, &n),
                    VEIL_OK);
    CU_ASSERT(n == 1 && list && memcmp(&list[0], &cfg, sizeof cfg) == 0);
    free(list);

    /* the inner request and response are the RFC's binary HTTP */
    CU_ASSERT_EQUAL(veil_bhttp_encode(&get, VEIL_BHTTP_TRUNCATE, &got),
                    VEIL_OK);
    CU_ASSERT(secbuf_is(got, rq, rq_len));
    veil_secbuf_free(got);
    CU_ASSERT_EQUAL(veil_bhttp_decode(rq, rq_len, VEIL_BHTTP_REQUEST, NULL, &m),
                    VEIL_OK);
    CU_ASSERT(m && bstr_is(m->authority, "example.com") &&
              bstr_is(m->path, "/"));
    veil_bhttp_msg_free(m);
    CU_ASSERT_EQUAL(veil_bhttp_encode(&ok, VEIL_BHTTP_TRUNCATE, &got), VEIL_OK);
    CU_ASSERT(secbuf_is(got, rs, rs_len));
    veil_secbuf_free(got);

    /* client: the encapsulated request, byte for byte */
    CU_ASSERT_EQUAL_FATAL(
        veil_hpke_key_from_private(VEIL_HPKE_KEM_X25519, ephb, eph_len, &eph),
        VEIL_OK);
    CU_ASSERT_EQUAL_FATAL(veil_ohttp_encap_request(e, &cfg, aes128, rq, rq_len,
                                                   eph, &out, &out_len, &cctx),
                          VEIL_OK);
    CU_ASSERT(out_len == erq_len && memcmp(out, erq, erq_len) == 0);
    free(out);
    out = NULL;

    /* gateway: the request back, then the encapsulated response */
    CU_ASSERT_EQUAL_FATAL(
        veil_ohttp_decap_request(e, &cfg, skR, erq, erq_len, &got, &gctx),
        VEIL_OK);
    CU_ASSERT(secbuf_is(got, rq, rq_len));
    veil_secbuf_free(got);
    CU_ASSERT_EQUAL_FATAL(
        veil_ohttp_encap_response(e, gctx, rs, rs_len, nonce, &out, &out_len),
        VEIL_OK);
    CU_ASSERT(out_len == ers_len && memcmp(out, ers, ers_len) == 0);
    free(out);

    /* client: the response */
    CU_ASSERT_EQUAL(veil_ohttp_decap_response(e, cctx, ers, ers_len, &got),
                    VEIL_OK);
    CU_ASSERT(secbuf_is(got, rs, rs_len));
    veil_secbuf_free(got);

    veil_ohttp_ctx_free(cctx);
    veil_ohttp_ctx_free(gctx);
    veil_hpke_key_free(skR);
    veil_hpke_key_free(eph);
    free(sk);
    free(cfgb);
    free(rq);
    free(ephb);
    free(erq);
    free(rs);
    free(nonce);
    free(ers);
}

/* A P-256 / AES-256-GCM exchange (veil's mandatory suite) with the
 * gateway key held by the software provider; a replayed request opened in
 * a second context yields a response the original client cannot be
 * confused by, and another client's context cannot open. */
static void test_p256_round_trip(void)
{
    veil_keygen_params kp = {.type = VEIL_KEY_EC_P256, .label = "kem"};
    veil_ohttp_alg alg = {VEIL_HPKE_KDF_SHA256, VEIL_HPKE_AEAD_AES256GCM};
    static const char msg[] = "inner request";
    veil_ohttp_keyconfig cfg = {
        .key_id = 7,
        .kem = VEIL_HPKE_KEM_P256,
        .n_algs = 1,
        .algs = {{VEIL_HPKE_KDF_SHA256, VEIL_HPKE_AEAD_AES256GCM}}};
    veil_key *k = NULL;
    veil_hpke_key *skR = NULL;
    veil_ohttp_ctx *c1 = NULL, *c2 = NULL, *g1 = NULL, *g2 = NULL;
    uint8_t *rq1 = NULL, *rq2 = NULL, *rs = NULL, *keys = NULL;
    size_t rq1_len, rq2_len, rs_len, keys_len, n = 0, enc_len;
    veil_ohttp_keyconfig *list = NULL;
    veil_secbuf *got = NULL;

    CU_ASSERT_EQUAL_FATAL(veil_key_generate(e, "software", &kp, &k), VEIL_OK);
    CU_ASSERT_EQUAL_FATAL(veil_hpke_key_from_engine(k, &skR), VEIL_OK);
    cfg.pk_len = sizeof cfg.pk;
    CU_ASSERT_EQUAL_FATAL(veil_hpke_key_public(skR, cfg.pk, &cfg.pk_len),
                          VEIL_OK);
    CU_ASSERT_EQUAL(veil_ohttp_keys_encode(&cfg, 1, &keys, &keys_len), VEIL_OK);
    CU_ASSERT_EQUAL(veil_ohttp_keys_decode(keys, keys_len, &list, &n), VEIL_OK);
    CU_ASSERT(n == 1 && list && memcmp(list, &cfg, sizeof cfg) == 0);
    CU_ASSERT_EQUAL_FATAL(
        veil_ohttp_encap_request(e, &cfg, alg, (const uint8_t *)msg, sizeof msg,
                                 NULL, &rq1, &rq1_len, &c1),
        VEIL_OK);
    CU_ASSERT_EQUAL_FATAL(
        veil_ohttp_encap_request(e, &cfg, alg, (const uint8_t *)msg, sizeof msg,
                                 NULL, &rq2, &rq2_len, &c2),
        VEIL_OK);
    /* two encapsulations never share an enc (the replay register's key) */
    {
        const uint8_t *enc1 = veil_ohttp_ctx_enc(c1, &enc_len),
                      *enc2 = veil_ohttp_ctx_enc(c2, NULL);
        CU_ASSERT_EQUAL(enc_len, 65);
        CU_ASSERT_NOT_EQUAL(memcmp(enc1, enc2, enc_len), 0);
        CU_ASSERT_EQUAL(memcmp(enc1, rq1 + VEIL_OHTTP_HDR_LEN, enc_len), 0);
    }
    CU_ASSERT_EQUAL_FATAL(
        veil_ohttp_decap_request(e, &cfg, skR, rq1, rq1_len, &got, &g1),
        VEIL_OK);
    CU_ASSERT(secbuf_is(got, (const uint8_t *)msg, sizeof msg));
    veil_secbuf_free(got);
    /* both sides name the key the request went to (a maximum answer's
     * quote binds it) */
    {
        size_t pk1 = 0, pk2 = 0;
        const uint8_t *p1 = veil_ohttp_ctx_pk(c1, &pk1),
                      *p2 = veil_ohttp_ctx_pk(g1, &pk2);
        CU_ASSERT(pk1 == cfg.pk_len && pk2 == cfg.pk_len &&
                  memcmp(p1, cfg.pk, pk1) == 0 && memcmp(p2, cfg.pk, pk2) == 0);
        CU_ASSERT_PTR_NULL(veil_ohttp_ctx_pk(NULL, &pk1));
        CU_ASSERT_EQUAL(pk1, 0);
    }
    /* a replay of request 1 decapsulates again (refusing it is the replay
     * register's job) but its answer is bound to request 1's context */
    CU_ASSERT_EQUAL_FATAL(
        veil_ohttp_decap_request(e, &cfg, skR, rq1, rq1_len, &got, &g2),
        VEIL_OK);
    veil_secbuf_free(got);
    CU_ASSERT_EQUAL_FATAL(veil_ohttp_encap_response(e, g2, (const uint8_t *)"a",
                                                    1, NULL, &rs, &rs_len),
                          VEIL_OK);
    CU_ASSERT_EQUAL(veil_ohttp_decap_response(e, c2, rs, rs_len, &got),
                    VEIL_E_DECRYPT);
    CU_ASSERT_PTR_NULL(got);
    CU_ASSERT_EQUAL(veil_ohttp_decap_response(e, c1, rs, rs_len, &got),
                    VEIL_OK);
    CU_ASSERT(secbuf_is(got, (const uint8_t *)"a", 1));
    veil_secbuf_free(got);
    free(rs);
    free(rq1);
    free(rq2);
    free(keys);
    free(list);
    veil_ohttp_ctx_free(c1);
    veil_ohttp_ctx_free(c2);
    veil_ohttp_ctx_free(g1);
    veil_ohttp_ctx_free(g2);
    veil_hpke_key_free(skR);
    veil_key_free(k);
}

/* ---- hostile input ------------------------------------------------------ */

/* Every prefix and every one-byte change of a message decodes or is
 * refused with VEIL_E_ARG; never a crash (ASan watches). */
static void bhttp_mutations(const char *hex, veil_bhttp_kind kind)
{
    size_t len;
    uint8_t *b = hx(hex, &len), *copy = malloc(len);
    veil_bhttp_msg *m;

    CU_ASSERT_PTR_NOT_NULL_FATAL(copy);
    for (size_t cut = 0; cut < len; cut++) {
        veil_rc rc;
        memcpy(copy, b,
               cut); /* a fresh allocation edge: ASan sees reads past */
        m = NULL;
        rc = veil_bhttp_decode(copy, cut, kind, NULL, &m);
        CU_ASSERT(rc == VEIL_OK || (rc == VEIL_E_ARG && !m));
        veil_bhttp_msg_free(m);
    }
    for (size_t i = 0; i < len; i++)
        for (unsigned bit = 0; bit < 8; bit++) {
            veil_rc rc;
            memcpy(copy, b, len);
            copy[i] ^= (uint8_t)(1u << bit);
            m = NULL;
            rc = veil_bhttp_decode(copy, len, kind, NULL, &m);
            CU_ASSERT(rc == VEIL_OK || (rc == VEIL_E_ARG && !m));
            veil_bhttp_msg_free(m);
        }
    free(copy);
    free(b);
}

static void test_bhttp_hostile(void)
{
    static const struct {
        const char *hex;
        veil_bhttp_kind kind;
        const char *why;
    } bad[] = {
        {"", VEIL_BHTTP_REQUEST, "empty"},
        {"04", VEIL_BHTTP_REQUEST, "framing 4"},
        {"40", VEIL_BHTTP_REQUEST, "truncated varint"},
        {"00c0ffffffffffffff474554", VEIL_BHTTP_REQUEST, "huge method length"},
        {"0003474554", VEIL_BHTTP_REQUEST, "control data cut"},
        {"000347455405687474707300012f05", VEIL_BHTTP_REQUEST,
         "header length past the end"},
        {"000347455405687474707300012f04000178", VEIL_BHTTP_REQUEST,
         "field name of zero bytes"},
        {"000347455405687474707300012f0401220178", VEIL_BHTTP_REQUEST,
         "field name with a character outside tchar (\")"},
        {"000347455405687474707300012f06053a70617468", VEIL_BHTTP_REQUEST,
         "pseudo-field :path"},
        {"000347455405687474707300012f030178010a", VEIL_BHTTP_REQUEST,
         "field value with LF"},
        {"000347455405687474707300012f0301780120", VEIL_BHTTP_REQUEST,
         "field value of one space"},
        {"000347455405687474707300012f0000000001", VEIL_BHTTP_REQUEST,
         "non-zero padding"},
        {"000347455405687474707300012f00c0ffffffffffffff", VEIL_BHTTP_REQUEST,
         "huge content length"},
        {"000347455405687474707300012f0005", VEIL_BHTTP_REQUEST,
         "content past the end"},
        {"0003474554056874747073000000", VEIL_BHTTP_REQUEST, "empty path"},
        {"0003474554053168747470000000012f", VEIL_BHTTP_REQUEST,
         "scheme starting with a digit"},
        {"00034745540568747470730001202f", VEIL_BHTTP_REQUEST,
         "space in the path"},
        {"0000", VEIL_BHTTP_REQUEST, "empty method"},
        {"0003474554056874747073097573657240686f7374012f", VEIL_BHTTP_REQUEST,
         "userinfo in an https authority (RFC 9113 8.3.1)"},
        {"000347455405687474707300027631", VEIL_BHTTP_REQUEST,
         "an https path not starting with / (RFC 9113 8.3.1)"},
        {"000347455405687474707300012a", VEIL_BHTTP_REQUEST,
         "path * on GET (only OPTIONS takes it)"},
        {"0163", VEIL_BHTTP_RESPONSE, "status 99"},
        {"014258", VEIL_BHTTP_RESPONSE, "status 600"},
        {"014066", VEIL_BHTTP_RESPONSE, "informational only"},
        {"034066017800", VEIL_BHTTP_RESPONSE,
         "indeterminate section not terminated"},
        {"0340c80000010200", VEIL_BHTTP_RESPONSE, "chunk past the end"},
        {"0140c8", VEIL_BHTTP_REQUEST, "a response as a request"},
    };
    static const uint8_t head[] = {0x00, 0x03, 'G', 'E', 'T',  0x05, 'h',
                                   't',  't',  'p', 's', 0x00, 0x01, '/'};
    uint8_t many[sizeof head + 2 + 130 * 4];
    veil_bhttp_limits lim = {2, 64, 16, 1, 2};
    veil_bhttp_msg *m;

    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        size_t len;
        uint8_t *b = tu_hex(bad[i].hex, &len);
        m = NULL;
        CU_ASSERT_PTR_NOT_NULL_FATAL(b);
        if (veil_bhttp_decode(b, len, bad[i].kind, NULL, &m) != VEIL_E_ARG ||
            m) {
            fprintf(stderr, "accepted: %s\n", bad[i].why);
            CU_FAIL(bad[i].why);
        }
        CU_ASSERT_PTR_NOT_NULL(strstr(veil_last_error()->message, "binary"));
        veil_bhttp_msg_free(m);
        free(b);
    }
    /* limits: three fields where two are allowed; two informational
     * responses where one is; three chunks where two are */
    {
        static const char *const over[] = {
            "000347455405687474707300012f09017801790178017901780179",
            "0140660040670040c8", "0340c800010101010101010000",
            "0340c800011101010101000000", /* 17 bytes > max_content 16 */
        };
        for (size_t i = 0; i < 4; i++) {
            size_t len;
            uint8_t *b = tu_hex(over[i], &len);
            m = NULL;
            CU_ASSERT_EQUAL(
                veil_bhttp_decode(b, len,
                                  i ? VEIL_BHTTP_RESPONSE : VEIL_BHTTP_REQUEST,
                                  &lim, &m),
                VEIL_E_ARG);
            CU_ASSERT_PTR_NULL(m);
            free(b);
        }
    }
    /* 130 fields against the default cap of 128 */
    memcpy(many, head, sizeof head);
    many[sizeof head] = 0x40 | (130 * 4) >> 8;
    many[sizeof head + 1] = (130 * 4) & 0xff;
    for (size_t i = 0; i < 130; i++)
        memcpy(many + sizeof head + 2 + 4 * i, "\x01x\x01y", 4);
    m = NULL;
    CU_ASSERT_EQUAL(
        veil_bhttp_decode(many, sizeof many, VEIL_BHTTP_REQUEST, NULL, &m),
        VEIL_E_ARG);
    CU_ASSERT_PTR_NULL(m);
    CU_ASSERT_PTR_NOT_NULL(strstr(veil_last_error()->message, "too many"));
    bhttp_mutations(req_kl, VEIL_BHTTP_REQUEST);
    bhttp_mutations(req_il, VEIL_BHTTP_REQUEST);
    bhttp_mutations(res_il, VEIL_BHTTP_RESPONSE);
    bhttp_mutations(res_chunked, VEIL_BHTTP_RESPONSE);
}

/* RFC 9292 3.6: a field name is valid when its bytes are those RFC 9110
 * 5.1 permits (a token), upper case included (only field values are held
 * to HTTP/2's 8.2.1); names are case-insensitive (RFC 9110 5.1), so
 * veil_bhttp_field_get finds "Content-Type" as "content-type".  Such a
 * message encodes back byte for byte. */
static void test_bhttp_field_case(void)
{
    static const uint8_t msg[] = {
        0x00, 0x04, 'P', 'O', 'S', 'T', 0x05, 'h', 't', 't', 'p', 's', 0x00,
        0x01, '/', 0x18, 0x0c, 'C', 'o', 'n', 't', 'e', 'n', 't', '-', 'T',
        'y', 'p', 'e', 0x0a, 't', 'e', 'x', 't', '/', 'p', 'l', 'a', 'i', 'n',
        0x02, 'h', 'i'};
    veil_bhttp_msg *m = NULL;
    const veil_bhttp_field *f;
    veil_secbuf *enc = NULL;

    CU_ASSERT_EQUAL_FATAL(
        veil_bhttp_decode(msg, sizeof msg, VEIL_BHTTP_REQUEST, NULL, &m),
        VEIL_OK);
    CU_ASSERT_EQUAL(m->headers.n, 1);
    f = veil_bhttp_field_get(&m->headers, "content-type");
    CU_ASSERT(f && bstr_is(f->value, "text/plain"));
    CU_ASSERT(f && bstr_is(f->name, "Content-Type"));
    CU_ASSERT_PTR_NULL(veil_bhttp_field_get(&m->headers, "content-typ"));
    CU_ASSERT(bstr_is(m->content, "hi"));
    CU_ASSERT_EQUAL(veil_bhttp_encode(m, VEIL_BHTTP_TRUNCATE, &enc), VEIL_OK);
    CU_ASSERT(secbuf_is(enc, msg, sizeof msg));
    veil_secbuf_free(enc);
    veil_bhttp_msg_free(m);
}

/* RFC 9458 3.1 and 3.2 from a hostile gateway: a configuration whose
 * suites are not whole (a length not a multiple of 4), none at all, or
 * followed by bytes its length prefix covers is an encoding error that
 * discards the whole list; one whose KEM or whose every suite veil does not
 * know is skipped; many configurations of other KEMs cost nothing; more
 * than 64 usable ones are refused. */
static void test_keys_hostile(void)
{
    /* X25519, the RFC 9458 appendix A key, then the suites */
    static const char pk[] =
        "31e1f05a740102115220e9af918f738674aec95f54db6e04eb705aae8e798155";
    veil_ohttp_keyconfig *list = NULL;
    uint8_t *b, *big;
    size_t len, n = 0;
    char hex[512];
    static const struct {
        const char *suites; /* length prefix and suites, hex */
        veil_rc want;
        size_t n;
    } one[] = {
        {"000400010001", VEIL_OK, 1},
        {"000600010001ffff", VEIL_E_ARG, 0},   /* 6: not whole suites */
        {"0000", VEIL_E_ARG, 0},               /* zero suites */
        {"00040001000100", VEIL_E_ARG, 0},     /* a trailing byte */
        {"000800010003ffff0003", VEIL_E_UNSUPPORTED, 0}, /* none known */
        {"00040001ffff", VEIL_E_UNSUPPORTED, 0}, /* export-only */
    };

    for (size_t i = 0; i < sizeof one / sizeof *one; i++) {
        size_t cl = 3 + 32 + strlen(one[i].suites) / 2;
        snprintf(hex, sizeof hex, "%04zx010020%s%s", cl, pk, one[i].suites);
        b = hx(hex, &len);
        veil_rc rc = veil_ohttp_keys_decode(b, len, &list, &n);
        CU_ASSERT_EQUAL(rc, one[i].want);
        CU_ASSERT_EQUAL(rc == VEIL_OK ? n : 0, one[i].n);
        if (rc != one[i].want)
            fprintf(stderr, "key list case %zu: %s\n", i, veil_rc_name(rc));
        free(list);
        list = NULL;
        free(b);
    }
    /* 5000 configurations of an unknown KEM (each 7 bytes), then a usable
     * one: it is found */
    snprintf(hex, sizeof hex, "%04x010020%s000400010001", 3 + 32 + 6, pk);
    b = hx(hex, &len);
    big = malloc(5000 * 7 + len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(big);
    for (size_t i = 0; i < 5000; i++)
        memcpy(big + 7 * i, "\x00\x05\x01\x99\x99\x00\x00", 7);
    memcpy(big + 5000 * 7, b, len);
    CU_ASSERT_EQUAL(veil_ohttp_keys_decode(big, 5000 * 7 + len, &list, &n),
                    VEIL_OK);
    CU_ASSERT_EQUAL(n, 1);
    free(list);
    list = NULL;
    /* 64 usable configurations are taken, 65 are refused */
    for (size_t i = 0; i < 65; i++)
        memcpy(big + i * len, b, len);
    CU_ASSERT_EQUAL(veil_ohttp_keys_decode(big, 64 * len, &list, &n), VEIL_OK);
    CU_ASSERT_EQUAL(n, 64);
    free(list);
    list = NULL;
    CU_ASSERT_EQUAL(veil_ohttp_keys_decode(big, 65 * len, &list, &n),
                    VEIL_E_ARG);
    CU_ASSERT_PTR_NULL(list);
    free(big);
    free(b);
}

/* Every byte of an encapsulated request and response changed, every
 * truncation: a clear error, never plaintext, never a crash. */
static void test_ohttp_hostile(void)
{
    size_t sk_len, cfg_len, rq_len, erq_len, ers_len;
    uint8_t *sk = hx(a_sk, &sk_len), *cfgb = hx(a_config, &cfg_len),
            *rq = hx(a_request, &rq_len), *erq = hx(a_enc_request, &erq_len),
            *ers = hx(a_enc_response, &ers_len), *eph_b, *copy;
    veil_ohttp_keyconfig cfg, *list = NULL;
    veil_hpke_key *skR = NULL, *eph = NULL;
    veil_ohttp_ctx *cctx = NULL, *g = NULL;
    veil_secbuf *got = NULL;
    size_t eph_len, n;
    uint8_t *out = NULL;
    size_t out_len;

    CU_ASSERT_EQUAL_FATAL(veil_ohttp_keyconfig_decode(cfgb, cfg_len, &cfg),
                          VEIL_OK);
    CU_ASSERT_EQUAL_FATAL(
        veil_hpke_key_from_private(VEIL_HPKE_KEM_X25519, sk, sk_len, &skR),
        VEIL_OK);
    copy = malloc(erq_len > ers_len ? erq_len : ers_len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(copy);
    for (size_t cut = 0; cut < erq_len; cut++) {
        veil_rc rc;
        memcpy(copy, erq, cut);
        rc = veil_ohttp_decap_request(e, &cfg, skR, copy, cut, &got, &g);
        CU_ASSERT(rc == VEIL_E_ARG || rc == VEIL_E_DECRYPT);
        CU_ASSERT(!got && !g);
    }
    for (size_t i = 0; i < erq_len; i++) {
        veil_rc rc, want = i == 0  ? VEIL_E_NOT_FOUND
                           : i < 7 ? VEIL_E_UNSUPPORTED
                                   : VEIL_E_DECRYPT;
        memcpy(copy, erq, erq_len);
        copy[i] ^= 0x01;
        rc = veil_ohttp_decap_request(e, &cfg, skR, copy, erq_len, &got, &g);
        CU_ASSERT_EQUAL(rc, want);
        CU_ASSERT(!got && !g);
    }
    /* the response: every cut and every change fails to open */
    eph_b = hx(a_eph, &eph_len);
    CU_ASSERT_EQUAL_FATAL(
        veil_hpke_key_from_private(VEIL_HPKE_KEM_X25519, eph_b, eph_len, &eph),
        VEIL_OK);
    CU_ASSERT_EQUAL_FATAL(veil_ohttp_encap_request(e, &cfg, cfg.algs[0], rq,
                                                   rq_len, eph, &out, &out_len,
                                                   &cctx),
                          VEIL_OK);
    free(out);
    for (size_t cut = 0; cut < ers_len; cut++) {
        memcpy(copy, ers, cut);
        CU_ASSERT_EQUAL(veil_ohttp_decap_response(e, cctx, copy, cut, &got),
                        VEIL_E_DECRYPT);
        CU_ASSERT_PTR_NULL(got);
    }
    for (size_t i = 0; i < ers_len; i++) {
        memcpy(copy, ers, ers_len);
        copy[i] ^= 0x40;
        CU_ASSERT_EQUAL(veil_ohttp_decap_response(e, cctx, copy, ers_len, &got),
                        VEIL_E_DECRYPT);
        CU_ASSERT_PTR_NULL(got);
    }
    /* key lists: every cut of a two-entry list; a length past the end */
    {
        uint8_t two[2 * (2 + 45)];
        for (size_t j = 0; j < 2; j++) {
            two[j * 47] = 0;
            two[j * 47 + 1] = (uint8_t)cfg_len;
            memcpy(two + j * 47 + 2, cfgb, cfg_len);
        }
        for (size_t cut = 0; cut < sizeof two; cut++) {
            veil_rc rc = veil_ohttp_keys_decode(two, cut, &list, &n);
            CU_ASSERT(cut == 47 ? rc == VEIL_OK && n == 1
                                : rc == VEIL_E_ARG || rc == VEIL_E_UNSUPPORTED);
            free(list);
            list = NULL;
        }
        CU_ASSERT_EQUAL(veil_ohttp_keys_decode(two, sizeof two, &list, &n),
                        VEIL_OK);
        CU_ASSERT_EQUAL(n, 2);
        free(list);
        list = NULL;
        two[1] = 0xff;
        CU_ASSERT_EQUAL(veil_ohttp_keys_decode(two, sizeof two, &list, &n),
                        VEIL_E_ARG);
        /* an unknown KEM is skipped, not fatal */
        two[1] = (uint8_t)cfg_len;
        two[4] = 0x99;
        CU_ASSERT_EQUAL(veil_ohttp_keys_decode(two, sizeof two, &list, &n),
                        VEIL_OK);
        CU_ASSERT_EQUAL(n, 1);
        free(list);
    }
    veil_ohttp_ctx_free(cctx);
    veil_hpke_key_free(eph);
    veil_hpke_key_free(skR);
    free(eph_b);
    free(copy);
    free(sk);
    free(cfgb);
    free(rq);
    free(erq);
    free(ers);
}

static int suite_init(void)
{
    return veil_engine_new(NULL, &e) == VEIL_OK ? 0 : -1;
}

static int suite_clean(void)
{
    veil_engine_free(e);
    return 0;
}

/* Content-Type as RFC 9110 8.3.1 writes it: the type in any case,
 * parameters after optional white space; another type, a longer subtype
 * or nothing is not it. */
static void test_media_type(void)
{
    static const char *const yes[] = {
        "message/ohttp-req", "Message/OHTTP-Req", "message/ohttp-req;a=b",
        "message/ohttp-req ; a=b", "message/ohttp-req\t;a=b",
        " message/ohttp-req", "message/ohttp-req  "};
    static const char *const no[] = {"message/ohttp-reqx",
                                     "message/ohttp-res",
                                     "message/ohttp-req x",
                                     "message/ohttp",
                                     "",
                                     "application/json; message/ohttp-req"};

    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++)
        CU_ASSERT_EQUAL(veil_ohttp_media_is(yes[i], VEIL_OHTTP_MEDIA_REQ), 1);
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++)
        CU_ASSERT_EQUAL(veil_ohttp_media_is(no[i], VEIL_OHTTP_MEDIA_REQ), 0);
    CU_ASSERT_EQUAL(veil_ohttp_media_is(NULL, VEIL_OHTTP_MEDIA_REQ), 0);
}

int main(void)
{
    static const tu_test tests[] = {
        {"RFC 9292 5.1 request, both framings, truncated",
         test_rfc9292_request},
        {"RFC 9292 5.2 responses, informational, trailers",
         test_rfc9292_responses},
        {"RFC 9458 appendix A, byte for byte", test_rfc9458_example},
        {"P-256 / AES-256-GCM round trip, replay bound to its context",
         test_p256_round_trip},
        {"binary HTTP: hostile input", test_bhttp_hostile},
        {"binary HTTP: upper-case field names (RFC 9292 3.6)",
         test_bhttp_field_case},
        {"Oblivious HTTP: hostile input", test_ohttp_hostile},
        {"key configurations from a hostile gateway", test_keys_hostile},
        {"media types (RFC 9110 8.3.1)", test_media_type},
    };

    TU_ADD_SUITE("ohttp", suite_init, suite_clean, tests);
    return tu_run_tests();
}
