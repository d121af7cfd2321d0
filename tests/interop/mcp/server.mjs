// A real MCP server for the end-to-end tests of `dpop mcp`, built with the official TypeScript
// SDK (@modelcontextprotocol/sdk): its Streamable HTTP server transport at /mcp on 127.0.0.1,
// with sessions (Mcp-Session-Id), the GET stream for server messages, resumption with
// Last-Event-ID (an in-memory event store) and DELETE of a session. No authorization here: the
// DPoP-protected variant puts the project's verifier in front (tests/src/bin/dpop-test-mcp-rs.rs).
//
// Started by dpop_tests::McpServer, which reads the first line of standard output:
// {"port": N, "url": "http://127.0.0.1:N/mcp"}.
//
// Options (arguments):
//   --port N            listen on N (default 0: a free port, printed as above)
//   --log FILE          append one JSON object per line for what the server saw: every HTTP
//                       request ({"event":"http", method, session, protocol_version,
//                       last_event_id, authorization (the scheme only), rpc: [methods or
//                       "response"]}), sessions ({"event":"session_opened"|"session_closed",
//                       session}) and tool calls ({"event":"tool", name, arguments})
//   --json-response     answer POSTs with application/json instead of text/event-stream
//   --retry-interval MS the SSE `retry` field of the priming events (resumption tests)
//
// Tools:
//   echo       returns its arguments exactly: as structuredContent, and as JSON text
//   add        {a, b} numbers: returns a + b
//   progress   {steps, delay_ms}: sends notifications/progress (when the call has a
//              progressToken) and a notifications/message per step on the call's stream,
//              then returns "done after N steps"
//   broadcast  {text}: sends notifications/message with the text on the session's GET stream
//              (not on the call's stream), then returns "sent"
//   interrupt  {delay_ms}: closes the call's SSE stream (the client must resume it by GET with
//              Last-Event-ID), waits, then returns "resumed"; needs protocol 2025-11-25
import { createServer } from 'node:http';
import { appendFileSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { Server } from '@modelcontextprotocol/sdk/server/index.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import {
  CallToolRequestSchema,
  ListToolsRequestSchema,
  isInitializeRequest,
} from '@modelcontextprotocol/sdk/types.js';

function parseArgs(argv) {
  const opts = { port: 0, log: null, jsonResponse: false, retryInterval: undefined };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${arg} needs a value`);
      return argv[++i];
    };
    if (arg === '--port') opts.port = Number(value());
    else if (arg === '--log') opts.log = value();
    else if (arg === '--json-response') opts.jsonResponse = true;
    else if (arg === '--retry-interval') opts.retryInterval = Number(value());
    else throw new Error(`unknown argument ${arg}`);
  }
  return opts;
}

const opts = parseArgs(process.argv.slice(2));

function log(entry) {
  if (opts.log) appendFileSync(opts.log, `${JSON.stringify(entry)}\n`);
}

// Event IDs are STREAM#N with one counter per server, so replay order is the order stored.
// The SDK stores an empty message as each stream's priming event; it is not replayed.
class InMemoryEventStore {
  constructor() {
    this.events = [];
    this.next = 0;
  }

  async storeEvent(streamId, message) {
    const eventId = `${streamId}#${this.next++}`;
    this.events.push({ eventId, streamId, message });
    return eventId;
  }

  async getStreamIdForEventId(eventId) {
    return this.events.find((e) => e.eventId === eventId)?.streamId;
  }

  async replayEventsAfter(lastEventId, { send }) {
    const index = this.events.findIndex((e) => e.eventId === lastEventId);
    if (index < 0) return '';
    const { streamId } = this.events[index];
    for (const event of this.events.slice(index + 1)) {
      if (event.streamId !== streamId || Object.keys(event.message).length === 0) continue;
      await send(event.eventId, event.message);
    }
    return streamId;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const TOOLS = [
  {
    name: 'echo',
    description: 'Returns its arguments exactly.',
    inputSchema: { type: 'object', additionalProperties: true },
  },
  {
    name: 'add',
    description: 'Adds two numbers.',
    inputSchema: {
      type: 'object',
      properties: { a: { type: 'number' }, b: { type: 'number' } },
      required: ['a', 'b'],
    },
  },
  {
    name: 'progress',
    description: 'Sends a progress notification and a log message per step, then returns.',
    inputSchema: {
      type: 'object',
      properties: { steps: { type: 'integer' }, delay_ms: { type: 'integer' } },
    },
  },
  {
    name: 'broadcast',
    description: "Sends a log message on the session's GET stream.",
    inputSchema: { type: 'object', properties: { text: { type: 'string' } }, required: ['text'] },
  },
  {
    name: 'interrupt',
    description: "Closes the call's stream, then answers on the resumed one.",
    inputSchema: { type: 'object', properties: { delay_ms: { type: 'integer' } } },
  },
];

const text = (value) => ({ content: [{ type: 'text', text: value }] });

// One SDK Server per session, as the SDK's own examples do.
function newServer() {
  const server = new Server(
    { name: 'dpop-agent-test-mcp-server', version: '1.0.0' },
    { capabilities: { tools: { listChanged: true }, logging: {} } },
  );
  server.setRequestHandler(ListToolsRequestSchema, async () => ({ tools: TOOLS }));
  server.setRequestHandler(CallToolRequestSchema, async (request, extra) => {
    const { name } = request.params;
    const args = request.params.arguments ?? {};
    log({ event: 'tool', session: extra.sessionId ?? null, name, arguments: args });
    switch (name) {
      case 'echo':
        return { ...text(JSON.stringify(args)), structuredContent: args };
      case 'add': {
        if (typeof args.a !== 'number' || typeof args.b !== 'number') {
          return { ...text('a and b must be numbers'), isError: true };
        }
        const sum = args.a + args.b;
        return { ...text(String(sum)), structuredContent: { sum } };
      }
      case 'progress': {
        const steps = args.steps ?? 3;
        const delay = args.delay_ms ?? 10;
        const progressToken = request.params._meta?.progressToken;
        for (let step = 1; step <= steps; step++) {
          if (progressToken !== undefined) {
            await extra.sendNotification({
              method: 'notifications/progress',
              params: { progressToken, progress: step, total: steps, message: `step ${step}` },
            });
          }
          await extra.sendNotification({
            method: 'notifications/message',
            params: { level: 'info', logger: 'progress', data: `step ${step} of ${steps}` },
          });
          await sleep(delay);
        }
        return text(`done after ${steps} steps`);
      }
      case 'broadcast':
        // No related request: the transport sends it on the standalone GET stream (or keeps
        // it in the event store until the client opens one).
        await server.notification({
          method: 'notifications/message',
          params: { level: 'info', logger: 'broadcast', data: args.text },
        });
        return text('sent');
      case 'interrupt': {
        if (!extra.closeSSEStream) {
          return { ...text('resumption needs protocol version 2025-11-25'), isError: true };
        }
        await extra.sendNotification({
          method: 'notifications/message',
          params: { level: 'info', logger: 'interrupt', data: 'closing the stream' },
        });
        extra.closeSSEStream();
        await sleep(args.delay_ms ?? 100);
        return text('resumed');
      }
      default:
        return { ...text(`unknown tool ${name}`), isError: true };
    }
  });
  return server;
}

const transports = new Map();

function sendJsonError(res, status, message) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ jsonrpc: '2.0', error: { code: -32000, message }, id: null }));
}

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const body = Buffer.concat(chunks).toString('utf8');
  return body === '' ? undefined : JSON.parse(body);
}

function rpcMethods(body) {
  const messages = Array.isArray(body) ? body : body === undefined ? [] : [body];
  return messages.map((m) => m?.method ?? 'response');
}

async function handle(req, res) {
  const url = new URL(req.url, 'http://127.0.0.1');
  if (url.pathname !== '/mcp') {
    sendJsonError(res, 404, 'not found');
    return;
  }
  const sessionId = req.headers['mcp-session-id'];
  let body;
  if (req.method === 'POST') {
    try {
      body = await readJson(req);
    } catch {
      log({ event: 'http', method: req.method, session: sessionId ?? null, parse_error: true });
      res.writeHead(400, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ jsonrpc: '2.0', error: { code: -32700, message: 'Parse error' }, id: null }));
      return;
    }
  }
  log({
    event: 'http',
    method: req.method,
    session: sessionId ?? null,
    protocol_version: req.headers['mcp-protocol-version'] ?? null,
    last_event_id: req.headers['last-event-id'] ?? null,
    accept: req.headers.accept ?? null,
    authorization: req.headers.authorization?.split(' ')[0] ?? null,
    rpc: rpcMethods(body),
  });

  let transport = sessionId === undefined ? undefined : transports.get(sessionId);
  if (sessionId !== undefined && transport === undefined) {
    sendJsonError(res, 404, 'Session not found');
    return;
  }
  if (transport === undefined) {
    if (req.method !== 'POST' || !isInitializeRequest(body)) {
      sendJsonError(res, 400, 'Bad Request: no valid session ID provided');
      return;
    }
    transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      eventStore: new InMemoryEventStore(),
      enableJsonResponse: opts.jsonResponse,
      retryInterval: opts.retryInterval,
      onsessioninitialized: (id) => {
        transports.set(id, transport);
        log({ event: 'session_opened', session: id });
      },
      onsessionclosed: (id) => {
        transports.delete(id);
        log({ event: 'session_closed', session: id });
      },
    });
    await newServer().connect(transport);
  }
  await transport.handleRequest(req, res, body);
}

const httpServer = createServer((req, res) => {
  handle(req, res).catch((error) => {
    console.error('mcp server:', error);
    if (!res.headersSent) sendJsonError(res, 500, 'Internal error');
    else res.end();
  });
});
await new Promise((resolve) => httpServer.listen(opts.port, '127.0.0.1', resolve));
const { port } = httpServer.address();
process.stdout.write(`${JSON.stringify({ port, url: `http://127.0.0.1:${port}/mcp` })}\n`);
process.on('SIGTERM', () => process.exit(0));
