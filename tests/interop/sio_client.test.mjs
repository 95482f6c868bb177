// The npm socket.io-client (4.8.x, the reference client) against
// `parleyd --protocol-test`. Every test runs once per transport mode:
// polling only, websocket only, and the default (polling, then an upgrade
// to websocket that must really happen).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { cleanup, scaled, sleep } from './lib/harness.mjs';
import { connectPeer, MODES, normalizeBinary, SioPeer, startProtocolServer } from './lib/sio.mjs';

const JSON_VALUES = [
  'a string',
  '',
  0,
  42,
  -17,
  3.14159,
  -0.5,
  1e-7,
  Number.MAX_SAFE_INTEGER,
  -Number.MAX_SAFE_INTEGER,
  1.7976931348623157e308,
  true,
  false,
  null,
  {},
  [],
  { a: 1, b: 'two', c: [3, 4, { d: null }], e: { f: { g: { h: [[], {}, [[]]] } } }, 'quote"back\\slash': 'ctl\u0001\n\t' },
  [1, 'x', false, null, [2, [3, [4, [5]]]], { k: [] }],
];

const UNICODE = [
  'héllo wörld – ñ ¿ € ß',
  '中文字符 日本語 한국어',
  '😀🎉🚀 𝄞 𠜎 👩‍👩‍👧‍👦',
  'مرحبا بالعالم',
  'שלום עולם',
  'mixed ‏עברית‎ and English 123 العربية',
  '\u2028\u2029 \ufeff \u00a0',
];

describe('socket.io-client against parleyd --protocol-test', () => {
  let srv;
  let rec;
  /* For the 500-client test: the protocol-test heartbeat (300 ms, 200 ms
   * timeout) is a conformance setting; with 500 polling clients in one Node
   * process, next to other tests and sanitizers, it measures the machine's
   * load rather than the server. Same handlers, production-like heartbeat. */
  let crowd;

  before(async () => {
    [srv, rec, crowd] = await Promise.all([
      startProtocolServer(),
      startProtocolServer({ recovery: true }),
      startProtocolServer({ extra: ['--ping-interval', '5000', '--ping-timeout', '5000'] }),
    ]);
    /* One connection first: a broken server cancels the file in seconds. */
    const p = await connectPeer(srv, MODES[1]);
    await p.close();
  });

  after(cleanup);

  for (const mode of MODES) {
    describe(`transport: ${mode.name}`, () => {
      test('connect: auth is {} without an auth payload, the socket gets an id', async () => {
        const p = await connectPeer(srv, mode);
        assert.deepEqual(p.auth, {});
        assert.equal(typeof p.id, 'string');
        assert.ok(p.id.length > 0, 'a non-empty socket id');
        assert.deepEqual(await p.echo(['after connect']), ['after connect']);
        await p.assertTransport(mode.final);
        await p.close();
      });

      test('the auth payload is echoed back exactly', async () => {
        const auth = { token: 'abc', n: -1.5, nested: { list: [1, null, true], empty: {} }, u: '😀 مرحبا' };
        const p = await connectPeer(srv, mode, { auth });
        assert.deepEqual(p.auth, auth);
        await p.assertTransport(mode.final);
        await p.close();
      });

      test('events with every JSON type come back unchanged, one argument at a time and all at once', async () => {
        const p = await connectPeer(srv, mode);
        for (const v of JSON_VALUES) {
          assert.deepEqual(await p.echo([v]), [v], `echo of ${JSON.stringify(v)}`);
        }
        assert.deepEqual(await p.echo(JSON_VALUES), JSON_VALUES);
        assert.deepEqual(await p.echo([]), [], 'an event without arguments');
        await p.assertTransport(mode.final);
        p.assertIdle();
        await p.close();
      });

      test('unicode (BMP, astral plane, RTL, separators) in values and keys', async () => {
        const p = await connectPeer(srv, mode);
        for (const s of UNICODE) assert.deepEqual(await p.echo([s]), [s]);
        const obj = Object.fromEntries(UNICODE.map((s, i) => [s, [i, s]]));
        assert.deepEqual(await p.echo([obj, UNICODE]), [obj, UNICODE]);
        const big = UNICODE.join('|').repeat(500);
        assert.deepEqual(await p.echo([big]), [big], 'a 50 kB unicode string');
        await p.assertTransport(mode.final);
        await p.close();
      });

      test('binary: nested Buffers, several attachments, empty Buffer', async () => {
        const p = await connectPeer(srv, mode);
        const b = (n, seed) => Buffer.from(Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff));
        const cases = [
          [b(5, 1)],
          [Buffer.alloc(0)],
          [{ bin: b(10, 2) }],
          [[b(3, 3), 'text', b(4, 4)]],
          [{ a: [1, { deep: b(100, 5), other: [b(0, 0), { x: b(1, 6) }] }] }, 'between', b(7, 7)],
          ['text first', b(65536, 8), { n: 1 }, [b(2, 9), b(2, 10), b(2, 11), b(2, 12)]],
          [b(300000, 13)],
        ];
        for (const args of cases) {
          const got = normalizeBinary(await p.echo(args));
          assert.deepEqual(got, args, `echo of ${JSON.stringify(args).slice(0, 120)}`);
        }
        await p.assertTransport(mode.final);
        await p.close();
      });

      test('acks client -> server: message-with-ack answers with all of its arguments', async () => {
        const p = await connectPeer(srv, mode);
        assert.deepEqual(await p.ack('message-with-ack', []), []);
        assert.deepEqual(await p.ack('message-with-ack', [1, 'two', { three: [3] }]), [1, 'two', { three: [3] }]);
        assert.deepEqual(await p.ack('message-with-ack', JSON_VALUES), JSON_VALUES);
        const bin = ['x', { b: Buffer.from([1, 2, 3]) }, Buffer.alloc(0)];
        assert.deepEqual(normalizeBinary(await p.ack('message-with-ack', bin)), bin);
        /* Several acks in flight at once each get their own answer. */
        const many = await Promise.all(Array.from({ length: 20 }, (_, i) => p.ack('message-with-ack', [i, `n${i}`])));
        assert.deepEqual(many, Array.from({ length: 20 }, (_, i) => [i, `n${i}`]));
        await p.assertTransport(mode.final);
        p.assertIdle();
        await p.close();
      });

      test('acks server -> client: the client acks, the server reports what it got', async () => {
        const p = await connectPeer(srv, mode);
        p.emit('server-ack', 'ask', 3000, 'q', 1, { z: null });
        const args = await p.next('ask');
        assert.equal(typeof args.at(-1), 'function', 'the server asked for an ack');
        assert.deepEqual(args.slice(0, -1), ['q', 1, { z: null }]);
        args.at(-1)('answer', { n: [1, 2] }, Buffer.from([9, 8]));
        const [result] = await p.next('server-ack-result');
        assert.deepEqual(normalizeBinary(result), { ok: true, args: ['answer', { n: [1, 2] }, Buffer.from([9, 8])] });

        p.emit('server-ack', 'ask-empty', 3000);
        const a2 = await p.next('ask-empty');
        assert.equal(a2.length, 1);
        a2[0]();
        assert.deepEqual(await p.next('server-ack-result'), [{ ok: true, args: [] }]);
        await p.assertTransport(mode.final);
        await p.close();
      });

      test('acks server -> client: no ack within the timeout -> {ok:false, error:"timeout"}', async () => {
        const p = await connectPeer(srv, mode);
        const t0 = Date.now();
        p.emit('server-ack', 'ignored', 400, 'x');
        const args = await p.next('ignored');
        assert.deepEqual(args.slice(0, -1), ['x']);
        assert.deepEqual(await p.next('server-ack-result', 5000), [{ ok: false, error: 'timeout' }]);
        const elapsed = Date.now() - t0;
        assert.ok(elapsed >= 350, `the timeout fired after ${elapsed} ms, expected about 400`);
        /* A late ack is ignored by the server. */
        args.at(-1)('too late');
        assert.deepEqual(await p.echo(['still alive']), ['still alive']);
        p.assertIdle('after a late ack');
        await p.assertTransport(mode.final);
        await p.close();
      });

      test('namespaces: /custom emits auth, an unknown one gets connect_error "Invalid namespace"', async () => {
        const c = await connectPeer(srv, mode, { nsp: '/custom', auth: { who: 'custom' } });
        assert.deepEqual(c.auth, { who: 'custom' });
        await c.assertTransport(mode.final);
        await c.close();

        const bad = new SioPeer(`http://127.0.0.1:${srv.port}/nope`, { transports: mode.transports });
        const [err] = await bad.next('connect_error');
        assert.equal(err.message, 'Invalid namespace');
        assert.equal(bad.socket.connected, false);
        bad.socket.disconnect();
      });

      test('namespaces multiplexed on one connection: /, /custom and an invalid one', async () => {
        const main = await connectPeer(srv, mode, { auth: { ns: 'main' } });
        const csock = main.socket.io.socket('/custom', { auth: { ns: 'custom' } });
        const got = [];
        csock.on('auth', (a) => got.push(a));
        const bsock = main.socket.io.socket('/invalid-ns');
        const errs = [];
        bsock.on('connect_error', (e) => errs.push(e.message));
        /* Manager.socket() connects by itself (autoConnect): a second
         * connect() here would send a duplicate CONNECT. */
        const deadline = Date.now() + scaled(5000);
        while ((got.length < 1 || errs.length < 1) && Date.now() < deadline) await sleep(10);
        assert.deepEqual(got, [{ ns: 'custom' }]);
        assert.deepEqual(errs, ['Invalid namespace']);
        assert.equal(csock.io.engine, main.socket.io.engine, 'one Engine.IO connection for both namespaces');
        /* The main namespace still works after the refused one. */
        assert.deepEqual(await main.echo(['main ok']), ['main ok']);
        csock.disconnect();
        bsock.disconnect();
        await main.assertTransport(mode.final);
        await main.close();
      });

      test('middleware: a bad token is refused with message and data, a good one accepted', async () => {
        for (const auth of [{ token: 'nope' }, undefined, { other: 1 }]) {
          const p = new SioPeer(`http://127.0.0.1:${srv.port}/middleware`, { transports: mode.transports, auth });
          const [err] = await p.next('connect_error');
          assert.equal(err.message, 'unauthorized', `auth ${JSON.stringify(auth)}`);
          assert.deepEqual(err.data, { reason: 'bad token' });
          assert.equal(p.socket.connected, false);
          p.socket.disconnect();
        }
        const ok = await connectPeer(srv, mode, { nsp: '/middleware', auth: { token: 'ok', extra: [1] } });
        assert.deepEqual(ok.auth, { token: 'ok', extra: [1] });
        await ok.assertTransport(mode.final);
        await ok.close();
      });

      test('rooms among four clients: join, to-room, to-room-except-me, leave, to-socket', async () => {
        const [a, b, c, d] = await Promise.all(['A', 'B', 'C', 'D'].map((label) => connectPeer(srv, mode, { label })));
        const room = `room-${mode.name}`;
        for (const p of [a, b, c]) assert.deepEqual(await p.ack('join', [room]), []);
        /* Also in a second room, to check one emit reaches a member once. */
        assert.deepEqual(await a.ack('join', ['other']), []);

        a.emit('to-room', room, 'hello', 1, { from: 'A' });
        for (const p of [a, b, c]) assert.deepEqual(await p.next('hello'), [1, { from: 'A' }], p.label);

        b.emit('to-room-except-me', room, 'hey', 'from B');
        for (const p of [a, c]) assert.deepEqual(await p.next('hey'), ['from B'], p.label);

        assert.deepEqual(await c.ack('leave', [room]), []);
        a.emit('to-room', room, 'after-leave', Buffer.from([1, 2]));
        for (const p of [a, b]) assert.deepEqual(normalizeBinary(await p.next('after-leave')), [Buffer.from([1, 2])], p.label);

        d.emit('to-socket', c.id, 'direct', 'to C only');
        assert.deepEqual(await c.next('direct'), ['to C only']);

        /* Everything above has been processed: a round trip per client
         * orders it, then nothing else may have arrived. */
        for (const p of [a, b, c, d]) {
          assert.deepEqual(await p.echo(['sync']), ['sync']);
          p.assertIdle(`(room ${room})`);
        }
        for (const p of [a, b, c, d]) await p.assertTransport(mode.final);
        await Promise.all([a, b, c, d].map((p) => p.close()));
      });

      test('volatile emits arrive at most once each and in order', async () => {
        const p = await connectPeer(srv, mode);
        for (let i = 0; i < 10; i++) {
          p.emit('volatile', 'vol', i, { i });
          await sleep(30);
        }
        p.emit('message', 'sync');
        const got = [];
        for (;;) {
          const e = await p.events.next(5000, 'the volatile emits and the sync echo');
          if (e.name === 'message-back') {
            assert.deepEqual(e.args, ['sync']);
            break;
          }
          assert.equal(e.name, 'vol');
          got.push(e.args);
        }
        p.assertIdle();
        assert.ok(got.length >= 1, 'at least one volatile emit was delivered');
        const seq = got.map(([i, o]) => {
          assert.deepEqual(o, { i });
          return i;
        });
        assert.deepEqual(seq, [...seq].sort((x, y) => x - y), 'in order');
        assert.equal(new Set(seq).size, seq.length, 'no duplicates');
        await p.assertTransport(mode.final);
        await p.close();
      });

      test('server-side disconnect: reason "io server disconnect", no reconnection', async () => {
        const p = await connectPeer(srv, mode, { reconnection: true, reconnectionDelay: 50 });
        await p.assertTransport(mode.final);
        p.emit('disconnect-me');
        assert.deepEqual((await p.next('disconnect'))[0], 'io server disconnect');
        assert.equal(p.socket.connected, false);
        await sleep(300);
        assert.equal(p.socket.connected, false, 'the client does not reconnect after a server disconnect');
        p.assertIdle('after the server disconnected it');
        p.socket.disconnect();
      });

      test('server restart on the same port: the client reconnects by itself', async () => {
        const s1 = await startProtocolServer();
        const p = await connectPeer(s1, mode, {
          reconnection: true, reconnectionDelay: 100, reconnectionDelayMax: 200, randomizationFactor: 0,
        });
        const id1 = p.id;
        await p.assertTransport(mode.final);
        await s1.stop('SIGKILL');
        const [reason] = await p.next('disconnect', 5000);
        assert.ok(['transport close', 'transport error', 'ping timeout'].includes(reason), `disconnect reason ${reason}`);
        const s2 = await startProtocolServer({ port: s1.port });
        assert.equal(s2.port, s1.port);
        /* Failed attempts while the port was closed queue connect_errors. */
        let e;
        do e = await p.events.next(15000, 'the reconnection');
        while (e.name === 'connect_error');
        assert.equal(e.name, 'connect', `got ${e.name} instead of connect`);
        assert.deepEqual(await p.next('auth'), [{}]);
        assert.notEqual(p.id, id1, 'a new server gives a new socket id');
        assert.deepEqual(await p.echo(['after restart']), ['after restart']);
        await p.assertTransport(mode.final);
        await p.close();
        await s2.stop();
      });

      test('connection-state recovery: missed events delivered once, in order, same id and rooms', async () => {
        const opts = { reconnection: true, reconnectionDelay: 700, reconnectionDelayMax: 700, randomizationFactor: 0 };
        const a = await connectPeer(rec, mode, { ...opts, label: 'away', offsets: true });
        const b = await connectPeer(rec, MODES[1], { label: 'sender', offsets: true });
        assert.ok(!a.socket.recovered, 'a first connection is not a recovery');
        assert.deepEqual(a.auth, {});
        assert.deepEqual(await a.ack('join', ['rec-room']), []);
        const echoed = await a.echo(['x']);
        assert.equal(echoed.length, 2, `message-back carries an offset: ${JSON.stringify(echoed)}`);
        assert.equal(echoed[0], 'x');
        assert.equal(typeof echoed[1], 'string');
        await a.assertTransport(mode.final);
        const id = a.id;

        a.socket.io.engine.close();
        const [reason] = await a.next('disconnect');
        assert.equal(reason, 'forced close');
        b.emit('to-socket', id, 'missed', 1);
        b.emit('to-room', 'rec-room', 'missed', 2, { bin: Buffer.from([2]) });
        b.emit('to-socket', id, 'missed', 3);
        /* Ordered after the three emits on the server. */
        assert.equal((await b.echo(['sync']))[0], 'sync');

        /* The connection handler runs again on a recovered socket, so it
         * gets a new auth event besides the missed ones. */
        const seen = [];
        const order = [];
        while (seen.length < 3 || !order.includes('connect') || !order.includes('auth')) {
          const e = await a.events.next(10000, `the recovery (so far: ${order.join(', ')})`);
          order.push(e.name);
          if (e.name === 'missed') seen.push(e.args);
          else if (e.name === 'auth') {
            /* The client merges pid and offset into its auth payload. */
            const [auth, offset] = e.args;
            assert.deepEqual(Object.keys(auth).sort(), ['offset', 'pid'], `auth after recovery: ${JSON.stringify(auth)}`);
            assert.equal(typeof auth.pid, 'string');
            assert.equal(typeof auth.offset, 'string');
            assert.equal(typeof offset, 'string');
          }
          else if (e.name !== 'connect') assert.fail(`unexpected ${e.name} ${JSON.stringify(e.args)}`);
        }
        assert.deepEqual(order.filter((n) => n !== 'missed').sort(), ['auth', 'connect'], `events: ${order.join(', ')}`);
        assert.equal(a.socket.recovered, true, 'socket.recovered');
        assert.equal(a.id, id, 'the same socket id after recovery');
        assert.deepEqual(normalizeBinary(seen.map((args) => args.slice(0, -1))), [[1], [2, { bin: Buffer.from([2]) }], [3]]);
        for (const args of seen) assert.equal(typeof args.at(-1), 'string', 'each replayed event carries its offset');

        /* Still in the room, and nothing is delivered twice. */
        b.emit('to-room', 'rec-room', 'after', 4);
        assert.equal((await a.next('after'))[0], 4);
        assert.equal((await a.echo(['sync']))[0], 'sync');
        a.assertIdle('after the recovery');
        await a.assertTransport(mode.final);
        await Promise.all([a.close(), b.close()]);
      });

      test('without --recovery a dropped session comes back as a new one', async () => {
        const a = await connectPeer(srv, mode, { reconnection: true, reconnectionDelay: 100, randomizationFactor: 0 });
        const id = a.id;
        assert.deepEqual(await a.echo(['exact']), ['exact'], 'no offset is appended');
        a.socket.io.engine.close();
        assert.equal((await a.next('disconnect'))[0], 'forced close');
        await a.connected();
        assert.ok(!a.socket.recovered, 'socket.recovered');
        assert.notEqual(a.id, id);
        await a.assertTransport(mode.final);
        await a.close();
      });

      test('500 clients connected at once: each gets its auth, all disconnect cleanly', async () => {
        const N = 500;
        const BATCH = 50;
        /* Opened in batches: 500 simultaneous polling handshakes overload
         * the Node client itself (its timers fire late and it declares a ping
         * timeout), whatever the server. All 500 are connected together. */
        const peers = [];
        const auths = [];
        const t0 = Date.now();
        const phase = {};
        for (let first = 0; first < N; first += BATCH) {
          const batch = Array.from({ length: BATCH }, (_, k) => new SioPeer(`http://127.0.0.1:${crowd.port}/`, {
            transports: mode.transports, auth: { i: first + k },
          }, `client #${first + k}`));
          peers.push(...batch);
          auths.push(...await Promise.all(batch.map((p) => p.connected(30000))));
        }
        phase.connected = Date.now() - t0;
        assert.deepEqual(auths, peers.map((_, i) => ({ i })));
        assert.equal(new Set(peers.map((p) => p.id)).size, N, 'distinct socket ids');
        /* All alive at the same time: one round trip each (in batches too,
         * for the same reason). */
        const inBatches = async (fn) => {
          const out = [];
          for (let first = 0; first < N; first += BATCH) out.push(...await Promise.all(peers.slice(first, first + BATCH).map(fn)));
          return out;
        };
        const back = await inBatches((p) => p.echo([p.label], 30000));
        assert.deepEqual(back, peers.map((p) => [p.label]));
        phase.echoed = Date.now() - t0;
        for (const p of peers) await p.assertTransport(mode.final, 30000);
        phase.closing = Date.now() - t0;
        await inBatches((p) => p.close());
        phase.closed = Date.now() - t0;
        for (const p of peers) {
          const d = p.log.filter((e) => e.name === 'disconnect');
          const why = d.map((e) => `${e.args[0]} at +${e.at - t0} ms (${e.args[1]?.description?.message ?? e.args[1]?.description ?? ''}${e.args[1]?.context?.status ? ` HTTP ${e.args[1].context.status}` : ''})`);
          assert.deepEqual(d.map((e) => e.args[0]), ['io client disconnect'], `${p.label}: ${why.join('; ')}; phases: ${JSON.stringify(phase)}`);
        }
        assert.ok(crowd.alive(), `parleyd died${crowd.stderr()}`);
      });
    });
  }
});
