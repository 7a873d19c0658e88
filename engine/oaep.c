/* Constant-time EME-OAEP decoding on the host (RFC 8017, 7.1.2 step 3).
 *
 * Used when a token can do raw RSA (CKM_RSA_X_509) but not OAEP with the
 * hash we need (SoftHSM2 2.6: SHA-1 only).  The RSA private operation
 * still runs inside the token; only the padding is removed here.
 *
 * Every check runs whatever the outcome of the previous ones, the scan for
 * the 0x01 separator touches every byte, and the result is selected with
 * masks, so time and memory access do not depend on where (or whether) the
 * padding is wrong.  All failures return the same code and message.
 */
#include "config.h"

#include <string.h>

#include <openssl/evp.h>

#include "engine_int.h"

/* All-ones when a == b, else 0, without branches. */
static unsigned ct_eq(unsigned a, unsigned b)
{
    unsigned x = a ^ b;
    return (unsigned)(((unsigned long long)x - 1) >> 63) * ~0u;
}

static unsigned ct_lt(size_t a, size_t b) /* all-ones when a < b */
{
    return (unsigned)(((unsigned long long)a - (unsigned long long)b) >> 63) *
           ~0u;
}

const EVP_MD *veil_oaep_md(const veil_oaep *oaep)
{
    return (oaep && oaep->hash == VEIL_HASH_SHA1) ? EVP_sha1() : EVP_sha256();
}

void veil_ct_right_align(uint8_t *d, size_t n, size_t k)
{
    size_t shift = k - n; /* the caller checked n <= k */
    unsigned b = 0;

    /* Shift right by each power of two in `shift`, selected by a mask:
     * every round touches every byte, whatever n is. */
    for (size_t m = 1; m <= k; m <<= 1, b++) {
        uint8_t mask = (uint8_t)(0u - (unsigned)((shift >> b) & 1u));

        for (size_t i = k; i-- > 0;) {
            uint8_t src = i >= m ? d[i - m] : 0; /* i, m: public */
            d[i] = (uint8_t)((src & mask) | (d[i] & (uint8_t)~mask));
        }
    }
}

unsigned veil_oaep_cap(const veil_oaep *oaep)
{
    return (oaep && oaep->hash == VEIL_HASH_SHA1) ? VEIL_CAP_RSA_OAEP_SHA1
                                                  : VEIL_CAP_RSA_OAEP_SHA256;
}

/* MGF1: out ^= MGF1(seed, len). */
static int mgf1_xor(const EVP_MD *md, const uint8_t *seed, size_t seed_len,
                    uint8_t *out, size_t len)
{
    uint8_t digest[EVP_MAX_MD_SIZE];
    unsigned hlen = (unsigned)EVP_MD_get_size(md);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    uint32_t counter = 0;
    size_t done = 0;
    int ok = ctx != NULL;

    while (ok && done < len) {
        uint8_t c[4] = {(uint8_t)(counter >> 24), (uint8_t)(counter >> 16),
                        (uint8_t)(counter >> 8), (uint8_t)counter};
        ok = EVP_DigestInit_ex(ctx, md, NULL) &&
             EVP_DigestUpdate(ctx, seed, seed_len) &&
             EVP_DigestUpdate(ctx, c, 4) &&
             EVP_DigestFinal_ex(ctx, digest, NULL);
        for (unsigned i = 0; ok && i < hlen && done < len; i++)
            out[done++] ^= digest[i];
        counter++;
    }
    EVP_MD_CTX_free(ctx);
    veil_wipe(digest, sizeof digest);
    return ok;
}

veil_rc veil_oaep_decode_inplace(const veil_oaep *oaep, veil_secbuf *buf)
{
    const EVP_MD *md = veil_oaep_md(oaep);
    size_t hlen = (size_t)EVP_MD_get_size(md);
    size_t k = veil_secbuf_len(buf);
    uint8_t lhash[EVP_MAX_MD_SIZE];
    uint8_t *em = veil_secbuf_data(buf), *db, *seed, *m;
    size_t db_len, mlen, max, t, one_index = 0;
    unsigned good, found = 0, diff = 0, i;

    /* Public facts (key size, hash) may be checked with branches. */
    if (k < 2 * hlen + 2)
        return veil_err(VEIL_E_KEY, "engine", NULL,
                        "OAEP: modulus too small for the hash");
    if (!EVP_Digest(oaep && oaep->label ? oaep->label : (const uint8_t *)"",
                    oaep ? oaep->label_len : 0, lhash, NULL, md, NULL))
        return veil_err_ossl(VEIL_E_CRYPTO, "engine", "OAEP: label hash");
    seed = em + 1;
    db = seed + hlen;
    db_len = k - hlen - 1;

    /* seed = maskedSeed ^ MGF(maskedDB); DB = maskedDB ^ MGF(seed) */
    if (!mgf1_xor(md, db, db_len, seed, hlen) ||
        !mgf1_xor(md, seed, hlen, db, db_len)) {
        veil_wipe(em, k);
        return veil_err_ossl(VEIL_E_CRYPTO, "engine", "OAEP: MGF1");
    }

    good = ct_eq(em[0], 0);
    /* lHash' == lHash, accumulated without early exit */
    for (i = 0; i < hlen; i++)
        diff |= db[i] ^ lhash[i];
    good &= ct_eq(diff, 0);
    /* Find the first 0x01 after the zero padding; every byte is read. */
    for (i = (unsigned)hlen; i < db_len; i++) {
        unsigned is_one = ct_eq(db[i], 1);
        unsigned is_zero = ct_eq(db[i], 0);
        unsigned first = is_one & ~found;
        one_index = (one_index & ~(size_t)(int)first) | (i & first);
        found |= is_one;
        /* a byte that is neither 0 nor 1 before the separator is bad */
        good &= found | is_zero;
    }
    good &= found;
    mlen = db_len - one_index - 1;

    /* Move the message to the front of the buffer by a secret offset t in
     * log2 steps of masked conditional moves (no secret-dependent address),
     * then zero everything past mlen. */
    m = em;
    max = db_len - hlen - 1;
    t = (one_index - hlen) & (size_t)(int)found;
    memmove(m, db + hlen + 1, max);
    for (size_t s = 1; s <= max; s <<= 1) {
        uint8_t sel = (uint8_t)~ct_eq((unsigned)(t & s), 0);
        for (size_t j = 0; j < max; j++) {
            uint8_t next = j + s < max ? m[j + s] : 0;
            m[j] = (uint8_t)((next & sel) | (m[j] & (uint8_t)~sel));
        }
    }
    for (size_t j = 0; j < max; j++)
        m[j] &= (uint8_t)ct_lt(j, mlen);
    veil_wipe(lhash, sizeof lhash);
    /* The outcome is only revealed here, after all the work is done. */
    if (!good) {
        veil_wipe(em, k);
        return veil_err(VEIL_E_DECRYPT, "engine", NULL, "decryption failed");
    }
    veil_secbuf_truncate(buf, mlen);
    return VEIL_OK;
}

veil_rc veil_oaep_decode(const veil_oaep *oaep, const uint8_t *em, size_t k,
                         veil_secbuf **out)
{
    veil_secbuf *buf = NULL;
    veil_rc rc = veil_secbuf_new(k, &buf);

    *out = NULL;
    if (rc != VEIL_OK)
        return rc;
    memcpy(veil_secbuf_data(buf), em, k);
    rc = veil_oaep_decode_inplace(oaep, buf);
    if (rc != VEIL_OK) {
        veil_secbuf_free(buf);
        return rc;
    }
    *out = buf;
    return VEIL_OK;
}
