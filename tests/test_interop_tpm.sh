#!/bin/bash
# Interoperability with the tools HSM users already have: keys veil makes
# are used by pkcs11-tool and listed by p11tool; keys made by pkcs11-tool,
# p11tool and tpm2_ptool are used by veil.  SoftHSM2 and tpm2-pkcs11 (the
# "tpm" in the name makes tests/env/with-tokens.sh start the TPM stack).
# The tools take PINs on their command line; these are throwaway test PINs.
set -u
B=${VEIL_BUILDDIR:-.}
K="$B/veil-keys"
PIN=$(head -1 "$VEIL_TEST_PIN_FILE")
export VEIL_PIN_SOURCE="file:$VEIL_TEST_PIN_FILE"
SM="$VEIL_TEST_SOFTHSM_MODULE" TM="$VEIL_TEST_TPM_MODULE"
STOK="pkcs11:token=$VEIL_TEST_SOFTHSM_TOKEN" TTOK="pkcs11:token=$VEIL_TEST_TPM_TOKEN"
W="$VEIL_TEST_DIR"
pass=0 fail=0
ok() { echo "ok: $1"; pass=$((pass+1)); }
no() { echo "FAIL: $1"; [ -s "$W/err" ] && tail -5 "$W/err"; fail=$((fail+1)); }

# 1. A veil key in SoftHSM2, used by pkcs11-tool --decrypt.
if "$K" generate --token "$STOK" --label veil-made --bits 2048 --id 0a0b --module "$SM" >"$W/out" 2>"$W/err"; then ok "veil generates in SoftHSM2"; else no "veil generate"; fi
"$K" show --key "$STOK;object=veil-made" --pem --module "$SM" >"$W/pub.pem" 2>"$W/err"
head -c 32 /dev/urandom >"$W/secret"
# SoftHSM2 does OAEP with SHA-1 only; pkcs11-tool decrypts what openssl wrapped.
openssl pkeyutl -encrypt -pubin -inkey "$W/pub.pem" -in "$W/secret" -out "$W/ct" \
    -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha1 -pkeyopt rsa_mgf1_md:sha1 2>"$W/err"
if pkcs11-tool --module "$SM" --token-label "$VEIL_TEST_SOFTHSM_TOKEN" --login --pin "$PIN" \
       --decrypt --id 0a0b -m RSA-PKCS-OAEP --hash-algorithm SHA-1 --mgf MGF1-SHA1 \
       --input-file "$W/ct" --output-file "$W/pt" >"$W/out" 2>"$W/err" && cmp -s "$W/pt" "$W/secret"; then
    ok "pkcs11-tool --decrypt uses the key veil made"
else no "pkcs11-tool --decrypt with the veil key"; fi
if pkcs11-tool --module "$SM" --token-label "$VEIL_TEST_SOFTHSM_TOKEN" --login --pin "$PIN" -O --type privkey 2>&1 | grep -q "label: *veil-made"; then
    ok "pkcs11-tool lists the veil key"; else no "pkcs11-tool -O"; fi
if GNUTLS_PIN="$PIN" p11tool --provider "$SM" --login --list-privkeys "$STOK" 2>"$W/err" | grep -q "Label: veil-made"; then
    ok "p11tool lists the veil key"; else no "p11tool --list-privkeys"; fi

# 2. A pkcs11-tool key in SoftHSM2, used by veil.
if pkcs11-tool --module "$SM" --token-label "$VEIL_TEST_SOFTHSM_TOKEN" --login --pin "$PIN" \
       --keypairgen --key-type rsa:2048 --label tool-made --id 0c0d >"$W/out" 2>"$W/err"; then
    ok "pkcs11-tool --keypairgen"; else no "pkcs11-tool --keypairgen"; fi
if "$K" test --key "$STOK;object=tool-made" --module "$SM" >"$W/out" 2>"$W/err" && grep -q "^ok:" "$W/out"; then
    ok "veil uses the pkcs11-tool key"; else no "veil test on the pkcs11-tool key"; fi
if "$K" test --key "$STOK;id=%0c%0d" --module "$SM" >"$W/out" 2>"$W/err"; then
    ok "veil finds it by id= too"; else no "veil by id"; fi

# 3. A p11tool key in SoftHSM2, used by veil.
if GNUTLS_PIN="$PIN" p11tool --provider "$SM" --login --generate-privkey rsa --bits 2048 \
       --label gnutls-made "$STOK" >"$W/out" 2>"$W/err"; then
    ok "p11tool --generate-privkey"; else no "p11tool --generate-privkey"; fi
if "$K" test --key "$STOK;object=gnutls-made" --module "$SM" >"$W/out" 2>"$W/err"; then
    ok "veil uses the p11tool key"; else no "veil test on the p11tool key"; fi

# 4. tpm2-pkcs11: a veil key seen by pkcs11-tool; a tpm2_ptool key used by veil.
if "$K" generate --token "$TTOK" --label veil-tpm-key --bits 2048 --module "$TM" >"$W/out" 2>"$W/err"; then
    ok "veil generates in the TPM"; else no "veil generate in the TPM"; fi
if pkcs11-tool --module "$TM" --login --pin "$PIN" -O --type privkey 2>&1 | grep -q "label: *veil-tpm-key"; then
    ok "pkcs11-tool lists the veil TPM key"; else no "pkcs11-tool -O on the TPM"; fi
"$K" show --key "$TTOK;object=veil-tpm-key" --pem --module "$TM" >"$W/tpub.pem" 2>"$W/err"
openssl pkeyutl -encrypt -pubin -inkey "$W/tpub.pem" -in "$W/secret" -out "$W/tct" \
    -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha256 -pkeyopt rsa_mgf1_md:sha256 2>"$W/err"
if pkcs11-tool --module "$TM" --login --pin "$PIN" --decrypt --label veil-tpm-key -m RSA-PKCS-OAEP \
       --hash-algorithm SHA256 --mgf MGF1-SHA256 --input-file "$W/tct" --output-file "$W/tpt" >"$W/out" 2>"$W/err" \
       && cmp -s "$W/tpt" "$W/secret"; then
    ok "pkcs11-tool --decrypt (OAEP-SHA256) uses the veil TPM key"; else no "pkcs11-tool --decrypt on the TPM"; fi
if tpm2_ptool addkey --algorithm=rsa2048 --label="$VEIL_TEST_TPM_TOKEN" --key-label=ptool-made \
       --userpin="$PIN" --path "$TPM2_PKCS11_STORE" >"$W/out" 2>"$W/err"; then
    ok "tpm2_ptool addkey"; else no "tpm2_ptool addkey"; fi
if "$K" test --key "$TTOK;object=ptool-made" --module "$TM" -v >"$W/out" 2>"$W/err" && grep -q "runs natively" "$W/err"; then
    ok "veil uses the tpm2_ptool key, OAEP-SHA256 natively in the TPM"; else no "veil test on the tpm2_ptool key"; fi

echo "test_interop: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
