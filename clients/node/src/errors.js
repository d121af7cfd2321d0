// Typed errors. An agent refusal ({"ok": false, "error": {"code", "message"}}) becomes the
// class of its code (docs/protocol.md, "Error codes"); a code this package does not know stays
// a DpopAgentError with that code, so a newer agent's codes still reach the caller. Errors
// that happen on this side (the socket check, the connection, a reply that breaks the
// protocol, a timeout) have codes of their own that the agent never sends.

/** The base class of every error of this package: match on `.code`, never on `.message`. */
export class DpopAgentError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {ErrorOptions} [options]
   */
  constructor(code, message, options) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** One class per error code of the agent, in the order of docs/protocol.md. */
const AGENT_CODES = {
  malformed_json: "MalformedJsonError",
  line_too_long: "LineTooLongError",
  bad_request: "BadRequestError",
  unknown_op: "UnknownOpError",
  invalid_label: "InvalidLabelError",
  key_not_found: "KeyNotFoundError",
  key_exists: "KeyExistsError",
  invalid_url: "InvalidUrlError",
  invalid_method: "InvalidMethodError",
  invalid_access_token: "InvalidAccessTokenError",
  invalid_nonce: "InvalidNonceError",
  invalid_key: "InvalidKeyError",
  invalid_uri: "InvalidUriError",
  ambiguous_key: "AmbiguousKeyError",
  unsupported_algorithm: "UnsupportedAlgorithmError",
  unknown_backend: "UnknownBackendError",
  backend_not_configured: "BackendNotConfiguredError",
  unsupported: "UnsupportedError",
  permission_denied: "PermissionDeniedError",
  wrong_passphrase: "WrongPassphraseError",
  pin_incorrect: "PinIncorrectError",
  pin_locked: "PinLockedError",
  token_not_present: "TokenNotPresentError",
  backend_error: "BackendError",
  internal: "InternalError",
  busy: "BusyError",
  origin_not_allowed: "OriginNotAllowedError",
  client_not_allowed: "ClientNotAllowedError",
  key_expired: "KeyExpiredError",
  confirm_denied: "ConfirmDeniedError",
  invalid_policy: "InvalidPolicyError",
  locked: "LockedError",
  not_locked: "NotLockedError",
};

/** Makes a subclass of DpopAgentError for one code, named `name`. */
function codeClass(code, name) {
  // A computed class name through an object literal, so stack traces show the real name.
  const cls = {
    [name]: class extends DpopAgentError {
      /** @param {string} message @param {ErrorOptions} [options] */
      constructor(message, options) {
        super(code, message, options);
      }
    },
  }[name];
  cls.code = code;
  return cls;
}

const classes = Object.fromEntries(
  Object.entries(AGENT_CODES).map(([code, name]) => [code, codeClass(code, name)]),
);

export const MalformedJsonError = classes.malformed_json;
export const LineTooLongError = classes.line_too_long;
export const BadRequestError = classes.bad_request;
export const UnknownOpError = classes.unknown_op;
export const InvalidLabelError = classes.invalid_label;
export const KeyNotFoundError = classes.key_not_found;
export const KeyExistsError = classes.key_exists;
export const InvalidUrlError = classes.invalid_url;
export const InvalidMethodError = classes.invalid_method;
export const InvalidAccessTokenError = classes.invalid_access_token;
export const InvalidNonceError = classes.invalid_nonce;
export const InvalidKeyError = classes.invalid_key;
export const InvalidUriError = classes.invalid_uri;
export const AmbiguousKeyError = classes.ambiguous_key;
export const UnsupportedAlgorithmError = classes.unsupported_algorithm;
export const UnknownBackendError = classes.unknown_backend;
export const BackendNotConfiguredError = classes.backend_not_configured;
export const UnsupportedError = classes.unsupported;
export const PermissionDeniedError = classes.permission_denied;
export const WrongPassphraseError = classes.wrong_passphrase;
export const PinIncorrectError = classes.pin_incorrect;
export const PinLockedError = classes.pin_locked;
export const TokenNotPresentError = classes.token_not_present;
export const BackendError = classes.backend_error;
export const InternalError = classes.internal;
export const BusyError = classes.busy;
export const OriginNotAllowedError = classes.origin_not_allowed;
export const ClientNotAllowedError = classes.client_not_allowed;
export const KeyExpiredError = classes.key_expired;
export const ConfirmDeniedError = classes.confirm_denied;
export const InvalidPolicyError = classes.invalid_policy;
export const LockedError = classes.locked;
export const NotLockedError = classes.not_locked;

/**
 * The socket (or its directory) fails the ownership and mode check made before connecting:
 * someone else could be listening there. `.path` is what was checked, `.problem` says why.
 */
export class UnsafeSocketError extends DpopAgentError {
  /** @param {string} path @param {string} problem */
  constructor(path, problem) {
    super("unsafe_socket", `refusing the agent socket ${path}: ${problem}`);
    this.path = path;
    this.problem = problem;
  }
}

/** No agent could be reached at `.path`, or the connection broke; `.cause` has the reason. */
export class AgentConnectionError extends DpopAgentError {
  /** @param {string} path @param {string} message @param {ErrorOptions} [options] */
  constructor(path, message, options) {
    super("connection_failed", message, options);
    this.path = path;
  }
}

/** A reply that breaks the protocol (not JSON, an `id` that does not match, too long). */
export class AgentProtocolError extends DpopAgentError {
  /** @param {string} message */
  constructor(message) {
    super("protocol_error", message);
  }
}

/** No reply within the client's timeout; the connection is closed. */
export class AgentTimeoutError extends DpopAgentError {
  /** @param {string} message */
  constructor(message) {
    super("timeout", message);
  }
}

/**
 * The error for an agent's `{"code", "message"}`: the class of a known code, else a
 * DpopAgentError that keeps the code.
 * @param {unknown} code
 * @param {unknown} message
 * @returns {DpopAgentError}
 */
export function errorFromWire(code, message) {
  const text = typeof message === "string" ? message : "";
  if (typeof code !== "string" || code === "") {
    return new AgentProtocolError("an error reply without a code");
  }
  const cls = Object.hasOwn(classes, code) ? classes[code] : undefined;
  return cls ? new cls(text) : new DpopAgentError(code, text);
}

/** The agent's error codes this package has a class for. */
export const AGENT_ERROR_CODES = Object.freeze(Object.keys(AGENT_CODES));
