// The thin Oblivious HTTP framing (RFC 9458 sections 3, 4.1 to 4.4) over
// third-party HPKE (@hpke/core, @hpke/dhkem-x25519: RFC 9180) and Binary
// HTTP (bhttp-js: RFC 9292), for tests/test_interop_ohttp.sh.  Written
// from the RFCs' text, not from veil's C code nor tests/ohttp_tool.py:
// veil's protocol v2 (docs/PROTOCOL-V2.md) is checked against code that
// its engineers did not write.  Also an indeterminate-length and a padded
// Binary HTTP encoder (RFC 9292 sections 3.2 and 3.8), which bhttp-js
// does not offer; bhttp-js's decoder checks what it makes.
import { createHash, hkdfSync, webcrypto } from "node:crypto";

// @hpke/core needs the Web Crypto API as a global (Node 18 lacks it).
if (globalThis.crypto === undefined) globalThis.crypto = webcrypto;

const hpke = await import("@hpke/core");
const { DhkemX25519HkdfSha256 } = await import("@hpke/dhkem-x25519");
export const { BHttpEncoder, BHttpDecoder } = await import("bhttp-js");

export const KEM_P256 = 0x0010;
export const KEM_X25519 = 0x0020;
export const KDF_SHA256 = 0x0001;
export const AEAD_AES128GCM = 0x0001;
export const AEAD_AES256GCM = 0x0002;
export const MEDIA_KEYS = "application/ohttp-keys";
export const MEDIA_REQ = "message/ohttp-req";
export const MEDIA_RES = "message/ohttp-res";
export const LABEL_REQ = "message/bhttp request";
export const LABEL_RES = "message/bhttp response";
export const PROBLEM_KEY = "https://iana.org/assignments/http-problem-types#ohttp-key";

const te = new TextEncoder();

export function concat(...parts) {
  const n = parts.reduce((a, p) => a + p.length, 0);
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function u16(v) {
  return Uint8Array.of((v >> 8) & 0xff, v & 0xff);
}

export function hex(b) {
  return Buffer.from(b).toString("hex");
}

// The KEM of an ID (Npk, Nenc from RFC 9180 section 7.1), or null.
function kemOf(id) {
  if (id === KEM_P256) return { kem: new hpke.DhkemP256HkdfSha256(), npk: 65 };
  if (id === KEM_X25519) return { kem: new DhkemX25519HkdfSha256(), npk: 32 };
  return null;
}

// The AEAD of an ID with Nk and Nn (RFC 9180 section 7.3), or null.
function aeadOf(id) {
  if (id === AEAD_AES128GCM) return { aead: new hpke.Aes128Gcm(), nk: 16, nn: 12 };
  if (id === AEAD_AES256GCM) return { aead: new hpke.Aes256Gcm(), nk: 32, nn: 12 };
  return null;
}

export function suite(kemId, kdfId, aeadId) {
  const k = kemOf(kemId), a = aeadOf(aeadId);
  if (!k || !a || kdfId !== KDF_SHA256) throw new Error(`unsupported suite ${kemId}/${kdfId}/${aeadId}`);
  return {
    hpke: new hpke.CipherSuite({ kem: k.kem, kdf: new hpke.HkdfSha256(), aead: a.aead }),
    nk: a.nk,
    nn: a.nn,
  };
}

// RFC 9458 section 3.1: one key configuration.
export function encodeKeyConfig(keyId, kemId, pk, algs) {
  const sym = concat(...algs.map(([kdf, aead]) => concat(u16(kdf), u16(aead))));
  return concat(Uint8Array.of(keyId), u16(kemId), pk, u16(sym.length), sym);
}

// Section 3.2: application/ohttp-keys, each configuration after its
// length.
export function encodeKeys(configs) {
  return concat(...configs.map((c) => concat(u16(c.length), c)));
}

// Parses application/ohttp-keys: [{keyId, kemId, pk, algs: [[kdf, aead]]}]
// with `known` false for a KEM this code does not know (skipped by its
// length, as section 3.2 lets a client do).  Throws on a malformed body.
export function parseKeys(body) {
  const out = [];
  let p = 0;
  while (p < body.length) {
    if (p + 2 > body.length) throw new Error("truncated key configuration length");
    const len = (body[p] << 8) | body[p + 1];
    p += 2;
    if (len === 0 || p + len > body.length) throw new Error("bad key configuration length");
    const c = body.subarray(p, p + len);
    p += len;
    const keyId = c[0], kemId = (c[1] << 8) | c[2];
    const k = kemOf(kemId);
    if (!k) {
      out.push({ keyId, kemId, known: false });
      continue;
    }
    let q = 3 + k.npk;
    if (q + 2 > c.length) throw new Error("truncated key configuration");
    const pk = c.subarray(3, q);
    const symLen = (c[q] << 8) | c[q + 1];
    q += 2;
    if (symLen < 4 || symLen % 4 !== 0 || q + symLen !== c.length)
      throw new Error("bad symmetric algorithms length");
    const algs = [];
    for (; q < c.length; q += 4) algs.push([(c[q] << 8) | c[q + 1], (c[q + 2] << 8) | c[q + 3]]);
    out.push({ keyId, kemId, pk, algs, known: true });
  }
  return out;
}

// Section 4.3: hdr = key_id || kem_id || kdf_id || aead_id;
// info = "message/bhttp request" 0x00 hdr.
export function requestHeader(keyId, kemId, kdfId, aeadId) {
  return concat(Uint8Array.of(keyId), u16(kemId), u16(kdfId), u16(aeadId));
}

function requestInfo(hdr) {
  return concat(te.encode(LABEL_REQ), Uint8Array.of(0), hdr);
}

// Encapsulates `request` (bytes) to configuration `cfg` with the suite
// kdfId/aeadId: {body: hdr || enc || ct, ctx} (ctx opens the answer).
export async function encapRequest(cfg, kdfId, aeadId, request) {
  const s = suite(cfg.kemId, kdfId, aeadId);
  const hdr = requestHeader(cfg.keyId, cfg.kemId, kdfId, aeadId);
  const recipientPublicKey = await s.hpke.kem.deserializePublicKey(cfg.pk);
  const sender = await s.hpke.createSenderContext({ recipientPublicKey, info: requestInfo(hdr) });
  const enc = new Uint8Array(sender.enc);
  const ct = new Uint8Array(await sender.seal(request));
  return { body: concat(hdr, enc, ct), ctx: { hpkeCtx: sender, enc, suite: s } };
}

// Section 4.4, both sides: the response key and nonce from the context's
// export, enc and the response nonce.
async function responseKeys(ctx, responseNonce) {
  const { nk, nn, hpke: cs } = ctx.suite;
  const secret = new Uint8Array(await ctx.hpkeCtx.export(te.encode(LABEL_RES), Math.max(nn, nk)));
  // prk = Extract(enc || response_nonce, secret); key and nonce are
  // Expand(prk, "key" | "nonce").  RFC 5869's HKDF from node:crypto:
  // hpke-js's raw Extract takes only a salt of the hash's length, and this
  // salt is longer.  Extract then Expand twice equals HKDF twice.
  const salt = concat(ctx.enc, responseNonce);
  const key = new Uint8Array(hkdfSync("sha256", secret, salt, te.encode("key"), nk));
  const nonce = new Uint8Array(hkdfSync("sha256", secret, salt, te.encode("nonce"), nn));
  return { aead: cs.aead.createEncryptionContext(key), nonce };
}

// Opens an Encapsulated Response (response_nonce || ct) with the
// request's ctx; throws when it does not open.
export async function decapResponse(ctx, body) {
  const n = Math.max(ctx.suite.nn, ctx.suite.nk);
  if (body.length < n + 16) throw new Error("encapsulated response too short");
  const { aead, nonce } = await responseKeys(ctx, body.subarray(0, n));
  return new Uint8Array(await aead.open(nonce, body.subarray(n), new Uint8Array(0)));
}

// ---- the gateway's side (direction B) -------------------------------------

// A fresh recipient key for kemId: {keyId, kemId, pk, privateKey}.
export async function gatewayKey(keyId, kemId) {
  const s = suite(kemId, KDF_SHA256, AEAD_AES256GCM);
  const kp = await s.hpke.kem.generateKeyPair();
  const pk = new Uint8Array(await s.hpke.kem.serializePublicKey(kp.publicKey));
  return { keyId, kemId, pk, privateKey: kp.privateKey };
}

// Opens an Encapsulated Request with one of `keys` ({keyId, kemId,
// privateKey}), offering `algs`: {request, ctx}; throws on any failure
// (the caller answers the uniform 400).
export async function decapRequest(keys, algs, body) {
  if (body.length < 7) throw new Error("short request");
  const keyId = body[0], kemId = (body[1] << 8) | body[2];
  const kdfId = (body[3] << 8) | body[4], aeadId = (body[5] << 8) | body[6];
  const key = keys.find((k) => k.keyId === keyId && k.kemId === kemId);
  if (!key) throw new Error("unknown key");
  if (!algs.some(([k, a]) => k === kdfId && a === aeadId)) throw new Error("suite not offered");
  const s = suite(kemId, kdfId, aeadId);
  const nenc = kemOf(kemId).npk;
  if (body.length < 7 + nenc) throw new Error("short request");
  const hdr = body.subarray(0, 7), enc = body.slice(7, 7 + nenc);
  const recipient = await s.hpke.createRecipientContext({
    recipientKey: key.privateKey,
    enc,
    info: requestInfo(hdr),
  });
  const request = new Uint8Array(await recipient.open(body.subarray(7 + nenc)));
  return { request, ctx: { hpkeCtx: recipient, enc, suite: s } };
}

// Seals `response` (bytes) for the request's ctx: response_nonce || ct.
export async function encapResponse(ctx, response) {
  const responseNonce = new Uint8Array(Math.max(ctx.suite.nn, ctx.suite.nk));
  webcrypto.getRandomValues(responseNonce);
  const { aead, nonce } = await responseKeys(ctx, responseNonce);
  const ct = new Uint8Array(await aead.seal(nonce, response, new Uint8Array(0)));
  return concat(responseNonce, ct);
}

// ---- Binary HTTP beyond bhttp-js's encoder ---------------------------------

// RFC 9000 section 16 variable-length integer.
export function vli(v) {
  if (v < 64) return Uint8Array.of(v);
  if (v < 16384) return Uint8Array.of(0x40 | (v >> 8), v & 0xff);
  if (v < 1073741824) return Uint8Array.of(0x80 | (v >>> 24), (v >> 16) & 0xff, (v >> 8) & 0xff, v & 0xff);
  throw new Error("value too large");
}

function vbytes(s) {
  const b = typeof s === "string" ? te.encode(s) : s;
  return concat(vli(b.length), b);
}

function fieldsIndeterminate(fields) {
  return concat(...fields.map(([n, v]) => concat(vbytes(n), vbytes(v))), vli(0));
}

// RFC 9292 section 3.2, framing 2: an indeterminate-length request, its
// content in `chunks` (bytes each), no trailers, then `pad` zero bytes
// (section 3.8).
export function indeterminateRequest({ method, scheme, authority, path, fields, chunks, pad = 0 }) {
  return concat(
    vli(2),
    vbytes(method), vbytes(scheme), vbytes(authority), vbytes(path),
    fieldsIndeterminate(fields),
    ...chunks.filter((c) => c.length).map((c) => vbytes(c)), vli(0),
    vli(0),
    new Uint8Array(pad),
  );
}

// Framing 3: an indeterminate-length response, same shape.
export function indeterminateResponse({ status, fields, chunks, pad = 0 }) {
  return concat(
    vli(3), vli(status),
    fieldsIndeterminate(fields),
    ...chunks.filter((c) => c.length).map((c) => vbytes(c)), vli(0),
    vli(0),
    new Uint8Array(pad),
  );
}

function fieldsKnown(fields) {
  const f = concat(...fields.map(([n, v]) => concat(vbytes(n), vbytes(v))));
  return concat(vli(f.length), f);
}

// Framing 1 (RFC 9292 sections 3.1, 3.5.1): a known-length response after
// the informational responses `info` ([[status, fields]]), no trailers,
// `pad` zero bytes; with `truncate`, the empty trailer section left out
// (section 3.8).
export function knownResponse({ info = [], status, fields, content, truncate = false, pad = 0 }) {
  return concat(
    vli(1),
    ...info.map(([st, f]) => concat(vli(st), fieldsKnown(f))),
    vli(status), fieldsKnown(fields),
    vbytes(content),
    truncate ? new Uint8Array(0) : vli(0),
    new Uint8Array(pad),
  );
}

// ---- veil's signed statements (docs/PROTOCOL-V2.md 4.3, 8) -----------------

export function keysStatement(body, signedAt, notAfter) {
  const h = Buffer.from(sha256(body)).toString("hex");
  return `veil-ohttp-keys-v1\nkeys_sha256=${h}\nsigned_at=${signedAt}\nnot_after=${notAfter}\n`;
}

export function answerStatement(requestId, tier, requestContent, responseContent, signerSpkiDer, signedAt) {
  const h = (b) => Buffer.from(sha256(b)).toString("hex");
  return (
    "veil-response-signature-v1\n" +
    `payload_id=${requestId}\n` +
    `security_tier=${tier}\n` +
    `request_sha256=${h(requestContent)}\n` +
    `response_sha256=${h(responseContent)}\n` +
    `signing_key_sha256=${h(signerSpkiDer)}\n` +
    `signed_at=${signedAt}\n`
  );
}

export function sha256(b) {
  return createHash("sha256").update(b).digest();
}
