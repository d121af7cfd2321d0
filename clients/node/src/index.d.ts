// Types of dpop-agent-client (hand-written; test/types.test.js checks them with tsc against
// test/types/example.ts). Objects from the agent are as docs/protocol.md gives them: wire
// names (snake_case), members this version does not know passed through.

// ---- errors ----

/** The base class of every error of this package: match on `.code`, never on `.message`. */
export class DpopAgentError extends Error {
  constructor(code: string, message: string, options?: ErrorOptions);
  /** The agent's error code, or one of this side's: unsafe_socket, connection_failed,
   * protocol_error, timeout. A code unknown to this package is kept as it came. */
  readonly code: string;
}

/** A class per agent error code; `.code` on the class and on each instance. */
export interface AgentErrorClass<C extends string> {
  new (message: string, options?: ErrorOptions): DpopAgentError & { readonly code: C };
  readonly code: C;
}

export const MalformedJsonError: AgentErrorClass<"malformed_json">;
export const LineTooLongError: AgentErrorClass<"line_too_long">;
export const BadRequestError: AgentErrorClass<"bad_request">;
export const UnknownOpError: AgentErrorClass<"unknown_op">;
export const InvalidLabelError: AgentErrorClass<"invalid_label">;
export const KeyNotFoundError: AgentErrorClass<"key_not_found">;
export const KeyExistsError: AgentErrorClass<"key_exists">;
export const InvalidUrlError: AgentErrorClass<"invalid_url">;
export const InvalidMethodError: AgentErrorClass<"invalid_method">;
export const InvalidAccessTokenError: AgentErrorClass<"invalid_access_token">;
export const InvalidNonceError: AgentErrorClass<"invalid_nonce">;
export const InvalidKeyError: AgentErrorClass<"invalid_key">;
export const InvalidUriError: AgentErrorClass<"invalid_uri">;
export const AmbiguousKeyError: AgentErrorClass<"ambiguous_key">;
export const UnsupportedAlgorithmError: AgentErrorClass<"unsupported_algorithm">;
export const UnknownBackendError: AgentErrorClass<"unknown_backend">;
export const BackendNotConfiguredError: AgentErrorClass<"backend_not_configured">;
export const UnsupportedError: AgentErrorClass<"unsupported">;
export const PermissionDeniedError: AgentErrorClass<"permission_denied">;
export const WrongPassphraseError: AgentErrorClass<"wrong_passphrase">;
export const PinIncorrectError: AgentErrorClass<"pin_incorrect">;
export const PinLockedError: AgentErrorClass<"pin_locked">;
export const TokenNotPresentError: AgentErrorClass<"token_not_present">;
export const BackendError: AgentErrorClass<"backend_error">;
export const InternalError: AgentErrorClass<"internal">;
export const BusyError: AgentErrorClass<"busy">;
export const OriginNotAllowedError: AgentErrorClass<"origin_not_allowed">;
export const ClientNotAllowedError: AgentErrorClass<"client_not_allowed">;
export const KeyExpiredError: AgentErrorClass<"key_expired">;
export const ConfirmDeniedError: AgentErrorClass<"confirm_denied">;
export const InvalidPolicyError: AgentErrorClass<"invalid_policy">;
export const LockedError: AgentErrorClass<"locked">;
export const NotLockedError: AgentErrorClass<"not_locked">;

/** The socket or its directory fails the owner and mode check; nothing was sent. */
export class UnsafeSocketError extends DpopAgentError {
  constructor(path: string, problem: string);
  readonly code: "unsafe_socket";
  /** The socket checked (links resolved). */
  readonly path: string;
  /** What is wrong with it. */
  readonly problem: string;
}

/** No agent at `.path`, or the connection broke (`.cause`). */
export class AgentConnectionError extends DpopAgentError {
  constructor(path: string, message: string, options?: ErrorOptions);
  readonly code: "connection_failed";
  readonly path: string;
}

/** A reply that breaks the protocol; the connection is closed. */
export class AgentProtocolError extends DpopAgentError {
  constructor(message: string);
  readonly code: "protocol_error";
}

/** No reply within the client's timeout; the connection is closed. */
export class AgentTimeoutError extends DpopAgentError {
  constructor(message: string);
  readonly code: "timeout";
}

/** The error for an agent's `{code, message}`: its class, or a DpopAgentError keeping the code. */
export function errorFromWire(code: unknown, message: unknown): DpopAgentError;

/** The agent codes this package has a class for. */
export const AGENT_ERROR_CODES: readonly string[];

// ---- wire objects ----

export type Algorithm = "ES256" | "ES384" | "EdDSA" | "RS256" | "PS256" | (string & {});
export type Backend = "software" | "pkcs11" | "tpm" | (string & {});

/** A key policy (docs/protocol.md, Key policies). */
export interface KeyPolicy {
  allow_origins?: string[];
  allow_clients?: string[];
  /** Unix seconds. */
  expires_at?: number;
  confirm?: boolean;
  confirm_remember_secs?: number;
}

/** A public JWK. */
export interface Jwk {
  kty: string;
  crv?: string;
  x?: string;
  y?: string;
  n?: string;
  e?: string;
  [member: string]: unknown;
}

/** A key description. */
export interface KeyDescription {
  label: string;
  alg: Algorithm;
  backend: Backend;
  jwk: Jwk;
  /** RFC 7638 thumbprint. */
  jkt: string;
  persistent: boolean;
  location?: string;
  sign_only?: boolean;
  other_uses?: string[];
  /** list_keys only: origins the agent holds a server nonce for. */
  nonce_origins?: string[];
  policy?: KeyPolicy;
  [member: string]: unknown;
}

export interface HelloReply {
  protocol: number;
  agent: string;
  backends: Backend[];
  compiled_backends?: Backend[];
  software_persistent: boolean;
  [member: string]: unknown;
}

export interface StatusReply {
  agent: string;
  protocol: number;
  pid: number;
  backends: Backend[];
  locked: boolean;
  keys: number;
  software_persistent: boolean;
  [member: string]: unknown;
}

export interface NewKeyOptions {
  backend?: Backend;
  alg?: Algorithm;
  policy?: KeyPolicy;
}

export interface ProofRequest {
  /** The upper-case HTTP method. */
  htm: string;
  /** The request URL (the agent drops query and fragment). */
  htu: string;
  /** Binds the proof to this token (`ath`). */
  accessToken?: string;
  /** base64url SHA-256 of the token, instead of `accessToken`. */
  ath?: string;
  /** Instead of the nonce stored for the URL's origin. */
  nonce?: string;
}

// ---- the client ----

export const MAX_LINE: number;
export const MAX_REPLY: number;
export const DEFAULT_TIMEOUT_MS: number;
export const DEFAULT_CONNECT_TIMEOUT_MS: number;

export interface ConnectOptions {
  /** The socket (default: defaultSocketPath()). */
  path?: string;
  /** How long a reply may take (default 75 s: a confirm question waits up to 60 s). */
  timeoutMs?: number;
  /** How long connecting may take (default 5 s). */
  connectTimeoutMs?: number;
}

/** One connection to the agent; calls may overlap (pipelining). */
export class AgentClient {
  private constructor();
  /** Checks the socket (Unix: owner and mode), then connects. */
  static connect(options?: ConnectOptions): Promise<AgentClient>;
  /** The socket connected to (links resolved). */
  readonly path: string;
  /** Any op: the reply's fields without `id` and `ok`; a refusal throws its class. */
  request(op: string, fields?: Record<string, unknown>): Promise<Record<string, any>>;
  close(): void;
  hello(): Promise<HelloReply>;
  listKeys(): Promise<KeyDescription[]>;
  generateKey(label: string, options?: NewKeyOptions): Promise<KeyDescription>;
  importKey(label: string, pem: string, options?: NewKeyOptions): Promise<KeyDescription>;
  adoptKey(label: string, uri: string, options?: NewKeyOptions): Promise<KeyDescription>;
  deleteKey(label: string): Promise<KeyDescription>;
  /** The compact JWT. */
  signProof(key: string, request: ProofRequest): Promise<string>;
  reportNonce(key: string, origin: string, nonce: string): Promise<void>;
  setPolicy(key: string, policy: KeyPolicy): Promise<KeyDescription>;
  status(): Promise<StatusReply>;
  lock(passphrase: string): Promise<void>;
  unlock(passphrase: string): Promise<void>;
}

/** `DPOP_AUTH_SOCK`, else `$XDG_RUNTIME_DIR/dpop-agent/agent.sock` (Windows: the user's pipe). */
export function defaultSocketPath(
  env?: Record<string, string | undefined>,
  platform?: string,
): string | undefined;

/** The owner and mode check; resolves to the path to connect to. */
export function checkSocket(socketPath: string): Promise<string>;

// ---- fetch ----

export interface DpopFetchOptions {
  /** The agent's key label. */
  key: string;
  /** The access token; none for a token endpoint (the request's own Authorization stays). */
  token?: string;
  /** An open client to reuse (default: one per call). */
  agent?: AgentClient;
  /** The fetch to use (default: globalThis.fetch). */
  fetch?: (request: Request) => Promise<Response>;
  /** Each response before the retry decision (no secrets in it). */
  onResponse?: (event: { attempt: 1 | 2; status: number; nonce: string | null }) => void;
}

/** fetch with a DPoP proof, the token, nonces reported, one use_dpop_nonce retry, redirects not followed. */
export function dpopFetch(
  input: string | URL | Request,
  init: (RequestInit & { redirect?: "manual" | "error"; duplex?: "half" }) | undefined,
  options: DpopFetchOptions,
): Promise<Response>;

/** Whether a response asks for a nonce (a DPoP 401, or a small JSON 400, saying use_dpop_nonce). */
export function isNonceChallenge(response: Response): Promise<boolean>;

/** The challenges of a WWW-Authenticate value; parameter names lower-cased. */
export function parseChallenges(header: string): { scheme: string; params: Record<string, string> }[];
