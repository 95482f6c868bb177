// Presence across the nodes of a Redis cluster (docs/CLUSTER.md,
// "Presence across nodes"): `parleyd --redis` nodes, each with its own
// data directory, one redis-server. A user's devices on several nodes
// count as one presence on every node (the documented aggregation rule);
// each change reaches each subscriber once; the status text set on one
// node is seen on the others; a node started later learns the devices
// already there; the devices of a SIGKILLed node go offline within the
// documented bound (one event per subscriber); garbage on the presence
// channel is ignored and counted.
//
// redis-server is started by the test (a free port, no persistence) and
// always killed; a missing redis-server fails the test with instructions.

import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, describe, test } from 'node:test';
import { cleanup, loadPinned, onCleanup, scaled, sleep, withTimeout } from './lib/harness.mjs';
import { ChatClient, eventually, startChatServer } from './lib/chat.mjs';
import { startRedis } from './lib/redis.mjs';

const { createClient } = await loadPinned('redis');

const CHANNEL = 'parley#presence#/chat#';
/* Defaults of the service: heartbeat 1000 ms, a node is dead after 3000 ms
 * without one; the event can wait for the coalescing window (WINDOW). */
const HEARTBEAT = 1000;
const NODE_TIMEOUT = 3000;
const WINDOW = 200;
const BOUND = NODE_TIMEOUT + HEARTBEAT + WINDOW; // documented: timeout + heartbeat + window

let redis;
let admin;
let url;
let A, B, C;

function getText(port, path) {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode, body }));
    }).on('error', reject);
  });
}

async function metric(port, name) {
  const { status, body } = await getText(port, '/metrics');
  assert.equal(status, 200, '/metrics answers loopback clients');
  const line = body.split('\n').find((l) => l.startsWith(`${name} `));
  assert.ok(line, `/metrics has ${name}`);
  return Number(line.split(' ').pop());
}

const startNode = () => startChatServer({
  extra: ['--redis', url, '--presence-interval', String(WINDOW), '--away-after', '0'],
});

/** Waits until `port` hears the heartbeats of `n` other nodes. */
async function nodesHeard(srv, n, what) {
  await eventually(async () => (await metric(srv.port, 'parley_presence_cluster_nodes')) === n, 10000, what);
}

let uniq = 0;
const users = (...names) => names.map((n) => `${n}${++uniq}`);

async function device(server, user, label) {
  const c = new ChatClient(server, { user, label });
  await c.connected();
  return c;
}

/** The presence events about `user` that `c` received so far. */
const seen = (c, user) => c.log.filter((e) => e.name === 'presence' && e.args[0].user === user).map((e) => e.args[0]);
const matches = (p, want) => Object.entries(want).every(([k, v]) => p[k] === v);

async function awaitPresence(c, user, want, ms = 5000) {
  return eventually(() => seen(c, user).find((p) => matches(p, want)), ms,
    `${c.label}: presence of ${user} with ${JSON.stringify(want)} (got ${JSON.stringify(seen(c, user))})`);
}

/** What `c`'s node answers for `user` now. */
async function ask(c, user) {
  const r = await c.ok('presence_subscribe', { users: [user] });
  return r.presences[0];
}

/** Polls presence_subscribe on `c` until the answer matches `want`. */
async function answerIs(c, user, want, ms = 5000) {
  let last;
  await eventually(async () => matches(last = await ask(c, user), want), ms,
    `${c.label}: presence_subscribe of ${user} answering ${JSON.stringify(want)} (last ${JSON.stringify(last)})`);
  return last;
}

before(async () => {
  redis = await startRedis();
  url = redis.url;
  admin = createClient({ url });
  admin.on('error', () => {});
  await admin.connect();
  onCleanup(async () => {
    try {
      await withTimeout(admin.quit(), 1000, 'QUIT');
    } catch {
      await admin.disconnect().catch(() => {});
    }
  });
  [A, B] = await Promise.all([startNode(), startNode()]);
  await Promise.all([nodesHeard(A, 1, 'A to hear B'), nodesHeard(B, 1, 'B to hear A')]);
});

after(cleanup);

test('devices on two nodes are one presence; each change reaches each subscriber once', async () => {
  const [ann, obs] = users('ann', 'obs');
  const oA = await device(A, obs, 'obs@A');
  const oB = await device(B, obs, 'obs@B');
  await ask(oA, ann);
  await ask(oB, ann);
  const a1 = await device(A, ann, 'ann@A');
  await answerIs(oB, ann, { status: 'online', devices: 1 });
  const b1 = await device(B, ann, 'ann@B');
  for (const o of [oA, oB]) {
    await awaitPresence(o, ann, { status: 'online', devices: 2 });
    await answerIs(o, ann, { status: 'online', devices: 2 });
  }
  // The phone on A goes: still online everywhere, one device.
  await sleep(scaled(WINDOW * 2));
  const n0 = [seen(oA, ann).length, seen(oB, ann).length];
  a1.close();
  for (const o of [oA, oB]) await awaitPresence(o, ann, { status: 'online', devices: 1 });
  await sleep(scaled(WINDOW * 3));
  assert.deepEqual([seen(oA, ann).length - n0[0], seen(oB, ann).length - n0[1]], [1, 1], 'one event each');
  for (const o of [oA, oB]) {
    assert.ok(!seen(o, ann).some((p) => p.status === 'offline'), `${o.label}: never offline`);
    assert.equal((await ask(o, ann)).devices, 1);
  }
  // The laptop on B goes too: offline, one event each, with last_seen.
  const t0 = Date.now();
  b1.close();
  const offs = [];
  for (const o of [oA, oB]) offs.push(await awaitPresence(o, ann, { status: 'offline' }));
  await sleep(scaled(WINDOW * 3));
  for (const o of [oA, oB]) {
    assert.equal(seen(o, ann).filter((p) => p.status === 'offline').length, 1, `${o.label}: one offline event`);
    assert.equal(seen(o, ann).length - n0[o === oA ? 0 : 1], 2, `${o.label}: two events in all`);
  }
  assert.deepEqual(offs[0], offs[1], 'the same event on both nodes');
  assert.equal(offs[0].devices, 0);
  assert.ok(offs[0].last_seen >= t0 - 5 && offs[0].last_seen <= Date.now(), `last_seen ${offs[0].last_seen}`);
  assert.equal((await ask(oB, ann)).status, 'offline');
  assert.equal((await ask(oA, ann)).status, 'offline');
  oA.close();
  oB.close();
});

test('the status is the most available over the devices of every node', async () => {
  const [bob, obs] = users('bob', 'obs');
  const oA = await device(A, obs, 'obs@A');
  const oB = await device(B, obs, 'obs@B');
  const a1 = await device(A, bob, 'bob@A');
  const b1 = await device(B, bob, 'bob@B');
  for (const o of [oA, oB]) await answerIs(o, bob, { devices: 2 });
  // busy on A, online on B -> online (online > away > busy)
  let r = await a1.ok('presence_set', { status: 'busy' });
  assert.equal(r.presence.status, 'online', 'the acknowledgement counts the other node');
  for (const o of [oA, oB]) await answerIs(o, bob, { status: 'online', devices: 2 });
  // busy on A, away on B -> away
  r = await b1.ok('presence_set', { status: 'away' });
  assert.equal(r.presence.status, 'away');
  for (const o of [oA, oB]) {
    await answerIs(o, bob, { status: 'away', devices: 2 });
    await awaitPresence(o, bob, { status: 'away', devices: 2 });
  }
  // busy on A, busy on B -> busy
  await b1.ok('presence_set', { status: 'busy' });
  for (const o of [oA, oB]) await awaitPresence(o, bob, { status: 'busy', devices: 2 });
  // B's device goes: busy, one device
  b1.close();
  for (const o of [oA, oB]) await awaitPresence(o, bob, { status: 'busy', devices: 1 });
  a1.close();
  oA.close();
  oB.close();
});

test('coalescing still works for subscribers on the other node', async () => {
  const [gus, obs] = users('gus', 'obs');
  const oB = await device(B, obs, 'obs@B');
  await ask(oB, gus);
  const a1 = await device(A, gus, 'gus@A');
  await awaitPresence(oB, gus, { status: 'online', devices: 1 });
  await sleep(scaled(WINDOW * 3));
  const n0 = seen(oB, gus).length;
  const t0 = Date.now();
  for (const st of ['busy', 'away', 'busy', 'online', 'away', 'busy', 'away']) await a1.ok('presence_set', { status: st });
  const took = Date.now() - t0; // one window on a quick machine; more on a loaded one
  await awaitPresence(oB, gus, { status: 'away' });
  await sleep(scaled(WINDOW * 4));
  const burst = seen(oB, gus).slice(n0);
  const most = 2 + Math.floor(took / WINDOW);
  assert.ok(burst.length >= 1 && burst.length <= most, `at most ${most} updates for a burst of 7 in ${took} ms: ${JSON.stringify(burst)}`);
  assert.equal(burst.at(-1).status, 'away', 'ending in the final state');
  a1.close();
  oB.close();
});

test('a status text set on one node is seen on the other', async () => {
  const [cat, obs] = users('cat', 'obs');
  const oB = await device(B, obs, 'obs@B');
  await ask(oB, cat);
  const a1 = await device(A, cat, 'cat@A');
  const b1 = await device(B, cat, 'cat@B');
  await answerIs(oB, cat, { devices: 2 });
  await a1.ok('presence_set', { status: 'online', text: 'set on A ✈' });
  await awaitPresence(oB, cat, { text: 'set on A ✈' });
  // B's own answer (not only the event relayed from A) has it.
  await answerIs(oB, cat, { text: 'set on A ✈', devices: 2 });
  // B's device hears of it, and its own presence_set keeps the text.
  await awaitPresence(b1, cat, { text: 'set on A ✈' });
  const r = await b1.ok('presence_set', { status: 'busy' });
  assert.equal(r.presence.text, 'set on A ✈');
  // The newest text wins, whichever node set it.
  await b1.ok('presence_set', { status: 'online', text: 'now on B' });
  const oA = await device(A, obs, 'obs@A');
  await answerIs(oA, cat, { text: 'now on B' });
  a1.close();
  b1.close();
  oA.close();
  oB.close();
});

test('a node started later learns the devices already connected', async () => {
  const [dan, eve, obs] = users('dan', 'eve', 'obs');
  const d1 = await device(A, dan, 'dan@A');
  const d2 = await device(B, dan, 'dan@B');
  const e1 = await device(A, eve, 'eve@A');
  await e1.ok('presence_set', { status: 'busy' });
  C = await startNode();
  await nodesHeard(C, 2, 'C to hear A and B');
  await Promise.all([nodesHeard(A, 2, 'A to hear C'), nodesHeard(B, 2, 'B to hear C')]);
  const oC = await device(C, obs, 'obs@C');
  await answerIs(oC, dan, { status: 'online', devices: 2 });
  await answerIs(oC, eve, { status: 'busy', devices: 1 });
  // And the others count C's devices.
  const c1 = await device(C, dan, 'dan@C');
  const oA = await device(A, obs, 'obs@A');
  await answerIs(oA, dan, { devices: 3 });
  c1.close();
  await answerIs(oA, dan, { devices: 2 });
  d1.close();
  d2.close();
  oA.close();
  oC.close();
  // e1 stays for the next test: eve's only device is on A.
  eveOnA = { user: eve, dev: e1 };
});

let eveOnA;

test('the devices of a SIGKILLed node go offline within the bound, one event per subscriber', async () => {
  assert.ok(eveOnA && C, 'needs the previous test');
  const { user: eve } = eveOnA;
  const [obs] = users('obs');
  const oB = await device(B, obs, 'obs@B');
  const oC = await device(C, obs, 'obs@C');
  for (const o of [oB, oC]) assert.equal((await ask(o, eve)).status, 'busy');
  // Updates still in a coalescing window when we subscribed come first.
  await sleep(scaled(WINDOW * 3));
  const n0 = [seen(oB, eve).length, seen(oC, eve).length];
  const t0 = Date.now();
  await A.stop('SIGKILL');
  const offs = [];
  for (const o of [oB, oC]) offs.push(await awaitPresence(o, eve, { status: 'offline' }, BOUND + 5000));
  const took = Date.now() - t0;
  assert.ok(took <= scaled(BOUND + 1000), `offline after ${took} ms (bound ${BOUND} ms)`);
  await sleep(scaled(HEARTBEAT + WINDOW * 2));
  for (const [i, o] of [oB, oC].entries()) {
    const after = seen(o, eve).slice(n0[i]);
    assert.equal(after.length, 1, `${o.label}: exactly one event: ${JSON.stringify(after)}`);
    assert.equal((await ask(o, eve)).status, 'offline');
  }
  assert.equal(offs[0].devices, 0);
  assert.ok(offs[0].last_seen >= t0 - 5, 'last seen when the node died');
  assert.equal(await metric(B.port, 'parley_presence_cluster_dead_nodes_total'), 1);
  assert.equal(await metric(B.port, 'parley_presence_cluster_nodes'), 1, 'B hears C only');
  oB.close();
  oC.close();
});

test('garbage on the presence channel is ignored and counted', async () => {
  const before = await metric(B.port, 'parley_presence_cluster_garbage_total');
  const garbage = [
    'not json',
    '{"uid":"x"}',
    '[2,"abc"]',
    '[1,"bad uid!"]',
    '[1,"zzgarb1",["x"]]',
    '[1,"zzgarb1",["c","../etc",1,3,0,"",0,0,-1]]',
    '[1,"zzgarb1",["c","mallory",-1,3,0,"",0,0,-1]]',
    '[1,"zzgarb1",["c","mallory",1,9,0,"",0,0,-1]]',
    '[1,"zzgarb1",["c","mallory",1,3,0,"",2,0,-1]]',
    '[1,"zzgarb1",["c","mallory",1,3,0,"",0,0]]',
    '[1,"zzgarb1",["c","mallory",1,3,0,"a\\u0000b",0,0,-1]]',
    `[1,"zzgarb1",["c","mallory",1,3,0,"${'x'.repeat(300)}",0,0,-1]]`,
    // one bad record spoils the whole message: mallory never counts
    '[1,"zzgarb1",["c","mallory",1,3,0,"",0,0,-1],["c","mallory",1,3,0,"",0,0,"x"]]',
    '[1,"zzgarb1",["s","mallory",3,1]]',
    '[1,"zzgarb1",["w"]]',
    '[1,"zzgarb1",[[[[["c"]]]]]]',
    `[1,"zzgarb1",["c","mallory",1,3,0,"",0,0,-1]${',["w","x"]'.repeat(120000)}]`, // over 1 MiB
  ];
  for (const g of garbage) await admin.publish(CHANNEL, g);
  await eventually(async () => (await metric(B.port, 'parley_presence_cluster_garbage_total')) >= before + garbage.length,
    5000, 'the garbage counted on B');
  await sleep(scaled(300));
  assert.equal(await metric(B.port, 'parley_presence_cluster_garbage_total'), before + garbage.length);
  assert.equal(await metric(B.port, 'parley_presence_cluster_nodes'), 1, 'no node made up from garbage');
  // Nothing of it counts as a device; both nodes still work together.
  const [obs, fay] = users('obs', 'fay');
  const oB = await device(B, obs, 'obs@B');
  assert.equal((await ask(oB, 'mallory')).status, 'offline');
  const f1 = await device(C, fay, 'fay@C');
  await answerIs(oB, fay, { status: 'online', devices: 1 });
  f1.close();
  await awaitPresence(oB, fay, { status: 'offline' });
  assert.ok(B.alive() && C.alive());
  oB.close();
});

test('a node shut down (SIGTERM) takes its devices with it within the bound', async () => {
  const [obs, gil] = users('obs', 'gil');
  const oB = await device(B, obs, 'obs@B');
  const g1 = await device(C, gil, 'gil@C');
  await answerIs(oB, gil, { status: 'online', devices: 1 });
  await sleep(scaled(WINDOW * 3));
  const n0 = seen(oB, gil).length;
  const t0 = Date.now();
  const { code } = await C.stop('SIGTERM');
  assert.equal(code, 0, 'a clean exit');
  await awaitPresence(oB, gil, { status: 'offline' }, BOUND + 5000);
  const took = Date.now() - t0;
  g1.close();
  // C publishes a farewell (["b"]) when it leaves the cluster; parleyd
  // closes the Redis connections at once right after, which may drop it:
  // then the timeout applies.
  assert.ok(took <= scaled(BOUND + 1000), `offline after ${took} ms (bound ${BOUND} ms)`);
  await sleep(scaled(WINDOW * 3));
  assert.equal(seen(oB, gil).length - n0, 1, 'one event');
  assert.equal(await metric(B.port, 'parley_presence_cluster_nodes'), 0);
  oB.close();
});

describe('two fresh nodes', () => {
  let D, E;
  before(async () => {
    if (B.alive()) await B.stop();
    [D, E] = await Promise.all([startNode(), startNode()]);
    await Promise.all([nodesHeard(D, 1, 'D to hear E'), nodesHeard(E, 1, 'E to hear D')]);
  });

  test('appearing offline on one node hides the devices on every node', async () => {
    const [hal, obs] = users('hal', 'obs');
    const oE = await device(E, obs, 'obs@E');
    const d1 = await device(D, hal, 'hal@D');
    const e1 = await device(E, hal, 'hal@E');
    await answerIs(oE, hal, { status: 'online', devices: 2 });
    await sleep(scaled(WINDOW * 3));
    const n0 = seen(oE, hal).length;
    await d1.ok('presence_set', { invisible: true });
    const off = await awaitPresence(oE, hal, { status: 'offline' });
    assert.equal(off.devices, 0);
    assert.equal(off.invisible, undefined, 'others are not told why');
    await answerIs(oE, hal, { status: 'offline', devices: 0 });
    // The user's own device on the other node sees the truth.
    const mine = await awaitPresence(e1, hal, { invisible: true });
    assert.equal(mine.devices, 2);
    await sleep(scaled(WINDOW * 3));
    assert.equal(seen(oE, hal).length - n0, 1, 'one event for the observer');
    // Visible again: online with both devices.
    await e1.ok('presence_set', { invisible: false });
    await awaitPresence(oE, hal, { status: 'online', devices: 2 });
    d1.close();
    e1.close();
    oE.close();
  });

  test('after Redis is lost and back, the nodes learn each other\'s devices again', async () => {
    const [ivy, obs] = users('ivy', 'obs');
    const oE = await device(E, obs, 'obs@E');
    const i1 = await device(D, ivy, 'ivy@D');
    await answerIs(oE, ivy, { status: 'online', devices: 1 });
    // Redis goes: E hears nothing from D, declares it dead and tells its
    // own sockets (it cannot know better).
    await redis.kill();
    await awaitPresence(oE, ivy, { status: 'offline' }, BOUND + 5000);
    // Redis is back: the nodes reconnect, meet again and exchange tables.
    await redis.start();
    await awaitPresence(oE, ivy, { status: 'online', devices: 1 }, 20000);
    await answerIs(oE, ivy, { status: 'online', devices: 1 });
    i1.close();
    await awaitPresence(oE, ivy, { status: 'offline', devices: 0 });
    oE.close();
  });
});
