// Every op of docs/protocol.md against the real agent, and its refusals as typed errors.

import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { test } from "node:test";

import {
  AgentClient,
  BackendNotConfiguredError,
  BadRequestError,
  DpopAgentError,
  InvalidAccessTokenError,
  InvalidLabelError,
  InvalidMethodError,
  InvalidNonceError,
  KeyExistsError,
  KeyNotFoundError,
  LineTooLongError,
  LockedError,
  NotLockedError,
  UnknownOpError,
  WrongPassphraseError,
  defaultSocketPath,
  errorFromWire,
} from "../src/index.js";
import { env, verifyProof } from "./helpers.js";

const KEY = env("DPOP_TEST_KEY");
const JKT = env("DPOP_TEST_JKT");

/** A client on DPOP_AUTH_SOCK, closed after `body`. */
async function withClient(body) {
  const client = await AgentClient.connect();
  try {
    return await body(client);
  } finally {
    client.close();
  }
}

test("hello, status and list_keys describe the agent and the test key", async () => {
  assert.equal(defaultSocketPath(), env("DPOP_AUTH_SOCK"));
  await withClient(async (agent) => {
    const hello = await agent.hello();
    assert.equal(hello.protocol, 1);
    assert.match(hello.agent, /^dpop-agent\//);
    assert.ok(hello.backends.includes("software"));
    assert.equal(hello.software_persistent, true);
    assert.equal("id" in hello || "ok" in hello, false, "id and ok are not part of the result");

    const status = await agent.status();
    assert.equal(status.locked, false);
    assert.equal(typeof status.pid, "number");
    assert.ok(status.keys >= 1);

    const keys = await agent.listKeys();
    const key = keys.find((k) => k.label === KEY);
    assert.ok(key, "the test key is listed");
    assert.equal(key.jkt, JKT);
    assert.equal(key.alg, "ES256");
    assert.equal(key.jwk.kty, "EC");
  });
});

test("generate_key, import_key, set_policy, sign_proof and delete_key round trip", async () => {
  await withClient(async (agent) => {
    const made = await agent.generateKey("node-made", { alg: "ES256" });
    assert.equal(made.label, "node-made");
    assert.equal(made.backend, "software");
    assert.equal(made.persistent, true);
    await assert.rejects(agent.generateKey("node-made"), KeyExistsError);

    const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const pem = privateKey.export({ type: "pkcs8", format: "pem" });
    const imported = await agent.importKey("node-imported", pem);
    assert.equal(imported.alg, "ES256");
    const { x } = privateKey.export({ format: "jwk" });
    assert.equal(imported.jwk.x, x, "the agent holds the imported key");

    const policy = { allow_origins: ["https://api.example.com"] };
    const restricted = await agent.setPolicy("node-made", policy);
    assert.deepEqual(restricted.policy.allow_origins, policy.allow_origins);
    const proof = await agent.signProof("node-made", {
      htm: "POST",
      htu: "https://api.example.com/v1/items?page=2#frag",
      accessToken: "a-token",
      nonce: "server-nonce",
    });
    const { header } = verifyProof(proof, {
      htm: "POST",
      htu: "https://api.example.com/v1/items",
      accessToken: "a-token",
      nonce: "server-nonce",
    });
    assert.equal(header.jwk.x, made.jwk.x);
    const refused = await agent
      .signProof("node-made", { htm: "GET", htu: "https://other.example.com/" })
      .catch((e) => e);
    assert.ok(refused instanceof DpopAgentError);
    assert.equal(refused.code, "origin_not_allowed");

    // A key without a policy is deleted at once; a policy would need the user's yes.
    assert.equal((await agent.deleteKey("node-imported")).label, "node-imported");
    const deleted = await agent.deleteKey("node-made").catch((e) => e);
    assert.ok(deleted instanceof DpopAgentError, "deleting a key with a policy needs a yes");
    assert.ok(["confirm_denied", "client_not_allowed"].includes(deleted.code), deleted.code);
    const labels = (await agent.listKeys()).map((k) => k.label);
    assert.ok(!labels.includes("node-imported"));
  });
});

test("report_nonce: the nonce goes into the next proof for that origin only", async () => {
  await withClient(async (agent) => {
    await agent.reportNonce(KEY, "https://nonce.example:8443/any/path", "nonce-from-node");
    const proof = await agent.signProof(KEY, { htm: "GET", htu: "https://nonce.example:8443/x" });
    verifyProof(proof, { nonce: "nonce-from-node" });
    const other = await agent.signProof(KEY, { htm: "GET", htu: "https://elsewhere.example/" });
    assert.equal(verifyProof(other).claims.nonce, undefined);
    const key = (await agent.listKeys()).find((k) => k.label === KEY);
    assert.ok(key.nonce_origins.includes("https://nonce.example:8443"));
    await assert.rejects(agent.reportNonce(KEY, "https://nonce.example", "bad nonce"), InvalidNonceError);
  });
});

test("refusals become the class of their code", async () => {
  await withClient(async (agent) => {
    await assert.rejects(agent.signProof("no-such-key", { htm: "GET", htu: "https://a.example/" }), KeyNotFoundError);
    await assert.rejects(agent.signProof(KEY, { htm: "get", htu: "https://a.example/" }), InvalidMethodError);
    await assert.rejects(agent.generateKey(".bad label"), InvalidLabelError);
    await assert.rejects(agent.adoptKey("adopted", "pkcs11:token=none;object=k"), BackendNotConfiguredError);
    await assert.rejects(agent.request("sign_proof", { key: KEY, htm: "GET", htu: "https://a.example/", colour: "red" }), BadRequestError);
    await assert.rejects(agent.request("no_such_op"), UnknownOpError);
    const e = await agent.request("frobnicate").catch((x) => x);
    assert.ok(e instanceof DpopAgentError && e.code === "unknown_op" && e.name === "UnknownOpError");
    // The connection is still good after refusals.
    assert.equal((await agent.hello()).protocol, 1);
  });
  const future = errorFromWire("a_code_from_a_newer_agent", "something new");
  assert.ok(future instanceof DpopAgentError);
  assert.equal(future.constructor, DpopAgentError);
  assert.equal(future.code, "a_code_from_a_newer_agent");
  assert.equal(future.message, "something new");
});

test("an access token never appears in an error", async () => {
  const token = "not a token: spaces are not allowed SECRET-MARKER";
  await withClient(async (agent) => {
    const e = await agent.signProof(KEY, { htm: "GET", htu: "https://a.example/", accessToken: token }).catch((x) => x);
    assert.ok(e instanceof InvalidAccessTokenError);
    for (const text of [e.message, String(e), e.stack, JSON.stringify(e)]) {
      assert.ok(!text.includes("SECRET-MARKER"), "the error does not carry the token");
    }
  });
});

test("requests are pipelined on one connection and each reply matches its request", async () => {
  await withClient(async (agent) => {
    const htus = Array.from({ length: 40 }, (_, i) => `https://pipe.example/item/${i}`);
    const calls = htus.map((htu, i) =>
      i % 4 === 3
        ? agent.signProof("missing-key", { htm: "GET", htu }).catch((e) => e)
        : agent.signProof(KEY, { htm: "GET", htu }),
    );
    const results = await Promise.all(calls);
    results.forEach((result, i) => {
      if (i % 4 === 3) assert.ok(result instanceof KeyNotFoundError);
      else verifyProof(result, { htm: "GET", htu: htus[i] });
    });
  });
});

test("a request over the line limit is refused before it is sent; the connection stays usable", async () => {
  await withClient(async (agent) => {
    const pem = "x".repeat(64 * 1024);
    const e = await agent.importKey("too-long", pem).catch((x) => x);
    assert.ok(e instanceof LineTooLongError);
    assert.equal(e.code, "line_too_long");
    assert.equal((await agent.hello()).protocol, 1);
  });
});

test("lock refuses signing with LockedError; unlock needs the lock passphrase", async () => {
  await withClient(async (agent) => {
    await assert.rejects(agent.unlock("not locked yet"), NotLockedError);
    await agent.lock("node lock passphrase");
    assert.equal((await agent.status()).locked, true);
    await assert.rejects(agent.signProof(KEY, { htm: "GET", htu: "https://a.example/" }), LockedError);
    await assert.rejects(agent.generateKey("while-locked"), LockedError);
    // list_keys and status still answer while locked.
    assert.ok((await agent.listKeys()).length >= 1);
    const wrong = await agent.unlock("another passphrase").catch((x) => x);
    assert.ok(wrong instanceof WrongPassphraseError);
    assert.ok(!wrong.message.includes("another passphrase"));
    await agent.unlock("node lock passphrase");
    assert.equal((await agent.status()).locked, false);
    verifyProof(await agent.signProof(KEY, { htm: "GET", htu: "https://a.example/" }));
  });
});

test("a connection the agent closed while idle is opened again by the next calls", async () => {
  // This agent closes connections idle for DPOP_TEST_IDLE_MS (ten minutes in production).
  const idleMs = Number(env("DPOP_TEST_IDLE_MS"));
  const agent = await AgentClient.connect({ path: env("DPOP_TEST_IDLE_SOCK") });
  try {
    assert.equal((await agent.hello()).protocol, 1);
    await new Promise((resolve) => setTimeout(resolve, idleMs * 3));
    // Pipelined calls while the connection is opened again: each gets its own reply.
    const [hello, status, keys] = await Promise.all([agent.hello(), agent.status(), agent.listKeys()]);
    assert.equal(hello.protocol, 1);
    assert.equal(typeof status.locked, "boolean");
    assert.deepEqual(keys, []);
    await new Promise((resolve) => setTimeout(resolve, idleMs * 3));
    assert.equal((await agent.hello()).protocol, 1);
  } finally {
    agent.close();
  }
});
