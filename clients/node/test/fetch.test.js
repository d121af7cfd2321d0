// dpopFetch against the real example resource server (Redis replay store, nonces required)
// with a token bound to the agent's key, and against a strict token endpoint and resource
// server of the Rust harness (tests/src/oauth.rs) for the 400 use_dpop_nonce and redirects.

import assert from "node:assert/strict";
import http from "node:http";
import { test } from "node:test";

import { AgentClient, dpopFetch } from "../src/index.js";
import { env, verifyProof } from "./helpers.js";

const KEY = env("DPOP_TEST_KEY");
const JKT = env("DPOP_TEST_JKT");
const TOKEN = env("DPOP_TEST_TOKEN");
const RESOURCE = env("DPOP_TEST_RESOURCE");
const SUB = env("DPOP_TEST_SUB");

/** A fetch that records what went out and what came back (the real fetch underneath). */
function recordingFetch() {
  const seen = [];
  const fetchImpl = async (request) => {
    const entry = { method: request.method, url: request.url, proof: request.headers.get("DPoP"), authorization: request.headers.get("Authorization") };
    const response = await fetch(request);
    entry.status = response.status;
    entry.challenge = response.headers.get("WWW-Authenticate");
    seen.push(entry);
    return response;
  };
  return { seen, fetch: fetchImpl };
}

/** Makes the agent's stored nonce for the resource server stale, so a retry must happen. */
async function staleNonce(origin) {
  const agent = await AgentClient.connect();
  await agent.reportNonce(KEY, origin, "stale-nonce-from-the-test");
  agent.close();
}

test("GET reaches the resource server with the bound token after one use_dpop_nonce retry", async () => {
  await staleNonce(RESOURCE);
  const rec = recordingFetch();
  const response = await dpopFetch(`${RESOURCE}/v1/items?page=2#top`, {}, { key: KEY, token: TOKEN, fetch: rec.fetch });
  assert.equal(response.status, 200);
  const body = await response.json();
  assert.deepEqual([body.method, body.path, body.jkt, body.sub], ["GET", "/v1/items", JKT, SUB]);
  assert.equal(rec.seen.length, 2, "one challenge, one retry");
  assert.equal(rec.seen[0].status, 401);
  assert.match(rec.seen[0].challenge, /error="use_dpop_nonce"/);
  // assert.ok, not equal: a failure must not print the token.
  assert.ok(rec.seen[1].authorization === `DPoP ${TOKEN}`, "Authorization: DPoP <the token>");
  const { claims } = verifyProof(rec.seen[1].proof, { htm: "GET", htu: `${RESOURCE}/v1/items`, accessToken: TOKEN });
  assert.ok(claims.nonce && claims.nonce !== "stale-nonce-from-the-test");

  // The nonce went to the agent: the next request needs no retry.
  const again = recordingFetch();
  const second = await dpopFetch(`${RESOURCE}/v1/again`, undefined, { key: KEY, token: TOKEN, fetch: again.fetch });
  assert.equal(second.status, 200);
  assert.equal(again.seen.length, 1);
});

test("POST with a string body is replayed on use_dpop_nonce, through a shared AgentClient", async () => {
  await staleNonce(RESOURCE);
  const agent = await AgentClient.connect();
  try {
    const rec = recordingFetch();
    const events = [];
    const response = await dpopFetch(
      `${RESOURCE}/v1/items`,
      { method: "post", body: JSON.stringify({ name: "x" }), headers: { "Content-Type": "application/json" } },
      { key: KEY, token: TOKEN, agent, fetch: rec.fetch, onResponse: (e) => events.push(e) },
    );
    assert.equal(response.status, 200);
    assert.equal((await response.json()).method, "POST");
    assert.deepEqual(rec.seen.map((s) => s.status), [401, 200]);
    assert.deepEqual(events.map((e) => [e.attempt, e.status]), [[1, 401], [2, 200]]);
    assert.ok(events[0].nonce, "the challenge carried a nonce");
    verifyProof(rec.seen[1].proof, { htm: "POST", nonce: events[0].nonce });
    // The shared client is still open for the caller.
    assert.equal((await agent.hello()).protocol, 1);
  } finally {
    agent.close();
  }
});

test("parallel requests through one AgentClient each get their own proof (Redis sees no replay)", async () => {
  const agent = await AgentClient.connect();
  try {
    const rec = recordingFetch();
    const responses = await Promise.all(
      Array.from({ length: 20 }, (_, i) => dpopFetch(`${RESOURCE}/v1/parallel/${i}`, {}, { key: KEY, token: TOKEN, agent, fetch: rec.fetch })),
    );
    const bodies = await Promise.all(responses.map((r) => r.json()));
    assert.deepEqual(responses.map((r) => r.status), Array(20).fill(200));
    assert.deepEqual(bodies.map((b) => b.path), Array.from({ length: 20 }, (_, i) => `/v1/parallel/${i}`));
    const jtis = new Set(rec.seen.map((s) => verifyProof(s.proof).claims.jti));
    assert.equal(jtis.size, rec.seen.length);
  } finally {
    agent.close();
  }
});

test("a ReadableStream body is not replayed: the 401 comes back", async () => {
  await staleNonce(RESOURCE);
  const rec = recordingFetch();
  const body = new ReadableStream({
    start(controller) {
      controller.enqueue(new TextEncoder().encode("streamed"));
      controller.close();
    },
  });
  const response = await dpopFetch(`${RESOURCE}/v1/upload`, { method: "POST", body }, { key: KEY, token: TOKEN, fetch: rec.fetch });
  assert.equal(response.status, 401);
  assert.match(response.headers.get("WWW-Authenticate"), /use_dpop_nonce/);
  assert.equal(rec.seen.length, 1, "sent once");
  // The nonce of that 401 was still reported: the next request passes at once.
  const next = recordingFetch();
  assert.equal((await dpopFetch(`${RESOURCE}/v1/upload`, { method: "POST", body: "x" }, { key: KEY, token: TOKEN, fetch: next.fetch })).status, 200);
  assert.equal(next.seen.length, 1);
});

test("a token endpoint's 400 use_dpop_nonce is retried once, keeping the client's own Authorization", async () => {
  const tokenUrl = env("DPOP_TEST_TOKEN_URL");
  const basic = Buffer.from(`${encodeURIComponent(env("DPOP_TEST_CLIENT_ID"))}:${encodeURIComponent(env("DPOP_TEST_CLIENT_SECRET"))}`).toString("base64");
  const rec = recordingFetch();
  const response = await dpopFetch(
    tokenUrl,
    { method: "POST", body: new URLSearchParams({ grant_type: "client_credentials" }), headers: { Authorization: `Basic ${basic}` } },
    { key: KEY, fetch: rec.fetch },
  );
  assert.deepEqual(rec.seen.map((s) => s.status), [400, 200]);
  assert.ok(rec.seen[1].authorization === `Basic ${basic}`, "the client's own Authorization is kept");
  const grant = await response.json();
  assert.equal(grant.token_type, "DPoP");
  verifyProof(rec.seen[1].proof, { htm: "POST", htu: tokenUrl });

  // That token, at the same harness's resource server: a redirect to another origin comes
  // back to the caller, not followed.
  const resource = env("DPOP_TEST_OAUTH_RESOURCE");
  const away = recordingFetch();
  const redirected = await dpopFetch(`${resource}/api/away`, {}, { key: KEY, token: grant.access_token, fetch: away.fetch });
  assert.equal(redirected.status, 302);
  assert.equal(redirected.headers.get("Location"), "http://localhost:9/api/x");
  assert.ok(away.seen.every((s) => new URL(s.url).origin === resource), "nothing went to another origin");
  await assert.rejects(
    dpopFetch(`${resource}/api/away`, { redirect: "follow" }, { key: KEY, token: grant.access_token }),
    TypeError,
  );
});

test("no token in the errors of dpopFetch", async () => {
  const bad = "bad token SECRET-MARKER";
  const e = await dpopFetch(`${RESOURCE}/v1/items`, {}, { key: KEY, token: bad }).catch((x) => x);
  assert.ok(e instanceof TypeError);
  assert.ok(!String(e).includes("SECRET-MARKER") && !e.stack.includes("SECRET-MARKER"));
  // An unknown key: the agent's refusal names the key, never the (valid) token.
  const unknown = await dpopFetch(`${RESOURCE}/v1/items`, {}, { key: "no-such-key", token: TOKEN }).catch((x) => x);
  assert.equal(unknown.code, "key_not_found");
  assert.ok(!String(unknown).includes(TOKEN) && !unknown.stack.includes(TOKEN));
  // A refused token is a response, not an error.
  const refused = await dpopFetch(`${RESOURCE}/v1/items`, {}, { key: KEY, token: "eyJhbGciOiJub25lIn0.e30.x" });
  assert.equal(refused.status, 401);
});

test("a DPoP-Nonce outside the nonce syntax is not reported and fails nothing", async () => {
  // The real servers never send one: a loopback server that does, answering 200.
  const server = http.createServer((_req, res) => {
    res.writeHead(200, { "DPoP-Nonce": "not a nonce", "Content-Type": "text/plain" });
    res.end("fine");
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const origin = `http://127.0.0.1:${server.address().port}`;
  try {
    const events = [];
    const response = await dpopFetch(`${origin}/x`, {}, { key: KEY, token: TOKEN, onResponse: (e) => events.push(e) });
    assert.equal(await response.text(), "fine");
    assert.deepEqual(events, [{ attempt: 1, status: 200, nonce: null }]);
    const agent = await AgentClient.connect();
    const key = (await agent.listKeys()).find((k) => k.label === KEY);
    agent.close();
    assert.ok(!(key.nonce_origins ?? []).includes(origin));
  } finally {
    server.closeAllConnections();
    server.close();
  }
});
