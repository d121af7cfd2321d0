// The agent's client: JSON Lines over node:net (docs/protocol.md). One connection per
// AgentClient; requests may be pipelined (each call writes its line at once, and replies come
// back in request order, so they are matched to a FIFO of waiting calls and each reply's `id`
// is checked against its request's). A reply that breaks the protocol, or a timeout, closes
// the connection and fails every waiting call: after that, the order of replies cannot be
// trusted. A connection the agent closed while no call waited (it closes connections idle
// for ten minutes, and a restarted agent's are gone) is opened again, and its socket checked
// again, by the next call.

import net from "node:net";

import {
  AgentConnectionError,
  AgentProtocolError,
  AgentTimeoutError,
  DpopAgentError,
  LineTooLongError,
  errorFromWire,
} from "./errors.js";
import { checkSocket, defaultSocketPath } from "./socket.js";

/** A request line may be at most this long, newline included (the agent's limit). */
export const MAX_LINE = 64 * 1024;
/** A reply line may be at most this long (as the Rust client allows). */
export const MAX_REPLY = 4 * 1024 * 1024;
/** Default time a reply may take: a `confirm` question waits up to 60 s for the user. */
export const DEFAULT_TIMEOUT_MS = 75_000;
/** Default time connecting may take. */
export const DEFAULT_CONNECT_TIMEOUT_MS = 5_000;

/**
 * @typedef {object} ConnectOptions
 * @property {string} [path] the socket (default: defaultSocketPath())
 * @property {number} [timeoutMs] how long a reply may take
 * @property {number} [connectTimeoutMs] how long connecting may take
 */

export class AgentClient {
  /** The connection; null after the agent closed it while idle. */
  /** @type {net.Socket | null} */
  #socket = null;
  /** @type {{ id: number, op: string, resolve: (v: any) => void, reject: (e: Error) => void, timer: NodeJS.Timeout }[]} */
  #waiting = [];
  /** @type {Buffer[]} */
  #chunks = [];
  #buffered = 0;
  #nextId = 1;
  #timeoutMs;
  /** @type {Error | null} */
  #failed = null;

  /** @type {ConnectOptions} */
  #options;
  /** Lines written while the connection is being opened again, sent once it is. */
  /** @type {string[] | null} */
  #queued = null;

  /**
   * Use AgentClient.connect.
   * @param {net.Socket} socket
   * @param {string} path
   * @param {ConnectOptions} options
   */
  constructor(socket, path, options) {
    this.path = path;
    this.#options = options;
    this.#timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.#attach(socket);
  }

  /** @param {net.Socket} socket */
  #attach(socket) {
    this.#socket = socket;
    const path = this.path;
    socket.on("data", (chunk) => {
      if (socket === this.#socket) this.#onData(chunk);
    });
    socket.on("error", (cause) => {
      if (socket !== this.#socket || this.#waiting.length === 0) return; // "close" follows
      this.#fail(new AgentConnectionError(path, `the connection to the agent failed: ${cause.message}`, { cause }));
    });
    socket.on("close", () => {
      if (socket !== this.#socket) return;
      if (this.#waiting.length === 0 && !this.#failed) {
        // The agent closed an idle connection (after ten minutes, or it restarted): the
        // next request opens a new one, checked like the first. Nothing was lost.
        this.#socket = null;
        this.#chunks = [];
        this.#buffered = 0;
        return;
      }
      this.#fail(new AgentConnectionError(path, "the agent closed the connection"));
    });
  }

  /**
   * Connects to the agent after checking its socket (Unix; see checkSocket).
   * @param {ConnectOptions} [options]
   * @returns {Promise<AgentClient>}
   */
  static async connect(options = {}) {
    const { socket, target } = await AgentClient.#open(options);
    return new AgentClient(socket, target, options);
  }

  /**
   * The socket's path checked, then a connection to it.
   * @param {ConnectOptions} options
   * @returns {Promise<{ socket: net.Socket, target: string }>}
   */
  static async #open(options) {
    const requested = options.path ?? defaultSocketPath();
    if (!requested) {
      throw new AgentConnectionError(
        "",
        "no agent socket: DPOP_AUTH_SOCK and XDG_RUNTIME_DIR are both unset",
      );
    }
    const target = process.platform === "win32" ? requested : await checkSocket(requested);
    const connectTimeoutMs = options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    const socket = await new Promise((resolve, reject) => {
      const s = net.createConnection(target);
      const timer = setTimeout(() => {
        s.destroy();
        reject(new AgentTimeoutError(`connecting to the agent at ${target} took over ${connectTimeoutMs} ms`));
      }, connectTimeoutMs);
      s.once("connect", () => {
        clearTimeout(timer);
        s.removeAllListeners("error");
        resolve(s);
      });
      s.once("error", (cause) => {
        clearTimeout(timer);
        reject(new AgentConnectionError(target, `cannot connect to the agent at ${target}: ${cause.message}`, { cause }));
      });
    });
    return { socket, target };
  }

  /** Writes `line`, opening the connection again first when the agent closed it. */
  #send(/** @type {string} */ line) {
    if (this.#socket) {
      this.#socket.write(line);
      return;
    }
    if (this.#queued) {
      this.#queued.push(line);
      return;
    }
    this.#queued = [line];
    AgentClient.#open({ ...this.#options, path: this.path }).then(
      ({ socket }) => {
        const lines = this.#queued ?? [];
        this.#queued = null;
        if (this.#failed) {
          socket.destroy();
          return;
        }
        this.#attach(socket);
        for (const queued of lines) socket.write(queued);
      },
      (error) => {
        this.#queued = null;
        // The calls that waited for this connection fail; a later call tries again.
        for (const call of this.#waiting.splice(0)) {
          clearTimeout(call.timer);
          call.reject(error);
        }
      },
    );
  }

  /**
   * Sends one request and returns the reply's fields (without `id` and `ok`); an error reply
   * throws the class of its code. Calls may overlap (pipelining).
   * @param {string} op
   * @param {Record<string, unknown>} [fields]
   * @returns {Promise<Record<string, any>>}
   */
  request(op, fields = {}) {
    if (this.#failed) return Promise.reject(this.#failed);
    const id = this.#nextId++;
    const line = JSON.stringify({ ...fields, id, op }) + "\n";
    if (Buffer.byteLength(line) > MAX_LINE) {
      // Refused here rather than by the agent: the same code, and nothing of it is sent.
      return Promise.reject(
        new LineTooLongError(`the ${op} request is over ${MAX_LINE} bytes; the agent would refuse it`),
      );
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#fail(new AgentTimeoutError(`no reply from the agent to ${op} within ${this.#timeoutMs} ms`));
      }, this.#timeoutMs);
      this.#waiting.push({ id, op, resolve, reject, timer });
      this.#send(line);
    });
  }

  /** Closes the connection; calls still waiting fail. */
  close() {
    this.#fail(new AgentConnectionError(this.path, "the client was closed"));
  }

  /** @param {Buffer} chunk */
  #onData(chunk) {
    let start = 0;
    for (let nl = chunk.indexOf(10); nl !== -1; nl = chunk.indexOf(10, start)) {
      this.#chunks.push(chunk.subarray(start, nl));
      const line = Buffer.concat(this.#chunks).toString("utf8");
      this.#chunks = [];
      this.#buffered = 0;
      start = nl + 1;
      this.#onLine(line);
      if (this.#failed) return;
    }
    if (start < chunk.length) {
      this.#chunks.push(chunk.subarray(start));
      this.#buffered += chunk.length - start;
      if (this.#buffered > MAX_REPLY) {
        this.#fail(new AgentProtocolError(`a reply line over ${MAX_REPLY} bytes`));
      }
    }
  }

  /** @param {string} line */
  #onLine(line) {
    if (line.trim() === "") return;
    let reply;
    try {
      reply = JSON.parse(line);
    } catch {
      this.#fail(new AgentProtocolError("a reply that is not JSON"));
      return;
    }
    const call = this.#waiting.shift();
    if (!call) {
      // `busy` comes unasked, with id null, before the agent closes the connection.
      const unasked =
        reply?.ok === false ? errorFromWire(reply.error?.code, reply.error?.message) : null;
      this.#fail(unasked ?? new AgentProtocolError("a reply to no request"));
      return;
    }
    clearTimeout(call.timer);
    if (typeof reply !== "object" || reply === null || typeof reply.ok !== "boolean") {
      call.reject(new AgentProtocolError("a reply without ok"));
      this.#fail(new AgentProtocolError("a reply without ok"));
      return;
    }
    // An error about a line the agent could not parse has id null (malformed_json, busy).
    if (reply.id !== call.id && !(reply.ok === false && reply.id === null)) {
      const error = new AgentProtocolError(
        `reply id ${JSON.stringify(reply.id)} does not match request id ${call.id} (${call.op})`,
      );
      call.reject(error);
      this.#fail(error);
      return;
    }
    if (!reply.ok) {
      call.reject(errorFromWire(reply.error?.code, reply.error?.message));
      return;
    }
    const { id: _id, ok: _ok, ...result } = reply;
    call.resolve(result);
  }

  /** Fails every waiting call with `error` and closes the connection, once. */
  #fail(/** @type {Error} */ error) {
    if (this.#failed) return;
    this.#failed = error;
    this.#socket?.destroy();
    for (const call of this.#waiting.splice(0)) {
      clearTimeout(call.timer);
      call.reject(error);
    }
  }

  // ---- the ops of docs/protocol.md, one method each ----

  /** @returns {Promise<Record<string, any>>} `protocol`, `agent`, `backends`, ... */
  hello() {
    return this.request("hello");
  }

  /** @returns {Promise<any[]>} the key descriptions, sorted by label */
  async listKeys() {
    return (await this.request("list_keys")).keys;
  }

  /**
   * @param {string} label
   * @param {{ backend?: string, alg?: string, policy?: object }} [options]
   */
  async generateKey(label, options = {}) {
    return (await this.request("generate_key", { label, ...defined(options) })).key;
  }

  /**
   * @param {string} label
   * @param {string} pem PKCS#8, SEC1 or PKCS#1 PEM text
   * @param {{ backend?: string, alg?: string, policy?: object }} [options]
   */
  async importKey(label, pem, options = {}) {
    return (await this.request("import_key", { label, pem, ...defined(options) })).key;
  }

  /**
   * @param {string} label
   * @param {string} uri an RFC 7512 PKCS#11 URI or `tpm:handle=0x81XXXXXX`
   * @param {{ backend?: string, alg?: string, policy?: object }} [options]
   */
  async adoptKey(label, uri, options = {}) {
    return (await this.request("adopt_key", { label, uri, ...defined(options) })).key;
  }

  /** @param {string} label @returns the deleted key's description */
  async deleteKey(label) {
    return (await this.request("delete_key", { label })).key;
  }

  /**
   * A proof for one request: `htm` the upper-case method, `htu` the URL (the agent drops
   * query and fragment), `accessToken` or `ath` to bind it to a token, `nonce` to use
   * instead of the one stored for the URL's origin.
   * @param {string} key
   * @param {{ htm: string, htu: string, accessToken?: string, ath?: string, nonce?: string }} request
   * @returns {Promise<string>} the compact JWT
   */
  async signProof(key, { htm, htu, accessToken, ath, nonce }) {
    const fields = defined({ key, htm, htu, access_token: accessToken, ath, nonce });
    return (await this.request("sign_proof", fields)).proof;
  }

  /**
   * Hands a server's `DPoP-Nonce` to the agent, for `origin` (any URL of it).
   * @param {string} key @param {string} origin @param {string} nonce
   * @returns {Promise<void>}
   */
  async reportNonce(key, origin, nonce) {
    await this.request("report_nonce", { key, origin, nonce });
  }

  /** @param {string} key @param {object} policy `{}` removes it */
  async setPolicy(key, policy) {
    return (await this.request("set_policy", { key, policy })).key;
  }

  /** @returns {Promise<Record<string, any>>} `agent`, `protocol`, `pid`, `locked`, ... */
  status() {
    return this.request("status");
  }

  /** @param {string} passphrase @returns {Promise<void>} */
  async lock(passphrase) {
    await this.request("lock", { passphrase });
  }

  /** @param {string} passphrase @returns {Promise<void>} */
  async unlock(passphrase) {
    await this.request("unlock", { passphrase });
  }
}

/** `object` without its undefined members: an optional field is left out, never sent as
 * `null`, which the agent refuses where it expects a string. */
function defined(/** @type {Record<string, unknown>} */ object) {
  return Object.fromEntries(Object.entries(object).filter(([, v]) => v !== undefined));
}

export { DpopAgentError };
