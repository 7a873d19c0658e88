/* client/v2_cert.h: on the maximum tier over protocol v2, the TPM's
 * certification of the KEM key checked before anything is encapsulated
 * to it (v2_cert.c, docs/PROTOCOL-V2.md 4.4).  Not installed.
 *
 * Layering (docs/ARCHITECTURE.md): v2_cert.c uses keys.h (the client
 * object), trust.c, tpmobj.c and client_int.h; v2.c calls it. */
#ifndef VEIL_CLIENT_V2_CERT_H
#define VEIL_CLIENT_V2_CERT_H

#include "keys.h"
#include "ohttp.h"

#pragma GCC visibility push(hidden)

/* With a trust file enrolled for url: GET url/v2/keys/certify?key_id=N for
 * the key configuration kc and checks the chain: the enrolled AK's
 * signature over the TPMS_ATTEST (magic, type ATTEST_CERTIFY, qualifying
 * data veil_ev_kem_certify_qualifying of kc), the certified name = nameAlg
 * || SHA-256 of the public area given, that public area ECC P-256 with
 * decrypt, fixedTPM and fixedParent, neither restricted nor sign, and its
 * point kc's public key.  VEIL_CLIENT_OK (also without a trust file for
 * url: nothing enrolled to check against); any failure a
 * VEIL_CLIENT_E_SECURITY naming the check, nothing sent. */
veil_client_status veil_cl_v2_kem_check(veil_client *c, const char *url,
                                        const veil_ohttp_keyconfig *kc,
                                        veil_client_error *err);

#pragma GCC visibility pop

#endif /* VEIL_CLIENT_V2_CERT_H */
