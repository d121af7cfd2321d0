// What the tests share: the world the Rust e2e module started (tests/tests/e2e/client_node.rs
// passes it in environment variables; a missing one fails the test, never skips it), a
// proof verifier on node:crypto, and throw-away socket directories.

import assert from "node:assert/strict";
import { createHash, createPublicKey, verify } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";

/** The environment variable `name`; throws (the test fails) when it is unset. */
export function env(name) {
  const value = process.env[name];
  assert.ok(
    value,
    `${name} is not set: these tests run from the Rust e2e module client_node (cargo test -p dpop-tests --test e2e client_node::), which starts the agent and servers`,
  );
  return value;
}

/** base64url without padding. */
export function b64url(/** @type {Buffer | string} */ bytes) {
  return Buffer.from(bytes).toString("base64url");
}

/**
 * Verifies a compact DPoP proof with node:crypto against its own `jwk` (ES256) and returns
 * its header and claims; asserts `typ`, and `htm`, `htu`, `ath` and `nonce` when given.
 */
export function verifyProof(proof, { htm, htu, accessToken, nonce } = {}) {
  const [h, c, s] = proof.split(".");
  const header = JSON.parse(Buffer.from(h, "base64url").toString());
  const claims = JSON.parse(Buffer.from(c, "base64url").toString());
  assert.equal(header.typ, "dpop+jwt");
  assert.equal(header.alg, "ES256");
  const key = createPublicKey({ key: header.jwk, format: "jwk" });
  const ok = verify(
    "sha256",
    Buffer.from(`${h}.${c}`),
    { key, dsaEncoding: "ieee-p1363" },
    Buffer.from(s, "base64url"),
  );
  assert.ok(ok, "the proof's signature verifies with its jwk");
  assert.ok(Math.abs(claims.iat - Date.now() / 1000) < 60, "iat is now");
  assert.match(claims.jti, /^.{16,}$/);
  if (htm !== undefined) assert.equal(claims.htm, htm);
  if (htu !== undefined) assert.equal(claims.htu, htu);
  if (accessToken !== undefined) {
    assert.equal(claims.ath, b64url(createHash("sha256").update(accessToken).digest()));
  }
  if (nonce !== undefined) assert.equal(claims.nonce, nonce);
  return { header, claims };
}

/** A new directory (mode 0700), removed by the returned function. */
export function tempDir() {
  const dir = mkdtempSync(path.join(os.tmpdir(), "dpop-node-test-"));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/**
 * A Unix socket server at `socketPath` whose connections get `onLine(line, socket)` for each
 * request line: a stand-in for an agent that misbehaves (no real agent stalls or answers
 * with the wrong id).
 */
export async function lineServer(socketPath, onLine = () => {}) {
  const sockets = new Set();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    let buffered = "";
    socket.on("data", (chunk) => {
      buffered += chunk;
      let nl;
      while ((nl = buffered.indexOf("\n")) !== -1) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        onLine(line, socket);
      }
    });
    socket.on("error", () => {});
  });
  await new Promise((resolve) => server.listen(socketPath, resolve));
  // close() also ends open connections, so that a failed test does not keep the process up.
  const close = server.close.bind(server);
  server.close = (callback) => {
    for (const socket of sockets) socket.destroy();
    return close(callback);
  };
  return server;
}
