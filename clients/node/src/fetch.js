// dpopFetch: the platform's fetch with DPoP (RFC 9449). Each request gets a fresh proof from
// the agent (htm, htu = the URL without query and fragment, ath of the token), and
// `Authorization: DPoP <token>` when a token is given. Every `DPoP-Nonce` a server sends is
// reported to the agent, which puts it into the next proof for that origin. A
// `use_dpop_nonce` answer (a 401 whose WWW-Authenticate DPoP challenge says so, or a 400 JSON
// error from a token endpoint) is retried once with the nonce it carried and a fresh proof.
// Redirects are never followed: the 3xx comes back to the caller, so a proof and a token
// never go to an origin the caller did not name.

import { AgentClient } from "./client.js";
import { InvalidNonceError } from "./errors.js";

/** The most of a 400 body read to tell whether it is a `use_dpop_nonce` error. */
const MAX_ERROR_BODY = 64 * 1024;

/** RFC 6750 b64token: what an access token may be, so that it fits a header as is. */
const B64TOKEN = /^[A-Za-z0-9\-._~+/]+=*$/;

/**
 * @typedef {object} DpopOptions
 * @property {string} key the agent's key label
 * @property {string} [token] the access token (none: a token endpoint request, whose own
 *   Authorization, such as client authentication, is kept)
 * @property {AgentClient} [agent] an open client to reuse (default: one per call)
 * @property {typeof globalThis.fetch} [fetch] the fetch to use (default: globalThis.fetch;
 *   in Electron, `net.fetch` works too)
 * @property {(event: { attempt: number, status: number, nonce: string | null }) => void} [onResponse]
 *   called with each response before the retry decision (for tests and logs; no secrets)
 */

/**
 * fetch with DPoP; see the header. `init.redirect` may only be "manual" (the default here)
 * or "error". A body in `init.body` that is a ReadableStream (or any async iterable) is sent
 * once: on `use_dpop_nonce` the 401 is returned, not retried. A Request with a body as `input`
 * is not replayed either.
 * @param {string | URL | Request} input
 * @param {RequestInit} [init]
 * @param {DpopOptions} options
 * @returns {Promise<Response>}
 */
export async function dpopFetch(input, init, options) {
  init ??= {};
  const { key, token, agent, fetch: fetchImpl = globalThis.fetch, onResponse } = options ?? {};
  if (typeof key !== "string" || key === "") {
    throw new TypeError("dpopFetch needs options.key, the agent's key label");
  }
  if (token !== undefined && (typeof token !== "string" || !B64TOKEN.test(token))) {
    // Never the token itself: error messages end up in logs.
    throw new TypeError("the access token is not an RFC 6750 token (b64token syntax)");
  }
  const redirect = init.redirect ?? "manual";
  if (redirect !== "manual" && redirect !== "error") {
    throw new TypeError(
      `dpopFetch does not follow redirects (init.redirect "${redirect}"): a proof and a token must not reach another origin; handle the 3xx`,
    );
  }
  const replayable = isReplayable(input, init);
  const client = agent ?? (await AgentClient.connect());
  try {
    const first = await send(input, init, redirect, client, key, token, undefined, fetchImpl);
    const nonce = await reportNonce(client, key, first);
    const challenged = await isNonceChallenge(first.response);
    onResponse?.({ attempt: 1, status: first.response.status, nonce });
    // Without a new nonce a retry would be refused the same way.
    if (!challenged || nonce === null || !replayable) return first.response;
    discard(first.response);
    // The nonce just received, explicitly: the answer to this challenge, whatever another
    // process reported for the origin meanwhile.
    const second = await send(input, init, redirect, client, key, token, nonce, fetchImpl);
    const next = await reportNonce(client, key, second);
    onResponse?.({ attempt: 2, status: second.response.status, nonce: next });
    return second.response;
  } finally {
    if (!agent) client.close();
  }
}

/**
 * One signed request.
 * @returns {Promise<{ request: Request, response: Response }>}
 */
async function send(input, init, redirect, client, key, token, nonce, fetchImpl) {
  // Node's fetch wants `duplex: "half"` for a stream body; say it for the caller.
  const duplex = init.duplex ?? (isStream(init.body) ? "half" : undefined);
  const request = new Request(input, { ...init, redirect, ...(duplex ? { duplex } : {}) });
  const htu = new URL(request.url);
  htu.search = "";
  htu.hash = "";
  const proof = await client.signProof(key, {
    htm: request.method,
    htu: htu.href,
    accessToken: token,
    nonce,
  });
  request.headers.set("DPoP", proof);
  if (token !== undefined) request.headers.set("Authorization", `DPoP ${token}`);
  const response = await fetchImpl(request);
  return { request, response };
}

/**
 * Reports the response's `DPoP-Nonce` to the agent for the request's origin and returns it;
 * null when there is none, or it is outside the nonce syntax (the server's fault: a proof
 * could not carry it).
 * @returns {Promise<string | null>}
 */
async function reportNonce(client, key, { request, response }) {
  const nonce = response.headers.get("DPoP-Nonce");
  if (nonce === null) return null;
  try {
    await client.reportNonce(key, new URL(request.url).origin, nonce);
    return nonce;
  } catch (e) {
    if (e instanceof InvalidNonceError) return null;
    discard(response);
    throw e;
  }
}

/**
 * Whether `response` asks for a nonce: a 401 with a DPoP challenge whose error is
 * use_dpop_nonce, or a small JSON 400 whose `error` is (read from a clone, so the caller
 * still gets the whole body).
 * @param {Response} response
 */
export async function isNonceChallenge(response) {
  if (response.status === 401) {
    return parseChallenges(response.headers.get("WWW-Authenticate") ?? "").some(
      (c) => c.scheme.toLowerCase() === "dpop" && c.params.error === "use_dpop_nonce",
    );
  }
  if (response.status !== 400 || response.body === null) return false;
  const media = (response.headers.get("Content-Type") ?? "").split(";")[0].trim().toLowerCase();
  if (media !== "application/json" && !media.endsWith("+json")) return false;
  const length = response.headers.get("Content-Length");
  if (length !== null && Number(length) > MAX_ERROR_BODY) return false;
  const text = await readAtMost(response.clone(), MAX_ERROR_BODY);
  if (text === null) return false;
  try {
    return JSON.parse(text)?.error === "use_dpop_nonce";
  } catch {
    return false;
  }
}

/** The body as text, or null when it is longer than `limit` bytes. */
async function readAtMost(/** @type {Response} */ response, /** @type {number} */ limit) {
  const reader = /** @type {ReadableStream<Uint8Array>} */ (response.body).getReader();
  const chunks = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > limit) {
      // Not awaited: a tee branch's cancel settles only once the other branch is cancelled too.
      reader.cancel().catch(() => {});
      return null;
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks).toString("utf8");
}

/** Lets go of a response's body unread (not awaited, for the reason in readAtMost). */
function discard(/** @type {Response} */ response) {
  response.body?.cancel().catch(() => {});
}

/**
 * Whether the request can be sent a second time: a body in `init.body` that is a string,
 * Blob, BufferSource, URLSearchParams or FormData can; a stream (ReadableStream, Node stream,
 * any async iterable) cannot, nor a Request's own body.
 */
function isReplayable(input, init) {
  if (init.body !== undefined && init.body !== null) return !isStream(init.body);
  return !(input instanceof Request && input.body !== null);
}

/** Whether a body is read as it is sent: a ReadableStream, Node stream or async iterable. */
function isStream(/** @type {unknown} */ body) {
  if (typeof body !== "object" || body === null) return false;
  return (
    body instanceof ReadableStream ||
    typeof (/** @type {any} */ (body)[Symbol.asyncIterator]) === "function" ||
    typeof (/** @type {any} */ (body).pipe) === "function"
  );
}

/**
 * The challenges of a WWW-Authenticate value (RFC 9110 section 11.6.1:
 * `challenge = auth-scheme [ 1*SP ( token68 / #auth-param ) ]`, comma-separated); parameter
 * names lower-cased, quoted strings unescaped. Anything after a syntax error is dropped.
 * @param {string} header
 * @returns {{ scheme: string, params: Record<string, string> }[]}
 */
export function parseChallenges(header) {
  const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+/;
  const out = [];
  let rest = header;
  const skip = (/** @type {RegExp} */ re) => {
    rest = rest.replace(re, "");
  };
  for (;;) {
    skip(/^[ \t,]+/);
    const scheme = TOKEN.exec(rest)?.[0];
    if (!scheme) return out;
    rest = rest.slice(scheme.length);
    const challenge = { scheme, params: /** @type {Record<string, string>} */ ({}) };
    out.push(challenge);
    skip(/^[ \t]+/);
    // token68 (no "=" follows a name, or only "=" padding): taken whole and ignored.
    const t68 = /^[A-Za-z0-9\-._~+/]+=*(?=[ \t]*(,|$))/.exec(rest);
    if (t68 && !/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+[ \t]*=[^=]/.test(rest)) {
      rest = rest.slice(t68[0].length);
      continue;
    }
    for (;;) {
      skip(/^[ \t]*/);
      const save = rest;
      const name = TOKEN.exec(rest)?.[0];
      if (!name) break;
      rest = rest.slice(name.length);
      skip(/^[ \t]*/);
      if (!rest.startsWith("=")) {
        // Not a parameter: the next challenge's scheme.
        rest = save;
        break;
      }
      rest = rest.slice(1);
      skip(/^[ \t]*/);
      let value;
      if (rest.startsWith('"')) {
        let i = 1;
        value = "";
        for (; i < rest.length && rest[i] !== '"'; i++) {
          if (rest[i] === "\\" && i + 1 < rest.length) i++;
          value += rest[i];
        }
        if (i >= rest.length) return out;
        rest = rest.slice(i + 1);
      } else {
        value = TOKEN.exec(rest)?.[0];
        if (value === undefined) return out;
        rest = rest.slice(value.length);
      }
      challenge.params[name.toLowerCase()] = value;
      skip(/^[ \t]*/);
      if (!rest.startsWith(",")) break;
      rest = rest.slice(1);
    }
  }
}
