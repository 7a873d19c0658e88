#!/bin/bash
# Install the Debian 12 packages needed to build and test veil.
# Only missing packages are installed; apt-get update runs only if needed.
#   scripts/install-deps.sh [--packaging]
# --packaging adds what building the Debian packages needs (debhelper,
# lintian; scripts/quickstart.sh packages).
set -euo pipefail

PACKAGES=(
    # build: toolchain, autotools and the libraries veil links against
    # (OpenSSL, p11-kit, libcurl, cJSON, libmicrohttpd and its GnuTLS,
    # tpm2-tss, CUnit for tests)
    autoconf automake libtool pkg-config make gcc
    libssl-dev libp11-kit-dev p11-kit libcurl4-openssl-dev libcjson-dev
    libmicrohttpd-dev libgnutls28-dev libtss2-dev libcunit1-dev
    libsystemd-dev        # veild's sd_notify (Type=notify; configure --without-systemd drops it)

    # tokens: test PKCS#11 tokens started by tests/env/with-tokens.sh
    # (SoftHSM2; tpm2-pkcs11 over swtpm behind tpm2-abrmd on a private dbus bus)
    # plus the tools to inspect them (tpm2-tools, opensc's pkcs11-tool, gnutls p11tool)
    softhsm2 libtpm2-pkcs11-1 libtpm2-pkcs11-tools swtpm swtpm-tools
    tpm2-abrmd libtss2-tcti-tabrmd0 dbus tpm2-tools opensc gnutls-bin
    python3-cryptography  # tests/nomyo_client.py, the NOMYO wire-format client
    openssl curl          # the tests' independent checks: openssl dgst, plain HTTP
    python3-prometheus-client  # tests/metrics_check.py: GET /metrics parsed as Prometheus does

    # sanitizer runtime for the gcc builds: nothing extra; gcc's
    # libasan/libubsan come with gcc

    # fuzzing (configure CC=clang --enable-fuzzing; fuzz/, scripts/fuzz.sh):
    # clang 14 and its compiler-rt, which holds libFuzzer and clang's sanitizers
    clang libclang-rt-14-dev
    clang-format          # tests/check_style.sh: the C formatting check (.clang-format)
)
# tests/test_interop_ohttp.sh: Node.js and npm run third-party HPKE and
# Binary HTTP implementations (npm packages, tests/interop/) against veil.
# Debian's nodejs and npm only when node or npm is missing: a machine with
# Node.js from elsewhere keeps it.
command -v node >/dev/null 2>&1 || PACKAGES+=(nodejs)
command -v npm >/dev/null 2>&1 || PACKAGES+=(npm)
if [ "${1:-}" = --packaging ]; then
    # debian/: dpkg-buildpackage (dpkg-dev), dh, fakeroot, and lintian
    PACKAGES+=(dpkg-dev debhelper fakeroot lintian git)
fi

export DEBIAN_FRONTEND=noninteractive

echo "install-deps: checking ${#PACKAGES[@]} packages"
missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    if [ "$status" != "install ok installed" ]; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-deps: all packages already installed"
    exit 0
fi

echo "install-deps: missing: ${missing[*]}"

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: error: ${#missing[@]} package(s) missing and not running as root;" >&2
    echo "install-deps: run as root, or: apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi

echo "install-deps: running apt-get update"
apt-get update

echo "install-deps: installing ${#missing[@]} package(s)"
apt-get install -y --no-install-recommends "${missing[@]}"

echo "install-deps: done"
