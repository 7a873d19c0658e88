#!/usr/bin/python3
"""Test tool for tests/test_attest_tpm.sh: an independent reading of the
formats in docs/ATTESTATION.md, written from that document and not from
veil's C code, and the forgeries the client must reject.

  statement EV OUT            the signed statement, rebuilt from the evidence
                              file (for `openssl dgst -verify`)
  checkquote EV TRUST DIR     files for tpm2_checkquote: ak.pub (TPM2B_PUBLIC),
                              quote.msg, quote.sig, pcrs.bin (the values in
                              selection order), and prints
                              "QUAL PCRLIST" (qualifying data recomputed here)
  swap-quote A B OUT          A with B's tpm_attestation (a quote from
                              another request)
  set-pcr EV INDEX OUT        a PCR value in the metadata changed
  flip EV FIELD OUT           one byte flipped in a base64 field
                              (signature_b64, or tpm.quote_b64 and
                              tpm.signature_b64 inside tpm_attestation)
  swap-sig A B OUT            A with B's answer signature and signed_at
  proxy UPSTREAM PORTFILE AKDIR
                              an HTTP man in the middle: forwards everything
                              to UPSTREAM, but answers the attestation report
                              with a genuine TPM quote by another AK
                              (AKDIR/ak.ctx, ak.pub, ak.name, made with
                              tpm2_createak on the same TPM): everything
                              verifies except credential activation.
  proxy-ekcert UPSTREAM PORTFILE CERT
                              the same man in the middle, but the report is
                              the gateway's own with its EK certificate
                              replaced by CERT (DER): a certificate for the
                              same EK from the same CA that breaks the EK
                              credential profile.
"""
import base64
import copy
import hashlib
import http.server
import json
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request


def load(path):
    with open(path) as f:
        return json.load(f)


def save(obj, path):
    with open(path, "w") as f:
        json.dump(obj, f)


def statement(ev):
    return ("veil-response-signature-v1\n"
            f"payload_id={ev['payload_id']}\n"
            f"security_tier={ev['security_tier']}\n"
            f"request_sha256={hashlib.sha256(ev['request_package'].encode()).hexdigest()}\n"
            f"response_sha256={hashlib.sha256(ev['response_package'].encode()).hexdigest()}\n"
            f"signing_key_sha256={ev['signing_key_sha256']}\n"
            f"signed_at={ev['signed_at']}\n").encode()


def answer_qualifying(ev, enc_key_sha256):
    h = hashlib.sha256()
    h.update(b"veil-answer-quote-v1\0")
    h.update(ev["payload_id"].encode())
    h.update(hashlib.sha256(ev["request_package"].encode()).digest())
    h.update(bytes.fromhex(enc_key_sha256))
    h.update(bytes.fromhex(ev["signing_key_sha256"]))
    return h.digest()


def report_qualifying(nonce, enc_key_sha256, sign_key_sha256):
    h = hashlib.sha256()
    h.update(b"veil-report-quote-v1\0")
    h.update(nonce)
    h.update(bytes.fromhex(enc_key_sha256))
    h.update(bytes.fromhex(sign_key_sha256))
    return h.digest()


def pcr_list(tpm):
    bank, idx = tpm["pcr_banks"].split(":")
    return bank, [int(i) for i in idx.split(",")]


def flip_b64(text):
    raw = bytearray(base64.b64decode(text))
    raw[len(raw) // 2] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def cmd_checkquote(ev_path, trust_path, out_dir):
    ev, trust = load(ev_path), load(trust_path)
    tpm = ev["tpm_attestation"]
    files = {"ak.pub": tpm["aik_pubkey_b64"], "quote.msg": tpm["quote_b64"],
             "quote.sig": tpm["signature_b64"]}
    for name, b64 in files.items():
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(base64.b64decode(b64))
    bank, idx = pcr_list(tpm)
    with open(os.path.join(out_dir, "pcrs.bin"), "wb") as f:
        for i in sorted(idx):
            f.write(bytes.fromhex(tpm["pcr_values"][bank][str(i)]))
    qual = answer_qualifying(ev, trust["encryption_key_sha256"])
    print(qual.hex(), tpm["pcr_banks"])


def forge_ak(ak_dir):
    """The report answered with a quote by another AK of the same TPM."""
    with open(os.path.join(ak_dir, "ak.pub"), "rb") as f:
        ak_pub = f.read()
    with open(os.path.join(ak_dir, "ak.name"), "rb") as f:
        ak_name = f.read()

    def forge(rep):
        qual = report_qualifying(bytes.fromhex(rep["nonce"]),
                                 rep["encryption_key_sha256"],
                                 rep["signing_key_sha256"])
        with tempfile.TemporaryDirectory() as d:
            subprocess.run(
                ["tpm2_quote", "-Q", "-c", os.path.join(ak_dir, "ak.ctx"),
                 "-l", rep["pcr_banks"], "-q", qual.hex(), "-g", "sha256",
                 "-m", d + "/m", "-s", d + "/s", "-o", d + "/p"],
                check=True)
            m, s = open(d + "/m", "rb").read(), open(d + "/s", "rb").read()
        rep["aik_pubkey_b64"] = base64.b64encode(ak_pub).decode()
        rep["aik_name"] = ak_name.hex()
        rep["quote_b64"] = base64.b64encode(m).decode()
        rep["signature_b64"] = base64.b64encode(s).decode()
        rep["qualifying_data"] = qual.hex()
        return rep
    return forge


def forge_ek_cert(cert_path):
    """The report with another EK certificate."""
    with open(cert_path, "rb") as f:
        cert = f.read()

    def forge(rep):
        rep["ek_cert_b64"] = base64.b64encode(cert).decode()
        return rep
    return forge


def cmd_proxy(upstream, port_file, forge_report):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def relay(self, method):
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else None
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
            if method == "GET" and self.path.startswith("/v1/attestation/report") \
                    and status == 200:
                data = json.dumps(forge_report(json.loads(data))).encode()
            self.send_response(status)
            for k, v in headers.items():
                if k.lower() not in ("content-length", "connection",
                                     "transfer-encoding", "date", "server"):
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


def main(argv):
    cmd = argv[1] if len(argv) > 1 else ""
    if cmd == "statement":
        with open(argv[3], "wb") as f:
            f.write(statement(load(argv[2])))
    elif cmd == "checkquote":
        cmd_checkquote(argv[2], argv[3], argv[4])
    elif cmd == "swap-quote":
        a, b = load(argv[2]), load(argv[3])
        a["tpm_attestation"] = copy.deepcopy(b["tpm_attestation"])
        save(a, argv[4])
    elif cmd == "set-pcr":
        ev = load(argv[2])
        tpm = ev["tpm_attestation"]
        bank, _ = pcr_list(tpm)
        old = tpm["pcr_values"][bank][argv[3]]
        tpm["pcr_values"][bank][argv[3]] = ("%02x" % (int(old[:2], 16) ^ 1)) + old[2:]
        save(ev, argv[4])
    elif cmd == "flip":
        ev = load(argv[2])
        field = argv[3]
        if field.startswith("tpm."):
            t = ev["tpm_attestation"]
            t[field[4:]] = flip_b64(t[field[4:]])
        else:
            ev[field] = flip_b64(ev[field])
        save(ev, argv[4])
    elif cmd == "swap-sig":
        a, b = load(argv[2]), load(argv[3])
        a["signature_b64"], a["signed_at"] = b["signature_b64"], b["signed_at"]
        save(a, argv[4])
    elif cmd == "proxy":
        cmd_proxy(argv[2], argv[3], forge_ak(argv[4]))
    elif cmd == "proxy-ekcert":
        cmd_proxy(argv[2], argv[3], forge_ek_cert(argv[4]))
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
