// Portcullis test identity provider: a real OpenID provider (npm `oidc-provider`)
// for the test suite. Loopback only, in-memory state, fresh keys at every start.
//
//   node tests/idp/provider.mjs [--port N]      (default 0 = any free port)
//   IDP_CONFIG=/path/to/config.json             (optional, see README.md)
//
// stdout carries exactly one line, `READY <issuer>`; everything else goes to stderr.
// Extra endpoints: GET /__stats (path -> request count), POST /__stats/reset,
// GET /__backchannel (every back-channel logout delivery so far, oldest first).

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';

// oidc-provider prints its NOTICEs with console.info (stdout). Keep stdout for the
// READY line only: send console.log/info to stderr before the library loads.
console.log = (...args) => console.error(...args);
console.info = (...args) => console.error(...args);

const { default: Provider, errors } = await import('oidc-provider');

const HOST = '127.0.0.1';

function parseArgs(argv) {
  let port = 0;
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    let value;
    if (arg === '--port') {
      value = argv[i + 1];
      i += 1;
    } else if (arg.startsWith('--port=')) {
      value = arg.slice('--port='.length);
    } else {
      throw new Error(`unknown argument: ${arg}`);
    }
    if (value === undefined || !/^\d+$/.test(value) || Number(value) > 65535) {
      throw new Error(`--port needs a number 0..65535, got ${value}`);
    }
    port = Number(value);
  }
  return { port };
}

const DEFAULTS = {
  clients: [
    {
      client_id: 'gw-client',
      client_secret: 'gw-secret-123',
      grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
      response_types: ['code'],
      redirect_uris: ['http://127.0.0.1:9080/app/callback'],
      post_logout_redirect_uris: ['http://127.0.0.1:9080/app/bye'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    {
      client_id: 'cc-client',
      client_secret: 'cc-secret-456',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  accessTokenTtl: 300,
  idTokenTtl: 3600,
  refreshTokenTtl: 86400,
  resources: {
    'urn:portcullis:rs256': {
      audience: 'gw-client', scope: 'api:read api:write', accessTokenFormat: 'jwt', jwtAlg: 'RS256',
    },
    'urn:portcullis:es256': {
      audience: 'gw-client', scope: 'api:read api:write', accessTokenFormat: 'jwt', jwtAlg: 'ES256',
    },
  },
  scopes: ['api:read', 'api:write'],
  pkceRequired: false,
  conformIdTokenClaims: false,
  allowCrossClientRevocation: false,
};

function loadConfig() {
  const file = process.env.IDP_CONFIG;
  let user = {};
  if (file) {
    user = JSON.parse(fs.readFileSync(file, 'utf8'));
    if (user === null || typeof user !== 'object' || Array.isArray(user)) {
      throw new Error(`IDP_CONFIG ${file}: top level must be a JSON object`);
    }
  }
  // Each field present in the file replaces its default as a whole.
  const cfg = { ...DEFAULTS, ...user };
  for (const key of ['accessTokenTtl', 'idTokenTtl', 'refreshTokenTtl']) {
    if (!Number.isInteger(cfg[key]) || cfg[key] <= 0) {
      throw new Error(`config ${key} must be a positive integer (seconds)`);
    }
  }
  if (!Array.isArray(cfg.clients)) throw new Error('config clients must be an array');
  if (!Array.isArray(cfg.scopes)) throw new Error('config scopes must be an array');
  if (cfg.resources === null || typeof cfg.resources !== 'object') throw new Error('config resources must be an object');
  for (const [url, rs] of Object.entries(cfg.resources)) {
    const format = rs.accessTokenFormat ?? 'jwt';
    if (!['jwt', 'opaque'].includes(format)) throw new Error(`resource ${url}: accessTokenFormat must be jwt or opaque`);
    const alg = rs.jwtAlg ?? 'RS256';
    if (!['RS256', 'ES256'].includes(alg)) throw new Error(`resource ${url}: jwtAlg must be RS256 or ES256`);
  }
  return cfg;
}

function generateJwks() {
  const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
  const suffix = crypto.randomBytes(4).toString('hex');
  return {
    keys: [
      // First key of a kind is the default for that alg; RSA first so RS256 is the ID token default.
      { ...rsa.export({ format: 'jwk' }), kid: `rs256-${suffix}`, alg: 'RS256', use: 'sig' },
      { ...ec.export({ format: 'jwk' }), kid: `es256-${suffix}`, alg: 'ES256', use: 'sig' },
    ],
  };
}

function emailFor(login) {
  return login.includes('@') ? login : `${login}@example.test`;
}

function buildConfiguration(cfg) {
  // Every custom scope a client declares must be in the top-level list, or the first
  // request by that client fails with invalid_client_metadata.
  const scopes = new Set(['openid', 'offline_access', 'profile', 'email', ...cfg.scopes]);
  for (const client of cfg.clients) {
    if (typeof client.scope === 'string') {
      for (const s of client.scope.split(' ').filter(Boolean)) scopes.add(s);
    }
  }

  return {
    clients: cfg.clients,
    jwks: generateJwks(),
    scopes: [...scopes],
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name'],
    },
    // false: ID tokens carry the claims of the granted scopes (email, name) even though an
    // access token is issued too; true would move them to the userinfo endpoint only.
    conformIdTokenClaims: cfg.conformIdTokenClaims,
    cookies: {
      keys: [crypto.randomBytes(32).toString('base64url')],
      long: { httpOnly: true, sameSite: 'lax', secure: false },
      short: { httpOnly: true, sameSite: 'lax', secure: false },
    },
    async findAccount(_ctx, sub) {
      return {
        accountId: sub,
        async claims() {
          return {
            sub,
            email: emailFor(sub),
            email_verified: true,
            name: sub,
          };
        },
      };
    },
    features: {
      devInteractions: { enabled: true },
      clientCredentials: { enabled: true },
      rpInitiatedLogout: { enabled: true },
      // Clients with `backchannel_logout_uri` get a logout token POSTed there when the
      // user logs out at /session/end (with `sid` if `backchannel_logout_session_required`).
      backchannelLogout: { enabled: true },
      userinfo: { enabled: true },
      introspection: {
        enabled: true,
        // The gateway introspects tokens issued to other clients: any authenticated
        // (confidential) client may introspect any token.
        async allowedPolicy(ctx, client, token) {
          if (client.clientAuthMethod === 'none' && token.clientId !== client.clientId) {
            return false;
          }
          return true;
        },
      },
      revocation: {
        enabled: true,
        async allowedPolicy(ctx, client, token) {
          if (token.clientId === client.clientId) return true;
          if (cfg.allowCrossClientRevocation && client.clientAuthMethod !== 'none') return true;
          if (client.clientAuthMethod === 'none') return false;
          throw new errors.InvalidRequest('client is not authorized to revoke the presented token');
        },
      },
      resourceIndicators: {
        enabled: true,
        // Without resource= a token is opaque (and, for the code flow, good for /me).
        defaultResource: async (_ctx, _client, oneOf) => oneOf,
        useGrantedResource: async () => false,
        async getResourceServerInfo(_ctx, resourceIndicator) {
          const rs = cfg.resources[resourceIndicator];
          if (!rs) throw new errors.InvalidTarget();
          const format = rs.accessTokenFormat ?? 'jwt';
          const info = {
            scope: rs.scope ?? '',
            accessTokenFormat: format,
            accessTokenTTL: rs.accessTokenTtl ?? cfg.accessTokenTtl,
          };
          if (rs.audience !== undefined) info.audience = rs.audience;
          if (format === 'jwt') info.jwt = { sign: { alg: rs.jwtAlg ?? 'RS256' } };
          return info;
        },
      },
    },
    pkce: {
      // default: PKCE only for public clients; pkceRequired forces it for every client.
      required: (_ctx, client) => cfg.pkceRequired || client.clientAuthMethod === 'none',
    },
    async issueRefreshToken(_ctx, client) {
      return client.grantTypeAllowed('refresh_token');
    },
    ttl: {
      AccessToken: (_ctx, token) => token.resourceServer?.accessTokenTTL || cfg.accessTokenTtl,
      ClientCredentials: (_ctx, token) => token.resourceServer?.accessTokenTTL || cfg.accessTokenTtl,
      AuthorizationCode: 60,
      IdToken: cfg.idTokenTtl,
      RefreshToken: cfg.refreshTokenTtl,
      Interaction: 600,
      Session: 3600,
      Grant: Math.max(cfg.refreshTokenTtl, 3600),
    },
    clientBasedCORS: () => true,
    // Outgoing requests (back-channel logout deliveries): oidc-provider's default dispatcher
    // refuses special-use addresses, loopback included, and the gateway under test listens on
    // 127.0.0.1. This test provider may reach 127.0.0.1 only, and nothing else at all.
    fetch(url, options) {
      const target = new URL(url);
      if (target.hostname !== HOST) {
        return Promise.reject(new Error(`test IdP: refusing to fetch ${target.origin} (only ${HOST})`));
      }
      const { dispatcher: _ssrfGuard, ...rest } = options;
      return globalThis.fetch(url, rest);
    },
  };
}

function main() {
  const { port } = parseArgs(process.argv.slice(2));
  const cfg = loadConfig();
  const configuration = buildConfiguration(cfg);

  const server = http.createServer();
  server.keepAliveTimeout = 5000;

  server.listen(port, HOST, () => {
    const issuer = `http://${HOST}:${server.address().port}`;
    const provider = new Provider(issuer, configuration);
    provider.proxy = false;

    // Back-channel logout deliveries, for tests to check what the client answered.
    const backchannel = [];
    provider.on('backchannel.success', (_ctx, client, accountId, sid) => {
      backchannel.push({ client_id: client.clientId, sub: accountId, sid: sid ?? null, ok: true });
    });
    provider.on('backchannel.error', (_ctx, err, client, accountId, sid) => {
      // fetch() reports network failures as "fetch failed" with the reason in `cause`.
      const error = err.cause ? `${err.message}: ${err.cause.code ?? ''} ${err.cause.message ?? err.cause}` : err.message;
      console.error(`idp backchannel.error (${client.clientId}): ${error}`);
      backchannel.push({
        client_id: client.clientId, sub: accountId, sid: sid ?? null, ok: false, error: String(error),
      });
    });

    const stats = new Map();
    provider.use(async (ctx, next) => {
      if (ctx.path === '/__stats' && ctx.method === 'GET') {
        ctx.set('cache-control', 'no-store');
        ctx.body = Object.fromEntries(stats);
        return;
      }
      if (ctx.path === '/__backchannel' && ctx.method === 'GET') {
        ctx.set('cache-control', 'no-store');
        ctx.body = backchannel;
        return;
      }
      if (ctx.path === '/__stats/reset' && ctx.method === 'POST') {
        stats.clear();
        ctx.status = 204;
        return;
      }
      stats.set(ctx.path, (stats.get(ctx.path) ?? 0) + 1);
      await next();
    });

    provider.on('server_error', (_ctx, err) => {
      console.error('idp server_error:', err);
    });

    server.on('request', provider.callback());
    process.stdout.write(`READY ${issuer}\n`);
  });

  server.on('error', (err) => {
    console.error('idp listen error:', err);
    process.exit(1);
  });

  const shutdown = (signal) => {
    console.error(`idp: ${signal}, shutting down`);
    server.close(() => process.exit(0));
    server.closeAllConnections();
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
}

try {
  main();
} catch (err) {
  console.error(`idp: ${err.message}`);
  process.exit(2);
}
