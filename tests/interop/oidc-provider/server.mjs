// An independent authorization server for the interop tests: node oidc-provider with DPoP
// and nonces required (every DPoP proof must carry the server's nonce), listening on
// 127.0.0.1 on a free port. Started by dpop_tests::OidcProvider, which reads the first line
// of standard output: {"issuer": ..., "refresh_token": ...}. The refresh token belongs to a
// grant made here (there is no user to log in), for the refresh_token grant test; it is
// redeemed through oidc-provider's own token endpoint like any other.
//
// Clients: "dpop-client" (client_secret_basic; client_credentials and refresh_token),
// "mcp-client" (client_secret_basic, native: authorization_code and refresh_token) and
// "resource-server" (client_secret_basic; introspection only). Secrets come from the
// environment: DPOP_OIDC_CLIENT_SECRET, DPOP_OIDC_RS_SECRET.
//
// For the MCP authorization tests (tests/tests/e2e/mcp_auth.rs): open dynamic registration,
// resource indicators for any http://127.0.0.1:PORT/... resource (opaque access tokens with
// the scopes mcp:tools and mcp:admin), and interactions that need no user: a GET of
// /interaction/UID logs "alice" in and consents to whatever the request asks, so a "browser"
// that only follows redirects reaches the client's redirect URI. Dynamically registered
// clients that may use refresh_token get one with every code (MCP clients do not ask for
// offline_access); "dpop-client" keeps the default (only with offline_access).
import { createServer } from 'node:http';
import { randomBytes } from 'node:crypto';
import Provider, { errors } from 'oidc-provider';
import { generateKeyPair, exportJWK } from 'jose';

const clientSecret = process.env.DPOP_OIDC_CLIENT_SECRET;
const rsSecret = process.env.DPOP_OIDC_RS_SECRET;
if (!clientSecret || !rsSecret) {
  console.error('DPOP_OIDC_CLIENT_SECRET and DPOP_OIDC_RS_SECRET must be set');
  process.exit(2);
}

const server = createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const { privateKey } = await generateKeyPair('RS256', { extractable: true });
const signing = { ...(await exportJWK(privateKey)), alg: 'RS256', use: 'sig', kid: 'test' };

const provider = new Provider(issuer, {
  jwks: { keys: [signing] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  clients: [
    {
      client_id: 'dpop-client',
      client_secret: clientSecret,
      grant_types: ['client_credentials', 'refresh_token', 'authorization_code'],
      response_types: ['code'],
      redirect_uris: ['http://127.0.0.1/callback'],
      token_endpoint_auth_method: 'client_secret_basic',
      dpop_bound_access_tokens: true,
      scope: 'openid offline_access api:read',
    },
    {
      // A pre-registered native MCP client (a loopback redirect on any port).
      client_id: 'mcp-client',
      client_secret: clientSecret,
      application_type: 'native',
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: ['http://127.0.0.1/callback'],
      token_endpoint_auth_method: 'client_secret_basic',
      dpop_bound_access_tokens: true,
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
  scopes: ['openid', 'offline_access', 'api:read'],
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  async issueRefreshToken(ctx, client, code) {
    if (!client.grantTypeAllowed('refresh_token')) return false;
    return client.clientId !== 'dpop-client' || code.scopes.has('offline_access');
  },
  features: {
    devInteractions: { enabled: false },
    registration: { enabled: true },
    resourceIndicators: {
      enabled: true,
      async getResourceServerInfo(ctx, resourceIndicator) {
        if (!/^http:\/\/127\.0\.0\.1:[0-9]+(\/|$)/.test(resourceIndicator)) {
          throw new errors.InvalidTarget();
        }
        return {
          scope: 'mcp:tools mcp:admin',
          audience: resourceIndicator,
          accessTokenFormat: 'opaque',
        };
      },
    },
    clientCredentials: { enabled: true },
    introspection: {
      enabled: true,
      // The resource server may look at any token; a client at its own only.
      allowedPolicy: (ctx, caller, token) =>
        caller.clientId === 'resource-server' || caller.clientId === token.clientId,
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
    ClientCredentials: 600,
    RefreshToken: 3600,
    Grant: 3600,
    IdToken: 600,
  },
});
const callback = provider.callback();
server.on('request', (req, res) => {
  if (req.url.startsWith('/interaction/')) {
    finishInteraction(req, res).catch((err) => {
      res.statusCode = 500;
      res.end(String(err));
    });
  } else {
    callback(req, res);
  }
});

// Login as alice, then consent to every scope and resource scope the request asks for.
async function finishInteraction(req, res) {
  const details = await provider.interactionDetails(req, res);
  let result;
  if (details.prompt.name === 'login') {
    result = { login: { accountId: 'alice' } };
  } else {
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
    const missing = details.prompt.details;
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    result = { consent: { grantId: await grant.save() } };
  }
  await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: true });
}

// A grant and refresh token for account "alice", as a finished authorization would leave.
const client = await provider.Client.find('dpop-client');
const grant = new provider.Grant({ accountId: 'alice', clientId: client.clientId });
grant.addOIDCScope('openid offline_access');
const grantId = await grant.save();
const now = Math.floor(Date.now() / 1000);
const refreshToken = new provider.RefreshToken({
  accountId: 'alice',
  client,
  grantId,
  gty: 'authorization_code',
  scope: 'openid offline_access',
  authTime: now,
  iiat: now,
  expiresWithSession: false,
});
const refreshValue = await refreshToken.save();

process.stdout.write(`${JSON.stringify({ issuer, refresh_token: refreshValue })}\n`);
process.on('SIGTERM', () => process.exit(0));
