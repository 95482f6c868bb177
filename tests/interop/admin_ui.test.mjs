// The /admin namespace of `parleyd --admin-ui` (the protocol of npm
// @socket.io/admin-ui 0.5.x), driven with socket.io-client as the Admin UI
// drives it: authentication (refused without credentials when the loopback
// exemption is off, accepted with the admin key), config, server_stats,
// all_sockets (rooms, handshake without secrets), live socket and room
// events, and the join / leave / _disconnect actions acting on real
// clients. The same scenario runs against the npm socket.io server
// instrumented by @socket.io/admin-ui itself (the oracle): parleyd must
// send the same event names with the same field sets.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { cleanup, loadPinned, onCleanup, program, Queue, sleep, startParleyd, tempDir } from './lib/harness.mjs';
import { io } from './lib/sio.mjs';

const KEY = 'admin-key-0123456789-abcdef';
/* --protocol-test's "/" handlers, with relaxed heartbeats and connect
 * timeout: its 300/200 ms heartbeat drops sessions of a busy test
 * process (CTest runs the Chromium tests alongside). */
const PT = ['--protocol-test', '--ping-interval', '5000', '--ping-timeout', '10000', '--connect-timeout', '10000'];

/** An admin socket whose every event lands in a queue. */
function adminClient(url, auth, opts = {}) {
  const s = io(`${url}/admin`, { forceNew: true, reconnection: false, auth, ...opts });
  const events = new Queue('admin event');
  const log = [];
  s.onAny((name, ...args) => {
    log.push([name, args]);
    events.push([name, args]);
  });
  onCleanup(() => s.close());
  return { s, events, log };
}

/** Resolves with 'connect' or rejects with the connect_error. */
function connected(s, ms = 5000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('no connect nor connect_error')), ms);
    s.once('connect', () => { clearTimeout(t); resolve(); });
    s.once('connect_error', (e) => { clearTimeout(t); reject(e); });
  });
}

/** Waits for an admin event satisfying pred (others are skipped). */
async function waitFor(admin, name, pred = () => true, ms = 15000) {
  const end = Date.now() + ms;
  for (;;) {
    const left = end - Date.now();
    if (left <= 0) throw new Error(`no ${name} event matching`);
    const [n, args] = await admin.events.next(left, `the admin event ${name}`);
    if (n === name && pred(...args)) return args;
  }
}

function client(url, nsp = '/', opts = {}) {
  const s = io(`${url}${nsp}`, { forceNew: true, reconnection: false, ...opts });
  onCleanup(() => s.close());
  return s;
}

const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;
const keys = (o) => Object.keys(o).sort();

/** The reference: npm socket.io instrumented by @socket.io/admin-ui, with
 * the same "/" handlers as parleyd --protocol-test uses here. */
async function startReference() {
  const { Server } = await loadPinned('socket.io');
  const adminUi = await loadPinned('@socket.io/admin-ui');
  const instrument = adminUi.instrument ?? adminUi.default.instrument;
  const bcryptMod = await import('bcryptjs'); /* a dependency of @socket.io/admin-ui */
  const bcrypt = bcryptMod.default ?? bcryptMod;
  const httpServer = http.createServer();
  const ioServer = new Server(httpServer, { pingInterval: 5000, pingTimeout: 10000 });
  ioServer.of('/').on('connection', (socket) => {
    socket.on('join', (room, ack) => { socket.join(room); if (typeof ack === 'function') ack(); });
    socket.on('to-room', (room, event, ...args) => {
      const ack = typeof args[args.length - 1] === 'function' ? args.pop() : null;
      ioServer.to(room).emit(event, ...args);
      if (ack) ack();
    });
  });
  instrument(ioServer, { auth: { type: 'basic', username: 'admin', password: bcrypt.hashSync(KEY, 4) } });
  await new Promise((resolve) => httpServer.listen(0, '127.0.0.1', resolve));
  onCleanup(() => new Promise((resolve) => { ioServer.close(); httpServer.closeAllConnections?.(); resolve(); }));
  return `http://127.0.0.1:${httpServer.address().port}`;
}

/**
 * The scenario both servers go through. Returns what was observed: the
 * admin's event log and the clients' experience.
 */
async function scenario(url) {
  const admin = adminClient(url, { username: 'admin', password: KEY }, { transports: ['websocket'] });
  await connected(admin.s);
  const [config] = await waitFor(admin, 'config');
  const [all0] = await waitFor(admin, 'all_sockets');
  const [stats0] = await waitFor(admin, 'server_stats');

  const a = client(url, '/', { transports: ['websocket'] });
  await connected(a);
  const [sockA, atA] = await waitFor(admin, 'socket_connected', (x) => x.id === a.id);
  const b = client(url, '/', { transports: ['websocket'] });
  await connected(b);
  await waitFor(admin, 'socket_connected', (x) => x.id === b.id);
  const [statsAB] = await waitFor(admin, 'server_stats', (st) => st.namespaces.find((n) => n.name === '/')?.socketsCount === 2);

  const got = new Queue('client a event');
  a.onAny((name, ...args) => got.push([name, args]));

  /* join: a joins r1 on the admin's word; a broadcast to r1 reaches it. */
  admin.s.emit('join', '/', 'r1', a.id);
  const joined = await waitFor(admin, 'room_joined', (nsp, room, id) => room === 'r1' && id === a.id);
  await b.timeout(3000).emitWithAck('to-room', 'r1', 'hello', 1);
  const afterJoin = await got.next(3000, 'hello on a');

  /* leave: it no longer does (the marker to a's own room comes after
   * what r1 would have delivered). */
  admin.s.emit('leave', '/', 'r1', a.id);
  const left = await waitFor(admin, 'room_left', (nsp, room, id) => room === 'r1' && id === a.id);
  await b.timeout(3000).emitWithAck('to-room', 'r1', 'hello-again', 2);
  await b.timeout(3000).emitWithAck('to-room', a.id, 'marker');
  const afterLeave = await got.next(3000, 'the marker on a');

  /* _disconnect: the real client is disconnected. */
  const aId = a.id; /* cleared by the client at its disconnect */
  const disc = new Promise((resolve) => a.once('disconnect', resolve));
  admin.s.emit('_disconnect', '/', false, aId);
  const reasonA = await disc;
  const gone = await waitFor(admin, 'socket_disconnected', (nsp, id) => id === aId);
  const [statsB] = await waitFor(admin, 'server_stats', (st) => st.namespaces.find((n) => n.name === '/')?.socketsCount === 1);
  const bId = b.id;
  b.close();
  admin.s.close();
  const received = admin.log.filter(([n, args]) => n === 'event_received' && args[1] === bId && args[2][0] === 'to-room').map(([, args]) => args);
  const sent = admin.log.filter(([n, args]) => n === 'event_sent' && args[1] === aId).map(([, args]) => args);
  return {
    received,
    sent, config, all0, stats0, sockA, atA, statsAB, joined, afterJoin, left, afterLeave, reasonA, gone, statsB, log: admin.log };
}

/** Event name -> the sorted key sets of its object arguments and the
 * types of the others, over the whole log. */
function shapes(log) {
  const out = {};
  for (const [name, args] of log) {
    if (name === 'session') continue; /* the reference's session ids: not served by parleyd */
    const shape = args.map((x) => (x && typeof x === 'object' && !Array.isArray(x) ? `{${keys(x).join(',')}}` : Array.isArray(x) ? 'array' : typeof x)).join(' ');
    (out[name] ??= new Set()).add(shape);
  }
  return Object.fromEntries(Object.entries(out).map(([k, v]) => [k, [...v].sort()]));
}

describe('parleyd --admin-ui: the /admin namespace', () => {
  let srv;
  let url;
  let ref;
  let urlEvents; /* parleyd with --admin-ui-events */

  before(async () => {
    const dir = tempDir();
    const keyFile = path.join(dir, 'admin.key');
    writeFileSync(keyFile, `${KEY}\n`);
    srv = await startParleyd([...PT, '--admin-ui', '--admin-key-file', keyFile, '--admin-loopback', 'off'], { wsPath: null });
    url = `http://127.0.0.1:${srv.port}`;
    const srvEvents = await startParleyd([...PT, '--admin-ui', '--admin-key-file', keyFile, '--admin-ui-events'], { wsPath: null });
    urlEvents = `http://127.0.0.1:${srvEvents.port}`;
    ref = await startReference();
  });

  after(async () => {
    await cleanup();
  });

  test('--admin-ui-events: event_received and event_sent as the reference sends them (not without the flag)', async () => {
    const ours = await scenario(urlEvents);
    const theirs = await scenario(ref);
    const plain = await scenario(url);
    assert.deepEqual(plain.received, []);
    assert.deepEqual(plain.sent, []);
    for (const r of [ours, theirs]) {
      /* b's three to-room events, as received, and what a was sent. */
      assert.deepEqual(r.received.map((x) => [x[0], x[2]]), [
        ['/', ['to-room', 'r1', 'hello', 1]],
        ['/', ['to-room', 'r1', 'hello-again', 2]],
        ['/', ['to-room', r.sent.at(-1)?.[1], 'marker']],
      ]);
      for (const x of r.received) assert.match(x[3], ISO);
      /* (parleyd --protocol-test greets every "/" socket with "auth") */
      assert.deepEqual(r.sent.map((x) => x[2]).filter((x) => x[0] !== 'auth'), [['hello', 1], ['marker']]);
    }
    const [so, st] = [shapes(ours.log), shapes(theirs.log)];
    for (const name of ['event_received', 'event_sent']) assert.deepEqual(so[name], st[name], name);
  });

  test('refused without credentials and with a wrong key (loopback exemption off): connect_error "invalid credentials"', async () => {
    for (const auth of [undefined, {}, { username: 'admin' }, { username: 'admin', password: 'wrong' },
      { username: 'admin', password: `${KEY}x` }, { username: 'admin', password: KEY.slice(0, -1) },
      { username: 'admin', password: 12345 }, { password: [KEY] }]) {
      const admin = adminClient(url, auth);
      await assert.rejects(connected(admin.s), (e) => {
        assert.equal(e.message, 'invalid credentials');
        assert.match(e.data?.reason ?? '', /admin key/);
        return true;
      }, JSON.stringify(auth));
      admin.s.close();
    }
    /* The reference refuses the same way. */
    const r = adminClient(ref, { username: 'admin', password: 'wrong' });
    await assert.rejects(connected(r.s), /invalid credentials/);
  });

  test('accepted with the admin key as the password (any username)', async () => {
    for (const username of ['admin', '', 'someone']) {
      const admin = adminClient(url, { username, password: KEY });
      await connected(admin.s);
      const [config] = await waitFor(admin, 'config');
      assert.ok(config.supportedFeatures.includes('JOIN'));
      admin.s.close();
    }
  });

  test('the scenario against parleyd and the reference: same events, same field sets', async () => {
    const ours = await scenario(url);
    const theirs = await scenario(ref).catch((e) => { throw new Error(`reference: ${e.message}`); });
    for (const r of [ours, theirs]) {
      assert.ok(Array.isArray(r.all0));
      assert.equal(r.afterJoin[0], 'hello');
      assert.deepEqual(r.afterJoin[1], [1]);
      assert.deepEqual(r.afterLeave, ['marker', []], 'after leave, r1 broadcasts no longer reach a');
      assert.equal(r.reasonA, 'io server disconnect');
      assert.equal(r.gone[2], 'server namespace disconnect');
      assert.match(r.gone[3], ISO);
      assert.match(r.atA, ISO);
      assert.equal(r.joined[0], '/');
      assert.equal(r.left[0], '/');
    }
    /* config */
    assert.deepEqual(ours.config.supportedFeatures,
      ['JOIN', 'LEAVE', 'DISCONNECT', 'MJOIN', 'MLEAVE', 'MDISCONNECT', 'AGGREGATED_EVENTS', 'ALL_EVENTS']);
    for (const f of ours.config.supportedFeatures) assert.ok(theirs.config.supportedFeatures.includes(f), f);
    /* server_stats fields */
    assert.deepEqual(keys(ours.stats0), keys(theirs.stats0));
    assert.equal(typeof ours.stats0.pid, 'number');
    assert.equal(ours.stats0.pid, srv.child.pid);
    assert.equal(typeof ours.stats0.uptime, 'number');
    assert.equal(typeof ours.stats0.serverId, 'string');
    /* counts that changed with the clients */
    const nsCount = (st, n) => st.namespaces.find((x) => x.name === n)?.socketsCount;
    assert.equal(nsCount(ours.statsAB, '/'), 2);
    assert.equal(nsCount(ours.statsAB, '/admin'), 1);
    assert.ok(ours.statsAB.clientsCount >= 3, `clientsCount ${ours.statsAB.clientsCount}`);
    assert.equal(ours.statsAB.pollingClientsCount, 0, 'every client here is on websocket');
    assert.equal(nsCount(ours.statsB, '/'), 1);
    assert.ok(ours.statsB.clientsCount < ours.statsAB.clientsCount || ours.statsB.clientsCount >= 2);
    for (const st of [ours.statsAB, ours.statsB]) {
      for (const e of st.aggregatedEvents) {
        assert.deepEqual(keys(e).filter((k) => k !== 'subType'), ['count', 'timestamp', 'type']);
        assert.ok(['rawConnection', 'rawDisconnection', 'packetsIn', 'packetsOut', 'bytesIn', 'bytesOut'].includes(e.type), e.type);
      }
    }
    const types = new Set([ours.statsAB, ours.statsB, ours.stats0].flatMap((st) => st.aggregatedEvents.map((e) => e.type)));
    for (const t of ['rawConnection', 'packetsIn', 'packetsOut', 'bytesIn', 'bytesOut']) assert.ok(types.has(t), `aggregated ${t}`);
    /* the socket object and its handshake */
    assert.deepEqual(keys(ours.sockA), keys(theirs.sockA));
    assert.deepEqual(keys(ours.sockA.handshake), keys(theirs.sockA.handshake));
    assert.equal(ours.sockA.clientId.length, 12);
    assert.equal(ours.sockA.transport, 'websocket');
    assert.equal(ours.sockA.nsp, '/');
    assert.deepEqual(ours.sockA.rooms, [ours.sockA.id]);
    /* every event name and argument shape of the reference, and no other */
    const [so, st] = [shapes(ours.log), shapes(theirs.log)];
    /* Not relayed by parleyd: the content of other users' events (see
     * docs/PROTOCOL.md); the reference's development mode sends them. */
    for (const name of ['event_received', 'event_sent']) {
      assert.ok(name in st, `the reference sends ${name}`);
      assert.ok(!(name in so), `parleyd does not send ${name}`);
      delete st[name];
    }
    assert.deepEqual(Object.keys(so).sort(), Object.keys(st).sort());
    for (const name of Object.keys(st)) {
      if (name === 'socket_updated') continue; /* the reference sends several partial shapes */
      assert.deepEqual(so[name], st[name], name);
    }
  });

  test('all_sockets: rooms and the handshake, with credentials redacted', async () => {
    const a = client(url, '/', {
      query: { token: 'query-secret-1', room: 'x y' },
      extraHeaders: { Authorization: 'Bearer header-secret-2', Cookie: 'sid=cookie-secret-3', 'X-Custom': 'visible' },
      auth: { token: 'auth-secret-4' },
    });
    await connected(a);
    await a.timeout(3000).emitWithAck('join', 'pre');
    const admin = adminClient(url, { username: 'admin', password: KEY });
    await connected(admin.s);
    const [all] = await waitFor(admin, 'all_sockets');
    const text = JSON.stringify(all);
    for (const secret of ['query-secret-1', 'header-secret-2', 'cookie-secret-3', 'auth-secret-4', KEY])
      assert.ok(!text.includes(secret), `${secret} leaked`);
    const mine = all.find((x) => x.id === a.id);
    assert.ok(mine, 'the client is listed');
    assert.deepEqual(mine.rooms, [a.id, 'pre']);
    assert.equal(mine.nsp, '/');
    assert.equal(mine.handshake.address, '127.0.0.1');
    assert.equal(mine.handshake.headers.authorization, '[redacted]');
    assert.equal(mine.handshake.headers.cookie, '[redacted]');
    assert.equal(mine.handshake.headers['x-custom'], 'visible');
    assert.equal(mine.handshake.query.token, '[redacted]');
    assert.equal(mine.handshake.query.room, 'x y');
    assert.equal(mine.handshake.query.EIO, '4');
    assert.match(mine.handshake.url, /^\/socket\.io\/\?/);
    assert.ok(!('auth' in mine.handshake));
    assert.equal(mine.handshake.secure, false);
    assert.equal(mine.handshake.xdomain, false);
    assert.equal(typeof mine.handshake.issued, 'number');
    assert.equal(typeof mine.handshake.time, 'string');
    assert.ok(Math.abs(mine.handshake.issued - Date.now()) < 60000);
    /* The admin is listed too, as the reference does. */
    assert.ok(all.some((x) => x.id === admin.s.id && x.nsp === '/admin'));
    a.close();
    admin.s.close();
  });

  test('socket_updated when a client upgrades from polling to websocket; pollingClientsCount counts polling sessions', async () => {
    const admin = adminClient(url, { username: 'admin', password: KEY });
    await connected(admin.s);
    const p = client(url, '/', { transports: ['polling'] });
    await connected(p);
    await waitFor(admin, 'server_stats', (st) => st.pollingClientsCount >= 1);
    const u = client(url, '/');
    await connected(u);
    const [upd] = await waitFor(admin, 'socket_updated', (x) => x.id === u.id);
    assert.deepEqual(upd, { id: u.id, nsp: '/', transport: 'websocket' });
    p.close();
    await waitFor(admin, 'server_stats', (st) => st.pollingClientsCount === 0);
    u.close();
    admin.s.close();
  });

  test('actions on every socket of a namespace (no filter) and malformed actions', async () => {
    const admin = adminClient(url, { username: 'admin', password: KEY });
    await connected(admin.s);
    const c1 = client(url);
    const c2 = client(url);
    await Promise.all([connected(c1), connected(c2)]);
    const r = await admin.s.timeout(3000).emitWithAck('join', '/', 'everyone');
    assert.equal(r.ok, true);
    assert.ok(r.sockets >= 2);
    const got = new Queue('c2 event');
    c2.onAny((name, ...args) => got.push([name, args]));
    await c1.timeout(3000).emitWithAck('to-room', 'everyone', 'all-hands');
    assert.deepEqual(await got.next(3000), ['all-hands', []]);
    for (const [ev, args, why] of [
      ['join', ['/nope', 'r'], /no such namespace/],
      ['join', ['/', ''], /room name/],
      ['join', ['/', 'x'.repeat(257)], /room name/],
      ['join', [42, 'r'], /namespace/],
      ['leave', ['/'], /room name/],
      ['_disconnect', ['/', 'yes'], /boolean/],
      ['_disconnect', ['/', true, 7], /third argument/],
      ['emit', ['/', null, 'ev'], /unsupported/],
    ]) {
      const res = await admin.s.timeout(3000).emitWithAck(ev, ...args);
      assert.equal(res.ok, false, `${ev} ${JSON.stringify(args)}`);
      assert.match(res.error, why);
    }
    /* Still connected after all that. */
    assert.equal(admin.s.connected, true);
    const d1 = new Promise((resolve) => c1.once('disconnect', resolve));
    const d2 = new Promise((resolve) => c2.once('disconnect', resolve));
    const res = await admin.s.timeout(3000).emitWithAck('_disconnect', '/', true, 'everyone');
    assert.equal(res.ok, true);
    /* close = true ends the client's connection: "transport close" on its side. */
    assert.deepEqual(await Promise.all([d1, d2]), ['io server disconnect', 'io server disconnect']);
    admin.s.close();
  });

  test('parleyd exits cleanly on SIGTERM with an admin and clients connected', async () => {
    const admin = adminClient(url, { username: 'admin', password: KEY });
    await connected(admin.s);
    const c = client(url, '/', { transports: ['polling'] });
    await connected(c);
    await c.timeout(3000).emitWithAck('join', 'some-room');
    await waitFor(admin, 'room_joined', (nsp, room) => room === 'some-room');
    await stopClean(srv);
  });
});

/** Stops a parleyd and checks that it exited cleanly (a sanitizer build
 * reports leaks and errors on stderr with a non-zero status). */
async function stopClean(srv) {
  const { code, signal } = await srv.stop();
  const err = srv.stderr();
  assert.ok(!/Sanitizer|runtime error/.test(err), err);
  assert.deepEqual({ code, signal }, { code: 0, signal: null });
}

describe('parleyd --admin-ui defaults and the messaging service', () => {
  after(async () => {
    await cleanup();
  });

  test('loopback peers need no credentials by default', async () => {
    const srv = await startParleyd([...PT, '--admin-ui'], { wsPath: null });
    const admin = adminClient(`http://127.0.0.1:${srv.port}`, undefined);
    await connected(admin.s);
    await waitFor(admin, 'config');
    admin.s.close();
    await stopClean(srv);
  });

  test('an admin that stops polling gets no more events and is disconnected past --admin-ui-max-backlog', async () => {
    const srv = await startParleyd([...PT, '--admin-ui', '--admin-ui-max-backlog', '4096'], { wsPath: null });
    const base = `http://127.0.0.1:${srv.port}/socket.io/?EIO=4&transport=polling`;
    const open = await (await fetch(base)).text();
    const sid = JSON.parse(open.slice(1)).sid;
    assert.equal(await (await fetch(`${base}&sid=${sid}`, { method: 'POST', body: '40/admin,' })).text(), 'ok');
    const first = await (await fetch(`${base}&sid=${sid}`)).text();
    assert.match(first, /^40\/admin,\{"sid"/);
    /* It stops polling; clients come and go. */
    const clients = [];
    for (let i = 0; i < 20; i++) clients.push(await new Promise((resolve, reject) => {
      const c = client(`http://127.0.0.1:${srv.port}`, '/', { transports: ['websocket'] });
      c.once('connect', () => resolve(c));
      c.once('connect_error', reject);
    }));
    await sleep(200);
    const res = await fetch(`${base}&sid=${sid}`);
    const body = await res.text();
    /* What was queued stayed under the limit plus one event, and the
     * admin was told it is disconnected (or its session is already gone). */
    assert.ok(body.length < 4096 + 2048, `${body.length} bytes were queued`);
    assert.ok(res.status === 400 || body.includes('41/admin,'), `${res.status} ${body.slice(-200)}`);
    assert.match(srv.stderr(), /admin-ui: an admin from 127\.0\.0\.1 is not taking its events/);
    for (const c of clients) c.close();
    await stopClean(srv);
  });

  test('the config file keys admin-ui, admin-key-file and admin-loopback', async () => {
    const dir = tempDir();
    writeFileSync(path.join(dir, 'admin.key'), KEY);
    const conf = path.join(dir, 'parleyd.conf');
    writeFileSync(conf, `admin-ui = true\nadmin-key-file = ${path.join(dir, 'admin.key')}\nadmin-loopback = off\n`);
    const srv = await startParleyd([...PT, '--config', conf], { wsPath: null });
    const u = `http://127.0.0.1:${srv.port}`;
    const refused = adminClient(u, undefined);
    await assert.rejects(connected(refused.s), /invalid credentials/);
    const admin = adminClient(u, { username: 'x', password: KEY });
    await connected(admin.s);
    await waitFor(admin, 'config');
    await stopClean(srv);
  });

  test('bad --admin-loopback values and an unreadable --admin-key-file are refused with a message', () => {
    const bad = spawnSync(program('PARLEYD'), ['--admin-ui', '--admin-loopback', 'maybe', '--listen', '127.0.0.1:0'], { encoding: 'utf8', timeout: 10000 });
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /--admin-loopback wants on or off/);
    const missing = path.join(tempDir(), 'no-such.key');
    const nokey = spawnSync(program('PARLEYD'), ['--admin-ui', '--admin-key-file', missing, '--no-messaging', '--listen', '127.0.0.1:0'], { encoding: 'utf8', timeout: 10000 });
    assert.notEqual(nokey.status, 0);
    assert.match(nokey.stderr, /admin-key-file/);
  });

  test('without --admin-ui there is no /admin namespace', async () => {
    const srv = await startParleyd(PT, { wsPath: null });
    const admin = adminClient(`http://127.0.0.1:${srv.port}`, { username: 'admin', password: KEY });
    await assert.rejects(connected(admin.s), /Invalid namespace/);
    admin.s.close();
    await srv.stop();
  });

  test('with messaging: an /admin CONNECT counts as joining an authenticated namespace (the connect timeout spares it); no room actions on /chat', async () => {
    const dir = tempDir();
    const srv = await startParleyd(['--admin-ui', '--dev-auth', '--data-dir', path.join(dir, 'data'), '--connect-timeout', '2000'], { wsPath: null });
    const url = `http://127.0.0.1:${srv.port}`;
    const admin = adminClient(url, undefined);
    await connected(admin.s);
    const bare = client(url, '/', { transports: ['websocket'] });
    const bareGone = new Promise((resolve) => bare.io.engine?.once?.('close', resolve) ?? bare.io.once('close', resolve));
    await sleep(3500);
    assert.equal(admin.s.connected, true, 'the admin stays');
    await bareGone; /* the bare session (no namespace joined) was closed */
    const [stats] = await waitFor(admin, 'server_stats');
    assert.ok(stats.namespaces.some((n) => n.name === '/chat'));
    /* /chat's rooms are conversations: join and leave are refused there;
     * _disconnect works. */
    const alice = client(url, '/chat', { auth: { user: 'alice' }, transports: ['websocket'] });
    await connected(alice);
    for (const ev of ['join', 'leave']) {
      const r = await admin.s.timeout(3000).emitWithAck(ev, '/chat', 'dm:alice:bob', alice.id);
      assert.deepEqual(r, { ok: false, error: 'room membership in this namespace is managed by its service' });
    }
    const aliceGone = new Promise((resolve) => alice.once('disconnect', resolve));
    const r = await admin.s.timeout(3000).emitWithAck('_disconnect', '/chat', false, alice.id);
    assert.deepEqual(r, { ok: true, sockets: 1 });
    assert.equal(await aliceGone, 'io server disconnect');
    await stopClean(srv);
  });
});
