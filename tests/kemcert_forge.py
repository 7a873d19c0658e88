#!/usr/bin/python3
"""A STAND-IN for a tampering gateway or relay, for tests/test_v2_tpm.sh:
relays every request to a real veild but changes the answers of
GET /v2/keys/certify (docs/PROTOCOL-V2.md 4.4), written from that document
and not from veil's C code.

  kemcert_forge.py UPSTREAM PORT_FILE MODE

MODE:
  sig     one byte of the AK's signature flipped
  attrs   the public area's objectAttributes with `restricted` set (the
          certified name no longer matches it)
  keyid   the certification of the key ID plus one announced
  none    404, as a gateway without TPM KEM keys answers
  keysig  one byte of X-Veil-Keys-Signature flipped on
          GET /.well-known/ohttp-gateway (the certifications untouched)
  pass    nothing changed (the relay itself)
It writes its port to PORT_FILE once it listens, and counts the POSTs it
relays in PORT_FILE.posts (what reached the gateway).
"""
import base64
import http.server
import json
import os
import struct
import sys
import urllib.error
import urllib.request


def flip_b64(text, at=None):
    raw = bytearray(base64.b64decode(text))
    i = len(raw) // 2 if at is None else at
    raw[i] ^= 1
    return base64.b64encode(bytes(raw)).decode()


def set_restricted(public_b64):
    # TPM2B_PUBLIC: size (2), type (2), nameAlg (2), objectAttributes (4)
    raw = bytearray(base64.b64decode(public_b64))
    attrs = struct.unpack(">I", raw[6:10])[0] | 0x00010000
    raw[6:10] = struct.pack(">I", attrs)
    return base64.b64encode(bytes(raw)).decode()


def forge(mode, cert):
    if mode == "sig":
        cert["signature_b64"] = flip_b64(cert["signature_b64"])
    elif mode == "attrs":
        cert["public_b64"] = set_restricted(cert["public_b64"])
    elif mode == "keyid":
        cert["key_id"] = (cert["key_id"] + 1) % 256
    return cert


def main(argv):
    upstream, port_file, mode = argv[1], argv[2], argv[3]
    posts = [0]

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def relay(self, method):
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else None
            if method == "POST":
                posts[0] += 1
                with open(port_file + ".posts", "w") as f:
                    f.write(str(posts[0]))
            certify = method == "GET" and self.path.startswith("/v2/keys/certify")
            keys = method == "GET" and self.path.startswith("/.well-known/")
            if certify and mode == "none":
                status, headers, data = 404, {}, b'{"error":"stand-in: none"}'
            else:
                req = urllib.request.Request(upstream + self.path, data=body,
                                             method=method)
                for k, v in self.headers.items():
                    if k.lower() not in ("host", "content-length", "connection"):
                        req.add_header(k, v)
                try:
                    r = urllib.request.urlopen(req, timeout=60)
                    status, headers, data = r.status, r.headers, r.read()
                except urllib.error.HTTPError as e:
                    status, headers, data = e.code, e.headers, e.read()
                if certify and status == 200:
                    data = json.dumps(forge(mode, json.loads(data))).encode()
            self.send_response(status)
            for k, v in headers.items():
                if k.lower() not in ("content-length", "connection",
                                     "transfer-encoding", "date", "server"):
                    if (mode == "keysig" and keys
                            and k.lower() == "x-veil-keys-signature"):
                        v = flip_b64(v)
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self.relay("GET")

        def do_POST(self):
            self.relay("POST")

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(srv.server_address[1]))
    os.rename(port_file + ".tmp", port_file)
    srv.serve_forever()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
