// The resilient WebSocket client (`parley ws-queue`, built on parley_ws's
// reconnection, heartbeat and outbound queue) through the fault-injection
// proxy (lib/proxy.mjs), in front of a Node `ws` echo server and of
// `parleyd --ws-echo`:
//   - the server is killed and restarted mid-stream: everything queued
//     arrives, is acknowledged exactly once, and what waited is replayed in
//     priority order;
//   - the network turns into a black hole: the heartbeat notices within
//     ping interval + timeout, and the client recovers when it heals;
//   - the server answers 401/403/404: one attempt, no reconnection storm
//     (and 503, which is retried, for contrast);
//   - the client process is SIGKILLed and restarted on its queue file:
//     nothing lost, nothing acknowledged is sent again.
// Counts (sent / delivered / duplicated) are printed as test diagnostics.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import http from 'node:http';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { after, describe, test } from 'node:test';
import {
  cleanup, onCleanup, program, scaled, sleep, startParleyd, tempDir, withTimeout,
} from './lib/harness.mjs';
import { WebSocketServer } from './lib/peer.mjs';
import { startProxy } from './lib/proxy.mjs';

after(cleanup);

const PRIOS = ['low', 'normal', 'high', 'urgent'];
const idOf = (n) => `m-${String(n).padStart(34, '0')}`;

/* ------------------------------------------------------------------ */
/* The client under test: `parley ws-queue`, driven over stdin/stdout   */
/* ------------------------------------------------------------------ */

class Agent {
  constructor(url, args, label = 'parley ws-queue') {
    this.label = `${label} ${url}`;
    this.child = spawn(program('PARLEY'), ['ws-queue', ...args, url], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.events = [];
    this.watchers = new Set();
    this.stderr = '';
    this.exit = null;
    this.child.stdin.on('error', () => {});
    this.child.stderr.setEncoding('utf8');
    this.child.stderr.on('data', (d) => {
      this.stderr += d;
    });
    createInterface({ input: this.child.stdout }).on('line', (line) => {
      let ev;
      try {
        ev = JSON.parse(line);
      } catch {
        ev = { ev: 'garbage', line };
      }
      ev.at = Date.now();
      this.events.push(ev);
      this.poke();
    });
    this.exited = new Promise((resolve) => {
      this.child.once('close', (code, signal) => {
        this.exit = { code, signal };
        this.poke();
        resolve(this.exit);
      });
    });
    onCleanup(() => this.kill());
  }

  poke() {
    for (const w of [...this.watchers]) w();
  }

  cmd(line) {
    this.child.stdin.write(`${line}\n`);
  }

  send(n, prio, ttl = 0) {
    const id = idOf(n);
    this.cmd(`send ${PRIOS[prio]} ${ttl} ${id} ${id} ${prio} ${n}`);
    return id;
  }

  of(name) {
    return this.events.filter((e) => e.ev === name);
  }

  statuses(status) {
    return this.events.filter((e) => e.ev === 'status' && e.status === status);
  }

  tail() {
    const last = this.events.slice(-8).map((e) => JSON.stringify(e)).join('\n');
    return `\n--- ${this.label}: last events ---\n${last}\n--- stderr ---\n${this.stderr.trim().split('\n').slice(-10).join('\n')}\n---`;
  }

  /* Resolves once cond() holds (checked after every event), rejects on
   * timeout or when the process exits first. */
  until(cond, ms, what) {
    if (cond()) return Promise.resolve();
    let watcher;
    const p = new Promise((resolve, reject) => {
      watcher = () => {
        if (cond()) resolve();
        else if (this.exit) reject(new Error(`${this.label} exited (${JSON.stringify(this.exit)}) while waiting for ${what}${this.tail()}`));
      };
      this.watchers.add(watcher);
    });
    return withTimeout(p, ms, `${what}${this.tail()}`).finally(() => this.watchers.delete(watcher));
  }

  async kill(signal = 'SIGKILL') {
    if (!this.exit) this.child.kill(signal);
    await withTimeout(this.exited, 5000, `${this.label} to exit`).catch(() => {});
  }

  async quit() {
    this.cmd('quit');
    const r = await withTimeout(this.exited, 10000, `${this.label} to quit`);
    assert.deepEqual(r, { code: 0, signal: null }, `${this.label} exit status${this.tail()}`);
  }
}

/* ------------------------------------------------------------------ */
/* Servers                                                              */
/* ------------------------------------------------------------------ */

/**
 * A Node `ws` echo server recording what it receives. echoDelayMs > 0
 * echoes each message that long after the previous echo (a slow server,
 * so that messages are in flight when something breaks). crash() ends it
 * as a dying process would: every socket destroyed, the listener closed.
 */
async function startNodeEcho({ echoDelayMs = 0 } = {}) {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await withTimeout(new Promise((resolve, reject) => {
    wss.once('listening', resolve);
    wss.once('error', reject);
  }), 5000, 'the ws echo server to listen');
  const received = [];
  let conns = 0;
  wss.on('connection', (ws) => {
    const conn = ++conns;
    let next = 0;
    ws.on('error', () => {});
    ws.on('message', (data, isBinary) => {
      received.push({ text: data.toString(), conn });
      if (!echoDelayMs) {
        ws.send(data, { binary: isBinary });
        return;
      }
      next = Math.max(next, Date.now()) + echoDelayMs;
      setTimeout(() => ws.readyState === ws.OPEN && ws.send(data, { binary: isBinary }), next - Date.now());
    });
  });
  const crash = () => new Promise((resolve) => {
    for (const c of wss.clients) c.terminate();
    wss.close(() => resolve());
  });
  onCleanup(crash);
  return { port: wss.address().port, received, connections: () => conns, crash, kind: 'node ws' };
}

async function startParleydEcho() {
  const d = await startParleyd([]);
  return { port: d.port, received: null, crash: () => d.stop('SIGKILL'), kind: 'parleyd', d };
}

const SERVERS = {
  'node ws': () => startNodeEcho(),
  parleyd: () => startParleydEcho(),
};

/** Ids in received texts: how often each arrived. */
function tally(texts) {
  const m = new Map();
  for (const t of texts) {
    const id = t.slice(0, 36);
    m.set(id, (m.get(id) ?? 0) + 1);
  }
  return m;
}

/** Asserts texts ("ID PRIO N") come in priority order, oldest first within one. */
function assertPriorityOrder(texts, what) {
  const parsed = texts.map((t) => {
    const [, prio, n] = t.split(' ');
    return { prio: Number(prio), n: Number(n), t };
  });
  for (let i = 1; i < parsed.length; i++) {
    const a = parsed[i - 1];
    const b = parsed[i];
    const ok = a.prio > b.prio || (a.prio === b.prio && a.n < b.n);
    assert.ok(ok, `${what}: "${a.t}" came before "${b.t}" (position ${i} of ${parsed.length})`);
  }
}

/* ------------------------------------------------------------------ */
/* Server killed and restarted mid-stream                               */
/* ------------------------------------------------------------------ */

describe('server killed and restarted mid-stream', { timeout: scaled(120000) }, () => {
  for (const kind of Object.keys(SERVERS)) {
    test(`${kind}: everything queued arrives, acknowledged once, replayed by priority`, async (t) => {
      let server = await SERVERS[kind]();
      const proxy = await startProxy({ port: server.port });
      const a = new Agent(`ws://127.0.0.1:${proxy.port}/echo`, [
        '--reconnect', '--reconnect-delay', '50', '--reconnect-delay-max', '400',
        '--ping-interval', '1000', '--ping-timeout', '2000', '--timeout', '3000', '--ack-echo',
      ]);
      await a.until(() => a.of('connected').length === 1, 10000, 'the first connection');

      /* Phase 1: a stream of normal messages; the server dies after 100. */
      const all = [];
      for (let n = 0; n < 150; n++) {
        all.push(a.send(n, 1));
        /* Right behind a burst, so that some are on the wire. */
        if (n === 99) await server.crash();
        else if (n % 10 === 9) await sleep(5);
      }
      await a.until(() => a.of('disconnected').length >= 1, 10000, 'the client to notice the dead server');
      const ackedBeforeRestart = a.statuses('acked').length;

      /* Phase 2: offline; more messages of every priority, interleaved. */
      for (let n = 150; n < 250; n++) all.push(a.send(n, n % 4));
      await a.until(() => a.of('queued').length === 250, 10000, '250 messages queued');
      await sleep(300); /* a few failed attempts meanwhile */
      const attemptsWhileDown = a.of('reconnecting').length;

      /* Phase 3: a new server; the proxy sends new connections there. */
      server = await SERVERS[kind]();
      proxy.setTarget(server.port);
      await a.until(() => a.statuses('acked').length >= 250, 30000, 'every message acknowledged');
      const lastOpen = a.events.lastIndexOf(a.of('connected').at(-1));

      /* Exactly once at the application level: one acknowledgement and
       * one echo per id, nothing unknown. */
      const acked = tally(a.statuses('acked').map((e) => e.id));
      assert.equal(acked.size, 250, 'distinct ids acknowledged');
      assert.deepEqual([...acked.values()].filter((v) => v !== 1), [], 'ids acknowledged more than once');
      assert.deepEqual([...acked.keys()].sort(), [...all].sort(), 'the acknowledged ids are the queued ids');
      const echoes = tally(a.of('message').map((e) => e.data));
      const dupEchoes = [...echoes.values()].reduce((s, v) => s + v - 1, 0);
      assert.equal(echoes.size, 250, 'distinct ids echoed');
      assert.equal(dupEchoes, 0, 'duplicate echoes');

      /* What waited went out by priority after the reconnection. */
      const replay = server.received
        ? server.received.map((r) => r.text)
        : a.events.slice(lastOpen).filter((e) => e.ev === 'message').map((e) => e.data);
      assert.ok(replay.length >= 100, `at least the 100 offline messages were replayed (${replay.length})`);
      assertPriorityOrder(replay, `replay to the restarted ${kind} server`);

      const sent = a.statuses('sent').length;
      const requeued = a.statuses('queued').length;
      a.cmd('stats');
      await a.until(() => a.of('stats').length === 1, 5000, 'stats');
      const st = a.of('stats')[0];
      assert.ok(st.connections >= 2 && st.reconnects >= 1, `stats: ${JSON.stringify(st)}`);
      assert.equal(st.queued, 0, 'queue empty');
      assert.equal(st.messages_out, sent, 'stats.messages_out counts every transmission');
      assert.ok(attemptsWhileDown >= 1, 'the client kept trying while the server was down');
      t.diagnostic(`${kind}: queued 250, sent ${sent} (requeued after the crash ${requeued}), ` +
        `delivered ${acked.size}, duplicated echoes ${dupEchoes}, acked before the restart ` +
        `${ackedBeforeRestart}, replayed in order ${replay.length}, attempts while down ${attemptsWhileDown}, ` +
        `proxy connections ${proxy.accepted}`);
      await a.quit();
    });
  }
});

/* ------------------------------------------------------------------ */
/* Black hole                                                           */
/* ------------------------------------------------------------------ */

describe('traffic black-holed', { timeout: scaled(120000) }, () => {
  const INTERVAL = 300;
  const TIMEOUT = 300;
  for (const kind of Object.keys(SERVERS)) {
    test(`${kind}: the heartbeat notices within interval + timeout, and the client recovers`, async (t) => {
      const server = await SERVERS[kind]();
      const proxy = await startProxy({ port: server.port });
      const a = new Agent(`ws://127.0.0.1:${proxy.port}/echo`, [
        '--reconnect', '--reconnect-delay', '50', '--reconnect-delay-max', '200',
        '--ping-interval', String(INTERVAL), '--ping-timeout', String(TIMEOUT), '--timeout', '500',
        '--ack-echo',
      ]);
      await a.until(() => a.of('connected').length === 1, 10000, 'the connection');
      /* A few heartbeats went through: the round trip is known. The dark
       * starts anywhere in a ping interval. */
      const offset = Math.floor(Math.random() * INTERVAL);
      await sleep(INTERVAL * 3 + offset);
      a.cmd('stats');
      await a.until(() => a.of('stats').length === 1, 5000, 'stats');
      const rtt = a.of('stats')[0].last_rtt_us;
      assert.ok(rtt > 0 && rtt < 1e6, `heartbeat round trip measured: ${rtt} us`);
      assert.equal(a.of('disconnected').length, 0, 'no false alarm while the link works');

      const t0 = Date.now();
      proxy.pause();
      await a.until(() => a.of('disconnected').length === 1, 10000, 'the heartbeat to give up');
      const d = a.of('disconnected')[0];
      const took = d.at - t0;
      assert.equal(d.reason, 'ping timeout');
      assert.equal(d.will_retry, true);
      assert.ok(took >= TIMEOUT - 50, `declared dead after ${took} ms: too early (timeout ${TIMEOUT})`);
      assert.ok(took <= INTERVAL + TIMEOUT + scaled(250),
        `declared dead after ${took} ms; must be within interval ${INTERVAL} + timeout ${TIMEOUT}`);

      /* Still dark: attempts time out; messages wait in the queue. */
      for (let n = 0; n < 20; n++) a.send(n, n % 4);
      await a.until(() => a.of('queued').length === 20, 5000, '20 messages queued');
      await a.until(() => a.of('error').some((e) => e.reason === 'connect timeout'), 5000,
        'an attempt to time out in the black hole');
      assert.equal(a.statuses('acked').length, 0, 'nothing acknowledged through a black hole');

      proxy.resume();
      await a.until(() => a.statuses('acked').length === 20, 15000, 'the queue to drain after the network healed');
      const replay = a.of('message').map((e) => e.data);
      assertPriorityOrder(replay, 'messages queued during the outage');
      t.diagnostic(`${kind}: dead link noticed after ${took} ms (interval ${INTERVAL} + timeout ${TIMEOUT}; ` +
        `dark from ${offset} ms into an interval), ` +
        `rtt ${rtt} us, attempts in the dark ${a.of('error').length}, delivered after healing ${replay.length}/20`);
      await a.quit();
    });
  }
});

/* ------------------------------------------------------------------ */
/* Non-retryable answers                                                */
/* ------------------------------------------------------------------ */

/** An HTTP server answering every upgrade with `status`. */
async function startRefuser(status) {
  let upgrades = 0;
  const server = http.createServer((req, res) => {
    res.writeHead(status);
    res.end();
  });
  server.on('upgrade', (req, socket) => {
    upgrades++;
    socket.on('error', () => {});
    socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  onCleanup(() => new Promise((resolve) => server.close(() => resolve())));
  return { port: server.address().port, upgrades: () => upgrades };
}

describe('non-retryable handshake answers', { timeout: scaled(60000) }, () => {
  const WATCH_MS = 2000;
  const args = ['--reconnect', '--reconnect-delay', '20', '--reconnect-delay-max', '100'];

  for (const status of [401, 403]) {
    test(`HTTP ${status}: one attempt, no reconnection storm`, async (t) => {
      const server = await startRefuser(status);
      const proxy = await startProxy({ port: server.port });
      const a = new Agent(`ws://127.0.0.1:${proxy.port}/echo`, args);
      await a.until(() => a.of('reconnect_failed').length === 1, 10000, 'the client to give up');
      await sleep(WATCH_MS);
      assert.equal(server.upgrades(), 1, `upgrade requests in ${WATCH_MS} ms`);
      assert.equal(proxy.accepted, 1, 'TCP connections');
      const err = a.of('error');
      assert.equal(err.length, 1);
      assert.equal(err[0].status, status);
      assert.equal(err[0].will_retry, false);
      assert.equal(a.of('reconnect_failed')[0].status, status);
      assert.equal(a.of('reconnecting').length, 0);
      /* The application may try again; that is one more attempt. */
      a.cmd('connect');
      await a.until(() => a.of('reconnect_failed').length === 2, 10000, 'the second refusal');
      await sleep(200);
      assert.equal(server.upgrades(), 2);
      t.diagnostic(`HTTP ${status}: ${server.upgrades()} attempts in ${WATCH_MS + 200} ms (one by the application)`);
      await a.quit();
    });
  }

  test('HTTP 404 from parleyd (unknown path): one attempt', async (t) => {
    const d = await startParleyd([]);
    const proxy = await startProxy({ port: d.port });
    const a = new Agent(`ws://127.0.0.1:${proxy.port}/not-here`, args);
    await a.until(() => a.of('reconnect_failed').length === 1, 10000, 'the client to give up');
    await sleep(WATCH_MS);
    assert.equal(proxy.accepted, 1, `connections in ${WATCH_MS} ms`);
    assert.equal(a.of('error')[0].status, 404);
    t.diagnostic(`HTTP 404: ${proxy.accepted} attempt in ${WATCH_MS} ms`);
    await a.quit();
  });

  test('HTTP 503 (retryable, for contrast): attempts keep coming, spaced by the backoff', async (t) => {
    const server = await startRefuser(503);
    const a = new Agent(`ws://127.0.0.1:${server.port}/echo`, args);
    await sleep(1000);
    const n = server.upgrades();
    /* Delays are uniform in [0, min(20 * 2^k, 100)]: about 20 in a second,
     * never a tight loop. */
    assert.ok(n >= 5, `only ${n} attempts in a second`);
    assert.ok(n <= 200, `${n} attempts in a second: a storm`);
    assert.equal(a.of('reconnect_failed').length, 0);
    const delays = a.of('reconnecting').map((e) => e.delay);
    assert.ok(delays.every((v, k) => v <= Math.min(20 * 2 ** k, 100)), `delays within the backoff bounds: ${delays}`);
    t.diagnostic(`HTTP 503: ${n} attempts in 1000 ms, delays ${delays.slice(0, 8).join(', ')}…`);
    await a.quit();
  });
});

/* ------------------------------------------------------------------ */
/* The client process killed and restarted with its queue file          */
/* ------------------------------------------------------------------ */

describe('client killed and restarted with a persisted queue', { timeout: scaled(120000) }, () => {
  test('node ws (slow echo): nothing lost, nothing acknowledged sent again', async (t) => {
    const server = await startNodeEcho({ echoDelayMs: 2 });
    const proxy = await startProxy({ port: server.port });
    const file = path.join(tempDir(), 'queue.db');
    const args = ['--reconnect', '--reconnect-delay', '50', '--reconnect-delay-max', '200',
      '--queue-file', file, '--ack-echo'];
    const url = `ws://127.0.0.1:${proxy.port}/echo`;
    const a = new Agent(url, args, 'first parley ws-queue');
    await a.until(() => a.of('connected').length === 1, 10000, 'the connection');

    /* 200 go out to a slow server; after 60 acknowledgements the network
     * fails (connections reset, new ones refused), 100 more are queued
     * offline, and the process is killed. */
    const all = [];
    for (let n = 0; n < 200; n++) all.push(a.send(n, n % 4));
    await a.until(() => a.statuses('acked').length >= 60, 10000, '60 acknowledgements');
    proxy.refuse(true);
    proxy.drop();
    await a.until(() => a.of('disconnected').length === 1, 10000, 'the client to notice the reset');
    for (let n = 200; n < 300; n++) all.push(a.send(n, n % 4));
    await a.until(() => a.of('queued').length === 300, 10000, '300 messages queued');
    await a.kill('SIGKILL');
    assert.equal(a.exit.signal, 'SIGKILL');
    const ackedByA = new Set(a.statuses('acked').map((e) => e.id));
    const sentByA = new Set(a.statuses('sent').map((e) => e.id));
    const receivedBeforeKill = server.received.length;

    proxy.refuse(false);
    const b = new Agent(url, args, 'restarted parley ws-queue');
    await b.until(() => b.of('connected').length === 1, 10000, 'the restarted client to connect');
    const left = 300 - ackedByA.size;
    await b.until(() => b.statuses('acked').length >= left, 30000, `the other ${left} acknowledgements`);
    b.cmd('stats');
    await b.until(() => b.of('stats').length === 1, 5000, 'stats');
    assert.equal(b.of('stats')[0].queued, 0, 'the queue is empty');

    /* Nothing lost: every queued id reached the server. */
    const atServer = tally(server.received.map((r) => r.text));
    const lost = all.filter((id) => !atServer.has(id));
    assert.deepEqual(lost, [], 'ids that never reached the server');
    /* Nothing acknowledged before the kill was sent again; every id is
     * acknowledged once in all. */
    const sentByB = b.statuses('sent').map((e) => e.id);
    const resentAcked = sentByB.filter((id) => ackedByA.has(id));
    assert.deepEqual(resentAcked, [], 'ids acknowledged before the kill and sent again');
    assert.equal(new Set(sentByB).size, sentByB.length, 'the restarted client sent an id twice');
    const ackedByB = b.statuses('acked').map((e) => e.id);
    assert.equal(new Set(ackedByB).size, ackedByB.length, 'an id acknowledged twice after the restart');
    assert.deepEqual([...new Set([...ackedByA, ...ackedByB])].sort(), [...all].sort(), 'every id acknowledged');
    /* The offline ones were never on the wire before: exactly once. */
    const offline = all.slice(200);
    assert.deepEqual(offline.filter((id) => atServer.get(id) !== 1), [], 'offline messages not received exactly once');
    /* At-least-once: only messages on the wire but unacknowledged at the
     * failure reached the server twice (a server drops those by id). */
    const dups = [...atServer].filter(([, k]) => k > 1).map(([id]) => id);
    assert.deepEqual(dups.filter((id) => ackedByA.has(id) || !sentByA.has(id)), [],
      'duplicates other than unacknowledged transmissions');
    /* The restarted client replayed the file in priority order. */
    const bConn = server.connections();
    const replay = server.received.filter((r) => r.conn === bConn).map((r) => r.text);
    assert.equal(replay.length, left, 'messages on the restarted client\'s connection');
    assertPriorityOrder(replay, 'replay from the queue file');
    const dupCount = [...atServer.values()].reduce((s, v) => s + v - 1, 0);
    t.diagnostic(`queued 300 (100 of them offline); acknowledged before SIGKILL ${ackedByA.size}, ` +
      `on the wire unacknowledged ${sentByA.size - ackedByA.size} (server had received ${receivedBeforeKill}); ` +
      `restarted client sent ${sentByB.length} in priority order; delivered ${atServer.size}/300 ` +
      `distinct; lost ${lost.length}; acknowledged ids sent again ${resentAcked.length}; received ` +
      `twice by the server ${dupCount} (all unacknowledged transmissions, dropped by id by a real server)`);
    await b.quit();
  });
});
