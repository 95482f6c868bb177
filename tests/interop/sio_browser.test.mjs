// Chromium (Debian's package, driven by playwright-core) running the
// socket.io-client browser bundle from a page served by this test, against
// `parleyd --protocol-test` on another origin (another port), so every
// polling request is a cross-origin one and CORS is exercised.

import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { checkPinned, cleanup, loadPinned, onCleanup, tempDir, withTimeout } from './lib/harness.mjs';
import { startProtocolServer } from './lib/sio.mjs';

const CHROMIUM = '/usr/bin/chromium';

const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>parley socket.io browser test</title>
<script src="/socket.io.min.js"></script></head>
<body><p>parley socket.io browser test</p>
<script>
  /* Resolves with the next event "name" on socket s (args as an array). */
  window.nextEvent = (s, name, ms = 5000) => new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('timed out waiting for ' + name)), ms);
    s.once(name, (...args) => { clearTimeout(t); resolve(args); });
  });
  /* Connects and waits for connect + the server's auth event. */
  window.open_ = async (url, opts) => {
    const s = io(url, { forceNew: true, reconnection: false, ...opts });
    window.sockets = (window.sockets || []).concat(s);
    /* The transport the Engine.IO session opened on: an upgrade can be
     * over before the connect event. */
    s.io.once('open', () => { s.firstTransport = s.io.engine.transport.name; });
    s.io.engine.once('upgrade', (t) => { s.upgradedTo = t.name; });
    const auth = window.nextEvent(s, 'auth', 10000);
    await new Promise((resolve, reject) => {
      s.once('connect', resolve);
      s.once('connect_error', (e) => reject(new Error('connect_error: ' + e.message)));
    });
    return { s, auth: (await auth)[0] };
  };
  window.waitTransport = async (s, name, ms = 3000) => {
    const end = Date.now() + ms;
    while (s.io.engine.transport.name !== name && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
    return s.io.engine.transport.name;
  };
  /* Binary values as plain arrays so they cross into Node as JSON. */
  window.describeValue = (v) => {
    if (v instanceof ArrayBuffer) return { ArrayBuffer: Array.from(new Uint8Array(v)) };
    if (ArrayBuffer.isView(v)) return { [v.constructor.name]: Array.from(new Uint8Array(v.buffer, v.byteOffset, v.byteLength)) };
    if (Array.isArray(v)) return v.map(window.describeValue);
    if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, window.describeValue(x)]));
    return v;
  };
  window.ready = true;
</script></body></html>`;

/** Serves the test page and the socket.io-client browser bundle. */
async function startPageServer() {
  const dir = checkPinned('socket.io-client');
  const bundle = readFileSync(path.join(dir, 'dist', 'socket.io.min.js'));
  const server = http.createServer((req, res) => {
    if (req.url === '/') {
      res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
      res.end(PAGE);
    } else if (req.url === '/socket.io.min.js') {
      res.writeHead(200, { 'Content-Type': 'text/javascript; charset=utf-8' });
      res.end(bundle);
    } else {
      res.writeHead(404, { 'Content-Length': '0' });
      res.end();
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  onCleanup(() => new Promise((resolve) => {
    server.closeAllConnections();
    server.close(() => resolve());
  }));
  return `http://127.0.0.1:${server.address().port}`;
}

describe('Chromium + socket.io-client bundle against parleyd --protocol-test', () => {
  let srv;
  let pageOrigin;
  let context;
  let sioUrl;
  const pageLog = [];

  before(async () => {
    if (!existsSync(CHROMIUM)) {
      throw new Error(`interop: ${CHROMIUM} is missing: run scripts/bootstrap from the repository root (it installs Debian's chromium package)`);
    }
    const { chromium } = await loadPinned('playwright-core');
    [srv, pageOrigin] = await Promise.all([startProtocolServer(), startPageServer()]);
    sioUrl = `http://127.0.0.1:${srv.port}`;
    context = await withTimeout(chromium.launchPersistentContext(tempDir(), {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync',
        '--no-first-run', '--disable-gpu', '--disable-quic',
      ],
    }), 60000, 'Chromium to start');
    onCleanup(() => context.close());
  });

  after(async () => {
    await cleanup();
  });

  /** A fresh page of the test origin with the bundle loaded. */
  async function newPage() {
    const page = await context.newPage();
    page.on('console', (m) => pageLog.push(`[console.${m.type()}] ${m.text()}`));
    page.on('pageerror', (e) => pageLog.push(`[pageerror] ${e.message}`));
    await page.goto(`${pageOrigin}/`);
    await page.waitForFunction(() => window.ready === true && typeof window.io === 'function', null, { timeout: 10000 });
    return page;
  }

  /** page.evaluate with the page's console output in the failure message. */
  async function run(page, fn, arg) {
    try {
      return await withTimeout(page.evaluate(fn, arg), 30000, 'the page script');
    } catch (err) {
      throw new Error(`${err.message}\n--- page log ---\n${pageLog.slice(-30).join('\n')}`);
    } finally {
      await page.close().catch(() => {});
    }
  }

  test('the page and parleyd are on different origins', () => {
    assert.notEqual(new URL(pageOrigin).origin, new URL(sioUrl).origin);
  });

  test('default transports: connect, auth, emit/echo, ack, and the upgrade to websocket', async () => {
    const page = await newPage();
    const r = await run(page, async (url) => {
      const { s, auth } = await window.open_(url, { auth: { browser: 'chromium', n: 1 } });
      const first = s.firstTransport;
      s.emit('message', 'hello', { nested: [1, 'two', null] }, 3.5);
      const back = await window.nextEvent(s, 'message-back');
      const acked = await s.timeout(5000).emitWithAck('message-with-ack', { q: 'ack?' });
      const transport = await window.waitTransport(s, 'websocket');
      const upgradedTo = s.upgradedTo;
      s.emit('message', 'after upgrade');
      const back2 = await window.nextEvent(s, 'message-back');
      const id = typeof s.id;
      s.disconnect();
      return { auth, first, back, acked, transport, upgradedTo, back2, id };
    }, sioUrl);
    assert.deepEqual(r, {
      auth: { browser: 'chromium', n: 1 },
      first: 'polling',
      back: ['hello', { nested: [1, 'two', null] }, 3.5],
      acked: { q: 'ack?' },
      transport: 'websocket',
      upgradedTo: 'websocket',
      back2: ['after upgrade'],
      id: 'string',
    });
  });

  for (const transports of [['polling'], ['websocket']]) {
    test(`${transports[0]} only: connect, emit/echo, ack, unicode`, async () => {
      const page = await newPage();
      const r = await run(page, async ([url, t]) => {
        const { s, auth } = await window.open_(url, { transports: t });
        const text = 'héllo 中文 😀 مرحبا';
        s.emit('message', text, [true, false, null, -1e-3]);
        const back = await window.nextEvent(s, 'message-back');
        const acked = await new Promise((resolve) => s.emit('message-with-ack', 1, 'b', { c: [] }, (...a) => resolve(a)));
        await new Promise((r2) => setTimeout(r2, 700));
        const transport = s.io.engine.transport.name;
        s.disconnect();
        return { auth, back, acked, transport };
      }, [sioUrl, transports]);
      assert.deepEqual(r, {
        auth: {},
        back: ['héllo 中文 😀 مرحبا', [true, false, null, -1e-3]],
        acked: [1, 'b', { c: [] }],
        transport: transports[0],
      });
    });
  }

  for (const transports of [['polling'], ['websocket'], undefined]) {
    test(`binary round trip (ArrayBuffer, Uint8Array, nested, empty) over ${transports?.[0] ?? 'the default transports'}`, async () => {
      const page = await newPage();
      const r = await run(page, async ([url, t]) => {
        const { s } = await window.open_(url, t ? { transports: t } : {});
        const ab = new Uint8Array([0, 1, 2, 253, 254, 255]).buffer;
        const u8 = new Uint8Array(1000).map((_, i) => (i * 7) & 0xff);
        s.emit('message', ab, { inner: new Uint8Array([9, 8, 7]), list: [new Uint8Array(0), 'text'] }, u8);
        const back = await window.nextEvent(s, 'message-back');
        const acked = await s.timeout(5000).emitWithAck('message-with-ack', new Uint8Array([42]));
        s.disconnect();
        return { back: window.describeValue(back), acked: window.describeValue(acked) };
      }, [sioUrl, transports]);
      assert.deepEqual(r.back, [
        { ArrayBuffer: [0, 1, 2, 253, 254, 255] },
        { inner: { ArrayBuffer: [9, 8, 7] }, list: [{ ArrayBuffer: [] }, 'text'] },
        { ArrayBuffer: Array.from({ length: 1000 }, (_, i) => (i * 7) & 0xff) },
      ]);
      assert.deepEqual(r.acked, { ArrayBuffer: [42] });
    });
  }

  test('CORS from the page: a cross-origin fetch of a polling handshake is readable', async () => {
    const page = await newPage();
    const r = await run(page, async (url) => {
      const res = await fetch(`${url}/socket.io/?EIO=4&transport=polling`, { method: 'GET' });
      const body = await res.text();
      const sid = JSON.parse(body.slice(1)).sid;
      /* A POST with a content type outside the CORS-safelisted set forces
       * a preflight. */
      const post = await fetch(`${url}/socket.io/?EIO=4&transport=polling&sid=${sid}`, {
        method: 'POST', body: '40', headers: { 'Content-Type': 'application/json' },
      });
      return { status: res.status, open: body[0], post: post.status, postBody: await post.text() };
    }, sioUrl);
    assert.deepEqual(r, { status: 200, open: '0', post: 200, postBody: 'ok' });
  });
});
