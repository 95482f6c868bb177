// Two parleyd nodes behind a round-robin TCP proxy with no stickiness,
// and polling-only socket.io-client sockets that open a new TCP connection
// for every HTTP request (agent: false), so consecutive requests of one
// session land on alternate nodes. Each node knows the other (--node-id,
// --peer): a request for a session the other node owns is relayed there
// (server/engine.h engine_set_cluster; docs/CLUSTER.md). Shown: every
// acknowledgement comes back and no socket is disconnected; both nodes
// relayed requests; without --peer the same clients lose their sessions;
// a relay to a node that died is answered (502) and the client reconnects
// to the live node.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import net from 'node:net';
import { after, test } from 'node:test';

import { cleanup, lowFreePort, onCleanup, program, sleep, withTimeout } from './lib/harness.mjs';
import { io, startProtocolServer } from './lib/sio.mjs';

after(cleanup);

/** Round-robin TCP proxy: connection i goes to ports[i % n]. */
async function roundRobin(ports) {
  let next = 0;
  const sockets = new Set();
  const counts = ports.map(() => 0);
  const srv = net.createServer((down) => {
    const i = next++ % ports.length;
    counts[i]++;
    const up = net.connect(ports[i], '127.0.0.1');
    sockets.add(down);
    sockets.add(up);
    down.pipe(up);
    up.pipe(down);
    const end = () => {
      down.destroy();
      up.destroy();
      sockets.delete(down);
      sockets.delete(up);
    };
    down.on('error', end);
    up.on('error', end);
    down.on('close', end);
    up.on('close', end);
  });
  await new Promise((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const close = () => {
    for (const s of sockets) s.destroy();
    return new Promise((resolve) => srv.close(() => resolve()));
  };
  onCleanup(close);
  return { port: srv.address().port, counts, close };
}

async function metric(port, name) {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  const text = await res.text();
  const m = new RegExp(`^${name} (\\d+)`, 'm').exec(text);
  assert.ok(m, `${name} in /metrics`);
  return Number(m[1]);
}

// The protocol-test server's heartbeat (300 ms ping, 200 ms to answer)
// and 1 s connect timeout are the reference test suite's; a pong that
// takes two relays on a loaded CI machine can miss 200 ms, which would
// test the machine, not the relay. Relays are shown by what arrives.
const CALM = ['--ping-interval', '2000', '--ping-timeout', '10000', '--connect-timeout', '10000'];

async function twoNodes({ peers }) {
  const [p1, p2] = [await lowFreePort(), await lowFreePort()];
  const flags = (self, other, otherPort) =>
    peers ? ['--node-id', self, '--peer', `${other}=127.0.0.1:${otherPort}`] : [];
  const n1 = await startProtocolServer({ port: p1, extra: [...CALM, ...flags('node-a', 'node-b', p2)] });
  const n2 = await startProtocolServer({ port: p2, extra: [...CALM, ...flags('node-b', 'node-a', p1)] });
  return [n1, n2];
}

function client(port, { reconnect = false } = {}) {
  const s = io(`http://127.0.0.1:${port}`, {
    transports: ['polling'],
    agent: false, // a new TCP connection per request: the proxy spreads them
    reconnection: reconnect,
    reconnectionDelay: 100,
    forceNew: true,
  });
  const disconnects = [];
  s.on('disconnect', (why) => disconnects.push(why));
  onCleanup(() => s.close());
  return { s, disconnects };
}

/* Resolves on connect; a connect error says what HTTP status or response
 * the transport got (and the server's log when given). */
const connected = (s, ms = 10000, srv = null) =>
  withTimeout(new Promise((resolve, reject) => {
    if (s.connected) return resolve();
    s.once('connect', resolve);
    s.once('connect_error', (e) => {
      const x = e.context;
      reject(new Error(`${e.message}: status ${e.description} ${x?.responseText ?? ''}` +
        (srv ? `\nserver log:\n${srv.stderr()}` : '')));
    });
  }), ms, 'connect');

test('polling sessions through a round-robin proxy: every request served, relayed to the owner', async () => {
  const [n1, n2] = await twoNodes({ peers: true });
  const lb = await roundRobin([n1.port, n2.port]);
  const clients = Array.from({ length: 8 }, () => client(lb.port));
  await Promise.all(clients.map((c) => connected(c.s)));
  // One request at a time, so that each session's consecutive requests
  // alternate between the nodes (with all clients in lockstep, a client's
  // requests could keep the parity of the proxy's counter and always meet
  // its own node).
  for (let round = 0; round < 10; round++) {
    for (const [i, c] of clients.entries()) {
      const payload = { round, i, text: `héllo ${round}/${i}` };
      const got = await withTimeout(c.s.emitWithAck('message-with-ack', payload), 10000,
        `ack ${round}/${i}`);
      assert.deepEqual(got, payload);
    }
  }
  // Server -> client through the long-polling GET, whichever node it hits.
  await Promise.all(clients.map((c, i) => withTimeout(new Promise((resolve) => {
    c.s.once('message-back', (v) => {
      assert.equal(v, `back ${i}`);
      resolve();
    });
    c.s.emit('message', `back ${i}`);
  }), 10000, `message-back ${i}`)));
  for (const c of clients) {
    assert.equal(c.s.connected, true);
    assert.deepEqual(c.disconnects, []);
  }
  assert.ok(lb.counts[0] > 20 && lb.counts[1] > 20, `both nodes got requests: ${lb.counts}`);
  const relayed = (await metric(n1.port, 'parley_engine_relayed_total')) +
    (await metric(n2.port, 'parley_engine_relayed_total'));
  // Each request after the handshake has an even chance of landing on the
  // node that does not own its session.
  const requests = lb.counts[0] + lb.counts[1];
  assert.ok(relayed >= requests / 5, `requests relayed between the nodes: ${relayed} of ${requests}`);
  assert.equal(await metric(n1.port, 'parley_engine_relay_failures_total'), 0);
  assert.equal(await metric(n2.port, 'parley_engine_relay_failures_total'), 0);
  for (const c of clients) c.s.close();
  await lb.close();
  await n1.stop();
  await n2.stop();
});

test('without --peer the same clients lose their sessions (the control)', async () => {
  const [n1, n2] = await twoNodes({ peers: false });
  const lb = await roundRobin([n1.port, n2.port]);
  const clients = Array.from({ length: 4 }, () => client(lb.port));
  // The handshake lands on one node and the CONNECT on the other ("Session
  // ID unknown"): a connect error, or a disconnect right after.
  const failed = await Promise.all(clients.map(async (c) => {
    try {
      await connected(c.s, 5000);
      await withTimeout(c.s.emitWithAck('message-with-ack', 1), 3000, 'ack');
      return c.disconnects.length > 0;
    } catch {
      return true;
    }
  }));
  assert.ok(failed.every(Boolean), `every session broke without relaying: ${failed}`);
  for (const c of clients) c.s.close();
  await lb.close();
  await n1.stop();
  await n2.stop();
});

test('a relay to a node that died is answered, and the client starts over on a live node', async () => {
  const [n1, n2] = await twoNodes({ peers: true });
  // Sessions made by node-b, then node-b dies; the proxy now only knows
  // node-a, which relays to the dead node-b and answers 502.
  const direct = client(n2.port);
  await connected(direct.s);
  const gone = withTimeout(new Promise((resolve) => direct.s.once('disconnect', resolve)), 10000,
    'disconnect after the owner died');
  await n2.stop('SIGKILL');
  const lb = await roundRobin([n1.port]);
  // The same session id, asked of node-a: relayed, refused by the dead
  // owner, answered with an error instead of hanging.
  const sid = direct.s.io.engine.id;
  const res = await fetch(`http://127.0.0.1:${lb.port}/socket.io/?EIO=4&transport=polling&sid=${sid}`);
  assert.equal(res.status, 502);
  await gone;
  assert.ok(await metric(n1.port, 'parley_engine_relay_failures_total') >= 1);
  // Unknown tags are not relayed: a made-up sid gets the plain answer.
  const bogus = await fetch(`http://127.0.0.1:${lb.port}/socket.io/?EIO=4&transport=polling&sid=ZZZZ${'x'.repeat(16)}`);
  assert.equal(bogus.status, 400);
  assert.deepEqual(await bogus.json(), { code: 1, message: 'Session ID unknown' });
  const again = client(lb.port);
  await connected(again.s);
  assert.equal(await withTimeout(again.s.emitWithAck('message-with-ack', 'ok'), 5000, 'ack'), 'ok');
  again.s.close();
  direct.s.close();
  await sleep(10);
  await lb.close();
  await n1.stop();
});

/** The pids of a process's children. */
function childrenOf(pid) {
  const r = spawnSync('ps', ['-o', 'pid=', '--ppid', String(pid)], { encoding: 'utf8' });
  return r.stdout.split('\n').map((x) => x.trim()).filter(Boolean).map(Number);
}

test('--workers 3: one port, three processes, polling requests relayed between them; a killed worker comes back', async () => {
  const srv = await startProtocolServer({ extra: [...CALM, '--workers', '3'] });
  const parent = srv.child.pid;
  const workers = childrenOf(parent);
  assert.equal(workers.length, 3, `three workers: ${workers}`);
  // New connections are spread over the workers by the kernel
  // (SO_REUSEPORT): sessions carry the tags of more than one worker (all
  // twelve handshakes hashed to one of three workers: 3^-11).
  const clients = Array.from({ length: 12 }, () => client(srv.port));
  await Promise.all(clients.map((c) => connected(c.s, 10000, srv)));
  const tags = new Set(clients.map((c) => c.s.io.engine.id.slice(0, 4)));
  assert.ok(tags.size >= 2, `sessions on several workers: ${[...tags]}`);
  for (let round = 0; round < 6; round++) {
    for (const [i, c] of clients.entries()) {
      const got = await withTimeout(c.s.emitWithAck('message-with-ack', [round, i]), 10000,
        `ack ${round}/${i}`);
      assert.deepEqual(got, [round, i]);
    }
  }
  for (const c of clients) assert.deepEqual(c.disconnects, []);
  for (const c of clients) c.s.close();

  // SIGKILL one worker: the parent starts another, and the port keeps
  // answering. A connection the kernel had already queued on the dying
  // worker's socket (or hashed to it as it closed) is reset: a client
  // that reconnects, as socket.io-client does by default, gets through.
  process.kill(workers[0], 'SIGKILL');
  const again = client(srv.port, { reconnect: true });
  await withTimeout(new Promise((resolve) => again.s.once('connect', resolve)), 10000,
    'a client connecting (with retries) after a worker was killed');
  assert.equal(await withTimeout(again.s.emitWithAck('message-with-ack', 'x'), 10000, 'ack'), 'x');
  again.s.close();
  let now = [];
  for (let i = 0; i < 50; i++) {
    now = childrenOf(parent);
    if (now.length === 3 && !now.includes(workers[0])) break;
    await sleep(100);
  }
  assert.equal(now.length, 3, `restarted: ${now}`);
  assert.ok(!now.includes(workers[0]));

  // SIGTERM to the parent stops every worker, then the parent (0).
  const { code } = await srv.stop();
  assert.equal(code, 0);
  for (const pid of now) assert.throws(() => process.kill(pid, 0), `worker ${pid} gone`);
});

test('--workers refuses what one process must own', () => {
  const bin = program('PARLEYD');
  let r = spawnSync(bin, ['--workers', '2', '--listen', '127.0.0.1:0'], { encoding: 'utf8' });
  assert.equal(r.status, 2);
  assert.match(r.stderr, /--workers with the messaging service needs --store postgresql:\/\/\.\.\. and --redis URL/);
  // A SQLite store, or a shared one without Redis, is one process's too.
  for (const extra of [['--store', 'sqlite:/tmp/x.db', '--redis', 'redis://127.0.0.1:1'],
    ['--store', 'postgresql://u@127.0.0.1:1/db']]) {
    r = spawnSync(bin, ['--workers', '2', '--dev-auth', ...extra], { encoding: 'utf8' });
    assert.equal(r.status, 2, extra.join(' '));
    assert.match(r.stderr, /needs --store postgresql/);
  }
  // Every worker would send the push outbox.
  r = spawnSync(bin, ['--workers', '2', '--dev-auth', '--store', 'postgresql://u@127.0.0.1:1/db', '--redis',
    'redis://127.0.0.1:1', '--push-webhook', 'https://push.example/x'], { encoding: 'utf8' });
  assert.equal(r.status, 2);
  assert.match(r.stderr, /--workers with --push-webhook/);
  r = spawnSync(bin, ['--workers', '2', '--protocol-test', '--node-id', 'a', '--peer', 'b=127.0.0.1:1'],
    { encoding: 'utf8' });
  assert.equal(r.status, 2);
  assert.match(r.stderr, /--workers with --peer/);
  r = spawnSync(bin, ['--workers', '65', '--protocol-test'], { encoding: 'utf8' });
  assert.equal(r.status, 2);
  assert.match(r.stderr, /--workers wants 1..64/);
});
