// End-to-end test of the full-stack demo in a real browser (Debian's
// chromium, driven by playwright-core). It starts the demo with
// examples/full-stack/run.sh, then for both variants signs alice in through
// the provider's login and consent pages, waits for the backend's answer on
// the page, saves a screenshot to docs/screenshots/, prints how long the
// sign-in took, signs out and checks that the API is closed again.
//
//   node --test tests/e2e/                 (after npm ci --prefix tests/e2e)
//   PORTCULLIS_BIN=target/debug/portcullis  the gateway binary to use (default:
//                                           target/debug/portcullis if built,
//                                           else run.sh builds a release one)

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, test } from 'node:test';
import { chromium } from 'playwright-core';

const ROOT = path.resolve(import.meta.dirname, '../..');
const SHOTS = path.join(ROOT, 'docs/screenshots');
const CHROMIUM = '/usr/bin/chromium';
const SPA = 'http://127.0.0.1:3000/';
const APP = 'http://127.0.0.1:9080/app/';

let demo;
let demoLog = '';
let browser;

before(async () => {
  assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install chromium`);
  const debugBin = path.join(ROOT, 'target/debug/portcullis');
  const bin = process.env.PORTCULLIS_BIN ?? (fs.existsSync(debugBin) ? debugBin : undefined);
  demo = spawn('bash', [path.join(ROOT, 'examples/full-stack/run.sh')], {
    env: { ...process.env, ...(bin && { PORTCULLIS_BIN: bin }) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  await new Promise((resolve, reject) => {
    const collect = (chunk) => {
      demoLog += chunk;
      if (demoLog.includes('Full-stack demo ready')) resolve();
    };
    demo.stdout.on('data', collect);
    demo.stderr.on('data', collect);
    demo.on('exit', (code) => reject(new Error(`run.sh exited (${code}):\n${demoLog}`)));
  });

  // Loopback only: the flags keep chromium's own services quiet, the
  // resolver rule and the route filter stop any page from reaching out
  // (the provider's dev pages import a web font, for one).
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run',
      '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
    ],
  });
  fs.mkdirSync(SHOTS, { recursive: true });
});

after(async () => {
  await browser?.close();
  if (demo && demo.exitCode === null) {
    const exited = new Promise((resolve) => demo.on('exit', resolve));
    demo.kill('SIGTERM');
    await exited;
  }
});

// A fresh browser profile whose requests may only go to 127.0.0.1.
async function freshPage() {
  const context = await browser.newContext({ viewport: { width: 900, height: 640 } });
  await context.route((url) => url.hostname !== '127.0.0.1', (route) => route.abort());
  return { context, page: await context.newPage() };
}

// Clicks "Sign in", goes through the provider's login and consent pages as
// alice, and waits for alice on the page. Returns the milliseconds taken.
async function signIn(page) {
  await page.locator('#sign-in').waitFor();
  const started = performance.now();
  await page.click('#sign-in');
  await page.fill('input[name=login]', 'alice');
  await page.fill('input[name=password]', 'any password');
  await page.click('button[type=submit]');
  await page.getByRole('button', { name: 'Continue' }).click();
  await page.locator('#answer', { hasText: '"sub": "alice"' }).waitFor();
  return Math.round(performance.now() - started);
}

// Clicks "Sign out", confirms at the provider, and waits for the app again
// (the provider may add `?state=` to the address).
async function signOut(page, appUrl) {
  await page.click('#sign-out');
  await page.getByRole('button', { name: /yes, sign me out/i }).click();
  await page.waitForURL((url) => `${url.origin}${url.pathname}` === appUrl);
  await page.locator('#status', { hasText: 'signed out' }).waitFor();
}

test('variant A: the SPA signs in and sends its token through the gateway', async () => {
  const { context, page } = await freshPage();
  await page.goto(SPA);
  await page.locator('#status', { hasText: 'signed out' }).waitFor();

  const ms = await signIn(page);
  console.log(`variant A: Sign in → backend answer shown in ${ms} ms`);
  const answer = JSON.parse((await page.textContent('#answer')).replace(/^HTTP 200\n/, ''));
  assert.equal(answer.message, 'Hello from the backend');
  assert.equal(answer.user.sub, 'alice');
  assert.equal(answer.via, 'x-userinfo');
  await page.screenshot({ path: path.join(SHOTS, 'variant-a.png') });

  await signOut(page, SPA);
  assert.match(await page.textContent('#answer'), /^HTTP 401\n/);
  await context.close();
});

test('variant B: the gateway signs in and keeps the tokens', async () => {
  const { context, page } = await freshPage();
  await page.goto(APP);
  await page.locator('#status', { hasText: 'signed out' }).waitFor();

  const ms = await signIn(page);
  console.log(`variant B: Sign in → backend answer shown in ${ms} ms`);
  const answer = JSON.parse((await page.textContent('#answer')).replace(/^HTTP 200\n/, ''));
  assert.deepEqual(answer.user, { sub: 'alice', email: 'alice@example.test', name: 'alice' });
  assert.equal(answer.via, 'x-userinfo');
  await page.screenshot({ path: path.join(SHOTS, 'variant-b.png') });

  // The page's script sees no token and no session id.
  assert.equal(await page.evaluate(() => document.cookie), '');
  const session = (await context.cookies()).find((c) => c.name === 'portcullis_session');
  assert.ok(session?.httpOnly, 'the session cookie is set and httpOnly');

  // After sign-out the old session id no longer opens the API.
  await signOut(page, APP);
  assert.match(await page.textContent('#answer'), /^HTTP 401\n/);
  const replay = await fetch(`${APP}api/whoami`, {
    headers: { cookie: `portcullis_session=${session.value}` },
  });
  assert.equal(replay.status, 401);
  await context.close();
});
