// Serves the demo's single-page app: plain files from public/, no build step.
//
//   node examples/full-stack/frontend/server.mjs [--port 3000]
//
// The same page runs as two variants, told apart by where it is loaded:
//   /       variant A, opened directly: the SPA signs in and holds the token;
//   /app/   variant B, opened through the gateway: the gateway signs in and
//           holds the tokens, the page only sees the backend's answers.
// /config.json tells variant A its provider, client and API: from DISCOVERY,
// SPA_CLIENT_ID and GATEWAY in the environment, so the demo can point at
// another provider without edits.

import * as fs from 'node:fs/promises';
import * as http from 'node:http';
import * as path from 'node:path';

const HOST = '127.0.0.1';
const portArg = process.argv.indexOf('--port');
const port = portArg > 0 ? Number(process.argv[portArg + 1]) : 3000;
const PUBLIC = path.join(path.dirname(new URL(import.meta.url).pathname), 'public');

const env = process.env;
const CONFIG = {
  discovery: env.DISCOVERY || 'http://127.0.0.1:9300/.well-known/openid-configuration',
  clientId: env.SPA_CLIENT_ID || 'demo-spa',
  api: `${env.GATEWAY || 'http://127.0.0.1:9080'}/api/whoami`,
  scope: 'openid profile email',
};

// URL path -> file in public/ (one page, one stylesheet, three scripts).
const FILES = new Map();
for (const prefix of ['/', '/app/']) {
  FILES.set(prefix, 'index.html');
  for (const f of ['style.css', 'main.js', 'variant-a.js', 'variant-b.js']) {
    FILES.set(prefix + f, f);
  }
}
const TYPES = { '.html': 'text/html', '.css': 'text/css', '.js': 'text/javascript' };

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, `http://${HOST}`);
  const file = FILES.get(url.pathname);
  if (url.pathname === '/config.json') {
    res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' });
    res.end(JSON.stringify(CONFIG));
  } else if (url.pathname === '/app/login') {
    // The gateway lets this through only once the user has signed in.
    res.writeHead(302, { location: '/app/' });
    res.end();
  } else if (file && (req.method === 'GET' || req.method === 'HEAD')) {
    const body = await fs.readFile(path.join(PUBLIC, file));
    res.writeHead(200, {
      'content-type': `${TYPES[path.extname(file)]}; charset=utf-8`,
      'cache-control': 'no-cache',
    });
    res.end(req.method === 'HEAD' ? undefined : body);
  } else {
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('not found\n');
  }
});

server.listen(port, HOST, () => {
  console.log(`frontend listening on http://${HOST}:${port}`);
});

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}
