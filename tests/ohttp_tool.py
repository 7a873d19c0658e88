#!/usr/bin/python3
"""Test tool for tests/test_v2_max_tpm.sh: protocol v2 (docs/PROTOCOL-V2.md)
written from the standards (RFC 9180 HPKE base mode with DHKEM(P-256,
HKDF-SHA256), HKDF-SHA256 and AES-256-GCM; RFC 9458 Oblivious HTTP; RFC
9292 known-length binary HTTP) and not from veil's C code.

  ask URL TIER MODEL TEXT [SIGNER_PEM]
                              one inner POST /v1/chat/completions to the
                              gateway at URL, as a client; prints the outer
                              status and media type, then the inner status,
                              the inner header fields ("name: value") and
                              the inner content, each on its own line; with
                              the signing key's public PEM and a quote in
                              the answer, then "qualifying data: HEX" as
                              docs/ATTESTATION.md ("Over protocol v2")
                              defines it, rebuilt here from what was sent,
                              and "quoted extraData: HEX", read from the
                              quote's TPMS_ATTEST
  standin UPSTREAM PORTFILE SIGNERDIR MODE
                              a stand-in gateway (a mock: what a real veild
                              never does) holding the gateway's signing key
                              (SIGNERDIR/private_key.pem), as someone who
                              took that key would: it publishes its own KEM
                              key, signed, opens each request, relays it as
                              a new request of its own to the real gateway
                              UPSTREAM, and answers with what came back,
                              signed again for the client's request.  The
                              TPM quote inside is genuine, but for the
                              relayed request.  _metadata.payload_id is set
                              to the client's request identifier (so that
                              only the quote can tell) unless MODE is
                              "keep-id"; "relay" changes nothing else;
                              "strip" removes the quote; "flip" changes one
                              byte of it.
"""
import base64
import hashlib
import hmac
import http.server
import json
import os
import struct
import sys
import time
import urllib.error
import urllib.request

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEM, KDF, AEAD = 0x0010, 0x0001, 0x0002
NK, NN, NH, NPK = 32, 12, 32, 65
WELL_KNOWN = "/.well-known/ohttp-gateway"

# ---- HKDF and HPKE (RFC 5869, RFC 9180) ------------------------------------


def extract(salt, ikm):
    return hmac.new(salt or b"\0" * NH, ikm, hashlib.sha256).digest()


def expand(prk, info, n):
    out, t, i = b"", b"", 1
    while len(out) < n:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
        out += t
        i += 1
    return out[:n]


def labeled_extract(suite, salt, label, ikm):
    return extract(salt, b"HPKE-v1" + suite + label + ikm)


def labeled_expand(suite, prk, label, info, n):
    return expand(prk, struct.pack(">H", n) + b"HPKE-v1" + suite + label + info, n)


KEM_SUITE = b"KEM" + struct.pack(">H", KEM)
HPKE_SUITE = b"HPKE" + struct.pack(">HHH", KEM, KDF, AEAD)


def point(pub):
    return pub.public_bytes(serialization.Encoding.X962,
                            serialization.PublicFormat.UncompressedPoint)


def kem_shared(dh, enc, pkr):
    prk = labeled_extract(KEM_SUITE, b"", b"eae_prk", dh)
    return labeled_expand(KEM_SUITE, prk, b"shared_secret", enc + pkr, 32)


class Context:
    """An HPKE base-mode context: seal/open with sequence 0 (one message
    each way, as OHTTP uses it) and export."""

    def __init__(self, shared, info, enc):
        s = HPKE_SUITE
        ctx = b"\0" + labeled_extract(s, b"", b"psk_id_hash", b"") + \
            labeled_extract(s, b"", b"info_hash", info)
        secret = labeled_extract(s, shared, b"secret", b"")
        self.key = labeled_expand(s, secret, b"key", ctx, NK)
        self.nonce = labeled_expand(s, secret, b"base_nonce", ctx, NN)
        self.exporter = labeled_expand(s, secret, b"exp", ctx, NH)
        self.enc = enc

    def export(self, label, n):
        return labeled_expand(HPKE_SUITE, self.exporter, b"sec", label, n)


def setup_s(pkr):
    ske = ec.generate_private_key(ec.SECP256R1())
    enc = point(ske.public_key())
    peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), pkr)
    return enc, lambda info: Context(kem_shared(ske.exchange(ec.ECDH(), peer),
                                                enc, pkr), info, enc)


def setup_r(skr, enc, info):
    pke = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), enc)
    return Context(kem_shared(skr.exchange(ec.ECDH(), pke), enc,
                              point(skr.public_key())), info, enc)

# ---- Oblivious HTTP (RFC 9458) ---------------------------------------------


def key_config(key_id, pkr):
    return struct.pack(">BH", key_id, KEM) + pkr + struct.pack(">HHH", 4, KDF, AEAD)


def first_config(body):
    """The first P-256 configuration of an application/ohttp-keys body:
    (key_id, pkR)."""
    while body:
        n = struct.unpack(">H", body[:2])[0]
        c, body = body[2:2 + n], body[2 + n:]
        if struct.unpack(">H", c[1:3])[0] == KEM:
            return c[0], c[3:3 + NPK]
    raise ValueError("no P-256 key configuration")


def req_info(hdr):
    return b"message/bhttp request\0" + hdr


def encap_request(key_id, pkr, msg):
    hdr = struct.pack(">BHHH", key_id, KEM, KDF, AEAD)
    enc, make = setup_s(pkr)
    ctx = make(req_info(hdr))
    return hdr + enc + AESGCM(ctx.key).encrypt(ctx.nonce, msg, b""), ctx


def decap_request(key_id, skr, body):
    hdr, enc, ct = body[:7], body[7:7 + NPK], body[7 + NPK:]
    if hdr != struct.pack(">BHHH", key_id, KEM, KDF, AEAD):
        raise ValueError("another key or suite")
    ctx = setup_r(skr, enc, req_info(hdr))
    return AESGCM(ctx.key).decrypt(ctx.nonce, ct, b""), ctx


def response_keys(ctx, nonce):
    secret = ctx.export(b"message/bhttp response", NK)
    prk = extract(ctx.enc + nonce, secret)
    return expand(prk, b"key", NK), expand(prk, b"nonce", NN)


def encap_response(ctx, msg):
    nonce = os.urandom(NK)
    key, iv = response_keys(ctx, nonce)
    return nonce + AESGCM(key).encrypt(iv, msg, b"")


def decap_response(ctx, body):
    key, iv = response_keys(ctx, body[:NK])
    return AESGCM(key).decrypt(iv, body[NK:], b"")

# ---- known-length binary HTTP (RFC 9292) -----------------------------------


def varint(n):
    if n < 64:
        return bytes([n])
    if n < 16384:
        return struct.pack(">H", n | 0x4000)
    return struct.pack(">I", n | 0x80000000)


def read_varint(b, i):
    if i >= len(b):  # truncated: the rest is empty (RFC 9292 3.8)
        return 0, i
    n = 1 << (b[i] >> 6)
    v = b[i] & 0x3F
    for k in range(1, n):
        v = (v << 8) | b[i + k]
    return v, i + n


def lv(b):
    return varint(len(b)) + b


def read_lv(b, i):
    n, i = read_varint(b, i)
    return b[i:i + n], i + n


def fields(pairs):
    return lv(b"".join(lv(k) + lv(v) for k, v in pairs))


def read_fields(b, i):
    sec, i = read_lv(b, i)
    out, j = [], 0
    while j < len(sec):
        k, j = read_lv(sec, j)
        v, j = read_lv(sec, j)
        out.append((k, v))
    return out, i


def bhttp_request(method, path, pairs, content):
    return varint(0) + lv(method) + lv(b"https") + lv(b"") + lv(path) + \
        fields(pairs) + lv(content) + varint(0)


def read_request(b):
    i = read_varint(b, 0)[1]
    method, i = read_lv(b, i)
    i = read_lv(b, read_lv(b, i)[1])[1]  # scheme, authority
    path, i = read_lv(b, i)
    pairs, i = read_fields(b, i)
    content, i = read_lv(b, i)
    return method, path, pairs, content


def bhttp_response(status, pairs, content):
    return varint(1) + varint(status) + fields(pairs) + lv(content) + varint(0)


def read_response(b):
    i = read_varint(b, 0)[1]
    while True:
        status, i = read_varint(b, i)
        pairs, i = read_fields(b, i)
        if status >= 200:
            break
    content, i = read_lv(b, i)
    return status, pairs, content

# ---- as a client -----------------------------------------------------------


def fetch(url, data=None, ctype=None):
    req = urllib.request.Request(url, data=data)
    if ctype:
        req.add_header("Content-Type", ctype)
    try:
        r = urllib.request.urlopen(req, timeout=120)
        return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def ask(url, method, path, pairs, content, sent=None):
    """One inner request to the gateway at url: (outer status, outer media
    type, inner status, inner fields, inner content); sent (a dict), when
    given, gets the request's enc and the gateway's pkR."""
    st, _, keys = fetch(url + WELL_KNOWN)
    if st != 200:
        raise RuntimeError("GET %s: %d" % (WELL_KNOWN, st))
    key_id, pkr = first_config(keys)
    body, ctx = encap_request(key_id, pkr,
                              bhttp_request(method, path, pairs, content))
    if sent is not None:
        sent.update(enc=ctx.enc, pkr=pkr)
    st, hdrs, res = fetch(url + WELL_KNOWN, body, "message/ohttp-req")
    ctype = hdrs.get("Content-Type", "")
    if st != 200:
        return st, ctype, None, [], res
    status, rpairs, rcontent = read_response(decap_response(ctx, res))
    return st, ctype, status, rpairs, rcontent


def cmd_ask(url, tier, model, text, signer_pem=None):
    req = json.dumps({"model": model,
                      "messages": [{"role": "user", "content": text}]}).encode()
    pairs = [(b"content-type", b"application/json")]
    if tier != "-":
        pairs.append((b"x-security-tier", tier.encode()))
    sent = {}
    st, ctype, status, rpairs, content = ask(url, b"POST", b"/v1/chat/completions",
                                             pairs, req, sent)
    print("outer %d %s" % (st, ctype))
    print("inner %s" % status)
    for k, v in rpairs:
        print("%s: %s" % (k.decode(), v.decode()))
    print(content.decode(errors="replace"))
    if signer_pem and status == 200:
        q = json.loads(content)["_metadata"]["tpm_attestation"]
        with open(signer_pem, "rb") as f:
            spki = serialization.load_pem_public_key(f.read()).public_bytes(
                serialization.Encoding.DER,
                serialization.PublicFormat.SubjectPublicKeyInfo)
        rid = h(sent["enc"]).hex().encode()
        qual = h(b"veil-answer-quote-v2\0" + rid + h(req) + h(sent["pkr"]) +
                 h(spki) + h(q["backend_statement"].encode()))
        print("qualifying data: %s" % qual.hex())
        # what the TPM signed: TPMS_ATTEST's extraData (after magic, type
        # and the qualifiedSigner TPM2B_NAME)
        att = base64.b64decode(q["quote_b64"])
        i = 8 + struct.unpack(">H", att[6:8])[0]
        n = struct.unpack(">H", att[i:i + 2])[0]
        print("quoted extraData: %s" % att[i + 2:i + 2 + n].hex())

# ---- the stand-in gateway --------------------------------------------------


def h(b):
    return hashlib.sha256(b).digest()


def cmd_standin(upstream, port_file, signer_dir, mode):
    with open(os.path.join(signer_dir, "private_key.pem"), "rb") as f:
        signer = serialization.load_pem_private_key(f.read(), None)
    spki = signer.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    signer_fp = "sha256:" + h(spki).hex()
    kem = ec.generate_private_key(ec.SECP256R1())
    conf = key_config(1, point(kem.public_key()))
    keys = struct.pack(">H", len(conf)) + conf

    def sign(text):
        return base64.b64encode(signer.sign(text, ec.ECDSA(hashes.SHA256()))).decode()

    def answer(body):
        """The client's request opened, relayed, and the answer forged as
        MODE says: (status, media type, body)."""
        msg, cctx = decap_request(1, kem, body)
        method, path, pairs, content = read_request(msg)
        tier = dict(pairs).get(b"x-security-tier", b"standard").decode()
        _, _, status, rpairs, rcontent = ask(upstream, method, path, pairs, content)
        rid = h(cctx.enc).hex()
        if status == 200:
            j = json.loads(rcontent)
            md = j.get("_metadata", {})
            if mode != "keep-id" and "payload_id" in md:
                md["payload_id"] = rid
            q = md.get("tpm_attestation")
            if mode == "strip":
                md.pop("tpm_attestation", None)
            elif mode == "flip" and q:
                raw = bytearray(base64.b64decode(q["quote_b64"]))
                raw[len(raw) // 2] ^= 1
                q["quote_b64"] = base64.b64encode(bytes(raw)).decode()
            rcontent = json.dumps(j).encode()
            now = int(time.time())
            st = ("veil-response-signature-v1\npayload_id=%s\nsecurity_tier=%s\n"
                  "request_sha256=%s\nresponse_sha256=%s\nsigning_key_sha256=%s\n"
                  "signed_at=%d\n" % (rid, tier, h(content).hex(), h(rcontent).hex(),
                                      h(spki).hex(), now)).encode()
            rpairs = [(b"content-type", b"application/json"),
                      (b"x-veil-signature", sign(st).encode()),
                      (b"x-veil-signed-at", str(now).encode()),
                      (b"x-veil-signing-key", signer_fp.encode())]
        out = encap_response(cctx, bhttp_response(status, rpairs, rcontent))
        return 200, "message/ohttp-res", out

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def send(self, status, ctype, data, extra=()):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            for k, v in extra:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/pki/signing_key":
                pem = signer.public_key().public_bytes(
                    serialization.Encoding.PEM,
                    serialization.PublicFormat.SubjectPublicKeyInfo)
                return self.send(200, "text/plain", pem)
            if self.path != WELL_KNOWN:
                return self.send(404, "application/json", b'{"detail":"no"}')
            now = int(time.time())
            st = ("veil-ohttp-keys-v1\nkeys_sha256=%s\nsigned_at=%d\nnot_after=%d\n"
                  % (h(keys).hex(), now, now + 600)).encode()
            self.send(200, "application/ohttp-keys", keys,
                      [("X-Veil-Keys-Signature", sign(st)),
                       ("X-Veil-Keys-Signed-At", str(now)),
                       ("X-Veil-Keys-Expires", str(now + 600)),
                       ("X-Veil-Signing-Key", signer_fp),
                       ("Cache-Control", "no-store")])

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n)
            try:
                self.send(*answer(body))
            except Exception as e:  # a stand-in: say what went wrong
                sys.stderr.write("stand-in: %r\n" % (e,))
                self.send(500, "application/json", b'{"detail":"stand-in failed"}')

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(srv.server_address[1]))
    os.rename(port_file + ".tmp", port_file)
    srv.serve_forever()


def main(argv):
    if len(argv) in (6, 7) and argv[1] == "ask":
        cmd_ask(*argv[2:])
    elif len(argv) == 6 and argv[1] == "standin":
        cmd_standin(*argv[2:])
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
