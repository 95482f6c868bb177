// The live dashboard in Debian's Chromium (driven by playwright-core):
// /dashboard loads under its strict CSP without a console error or page
// error, its figures and charts move with traffic made by
// socket.io-client (over Server-Sent Events, no reload), it fits a
// phone's width, and the login form works with --admin-loopback off.
// A screenshot goes to $PARLEY_ARTIFACTS (default: a temporary
// directory) and, with PARLEY_UPDATE_SCREENSHOTS=1, to docs/dashboard.png.

import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { cleanup, interopDir, loadPinned, onCleanup, sleep, tempDir, withTimeout } from './lib/harness.mjs';
import { ChatClient, dm, makeToken, startChatServer } from './lib/chat.mjs';

const CHROMIUM = '/usr/bin/chromium';
const ADMIN_KEY = 'browser-admin-key-0123456789abcdef';

const artifacts = process.env.PARLEY_ARTIFACTS ?? path.join(os.tmpdir(), 'parley-artifacts');

async function device(server, user, { role, transports } = {}) {
  const c = new ChatClient(server, { user, transports, token: makeToken(user, role ? { claims: { role } } : {}) });
  await c.connected();
  return c;
}

describe('dashboard in Chromium', () => {
  let context;
  const problems = [];

  before(async () => {
    if (!existsSync(CHROMIUM)) {
      throw new Error(`interop: ${CHROMIUM} is missing: run scripts/bootstrap from the repository root (it installs Debian's chromium package)`);
    }
    const { chromium } = await loadPinned('playwright-core');
    context = await withTimeout(chromium.launchPersistentContext(tempDir(), {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 1280, height: 1000 },
      args: ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync',
        '--no-first-run', '--disable-gpu'],
    }), 60000, 'Chromium to start');
    onCleanup(() => context.close());
  });

  after(cleanup);

  async function newPage() {
    problems.length = 0;
    const page = await context.newPage();
    page.on('console', (m) => {
      if (m.type() === 'error' || m.type() === 'warning') problems.push(`[console.${m.type()}] ${m.text()}`);
    });
    page.on('pageerror', (e) => problems.push(`[pageerror] ${e.message}`));
    page.on('requestfailed', (r) => {
      /* The event stream is cut when the page closes: not a problem. */
      if (!r.url().endsWith('/dashboard/events')) problems.push(`[requestfailed] ${r.url()} ${r.failure()?.errorText}`);
    });
    return page;
  }

  const text = (page, id) => page.$eval(`#${id}`, (e) => e.textContent);
  const points = (page, id) => page.$eval(`#${id}`, (e) => Number(e.dataset.points ?? 0));

  test('figures and charts move with traffic, live over SSE; no console or page errors', async (t) => {
    const srv = await startChatServer({ extra: ['--low-delay', '0'] });
    const page = await newPage();
    await page.goto(`http://127.0.0.1:${srv.port}/dashboard`);
    await page.waitForFunction(() => document.getElementById('live-text').textContent === 'live', null, { timeout: 10000 });
    await page.waitForFunction(() => document.getElementById('messages-stored').textContent === '0', null, { timeout: 10000 });
    const loadedAt = await page.evaluate(() => performance.timeOrigin);

    /* Traffic: messages both ways, receipts, presence, notifications, a failure. */
    const [alice, bob, carol, noti] = ['alice', 'bob', 'carol', 'noti'];
    const a = await device(srv, alice);
    const b = await device(srv, bob, { transports: ['polling'] });
    const c = await device(srv, carol);
    const n = await device(srv, noti, { role: 'notifier' });
    await b.ok('sync', { since: {} });
    await c.ok('presence_set', { status: 'busy' });
    await b.ok('presence_set', { status: 'away' });
    for (let round = 0; round < 4; round++) {
      let last;
      for (let i = 0; i < 3 + round; i++) last = await a.text({ to: bob }, `message ${round}.${i}`);
      await b.ok('receipt', { conversation: dm(alice, bob), status: 'delivered', seq: last.seq });
      if (round % 2) await b.ok('receipt', { conversation: dm(alice, bob), status: 'read', seq: last.seq });
      await n.ok('notify', { to: bob, type: 'alert', title: `alert ${round}` });
      await a.fails('send_message', { client_id: `bad-${round}`, to: bob, type: 'text', content: {} }, 'missing_field');
      await sleep(1100);
    }
    const stored = 3 + 4 + 5 + 6;
    await page.waitForFunction((want) => Number(document.getElementById('messages-stored').textContent) === want,
      stored, { timeout: 10000 });
    await page.waitForFunction(() => Number(document.getElementById('chart-messages').dataset.points) >= 5, null, { timeout: 10000 });
    assert.equal(await text(page, 'sessions-polling'), '1');
    assert.equal(await text(page, 'sessions-websocket'), '3');
    assert.equal(await text(page, 'chat-users'), '4');
    assert.equal(await text(page, 'presence-away'), '1');
    assert.equal(await text(page, 'presence-busy'), '1');
    assert.equal(await text(page, 'notif-created'), '4');
    assert.equal(await text(page, 'messages-failed'), '4');
    assert.match(await text(page, 'errors-body'), /send_message failed\s*missing_field\s*4/);
    assert.match(await text(page, 'cluster'), /Single node/);
    assert.match(await text(page, 'uptime'), /\d+s/);
    assert.ok(await points(page, 'chart-connections') >= 5);
    /* The ack latency figure is a number of milliseconds. */
    assert.match(await text(page, 'ack-latency'), /^(\d+\.\d+ ms|–)$/);
    /* Still the same document: updates came without a reload. */
    assert.equal(await page.evaluate(() => performance.timeOrigin), loadedAt);

    mkdirSync(artifacts, { recursive: true });
    const shot = path.join(artifacts, 'dashboard.png');
    await page.screenshot({ path: shot, fullPage: true });
    t.diagnostic(`screenshot: ${shot}`);
    if (process.env.PARLEY_UPDATE_SCREENSHOTS === '1') {
      const docs = path.resolve(interopDir, '..', '..', 'docs', 'dashboard.png');
      copyFileSync(shot, docs);
      t.diagnostic(`updated ${docs}`);
    }

    /* A phone's width: no horizontal scrolling. */
    await page.setViewportSize({ width: 390, height: 844 });
    await sleep(300);
    const widths = await page.evaluate(() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]);
    assert.ok(widths[0] <= widths[1], `no horizontal scroll on a phone: ${widths}`);
    const phone = path.join(artifacts, 'dashboard-phone.png');
    await page.screenshot({ path: phone, fullPage: false });
    t.diagnostic(`phone screenshot: ${phone}`);
    await page.close();
    for (const x of [a, b, c, n]) x.close();
    assert.deepEqual(problems, [], 'console errors, page errors or failed requests');
    await srv.stop();
  });

  test('login form with --admin-loopback off: wrong key refused, right key logs in, logout', async () => {
    const keyFile = path.join(tempDir(), 'admin.key');
    writeFileSync(keyFile, `${ADMIN_KEY}\n`);
    const srv = await startChatServer({ extra: ['--admin-loopback', 'off', '--admin-key-file', keyFile] });
    const base = `http://127.0.0.1:${srv.port}`;
    const page = await newPage();
    await page.goto(`${base}/dashboard`);
    assert.equal(new URL(page.url()).pathname, '/dashboard/login', 'sent to the login form');
    await page.fill('#key', 'not-the-key');
    await Promise.all([page.waitForNavigation(), page.click('#login-submit')]);
    assert.match(await page.textContent('#login-error'), /Wrong key/);
    await page.goto(`${base}/dashboard/login`);
    await page.fill('#key', ADMIN_KEY);
    await Promise.all([page.waitForNavigation(), page.click('#login-submit')]);
    assert.equal(new URL(page.url()).pathname, '/dashboard');
    await page.waitForFunction(() => document.getElementById('live-text').textContent === 'live', null, { timeout: 10000 });
    await page.waitForFunction(() => document.getElementById('rss').textContent.includes('iB'), null, { timeout: 10000 });
    const cookies = await context.cookies(base);
    const cookie = cookies.find((x) => x.name === 'parley_admin');
    assert.ok(cookie, 'the session cookie');
    assert.equal(cookie.httpOnly, true);
    assert.equal(cookie.sameSite, 'Strict');
    assert.equal(cookie.path, '/');
    assert.match(cookie.value, /^[0-9a-f]{64}$/);
    /* Not readable from scripts. */
    assert.equal(await page.evaluate(() => document.cookie.includes('parley_admin')), false);
    await Promise.all([page.waitForNavigation(), page.click('.logout button')]);
    assert.equal(new URL(page.url()).pathname, '/dashboard/login');
    await page.goto(`${base}/dashboard`);
    assert.equal(new URL(page.url()).pathname, '/dashboard/login', 'logged out');
    await page.close();
    /* The wrong key's answer is a 401 page: the browser logs that status. */
    assert.deepEqual(problems.filter((p) => !p.includes('status of 401')), [], 'console errors or page errors');
    await srv.stop();
  });
});
