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
  set-backend EV KEY=VALUE... OUT
                              lines of the quote's backend statement changed
                              (e.g. upstream=https://10.1.2.3/v1: a remote
                              backend claimed local, or a statement that is
                              not the one the TPM quoted)
  proxy UPSTREAM PORTFILE AKDIR
                              an HTTP man in the middle: forwards everything
                              to UPSTREAM, but answers the attestation report
                              with a genuine TPM quote by another AK
                              (AKDIR/ak.ctx, ak.pub, ak.name, made with
                              tpm2_createak on the same TPM): everything
                              verifies except credential activation.
  proxy-tamper UPSTREAM PORTFILE
                              the same man in the middle, but every 200
                              answer of the completion route has one
                              character of its AES-GCM ciphertext changed
                              (the signature headers are passed unchanged)
  handover REPORT TRUST        checks a report's ak_handover (docs/ATTESTATION.md)
                              from the TPM 2.0 structures alone: the previous
                              AK is the one TRUST enrolled, it signed (ECDSA
                              P-256, SHA-256) a TPM2_Certify whose certified
                              name is the report's AK and whose extraData is
                              SHA-256("veil-ak-handover-v1" 0x00 || that name);
                              prints "handover ok" or the first failure
  proxy-handover UPSTREAM PORTFILE MODE [ARG]
                              the same man in the middle, but the report's
                              AK hand-over is forged (MODE): "none" drops it;
                              "other-signer AKDIR" replaces the certification
                              with a TPM2_Certify by another AK of the same TPM
                              (AKDIR as for proxy); "other-new AKDIR" keeps the
                              genuine hand-over but answers with a quote by
                              that other AK (a hand-over for a different new
                              AK); "replay REPORT" puts in the hand-over of an
                              earlier REPORT (an older rotation)
  eventlog OUT GOLDEN EVENT...
                              a synthetic TCG event log (crypto-agile binary,
                              SHA-1 and SHA-256 digests, as the TCG PC Client
                              Platform Firmware Profile lays it out) of the
                              EVENTs ("PCR:EV_TYPE:DATA", digests over DATA)
                              after a StartupLocality event of locality 0, to
                              OUT; the golden file with those events as
                              reference events to GOLDEN; and prints one
                              "PCR:sha256=HEX" line per event, for
                              tpm2_pcrextend
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
import json
import os
import subprocess
import sys
import tempfile

import forge_relay


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
    h.update(b"veil-answer-quote-v2\0")
    h.update(ev["payload_id"].encode())
    h.update(hashlib.sha256(ev["request_package"].encode()).digest())
    h.update(bytes.fromhex(enc_key_sha256))
    h.update(bytes.fromhex(ev["signing_key_sha256"]))
    # the backend statement, as the answer carries it (its exact bytes)
    h.update(hashlib.sha256(
        ev["tpm_attestation"]["backend_statement"].encode()).digest())
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


def forge_handover(mode, arg):
    """The report with its ak_handover forged (see proxy-handover)."""
    if mode == "other-new":
        return forge_ak(arg)

    def forge(rep):
        if mode == "none":
            rep["ak_handover"] = None
        elif mode == "replay":
            rep["ak_handover"] = load(arg)["ak_handover"]
        elif mode == "other-signer":
            with tempfile.TemporaryDirectory() as d:
                ak = os.path.join(arg, "ak.ctx")
                subprocess.run(["tpm2_certify", "-Q", "-c", ak, "-C", ak,
                                "-g", "sha256", "-o", d + "/a", "-s", d + "/s"],
                               check=True)
                a, s = open(d + "/a", "rb").read(), open(d + "/s", "rb").read()
            rep["ak_handover"]["attest_b64"] = base64.b64encode(a).decode()
            rep["ak_handover"]["signature_b64"] = base64.b64encode(s).decode()
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


def tpm2b(buf, off):
    n = int.from_bytes(buf[off:off + 2], "big")
    return buf[off + 2:off + 2 + n], off + 2 + n


def ecc_point_of_public(pub):
    """(x, y) of a marshaled TPM2B_PUBLIC of an ECC signing key."""
    area, _ = tpm2b(pub, 0)
    off = 2 + 2 + 4  # type, nameAlg, objectAttributes
    _, off = tpm2b(area, off)  # authPolicy
    off += 2 + 2 + 2 + 2 + 2  # symmetric NULL, scheme + hash, curve, kdf NULL
    x, off = tpm2b(area, off)
    y, off = tpm2b(area, off)
    return x, y


def cmd_handover(report_path, trust_path):
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
    rep, trust = load(report_path), load(trust_path)
    h = rep.get("ak_handover")
    if not h:
        return "no ak_handover in the report"
    if h["previous_aik_name"] != trust["aik_name"]:
        return "the previous AK is not the enrolled one"
    prev_pub = base64.b64decode(h["previous_aik_pubkey_b64"])
    area, _ = tpm2b(prev_pub, 0)
    if (b"\x00\x0b" + hashlib.sha256(area).digest()).hex() != trust["aik_name"]:
        return "previous_aik_pubkey_b64 is not the enrolled AK's public area"
    attest = base64.b64decode(h["attest_b64"])
    if attest[:4] != bytes.fromhex("ff544347") or attest[4:6] != bytes.fromhex("8017"):
        return "attest_b64 is not a TPMS_ATTEST of a certification"
    _, off = tpm2b(attest, 6)           # qualifiedSigner
    extra, off = tpm2b(attest, off)     # extraData
    off += 8 + 4 + 4 + 1 + 8            # clockInfo, firmwareVersion
    name, off = tpm2b(attest, off)      # certify.name
    new_name = bytes.fromhex(rep["aik_name"])
    if name != new_name:
        return "the certified name is not the report's AK"
    if extra != hashlib.sha256(b"veil-ak-handover-v1\0" + new_name).digest():
        return "extraData is not the hand-over's qualifying data"
    sig = base64.b64decode(h["signature_b64"])
    if sig[:2] != b"\x00\x18" or sig[2:4] != b"\x00\x0b":
        return "the signature is not ECDSA with SHA-256"
    r, off = tpm2b(sig, 4)
    s, _ = tpm2b(sig, off)
    x, y = ecc_point_of_public(prev_pub)
    key = ec.EllipticCurvePublicNumbers(int.from_bytes(x, "big"), int.from_bytes(y, "big"),
                                        ec.SECP256R1()).public_key()
    try:
        key.verify(encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big")),
                   attest, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return "the signature does not verify under the previous AK"
    return None


EVENT_TYPES = {"EV_NO_ACTION": 3, "EV_SEPARATOR": 4, "EV_S_CRTM_VERSION": 8,
               "EV_IPL": 0xd, "EV_EFI_ACTION": 0x80000007}


def cmd_eventlog(out, golden, events):
    le = lambda n, v: v.to_bytes(n, "little")
    algs = [(0x0004, 20, hashlib.sha1), (0x000b, 32, hashlib.sha256)]
    spec = (b"Spec ID Event03\0" + le(4, 0) + bytes([0, 2, 0, 2]) + le(4, len(algs))
            + b"".join(le(2, a) + le(2, n) for a, n, _ in algs) + bytes([0]))
    log = le(4, 0) + le(4, 3) + bytes(20) + le(4, len(spec)) + spec

    def event2(pcr, etype, data, digests=True):
        d = b"".join(le(2, a) + (h(data).digest() if digests else bytes(n))
                     for a, n, h in algs)
        return le(4, pcr) + le(4, etype) + le(4, len(algs)) + d + le(4, len(data)) + data
    log += event2(0, 3, b"StartupLocality\0" + bytes([0]), digests=False)
    ref = []
    for ev in events:
        pcr, etype, data = ev.split(":", 2)
        data = data.encode()
        log += event2(int(pcr), EVENT_TYPES[etype], data)
        ref.append({"pcr": int(pcr), "type": etype,
                    "sha256": hashlib.sha256(data).hexdigest()})
        print(f"{pcr}:sha256={hashlib.sha256(data).hexdigest()}")
    with open(out, "wb") as f:
        f.write(log)
    save({"events": ref}, golden)


def tamper_ciphertext(body):
    """One base64 character of encrypted_payload.ciphertext changed."""
    pkg = json.loads(body)
    ct = pkg["encrypted_payload"]["ciphertext"]
    i = len(ct) // 2
    pkg["encrypted_payload"]["ciphertext"] = ct[:i] + ("A" if ct[i] != "A" else "B") + ct[i + 1:]
    return json.dumps(pkg).encode()


def cmd_proxy(upstream, port_file, forge_report, forge_answer=None):
    def answer(method, path, forward):
        status, headers, data = forward()
        if method == "GET" and path.startswith("/v1/attestation/report") \
                and status == 200:
            data = json.dumps(forge_report(json.loads(data))).encode()
        if forge_answer and method == "POST" and status == 200 \
                and path.startswith("/v1/chat/secure_completion"):
            data = forge_answer(data)
        return status, headers, data

    forge_relay.serve(upstream, port_file, answer)


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
    elif cmd == "set-backend":
        ev = load(argv[2])
        t = ev["tpm_attestation"]
        lines = t["backend_statement"].split("\n")
        for kv in argv[3:-1]:
            k = kv.split("=", 1)[0]
            lines = [kv if ln.startswith(k + "=") else ln for ln in lines]
        t["backend_statement"] = "\n".join(lines)
        save(ev, argv[-1])
    elif cmd == "proxy":
        cmd_proxy(argv[2], argv[3], forge_ak(argv[4]))
    elif cmd == "handover":
        why = cmd_handover(argv[2], argv[3])
        print("handover ok" if why is None else "handover refused: " + why)
        return 0 if why is None else 1
    elif cmd == "proxy-tamper":
        cmd_proxy(argv[2], argv[3], lambda rep: rep, tamper_ciphertext)
    elif cmd == "proxy-handover":
        cmd_proxy(argv[2], argv[3],
                  forge_handover(argv[4], argv[5] if len(argv) > 5 else None))
    elif cmd == "eventlog":
        cmd_eventlog(argv[2], argv[3], argv[4:])
    elif cmd == "proxy-ekcert":
        cmd_proxy(argv[2], argv[3], forge_ek_cert(argv[4]))
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
