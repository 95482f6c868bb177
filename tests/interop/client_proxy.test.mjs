// The libparley clients through an HTTP proxy (CONNECT tunnels): the
// Socket.IO client (sio_driver) against the npm socket.io server (plain
// http) and `parleyd --protocol-test` over TLS (https: TLS inside the
// tunnel), over polling, websocket and polling upgraded to websocket; the
// proxy set by the option and by the environment (http_proxy,
// https_proxy, no_proxy bypass); Basic credentials; a 407 and a 403
// reported with the proxy's status; a proxy answering an endless head (the
// client gives up at 8 KiB); and the WebSocket client (`parley ws`)
// through the same proxy. The proxy is written here (node:net) and counts
// its tunnels.

import assert from 'node:assert/strict';
import net from 'node:net';
import { after, describe, test } from 'node:test';
import { cleanup, makeSelfSignedCert, onCleanup, runParley, sleep, startParleyd, tempDir } from './lib/harness.mjs';
import { Driver, startRefServer } from './lib/driver.mjs';
import { startProtocolServer } from './lib/sio.mjs';

const PARLEY_EPROXY = -16;
const PARLEY_EPROXYAUTH = -17;
const NO_ENV = { http_proxy: '', HTTP_PROXY: '', https_proxy: '', HTTPS_PROXY: '', no_proxy: '', NO_PROXY: '' };

/**
 * A CONNECT proxy. opts.auth: the Proxy-Authorization value required
 * (else 407); opts.refuse: answer 403; opts.flood: answer a head that never
 * ends. tunnels: { target, auth, firstByte } per CONNECT accepted.
 */
async function startConnectProxy(opts = {}) {
  const tunnels = [];
  const requests = [];
  const socks = new Set();
  const server = net.createServer((c) => {
    socks.add(c);
    c.on('close', () => socks.delete(c));
    c.on('error', () => {});
    let head = Buffer.alloc(0);
    const onData = (d) => {
      head = Buffer.concat([head, d]);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) {
        if (head.length > 16384) c.destroy();
        return;
      }
      c.off('data', onData);
      const lines = head.subarray(0, end).toString('latin1').split('\r\n');
      const rest = head.subarray(end + 4);
      const [method, target] = lines[0].split(' ');
      const hdr = {};
      for (const l of lines.slice(1)) {
        const i = l.indexOf(':');
        hdr[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
      }
      requests.push({ method, target, auth: hdr['proxy-authorization'] ?? null, host: hdr.host });
      if (method !== 'CONNECT') return c.end('HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n');
      if (opts.refuse) return c.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n');
      if (opts.flood) {
        c.write('HTTP/1.1 200 OK\r\n');
        const t = setInterval(() => c.write(`X-Filler: ${'x'.repeat(1000)}\r\n`), 5);
        c.on('close', () => clearInterval(t));
        return undefined;
      }
      if (opts.auth && hdr['proxy-authorization'] !== opts.auth) {
        return c.end('HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="t"\r\nContent-Length: 0\r\n\r\n');
      }
      const m = /^\[?([^\]]+)\]?:(\d+)$/.exec(target);
      const u = net.connect(Number(m[2]), m[1]);
      socks.add(u);
      u.on('close', () => socks.delete(u));
      u.on('error', () => c.destroy());
      c.on('error', () => u.destroy());
      const t = { target, auth: hdr['proxy-authorization'] ?? null, firstByte: null };
      tunnels.push(t);
      u.on('connect', () => {
        c.write('HTTP/1.1 200 Connection Established\r\n\r\n');
        if (rest.length) u.write(rest);
        c.once('data', (d) => { t.firstByte = d[0]; });
        c.pipe(u);
        u.pipe(c);
      });
      return undefined;
    };
    c.on('data', onData);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const port = server.address().port;
  const stop = () => {
    for (const s of socks) s.destroy();
    return new Promise((r) => server.close(r));
  };
  onCleanup(stop);
  return { port, url: `http://127.0.0.1:${port}`, tunnels, requests, stop };
}

async function driverFor(url, { transports = 'both', proxy, env = {}, extra = {} } = {}) {
  const d = new Driver(undefined, { ...NO_ENV, ...env });
  await d.ok({ cmd: 'new', url, transports, delay: 100, delay_max: 300, timeout: 5000, ...(proxy === undefined ? {} : { proxy }), ...extra });
  await d.ok({ cmd: 'socket', nsp: '/' });
  await d.ok({ cmd: 'connect' });
  return d;
}

/** Connected, an echo round trip, and the final transport. */
async function roundTrip(d, final) {
  await d.next({ ev: 'connect', nsp: '/' }, 10000);
  await d.ok({ cmd: 'emit', event: 'message', args: ['through', { the: 'proxy' }] });
  const back = await d.event('message-back', '/', 10000);
  assert.deepEqual(back.args, ['through', { the: 'proxy' }]);
  for (let i = 0; i < 100; i++) {
    await d.cmd({ cmd: 'stats' });
    const st = await d.next({ ev: 'stats' });
    if (st.transport === final) return;
    await sleep(30);
  }
  assert.fail(`never on ${final}`);
}

const MODES = [
  { name: 'polling', transports: 'polling', final: 'polling' },
  { name: 'websocket', transports: 'websocket', final: 'websocket' },
  { name: 'polling then upgrade', transports: 'both', final: 'websocket' },
];

describe('clients through an HTTP CONNECT proxy', () => {
  after(cleanup);

  describe('Socket.IO client, npm socket.io server (http)', () => {
    for (const mode of MODES) {
      test(`${mode.name}: the proxy option, every connection tunnelled`, async () => {
        const srv = await startRefServer();
        onCleanup(() => srv.kill());
        const px = await startConnectProxy();
        const d = await driverFor(`http://127.0.0.1:${srv.port}`, { transports: mode.transports, proxy: px.url });
        await roundTrip(d, mode.final);
        assert.ok(px.tunnels.length >= 1);
        for (const t of px.tunnels) assert.equal(t.target, `127.0.0.1:${srv.port}`);
        assert.ok(px.requests.every((r) => r.method === 'CONNECT' && r.host === `127.0.0.1:${srv.port}` && r.auth === null));
        /* polling: GET and POST connections; websocket: one; upgrade: both. */
        if (mode.transports === 'websocket') assert.equal(px.tunnels.length, 1);
        else assert.ok(px.tunnels.length >= 2, JSON.stringify(px.tunnels));
        await d.ok({ cmd: 'exit' });
      });
    }

    test('http_proxy from the environment; no_proxy (exact host, suffix list, *) bypasses it; "" in the option overrides it', async () => {
      const srv = await startRefServer();
      onCleanup(() => srv.kill());
      const px = await startConnectProxy();
      const url = `http://127.0.0.1:${srv.port}`;
      let d = await driverFor(url, { env: { http_proxy: px.url, https_proxy: 'http://127.0.0.1:9' } });
      await roundTrip(d, 'websocket');
      const used = px.tunnels.length;
      assert.ok(used >= 2);
      await d.ok({ cmd: 'exit' });
      d = await driverFor(url, { env: { HTTP_PROXY: px.url } });
      await roundTrip(d, 'websocket');
      assert.ok(px.tunnels.length > used, 'HTTP_PROXY too');
      await d.ok({ cmd: 'exit' });
      const before = px.tunnels.length;
      for (const no of ['127.0.0.1', 'example.com, .0.0.1', '*']) {
        d = await driverFor(url, { env: { http_proxy: px.url, no_proxy: no } });
        await roundTrip(d, 'websocket');
        await d.ok({ cmd: 'exit' });
      }
      d = await driverFor(url, { env: { http_proxy: px.url, NO_PROXY: 'localhost,127.0.0.1' } });
      await roundTrip(d, 'websocket');
      await d.ok({ cmd: 'exit' });
      d = await driverFor(url, { env: { http_proxy: px.url }, proxy: '' });
      await roundTrip(d, 'websocket');
      await d.ok({ cmd: 'exit' });
      assert.equal(px.tunnels.length, before, 'bypassed: no tunnel');
      /* https_proxy is for https targets only; a dead one is not used here. */
      d = await driverFor(url, { env: { https_proxy: 'http://127.0.0.1:9' } });
      await roundTrip(d, 'websocket');
      await d.ok({ cmd: 'exit' });
    });

    test('Basic credentials from the URL (percent-decoded); without them 407, a refusal 403: reported with the proxy status, no retry storm', async () => {
      const srv = await startRefServer();
      onCleanup(() => srv.kill());
      const want = `Basic ${Buffer.from('us er:p@ss:w').toString('base64')}`;
      const px = await startConnectProxy({ auth: want });
      const url = `http://127.0.0.1:${srv.port}`;
      let d = await driverFor(url, { proxy: `http://us%20er:p%40ss%3Aw@127.0.0.1:${px.port}/` });
      await roundTrip(d, 'websocket');
      assert.ok(px.tunnels.every((t) => t.auth === want));
      await d.ok({ cmd: 'exit' });
      for (const [name, proxyUrl, status, err] of [
        ['no credentials', px.url, 407, PARLEY_EPROXYAUTH],
        ['wrong credentials', `http://u:bad@127.0.0.1:${px.port}`, 407, PARLEY_EPROXYAUTH],
        ['refused', (await startConnectProxy({ refuse: true })).url, 403, PARLEY_EPROXY],
      ]) {
        for (const transports of ['polling', 'websocket']) {
          d = await driverFor(url, { transports, proxy: proxyUrl });
          const e = await d.next({ ev: 'client', type: 'ERROR' }, 8000);
          assert.equal(e.status, status, name);
          assert.equal(e.err, err, name);
          await d.next({ ev: 'client', type: 'RECONNECT_FAILED' }, 3000);
          await sleep(400);
          assert.equal(d.all({ ev: 'client', type: 'CONNECTING' }).length, 1, `${name}: no retry`);
          assert.equal(d.all({ ev: 'connect' }).length, 0);
          await d.ok({ cmd: 'exit' });
        }
      }
    });

    test('a proxy whose response head never ends: the client stops at 8 KiB (an error, then retries)', async () => {
      const px = await startConnectProxy({ flood: true });
      for (const transports of ['polling', 'websocket']) {
        const d = await driverFor('http://127.0.0.1:9', { transports, proxy: px.url, extra: { attempts: 1 } });
        const e = await d.next({ ev: 'client', type: 'ERROR' }, 8000);
        assert.equal(e.err, -3 /* PARLEY_EPROTO */);
        await d.ok({ cmd: 'exit' });
      }
    });
  });

  describe('TLS inside the tunnel: https:// to parleyd --protocol-test', () => {
    let srv;
    test('start parleyd with TLS', async () => {
      const cert = makeSelfSignedCert(tempDir(), 'server');
      srv = await startProtocolServer({ extra: ['--tls-cert', cert.certFile, '--tls-key', cert.keyFile] });
      onCleanup(() => srv.stop('SIGKILL'));
    });
    for (const mode of MODES) {
      test(`${mode.name}: https_proxy from the environment; the tunnel carries TLS`, async () => {
        const px = await startConnectProxy();
        const d = await driverFor(`https://127.0.0.1:${srv.port}`, {
          transports: mode.transports, env: { https_proxy: px.url, http_proxy: 'http://127.0.0.1:9' }, extra: { insecure: 1 },
        });
        await d.next({ ev: 'connect', nsp: '/' }, 10000);
        await d.event('auth', '/', 5000);
        await d.ok({ cmd: 'emit', event: 'message', args: ['tls'] });
        assert.deepEqual((await d.event('message-back', '/', 10000)).args, ['tls']);
        assert.ok(px.tunnels.length >= 1);
        for (const t of px.tunnels) {
          assert.equal(t.target, `127.0.0.1:${srv.port}`);
          assert.equal(t.firstByte, 0x16, 'a TLS handshake record first');
        }
        await d.ok({ cmd: 'exit' });
      });
    }
  });

  describe('WebSocket client (parley ws) to parleyd --ws-echo', () => {
    test('through --proxy: echo; refused (403) and 407 reported', async () => {
      const srv = await startParleyd();
      onCleanup(() => srv.stop('SIGKILL'));
      const px = await startConnectProxy({ auth: 'Basic dTpw' });
      const url = `ws://127.0.0.1:${srv.port}/echo`;
      const ok = runParley(['ws-echo', url, '--proxy', `http://u:p@127.0.0.1:${px.port}`, '--timeout', '5000'], { timeoutMs: 20000 });
      /* ws-echo echoes what the server sends; the echo server sends nothing,
       * so connected = a tunnel whose first bytes are the upgrade request. */
      for (let i = 0; i < 200 && !(px.tunnels.length && px.tunnels[0].firstByte); i++) await sleep(25);
      assert.equal(px.tunnels.length, 1);
      assert.equal(px.tunnels[0].target, `127.0.0.1:${srv.port}`);
      assert.equal(px.tunnels[0].firstByte, 'G'.charCodeAt(0));
      ok.child.kill('SIGTERM');
      await ok.done.catch(() => {});
      const noauth = await runParley(['ws-echo', url, '--proxy', px.url, '--timeout', '5000'], { timeoutMs: 20000 }).done;
      assert.equal(noauth.code, 1);
      assert.match(noauth.stderr, /proxy requires authentication \(407\): HTTP 407/, noauth.stderr);
      const refuse = await startConnectProxy({ refuse: true });
      const no = await runParley(['ws-echo', url, '--proxy', refuse.url, '--timeout', '5000'], { timeoutMs: 20000 }).done;
      assert.equal(no.code, 1);
      assert.match(no.stderr, /proxy refused the tunnel: HTTP 403/, no.stderr);
    });
  });
});
