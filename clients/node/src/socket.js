// Where the agent listens, and the check made before connecting to it. Node cannot read a
// Unix socket's peer credentials (no SO_PEERCRED / getpeereid in node:net), so the client
// cannot ask the kernel who listens, as the Rust client does. It checks instead that only
// this user (or root) could have put a listener there: the socket file and its directory
// belong to this user or root, the directory is writable by nobody else, and the socket is
// not open to group or others (the agent makes them 0700 and 0600).

import { execFileSync } from "node:child_process";
import { realpath, stat } from "node:fs/promises";
import path from "node:path";

import { AgentConnectionError, UnsafeSocketError } from "./errors.js";

/**
 * The socket to use: `DPOP_AUTH_SOCK` when set, else the agent's default,
 * `$XDG_RUNTIME_DIR/dpop-agent/agent.sock`; on Windows the user's pipe
 * `\\.\pipe\dpop-agent-<SID>`. Undefined when there is no default (no `XDG_RUNTIME_DIR`).
 * @param {NodeJS.ProcessEnv} [env]
 * @param {NodeJS.Platform} [platform]
 * @returns {string | undefined}
 */
export function defaultSocketPath(env = process.env, platform = process.platform) {
  if (env.DPOP_AUTH_SOCK) return env.DPOP_AUTH_SOCK;
  if (platform === "win32") return `\\\\.\\pipe\\dpop-agent-${windowsUserSid()}`;
  if (env.XDG_RUNTIME_DIR) return path.join(env.XDG_RUNTIME_DIR, "dpop-agent", "agent.sock");
  return undefined;
}

/** The user's SID (`S-1-5-21-...`), as `whoami /user` prints it. */
function windowsUserSid() {
  const out = execFileSync("whoami", ["/user", "/fo", "csv", "/nh"], {
    encoding: "utf8",
    windowsHide: true,
  });
  const sid = out.trim().split(",").pop()?.replace(/"/g, "");
  if (!sid || !/^S-1-[0-9-]+$/.test(sid)) {
    throw new AgentConnectionError("", "cannot find this user's SID for the agent's pipe name");
  }
  return sid;
}

/** @param {number} mode */
function octal(mode) {
  return "0" + (mode & 0o7777).toString(8).padStart(3, "0");
}

/**
 * Checks the socket at `socketPath` and its directory before anything is sent (see the
 * header); returns the resolved path to connect to, so that the path checked is the path
 * used even if a link in `socketPath` changes afterwards. Throws UnsafeSocketError naming
 * the path and the problem, or AgentConnectionError when there is no socket.
 * @param {string} socketPath
 * @returns {Promise<string>}
 */
export async function checkSocket(socketPath) {
  let real;
  try {
    real = await realpath(socketPath);
  } catch (cause) {
    throw new AgentConnectionError(socketPath, `no agent socket at ${socketPath}`, { cause });
  }
  const me = process.getuid?.();
  if (me === undefined) return real;
  const owners = me === 0 ? "root" : `this user (uid ${me}) or root`;
  const trusted = (/** @type {number} */ uid) => uid === me || uid === 0;

  const dir = path.dirname(real);
  const dirStat = await stat(dir);
  if (!trusted(dirStat.uid)) {
    throw new UnsafeSocketError(
      real,
      `its directory ${dir} belongs to uid ${dirStat.uid}, not to ${owners}`,
    );
  }
  if (dirStat.mode & 0o022) {
    throw new UnsafeSocketError(
      real,
      `its directory ${dir} is writable by group or others (mode ${octal(dirStat.mode)}; 0700 expected)`,
    );
  }
  const sockStat = await stat(real);
  if (!sockStat.isSocket()) {
    throw new UnsafeSocketError(real, "it is not a socket");
  }
  if (!trusted(sockStat.uid)) {
    throw new UnsafeSocketError(real, `it belongs to uid ${sockStat.uid}, not to ${owners}`);
  }
  if (sockStat.mode & 0o077) {
    throw new UnsafeSocketError(
      real,
      `it is open to group or others (mode ${octal(sockStat.mode)}; 0600 expected)`,
    );
  }
  return real;
}
