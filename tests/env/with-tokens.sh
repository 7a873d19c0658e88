#!/bin/bash
# Test wrapper (automake LOG_COMPILER):
#   tests/env/with-tokens.sh ./test_program [args...]
#
# Creates a fresh temporary directory, starts fresh PKCS#11 test tokens in it,
# exports variables describing them, runs the program and exits with its
# status. Afterwards (also on failure or interruption) it stops exactly the
# processes it started, by PID, and removes the directory (unless
# VEIL_KEEP_TEST_DIR=1).
#
# Tokens:
#   SoftHSM2  always
#   TPM       tpm2-pkcs11 over swtpm behind tpm2-abrmd on a private dbus
#             session bus; only when the program's basename contains "tpm"
#             or starts with "test_wycheproof", or VEIL_TEST_TPM=1.  Before swtpm starts, swtpm_setup
#             "manufactures" it: EK certificates (RSA 2048 in NV 0x01c00002,
#             ECC P-384 in 0x01c00016) issued by a fresh local CA
#             (swtpm_localca, all its state in the test directory), a
#             platform certificate, NV locked.  This costs about 1 s.
#
# Exported: VEIL_TEST_DIR SOFTHSM2_CONF
#   VEIL_TEST_SOFTHSM_MODULE VEIL_TEST_SOFTHSM_TOKEN VEIL_TEST_SOFTHSM_TOKEN2
#   VEIL_TEST_PIN_FILE VEIL_TEST_WRONG_PIN_FILE VEIL_TEST_SO_PIN_FILE
#   and for the TPM: VEIL_TEST_TPM_MODULE VEIL_TEST_TPM_TOKEN
#   DBUS_SESSION_BUS_ADDRESS TPM2TOOLS_TCTI TPM2_PKCS11_TCTI TPM2_PKCS11_STORE
#   VEIL_TEST_EK_CA (PEM: the local CA's root and the intermediate that
#   signed the EK certificates; both are needed to build the chain)
#   VEIL_TEST_OTHER_EK_CA (PEM: an unrelated root and intermediate with the
#   same subject names, for "EK certificate from another CA" tests)
#
# If a token cannot be set up this exits 99 (automake "hard error"), never
# 77 (skip): CI must fail, not skip, when a token cannot start.
#
# Set VEIL_TEST_VERBOSE=1 for one line per step on stderr.

set -euo pipefail

readonly ME="with-tokens"

DIR=""
PHASE="setup"       # setup -> test -> done
PROG_PID=""
SWTPM_PID=""
DBUS_PID=""
ABRMD_PID=""

log() {
    if [ "${VEIL_TEST_VERBOSE:-0}" = 1 ]; then
        printf '%s: %s\n' "$ME" "$*" >&2
    fi
}

# fail MESSAGE [LOGFILE]: report a setup failure and exit 99.
fail() {
    printf '%s: error: %s\n' "$ME" "$1" >&2
    if [ -n "${2:-}" ] && [ -f "$2" ]; then
        printf '%s: --- last lines of %s ---\n' "$ME" "$2" >&2
        tail -n 25 "$2" >&2 || true
        printf '%s: --- end of %s ---\n' "$ME" "$2" >&2
    fi
    exit 99
}

# alive PID: true if PID exists and is not a zombie (an exited daemon can
# linger as a zombie until its parent or init reaps it; kill -0 still
# succeeds on it).
alive() {
    local pid=$1 stat
    kill -0 "$pid" 2>/dev/null || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    stat=${stat##*) }           # drop "pid (comm) "
    [ "${stat%% *}" != Z ]
}

# stop_pid, cleanup and on_signal are only reached through the traps.
# shellcheck disable=SC2317
# stop_pid PID NAME: TERM, wait up to 3 s, then KILL. Only this PID.
stop_pid() {
    local pid=$1 name=$2 i
    [ -n "$pid" ] || return 0
    if alive "$pid"; then
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 30; i++)); do
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then
            log "$name (pid $pid) did not exit, sending KILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    return 0
}

# shellcheck disable=SC2317
cleanup() {
    local rc=$?
    trap - EXIT
    trap '' INT TERM    # finish cleaning up even if signalled again
    set +e
    # An unexpected error while setting up the tokens is a hard error too.
    if [ "$PHASE" = setup ] && [ "$rc" -ne 0 ] && [ "$rc" -lt 128 ]; then
        rc=99
    fi
    # A signal can arrive between starting a process and recording its PID
    # ("pending"): recover it from $! or from what the daemon reported.
    if [ "$PROG_PID" = pending ] || [ "$ABRMD_PID" = pending ]; then
        [ "$PROG_PID" = pending ] && PROG_PID=${!:-}
        [ "$ABRMD_PID" = pending ] && ABRMD_PID=${!:-}
    fi
    if [ "$DBUS_PID" = pending ]; then
        DBUS_PID=$(sed -n 2p "$DIR/dbus.out" 2>/dev/null | tr -dc '0-9')
    fi
    if [ "$SWTPM_PID" = pending ]; then
        SWTPM_PID=$(tr -dc '0-9' 2>/dev/null <"$DIR/swtpm.pid")
    fi
    if [ -n "$PROG_PID" ]; then
        stop_pid "$PROG_PID" "test program"
        wait "$PROG_PID" 2>/dev/null
    fi
    stop_pid "$ABRMD_PID" tpm2-abrmd
    if [ -n "$ABRMD_PID" ]; then
        wait "$ABRMD_PID" 2>/dev/null     # our child: reap it
    fi
    stop_pid "$DBUS_PID" dbus-daemon
    stop_pid "$SWTPM_PID" swtpm
    if [ -n "$DIR" ] && [ -d "$DIR" ]; then
        if [ "${VEIL_KEEP_TEST_DIR:-0}" = 1 ]; then
            printf '%s: keeping test directory %s\n' "$ME" "$DIR" >&2
        else
            log "removing $DIR"
            rm -rf -- "$DIR"
        fi
    fi
    exit "$rc"
}

# shellcheck disable=SC2317
on_signal() {
    log "interrupted by SIG$1"
    if [ "$1" = INT ]; then exit 130; else exit 143; fi
}

trap cleanup EXIT
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM

if [ "$#" -eq 0 ]; then
    fail "usage: $0 PROGRAM [ARGS...]"
fi

# Random hex string (16 chars); used for throwaway test PINs.
randhex() {
    od -An -tx1 -N8 /dev/urandom | tr -d ' \n'
}

# write_secret FILE VALUE: create FILE with mode 0600.
write_secret() {
    (umask 077 && printf '%s\n' "$2" >"$1") || fail "cannot write $1"
    chmod 0600 "$1"
}

# find_lib NAME PREFERRED DIRS...: print the path of a library.
find_lib() {
    local name=$1 preferred=$2 found
    shift 2
    if [ -f "$preferred" ]; then
        printf '%s\n' "$preferred"
        return 0
    fi
    found=$(find "$@" -maxdepth 4 -name "$name" \( -type f -o -type l \) \
        2>/dev/null | sort | head -n 1) || true
    [ -n "$found" ] || return 1
    printf '%s\n' "$found"
}

# ---------------------------------------------------------------- directories


DIR=$(mktemp -d "${TMPDIR:-/tmp}/veil-test.XXXXXX") \
    || fail "cannot create a temporary directory under ${TMPDIR:-/tmp}"
export VEIL_TEST_DIR="$DIR"
log "test directory $DIR"

# ---------------------------------------------------------------------- PINs
# Random throwaway PINs for tokens that live only as long as this test.

PIN=$(randhex)
SO_PIN=$(randhex)
WRONG_PIN=$(randhex)
while [ "$WRONG_PIN" = "$PIN" ]; do
    WRONG_PIN=$(randhex)
done
if [ "${#PIN}" -ne 16 ] || [ "${#SO_PIN}" -ne 16 ]; then
    fail "cannot generate random PINs from /dev/urandom"
fi
write_secret "$DIR/user.pin" "$PIN"
write_secret "$DIR/wrong.pin" "$WRONG_PIN"
write_secret "$DIR/so.pin" "$SO_PIN"
export VEIL_TEST_PIN_FILE="$DIR/user.pin"
export VEIL_TEST_WRONG_PIN_FILE="$DIR/wrong.pin"
export VEIL_TEST_SO_PIN_FILE="$DIR/so.pin"
log "PIN files written"

# ------------------------------------------------------------------ SoftHSM2

log "setting up SoftHSM2"
mkdir "$DIR/softhsm-tokens"
cat >"$DIR/softhsm2.conf" <<EOF
directories.tokendir = $DIR/softhsm-tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
EOF
export SOFTHSM2_CONF="$DIR/softhsm2.conf"

VEIL_TEST_SOFTHSM_MODULE=$(find_lib libsofthsm2.so \
    /usr/lib/softhsm/libsofthsm2.so /usr/lib*/ /usr/lib/*/) \
    || fail "SoftHSM2 module libsofthsm2.so not found (install softhsm2)"
export VEIL_TEST_SOFTHSM_MODULE
log "SoftHSM2 module $VEIL_TEST_SOFTHSM_MODULE"

command -v softhsm2-util >/dev/null \
    || fail "softhsm2-util not found (install softhsm2)"

# softhsm2-util only accepts PINs on the command line; these are throwaway
# test PINs, so being visible in the process list for a moment is fine.
init_softhsm_token() {
    local label=$1
    log "initialising SoftHSM2 token $label"
    if ! softhsm2-util --init-token --free --label "$label" \
            --so-pin "$SO_PIN" --pin "$PIN" \
            >>"$DIR/softhsm-init.log" 2>&1; then
        fail "cannot initialise SoftHSM2 token $label" "$DIR/softhsm-init.log"
    fi
}
init_softhsm_token veil-test
export VEIL_TEST_SOFTHSM_TOKEN=veil-test
init_softhsm_token veil-other
export VEIL_TEST_SOFTHSM_TOKEN2=veil-other

# ----------------------------------------------------------------------- TPM

start_swtpm() {
    local try port i pid
    for ((try = 1; try <= 5; try++)); do
        # random port in 20000..59000 (port+1 is the control port)
        port=$(( 20000 + (RANDOM * 32768 + RANDOM) % 39001 ))
        log "starting swtpm on 127.0.0.1:$port (attempt $try)"
        rm -f "$DIR/swtpm.pid"
        SWTPM_PID=pending
        if swtpm socket --tpmstate dir="$DIR/tpm" --tpm2 \
                --server type=tcp,port="$port",bindaddr=127.0.0.1 \
                --ctrl type=tcp,port=$((port + 1)),bindaddr=127.0.0.1 \
                --flags not-need-init,startup-clear \
                --daemon --pid file="$DIR/swtpm.pid" \
                --log file="$DIR/swtpm.log" \
                </dev/null >>"$DIR/swtpm.out" 2>&1; then
            # wait (at most 5 s) for the pid file and the process
            for ((i = 0; i < 50; i++)); do
                pid=""
                if [ -s "$DIR/swtpm.pid" ]; then
                    pid=$(tr -dc '0-9' <"$DIR/swtpm.pid")
                fi
                if [ -n "$pid" ] && alive "$pid"; then
                    SWTPM_PID=$pid
                    SWTPM_PORT=$port
                    log "swtpm running (pid $pid)"
                    return 0
                fi
                sleep 0.1
            done
            fail "swtpm started but is not running" "$DIR/swtpm.log"
        fi
        SWTPM_PID=""
        log "swtpm failed to start on port $port (in use?), retrying"
    done
    cat "$DIR/swtpm.out" >>"$DIR/swtpm.log" 2>/dev/null || true
    fail "swtpm failed to start after 5 attempts" "$DIR/swtpm.log"
}

# provision_tpm: the TPM's "manufacturing" with swtpm_setup, before swtpm
# runs on the state.  Our own swtpm_setup.conf and swtpm-localca.conf keep
# every file in $DIR (the defaults are under /etc and /var/lib).  On its
# first call swtpm_localca makes a root CA (swtpm-localca-rootca-*.pem next
# to the signing key) and an intermediate (signkey.pem, issuercert.pem)
# that signs the certificates, so a verifier needs both.
provision_tpm() {
    local ca="$DIR/tpm-localca" localca_bin
    mkdir "$ca"
    localca_bin=$(command -v swtpm_localca)
    cat >"$DIR/swtpm-localca.conf" <<EOF
statedir = $ca
signingkey = $ca/signkey.pem
issuercert = $ca/issuercert.pem
certserial = $ca/certserial
EOF
    cat >"$DIR/swtpm-localca.options" <<EOF
--platform-manufacturer veil
--platform-version 1.0
--platform-model veil-test
EOF
    cat >"$DIR/swtpm_setup.conf" <<EOF
create_certs_tool = $localca_bin
create_certs_tool_config = $DIR/swtpm-localca.conf
create_certs_tool_options = $DIR/swtpm-localca.options
EOF
    log "manufacturing the TPM (swtpm_setup, EK certificates from a local CA)"
    # All four PCR banks stay active, as in an unprovisioned swtpm
    # (swtpm_setup's default keeps only sha256), so nothing else changes for
    # the tests.  In the foreground: swtpm_setup runs and stops a swtpm of
    # its own, and takes about a second, so a signal waits that long.
    if ! swtpm_setup --tpm2 --tpmstate "$DIR/tpm" --create-ek-cert \
            --create-platform-cert --lock-nvram \
            --pcr-banks sha1,sha256,sha384,sha512 \
            --config "$DIR/swtpm_setup.conf" \
            --logfile "$DIR/swtpm-setup.log" \
            </dev/null >>"$DIR/swtpm-setup.out" 2>&1; then
        cat "$DIR/swtpm-setup.out" >>"$DIR/swtpm-setup.log" 2>/dev/null || true
        fail "swtpm_setup failed" "$DIR/swtpm-setup.log"
    fi
    if [ ! -s "$ca/swtpm-localca-rootca-cert.pem" ] \
            || [ ! -s "$ca/issuercert.pem" ]; then
        fail "swtpm_localca made no CA certificates in $ca" \
            "$DIR/swtpm-setup.log"
    fi
    cat "$ca/swtpm-localca-rootca-cert.pem" "$ca/issuercert.pem" \
        >"$DIR/ek-ca.pem" || fail "cannot write $DIR/ek-ca.pem"
    export VEIL_TEST_EK_CA="$DIR/ek-ca.pem"
    log "EK CA bundle $VEIL_TEST_EK_CA"
}

# make_other_ek_ca: a root and an intermediate that have nothing to do with
# the TPM but carry the same subject names as swtpm_localca's, so that a
# verifier that matched names instead of checking signatures would be
# caught.  P-256 keys with openssl: fast.
make_other_ek_ca() {
    local d="$DIR/other-ek-ca"
    mkdir "$d"
    log "making an unrelated EK CA"
    (
        cd "$d" &&
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
                -nodes -keyout root.key -out root.pem -days 2 \
                -subj "/CN=swtpm-localca-rootca" \
                -addext "basicConstraints=critical,CA:TRUE" \
                -addext "keyUsage=critical,keyCertSign" &&
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
                -keyout inter.key -out inter.csr -subj "/CN=swtpm-localca" &&
            printf '%s\n' "basicConstraints=critical,CA:TRUE" \
                "keyUsage=critical,keyCertSign" >inter.ext &&
            openssl x509 -req -in inter.csr -CA root.pem -CAkey root.key \
                -CAcreateserial -days 2 -extfile inter.ext -out inter.pem &&
            cat root.pem inter.pem >"$DIR/other-ek-ca.pem"
    ) >>"$DIR/other-ek-ca.log" 2>&1 \
        || fail "cannot make the unrelated EK CA" "$DIR/other-ek-ca.log"
    export VEIL_TEST_OTHER_EK_CA="$DIR/other-ek-ca.pem"
}

setup_tpm() {
    local i cmd

    for cmd in swtpm swtpm_setup swtpm_localca openssl dbus-daemon \
            tpm2-abrmd tpm2_getcap tpm2_ptool; do
        command -v "$cmd" >/dev/null \
            || fail "$cmd not found (run scripts/install-deps.sh)"
    done

    VEIL_TEST_TPM_MODULE=$(find_lib libtpm2_pkcs11.so \
        /usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so /usr/lib) \
        || fail "tpm2-pkcs11 module libtpm2_pkcs11.so not found (install libtpm2-pkcs11-1)"
    export VEIL_TEST_TPM_MODULE
    log "TPM module $VEIL_TEST_TPM_MODULE"

    mkdir "$DIR/tpm" "$DIR/tpm2-store"
    provision_tpm
    make_other_ek_ca
    start_swtpm

    log "starting private dbus session bus"
    # prints its address, then its pid
    DBUS_PID=pending
    dbus-daemon --session --fork --print-address=1 --print-pid=1 \
            --address="unix:path=$DIR/bus" \
            </dev/null >"$DIR/dbus.out" 2>"$DIR/dbus.log" \
        || fail "dbus-daemon failed to start" "$DIR/dbus.log"
    DBUS_PID=$(sed -n 2p "$DIR/dbus.out" | tr -dc '0-9')
    [ -n "$DBUS_PID" ] || fail "dbus-daemon did not print its pid" "$DIR/dbus.log"
    log "dbus-daemon running (pid $DBUS_PID)"
    export DBUS_SESSION_BUS_ADDRESS="unix:path=$DIR/bus"

    log "starting tpm2-abrmd"
    local abrmd_args=(--session --tcti="swtpm:host=127.0.0.1,port=$SWTPM_PORT")
    if [ "$(id -u)" -eq 0 ]; then
        abrmd_args+=(--allow-root)
    fi
    ABRMD_PID=pending
    tpm2-abrmd "${abrmd_args[@]}" </dev/null >"$DIR/abrmd.log" 2>&1 &
    ABRMD_PID=$!

    export TPM2TOOLS_TCTI=tabrmd:bus_type=session
    export TPM2_PKCS11_TCTI=tabrmd:bus_type=session
    export TPM2_PKCS11_STORE="$DIR/tpm2-store"

    # wait (at most 15 s) until the TPM answers through abrmd
    for ((i = 0; ; i++)); do
        if tpm2_getcap properties-fixed >/dev/null 2>&1; then
            break
        fi
        if ! alive "$ABRMD_PID"; then
            fail "tpm2-abrmd exited" "$DIR/abrmd.log"
        fi
        if [ "$i" -ge 150 ]; then
            fail "TPM not reachable through tpm2-abrmd after 15 s" "$DIR/abrmd.log"
        fi
        sleep 0.1
    done
    log "tpm2-abrmd running (pid $ABRMD_PID), TPM answers"

    log "initialising tpm2-pkcs11 store"
    tpm2_ptool init --path "$DIR/tpm2-store" >>"$DIR/tpm2-ptool.log" 2>&1 \
        || fail "tpm2_ptool init failed" "$DIR/tpm2-ptool.log"
    log "adding tpm2-pkcs11 token veil-tpm"
    # throwaway test PINs on the command line, as for softhsm2-util
    tpm2_ptool addtoken --pid=1 --sopin="$SO_PIN" --userpin="$PIN" \
            --label=veil-tpm --path "$DIR/tpm2-store" \
            >>"$DIR/tpm2-ptool.log" 2>&1 \
        || fail "tpm2_ptool addtoken failed" "$DIR/tpm2-ptool.log"
    export VEIL_TEST_TPM_TOKEN=veil-tpm
}

prog_name=$(basename -- "$1")
# test_wycheproof runs every vector through every token kind, the TPM too.
if [ "${VEIL_TEST_TPM:-0}" = 1 ] || [[ "$prog_name" == *tpm* ]] ||
    [[ "$prog_name" == test_wycheproof* ]]; then
    setup_tpm
fi

# ------------------------------------------------------------------- run it

PHASE="test"
log "running $*"
# Run in the background and wait, so that INT/TERM are handled at once
# (bash defers traps until a foreground command finishes). Keep stdin.
PROG_PID=pending
"$@" <&0 &
PROG_PID=$!
rc=0
wait "$PROG_PID" || rc=$?
PROG_PID=""
PHASE="done"
log "program exited with status $rc"
exit "$rc"
