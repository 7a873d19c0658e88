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
import json
import struct
import sys

import forge_relay


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

    def answer(method, path, forward):
        if method == "POST":
            posts[0] += 1
            with open(port_file + ".posts", "w") as f:
                f.write(str(posts[0]))
        certify = method == "GET" and path.startswith("/v2/keys/certify")
        if certify and mode == "none":
            return 404, {}, b'{"error":"stand-in: none"}'
        status, headers, data = forward()
        if certify and status == 200:
            data = json.dumps(forge(mode, json.loads(data))).encode()
        if mode == "keysig" and method == "GET" and path.startswith(
                "/.well-known/"):
            headers = {k: flip_b64(v) if k.lower() == "x-veil-keys-signature"
                       else v for k, v in headers.items()}
        return status, headers, data

    forge_relay.serve(upstream, port_file, answer)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
