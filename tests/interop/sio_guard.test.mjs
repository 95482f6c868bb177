// The server's guards against hostile clients ("safe to expose"): binary
// packets for namespaces not joined, caps on pending attachment bytes, the
// authentication deadline (require_auth), closed namespaces, the Origin
// allow-list, and the noop answer of npm engine.io to a close packet
// POSTed while a GET is pending.
//
// Most cases run against tests/interop/sio_guard_server.c (a parley_server
// embedding with flags for options parleyd does not expose, and /stats with
// the guard counters); the memory case runs against parleyd itself with
// the messaging service on, the configuration that was attacked.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { after, describe, test } from 'node:test';
import { ChatClient, startChatServer } from './lib/chat.mjs';
import {
  packets, pollGet, pollHandshake, pollPost, pollUntil, q, request, startRequest, wsNext, wsSession,
} from './lib/eio_raw.mjs';
import { cleanup, loadPinned, onCleanup, program, Queue, scaled, sleep, withTimeout } from './lib/harness.mjs';
import { upgradeRequest } from './lib/hostile.mjs';
import { startProtocolServer } from './lib/sio.mjs';

const { Manager } = await loadPinned('socket.io-client');

const BASE = '/socket.io/';
const CONNECT_TIMEOUT = 1000; /* sio_guard_server's default --connect-timeout */
const P = (n) => `{"_placeholder":true,"num":${n}}`;

after(cleanup);

/* ------------------------------------------------------------------ */
/* The test server                                                     */
/* ------------------------------------------------------------------ */

/** Starts sio_guard_server with `args`; returns its handle. */
async function startGuard(args = []) {
  const bin = program('SIO_GUARD_SERVER');
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d) => {
    err += d;
  });
  const exited = new Promise((resolve) => child.once('close', (code, signal) => resolve({ code, signal })));
  const alive = () => child.exitCode === null && child.signalCode === null;
  onCleanup(() => {
    if (alive()) child.kill('SIGKILL');
  });
  const port = await withTimeout(new Promise((resolve, reject) => {
    child.stdout.on('data', (d) => {
      out += d;
      const m = /sio_guard_server listening on 127\.0\.0\.1:(\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.once('error', reject);
    exited.then(({ code, signal }) => reject(new Error(`sio_guard_server ${args.join(' ')} exited (${code}, ${signal}): ${err}`)));
  }), 15000, `sio_guard_server ${args.join(' ')} to start`);
  return {
    port,
    pid: child.pid,
    alive,
    stderr: () => err,
    async stats() {
      const r = await request(port, 'GET', '/stats');
      assert.equal(r.status, 200);
      return JSON.parse(r.body);
    },
    async setClosed(name, closed) {
      const r = await request(port, 'GET', `/nsp?name=${name}&closed=${closed ? 1 : 0}`);
      assert.equal(r.status, 200);
    },
    /** SIGTERM; resolves to { code, signal } once it has exited. */
    async stop() {
      if (alive()) child.kill('SIGTERM');
      return withTimeout(exited, 15000, 'sio_guard_server to exit after SIGTERM');
    },
  };
}

/** VmRSS of a process in bytes. */
function rss(pid) {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m[1]) * 1024;
}

const MB = (n) => `${(n / 1048576).toFixed(1)} MiB`;

/** Polls `fn` until it returns a truthy value. */
async function eventually(fn, ms = 3000, what = 'a condition') {
  const deadline = Date.now() + scaled(ms);
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/* ------------------------------------------------------------------ */
/* Clients                                                             */
/* ------------------------------------------------------------------ */

/** A raw WebSocket Engine.IO session CONNECTed to `nsp` (no auth). */
async function wsConnected(port, nsp = '/') {
  const ws = await wsSession(port, BASE);
  ws.ws.send(nsp === '/' ? '40' : `40${nsp},`);
  const reply = await wsNext(ws);
  assert.match(reply, /^40(\/[^,]*,)?\{"sid":"[^"]+"\}$/, 'the CONNECT reply');
  return ws;
}

/** Sends a header then attachments on a raw WebSocket session. */
function wsSendBinary(ws, header, blobs) {
  ws.ws.send(header);
  for (const b of blobs) ws.ws.send(b, { binary: true });
}

/**
 * socket.io-client sockets on one Manager (one Engine.IO session): every
 * event of each goes into its queue, in order.
 */
function manager(port, opts = {}) {
  const m = new Manager(`http://127.0.0.1:${port}`, { reconnection: false, timeout: scaled(10000), ...opts });
  const socks = [];
  onCleanup(() => {
    for (const s of socks) s.disconnect();
    m.engine?.close();
  });
  return {
    m,
    socket(nsp, sopts = {}) {
      const s = m.socket(nsp, sopts);
      socks.push(s);
      const events = new Queue(`event on ${nsp}`);
      s.onAny((name, ...args) => events.push({ name, args }));
      s.on('connect', () => events.push({ name: 'connect', args: [] }));
      s.on('connect_error', (e) => events.push({ name: 'connect_error', args: [e] }));
      s.on('disconnect', (reason) => events.push({ name: 'disconnect', args: [reason], at: Date.now() }));
      return {
        s,
        events,
        async next(name, ms = 5000) {
          const e = await events.next(ms, `"${name}" on ${nsp}`);
          const detail = e.name === 'connect_error' ? `: ${e.args[0]?.message}` : ` ${JSON.stringify(e.args).slice(0, 200)}`;
          assert.equal(e.name, name, `${nsp}: expected "${name}", got "${e.name}"${detail}`);
          return e;
        },
        async echo(tag) {
          s.emit('message', tag);
          const e = await this.next('message-back');
          assert.deepEqual(e.args, [tag]);
        },
      };
    },
  };
}

/* ------------------------------------------------------------------ */
/* Binary packets for namespaces not joined                            */
/* ------------------------------------------------------------------ */

describe('a binary packet for a namespace not joined', () => {
  test('is refused at its header: the session closes at once, nothing is buffered (websocket and polling, event and ack)', async () => {
    const g = await startGuard();
    const witness = await wsConnected(g.port, '/');
    const one = Buffer.alloc(1000, 7);
    for (const header of [`451-/auth,["upload",${P(0)}]`, `461-/auth,0[${P(0)}]`, `451-/nope,["upload",${P(0)}]`]) {
      /* WebSocket: the header alone closes the session. */
      const ws = await wsConnected(g.port, '/');
      ws.ws.send(header);
      await ws.waitClosed(scaled(2000), `the session to close at the header ${header}`);
      assert.deepEqual(ws.messages.items.map((m) => m.data.toString()), [], 'nothing is sent before the close');
      /* Polling: header and attachment in one POST; the pending GET gets
       * the close packet. */
      const { sid } = await pollHandshake(g.port, BASE);
      await pollPost(g.port, BASE, sid, ['40']);
      assert.match((await pollUntil(g.port, BASE, sid))[0], /^40\{"sid":/);
      const pending = startRequest(g.port, 'GET', `${BASE}${q('polling', sid)}`);
      await sleep(20);
      await pollPost(g.port, BASE, sid, [header, `b${one.toString('base64')}`]);
      const r = await withTimeout(pending.response, 3000, 'the pending GET');
      assert.deepEqual(packets(r.body).filter((p) => p !== '2'), ['1']);
    }
    const st = await g.stats();
    assert.equal(st.pending_attachment_peak, 0, 'no attachment byte was ever held');
    assert.equal(st.pending_attachment_bytes, 0);
    assert.equal(st.attachment_limit_closes, 0, 'refused for the namespace, not by a cap');
    /* The same packets for the joined namespace are served. */
    const ok = await wsConnected(g.port, '/');
    wsSendBinary(ok, `451-["message",${P(0)}]`, [one]);
    assert.equal(await wsNext(ok), `451-["message-back",${P(0)}]`);
    assert.deepEqual(await wsNext(ok), one);
    witness.ws.send('42["message","alive"]');
    assert.equal(await wsNext(witness), '42["message-back","alive"]');
  });

  /*
   * The attack: sessions CONNECTed to the open "/" announce 10 attachments
   * for a namespace they never joined and send 9 of ~1 MB, so that the
   * packet never completes, then keep answering pings. Measured twice:
   * against parleyd with /chat on (every defence at its default), and
   * against the embedding with the attachment caps off, where refusing the
   * header is the only defence.
   */
  const ATTACK = { sessions: 30, attachments: 9, size: 999000, budget: 24 * 1048576 };
  const targets = [
    ['parleyd with /chat on and `/` open (--root-namespace open; `/` is off by default)', async () => {
      const srv = await startChatServer({ secret: null, dev: true, extra: ['--root-namespace', 'open'] });
      const alice = new ChatClient(srv, { auth: { user: 'alice' } });
      await alice.connected();
      await alice.ok('sync', { since: {} });
      return { port: srv.port, pid: srv.child.pid, nsp: '/chat', alive: srv.alive, stderr: srv.stderr, witness: () => alice.ok('sync', { since: {} }) };
    }],
    ['sio_guard_server with the attachment caps off', async () => {
      /* parleyd's heartbeat (25 s / 20 s) and a 10 s connect timeout, not
       * the protocol-test ones (1 s to CONNECT): a test process busy sending
       * 270 MB may take over a second to send a new session's CONNECT (CI
       * saw a session closed for that before its CONNECT reply). */
      const g = await startGuard(['--max-attachment-bytes', '1000000000000', '--max-pending-attachment-bytes', '1000000000000',
        '--ping-interval', '25000', '--ping-timeout', '20000', '--connect-timeout', '10000']);
      const w = manager(g.port, { transports: ['websocket'] }).socket('/');
      await w.next('connect');
      return { port: g.port, pid: g.pid, nsp: '/auth', alive: g.alive, stderr: g.stderr, witness: () => w.echo('witness'), stats: () => g.stats() };
    }],
  ];
  /* Under AddressSanitizer freed memory waits in a quarantine (256 MiB by
   * default) that RSS would count, although nothing holds it: these
   * servers run with a small one. Builds without the sanitizer ignore it. */
  async function smallQuarantine(start) {
    const saved = process.env.ASAN_OPTIONS;
    process.env.ASAN_OPTIONS = `${saved ? `${saved}:` : ''}quarantine_size_mb=1`;
    try {
      return await start();
    } finally {
      if (saved === undefined) delete process.env.ASAN_OPTIONS;
      else process.env.ASAN_OPTIONS = saved;
    }
  }
  for (const [name, start] of targets) {
    test(`${name}: ${ATTACK.sessions} sessions announcing 10 attachments for a namespace not joined and sending 9 x ~1 MB are closed at the header; RSS grows less than 24 MiB; a well-behaved client keeps working`, async (t) => {
      const target = await smallQuarantine(start);
      const blob = Buffer.alloc(ATTACK.size, 0x5a);
      const header = `4510-${target.nsp},["upload",${Array.from({ length: 10 }, (_, i) => P(i)).join(',')}]`;
      let open = 0;
      async function hostile() {
        const ws = await wsConnected(target.port, '/');
        wsSendBinary(ws, header, Array(ATTACK.attachments).fill(blob));
        await ws.waitClosed(scaled(3000), 'a hostile session to be closed').catch(() => {
          open++;
        });
      }
      /* One round first, so that what any session costs once (buffers,
       * the allocator's arenas) is in the baseline. */
      await hostile();
      await sleep(200);
      const before = rss(target.pid);
      let peak = before;
      const sampler = setInterval(() => {
        try {
          peak = Math.max(peak, rss(target.pid));
        } catch {
          /* gone: the assertions below say so */
        }
      }, 10);
      try {
        await Promise.all(Array.from({ length: ATTACK.sessions }, hostile));
        await sleep(300);
      } finally {
        clearInterval(sampler);
      }
      const afterRss = rss(target.pid);
      t.diagnostic(`RSS of the server: before ${MB(before)}, peak ${MB(peak)}, after ${MB(afterRss)} ` +
        `(${ATTACK.sessions} sessions x ${ATTACK.attachments} x ${ATTACK.size} bytes sent; ${open} sessions left open)`);
      assert.ok(target.alive(), `the server died${target.stderr()}`);
      assert.ok(afterRss - before < ATTACK.budget, `RSS grew by ${MB(afterRss - before)} (before ${MB(before)}, after ${MB(afterRss)})`);
      assert.equal(open, 0, 'every hostile session was closed');
      if (target.stats) assert.equal((await target.stats()).pending_attachment_peak, 0, 'no attachment byte was ever held');
      await target.witness();
    });
  }
});

/* ------------------------------------------------------------------ */
/* Attachment caps                                                     */
/* ------------------------------------------------------------------ */

describe('caps on pending attachment bytes', () => {
  test('bytes are counted exactly as held and released when the packet completes or its session ends', async () => {
    const g = await startGuard();
    const a = Buffer.alloc(1000, 1);
    const b = Buffer.alloc(2345, 2);
    const header = `452-["message",${P(0)},${P(1)}]`;
    const ws = await wsConnected(g.port, '/');
    wsSendBinary(ws, header, [a]);
    /* Held: the packet text (without the Engine.IO type) and one attachment. */
    const held = Buffer.byteLength(header) - 1 + a.length;
    await eventually(async () => (await g.stats()).pending_attachment_bytes === held, 3000, `${held} bytes pending`);
    ws.ws.send(b, { binary: true });
    assert.equal(await wsNext(ws), `452-["message-back",${P(0)},${P(1)}]`);
    assert.deepEqual(await wsNext(ws), a);
    assert.deepEqual(await wsNext(ws), b);
    let st = await g.stats();
    assert.equal(st.pending_attachment_bytes, 0, 'released when the packet completed');
    assert.equal(st.pending_attachment_peak, held + b.length);
    /* A session that goes away mid-packet (websocket, then polling). */
    wsSendBinary(ws, header, [a]);
    await eventually(async () => (await g.stats()).pending_attachment_bytes === held, 3000, 'the second packet pending');
    ws.ws.terminate();
    await eventually(async () => (await g.stats()).pending_attachment_bytes === 0, 3000, 'release after the websocket dropped');
    const { sid } = await pollHandshake(g.port, BASE);
    await pollPost(g.port, BASE, sid, ['40']);
    await pollUntil(g.port, BASE, sid);
    await pollPost(g.port, BASE, sid, [header, `b${a.toString('base64')}`]);
    assert.equal((await g.stats()).pending_attachment_bytes, held, 'a polling packet pending');
    await pollPost(g.port, BASE, sid, ['1']);
    st = await g.stats();
    assert.equal(st.pending_attachment_bytes, 0, 'released when the polling client closed');
    assert.equal(st.attachment_limit_closes, 0);
  });

  test('per session: the attachment that would exceed max_attachment_bytes closes that session ("parse error"); packets within it pass', async () => {
    const g = await startGuard(['--max-attachment-bytes', '300000']);
    const other = await wsConnected(g.port, '/');
    const blob = Buffer.alloc(100000, 3);
    /* Within the cap: two attachments, echoed intact through socket.io-client. */
    const mgr = manager(g.port, { transports: ['websocket'] });
    const peer = mgr.socket('/');
    await peer.next('connect');
    peer.s.emit('message', blob, blob);
    const e = await peer.next('message-back');
    assert.equal(e.args.length, 2);
    assert.ok(Buffer.from(e.args[1]).equals(blob));
    /* Beyond it: the third 100000-byte attachment (with the text, more than 300000). */
    const ws = await wsConnected(g.port, '/');
    wsSendBinary(ws, `453-["message",${P(0)},${P(1)},${P(2)}]`, [blob, blob, blob]);
    await ws.waitClosed(scaled(3000), 'the session over its cap to close');
    assert.deepEqual(ws.messages.items, [], 'nothing echoed');
    const st = await g.stats();
    assert.equal(st.attachment_limit_closes, 1);
    assert.equal(st.pending_attachment_bytes, 0);
    assert.ok(st.pending_attachment_peak <= 300000, `peak ${st.pending_attachment_peak} within the cap`);
    assert.equal(st.reasons['parse error'], 1, `the socket saw "parse error": ${JSON.stringify(st.reasons)}`);
    assert.match(g.stderr(), /attachment bytes exceed the session limit \(300000/);
    /* Others are untouched. */
    other.ws.send('42["message","alive"]');
    assert.equal(await wsNext(other), '42["message-back","alive"]');
    await peer.echo('still here');
  });

  test('server-wide: the session whose attachment would exceed max_pending_attachment_bytes is closed, the others complete', async () => {
    const g = await startGuard(['--max-pending-attachment-bytes', '1000000']);
    const big = Buffer.alloc(600000, 4);
    const a = await wsConnected(g.port, '/');
    const b = await wsConnected(g.port, '/');
    const header = `452-["message",${P(0)},${P(1)}]`;
    wsSendBinary(a, header, [big]);
    await eventually(async () => (await g.stats()).pending_attachment_bytes > 600000, 3000, 'A to hold its first attachment');
    wsSendBinary(b, header, [big]);
    await b.waitClosed(scaled(3000), 'B, over the server-wide cap, to close');
    let st = await g.stats();
    assert.equal(st.attachment_limit_closes, 1);
    assert.equal(st.pending_attachment_bytes, Buffer.byteLength(header) - 1 + big.length, 'only A is held');
    assert.match(g.stderr(), /attachment bytes exceed the server-wide limit \(1000000/);
    /* A completes its packet. */
    a.ws.send(Buffer.from('x'), { binary: true });
    assert.equal(await wsNext(a), `452-["message-back",${P(0)},${P(1)}]`);
    assert.equal((await wsNext(a)).length, big.length);
    assert.deepEqual(await wsNext(a), Buffer.from('x'));
    st = await g.stats();
    assert.equal(st.pending_attachment_bytes, 0);
    /* And with room again, B's packet would pass. */
    const c = await wsConnected(g.port, '/');
    wsSendBinary(c, header, [big, big.subarray(0, 10)]);
    assert.equal(await wsNext(c), `452-["message-back",${P(0)},${P(1)}]`);
  });

  test('a polling session over its cap releases its bytes at once, although its close waits for the next GET', async () => {
    const g = await startGuard(['--max-attachment-bytes', '5000']);
    const { sid } = await pollHandshake(g.port, BASE);
    await pollPost(g.port, BASE, sid, ['40']);
    await pollUntil(g.port, BASE, sid);
    const part = Buffer.alloc(3000, 5);
    await pollPost(g.port, BASE, sid, [`452-["message",${P(0)},${P(1)}]`, `b${part.toString('base64')}`]);
    assert.ok((await g.stats()).pending_attachment_bytes > 3000);
    await pollPost(g.port, BASE, sid, [`b${part.toString('base64')}`]);
    const st = await g.stats();
    assert.equal(st.pending_attachment_bytes, 0, 'released before the client polls again');
    assert.equal(st.attachment_limit_closes, 1);
    const list = await pollGet(g.port, BASE, sid);
    assert.deepEqual(list.filter((p) => p !== '2'), ['1'], 'the next GET gets the close packet');
  });

  test('shutdown with packets pending releases everything and exits cleanly', async () => {
    const g = await startGuard();
    const ws = await wsConnected(g.port, '/');
    wsSendBinary(ws, `452-["message",${P(0)},${P(1)}]`, [Buffer.alloc(50000, 6)]);
    const { sid } = await pollHandshake(g.port, BASE);
    await pollPost(g.port, BASE, sid, ['40']);
    await pollUntil(g.port, BASE, sid);
    await pollPost(g.port, BASE, sid, [`452-["message",${P(0)},${P(1)}]`, `b${Buffer.alloc(100, 1).toString('base64')}`]);
    await eventually(async () => (await g.stats()).pending_attachment_bytes > 50000, 3000, 'both packets pending');
    /* Under the sanitizers a leak or a wrong count (an assertion) is a
     * non-zero exit. */
    assert.deepEqual(await g.stop(), { code: 0, signal: null }, `exit status${g.stderr()}`);
  });
});

/* ------------------------------------------------------------------ */
/* The authentication deadline                                         */
/* ------------------------------------------------------------------ */

describe('require_auth: the connect timeout applies until a socket is in an authenticated namespace', () => {
  const within = (ms, what) => assert.ok(ms >= CONNECT_TIMEOUT - 150 && ms < CONNECT_TIMEOUT + 900, `${what}: ${ms} ms (connect timeout ${CONNECT_TIMEOUT} ms)`);

  for (const transports of [['websocket'], ['polling']]) {
    test(`only "/" connected (${transports[0]}): closed at the connect timeout, counted and logged as such`, async () => {
      const g = await startGuard(['--require-auth']);
      const t0 = Date.now();
      const mgr = manager(g.port, { transports });
      const root = mgr.socket('/');
      await root.next('connect');
      await root.echo('served meanwhile');
      const e = await root.next('disconnect', 5000);
      within(e.at - t0, 'closed after');
      assert.equal(e.args[0], 'transport close');
      const st = await g.stats();
      assert.equal(st.auth_timeout_closes, 1);
      assert.equal(st.reasons['auth timeout'], 1, `the "/" socket saw "auth timeout": ${JSON.stringify(st.reasons)}`);
      assert.match(g.stderr(), /no authenticated namespace within 1000 ms \(1 sockets\): closing/);
    });
  }

  test('a session that never CONNECTs and one refused by the check are closed by the same deadline', async () => {
    const g = await startGuard(['--require-auth']);
    const t0 = Date.now();
    const bare = await wsSession(g.port, BASE);
    const refused = await wsSession(g.port, BASE);
    refused.ws.send('40/auth,{"token":"wrong"}');
    assert.equal(await wsNext(refused), '44/auth,{"message":"unauthorized"}');
    for (const [what, ws] of [['the bare session', bare], ['the refused session', refused]]) {
      await ws.waitClosed(scaled(5000), `${what} to close`);
      within(Date.now() - t0, `${what} closed after`);
    }
    assert.equal((await g.stats()).auth_timeout_closes, 2);
  });

  test('a session with a socket on the checked namespace stays; "/" beside it is served', async () => {
    const g = await startGuard(['--require-auth']);
    const mgr = manager(g.port, { transports: ['websocket'] });
    const root = mgr.socket('/');
    const auth = mgr.socket('/auth', { auth: { token: 'ok' } });
    await root.next('connect');
    await auth.next('connect');
    await sleep(CONNECT_TIMEOUT * 2.5);
    await root.echo('root after 2.5 timeouts');
    await auth.echo('auth after 2.5 timeouts');
    assert.equal((await g.stats()).auth_timeout_closes, 0);
  });

  for (const how of ['client', 'server']) {
    test(`losing the last authenticated socket (${how} namespace disconnect) starts the deadline again`, async () => {
      const g = await startGuard(['--require-auth']);
      const mgr = manager(g.port, { transports: ['websocket'] });
      const root = mgr.socket('/');
      const auth = mgr.socket('/auth', { auth: { token: 'ok' } });
      await root.next('connect');
      await auth.next('connect');
      /* Past the first deadline: still there. */
      await sleep(CONNECT_TIMEOUT * 1.5);
      await root.echo('past the first deadline');
      const t0 = Date.now();
      if (how === 'client') auth.s.disconnect();
      else auth.s.emit('disconnect-me');
      const gone = await auth.next('disconnect');
      assert.equal(gone.args[0], how === 'client' ? 'io client disconnect' : 'io server disconnect');
      await root.echo('right after');
      const e = await root.next('disconnect', 5000);
      within(e.at - t0, 'closed after losing /auth');
      const st = await g.stats();
      assert.equal(st.auth_timeout_closes, 1);
      assert.equal(st.reasons['auth timeout'], 1);
    });
  }

  test('reconnecting to the checked namespace in time stops the new deadline', async () => {
    const g = await startGuard(['--require-auth']);
    const mgr = manager(g.port, { transports: ['websocket'] });
    const root = mgr.socket('/');
    const auth = mgr.socket('/auth', { auth: { token: 'ok' } });
    await root.next('connect');
    await auth.next('connect');
    auth.s.disconnect();
    await auth.next('disconnect');
    await sleep(CONNECT_TIMEOUT / 2);
    auth.s.connect();
    await auth.next('connect');
    await sleep(CONNECT_TIMEOUT * 1.5);
    await root.echo('kept');
    assert.equal((await g.stats()).auth_timeout_closes, 0);
  });

  test('without require_auth (the default, as the reference) "/" alone keeps the session', async () => {
    const g = await startGuard();
    const mgr = manager(g.port, { transports: ['websocket'] });
    const root = mgr.socket('/');
    await root.next('connect');
    await sleep(CONNECT_TIMEOUT * 2);
    await root.echo('kept');
    assert.equal((await g.stats()).auth_timeout_closes, 0);
  });
});

/* ------------------------------------------------------------------ */
/* Closed namespaces                                                   */
/* ------------------------------------------------------------------ */

describe('closed namespaces', () => {
  test('a closed "/" answers CONNECT like a namespace that does not exist; the connection stays for others', async () => {
    const g = await startGuard(['--close', '/']);
    const ws = await wsSession(g.port, BASE);
    ws.ws.send('40');
    assert.equal(await wsNext(ws), '44{"message":"Invalid namespace"}');
    ws.ws.send('40/nope,');
    assert.equal(await wsNext(ws), '44/nope,{"message":"Invalid namespace"}');
    ws.ws.send('40/auth,{"token":"ok"}');
    assert.match(await wsNext(ws), /^40\/auth,\{"sid":"[^"]+"\}$/);
    /* socket.io-client sees the reference's answer. */
    const mgr = manager(g.port, { transports: ['websocket'] });
    const root = mgr.socket('/');
    const err = await root.next('connect_error');
    assert.equal(err.args[0].message, 'Invalid namespace');
    const other = manager(g.port, { transports: ['polling'] }).socket('/other');
    await other.next('connect');
    await other.echo('other is open');
  });

  test('closing a namespace at run time leaves its connected sockets alone; opening it again lets clients in', async () => {
    const g = await startGuard();
    const before = manager(g.port, { transports: ['websocket'] }).socket('/other');
    await before.next('connect');
    await g.setClosed('/other', true);
    const refused = manager(g.port, { transports: ['websocket'] }).socket('/other');
    assert.equal((await refused.next('connect_error')).args[0].message, 'Invalid namespace');
    const raw = await wsSession(g.port, BASE);
    raw.ws.send('40/other,');
    assert.equal(await wsNext(raw), '44/other,{"message":"Invalid namespace"}');
    await before.echo('connected before the close');
    await g.setClosed('/other', false);
    const later = manager(g.port, { transports: ['websocket'] }).socket('/other');
    await later.next('connect');
    await later.echo('after reopening');
  });
});

/* ------------------------------------------------------------------ */
/* Origins                                                             */
/* ------------------------------------------------------------------ */

describe('the Origin allow-list', () => {
  const ALLOWED = 'https://app.example,http://localhost:3000';
  const FOREIGN = ['https://evil.example', 'http://localhost:3001', 'http://app.example', 'null', 'https://app.example.evil'];

  function assertForbidden(res, what) {
    assert.equal(res.status, 403, `${what}: status (body ${JSON.stringify(res.body)})`);
    assert.match(res.headers['content-type'] ?? '', /^application\/json\b/, `${what}: content type`);
    assert.deepEqual(JSON.parse(res.body), { code: 4, message: 'Forbidden' }, `${what}: body`);
    assert.equal(res.headers['access-control-allow-origin'], undefined, `${what}: no CORS grant for a refused origin`);
  }

  test('handshake, polling GET/POST and upgrades from a foreign Origin get 403; listed origins and requests without Origin pass', async () => {
    const g = await startGuard(['--allowed-origins', ALLOWED, '--cors-origin', '*']);
    let refusals = 0;
    for (const origin of FOREIGN) {
      const headers = { Origin: origin };
      assertForbidden(await request(g.port, 'GET', `${BASE}${q('polling')}`, { headers }), `handshake from ${origin}`);
      refusals++;
    }
    /* A session opened without Origin: its requests from a foreign Origin
     * are refused and it is not disturbed. */
    const { sid } = await pollHandshake(g.port, BASE);
    const evil = { Origin: 'https://evil.example' };
    assertForbidden(await request(g.port, 'GET', `${BASE}${q('polling', sid)}`, { headers: evil }), 'polling GET');
    assertForbidden(await request(g.port, 'POST', `${BASE}${q('polling', sid)}`, { headers: evil, body: '40' }), 'polling POST');
    assertForbidden(await request(g.port, 'GET', `${BASE}${q('polling', 'no-such-sid')}`, { headers: evil }), 'an unknown sid: the origin first');
    refusals += 3;
    for (const [what, path] of [['direct', `${BASE}${q('websocket')}`], ['with sid', `${BASE}${q('websocket', sid)}`]]) {
      const res = await upgradeRequest(g.port, path, evil);
      assert.equal(res.status, 403, `upgrade ${what}: status`);
      assert.equal(res.body, 'Forbidden');
      assert.equal(res.headers['access-control-allow-origin'], undefined);
      refusals++;
    }
    await pollPost(g.port, BASE, sid, ['40']);
    assert.match((await pollUntil(g.port, BASE, sid))[0], /^40\{"sid":/, 'the session still works');
    /* Listed origins (scheme and host in any case) and no Origin pass. */
    for (const origin of ['https://app.example', 'HTTPS://App.Example', 'http://localhost:3000', undefined]) {
      const headers = origin ? { Origin: origin } : {};
      const hs = await request(g.port, 'GET', `${BASE}${q('polling')}`, { headers });
      assert.equal(hs.status, 200, `handshake from ${origin}`);
      assert.equal(hs.headers['access-control-allow-origin'], '*');
      const up = await upgradeRequest(g.port, `${BASE}${q('websocket')}`, headers);
      assert.equal(up.status, 101, `upgrade from ${origin}`);
    }
    /* A preflight from a refused origin is not granted anything. */
    const pre = await request(g.port, 'OPTIONS', `${BASE}${q('polling')}`, {
      headers: { Origin: 'https://evil.example', 'Access-Control-Request-Method': 'POST' },
    });
    assert.equal(pre.status, 204);
    assert.equal(pre.headers['access-control-allow-origin'], undefined);
    const preOk = await request(g.port, 'OPTIONS', `${BASE}${q('polling')}`, {
      headers: { Origin: 'https://app.example', 'Access-Control-Request-Method': 'POST' },
    });
    assert.equal(preOk.headers['access-control-allow-origin'], '*');
    assert.equal((await g.stats()).origin_refused, refusals);
  });

  test('a listed origin is never reflected for a refused one in CORS list mode', async () => {
    const g = await startGuard(['--allowed-origins', 'https://app.example', '--cors-origin', 'https://app.example,https://evil.example']);
    assertForbidden(await request(g.port, 'GET', `${BASE}${q('polling')}`, { headers: { Origin: 'https://evil.example' } }), 'in the CORS list but not allowed');
    const ok = await request(g.port, 'GET', `${BASE}${q('polling')}`, { headers: { Origin: 'https://app.example' } });
    assert.equal(ok.status, 200);
    assert.equal(ok.headers['access-control-allow-origin'], 'https://app.example');
  });

  for (const transports of [['polling'], ['websocket'], undefined]) {
    const mode = transports ? transports[0] : 'default (polling then upgrade)';
    test(`socket.io-client (${mode}): a listed Origin connects, a foreign one gets connect_error`, async () => {
      const g = await startGuard(['--allowed-origins', ALLOWED]);
      const good = manager(g.port, { transports, extraHeaders: { Origin: 'https://app.example' } });
      const s = good.socket('/');
      await s.next('connect');
      if (!transports) await eventually(() => good.m.engine.transport.name === 'websocket', 3000, 'the upgrade');
      await s.echo('listed origin');
      const bad = manager(g.port, { transports, extraHeaders: { Origin: 'https://evil.example' } }).socket('/');
      await bad.next('connect_error');
      assert.ok((await g.stats()).origin_refused >= 1);
    });
  }
});

/* ------------------------------------------------------------------ */
/* Engine.IO conformance                                               */
/* ------------------------------------------------------------------ */

describe('a close packet POSTed while a GET is pending', () => {
  async function check(port, base) {
    const { sid } = await pollHandshake(port, base);
    const pending = startRequest(port, 'GET', `${base}${q('polling', sid)}`);
    await sleep(50);
    await pollPost(port, base, sid, ['1']);
    const r = await withTimeout(pending.response, 3000, 'the pending GET');
    assert.equal(r.status, 200);
    assert.deepEqual(packets(r.body), ['6'], 'the pending GET is answered with a noop');
    const after = await request(port, 'GET', `${base}${q('polling', sid)}`);
    assert.equal(after.status, 400, 'the session is gone');
  }

  test('npm engine.io (the reference) answers the pending GET with a noop', async () => {
    const { Server } = await loadPinned('socket.io');
    const server = http.createServer();
    const io = new Server(server, { pingInterval: 300, pingTimeout: 200 });
    onCleanup(() => io.close());
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
    await check(server.address().port, BASE);
  });

  test('parleyd answers it the same way on /socket.io/ and /engine.io/', async () => {
    const srv = await startProtocolServer();
    await check(srv.port, '/socket.io/');
    await check(srv.port, '/engine.io/');
  });
});
