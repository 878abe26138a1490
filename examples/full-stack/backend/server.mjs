// The demo's backend API. It sits behind Portcullis and trusts only the
// identity headers the gateway sets (the gateway removes any copies a client
// sends): X-Userinfo and X-ID-Token, each base64 of a JSON object.
//
//   node examples/full-stack/backend/server.mjs [--port 9081]
//
// GET <any path ending in /whoami> -> 200 {"message", "user", "via"}
// no identity header               -> 401 {"error": …}

import * as http from 'node:http';

const HOST = '127.0.0.1';
const portArg = process.argv.indexOf('--port');
const port = portArg > 0 ? Number(process.argv[portArg + 1]) : 9081;

// The claims in one identity header, or null when it is absent or unreadable.
function claims(req, name) {
  const value = req.headers[name];
  if (typeof value !== 'string' || value === '') return null;
  try {
    const parsed = JSON.parse(Buffer.from(value, 'base64').toString('utf8'));
    return parsed && typeof parsed === 'object' ? parsed : null;
  } catch {
    return null;
  }
}

function send(res, status, body) {
  res.writeHead(status, {
    'content-type': 'application/json',
    'cache-control': 'no-store',
  });
  res.end(`${JSON.stringify(body)}\n`);
}

const server = http.createServer((req, res) => {
  const path = new URL(req.url, `http://${HOST}`).pathname;
  if (req.method !== 'GET' || !path.endsWith('/whoami')) {
    send(res, 404, { error: 'not found' });
    return;
  }

  // Userinfo (or the introspection answer) first, the ID token's claims next.
  const userinfo = claims(req, 'x-userinfo');
  const idToken = userinfo ? null : claims(req, 'x-id-token');
  const who = userinfo ?? idToken;
  if (!who || typeof who.sub !== 'string') {
    send(res, 401, { error: 'no identity from the gateway' });
    return;
  }
  send(res, 200, {
    message: 'Hello from the backend',
    user: { sub: who.sub, email: who.email ?? null, name: who.name ?? null },
    via: userinfo ? 'x-userinfo' : 'x-id-token',
  });
});

server.listen(port, HOST, () => {
  console.log(`backend listening on http://${HOST}:${port}`);
});

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}
