// The official Socket.IO Admin UI (the web app shipped in npm
// @socket.io/admin-ui 0.5.1, ui/dist) in Chromium (Debian's package driven
// by playwright-core) against `parleyd --admin-ui`: the page is served from
// another origin by a small static server here, its connection form is
// filled in (parleyd's URL, username and the admin key), and the UI must
// show parleyd's sockets and server stats, and disconnect a real client
// from its Sockets page. The UI's web fonts and icons come from CDNs, which
// a test does not reach: those requests are aborted (the icons are missing
// from the screenshot).
//
// Screenshot: $PARLEY_ARTIFACTS/admin-ui.png (the build tree under CTest),
// and docs/admin-ui.png when PARLEY_UPDATE_SCREENSHOTS=1.

import assert from 'node:assert/strict';
import { existsSync, readFileSync, statSync, writeFileSync, copyFileSync, mkdirSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { checkPinned, cleanup, interopDir, loadPinned, lowFreePort, onCleanup, startParleyd, tempDir, withTimeout } from './lib/harness.mjs';
import { io } from './lib/sio.mjs';

const CHROMIUM = '/usr/bin/chromium';
const KEY = 'browser-admin-key-0123456789';

const TYPES = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8',
  '.png': 'image/png', '.svg': 'image/svg+xml', '.map': 'application/json',
};

/** Serves the UI's files (GET only, nothing outside ui/dist). */
async function startUiServer(port) {
  const root = path.join(checkPinned('@socket.io/admin-ui'), 'ui', 'dist');
  const server = http.createServer((req, res) => {
    const u = new URL(req.url, 'http://ui');
    const rel = u.pathname === '/' ? 'index.html' : decodeURIComponent(u.pathname).replace(/^\/+/, '');
    const file = path.resolve(root, rel);
    if (req.method !== 'GET' || !file.startsWith(root + path.sep) || !existsSync(file) || !statSync(file).isFile()) {
      res.writeHead(404, { 'Content-Length': '0' });
      res.end();
      return;
    }
    res.writeHead(200, { 'Content-Type': TYPES[path.extname(file)] ?? 'application/octet-stream' });
    res.end(readFileSync(file));
  });
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
  onCleanup(() => new Promise((resolve) => {
    server.closeAllConnections();
    server.close(() => resolve());
  }));
  return `http://127.0.0.1:${server.address().port}`;
}

/** Waits until the page's text matches re. */
async function waitText(page, re, what = String(re), ms = 10000) {
  try {
    await page.waitForFunction(([src, flags]) => new RegExp(src, flags).test(document.body.innerText), [re.source, re.flags], { timeout: ms });
  } catch (err) {
    throw new Error(`the page never showed ${what}: ${err.message}\n--- page text ---\n${await page.locator('body').innerText()}`);
  }
}

function connect(url, opts = {}) {
  const s = io(url, { forceNew: true, reconnection: false, ...opts });
  onCleanup(() => s.close());
  return new Promise((resolve, reject) => {
    s.once('connect', () => resolve(s));
    s.once('connect_error', reject);
  });
}

describe('the Socket.IO Admin UI in Chromium against parleyd --admin-ui', () => {
  let srv;
  let uiOrigin;
  let sioUrl;
  let browser;
  const pageErrors = [];

  before(async () => {
    if (!existsSync(CHROMIUM)) {
      throw new Error(`interop: ${CHROMIUM} is missing: run scripts/bootstrap from the repository root (it installs Debian's chromium package)`);
    }
    const { chromium } = await loadPinned('playwright-core');
    uiOrigin = await startUiServer(await lowFreePort());
    const keyFile = path.join(tempDir(), 'admin.key');
    writeFileSync(keyFile, KEY);
    /* The UI connects with credentials (withCredentials): CORS must name
     * its origin and allow credentials. The loopback exemption is off so
     * that the key is what lets the UI in. */
    /* --protocol-test's "/" handlers; relaxed heartbeats (its 300/200 ms
     * drop the sessions of a test process busy driving Chromium). */
    srv = await startParleyd(['--protocol-test', '--ping-interval', '5000', '--ping-timeout', '10000', '--connect-timeout', '10000', '--admin-ui', '--admin-key-file', keyFile, '--admin-loopback', 'off',
      '--cors-origin', uiOrigin, '--cors-credentials'], { wsPath: null });
    sioUrl = `http://127.0.0.1:${srv.port}`;
    browser = await withTimeout(chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--no-sandbox', '--disable-background-networking'],
    }), 60000, 'Chromium to start');
    onCleanup(() => browser.close());
  });

  after(async () => {
    await cleanup();
  });

  async function openUi(password) {
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    page.on('pageerror', (e) => pageErrors.push(e.message));
    /* Fonts and icons from CDNs: not reachable from a test. */
    await page.route((u) => !u.href.startsWith(uiOrigin) && !u.href.startsWith(sioUrl), (r) => r.abort());
    await page.goto(`${uiOrigin}/`);
    await page.getByLabel('Server URL').fill(sioUrl);
    await page.getByLabel('Username').fill('admin');
    await page.getByLabel('Password').fill(password);
    await page.getByRole('button', { name: 'Connect' }).click();
    return page;
  }

  test('a wrong key: the UI shows "invalid credentials" and stays disconnected', async () => {
    const page = await openUi('not-the-key');
    await page.getByText('invalid credentials').waitFor({ timeout: 10000 });
    assert.match(await page.locator('body').innerText(), /Status:\s*DISCONNECTED/);
    await page.close();
  });

  test('the dashboard (server stats), the sockets page and a disconnect from the UI', async () => {
    const a = await connect(`${sioUrl}/`, { transports: ['websocket'], extraHeaders: { Authorization: 'Bearer ui-secret-1' } });
    const b = await connect(`${sioUrl}/`, { transports: ['polling'] });
    await a.timeout(3000).emitWithAck('join', 'lobby');
    const page = await openUi(KEY);
    await page.waitForFunction(() => /Status:\s*CONNECTED/.test(document.body.innerText), null, { timeout: 10000 });

    /* Dashboard: server_stats made a healthy server and the namespaces'
     * socket counts. */
    await waitText(page, /Namespaces/);
    await waitText(page, /^\/\t2$/m, 'namespace / with 2 sockets');
    await waitText(page, /^\/admin\t1$/m, 'namespace /admin with 1 socket');
    await waitText(page, /^HEALTHY\s+1\s/m, 'one healthy server');
    await waitText(page, /^HTTP long-polling\s+1\s/m, 'one polling client');
    const shotDir = process.env.PARLEY_ARTIFACTS || tmpdir();
    mkdirSync(shotDir, { recursive: true });
    const shot = path.join(shotDir, 'admin-ui.png');
    await page.screenshot({ path: shot });
    if (process.env.PARLEY_UPDATE_SCREENSHOTS === '1') copyFileSync(shot, path.resolve(interopDir, '..', '..', 'docs', 'admin-ui.png'));

    /* Sockets page: both clients, their transports and address. */
    await page.getByText('Sockets', { exact: true }).first().click();
    const rowA = page.locator('tr', { hasText: a.id });
    const rowB = page.locator('tr', { hasText: b.id });
    await rowA.waitFor({ timeout: 10000 });
    await rowB.waitFor({ timeout: 10000 });
    assert.match(await rowA.innerText(), /127\.0\.0\.1/);
    assert.match(await rowA.innerText(), /WebSocket/);
    assert.match(await rowB.innerText(), /HTTP long-polling/);
    await page.screenshot({ path: path.join(shotDir, 'admin-ui-sockets.png') });

    /* The socket's page: its rooms, and its handshake without the secret. */
    await rowA.locator('td').first().click();
    await page.getByText('lobby').first().waitFor({ timeout: 10000 });
    const details = await page.locator('body').innerText();
    assert.ok(!details.includes('ui-secret-1'), 'the Authorization header is not shown');
    await page.getByText('Sockets', { exact: true }).first().click();

    /* Disconnect a from the Sockets page's row button. */
    const aId = a.id; /* the client forgets it at its disconnect */
    const disc = new Promise((resolve) => a.once('disconnect', resolve));
    await page.locator('tr', { hasText: aId }).locator('button').click();
    assert.equal(await withTimeout(disc, 10000, 'the client to be disconnected'), 'io server disconnect');
    /* The Sockets page no longer lists it (socket_disconnected). */
    await page.getByText('Sockets', { exact: true }).first().click();
    await waitText(page, new RegExp(`^${b.id}\\s`, 'm'), 'the other client still listed');
    await page.waitForFunction((id) => !document.body.innerText.includes(id), aId, { timeout: 10000 });
    assert.equal(b.connected, true);
    assert.deepEqual(pageErrors, [], 'no page errors');
    /* parleyd stops cleanly with the UI still connected (a sanitizer
     * build reports leaks and errors with a non-zero status). */
    const { code, signal } = await srv.stop();
    assert.ok(!/Sanitizer|runtime error/.test(srv.stderr()), srv.stderr());
    assert.deepEqual({ code, signal }, { code: 0, signal: null });
    await page.close();
  });
});
