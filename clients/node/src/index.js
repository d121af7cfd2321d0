// dpop-agent-client: the dpop-agent's client for Node (ESM, no dependencies). See README.md.
export {
  AgentClient,
  DEFAULT_CONNECT_TIMEOUT_MS,
  DEFAULT_TIMEOUT_MS,
  MAX_LINE,
  MAX_REPLY,
} from "./client.js";
export { checkSocket, defaultSocketPath } from "./socket.js";
export { dpopFetch, isNonceChallenge, parseChallenges } from "./fetch.js";
export * from "./errors.js";
