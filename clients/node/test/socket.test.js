// The check made before connecting (owner and mode of the socket and its directory, as Node
// cannot read a socket's peer credentials), where the socket is looked for, and what the
// client does when what listens breaks the protocol or does not answer.

import assert from "node:assert/strict";
import { chmodSync, chownSync, mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";

import {
  AgentClient,
  AgentConnectionError,
  AgentProtocolError,
  AgentTimeoutError,
  BusyError,
  UnsafeSocketError,
  checkSocket,
  defaultSocketPath,
} from "../src/index.js";
import { lineServer, tempDir } from "./helpers.js";

/** The uid of `nobody` (Debian: 65534), a user that is neither this one nor root. */
const NOBODY = 65534;

/** A listening socket in a fresh 0700 directory, chmod 0600, as the agent makes it. */
async function goodSocket(onLine) {
  const { dir, remove } = tempDir();
  const socketDir = path.join(dir, "run");
  mkdirSync(socketDir, { mode: 0o700 });
  const socketPath = path.join(socketDir, "agent.sock");
  const server = await lineServer(socketPath, onLine);
  chmodSync(socketPath, 0o600);
  return {
    dir,
    socketDir,
    socketPath,
    cleanup: () => {
      server.close();
      remove();
    },
  };
}

async function refusal(socketPath) {
  const e = await AgentClient.connect({ path: socketPath }).then(
    (c) => {
      c.close();
      return null;
    },
    (x) => x,
  );
  assert.ok(e instanceof UnsafeSocketError, `refused with UnsafeSocketError, got ${e}`);
  assert.equal(e.code, "unsafe_socket");
  assert.ok(e.message.includes(socketPath), "the error names the path");
  return e;
}

test("the socket comes from DPOP_AUTH_SOCK, else XDG_RUNTIME_DIR", () => {
  assert.equal(defaultSocketPath({ DPOP_AUTH_SOCK: "/x/a.sock", XDG_RUNTIME_DIR: "/run/user/7" }, "linux"), "/x/a.sock");
  assert.equal(defaultSocketPath({ XDG_RUNTIME_DIR: "/run/user/7" }, "linux"), "/run/user/7/dpop-agent/agent.sock");
  assert.equal(defaultSocketPath({}, "linux"), undefined);
});

test("a 0600 socket in a 0700 directory of this user passes the check", async () => {
  const s = await goodSocket((line, socket) => {
    const { id } = JSON.parse(line);
    socket.write(JSON.stringify({ id, ok: true, protocol: 1 }) + "\n");
  });
  try {
    assert.equal(await checkSocket(s.socketPath), s.socketPath);
    const client = await AgentClient.connect({ path: s.socketPath });
    assert.equal((await client.hello()).protocol, 1);
    client.close();
  } finally {
    s.cleanup();
  }
});

test("a socket directory writable by group or others is refused", async () => {
  const s = await goodSocket();
  try {
    for (const mode of [0o777, 0o770, 0o702]) {
      chmodSync(s.socketDir, mode);
      const e = await refusal(s.socketPath);
      assert.match(e.problem, /directory .* is writable by group or others/);
    }
    // Readable and searchable by others is not a way in.
    chmodSync(s.socketDir, 0o755);
    assert.equal(await checkSocket(s.socketPath), s.socketPath);
  } finally {
    s.cleanup();
  }
});

test("a socket open to group or others is refused", async () => {
  const s = await goodSocket();
  try {
    for (const mode of [0o666, 0o660, 0o604]) {
      chmodSync(s.socketPath, mode);
      const e = await refusal(s.socketPath);
      assert.match(e.problem, /open to group or others/);
    }
  } finally {
    s.cleanup();
  }
});

test("a socket or directory owned by another user is refused (chown to nobody, as root)", async () => {
  assert.equal(process.getuid(), 0, "this test needs root, to chown to another user (CI runs as root)");
  const s = await goodSocket();
  try {
    chownSync(s.socketPath, NOBODY, NOBODY);
    let e = await refusal(s.socketPath);
    assert.match(e.problem, new RegExp(`belongs to uid ${NOBODY}`));
    chownSync(s.socketPath, 0, 0);
    chownSync(s.socketDir, NOBODY, NOBODY);
    e = await refusal(s.socketPath);
    assert.match(e.problem, new RegExp(`directory .* belongs to uid ${NOBODY}`));
  } finally {
    s.cleanup();
  }
});

test("a link to a socket is checked where it points; a file that is no socket is refused", async () => {
  const s = await goodSocket();
  const { symlinkSync } = await import("node:fs");
  try {
    const link = path.join(s.dir, "link.sock");
    symlinkSync(s.socketPath, link);
    assert.equal(await checkSocket(link), s.socketPath);
    chmodSync(s.socketDir, 0o777);
    const e = await refusal(s.socketPath);
    assert.equal(e.path, s.socketPath);
    chmodSync(s.socketDir, 0o700);
    const file = path.join(s.socketDir, "plain");
    writeFileSync(file, "", { mode: 0o600 });
    assert.match((await refusal(file)).problem, /not a socket/);
  } finally {
    s.cleanup();
  }
});

test("no socket at the path is a connection error", async () => {
  const { dir, remove } = tempDir();
  try {
    const missing = path.join(dir, "absent.sock");
    const e = await AgentClient.connect({ path: missing }).catch((x) => x);
    assert.ok(e instanceof AgentConnectionError);
    assert.equal(e.code, "connection_failed");
  } finally {
    remove();
  }
});

test("a reply with another id fails the call and closes the connection", async () => {
  const s = await goodSocket((line, socket) => {
    const { id } = JSON.parse(line);
    socket.write(JSON.stringify({ id: id + 100, ok: true }) + "\n");
  });
  const client = await AgentClient.connect({ path: s.socketPath });
  try {
    const e = await client.hello().catch((x) => x);
    assert.ok(e instanceof AgentProtocolError);
    assert.match(e.message, /does not match/);
    await assert.rejects(client.status(), AgentProtocolError);
  } finally {
    client.close();
    s.cleanup();
  }
});

test("no reply within the timeout is AgentTimeoutError, and every waiting call fails", async () => {
  const s = await goodSocket(() => {});
  try {
    const client = await AgentClient.connect({ path: s.socketPath, timeoutMs: 200 });
    const started = Date.now();
    const [a, b] = await Promise.all([
      client.hello().catch((x) => x),
      client.status().catch((x) => x),
    ]);
    assert.ok(a instanceof AgentTimeoutError && b instanceof AgentTimeoutError);
    assert.equal(a.code, "timeout");
    assert.ok(Date.now() - started < 5000);
  } finally {
    s.cleanup();
  }
});

test("an unasked busy line (id null) fails the call with BusyError", async () => {
  const s = await goodSocket((_line, socket) => {
    socket.end(JSON.stringify({ id: null, ok: false, error: { code: "busy", message: "too many connections" } }) + "\n");
  });
  try {
    const client = await AgentClient.connect({ path: s.socketPath });
    await assert.rejects(client.hello(), BusyError);
  } finally {
    s.cleanup();
  }
});
