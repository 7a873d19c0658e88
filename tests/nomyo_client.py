#!/usr/bin/python3
"""A NOMYO v1 secure-completion client, for compatibility tests.

An independent re-implementation of the wire handling of the two existing
NOMYO clients, written from the protocol description
(PROTOCOL-NOMYO.md), not from veil's C code, so that a gateway which
serves this script serves the clients' wire format.  Standard library plus
the `cryptography` package (Debian: python3-cryptography).

Variants (--variant):
  python  the Python client: the GCM tag travels in a separate "tag" field
          of encrypted_payload; decrypting an answer REQUIRES that field
  js      the JavaScript client (WebCrypto style): the tag is appended to
          "ciphertext" and there is no "tag" field; decrypting an answer
          ignores any "tag" field and expects the tag appended

One request: GET /pki/public_key (must parse as a PEM RSA public key of
2048+ bits), a fresh RSA client key (e=65537, --bits, default 4096),
a fresh AES-256 key and 12-byte nonce, AES-256-GCM over the UTF-8 JSON
request without associated data, the AES key wrapped with RSA-OAEP
(SHA-256, MGF1-SHA-256, empty label) to the server key, standard base64
with padding; POST /v1/chat/secure_completion with X-Payload-ID (uuid4),
X-Public-Key (the client's SPKI PEM, percent-encoded with
urllib.parse.quote(pem, safe='')), Content-Type application/octet-stream,
and Authorization: Bearer / X-Security-Tier when asked.  The answer
package is opened with the client key as the variant does, _metadata gets
payload_id, processed_at, is_encrypted and encryption_algorithm as the
clients add them, and the answer JSON is printed on stdout.

On stderr (one line each, for tests): "X-Payload-ID: <uuid>" for each
post, "server _metadata: <json>" (the _metadata as the server sent it,
before the client's additions) and "answer tag placement: separate|
appended".

Exit codes (the error classes of the clients; same numbers as veil(1)):
   0 success
   1 other error (a failed --self-test)
   2 usage
  11 InvalidRequestError       HTTP 400, or refused before sending
  12 AuthenticationError       HTTP 401
  13 ForbiddenError            HTTP 403
  14 APIError                  HTTP 404 ("secure inference not enabled"),
                               or any other status (e.g. 409, 413)
  15 RateLimitError            HTTP 429
  16 ServerError               HTTP 500
  17 ServiceUnavailableError   HTTP 503
  18 APIConnectionError        network failure, timeout or TLS failure
  19 SecurityError             any crypto or package failure (one fixed
                               message), a bad server key, plain http
                               without --allow-http
With --send-twice the identical package (same body, same headers) is
posted a second time after a successful first post, and the exit code is
that of the second post (a gateway refusing the replay answers 409: 14).
"""

import argparse
import base64
import binascii
import json
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ME = "nomyo_client"
SECURITY_MESSAGE = "the response could not be verified or decrypted"
MAX_PAYLOAD = 10 * 1024 * 1024
MIN_RSA_BITS = 2048
TIERS = ("standard", "high", "maximum")

EXIT = {
    "InvalidRequestError": 11,
    "AuthenticationError": 12,
    "ForbiddenError": 13,
    "APIError": 14,
    "RateLimitError": 15,
    "ServerError": 16,
    "ServiceUnavailableError": 17,
    "APIConnectionError": 18,
    "SecurityError": 19,
}
STATUS_CLASS = {
    400: "InvalidRequestError",
    401: "AuthenticationError",
    403: "ForbiddenError",
    404: "APIError",
    429: "RateLimitError",
    500: "ServerError",
    503: "ServiceUnavailableError",
}


class ClientError(Exception):
    def __init__(self, cls, detail, status=None):
        super().__init__(detail)
        self.cls = cls
        self.detail = detail
        self.status = status


class SecurityError(ClientError):
    """Every crypto failure: one fixed, uninformative message."""

    def __init__(self):
        super().__init__("SecurityError", SECURITY_MESSAGE)


# ---- the package ---------------------------------------------------------

OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()),
                    algorithm=hashes.SHA256(), label=None)


def b64e(data):
    return base64.b64encode(data).decode("ascii")


def b64d(text):
    """Standard alphabet, '=' padding, nothing else (validate=True)."""
    if not isinstance(text, str):
        raise ValueError("not a string")
    return base64.b64decode(text.encode("ascii"), validate=True)


def seal(plaintext, recipient, variant):
    """A package holding plaintext (bytes) for the recipient's public key."""
    aes_key = os.urandom(32)
    nonce = os.urandom(12)
    sealed = AESGCM(aes_key).encrypt(nonce, plaintext, None)  # ct || tag
    wrapped = recipient.encrypt(aes_key, OAEP)
    if variant == "python":
        payload = {"ciphertext": b64e(sealed[:-16]), "nonce": b64e(nonce),
                   "tag": b64e(sealed[-16:])}
    else:
        payload = {"ciphertext": b64e(sealed), "nonce": b64e(nonce)}
    return {
        "version": "1.0",
        "algorithm": "hybrid-aes256-rsa4096",
        "encrypted_payload": payload,
        "encrypted_aes_key": b64e(wrapped),
        "key_algorithm": "RSA-OAEP-SHA256",
        "payload_algorithm": "AES-256-GCM",
    }


def open_package(package, private_key, variant):
    """The plaintext (bytes) of a package; SecurityError on any failure."""
    try:
        if not isinstance(package, dict):
            raise ValueError("not an object")
        enc = package["encrypted_payload"]
        if not isinstance(enc, dict):
            raise ValueError("encrypted_payload is not an object")
        ct = b64d(enc["ciphertext"])
        nonce = b64d(enc["nonce"])
        if len(nonce) != 12:
            raise ValueError("nonce is not 12 bytes")
        if variant == "python":
            tag = b64d(enc["tag"])  # KeyError when missing: required
            if len(tag) != 16:
                raise ValueError("tag is not 16 bytes")
            ct = ct + tag
        elif len(ct) < 16:  # js: the tag is appended; any "tag" is ignored
            raise ValueError("ciphertext shorter than its tag")
        aes_key = private_key.decrypt(b64d(package["encrypted_aes_key"]), OAEP)
        if len(aes_key) != 32:
            raise ValueError("AES key is not 32 bytes")
        return AESGCM(aes_key).decrypt(nonce, ct, None)
    except (KeyError, TypeError, ValueError, binascii.Error, InvalidTag):
        raise SecurityError() from None


# ---- HTTP ----------------------------------------------------------------

class Http:
    def __init__(self, url, ca_file, timeout, allow_http):
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ClientError("InvalidRequestError",
                              "--url must be an http(s) URL")
        if parsed.scheme == "http" and not allow_http:
            e = SecurityError()
            e.detail = "plain http is refused (use --allow-http)"
            raise e
        self.base = url.rstrip("/")
        self.timeout = timeout
        self.ctx = None
        if parsed.scheme == "https":
            self.ctx = ssl.create_default_context(cafile=ca_file)

    def call(self, method, path, body=None, headers=None):
        """(status, body bytes) for any HTTP status."""
        req = urllib.request.Request(self.base + path, data=body,
                                     headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout,
                                        context=self.ctx) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except (urllib.error.URLError, OSError) as e:
            raise ClientError("APIConnectionError",
                              "cannot reach %s: %s" % (self.base, e)) from None


def http_error(status, body):
    try:
        detail = json.loads(body.decode("utf-8"))["detail"]
        if not isinstance(detail, str):
            detail = json.dumps(detail)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        detail = body.decode("utf-8", "replace")[:500]
    cls = STATUS_CLASS.get(status, "APIError")
    if status == 404:
        detail = "secure inference not enabled: " + detail
    return ClientError(cls, detail, status)


def fetch_server_key(http):
    status, body = http.call("GET", "/pki/public_key")
    if status != 200:
        raise http_error(status, body)
    try:
        key = serialization.load_pem_public_key(body)
    except ValueError:
        e = SecurityError()
        e.detail = "the server key is not a PEM public key"
        raise e from None
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < MIN_RSA_BITS:
        e = SecurityError()
        e.detail = "the server key is not an RSA key of %d+ bits" % MIN_RSA_BITS
        raise e
    return key


# ---- one exchange --------------------------------------------------------

def build_request(opts, server_key, client_key):
    """(body bytes, headers, payload id) of one request."""
    chat = {"model": opts.model,
            "messages": [{"role": "user", "content": opts.prompt}]}
    plaintext = json.dumps(chat).encode("utf-8")
    if len(plaintext) > MAX_PAYLOAD:
        raise ClientError("InvalidRequestError",
                          "payload larger than 10 MiB")
    package = seal(plaintext, server_key, opts.variant)
    pem = client_key.public_key().public_bytes(
        serialization.Encoding.PEM,
        serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")
    payload_id = str(uuid.uuid4())
    headers = {
        "X-Payload-ID": payload_id,
        "X-Public-Key": urllib.parse.quote(pem, safe=""),
        "Content-Type": "application/octet-stream",
    }
    if opts.api_key:
        headers["Authorization"] = "Bearer " + opts.api_key
    if opts.tier:
        headers["X-Security-Tier"] = opts.tier
    return json.dumps(package).encode("utf-8"), headers, payload_id


def read_answer(body, client_key, variant, payload_id):
    try:
        package = json.loads(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise SecurityError() from None
    if not isinstance(package, dict):
        raise SecurityError()
    enc = package.get("encrypted_payload")
    if isinstance(enc, dict):
        say("answer tag placement: %s" %
            ("separate" if "tag" in enc else "appended"))
    plaintext = open_package(package, client_key, variant)
    try:
        answer = json.loads(plaintext.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise SecurityError() from None
    if not isinstance(answer, dict):
        raise SecurityError()
    md = answer.get("_metadata")
    say("server _metadata: %s" % json.dumps(md, sort_keys=True))
    if not isinstance(md, dict):
        md = answer["_metadata"] = {}
    md.update({
        "payload_id": payload_id,
        "processed_at": package.get("processed_at"),
        "is_encrypted": True,
        "encryption_algorithm": package.get("algorithm"),
    })
    return answer


def post(http, body, headers):
    say("X-Payload-ID: %s" % headers["X-Payload-ID"])
    return http.call("POST", "/v1/chat/secure_completion", body, headers)


def run(opts):
    http = Http(opts.url, opts.ca_file, opts.timeout, opts.allow_http)
    if opts.seal_to:  # a key of the test's choosing (key rotation tests)
        with open(opts.seal_to, "rb") as f:
            server_key = serialization.load_pem_public_key(f.read())
    else:
        server_key = fetch_server_key(http)  # before every request, as Python
    client_key = rsa.generate_private_key(public_exponent=65537,
                                          key_size=opts.bits)
    body, headers, payload_id = build_request(opts, server_key, client_key)
    status, answer_body = post(http, body, headers)
    if status != 200:
        raise http_error(status, answer_body)
    answer = read_answer(answer_body, client_key, opts.variant, payload_id)
    print(json.dumps(answer, indent=2, ensure_ascii=False))
    sys.stdout.flush()
    if opts.send_twice:
        status, again = post(http, body, headers)
        if status == 200:
            say("second post of the same package: HTTP 200 (answered)")
            return 0
        e = http_error(status, again)
        say("second post of the same package: HTTP %d" % status)
        raise e
    return 0


# ---- self-test -----------------------------------------------------------

def self_test(bits):
    failures = []

    def check(name, cond):
        print("%s: self-test: %s" % ("ok" if cond else "FAIL", name))
        if not cond:
            failures.append(name)

    def refused(fn):
        try:
            fn()
        except SecurityError as e:
            return e.detail == SECURITY_MESSAGE
        return False

    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pub = key.public_key()
    text = json.dumps({"model": "m", "messages": [
        {"role": "user", "content": "h\u00e9llo \u2603"}]}).encode("utf-8")
    for v in ("python", "js"):
        p = seal(text, pub, v)
        check("%s: package fields" % v,
              set(p) == {"version", "algorithm", "encrypted_payload",
                         "encrypted_aes_key", "key_algorithm",
                         "payload_algorithm"}
              and p["version"] == "1.0"
              and p["key_algorithm"] == "RSA-OAEP-SHA256"
              and p["payload_algorithm"] == "AES-256-GCM")
        enc = p["encrypted_payload"]
        check("%s: tag field %s" % (v, "present" if v == "python" else "absent"),
              ("tag" in enc) == (v == "python"))
        check("%s: nonce is 12 bytes" % v, len(b64d(enc["nonce"])) == 12)
        ct_len = len(b64d(enc["ciphertext"]))
        check("%s: ciphertext length" % v,
              ct_len == len(text) + (16 if v == "js" else 0))
        check("%s: wrapped key is one RSA block" % v,
              len(b64d(p["encrypted_aes_key"])) == bits // 8)
        check("%s: wrapped key opens with OAEP-SHA256/MGF1-SHA256" % v,
              len(key.decrypt(b64d(p["encrypted_aes_key"]), OAEP)) == 32)
        wire = json.loads(json.dumps(p))
        check("%s: round trip" % v, open_package(wire, key, v) == text)
        other = "js" if v == "python" else "python"
        check("%s package refused by the %s variant" % (v, other),
              refused(lambda: open_package(wire, key, other)))
        bent = json.loads(json.dumps(p))
        ct = bytearray(b64d(bent["encrypted_payload"]["ciphertext"]))
        ct[0] ^= 1
        bent["encrypted_payload"]["ciphertext"] = b64e(bytes(ct))
        check("%s: a flipped ciphertext bit is refused" % v,
              refused(lambda: open_package(bent, key, v)))
        bent = json.loads(json.dumps(p))
        bent["encrypted_payload"]["nonce"] = b64e(os.urandom(12))
        check("%s: another nonce is refused" % v,
              refused(lambda: open_package(bent, key, v)))
        bent = json.loads(json.dumps(p))
        bent["encrypted_payload"]["ciphertext"] = (
            enc["ciphertext"].replace("+", "-").replace("/", "_").rstrip("="))
        if bent["encrypted_payload"]["ciphertext"] != enc["ciphertext"]:
            check("%s: URL-safe or unpadded base64 is refused" % v,
                  refused(lambda: open_package(bent, key, v)))
    # js ignores a "tag" field next to an appended tag
    p = seal(text, pub, "js")
    p["encrypted_payload"]["tag"] = b64e(os.urandom(16))
    check("js: a stray tag field is ignored", open_package(p, key, "js") == text)
    # python requires the tag field
    p = seal(text, pub, "python")
    del p["encrypted_payload"]["tag"]
    check("python: a missing tag field is refused",
          refused(lambda: open_package(p, key, "python")))
    # the wrapped key is to the recipient only
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    p = seal(text, pub, "python")
    check("another private key cannot open it",
          refused(lambda: open_package(p, stranger, "python")))
    # X-Public-Key encoding
    pem = pub.public_bytes(serialization.Encoding.PEM,
                           serialization.PublicFormat.SubjectPublicKeyInfo
                           ).decode("ascii")
    q = urllib.parse.quote(pem, safe="")
    check("X-Public-Key: newline %0A, space %20, no raw '/', '+', '='",
          "%0A" in q and "-----BEGIN%20PUBLIC%20KEY-----" in q
          and not any(c in q for c in "/+=\n "))
    check("X-Public-Key: %2B %2F %3D as the clients send them",
          urllib.parse.quote("a+b/c=", safe="") == "a%2Bb%2Fc%3D")
    check("X-Public-Key decodes back to the PEM",
          urllib.parse.unquote(q) == pem)
    print("self-test: %d failed" % len(failures))
    return 0 if not failures else 1


# ---- main ----------------------------------------------------------------

def say(line):
    print("%s: %s" % (ME, line), file=sys.stderr)
    sys.stderr.flush()


def main(argv):
    ap = argparse.ArgumentParser(
        prog="nomyo_client.py",
        description="NOMYO v1 client (Python or JavaScript client wire "
                    "format), for compatibility tests.  Exit codes: 0 ok, "
                    "1 error, 2 usage, 11 InvalidRequestError (400), "
                    "12 AuthenticationError (401), 13 ForbiddenError (403), "
                    "14 APIError (404 or other status, e.g. 409), "
                    "15 RateLimitError (429), 16 ServerError (500), "
                    "17 ServiceUnavailableError (503), "
                    "18 APIConnectionError, 19 SecurityError.")
    ap.add_argument("--url",
                    help="service base URL (required but for --self-test: "
                         "there is no default server)")
    ap.add_argument("--ca-file", help="CA bundle (PEM) to verify TLS")
    ap.add_argument("--allow-http", action="store_true",
                    help="permit a plain http:// URL (local testing only)")
    ap.add_argument("--model", "-m", help="model ID")
    ap.add_argument("--prompt", help="the user message (default: stdin)")
    ap.add_argument("--tier", help="X-Security-Tier: standard, high or maximum")
    ap.add_argument("--api-key-file",
                    help="file whose first line is the API key")
    ap.add_argument("--variant", choices=("python", "js"), default="python",
                    help="tag placement of the client imitated")
    ap.add_argument("--bits", type=int, choices=(2048, 3072, 4096),
                    default=4096, help="client RSA key size (default 4096)")
    ap.add_argument("--timeout", type=float, default=60.0,
                    help="seconds per HTTP call (default 60)")
    ap.add_argument("--send-twice", action="store_true",
                    help="post the identical package a second time "
                         "(replay); exit code is that of the second post")
    ap.add_argument("--seal-to", metavar="PEM",
                    help="seal to this RSA public key instead of the one "
                         "GET /pki/public_key serves (key rotation tests)")
    ap.add_argument("--self-test", action="store_true",
                    help="seal and open packages locally, both variants")
    opts = ap.parse_args(argv)

    if opts.self_test:
        return self_test(opts.bits)
    if not opts.url:
        ap.error("--url is required (there is no default server)")
    if not opts.model:
        ap.error("--model is required")
    opts.api_key = None
    try:
        if opts.tier is not None and opts.tier not in TIERS:
            raise ClientError("InvalidRequestError",
                              "security tier must be standard, high or "
                              "maximum")
        if opts.api_key_file:
            with open(opts.api_key_file, encoding="utf-8") as f:
                opts.api_key = f.readline().strip()
            if not opts.api_key:
                raise ClientError("InvalidRequestError",
                                  "the API key file is empty")
        if opts.prompt is None:
            opts.prompt = sys.stdin.read().rstrip("\n")
        if not opts.prompt:
            ap.error("the prompt is empty")
        return run(opts)
    except ClientError as e:
        if e.status is not None:
            say("%s (HTTP %d): %s" % (e.cls, e.status, e.detail))
        else:
            say("%s: %s" % (e.cls, e.detail))
        return EXIT[e.cls]
    except OSError as e:
        say("error: %s" % e)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
