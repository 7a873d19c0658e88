/* TEST-ONLY MOCK: a PKCS#11 module that lies.
 *
 * lying_p11.so loads the real SoftHSM2 module ($VEIL_LIE_REAL_MODULE, else
 * $VEIL_TEST_SOFTHSM_MODULE as tests/env/with-tokens.sh exports it) and
 * forwards every call to it through its C_GetFunctionList table, but tells
 * one lie at a time, named by $VEIL_LIE (read at every call, so a test can
 * switch lies without reloading; unset or empty: no lie).  Attribute lies
 * apply to the attribute named by $VEIL_LIE_ATTR ("modulus",
 * "public_exponent", "ec_point", "ec_params", "value").
 *
 * It exists only for tests/test_token_lies.c: a hostile or buggy token must
 * never make veil overflow, read what was never written, accept a wrong
 * result or leak a secret.  Never install it; it is built as a check-only
 * libtool module.
 *
 * Lies ($VEIL_LIE):
 *   decrypt_len_big      C_Decrypt: CKR_OK, length 100 bytes past the buffer
 *   decrypt_len_unavail  C_Decrypt: CKR_OK, length CK_UNAVAILABLE_INFORMATION
 *   sign_len_big         C_Sign: CKR_OK, length 200
 *   sign_zero            C_Sign: 64 zero bytes
 *   sign_flip            C_Sign: the real signature with one bit flipped
 *   attr_huge            size query: 2^42 bytes
 *   attr_zero            length 0 in both calls
 *   attr_grow            second call: 64 bytes more than written
 *   attr_unavail         size query: CKR_OK with CK_UNAVAILABLE_INFORMATION
 *   modulus_512          CKA_MODULUS: its first 64 bytes (a 512-bit modulus)
 *   exponent_1           CKA_PUBLIC_EXPONENT: 1
 *   exponent_even        CKA_PUBLIC_EXPONENT: 65536
 *   ec_point_bitstring   CKA_EC_POINT: the DER tag 0x03 instead of 0x04
 *   ec_point_off_curve   CKA_EC_POINT: the last byte of y flipped
 *   ec_params_p384       CKA_EC_PARAMS: the P-384 OID
 *   value_short          ECDH CKA_VALUE: 31 bytes
 *   value_long           ECDH CKA_VALUE: 48 bytes claimed into 32
 *   find_overcount       C_FindObjects: 4 more handles claimed than asked
 *   find_dup             C_FindObjects: the first handle twice
 *   find_dup_public      the same, in searches for public keys only
 *   mechlist_grow        C_GetMechanismList: 8 more claimed in the 2nd call
 *   slotlist_grow        C_GetSlotList: 8 more claimed in the 2nd call
 *   refuse_ecdsa         C_SignInit(CKM_ECDSA): CKR_MECHANISM_INVALID
 *   refuse_ecdh          C_DeriveKey: CKR_MECHANISM_INVALID
 *   refuse_oaep          C_DecryptInit(CKM_RSA_PKCS_OAEP): MECHANISM_INVALID
 *   tokeninfo_nul        C_GetTokenInfo: label all NUL bytes
 *   tokeninfo_ctrl       C_GetTokenInfo: the real label with control bytes
 *   random_fail          C_GenerateRandom: CKR_DEVICE_ERROR
 */
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include <p11-kit/pkcs11.h>

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list);

static void *real_lib;
static CK_FUNCTION_LIST *real;
static CK_FUNCTION_LIST table;

static int lie(const char *name)
{
    const char *v = getenv("VEIL_LIE");

    return v && strcmp(v, name) == 0;
}

static CK_ATTRIBUTE_TYPE lie_attr(void)
{
    const char *v = getenv("VEIL_LIE_ATTR");

    if (!v)
        return (CK_ATTRIBUTE_TYPE)-1;
    if (strcmp(v, "modulus") == 0)
        return CKA_MODULUS;
    if (strcmp(v, "public_exponent") == 0)
        return CKA_PUBLIC_EXPONENT;
    if (strcmp(v, "ec_point") == 0)
        return CKA_EC_POINT;
    if (strcmp(v, "ec_params") == 0)
        return CKA_EC_PARAMS;
    if (strcmp(v, "value") == 0)
        return CKA_VALUE;
    return (CK_ATTRIBUTE_TYPE)-1;
}

/* ---- crypto lies ------------------------------------------------------- */

static CK_RV lie_Decrypt(CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len,
                         CK_BYTE_PTR out, CK_ULONG_PTR out_len)
{
    CK_ULONG given = out_len ? *out_len : 0;
    CK_RV rv = real->C_Decrypt(s, in, in_len, out, out_len);

    if (rv != CKR_OK || !out_len)
        return rv;
    if (lie("decrypt_len_big") && out)
        *out_len = given + 100;
    else if (lie("decrypt_len_unavail") && out)
        *out_len = CK_UNAVAILABLE_INFORMATION;
    return rv;
}

static CK_RV lie_Sign(CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len,
                      CK_BYTE_PTR sig, CK_ULONG_PTR sig_len)
{
    CK_RV rv = real->C_Sign(s, in, in_len, sig, sig_len);

    if (rv != CKR_OK || !sig || !sig_len)
        return rv;
    if (lie("sign_len_big"))
        *sig_len = 200;
    else if (lie("sign_zero"))
        memset(sig, 0, *sig_len);
    else if (lie("sign_flip") && *sig_len > 0)
        sig[*sig_len - 1] ^= 0x01;
    return rv;
}

static CK_RV lie_SignInit(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m,
                          CK_OBJECT_HANDLE k)
{
    if (lie("refuse_ecdsa") && m && m->mechanism == CKM_ECDSA)
        return CKR_MECHANISM_INVALID;
    return real->C_SignInit(s, m, k);
}

static CK_RV lie_DecryptInit(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m,
                             CK_OBJECT_HANDLE k)
{
    if (lie("refuse_oaep") && m && m->mechanism == CKM_RSA_PKCS_OAEP)
        return CKR_MECHANISM_INVALID;
    return real->C_DecryptInit(s, m, k);
}

static CK_RV lie_DeriveKey(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m,
                           CK_OBJECT_HANDLE base, CK_ATTRIBUTE_PTR t,
                           CK_ULONG n, CK_OBJECT_HANDLE_PTR key)
{
    if (lie("refuse_ecdh"))
        return CKR_MECHANISM_INVALID;
    return real->C_DeriveKey(s, m, base, t, n, key);
}

static CK_RV lie_GenerateRandom(CK_SESSION_HANDLE s, CK_BYTE_PTR buf,
                                CK_ULONG len)
{
    if (lie("random_fail"))
        return CKR_DEVICE_ERROR;
    return real->C_GenerateRandom(s, buf, len);
}

/* ---- attribute lies ---------------------------------------------------- */

/* A fixed replacement value for the attribute, from the real one (read
 * into real_v, real_len); 0 when this lie replaces nothing. */
static int replacement(CK_ATTRIBUTE_TYPE t, const CK_BYTE *real_v,
                       CK_ULONG real_len, CK_BYTE *out, CK_ULONG *out_len)
{
    static const CK_BYTE p384[] = {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22};

    if (lie("attr_zero")) {
        *out_len = 0;
        return 1;
    }
    if (t == CKA_MODULUS && lie("modulus_512") && real_len >= 64) {
        memcpy(out, real_v, 64);
        *out_len = 64;
        return 1;
    }
    if (t == CKA_PUBLIC_EXPONENT && lie("exponent_1")) {
        out[0] = 1;
        *out_len = 1;
        return 1;
    }
    if (t == CKA_PUBLIC_EXPONENT && lie("exponent_even")) {
        out[0] = 1;
        out[1] = 0;
        out[2] = 0;
        *out_len = 3;
        return 1;
    }
    if (t == CKA_EC_POINT && lie("ec_point_bitstring") && real_len > 0) {
        memcpy(out, real_v, real_len);
        out[0] = 0x03;
        *out_len = real_len;
        return 1;
    }
    if (t == CKA_EC_POINT && lie("ec_point_off_curve") && real_len > 0) {
        memcpy(out, real_v, real_len);
        out[real_len - 1] ^= 0x01;
        *out_len = real_len;
        return 1;
    }
    if (t == CKA_EC_PARAMS && lie("ec_params_p384")) {
        memcpy(out, p384, sizeof p384);
        *out_len = sizeof p384;
        return 1;
    }
    return 0;
}

static CK_RV lie_GetAttributeValue(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o,
                                   CK_ATTRIBUTE_PTR t, CK_ULONG n)
{
    CK_ATTRIBUTE_TYPE target = lie_attr();
    CK_RV rv;

    /* Replacements: read the real value, answer with the false one. */
    if (n == 1 && t[0].type == target) {
        CK_BYTE real_v[2048], fake[2048];
        CK_ULONG fake_len = 0;
        CK_ATTRIBUTE a = {target, real_v, sizeof real_v};

        if (real->C_GetAttributeValue(s, o, &a, 1) == CKR_OK &&
            replacement(target, real_v, a.ulValueLen, fake, &fake_len)) {
            if (!t[0].pValue) {
                t[0].ulValueLen = fake_len;
                return CKR_OK;
            }
            if (t[0].ulValueLen < fake_len) {
                t[0].ulValueLen = CK_UNAVAILABLE_INFORMATION;
                return CKR_BUFFER_TOO_SMALL;
            }
            memcpy(t[0].pValue, fake, fake_len);
            t[0].ulValueLen = fake_len;
            return CKR_OK;
        }
    }
    rv = real->C_GetAttributeValue(s, o, t, n);
    if (rv != CKR_OK)
        return rv;
    for (CK_ULONG i = 0; i < n; i++) {
        if (t[i].type != target)
            continue;
        if (lie("attr_huge") && !t[i].pValue)
            t[i].ulValueLen = (CK_ULONG)1 << 42;
        else if (lie("attr_unavail") && !t[i].pValue)
            t[i].ulValueLen = CK_UNAVAILABLE_INFORMATION;
        else if (lie("attr_grow") && t[i].pValue)
            t[i].ulValueLen += 64;
        else if (target == CKA_VALUE && lie("value_short") && t[i].pValue)
            t[i].ulValueLen = 31;
        else if (target == CKA_VALUE && lie("value_long") && t[i].pValue)
            t[i].ulValueLen = 48;
    }
    return rv;
}

/* ---- object search, lists, token info ---------------------------------- */

static int finding_public; /* the last C_FindObjectsInit asked for them */

static CK_RV lie_FindObjectsInit(CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t,
                                 CK_ULONG n)
{
    finding_public = 0;
    for (CK_ULONG i = 0; i < n; i++)
        if (t[i].type == CKA_CLASS && t[i].ulValueLen == sizeof(CK_ULONG) &&
            *(CK_ULONG *)t[i].pValue == CKO_PUBLIC_KEY)
            finding_public = 1;
    return real->C_FindObjectsInit(s, t, n);
}

static CK_RV lie_FindObjects(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE_PTR h,
                             CK_ULONG max, CK_ULONG_PTR count)
{
    CK_RV rv = real->C_FindObjects(s, h, max, count);

    if (rv != CKR_OK || !count)
        return rv;
    if (lie("find_overcount") && *count > 0)
        *count = max + 4; /* claimed only: nothing written past max */
    else if ((lie("find_dup") || (lie("find_dup_public") && finding_public)) &&
             *count == 1 && max >= 2) {
        h[1] = h[0];
        *count = 2;
    }
    return rv;
}

static CK_RV lie_GetMechanismList(CK_SLOT_ID slot, CK_MECHANISM_TYPE_PTR list,
                                  CK_ULONG_PTR count)
{
    CK_RV rv = real->C_GetMechanismList(slot, list, count);

    if (rv == CKR_OK && list && count && lie("mechlist_grow"))
        *count += 8;
    return rv;
}

static CK_RV lie_GetSlotList(CK_BBOOL present, CK_SLOT_ID_PTR list,
                             CK_ULONG_PTR count)
{
    CK_RV rv = real->C_GetSlotList(present, list, count);

    if (rv == CKR_OK && list && count && lie("slotlist_grow"))
        *count += 8;
    return rv;
}

static CK_RV lie_GetTokenInfo(CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info)
{
    CK_RV rv = real->C_GetTokenInfo(slot, info);

    if (rv != CKR_OK || !info)
        return rv;
    if (lie("tokeninfo_nul")) {
        memset(info->label, 0, sizeof info->label);
    } else if (lie("tokeninfo_ctrl")) {
        size_t n = 0;
        while (n < sizeof info->label && info->label[n] != ' ')
            n++;
        if (n + 4 <= sizeof info->label)
            memcpy(info->label + n, "\n\033[", 3);
        /* the rest NUL, not blank-padded */
        if (n + 3 < sizeof info->label)
            memset(info->label + n + 3, 0, sizeof info->label - n - 3);
    }
    return rv;
}

/* ---- the table ---------------------------------------------------------- */

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list)
{
    CK_C_GetFunctionList get;
    const char *path;

    if (!list)
        return CKR_ARGUMENTS_BAD;
    if (!real) {
        path = getenv("VEIL_LIE_REAL_MODULE");
        if (!path || !*path)
            path = getenv("VEIL_TEST_SOFTHSM_MODULE");
        if (!path || !*path)
            return CKR_GENERAL_ERROR;
        real_lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (!real_lib)
            return CKR_GENERAL_ERROR;
        *(void **)&get = dlsym(real_lib, "C_GetFunctionList");
        if (!get || get(&real) != CKR_OK || !real)
            return CKR_GENERAL_ERROR;
        table = *real;
        table.C_GetFunctionList = C_GetFunctionList;
        table.C_Decrypt = lie_Decrypt;
        table.C_DecryptInit = lie_DecryptInit;
        table.C_Sign = lie_Sign;
        table.C_SignInit = lie_SignInit;
        table.C_DeriveKey = lie_DeriveKey;
        table.C_GenerateRandom = lie_GenerateRandom;
        table.C_GetAttributeValue = lie_GetAttributeValue;
        table.C_FindObjectsInit = lie_FindObjectsInit;
        table.C_FindObjects = lie_FindObjects;
        table.C_GetMechanismList = lie_GetMechanismList;
        table.C_GetSlotList = lie_GetSlotList;
        table.C_GetTokenInfo = lie_GetTokenInfo;
    }
    *list = &table;
    return CKR_OK;
}
