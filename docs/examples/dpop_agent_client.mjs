// A dpop-agent client in Node.js with the standard library only (docs/protocol.md).
//
// Usage: DPOP_AUTH_SOCK=/path/to/agent.sock node dpop_agent_client.mjs KEY METHOD URL
//
// Prints a DPoP proof for METHOD URL signed by KEY (generated first when the agent has no key
// of that name), or the agent's error code and message on standard error (exit status 1).
import net from "node:net";
import path from "node:path";
import readline from "node:readline";

class AgentError extends Error {
  constructor(code, message) {
    super(`${message} (${code})`);
    this.code = code;
  }
}

class Agent {
  constructor(socketPath) {
    this.socket = net.createConnection(socketPath);
    this.lines = readline.createInterface({ input: this.socket })[Symbol.asyncIterator]();
    this.nextId = 1;
  }

  // Requests may be pipelined; this client sends one at a time.
  async call(op, fields = {}) {
    const request = { id: this.nextId++, op, ...fields };
    this.socket.write(JSON.stringify(request) + "\n");
    const { value: line, done } = await this.lines.next();
    if (done) throw new AgentError("closed", "the agent closed the connection");
    const reply = JSON.parse(line);
    if (!reply.ok) {
      const error = reply.error ?? {};
      throw new AgentError(error.code ?? "unknown", error.message ?? "");
    }
    if (reply.id !== request.id) throw new AgentError("protocol", "reply id does not match");
    return reply;
  }

  close() {
    this.socket.end();
  }
}

const [key, method, url] = process.argv.slice(2);
const socketPath =
  process.env.DPOP_AUTH_SOCK ||
  path.join(process.env.XDG_RUNTIME_DIR ?? "", "dpop-agent", "agent.sock");
const agent = new Agent(socketPath);
try {
  const { keys } = await agent.call("list_keys");
  if (!keys.some((k) => k.label === key)) await agent.call("generate_key", { label: key });
  const { proof } = await agent.call("sign_proof", { key, htm: method, htu: url });
  console.log(proof);
} catch (e) {
  if (!(e instanceof AgentError)) throw e;
  console.error(`dpop-agent refused: ${e.code}: ${e.message}`);
  process.exitCode = 1;
} finally {
  agent.close();
}
