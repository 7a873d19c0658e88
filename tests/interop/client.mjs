// Direction A of tests/test_interop_ohttp.sh: an OHTTP client built on
// third-party HPKE and Binary HTTP (ohttp.mjs) speaking to a real veild.
//
//   node client.mjs keys URL
//       GET URL/.well-known/ohttp-gateway: prints "outer STATUS TYPE",
//       one "config ID KEM NPK KDF/AEAD..." line per configuration (hex
//       IDs), and "signature ok" when X-Veil-Keys-Signature verifies
//       (node:crypto) under the key of GET URL/pki/signing_key that
//       X-Veil-Signing-Key names, over docs/PROTOCOL-V2.md 4.3's statement.
//   node client.mjs send URL [OPTIONS] METHOD PATH [JSON]
//       one inner request, encoded by bhttp-js (known length) or by
//       ohttp.mjs (--framing indeterminate|padded), encapsulated by
//       @hpke/core to the first configuration of the chosen KEM that offers
//       the chosen AEAD, POSTed as message/ohttp-req.  Prints "outer STATUS
//       TYPE" and "cache-control VALUE"; on an outer 200 the answer opened
//       and decoded by bhttp-js: "inner STATUS", "field NAME: VALUE" for
//       each inner field, "signature ok|none|BAD" (the answer signature of
//       PROTOCOL-V2.md 8, verified with node:crypto); then "content TEXT"
//       (the inner content, or the outer body when it did not open).
//     --kem p256|x25519   (p256)      --aead 256|128   (256)
//     --framing known|known-padded|known-truncated|indeterminate|
//               indeterminate-truncated|padded
//                         known*: bhttp-js's encoder, then zero padding or
//                         the empty trailing sections left out (RFC 9292
//                         3.8); indeterminate*, padded: ohttp.mjs's
//     --tier TIER         an x-security-tier field
//     --field NAME:VALUE  one more field
//     --api-key-file FILE an authorization field: Bearer and FILE's key
//     --save FILE         write the encapsulated request to FILE
//     --tamper enc|ct|keyid|aead|short|zero-enc   one byte of enc or of
//                         the ciphertext changed, another key ID, an AEAD
//                         not offered (0x0003), the body cut inside enc, enc
//                         all zero bytes (a low-order X25519 point)
//     --out FILE          the inner content into FILE instead of stdout
//   node client.mjs post URL FILE
//       POSTs a saved encapsulated request again (a replay): "outer STATUS
//       TYPE" and "content BODY".
// Exit 0 when the exchange happened (whatever its statuses), 1 otherwise.
import { createPublicKey, verify } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import * as o from "./ohttp.mjs";

const WELL_KNOWN = "/.well-known/ohttp-gateway";

async function getBytes(url) {
  const r = await fetch(url);
  return { r, body: new Uint8Array(await r.arrayBuffer()) };
}

// The gateway's signing key: {key, spki, name} from GET /pki/signing_key.
async function signingKey(base) {
  const { r, body } = await getBytes(base + "/pki/signing_key");
  if (r.status !== 200) throw new Error(`GET /pki/signing_key: ${r.status}`);
  const key = createPublicKey(Buffer.from(body).toString("utf8"));
  const spki = key.export({ type: "spki", format: "der" });
  return { key, spki, name: "sha256:" + o.hex(o.sha256(spki)) };
}

async function fetchKeys(base) {
  const { r, body } = await getBytes(base + WELL_KNOWN);
  return { r, body, configs: r.status === 200 ? o.parseKeys(body) : [] };
}

function keysSignatureOk(r, body, signer) {
  const sig = r.headers.get("x-veil-keys-signature");
  const at = r.headers.get("x-veil-keys-signed-at");
  const until = r.headers.get("x-veil-keys-expires");
  if (!sig || !at || !until || r.headers.get("x-veil-signing-key") !== signer.name) return false;
  if (Number(until) <= Date.now() / 1000) return false;
  const st = o.keysStatement(body, at, until);
  return verify("sha256", Buffer.from(st), signer.key, Buffer.from(sig, "base64"));
}

async function cmdKeys(base) {
  const { r, body, configs } = await fetchKeys(base);
  console.log(`outer ${r.status} ${r.headers.get("content-type")}`);
  const h4 = (v) => v.toString(16).padStart(4, "0");
  for (const c of configs) {
    if (!c.known) {
      console.log(`config ${c.keyId} ${h4(c.kemId)} unknown`);
      continue;
    }
    const algs = c.algs.map(([k, a]) => `${h4(k)}/${h4(a)}`).join(" ");
    console.log(`config ${c.keyId} ${h4(c.kemId)} ${c.pk.length} ${algs}`);
  }
  const signer = await signingKey(base);
  console.log(keysSignatureOk(r, body, signer) ? "signature ok" : "signature BAD");
}

function parseOpts(args) {
  const opt = { kem: "p256", aead: "256", framing: "known" };
  while (args.length && args[0].startsWith("--")) {
    const k = args.shift().slice(2);
    opt[k] = args.shift();
  }
  return opt;
}

// The inner request's bytes in the framing asked for.
async function innerRequest(opt, authority, method, path, json) {
  const content = json === undefined ? new Uint8Array(0) : new TextEncoder().encode(json);
  const fields = [];
  if (json !== undefined) fields.push(["content-type", "application/json"]);
  if (opt.tier) fields.push(["x-security-tier", opt.tier]);
  if (opt["api-key-file"])
    fields.push(["authorization", "Bearer " + readFileSync(opt["api-key-file"], "utf8").trim()]);
  if (opt.field) fields.push([opt.field.slice(0, opt.field.indexOf(":")), opt.field.slice(opt.field.indexOf(":") + 1)]);
  if (opt.framing.startsWith("known")) {
    const init = { method, headers: Object.fromEntries(fields) };
    if (json !== undefined) init.body = content;
    const b = await new o.BHttpEncoder().encodeRequest(new Request(`https://${authority}${path}`, init));
    if (opt.framing === "known-padded") return o.concat(b, new Uint8Array(23));
    if (opt.framing === "known-truncated") {
      // RFC 9292 3.8: the empty trailer section left out, and the content
      // too when it is empty (bhttp-js writes each as a zero length last)
      if (b[b.length - 1] !== 0) throw new Error("bhttp-js wrote trailers");
      const cut = content.length === 0 && b[b.length - 2] === 0 ? 2 : 1;
      return b.subarray(0, b.length - cut);
    }
    return b;
  }
  // content in two chunks (or none), zero padding when asked
  const cut = content.length >> 1;
  let bytes = o.indeterminateRequest({
    method, scheme: "https", authority, path, fields,
    chunks: [content.subarray(0, cut), content.subarray(cut)],
    pad: opt.framing === "padded" ? 37 : 0,
  });
  if (opt.framing === "indeterminate-truncated") {
    // RFC 9292 3.2 and 3.8: the empty trailer section's terminator left
    // out, and the content's too when there is none
    bytes = bytes.subarray(0, bytes.length - (content.length ? 1 : 2));
  }
  // bhttp-js must read what ohttp.mjs wrote as the same request
  const back = new o.BHttpDecoder().decodeRequest(bytes);
  const backBody = new Uint8Array(await back.arrayBuffer());
  if (back.method !== method || new URL(back.url).pathname !== path ||
      Buffer.compare(Buffer.from(backBody), Buffer.from(content)) !== 0)
    throw new Error("bhttp-js does not read the indeterminate-length request back");
  return bytes;
}

async function cmdSend(base, args) {
  const opt = parseOpts(args);
  const [method, path, json] = args;
  const kemId = opt.kem === "x25519" ? o.KEM_X25519 : o.KEM_P256;
  const aeadId = opt.aead === "128" ? o.AEAD_AES128GCM : o.AEAD_AES256GCM;
  const { configs } = await fetchKeys(base);
  const cfg = configs.find((c) => c.known && c.kemId === kemId &&
    c.algs.some(([k, a]) => k === o.KDF_SHA256 && a === aeadId));
  if (!cfg) throw new Error(`no configuration of KEM ${kemId} with AEAD ${aeadId}`);
  const request = await innerRequest(opt, new URL(base).host, method, path, json);
  const { body, ctx } = await o.encapRequest(cfg, o.KDF_SHA256, aeadId, request);
  const nenc = ctx.enc.length;
  let sent = body;
  if (opt.tamper === "enc") body[7 + (nenc >> 1)] ^= 0x01;
  if (opt.tamper === "ct") body[body.length - 1] ^= 0x80;
  if (opt.tamper === "keyid") body[0] ^= 0x40;
  if (opt.tamper === "aead") body[6] = 0x03; // ChaCha20Poly1305: not offered
  if (opt.tamper === "zero-enc") body.fill(0, 7, 7 + nenc); // RFC 9180 7.1.4: X25519 all-zero DH
  if (opt.tamper === "short") sent = body.subarray(0, 7 + (nenc >> 1));
  if (opt.save) writeFileSync(opt.save, sent);
  const r = await fetch(base + WELL_KNOWN, {
    method: "POST",
    headers: { "content-type": o.MEDIA_REQ, accept: o.MEDIA_RES },
    body: sent,
  });
  const res = new Uint8Array(await r.arrayBuffer());
  console.log(`outer ${r.status} ${r.headers.get("content-type")}`);
  console.log(`cache-control ${r.headers.get("cache-control")}`);
  if (r.status !== 200) {
    console.log(`content ${Buffer.from(res).toString("utf8")}`);
    return;
  }
  const inner = new o.BHttpDecoder().decodeResponse(await o.decapResponse(ctx, res));
  const content = new Uint8Array(await inner.arrayBuffer());
  console.log(`inner ${inner.status}`);
  inner.headers.forEach((v, n) => console.log(`field ${n}: ${v}`));
  const sig = inner.headers.get("x-veil-signature");
  if (!sig) {
    console.log("signature none");
  } else {
    const signer = await signingKey(base);
    const requestId = o.hex(o.sha256(ctx.enc));
    const jsonBytes = json === undefined ? new Uint8Array(0) : new TextEncoder().encode(json);
    const st = o.answerStatement(requestId, opt.tier || "standard", jsonBytes, content,
      signer.spki, inner.headers.get("x-veil-signed-at"));
    const good = inner.headers.get("x-veil-signing-key") === signer.name &&
      verify("sha256", Buffer.from(st), signer.key, Buffer.from(sig, "base64"));
    console.log(good ? "signature ok" : "signature BAD");
  }
  if (opt.out) writeFileSync(opt.out, content);
  else console.log(`content ${Buffer.from(content).toString("utf8")}`);
}

async function cmdPost(base, file) {
  const r = await fetch(base + WELL_KNOWN, {
    method: "POST",
    headers: { "content-type": o.MEDIA_REQ },
    body: readFileSync(file),
  });
  console.log(`outer ${r.status} ${r.headers.get("content-type")}`);
  console.log(`content ${await r.text()}`);
}

const [cmd, base, ...rest] = process.argv.slice(2);
try {
  if (cmd === "keys") await cmdKeys(base);
  else if (cmd === "send") await cmdSend(base, rest);
  else if (cmd === "post") await cmdPost(base, rest[0]);
  else throw new Error("usage: client.mjs keys|send|post URL ...");
} catch (e) {
  console.error(`client.mjs: ${e.message}`);
  process.exit(1);
}
