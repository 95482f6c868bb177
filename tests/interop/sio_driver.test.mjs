// The libparley Socket.IO client (driven through tests/interop/sio_driver.c)
// against the npm socket.io 4.8 reference server and against
// `parleyd --protocol-test`, in three transport modes (polling only,
// websocket only, default: polling then upgrade): JSON types, unicode,
// binary, acks both ways with timeouts, namespaces, middleware rejection
// and auth refresh, volatile, connection-state recovery, restart on the
// same port with buffered emits, a 401 handshake (no reconnect storm), and
// malformed input from fake servers (an error, a clean reconnect).

import assert from 'node:assert/strict';
import http from 'node:http';
import { after, describe, test } from 'node:test';
import { cleanup, onCleanup, sleep } from './lib/harness.mjs';
import { b64, Driver, startProxy, startRefServer, unb64 } from './lib/driver.mjs';
import { io, startProtocolServer } from './lib/sio.mjs';
import { WebSocketServer } from './lib/peer.mjs';

const MODES = [
  { name: 'polling', transports: 'polling', final: 'polling' },
  { name: 'websocket', transports: 'websocket', final: 'websocket' },
  { name: 'default (polling then upgrade)', transports: 'both', final: 'websocket' },
];

const SERVERS = [
  {
    name: 'parleyd --protocol-test',
    async start({ recovery = false, port = 0 } = {}) {
      const s = await startProtocolServer({ recovery, port });
      return { port: s.port, kill: () => s.stop('SIGKILL') };
    },
  },
  {
    name: 'socket.io 4.8 (npm)',
    async start({ recovery = false, port = 0 } = {}) {
      const s = await startRefServer({ recovery, port });
      return { port: s.port, kill: () => s.kill() };
    },
  },
];

const JSON_CASES = [
  ['a string'], [''], [0, 42, -17, 3.14159, -0.5, 1e-7, Number.MAX_SAFE_INTEGER, -Number.MAX_SAFE_INTEGER],
  [true, false, null, {}, []],
  [{ a: 1, b: 'two', c: [3, 4, { d: null }], e: { f: { g: { h: [[], {}, [[]]] } } }, 'quote"back\\slash': 'ctl\u0001\n\t' }],
  ['héllo wörld – ñ ¿ € ß', '中文字符 日本語 한국어', '😀🎉🚀 𝄞 𠜎 👩‍👩‍👧‍👦', 'مرحبا بالعالم', '\u2028\u2029 \ufeff \u00a0'],
  [],
];

async function newDriver(port, mode, extra = {}) {
  const d = new Driver();
  await d.ok({ cmd: 'new', url: `http://127.0.0.1:${port}`, transports: mode.transports, delay: 100, delay_max: 400, timeout: 5000, ...extra });
  return d;
}

/** Waits for the connect of nsp and its auth event; returns auth args. */
async function connected(d, nsp = '/', ms = 8000) {
  const c = await d.next({ ev: 'connect', nsp }, ms);
  const a = await d.event('auth', nsp, ms);
  return { connect: c, args: a.args };
}

async function assertTransport(d, want) {
  for (let i = 0; i < 100; i++) {
    await d.cmd({ cmd: 'stats' });
    const st = await d.next({ ev: 'stats' });
    if (st.transport === want) return st;
    await sleep(30);
  }
  assert.fail(`the client never ran on ${want}`);
}

describe('libparley client (sio_driver) against Socket.IO servers', () => {
  after(cleanup);

  for (const server of SERVERS) {
    describe(server.name, () => {
      for (const mode of MODES) {
        describe(`transport: ${mode.name}`, () => {
          test('events, JSON types, unicode, binary, acks both ways, timeouts, namespaces, middleware, volatile, stats', async () => {
            const srv = await server.start();
            const d = await newDriver(srv.port, mode);
            await d.ok({ cmd: 'socket', nsp: '/' });
            await d.ok({ cmd: 'connect' });
            const { args: auth } = await connected(d);
            assert.deepEqual(auth, [{}]);
            for (const args of JSON_CASES) {
              await d.ok({ cmd: 'emit', event: 'message', args });
              const e = await d.event('message-back');
              assert.deepEqual(e.args, args);
            }
            /* Binary: nested, several, empty, large. */
            const big = Buffer.alloc(300000, 7).map((_, i) => (i * 31) & 0xff);
            const bins = [Buffer.from([0, 1, 2, 255]), Buffer.alloc(0), big];
            await d.ok({
              cmd: 'emit', event: 'message',
              args: [{ a: [1, { _placeholder: true, num: 0 }] }, 'x', { _placeholder: true, num: 1 }, { _placeholder: true, num: 2 }],
              bins: bins.map(b64),
            });
            const be = await d.event('message-back');
            assert.deepEqual(be.args, [{ a: [1, { _placeholder: true, num: 0 }] }, 'x', { _placeholder: true, num: 1 }, { _placeholder: true, num: 2 }]);
            assert.deepEqual(be.bins.map(unb64), bins);
            /* client -> server acks, with binary. */
            await d.ok({ cmd: 'emit', event: 'message-with-ack', args: [1, 'two', { three: [3] }], ack_timeout: 3000, tag: 'a1' });
            let ack = await d.next({ ev: 'ack', tag: 'a1' });
            assert.equal(ack.err, 0);
            assert.deepEqual(ack.args, [1, 'two', { three: [3] }]);
            await d.ok({ cmd: 'emit', event: 'message-with-ack', args: [{ _placeholder: true, num: 0 }], bins: [b64([9, 8, 7])], ack_timeout: 3000, tag: 'a2' });
            ack = await d.next({ ev: 'ack', tag: 'a2' });
            assert.deepEqual(ack.bins.map(unb64), [Buffer.from([9, 8, 7])]);
            /* Ack timeout. */
            const t0 = Date.now();
            await d.ok({ cmd: 'emit', event: 'nobody-acks', args: [], ack_timeout: 300, tag: 'a3' });
            ack = await d.next({ ev: 'ack', tag: 'a3' });
            assert.equal(ack.err, -7, 'PARLEY_ETIMEDOUT');
            assert.ok(Date.now() - t0 >= 280);
            /* server -> client acks. */
            await d.ok({ cmd: 'emit', event: 'server-ack', args: ['ask', 3000, 'q', { z: null }] });
            const ask = await d.event('ask');
            assert.deepEqual(ask.args, ['q', { z: null }]);
            assert.ok(ask.ack >= 0, 'the server asked for an ack');
            await d.ok({ cmd: 'ack', id: ask.ack, args: ['answer', { _placeholder: true, num: 0 }], bins: [b64([5, 6])] });
            const res = await d.event('server-ack-result');
            assert.equal(res.args[0].ok, true);
            assert.equal(res.args[0].args[0], 'answer');
            assert.deepEqual(res.bins.map(unb64), [Buffer.from([5, 6])]);
            /* Namespaces on the same connection. */
            await d.ok({ cmd: 'socket', nsp: '/custom', auth: { who: 'custom' } });
            const { args: cauth } = await connected(d, '/custom');
            assert.deepEqual(cauth, [{ who: 'custom' }]);
            /* Middleware: refused, then accepted with a fresh token. */
            await d.ok({ cmd: 'socket', nsp: '/middleware', auth: { token: 'bad' } });
            const ce = await d.next({ ev: 'connect_error', nsp: '/middleware' });
            assert.equal(ce.message, 'unauthorized');
            assert.deepEqual(ce.data, { reason: 'bad token' });
            await d.ok({ cmd: 'auth', nsp: '/middleware', auth: { token: 'ok' } });
            await d.ok({ cmd: 'sock_connect', nsp: '/middleware' });
            const { args: mauth } = await connected(d, '/middleware');
            assert.deepEqual(mauth, [{ token: 'ok' }]);
            /* Volatile while connected. Either side may drop a volatile
             * packet when its transport is not writable at that instant
             * (over polling: no GET or a POST in flight), which a loaded
             * machine makes likely: a few tries, one must come back. */
            let back = null;
            for (let i = 0; i < 10 && !back; i++) {
              await d.ok({ cmd: 'emit', event: 'volatile', args: ['vol-back', 1, 'v'], volatile: true });
              back = await d.event('vol-back', '/', 1000).catch(() => null);
            }
            assert.ok(back, 'no volatile emit came back in 10 tries');
            assert.deepEqual(back.args, [1, 'v']);
            /* An unknown namespace. */
            await d.ok({ cmd: 'socket', nsp: '/nope' });
            const bad = await d.next({ ev: 'connect_error', nsp: '/nope' });
            assert.equal(bad.message, 'Invalid namespace');
            /* The transport it ended up on, stats, counts. */
            const st = await assertTransport(d, mode.final);
            assert.equal(st.connects, 1);
            assert.ok(st.packets_in > 10 && st.packets_out > 10 && st.bytes_out > 300000);
            if (mode.final !== mode.transports && mode.transports === 'both') assert.equal(d.all({ ev: 'client', type: 'UPGRADE' }).length, 1);
            await d.ok({ cmd: 'counts', nsp: '/' });
            const counts = (await d.next({ ev: 'counts' })).counts;
            assert.deepEqual(counts.message, [0, JSON_CASES.length + 1]);
            assert.deepEqual(counts['message-back'], [JSON_CASES.length + 1, 0]);
            /* Client close. */
            await d.ok({ cmd: 'close' });
            const dis = await d.next({ ev: 'disconnect', nsp: '/' });
            assert.equal(dis.reason, 'io client disconnect');
            await d.ok({ cmd: 'exit' });
            await srv.kill();
          });

          test('server namespace disconnect fails pending acks; buffered emits go out in order on reconnect', async () => {
            const srv = await server.start();
            const d = await newDriver(srv.port, mode);
            await d.ok({ cmd: 'socket', nsp: '/' });
            await d.ok({ cmd: 'connect' });
            await connected(d);
            await d.ok({ cmd: 'emit', event: 'nobody-acks', args: [], ack_timeout: 0, tag: 'p' });
            await d.ok({ cmd: 'emit', event: 'disconnect-me', args: [] });
            const ack = await d.next({ ev: 'ack', tag: 'p' });
            assert.equal(ack.err, -6, 'PARLEY_ECLOSED');
            assert.equal((await d.next({ ev: 'disconnect' })).reason, 'io server disconnect');
            for (let i = 0; i < 5; i++) await d.ok({ cmd: 'emit', event: 'message', args: [i] });
            await d.ok({ cmd: 'emit', event: 'volatile', args: ['vol-back', 'dropped'], volatile: true });
            await d.ok({ cmd: 'sock_connect' });
            await d.next({ ev: 'connect', nsp: '/' });
            for (let i = 0; i < 5; i++) assert.deepEqual((await d.event('message-back')).args, [i]);
            await d.ok({ cmd: 'emit', event: 'message', args: ['sync'] });
            assert.deepEqual((await d.event('message-back')).args, ['sync']);
            assert.equal(d.all({ ev: 'event', event: 'vol-back' }).length, 0, 'a volatile emit while disconnected is dropped');
            await d.ok({ cmd: 'exit' });
            await srv.kill();
          });

          test('killed and restarted on the same port: reconnects, auth refreshed, buffered emits arrive once, in order', async () => {
            let srv = await server.start();
            const port = srv.port;
            const d = await newDriver(port, mode);
            await d.ok({ cmd: 'socket', nsp: '/', auth: { token: 'first' } });
            await d.ok({ cmd: 'connect' });
            assert.deepEqual((await connected(d)).args, [{ token: 'first' }]);
            await srv.kill();
            const dis = await d.next({ ev: 'disconnect' });
            assert.ok(['transport close', 'transport error'].includes(dis.reason), dis.reason);
            await d.next({ ev: 'client', type: 'RECONNECTING' });
            await d.ok({ cmd: 'auth', auth: { token: 'second' } });
            for (let i = 0; i < 10; i++) await d.ok({ cmd: 'emit', event: 'message', args: [i] });
            await sleep(300);
            srv = await server.start({ port });
            await d.next({ ev: 'client', type: 'RECONNECTED' }, 8000);
            assert.deepEqual((await connected(d)).args, [{ token: 'second' }]);
            for (let i = 0; i < 10; i++) assert.deepEqual((await d.event('message-back')).args, [i]);
            await d.ok({ cmd: 'emit', event: 'message', args: ['sync'] });
            assert.deepEqual((await d.event('message-back')).args, ['sync']);
            assert.equal(d.all({ ev: 'event', event: 'message-back' }).length, 11, 'each buffered emit once');
            await d.ok({ cmd: 'stats' });
            const st = await d.next({ ev: 'stats' });
            assert.equal(st.connects, 2);
            assert.equal(st.reconnects, 1);
            await d.ok({ cmd: 'exit' });
            await srv.kill();
          });

          test('connection-state recovery: same id, the missed event before connect, recovered', async () => {
            const srv = await server.start({ recovery: true });
            const proxy = await startProxy(() => srv.port);
            const d = await newDriver(proxy.port, mode);
            await d.ok({ cmd: 'socket', nsp: '/' });
            await d.ok({ cmd: 'connect' });
            const { connect, args } = await connected(d);
            assert.equal(connect.recovered, false);
            assert.equal(args.length, 2, 'auth carries an offset with recovery on');
            assert.equal(typeof args[1], 'string');
            if (mode.final !== 'polling') await assertTransport(d, mode.final);
            const sender = io(`http://127.0.0.1:${srv.port}`, { transports: ['websocket'], forceNew: true, reconnection: false });
            onCleanup(() => sender.disconnect());
            await new Promise((resolve) => sender.once('connect', resolve));
            proxy.refuse = true;
            proxy.cut();
            const dis = await d.next({ ev: 'disconnect' });
            assert.ok(['transport close', 'transport error'].includes(dis.reason), dis.reason);
            await sleep(200);
            await sender.timeout(3000).emitWithAck('to-socket', connect.id, 'pushed', 'while away');
            proxy.refuse = false;
            const again = await d.next({ ev: 'connect', nsp: '/' }, 8000);
            assert.equal(again.recovered, true);
            assert.equal(again.id, connect.id);
            const pushed = await d.event('pushed');
            assert.equal(pushed.args[0], 'while away');
            const iPushed = d.events.indexOf(pushed);
            const iConnect = d.events.indexOf(again);
            assert.ok(iPushed < iConnect, 'the missed event is delivered before the connect callback');
            await d.ok({ cmd: 'info' });
            assert.equal((await d.next({ ev: 'info' })).recovered, true);
            sender.disconnect();
            await d.ok({ cmd: 'exit' });
            await srv.kill();
          });
        });
      }
    });
  }

  describe('non-retryable handshake answers and bad input', () => {
    for (const mode of MODES.slice(0, 2)) {
      test(`401 on the handshake (${mode.name}): RECONNECT_FAILED after one attempt, none more until connect`, async () => {
        let attempts = 0;
        const server = http.createServer((req, res) => {
          attempts++;
          res.writeHead(401, { 'Content-Type': 'text/plain' });
          res.end('Unauthorized');
        });
        server.on('upgrade', (req, socket) => {
          attempts++;
          socket.end('HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
        });
        await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
        onCleanup(() => new Promise((resolve) => server.close(resolve)));
        const d = await newDriver(server.address().port, mode);
        await d.ok({ cmd: 'socket', nsp: '/' });
        await d.ok({ cmd: 'connect' });
        const err = await d.next({ ev: 'client', type: 'ERROR' });
        assert.equal(err.status, 401);
        const failed = await d.next({ ev: 'client', type: 'RECONNECT_FAILED' });
        assert.equal(failed.status, 401);
        await sleep(1500);
        assert.equal(attempts, 1, 'exactly one request in 1.5 s (reconnection delay 100 ms)');
        assert.equal(d.all({ ev: 'client', type: 'RECONNECTING' }).length, 0);
        await d.ok({ cmd: 'connect' });
        await d.next({ ev: 'client', type: 'RECONNECT_FAILED' });
        await sleep(500);
        assert.equal(attempts, 2);
        await d.ok({ cmd: 'exit' });
        server.close();
      });
    }

    /* A fake Engine.IO server: a session per handshake, the CONNECT
     * answered, then `bad` is sent (text or a Buffer). */
    async function fakeServer(mode, bad) {
      let sessions = 0;
      const open = (sid) => `0${JSON.stringify({ sid, upgrades: [], pingInterval: 5000, pingTimeout: 5000, maxPayload: 1000000 })}`;
      const polls = new Map();
      const server = http.createServer((req, res) => {
        const u = new URL(req.url, 'http://x');
        const sid = u.searchParams.get('sid');
        if (!sid) {
          sessions++;
          res.writeHead(200, { 'Content-Type': 'text/plain; charset=UTF-8' });
          res.end(open(`fake${sessions}`));
          return;
        }
        if (req.method === 'POST') {
          let body = '';
          req.on('data', (c) => {
            body += c;
          });
          req.on('end', () => {
            res.writeHead(200, { 'Content-Type': 'text/html' });
            res.end('ok');
            if (body.startsWith('40')) polls.set(sid, 1);
          });
          return;
        }
        const step = polls.get(sid) ?? 0;
        const answer = () => {
          const st = polls.get(sid) ?? 0;
          if (st === 1) {
            polls.set(sid, 2);
            res.writeHead(200, { 'Content-Type': 'text/plain; charset=UTF-8' });
            res.end('40{"sid":"fakesock"}');
          } else if (st === 2) {
            polls.set(sid, 3);
            if (typeof bad === 'object' && bad.hugeBody) {
              res.writeHead(200, { 'Content-Type': 'text/plain; charset=UTF-8', 'Content-Length': String(100 * 1024 * 1024) });
              res.write('4');
              return;
            }
            res.writeHead(200, { 'Content-Type': 'text/plain; charset=UTF-8' });
            res.end(Buffer.isBuffer(bad) ? `b${bad.toString('base64')}` : bad);
          } else {
            setTimeout(answer, 20);
          }
        };
        if (step >= 3) return; /* hang */
        answer();
      });
      const wss = new WebSocketServer({ noServer: true });
      server.on('upgrade', (req, socket, head) => {
        wss.handleUpgrade(req, socket, head, (ws) => {
          sessions++;
          ws.send(open(`fake${sessions}`));
          ws.on('message', (data, isBinary) => {
            if (!isBinary && data.toString().startsWith('40')) {
              ws.send('40{"sid":"fakesock"}');
              setTimeout(() => ws.send(bad, { binary: Buffer.isBuffer(bad) }), 20);
            }
          });
        });
      });
      await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
      onCleanup(() => {
        for (const c of wss.clients) c.terminate();
        server.closeAllConnections();
        return new Promise((resolve) => server.close(resolve));
      });
      return { port: server.address().port, sessions: () => sessions };
    }

    const BAD = [
      ['invalid JSON', '42['],
      ['binary nobody announced', Buffer.from([0, 1, 2, 255])],
      ['too many attachments', '4511-["x"]'],
      ['placeholder out of range', '451-["x",{"_placeholder":true,"num":5}]'],
      ['reserved event name', '42["connect"]'],
      ['unknown Socket.IO type', '47'],
      ['unknown Engine.IO type', '9'],
    ];
    for (const mode of MODES.slice(0, 2)) {
      for (const [name, bad] of BAD) {
        if (mode.transports === 'websocket' && name === 'placeholder out of range') continue;
        test(`bad input over ${mode.name}: ${name} -> an error event, then a clean reconnect`, async () => {
          const fake = await fakeServer(mode, mode.transports === 'polling' && name === 'placeholder out of range' ? '451-["x",{"_placeholder":true,"num":5}]\x1ebAA==' : bad);
          const d = await newDriver(fake.port, mode);
          await d.ok({ cmd: 'socket', nsp: '/' });
          await d.ok({ cmd: 'connect' });
          await d.next({ ev: 'connect', id: 'fakesock' });
          const err = await d.next({ ev: 'client', type: 'ERROR' });
          assert.equal(err.err, -3, 'PARLEY_EPROTO');
          const close = await d.next({ ev: 'client', type: 'CLOSE' });
          assert.equal(close.reason, 'parse error');
          assert.equal((await d.next({ ev: 'disconnect' })).reason, 'parse error');
          await d.next({ ev: 'client', type: 'RECONNECTED' });
          await d.next({ ev: 'connect', id: 'fakesock' });
          assert.ok(fake.sessions() >= 2);
          await d.ok({ cmd: 'exit' });
        });
      }
    }

    test('an oversized polling payload: a transport error, then a clean reconnect', async () => {
      const fake = await fakeServer(MODES[0], { hugeBody: true });
      const d = await newDriver(fake.port, MODES[0]);
      await d.ok({ cmd: 'socket', nsp: '/' });
      await d.ok({ cmd: 'connect' });
      await d.next({ ev: 'connect', id: 'fakesock' });
      const err = await d.next({ ev: 'client', type: 'ERROR' });
      assert.equal(err.err, -4, 'PARLEY_ELIMIT');
      const close = await d.next({ ev: 'client', type: 'CLOSE' });
      assert.equal(close.reason, 'transport error');
      await d.next({ ev: 'client', type: 'RECONNECTED' });
      await d.next({ ev: 'connect', id: 'fakesock' });
      await d.ok({ cmd: 'exit' });
    });
  });
});
