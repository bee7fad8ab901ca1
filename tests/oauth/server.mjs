// The OAuth2 authorization server of linkrelay's tests: panva's oidc-provider, on 127.0.0.1.
//
//   node server.mjs SETTINGS.json
//
// SETTINGS: { "access_token_ttl": seconds, "clients": [oidc-provider client metadata...] }.
// It prints "listening PORT" once it serves; the issuer is http://127.0.0.1:PORT.
//
// Logins are real oidc-provider interactions, with a plain login form of our own in place of
// the developer pages: GET /interaction/UID shows it, POST /interaction/UID with login=NAME
// logs NAME in (any name; the account id is the name, and introspection answers it as `sub`).
// Consent is given at once for what the client asked. Refresh tokens are issued to every
// client allowed the refresh_token grant, and rotate as the library does by default.
//
// One route is for the tests only: POST /test/end-access-tokens ends every access token issued
// so far before its time (as a provider does after a security event), leaving refresh tokens
// valid; it answers the count.
import http from 'node:http';
import fs from 'node:fs';
import Provider from 'oidc-provider';

const settings = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));

const server = http.createServer();
await new Promise((resolve) => server.listen(settings.port ?? 0, '127.0.0.1', resolve));
const { port } = server.address();
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: settings.clients,
  scopes: ['openid', 'offline_access', 'smtp'],
  features: {
    devInteractions: { enabled: false },
    deviceFlow: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
  },
  pkce: { required: () => true },
  ttl: {
    AccessToken: settings.access_token_ttl ?? 3600,
    RefreshToken: 24 * 3600,
    DeviceCode: 600,
    Grant: 24 * 3600,
    Interaction: 600,
    Session: 3600,
  },
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  findAccount: async (ctx, id) => ({ accountId: id, claims: async () => ({ sub: id }) }),
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  cookies: { keys: ['linkrelay-test-cookie-key'] },
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));

const accessTokens = [];
provider.on('access_token.saved', (token) => accessTokens.push(token));

async function endAccessTokens(res) {
  const ended = accessTokens.splice(0);
  await Promise.all(ended.map((token) => token.destroy()));
  res.end(String(ended.length));
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (chunk) => { body += chunk; });
    req.on('end', () => resolve(new URLSearchParams(body)));
    req.on('error', reject);
  });
}

async function interaction(req, res) {
  const details = await provider.interactionDetails(req, res);
  const { uid, prompt, params, session } = details;
  if (prompt.name === 'login') {
    if (req.method === 'GET') {
      res.setHeader('content-type', 'text/html; charset=utf-8');
      res.end(`<!DOCTYPE html><title>Log in</title><form method="post" action="/interaction/${uid}"><input name="login"><button>Log in</button></form>`);
      return;
    }
    const form = await readBody(req);
    const login = form.get('login');
    if (!login) {
      res.statusCode = 400;
      res.end('login needed');
      return;
    }
    await provider.interactionFinished(req, res, { login: { accountId: login } }, { mergeWithLastSubmission: false });
    return;
  }
  // Consent: grant what was asked.
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  const missing = prompt.details;
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  if (missing.missingResourceScopes) {
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes)) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
  }
  const grantId = await grant.save();
  await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
}

const callback = provider.callback();
server.on('request', (req, res) => {
  if (req.method === 'POST' && req.url === '/test/end-access-tokens') {
    endAccessTokens(res).catch((err) => {
      res.statusCode = 500;
      res.end(String(err));
    });
  } else if (req.url.startsWith('/interaction/')) {
    interaction(req, res).catch((err) => {
      console.error('interaction', err);
      res.statusCode = 500;
      res.end(String(err));
    });
  } else {
    callback(req, res);
  }
});

console.log(`listening ${port}`);
process.on('SIGTERM', () => process.exit(0));
