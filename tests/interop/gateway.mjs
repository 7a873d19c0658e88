// Direction B of tests/test_interop_ohttp.sh: a small Oblivious HTTP
// gateway on third-party HPKE (@hpke/core as the recipient) and Binary
// HTTP (bhttp-js decodes the inner requests and encodes the answers), with
// node:http, answering like veild's echo model, for veil's client to speak
// to.  A stand-in for another implementation of docs/PROTOCOL-V2.md, not
// a gateway: no API keys, tiers, limits or replay register.
//
//   node gateway.mjs --port-file FILE [--stale-once]
//
// It makes in memory an ECDSA P-256 signing key (node:crypto) and a
// DHKEM(P-256) key (ID 7), and lists three key configurations: first one
// of DHKEM(P-384) (0x0011, which veil does not know and must skip by its
// length), then one of DHKEM(X25519) (ID 0x87), then the P-256 one with
// HKDF-SHA384 + AES-256-GCM, then AES-128-GCM, then AES-256-GCM (with
// HKDF-SHA256); signed as PROTOCOL-V2.md 4.3 says
// (X-Veil-Keys-*), its signing key at GET /pki/signing_key.  Inner routes:
// POST /v1/chat/completions (the last user message echoed),
// POST /v1/embeddings (veild's echo embedding: 16 numbers from the
// SHA-256 of each input), GET /v1/models; every 200 of an inference route
// signed (PROTOCOL-V2.md 8).  Models: "echo" (known-length answer by
// bhttp-js), "echo-indeterminate" (an indeterminate-length, zero-padded
// answer, RFC 9292 3.2 and 3.8, by ohttp.mjs, read back by bhttp-js),
// "echo-informational" (a known-length answer after a 103 informational
// response, zero-padded, section 3.5.1), "echo-truncated" (known-length,
// its empty trailer section left out, section 3.8), "echo-ind-truncated"
// (indeterminate-length, the empty trailer section's terminator left out),
// "echo-unsigned" (no answer signature), "echo-badsig" (a signature over
// another answer), "busy-once" (the first request an inner 429 with an
// inner retry-after of 1 s, then as echo); another model is an inner 404.  A request that does
// not open gets the uniform 400 of PROTOCOL-V2.md 7.  --stale-once: the
// first POST finds the key rotated (a new P-256 key, ID 8): its request
// gets the uniform 400, as after a gateway's rotation.
//
// One line per event on stderr ("key configurations served", "POST ...:
// inner STATUS, authority "..."", "uniform 400: WHY"), never a prompt or
// an answer.
import { createServer } from "node:http";
import { generateKeyPairSync, sign } from "node:crypto";
import { writeFileSync } from "node:fs";
import * as o from "./ohttp.mjs";

const args = process.argv.slice(2);
const portFile = args[args.indexOf("--port-file") + 1];
let staleOnce = args.includes("--stale-once");

const signer = generateKeyPairSync("ec", { namedCurve: "P-256" });
const signerSpki = signer.publicKey.export({ type: "spki", format: "der" });
const signerPem = signer.publicKey.export({ type: "spki", format: "pem" });
const signerName = "sha256:" + o.hex(o.sha256(signerSpki));
const ALGS = [[o.KDF_SHA256, o.AEAD_AES128GCM], [o.KDF_SHA256, o.AEAD_AES256GCM]];
// what the P-256 configuration lists: first HKDF-SHA384 (0x0002, which
// veil does not take) with AES-256-GCM, then ALGS
const LISTED = [[0x0002, o.AEAD_AES256GCM], ...ALGS];
const UNIFORM = JSON.stringify({ type: o.PROBLEM_KEY, title: "Oblivious HTTP key configuration not acceptable" });
const te = new TextEncoder();
const MODELS = ["echo", "echo-indeterminate", "echo-informational", "echo-truncated", "echo-ind-truncated", "echo-unsigned", "echo-badsig", "busy-once"];
let busyOnce = true;

let keys = [await o.gatewayKey(7, o.KEM_P256), await o.gatewayKey(0x87, o.KEM_X25519)];

function log(s) {
  process.stderr.write(`gateway.mjs: ${s}\n`);
}

function keysBody() {
  const p384 = o.encodeKeyConfig(3, 0x0011, new Uint8Array(97).fill(4), ALGS);
  const [p256, x25519] = [keys.find((k) => k.kemId === o.KEM_P256), keys.find((k) => k.kemId === o.KEM_X25519)];
  return o.encodeKeys([
    p384,
    o.encodeKeyConfig(x25519.keyId, x25519.kemId, x25519.pk, ALGS),
    o.encodeKeyConfig(p256.keyId, p256.kemId, p256.pk, LISTED),
  ]);
}

// RFC 9292 3.3's request control data: {authority, path}.  Read here
// because bhttp-js turns an empty authority (RFC 9292 section 5's example
// has one, with a host field) without a host field into "https://" + "" +
// path, a URL whose host is the path's first segment.
function controlData(b) {
  let p = 0;
  const v = () => {
    const len = 1 << (b[p] >> 6);
    let x = b[p] & 0x3f;
    for (let i = 1; i < len; i++) x = x * 256 + b[p + i];
    p += len;
    return x;
  };
  v(); // framing indicator
  const s = () => {
    const n = v();
    const out = Buffer.from(b.subarray(p, p + n)).toString("latin1");
    p += n;
    return out;
  };
  s(); s(); // method, scheme
  const authority = s();
  return { authority, path: s() };
}

function embedding(text) {
  const h = o.sha256(te.encode(text));
  const v = [];
  for (let i = 0; i < 16; i++) v.push(((h[2 * i] << 8) | h[2 * i + 1]) / 32768 - 1);
  return v;
}

// The inner answer to an inner request: {status, json, model}.
function answer(method, path, json) {
  if (method === "GET" && path === "/v1/models")
    return { status: 200, json: { object: "list", data: MODELS.map((id) => ({ id, object: "model", owned_by: "interop" })) }, signed: false };
  if (method !== "POST" || (path !== "/v1/chat/completions" && path !== "/v1/embeddings"))
    return { status: 404, json: { detail: `no route ${method} ${path}` } };
  let req;
  try {
    req = JSON.parse(json);
  } catch {
    return { status: 400, json: { detail: "not JSON" } };
  }
  const model = req.model;
  if (!MODELS.includes(model))
    return { status: 404, json: { detail: `model '${model}' is not served here` } };
  if (model === "busy-once" && busyOnce) {
    busyOnce = false;
    return { status: 429, model, json: { detail: "busy, retry in 1 s" }, retryAfter: "1" };
  }
  const now = Math.floor(Date.now() / 1000);
  if (path === "/v1/embeddings") {
    const inputs = Array.isArray(req.input) ? req.input : [req.input];
    return {
      status: 200, model, signed: true,
      json: { object: "list", data: inputs.map((t, index) => ({ object: "embedding", index, embedding: embedding(t) })), model, usage: { prompt_tokens: 1, total_tokens: 1 } },
    };
  }
  const users = (req.messages || []).filter((m) => m.role === "user");
  const text = users.length ? users[users.length - 1].content : "";
  return {
    status: 200, model, signed: true,
    json: {
      id: "chatcmpl-interop", object: "chat.completion", created: now, model,
      choices: [{ index: 0, message: { role: "assistant", content: text }, finish_reason: "stop" }],
      usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 },
    },
  };
}

async function inner(plain, enc) {
  const req = new o.BHttpDecoder().decodeRequest(plain);
  const content = new Uint8Array(await req.arrayBuffer());
  let path = new URL(req.url).pathname;
  const ctl = controlData(plain);
  if (ctl.path !== path) {
    log(`bhttp-js read the path as ${path} (empty authority, no host field): using ${ctl.path} from the control data`);
    path = ctl.path;
  }
  const a = answer(req.method, path, Buffer.from(content).toString("utf8"));
  const body = te.encode(JSON.stringify(a.json));
  const fields = [["content-type", "application/json"]];
  if (a.retryAfter) fields.push(["retry-after", a.retryAfter]);
  if (a.signed && a.model !== "echo-unsigned") {
    const at = Math.floor(Date.now() / 1000);
    const tier = req.headers.get("x-security-tier") || "standard";
    const over = a.model === "echo-badsig" ? te.encode("another answer") : body;
    const st = o.answerStatement(o.hex(o.sha256(enc)), tier, content, over, signerSpki, at);
    fields.push(["x-veil-signature", sign("sha256", Buffer.from(st), signer.privateKey).toString("base64")]);
    fields.push(["x-veil-signed-at", String(at)]);
    fields.push(["x-veil-signing-key", signerName]);
  }
  log(`${req.method} ${path}${a.model ? " model " + a.model : ""}: inner ${a.status}, authority "${ctl.authority}"`);
  if (a.model === "echo-informational" || a.model === "echo-truncated") {
    const bytes = a.model === "echo-truncated"
      ? o.knownResponse({ status: a.status, fields, content: body, truncate: true })
      : o.knownResponse({ info: [[103, [["link", "</style.css>; rel=preload"]]]], status: a.status, fields, content: body, pad: 17 });
    const back = new o.BHttpDecoder().decodeResponse(bytes);
    if (back.status !== a.status || Buffer.compare(Buffer.from(await back.arrayBuffer()), Buffer.from(body)))
      throw new Error("bhttp-js does not read the known-length answer back");
    return bytes;
  }
  if (a.model === "echo-indeterminate" || a.model === "echo-ind-truncated") {
    const half = body.length >> 1;
    let bytes = o.indeterminateResponse({ status: a.status, fields, chunks: [body.subarray(0, half), body.subarray(half)], pad: 29 });
    // RFC 9292 3.8: no padding, and the empty trailer section's terminator
    // left out
    if (a.model === "echo-ind-truncated") bytes = bytes.subarray(0, bytes.length - 30);
    const back = new o.BHttpDecoder().decodeResponse(bytes);
    if (back.status !== a.status || Buffer.compare(Buffer.from(await back.arrayBuffer()), Buffer.from(body)))
      throw new Error("bhttp-js does not read the indeterminate-length answer back");
    return bytes;
  }
  return new o.BHttpEncoder().encodeResponse(new Response(body, { status: a.status, headers: Object.fromEntries(fields) }));
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const parts = [];
    let n = 0;
    req.on("data", (c) => {
      n += c.length;
      if (n > 1 << 20) reject(new Error("too large"));
      else parts.push(c);
    });
    req.on("end", () => resolve(new Uint8Array(Buffer.concat(parts))));
    req.on("error", reject);
  });
}

async function handle(req, res) {
  const url = new URL(req.url, "http://gateway");
  if (req.method === "GET" && url.pathname === "/pki/signing_key") {
    res.writeHead(200, { "content-type": "text/plain; charset=utf-8" });
    return res.end(signerPem);
  }
  if (url.pathname !== "/.well-known/ohttp-gateway") {
    res.writeHead(404, { "content-type": "application/json" });
    return res.end(JSON.stringify({ detail: "not found" }));
  }
  if (req.method === "GET") {
    const body = keysBody();
    const at = Math.floor(Date.now() / 1000), until = at + 600;
    const sig = sign("sha256", Buffer.from(o.keysStatement(body, at, until)), signer.privateKey);
    res.writeHead(200, {
      "content-type": o.MEDIA_KEYS,
      "cache-control": "max-age=60",
      "x-veil-keys-signature": sig.toString("base64"),
      "x-veil-keys-signed-at": String(at),
      "x-veil-keys-expires": String(until),
      "x-veil-signing-key": signerName,
    });
    log("key configurations served");
    return res.end(body);
  }
  if (req.method !== "POST") {
    res.writeHead(405, { allow: "GET, POST" });
    return res.end();
  }
  if ((req.headers["content-type"] || "") !== o.MEDIA_REQ) {
    res.writeHead(415);
    return res.end();
  }
  const body = await readBody(req);
  if (staleOnce) {
    staleOnce = false;
    keys = [await o.gatewayKey(8, o.KEM_P256), keys[1]];
    log("P-256 key 7 rotated to key 8");
  }
  let opened;
  try {
    opened = await o.decapRequest(keys, ALGS, body);
  } catch (e) {
    log(`uniform 400: ${e.message}`);
    res.writeHead(400, { "content-type": "application/problem+json", "cache-control": "no-store" });
    return res.end(UNIFORM);
  }
  const out = await o.encapResponse(opened.ctx, await inner(opened.request, opened.ctx.enc));
  res.writeHead(200, { "content-type": o.MEDIA_RES, "cache-control": "no-store" });
  res.end(out);
}

const server = createServer((req, res) => {
  handle(req, res).catch((e) => {
    log(`error: ${e.message}`);
    if (!res.headersSent) res.writeHead(500);
    res.end();
  });
});
server.listen(0, "127.0.0.1", () => {
  writeFileSync(portFile, `${server.address().port}\n`);
  log(`listening on 127.0.0.1:${server.address().port}`);
});
process.on("SIGTERM", () => {
  server.close(() => process.exit(0));
  server.closeAllConnections();
});
