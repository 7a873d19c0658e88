#!/bin/bash
# veil-keys as a user runs it, against a fresh SoftHSM2 token: what it
# prints and its exit codes (documented in `veil-keys --help`).
set -u
B=${VEIL_BUILDDIR:-.}
K="$B/veil-keys"
export VEIL_PKCS11_MODULE="$VEIL_TEST_SOFTHSM_MODULE"
export VEIL_PIN_SOURCE="file:$VEIL_TEST_PIN_FILE"
TOK="pkcs11:token=$VEIL_TEST_SOFTHSM_TOKEN"
pass=0 fail=0
out="$VEIL_TEST_DIR/out" err="$VEIL_TEST_DIR/err"

# check NAME EXPECTED_EXIT [grep-pattern-in-stdout+stderr] -- command...
check() {
    local name=$1 want=$2 pat=$3; shift 4
    "$@" >"$out" 2>"$err" </dev/null
    local got=$?
    if [ "$got" -ne "$want" ]; then
        echo "FAIL: $name: exit $got, expected $want"; cat "$err"; fail=$((fail+1)); return
    fi
    if [ -n "$pat" ] && ! grep -qE -- "$pat" "$out" "$err"; then
        echo "FAIL: $name: output lacks /$pat/"; cat "$out" "$err"; fail=$((fail+1)); return
    fi
    echo "ok: $name"; pass=$((pass+1))
}

check "no arguments is a usage error" 2 "usage: veil-keys" -- "$K"
check "--help" 0 "Exit codes" -- "$K" --help
check "--version" 0 "^veil-keys [0-9]" -- "$K" --version
for c in generate list show delete test caps; do
    check "$c --help" 0 "usage: veil-keys $c" -- "$K" "$c" --help
done
check "unknown command" 2 "unknown command" -- "$K" frobnicate
check "a PIN on the command line is refused" 2 "never taken on the command line" -- "$K" list --token "$TOK" --pin 1234
check "caps of the token" 0 "rsa-x-509" -- "$K" caps --token "$TOK"
# --json: what a script reads (parsed, not grepped)
json_has() { # NAME PYTHON-EXPR-over-j: the output of the last check
    if /usr/bin/python3 -c "import json,sys; j=json.load(open(sys.argv[1])); sys.exit(0 if ($2) else 1)" "$out" 2>>"$err"; then
        echo "ok: $1"; pass=$((pass+1))
    else
        echo "FAIL: $1"; cat "$out" "$err"; fail=$((fail+1))
    fi
}
check "caps --json" 0 "" -- "$K" caps --token "$TOK" --json
json_has "caps --json lists the mechanisms" "'rsa-x-509 (raw)' in j['mechanisms'] and j['rsa_max_bits'] >= 2048"
check "generate RSA-2048 in the token" 0 "sensitive: +yes" -- "$K" generate --token "$TOK" --label server --bits 2048
grep -q "extractable:  no" "$out" && echo "ok: not extractable" && pass=$((pass+1)) || { echo "FAIL: extractable"; fail=$((fail+1)); }
check "generate says it is working" 0 "generating RSA-3072" -- "$K" generate --token "$TOK" --label big --bits 3072
check "same label again is refused" 6 "already has a key labelled" -- "$K" generate --token "$TOK" --label server --bits 2048
check "bad key size" 2 "2048, 3072 or 4096" -- "$K" generate --token "$TOK" --label odd --bits 1024
check "generate EC P-256" 0 "EC-P256" -- "$K" generate --token "$TOK" --label signer --type ec
check "list shows the keys" 0 "label: +server" -- "$K" list --token "$TOK"
grep -q "label:        signer" "$out" && pass=$((pass+1)) || { echo "FAIL: list lacks signer"; fail=$((fail+1)); }
check "show --fingerprint" 0 "^sha256:[0-9a-f]{64}$" -- "$K" show --key "$TOK;object=server" --fingerprint
fp=$(cat "$out")
check "show by bare label with --token" 0 "$fp" -- "$K" show --token "$TOK" --key server
check "show --pem" 0 "BEGIN PUBLIC KEY" -- "$K" show --key "$TOK;object=server" --pem
openssl pkey -pubin -in "$out" -outform DER 2>/dev/null | sha256sum | grep -q "${fp#sha256:}" \
    && { echo "ok: fingerprint is SHA-256 of the SPKI DER"; pass=$((pass+1)); } \
    || { echo "FAIL: fingerprint mismatch"; fail=$((fail+1)); }
check "test an RSA token key" 0 "^ok: pkcs11 RSA-2048" -- "$K" test --key "$TOK;object=server"
check "test says the raw path in -v" 0 "CKM_RSA_X_509" -- "$K" test --key "$TOK;object=server" -v
check "test an EC token key" 0 "^ok: pkcs11 EC" -- "$K" test --key "$TOK;object=signer"
check "list --json" 0 "" -- "$K" list --token "$TOK" --json
json_has "list --json: every key, with its facts" "sorted(k['label'] for k in j['keys']) == ['big', 'server', 'signer'] and all(k['sensitive'] is True and k['extractable'] is False and k['fingerprint'].startswith('sha256:') for k in j['keys'])"
check "show --json" 0 "" -- "$K" show --key "$TOK;object=server" --json
json_has "show --json: the key, its fingerprint and PEM" "j['label'] == 'server' and j['type'] == 'rsa' and j['bits'] == 2048 and j['fingerprint'] == '$fp' and 'BEGIN PUBLIC KEY' in j['public_key_pem']"
check "test --json" 0 "" -- "$K" test --key "$TOK;object=signer" --json
json_has "test --json: ok" "j['ok'] is True and j['type'] == 'ec-p256'"
check "an error with --json: exit 3, and JSON on stdout" 3 "" -- "$K" show --key "$TOK;object=nope" --json
json_has "the error as JSON names the token's keys" "j['error']['exit_code'] == 3 and 'no private key matching' in j['error']['detail'] and '\"server\"' in j['error']['detail']"
check "delete without --yes deletes nothing" 2 "add --yes" -- "$K" delete --key "$TOK;object=server"
check "key still there" 0 "$fp" -- "$K" show --key "$TOK;object=server" --fingerprint
check "delete --yes" 0 "deleted \"server\"" -- "$K" delete --key "$TOK;object=server" --yes
check "deleted key is gone" 3 "no private key matching" -- "$K" show --key "$TOK;object=server"
check "missing token" 3 "no token matching.*veil-test" -- "$K" list --token "pkcs11:token=nope"
check "missing module" 5 "cannot load PKCS#11 module" -- "$K" list --token "$TOK" --module /nonexistent/lib.so
check "wrong PIN" 4 "CKR_PIN_INCORRECT" -- "$K" list --token "$TOK" --pin-source "file:$VEIL_TEST_WRONG_PIN_FILE"
check "bad PIN source" 2 "PIN source must be" -- "$K" list --token "$TOK" --pin-source 1234
check "a missing PIN file is a PIN error (4)" 4 "PIN file .*/no-such.pin" -- "$K" list --token "$TOK" --pin-source "file:$VEIL_TEST_DIR/no-such.pin"
check "world-readable PIN file refused (4)" 4 "" -- bash -c "cp '$VEIL_TEST_PIN_FILE' '$VEIL_TEST_DIR/open.pin'; chmod 644 '$VEIL_TEST_DIR/open.pin'; '$K' list --token '$TOK' --pin-source 'file:$VEIL_TEST_DIR/open.pin'"
grep -q "chmod 600" "$err" && pass=$((pass+1)) || { echo "FAIL: chmod hint"; fail=$((fail+1)); }

# Software keys in a NOMYO key directory.
D="$VEIL_TEST_DIR/keys"
export KEYPW=correct-horse
check "generate into a key directory, encrypted" 0 "provider: +software" -- "$K" generate --key-dir "$D" --bits 2048 --password-source env:KEYPW
[ "$(stat -c %a "$D/private_key.pem")" = 600 ] && [ "$(stat -c %a "$D/public_key.pem")" = 600 ] \
    && { echo "ok: key files are 0600"; pass=$((pass+1)); } || { echo "FAIL: modes"; fail=$((fail+1)); }
head -1 "$D/private_key.pem" | grep -q "BEGIN ENCRYPTED PRIVATE KEY" \
    && { echo "ok: private key file is encrypted PKCS#8"; pass=$((pass+1)); } || { echo "FAIL: not encrypted"; fail=$((fail+1)); }
check "key directory refuses overwrite" 6 "exists" -- "$K" generate --dir "$D" --bits 2048 --password-source env:KEYPW
check "test the directory key" 0 "^ok: software RSA-2048" -- "$K" test --key-dir "$D" --password-source env:KEYPW
KEYPW=wrong check "wrong password" 4 "wrong password" -- "$K" test --dir "$D" --password-source env:KEYPW
check "no password for an encrypted key" 4 "no password" -- env -u VEIL_PIN_SOURCE "$K" test --dir "$D"
# Core dumps off while a password is being typed: veil-keys on a terminal
# (a pty), seen from outside at its prompt; RLIMIT_CORE 0 whatever it
# started with, and not dumpable (its /proc/PID root's: seen only when
# this test does not run as root).
/usr/bin/python3 - "$K" "$VEIL_TEST_DIR/keys-pty" >"$out" 2>"$err" <<'EOF'
import os, pty, resource, signal, sys, termios, time
signal.alarm(600)  # a watchdog, should veil-keys never end
soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], [sys.argv[1], "generate", "--key-dir", sys.argv[2],
                           "--bits", "2048", "--password-source", "prompt"])
core, owner, seen = "?", "-", b""
while True:  # each "...password: " prompt answered (new, then read back)
    try:
        chunk = os.read(fd, 1024)
    except OSError:
        chunk = b""
    if not chunk:
        break
    seen += chunk
    if not seen.endswith(b"password: "):
        continue
    seen = b""
    if core == "?":  # at the first prompt, as it waits for the password
        with open("/proc/%d/limits" % pid) as f:
            for line in f:
                if line.startswith("Max core file size"):
                    core = " ".join(line.split()[4:6])
        if os.getuid() != 0:
            owner = str(os.stat("/proc/%d" % pid).st_uid)
    # the prompt comes before echo goes off, which flushes the input:
    # typed once echo is off
    for _ in range(1200):
        if not termios.tcgetattr(fd)[3] & termios.ECHO:
            break
        time.sleep(0.05)
    os.write(fd, b"pty-password\n")
_, status = os.waitpid(pid, 0)
print("started with: %s" % ("0" if hard == 0 else "nonzero"))
print("core: %s" % core)
print("owner: %s" % owner)
print("exit: %d" % os.waitstatus_to_exitcode(status))
EOF
if grep -qx "core: 0 0" "$out" && grep -qx "exit: 0" "$out"; then
    echo "ok: veil-keys at its password prompt: core file size limit 0"; pass=$((pass+1))
else
    echo "FAIL: veil-keys at its password prompt: core limit"; cat "$out" "$err"; fail=$((fail+1))
fi
grep -qx "started with: 0" "$out" && echo "note: the hard core file size limit here is 0 already"
if grep -qx "owner: -" "$out"; then
    echo "note: running as root: PR_SET_DUMPABLE is not visible in /proc here (test_secmem checks it)"
elif grep -qx "owner: 0" "$out"; then
    echo "ok: veil-keys at its password prompt is not dumpable"; pass=$((pass+1))
else
    echo "FAIL: veil-keys at its password prompt is dumpable"; cat "$out"; fail=$((fail+1))
fi
D1="$VEIL_TEST_DIR/keys-1024"
mkdir -p "$D1" && openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out "$D1/private_key.pem" 2>/dev/null &&
    openssl pkey -in "$D1/private_key.pem" -pubout -out "$D1/public_key.pem" 2>/dev/null && chmod 600 "$D1"/*.pem ||
    { echo "ERROR (setup): cannot make an RSA-1024 key"; exit 99; }
check "test refuses an RSA key under 2048 bits, naming its size (2)" 2 "RSA-1024 key .* too small: .*at least 2048 bits" -- env -u VEIL_PIN_SOURCE "$K" test --key-dir "$D1"
check "delete the directory key (the older --dir still taken)" 0 "deleted" -- "$K" delete --dir "$D" --yes --password-source env:KEYPW
[ ! -e "$D/private_key.pem" ] && pass=$((pass+1)) || { echo "FAIL: file left"; fail=$((fail+1)); }

# ---- the same exit codes in veil-keys, veil and veild (veil-keys(1)); a
# PIN the token rejected is remembered by veild and never sent again.
V="$B/veil" VD="$B/veild" MOD="$VEIL_TEST_SOFTHSM_MODULE"
WRONG="file:$VEIL_TEST_WRONG_PIN_FILE" RIGHT="file:$VEIL_TEST_PIN_FILE"
SD="$VEIL_TEST_DIR/veild-pin.state"
for tool in "$V" "$K" "$VD"; do
    check "$(basename "$tool") --help has the shared exit codes" 0 "3 token or key not found, 4 PIN wrong" -- "$tool" --help
done
check "a gateway key for the exit-code checks" 0 "RSA-2048" -- "$K" generate --token "$TOK" --label gw --bits 2048
# veild that fails to start exits at once; timeout only guards a hang.
GWARGS=(--pkcs11-module "$MOD" --model m=echo --port 0 --state-dir "$SD" --log-level debug)
check "veil: a wrong PIN exits 4" 4 "CKR_PIN_INCORRECT" -- "$V" chat -m m --url https://127.0.0.1:1 --token-key "$TOK;object=gw" --pin-source "$WRONG" hello
check "veil: a missing PIN file exits 4" 4 "PIN file" -- "$V" chat -m m --url https://127.0.0.1:1 --token-key "$TOK;object=gw" --pin-source "file:$VEIL_TEST_DIR/no-such.pin" hello
check "veil: a missing token exits 3" 3 "no token matching" -- "$V" chat -m m --url https://127.0.0.1:1 --token-key "pkcs11:token=nope;object=gw" --pin-source "$RIGHT" hello
check "veild: a bad setting exits 2" 2 "" -- timeout 120 "$VD" "${GWARGS[@]}" --server-key "$TOK;object=gw" --rate nonsense
check "veild: a missing token exits 3" 3 "no token matching" -- timeout 120 "$VD" "${GWARGS[@]}" --server-key "pkcs11:token=nope;object=gw" --pin-source "$RIGHT"
check "veild: a missing PIN file exits 4" 4 "PIN file" -- timeout 120 "$VD" "${GWARGS[@]}" --server-key "$TOK;object=gw" --pin-source "file:$VEIL_TEST_DIR/no-such.pin"
check "veild: a wrong PIN exits 4" 4 "C_Login -> CKR_PIN_INCORRECT" -- timeout 120 "$VD" "${GWARGS[@]}" --server-key "$TOK;object=gw" --pin-source "$WRONG"
rec=$(ls "$SD"/pin-rejected-* 2>/dev/null)
if [ -n "$rec" ] && [ "$(stat -c %a "$rec")" = 600 ] && [ "$(stat -c %a "$SD/pin-memory.key")" = 600 ] &&
    ! grep -qF "$(head -1 "$VEIL_TEST_WRONG_PIN_FILE")" "$rec" && grep -qE '^[0-9a-f]{64}$' "$rec"; then
    echo "ok: the rejection is remembered in $rec (an HMAC, 0600)"; pass=$((pass+1))
else
    echo "FAIL: no 0600 rejection record with an HMAC in $SD"; ls -l "$SD"; fail=$((fail+1))
fi
check "veild: the same wrong PIN is not tried again (4)" 4 "rejected this PIN before.*delete $rec if the token now has this PIN" -- timeout 120 "$VD" "${GWARGS[@]}" --server-key "$TOK;object=gw" --pin-source "$WRONG"
if grep -q "C_Login" "$err"; then
    echo "FAIL: veild called C_Login with a PIN the token had rejected"; cat "$err"; fail=$((fail+1))
else
    echo "ok: no C_Login the second time"; pass=$((pass+1))
fi
. "${VEIL_SRCDIR:?}/tests/env/veild.sh"
trap veild_stop EXIT
veild_start pin --server-key "$TOK;object=gw" "${GWARGS[@]}" --pin-source "$RIGHT" --state-dir "$SD"
if [ -z "$(ls "$SD"/pin-rejected-* 2>/dev/null)" ]; then
    echo "ok: the right PIN works and clears the memory"; pass=$((pass+1))
else
    echo "FAIL: the rejection record outlived a good login"; fail=$((fail+1))
fi
veild_stop && { echo "ok: veild stopped cleanly"; pass=$((pass+1)); } || { echo "FAIL: veild stop"; fail=$((fail+1)); }

# systemd credentials (LoadCredential=): the PIN and the API keys read
# from $CREDENTIALS_DIRECTORY by name.
CRED="$VEIL_TEST_DIR/credentials"
mkdir -p "$CRED" && chmod 700 "$CRED"
cp "$VEIL_TEST_PIN_FILE" "$CRED/token-pin"
APIKEY=veil-test-credential-key
printf 'sha256:%s ci\n' "$(printf %s "$APIKEY" | sha256sum | cut -d' ' -f1)" >"$CRED/api-keys"
chmod 400 "$CRED/token-pin" "$CRED/api-keys"
check "veil-keys: credential:NAME without CREDENTIALS_DIRECTORY (4)" 4 "CREDENTIALS_DIRECTORY is not set" -- env -u CREDENTIALS_DIRECTORY "$K" list --token "$TOK" --pin-source credential:token-pin
check "veil-keys: a PIN from a systemd credential" 0 "label: +gw" -- env CREDENTIALS_DIRECTORY="$CRED" "$K" list --token "$TOK" --pin-source credential:token-pin
check "veil-keys: a credential name with a slash (2)" 2 "no '/'" -- env CREDENTIALS_DIRECTORY="$CRED" "$K" list --token "$TOK" --pin-source credential:../token-pin
check "veild: API keys from a missing credential directory exit 2" 2 "CREDENTIALS_DIRECTORY is not set" -- env -u CREDENTIALS_DIRECTORY timeout 120 "$VD" "${GWARGS[@]}" --server-key "$TOK;object=gw" --pin-source "$RIGHT" --api-keys credential:api-keys
CREDENTIALS_DIRECTORY="$CRED" veild_start cred --server-key "$TOK;object=gw" "${GWARGS[@]}" --state-dir "$VEIL_TEST_DIR/cred.state" --pin-source credential:token-pin --api-keys credential:api-keys
code_none=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' --data '{}' "$VEILD_URL/v1/chat/secure_completion")
code_key=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $APIKEY" -H 'Content-Type: application/json' --data '{}' "$VEILD_URL/v1/chat/secure_completion")
if [ "$code_none" = 401 ] && [ "$code_key" != 401 ]; then
    echo "ok: veild logged in with the credential PIN and took the credential's API keys (401 without, $code_key with)"; pass=$((pass+1))
else
    echo "FAIL: credential API keys: $code_none without a key, $code_key with it"; cat "$VEILD_LOG"; fail=$((fail+1))
fi
veild_stop || { echo "FAIL: veild (credentials) stop"; fail=$((fail+1)); }

# veild --check-config: every problem of a file at once, then the files it
# names; inline comments; a missing backend key file stops a start; the
# shipped example starts as it is (its token, key and PIN given as flags).
CC="$VEIL_TEST_DIR/check-config"
mkdir -p "$CC"
printf 'port = 8443   # the port, with a comment\nrate = abc\nworkers = 0\n' >"$CC/two.conf"
check "--check-config lists every problem of a file at once (2)" 2 "two.conf:2: rate: .*" -- \
    "$VD" --config "$CC/two.conf" --server-key "$TOK;object=gw" --check-config
grep -q "two.conf:3: workers" "$err" && pass=$((pass+1)) || { echo "FAIL: the second problem is not listed"; cat "$err"; fail=$((fail+1)); }
grep -q "two.conf:1" "$err" && { echo "FAIL: an inline comment was taken as part of the value"; fail=$((fail+1)); } || pass=$((pass+1))
printf '[model m]\nupstream = http://127.0.0.1:9/v1\nupstream_key_file = %s/no-such.key\n' "$CC" >"$CC/key.conf"
check "--check-config names a missing backend key file and API keys file (2)" 2 "model m: upstream_key_file .*no-such.key" -- \
    "$VD" --config "$CC/key.conf" --server-key "$TOK;object=gw" --api-keys "$CC/no-such-keys" --check-config
grep -q "api_keys: .*no-such-keys" "$err" && pass=$((pass+1)) || { echo "FAIL: api_keys not listed"; cat "$err"; fail=$((fail+1)); }
check "a start stops at a missing backend key file, before the token (2)" 2 "upstream_key_file .*no-such.key" -- \
    timeout 120 "$VD" --config "$CC/key.conf" --server-key "$TOK;object=gw" --module "$MOD" --pin-source "$RIGHT" --state-dir "$CC/st"
grep -q "C_Login\|listening" "$err" && { echo "FAIL: veild went on to the token"; fail=$((fail+1)); } || pass=$((pass+1))
check "--check-config notes a maximum model whose backend is off the attested host (0)" 0 \
    "check: note: model 'far' is not allowed on the maximum tier: its upstream is on another host.*maximum requests answer 403" -- \
    "$VD" --server-key "$TOK;object=gw" --tpm on --model "far=https://10.1.2.3/v1" --model "sock=unix:/run/llama.sock" --check-config
grep -q "model 'sock'" "$err" && { echo "FAIL: a note for the Unix socket model"; cat "$err"; fail=$((fail+1)); } || pass=$((pass+1))
check "--check-config with tpm_remote_https: the remote model's quotes say so (0)" 0 \
    "check: note: model 'far' on maximum: its backend is on another host \(tpm_remote_https\); its quotes say so" -- \
    "$VD" --server-key "$TOK;object=gw" --tpm on --tpm-remote-https on --model "far=https://10.1.2.3/v1" --check-config
check "--check-config on the shipped example (its token and PIN as flags): OK" 0 "configuration OK" -- \
    "$VD" --config "$VEIL_SRCDIR/docs/veild.conf.example" --server-key "$TOK;object=gw" --module "$MOD" \
    --pin-source "$RIGHT" --check-config
veild_start example --config "$VEIL_SRCDIR/docs/veild.conf.example" --server-key "$TOK;object=gw" --module "$MOD" \
    --pin-source "$RIGHT" --state-dir "$CC/example.state"
curl -sf "$VEILD_URL/pki/public_key" >/dev/null && { echo "ok: the shipped example starts as it is"; pass=$((pass+1)); } \
    || { echo "FAIL: the shipped example did not serve"; cat "$VEILD_LOG"; fail=$((fail+1)); }
veild_stop || { echo "FAIL: veild (example) stop"; fail=$((fail+1)); }

# Nothing secret on stdout or stderr of any command above.
if grep -rqF "$(head -1 "$VEIL_TEST_PIN_FILE")" "$out" "$err"; then echo "FAIL: PIN printed"; fail=$((fail+1)); else pass=$((pass+1)); fi

echo "test_tools: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
