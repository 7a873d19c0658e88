#!/usr/bin/python3
"""Test tool for tests/test_v2_max_tpm.sh and tests/test_v2_x25519.sh:
protocol v2 (docs/PROTOCOL-V2.md) written from the standards (RFC 9180
HPKE base mode with DHKEM(P-256, HKDF-SHA256) or DHKEM(X25519,
HKDF-SHA256), HKDF-SHA256, AES-256-GCM or AES-128-GCM; RFC 9458 Oblivious
HTTP; RFC 9292 known-length binary HTTP) and not from veil's C code.

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
  keys URL                    the gateway's key configurations, one line
                              each ("config KEY_ID KEM PK_LEN KDF/AEAD..."
                              in hex), then "signature ok" when
                              X-Veil-Keys-Signature verifies over the
                              statement of PROTOCOL-V2.md 4.3 under the key
                              of GET /pki/signing_key, whose SHA-256 is the
                              X-Veil-Signing-Key header ("signature BAD"
                              otherwise)
  x25519 URL MODEL TEXT SAVE [tamper|record]
                              as ask (tier "-"), with the gateway's X25519
                              configuration and AES-128-GCM (RFC 9458's
                              example suite); the encapsulated request is
                              written to SAVE; "tamper" changes one byte of
                              enc before sending; "record" only writes it
  post URL FILE               POSTs FILE as message/ohttp-req; prints the
                              outer status and media type, then the body
                              (its length only when encapsulated: an outer
                              200 means the gateway opened the request)
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
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEM, KDF, AEAD = 0x0010, 0x0001, 0x0002
X25519, AES128 = 0x0020, 0x0001
NN, NH, NPK = 12, 32, 65
NPKS = {KEM: 65, X25519: 32}  # Npk = Nenc (RFC 9180 7.1)
NKS = {AEAD: 32, AES128: 16}
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


def kem_suite(kem):
    return b"KEM" + struct.pack(">H", kem)


def hpke_suite(kem, aead):
    return b"HPKE" + struct.pack(">HHH", kem, KDF, aead)


def point(pub):
    return pub.public_bytes(serialization.Encoding.X962,
                            serialization.PublicFormat.UncompressedPoint)


def kem_shared(dh, enc, pkr, kem=KEM):
    prk = labeled_extract(kem_suite(kem), b"", b"eae_prk", dh)
    return labeled_expand(kem_suite(kem), prk, b"shared_secret", enc + pkr, 32)


class Context:
    """An HPKE base-mode context: seal/open with sequence 0 (one message
    each way, as OHTTP uses it) and export."""

    def __init__(self, shared, info, enc, kem=KEM, aead=AEAD):
        s = self.suite = hpke_suite(kem, aead)
        self.nk = NKS[aead]
        ctx = b"\0" + labeled_extract(s, b"", b"psk_id_hash", b"") + \
            labeled_extract(s, b"", b"info_hash", info)
        secret = labeled_extract(s, shared, b"secret", b"")
        self.key = labeled_expand(s, secret, b"key", ctx, self.nk)
        self.nonce = labeled_expand(s, secret, b"base_nonce", ctx, NN)
        self.exporter = labeled_expand(s, secret, b"exp", ctx, NH)
        self.enc = enc

    def export(self, label, n):
        return labeled_expand(self.suite, self.exporter, b"sec", label, n)


def raw(pub):
    return pub.public_bytes(serialization.Encoding.Raw,
                            serialization.PublicFormat.Raw)


def setup_s(pkr, kem=KEM, aead=AEAD):
    if kem == X25519:  # DHKEM(X25519): enc and pkR are the raw 32 bytes
        ske = x25519.X25519PrivateKey.generate()
        enc = raw(ske.public_key())
        dh = ske.exchange(x25519.X25519PublicKey.from_public_bytes(pkr))
        return enc, lambda info: Context(kem_shared(dh, enc, pkr, kem), info,
                                         enc, kem, aead)
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


def configs(body):
    """Every configuration of an application/ohttp-keys body: (key_id,
    kem, pk, [(kdf, aead)...]); a malformed one raises."""
    out = []
    while body:
        n = struct.unpack(">H", body[:2])[0]
        c, body = body[2:2 + n], body[2 + n:]
        if len(c) != n:
            raise ValueError("a configuration runs past the end")
        kem = struct.unpack(">H", c[1:3])[0]
        npk = NPKS.get(kem)
        if npk is None:
            raise ValueError("unknown KEM 0x%04x" % kem)
        m = struct.unpack(">H", c[3 + npk:5 + npk])[0]
        algs = c[5 + npk:5 + npk + m]
        if len(algs) != m or 5 + npk + m != n or m % 4:
            raise ValueError("a malformed configuration")
        out.append((c[0], kem, c[3:3 + npk],
                    [struct.unpack(">HH", algs[i:i + 4]) for i in range(0, m, 4)]))
    return out


def req_info(hdr):
    return b"message/bhttp request\0" + hdr


def encap_request(key_id, pkr, msg, kem=KEM, aead=AEAD):
    hdr = struct.pack(">BHHH", key_id, kem, KDF, aead)
    enc, make = setup_s(pkr, kem, aead)
    ctx = make(req_info(hdr))
    return hdr + enc + AESGCM(ctx.key).encrypt(ctx.nonce, msg, b""), ctx


def decap_request(key_id, skr, body):
    hdr, enc, ct = body[:7], body[7:7 + NPK], body[7 + NPK:]
    if hdr != struct.pack(">BHHH", key_id, KEM, KDF, AEAD):
        raise ValueError("another key or suite")
    ctx = setup_r(skr, enc, req_info(hdr))
    return AESGCM(ctx.key).decrypt(ctx.nonce, ct, b""), ctx


def response_keys(ctx, nonce):
    # RFC 9458 4.4: secret and response_nonce of max(Nn, Nk) bytes
    secret = ctx.export(b"message/bhttp response", max(NN, ctx.nk))
    prk = extract(ctx.enc + nonce, secret)
    return expand(prk, b"key", ctx.nk), expand(prk, b"nonce", NN)


def encap_response(ctx, msg):
    nonce = os.urandom(max(NN, ctx.nk))
    key, iv = response_keys(ctx, nonce)
    return nonce + AESGCM(key).encrypt(iv, msg, b"")


def decap_response(ctx, body):
    n = max(NN, ctx.nk)
    key, iv = response_keys(ctx, body[:n])
    return AESGCM(key).decrypt(iv, body[n:], b"")

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


def cmd_keys(url):
    st, hdrs, keys = fetch(url + WELL_KNOWN)
    if st != 200:
        raise RuntimeError("GET %s: %d" % (WELL_KNOWN, st))
    for key_id, kem, pk, algs in configs(keys):
        print("config %d %04x %d %s" % (key_id, kem, len(pk),
                                       " ".join("%04x/%04x" % a for a in algs)))
    st, _, pem = fetch(url + "/pki/signing_key")
    signer = serialization.load_pem_public_key(pem)
    spki = signer.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)
    text = ("veil-ohttp-keys-v1\nkeys_sha256=%s\nsigned_at=%s\nnot_after=%s\n"
            % (h(keys).hex(), hdrs.get("X-Veil-Keys-Signed-At"),
               hdrs.get("X-Veil-Keys-Expires"))).encode()
    sig = base64.b64decode(hdrs.get("X-Veil-Keys-Signature", ""))
    if len(sig) == 64:  # r || s
        sig = encode_dss_signature(int.from_bytes(sig[:32], "big"),
                                   int.from_bytes(sig[32:], "big"))
    good = hdrs.get("X-Veil-Signing-Key") == "sha256:" + h(spki).hex()
    try:
        signer.verify(sig, text, ec.ECDSA(hashes.SHA256()))
    except Exception:
        good = False
    print("signature %s" % ("ok" if good else "BAD"))


def cmd_x25519(url, model, text, save, mode="send"):
    st, _, keys = fetch(url + WELL_KNOWN)
    if st != 200:
        raise RuntimeError("GET %s: %d" % (WELL_KNOWN, st))
    cf = [c for c in configs(keys) if c[1] == X25519 and (KDF, AES128) in c[3]]
    if not cf:
        raise RuntimeError("no X25519 configuration with AES-128-GCM")
    req = json.dumps({"model": model,
                      "messages": [{"role": "user", "content": text}]}).encode()
    msg = bhttp_request(b"POST", b"/v1/chat/completions",
                        [(b"content-type", b"application/json")], req)
    body, ctx = encap_request(cf[0][0], cf[0][2], msg, X25519, AES128)
    if mode == "tamper":  # one byte of enc
        body = body[:7] + bytes([body[7] ^ 1]) + body[8:]
    with open(save, "wb") as f:
        f.write(body)
    if mode == "record":
        print("recorded for key %d" % cf[0][0])
        return
    st, hdrs, res = fetch(url + WELL_KNOWN, body, "message/ohttp-req")
    print("outer %d %s" % (st, hdrs.get("Content-Type", "")))
    if st != 200:
        print(res.decode(errors="replace"))
        return
    status, rpairs, content = read_response(decap_response(ctx, res))
    print("inner %s" % status)
    for k, v in rpairs:
        print("%s: %s" % (k.decode(), v.decode()))
    print(content.decode(errors="replace"))


def cmd_post(url, path):
    with open(path, "rb") as f:
        body = f.read()
    st, hdrs, res = fetch(url + WELL_KNOWN, body, "message/ohttp-req")
    ctype = hdrs.get("Content-Type", "")
    print("outer %d %s" % (st, ctype))
    print("(%d bytes encapsulated)" % len(res) if ctype == "message/ohttp-res"
          else res.decode(errors="replace"))


def main(argv):
    if len(argv) in (6, 7) and argv[1] == "ask":
        cmd_ask(*argv[2:])
    elif len(argv) == 3 and argv[1] == "keys":
        cmd_keys(argv[2])
    elif len(argv) in (6, 7) and argv[1] == "x25519":
        cmd_x25519(*argv[2:])
    elif len(argv) == 4 and argv[1] == "post":
        cmd_post(*argv[2:])
    elif len(argv) == 6 and argv[1] == "standin":
        cmd_standin(*argv[2:])
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
