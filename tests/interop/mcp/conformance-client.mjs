// The MCP client the official conformance suite (@modelcontextprotocol/conformance) drives
// for the tests of `dpop mcp` (tests/tests/e2e/mcp_conformance.rs): for each scenario the suite
// runs `node conformance-client.mjs <server-url>`, with MCP_CONFORMANCE_SCENARIO and, for
// some scenarios, MCP_CONFORMANCE_CONTEXT (JSON: a pre-registered client's id and secret).
//
// It spawns `dpop mcp <server-url>` and speaks MCP to it over stdio, as a local MCP client
// (Claude Desktop, VS Code) does: initialize, notifications/initialized, tools/list, a call
// of the first tool (the suite's auth scenarios serve `test-tool`), then it closes stdin and
// waits for `dpop mcp` to exit. All of the authorization is `dpop mcp`'s.
//
// The "browser": `dpop mcp` prints the authorization URL on its standard error; this client
// GETs it and follows the redirects, keeping cookies (the suite's authorization endpoint
// redirects at once; oidc-provider's goes through its interaction pages) to the bridge's
// loopback redirect URI, as a browser would.
//
// Outside the suite (no MCP_CONFORMANCE_SCENARIO) the same client drives `dpop mcp` against
// the project's own test servers (tests/tests/e2e/mcp_server.rs): it then names no Client ID
// Metadata Document.
//
// Environment, from the test (the suite passes its own environment on):
//   DPOP_CONFORMANCE_DPOP  the `dpop` binary
//   DPOP_CONFORMANCE_ARGS  JSON array of further `dpop mcp` arguments (e.g. ["--key", "k"])
//   DPOP_AUTH_SOCK, XDG_STATE_HOME: the agent and the token cache, as for any `dpop` command
// Exit status 0 when every request was answered without a JSON-RPC error and `dpop mcp`
// exited 0; 1 otherwise, saying why on stderr (the suite keeps it in stderr.txt). The suite
// judges only the wire and ignores the exit status, so the last line on stdout (the suite
// keeps it in stdout.txt) says it too, for the test: {"session": "complete"} or
// {"session": "failed", "reason": "..."}.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';

// The Client ID Metadata Document URL the suite's basic-cimd scenario expects a client to use.
const CIMD_CLIENT_METADATA_URL = 'https://conformance-test.local/client-metadata.json';
// Longer than any one step should take; the suite's own timeout (30 s) bounds the whole run.
const STEP_TIMEOUT_MS = 25000;

const log = (...args) => console.error('[conformance-client]', ...args);

const serverUrl = process.argv[process.argv.length - 1];
const scenario = process.env.MCP_CONFORMANCE_SCENARIO ?? '';
const context = process.env.MCP_CONFORMANCE_CONTEXT
  ? JSON.parse(process.env.MCP_CONFORMANCE_CONTEXT)
  : {};
const dpop = process.env.DPOP_CONFORMANCE_DPOP;
if (!dpop || !serverUrl?.startsWith('http')) {
  log('usage: DPOP_CONFORMANCE_DPOP=/path/to/dpop node conformance-client.mjs <server-url>');
  process.exit(2);
}

const args = ['mcp', serverUrl, ...JSON.parse(process.env.DPOP_CONFORMANCE_ARGS ?? '[]')];
const env = { ...process.env };
if (context.client_id) {
  args.push('--client-id', context.client_id);
  if (context.client_secret) {
    env.DPOP_CONFORMANCE_CLIENT_SECRET = context.client_secret;
    args.push('--client-secret-env', 'DPOP_CONFORMANCE_CLIENT_SECRET');
  }
} else if (scenario !== '') {
  args.push('--client-metadata-url', CIMD_CLIENT_METADATA_URL);
}
log(`scenario ${scenario}: ${dpop} ${args.join(' ')}`);

const child = spawn(dpop, args, { env, stdio: ['pipe', 'pipe', 'pipe'] });
const exited = new Promise((resolve) => {
  child.on('exit', (code, signal) => resolve({ code, signal }));
  child.on('error', (error) => {
    log(`cannot run ${dpop}: ${error.message}`);
    resolve({ code: -1, signal: null });
  });
});

// The browser: every authorization URL `dpop mcp` prints is visited, following redirects.
const visits = [];
createInterface({ input: child.stderr }).on('line', (line) => {
  console.error(line);
  for (const match of line.matchAll(/https?:\/\/\S+/g)) {
    let url;
    try {
      url = new URL(match[0]);
    } catch {
      continue;
    }
    if (url.searchParams.get('response_type') === 'code') {
      visits.push(browse(url).catch((error) => log(`browser: ${error.message}`)));
    }
  }
});

// GETs `url` and follows its redirects, keeping cookies per origin (an authorization server's
// login and consent steps, such as oidc-provider's, need them), as a browser does.
async function browse(start) {
  const jar = new Map();
  let url = start;
  for (let hop = 0; hop < 20; hop++) {
    log(`browser: GET ${url.origin}${url.pathname}`);
    const cookies = jar.get(url.origin);
    const response = await fetch(url, {
      redirect: 'manual',
      headers: cookies ? { cookie: [...cookies].map(([k, v]) => `${k}=${v}`).join('; ') } : {},
    });
    for (const line of response.headers.getSetCookie()) {
      const [pair] = line.split(';');
      const at = pair.indexOf('=');
      if (at < 1) continue;
      if (!jar.has(url.origin)) jar.set(url.origin, new Map());
      jar.get(url.origin).set(pair.slice(0, at).trim(), pair.slice(at + 1).trim());
    }
    await response.arrayBuffer();
    const location = response.headers.get('location');
    if (response.status < 300 || response.status >= 400 || !location) {
      log(`browser: ${response.status} from ${url.origin}`);
      return;
    }
    url = new URL(location, url);
  }
  throw new Error('more than 20 redirects');
}

// Answers by id; anything else (notifications, requests from the server) is logged.
const waiting = new Map();
createInterface({ input: child.stdout }).on('line', (line) => {
  let message;
  try {
    message = JSON.parse(line);
  } catch {
    log(`not JSON on dpop mcp's stdout: ${line}`);
    return;
  }
  if (message.id !== undefined && message.method === undefined && waiting.has(message.id)) {
    waiting.get(message.id)(message);
    waiting.delete(message.id);
  } else {
    log(`server message: ${line}`);
  }
});

function send(message) {
  child.stdin.write(`${JSON.stringify(message)}\n`);
}

let nextId = 1;
async function request(method, params) {
  const id = nextId++;
  const answer = new Promise((resolve, reject) => {
    waiting.set(id, resolve);
    setTimeout(() => reject(new Error(`no answer to ${method} within ${STEP_TIMEOUT_MS} ms`)), STEP_TIMEOUT_MS);
  });
  send({ jsonrpc: '2.0', id, method, params });
  const message = await Promise.race([
    answer,
    exited.then(({ code, signal }) => {
      throw new Error(`dpop mcp exited (${code ?? signal}) before answering ${method}`);
    }),
  ]);
  if (message.error) {
    throw new Error(`${method}: JSON-RPC error ${JSON.stringify(message.error)}`);
  }
  return message.result;
}

let failure = null;
try {
  const init = await request('initialize', {
    protocolVersion: process.env.MCP_CONFORMANCE_PROTOCOL_VERSION ?? '2025-11-25',
    capabilities: {},
    clientInfo: { name: 'dpop-mcp-conformance-client', version: '1.0.0' },
  });
  log(`initialized: protocol ${init.protocolVersion}`);
  send({ jsonrpc: '2.0', method: 'notifications/initialized' });
  const { tools } = await request('tools/list', {});
  log(`tools: ${tools.map((t) => t.name).join(', ')}`);
  if (tools.length > 0) {
    await request('tools/call', { name: tools[0].name, arguments: {} });
    log(`called ${tools[0].name}`);
  }
} catch (error) {
  log(`failed: ${error.message}`);
  failure = error.message;
}
child.stdin.end();
const timeout = setTimeout(() => {
  log('dpop mcp did not exit after stdin closed');
  child.kill('SIGKILL');
}, STEP_TIMEOUT_MS);
const { code, signal } = await exited;
clearTimeout(timeout);
await Promise.all(visits);
if (code !== 0 && failure === null) {
  failure = `dpop mcp exited with ${code ?? signal}`;
  log(failure);
}
const outcome = failure === null ? { session: 'complete' } : { session: 'failed', reason: failure };
process.stdout.write(`${JSON.stringify(outcome)}\n`, () => process.exit(failure === null ? 0 : 1));
