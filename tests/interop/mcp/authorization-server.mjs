// node oidc-provider set up as the authorization server of an MCP server, for the tests of
// `dpop mcp` against the DPoP-protected MCP server (dpop_tests::McpAuthorizationServer; the
// resource server is tests/src/bin/dpop-test-mcp-rs.rs): what MCP's authorization spec asks of
// one, from a server we did not write.
//
// - DPoP with nonces required (every proof must carry the server's nonce); access tokens
//   bound to the proof key (cnf.jkt), opaque, checked by the resource server through RFC 7662
//   introspection (client "resource-server", secret from DPOP_OIDC_RS_SECRET).
// - Authorization code with PKCE S256 required, RFC 8707 resource indicators (any loopback
//   http URL is a resource, with scope "mcp:tools"), the `iss` authorization response
//   parameter (RFC 9207), OpenID discovery at /.well-known/openid-configuration.
// - Dynamic client registration (RFC 7591, open; clients default to native, so a loopback
//   redirect URI matches whatever its port) and a pre-registered public client "mcp-client"
//   (redirect URI http://127.0.0.1/callback, any port).
// - No user to log in: /interaction/:uid approves at once (account "alice", every scope and
//   resource asked for) and redirects on, so a "browser" that follows redirects and keeps
//   cookies finishes the authorization.
//
// Listens on 127.0.0.1 on a free port and prints one line: {"issuer": "http://127.0.0.1:PORT"}.
import { createServer } from 'node:http';
import { randomBytes } from 'node:crypto';
import Provider, { errors } from 'oidc-provider';
import { generateKeyPair, exportJWK } from 'jose';

const rsSecret = process.env.DPOP_OIDC_RS_SECRET;
if (!rsSecret) {
  console.error('DPOP_OIDC_RS_SECRET must be set');
  process.exit(2);
}
const SCOPE = 'mcp:tools';

const server = createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const { privateKey } = await generateKeyPair('RS256', { extractable: true });
const signing = { ...(await exportJWK(privateKey)), alg: 'RS256', use: 'sig', kid: 'test' };

const isLoopbackResource = (resource) => {
  try {
    const url = new URL(resource);
    return url.protocol === 'http:' && url.hostname === '127.0.0.1' && url.hash === '';
  } catch {
    return false;
  }
};

const provider = new Provider(issuer, {
  jwks: { keys: [signing] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  clients: [
    {
      client_id: 'mcp-client',
      application_type: 'native',
      token_endpoint_auth_method: 'none',
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: ['http://127.0.0.1/callback'],
    },
    {
      client_id: 'resource-server',
      client_secret: rsSecret,
      grant_types: [],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  clientDefaults: {
    application_type: 'native',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'none',
  },
  scopes: ['openid', 'offline_access', SCOPE],
  pkce: { required: () => true },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  features: {
    devInteractions: { enabled: false },
    registration: { enabled: true },
    introspection: {
      enabled: true,
      allowedPolicy: (ctx, caller, token) =>
        caller.clientId === 'resource-server' || caller.clientId === token.clientId,
    },
    resourceIndicators: {
      enabled: true,
      defaultResource: (ctx, client, oneOf) => (oneOf ? oneOf[0] : undefined),
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => {
        if (!isLoopbackResource(resource)) throw new errors.InvalidTarget();
        return { scope: SCOPE, accessTokenFormat: 'opaque', accessTokenTTL: 600 };
      },
    },
    dPoP: {
      enabled: true,
      nonceSecret: randomBytes(32),
      requireNonce: () => true,
    },
  },
  async findAccount(ctx, id) {
    return { accountId: id, async claims() { return { sub: id }; } };
  },
  ttl: {
    AccessToken: 600,
    AuthorizationCode: 60,
    RefreshToken: 3600,
    Grant: 3600,
    Interaction: 600,
    Session: 3600,
    IdToken: 600,
  },
});

// Approves every interaction at once: logs "alice" in and grants what the client asked for.
async function approve(req, res) {
  const details = await provider.interactionDetails(req, res);
  const { prompt, params } = details;
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: 'alice', clientId: params.client_id });
  if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
  if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(prompt.details.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const grantId = await grant.save();
  await provider.interactionFinished(
    req,
    res,
    { login: { accountId: 'alice' }, consent: { grantId } },
    { mergeWithLastSubmission: false },
  );
}

const callback = provider.callback();
server.on('request', (req, res) => {
  if (req.method === 'GET' && req.url.startsWith('/interaction/')) {
    approve(req, res).catch((error) => {
      console.error('authorization server: interaction:', error);
      res.statusCode = 500;
      res.end(String(error));
    });
    return;
  }
  callback(req, res);
});

process.stdout.write(`${JSON.stringify({ issuer })}\n`);
process.on('SIGTERM', () => process.exit(0));
