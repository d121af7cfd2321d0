// How a server's answer is read: WWW-Authenticate challenges (RFC 9110 section 11.6.1) and
// whether an answer asks for a nonce (RFC 9449 sections 8 and 9).

import assert from "node:assert/strict";
import { test } from "node:test";

import { isNonceChallenge, parseChallenges } from "../src/index.js";

test("parseChallenges reads several schemes, quoted strings, token68 and odd spacing", () => {
  assert.deepEqual(
    parseChallenges(
      'DPoP algs="ES256 PS256", error="use_dpop_nonce", error_description="say \\"nonce\\"", Bearer realm=api,Basic dXNlcjpwdw==, Newauth',
    ),
    [
      { scheme: "DPoP", params: { algs: "ES256 PS256", error: "use_dpop_nonce", error_description: 'say "nonce"' } },
      { scheme: "Bearer", params: { realm: "api" } },
      { scheme: "Basic", params: {} },
      { scheme: "Newauth", params: {} },
    ],
  );
  assert.deepEqual(parseChallenges('dpop  ERROR = "use_dpop_nonce"'), [
    { scheme: "dpop", params: { error: "use_dpop_nonce" } },
  ]);
  // An unterminated quoted string ends the parse; what came before stays.
  assert.deepEqual(parseChallenges('Bearer realm="a", DPoP error="unterminated'), [
    { scheme: "Bearer", params: { realm: "a" } },
    { scheme: "DPoP", params: {} },
  ]);
  assert.deepEqual(parseChallenges(""), []);
});

const json = { "Content-Type": "application/json" };

test("isNonceChallenge: a DPoP 401 or a small JSON 400 that says use_dpop_nonce, nothing else", async () => {
  const www = (value) => new Response(null, { status: 401, headers: { "WWW-Authenticate": value } });
  assert.equal(await isNonceChallenge(www('Bearer realm="x", DPoP error="use_dpop_nonce"')), true);
  assert.equal(await isNonceChallenge(www('Bearer error="use_dpop_nonce"')), false);
  assert.equal(await isNonceChallenge(www('DPoP error="invalid_token"')), false);
  assert.equal(await isNonceChallenge(new Response(null, { status: 401 })), false);

  const body = JSON.stringify({ error: "use_dpop_nonce", error_description: "nonce" });
  const challenge = new Response(body, { status: 400, headers: json });
  assert.equal(await isNonceChallenge(challenge), true);
  assert.equal(await challenge.text(), body, "the caller still reads the whole body");
  assert.equal(await isNonceChallenge(new Response(body, { status: 400, headers: { "Content-Type": "application/problem+json; charset=utf-8" } })), true);
  assert.equal(await isNonceChallenge(new Response(body, { status: 400, headers: { "Content-Type": "text/plain" } })), false);
  assert.equal(await isNonceChallenge(new Response(body, { status: 403, headers: json })), false);
  assert.equal(await isNonceChallenge(new Response("not json", { status: 400, headers: json })), false);

  // Over 64 KiB is not read to the end (an error body is small); the caller gets it all.
  const big = JSON.stringify({ error: "use_dpop_nonce", padding: "x".repeat(70 * 1024) });
  const large = new Response(big, { status: 400, headers: json });
  assert.equal(await isNonceChallenge(large), false);
  assert.equal((await large.text()).length, big.length);
});
