// Messaging across a cluster: two parleyd nodes sharing one PostgreSQL
// database (`--store postgresql://...`), one media directory, and one
// Redis (`--redis`). Every service must behave as on one node, whichever
// node a device is connected to: DMs and multi-device on both nodes,
// receipts, rooms (a membership change reaches the user's sockets on the
// other node), typing, notifications posted over HTTP to one node for a
// user on the other, idempotent client ids across nodes, concurrent room
// senders on both nodes (gapless seq), media uploaded on one node and
// fetched from the other, PostgreSQL killed and restarted mid-traffic
// (`unavailable`, never a false ack), and a node SIGKILLed mid-flood
// (every acknowledged message stored exactly once after the clients
// resend to the other node).
//
// PostgreSQL (initdb/pg_ctl as the postgres user) and redis-server are
// started by the test on free loopback ports in temporary directories.

import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { cleanup, loadPinned, onCleanup, scaled, sleep, tempDir } from './lib/harness.mjs';
import {
  ChatClient, dm, eventually, httpRequest, makeToken, nextClientId, online, startChatServer,
} from './lib/chat.mjs';
import { ChatCli } from './lib/chatcli.mjs';
import { startProxy } from './lib/proxy.mjs';
import { startRedis } from './lib/redis.mjs';
import { startPg } from './pg.mjs';

const { Server } = await loadPinned('socket.io');
const { createAdapter } = await loadPinned('@socket.io/redis-adapter');
const { createClient } = await loadPinned('redis');

const API_KEY = 'cluster-api-key-0123456789abcdef';

let uniq = 0;
const users = (...names) => names.map((n) => `${n}${++uniq}`);
const got = (c, name) => c.log.filter((e) => e.name === name).map((e) => e.args[0]);

describe('messaging across two nodes on PostgreSQL', () => {
  let pg;
  let redis;
  let media;
  let keyFile;
  const nodes = {};

  const startNode = (id, port = 0) => startChatServer({
    port,
    extra: ['--store', pg.url, '--media-dir', media, '--redis', redis.url, '--node-id', id,
      '--api-key-file', keyFile],
  });

  before(async () => {
    pg = await startPg();
    redis = await startRedis();
    media = path.join(tempDir(), 'shared-media');
    keyFile = path.join(tempDir(), 'keys');
    writeFileSync(keyFile, `${API_KEY}\n`);
    nodes.a = await startNode('a');
    nodes.b = await startNode('b');
    // Both nodes subscribed before anything is published.
    await sleep(scaled(300));
  });

  after(cleanup);

  test('DMs with devices on both nodes: new_message once per other device, receipts back', async () => {
    const [alice, bob] = users('alice', 'bob');
    const a1 = await online(nodes.a, alice);
    const a2 = await online(nodes.b, alice);
    const b1 = await online(nodes.b, bob);
    const m = await a1.text({ to: bob }, 'hello across nodes');
    assert.equal(m.seq, 1);
    const seen = await b1.nextOf('new_message');
    assert.deepEqual(seen, m, 'bob (node b) gets the message as stored');
    assert.deepEqual(await a2.nextOf('new_message'), m, "alice's device on node b gets her own message");
    const r = await b1.ok('receipt', { conversation: dm(alice, bob), status: 'read', seq: 1 });
    assert.equal(r.read, 1);
    for (const c of [a1, a2]) {
      const st = await c.nextOf('status');
      assert.deepEqual(st, { conversation: dm(alice, bob), user: bob, delivered: 1, read: 1 });
    }
    // Once each: nothing more arrives after a round trip on every socket.
    await Promise.all([a1, a2, b1].map((c) => c.ok('room_members', { room: 'nope-' + uniq }).catch(() => {})));
    await sleep(scaled(200));
    assert.equal(got(a1, 'new_message').length, 0, 'the sending socket has the ack, not an event');
    assert.equal(got(a2, 'new_message').length, 1);
    assert.equal(got(b1, 'new_message').length, 1);
    assert.equal(got(a1, 'status').length, 1);
    [a1, a2, b1].forEach((c) => c.close());
  });

  test('rooms: a join on one node reaches the user\'s live socket on the other; typing crosses', async () => {
    const [carol, dave] = users('carol', 'dave');
    const room = `r${uniq}`;
    const c1 = await online(nodes.a, carol);
    await c1.ok('join_room', { room });
    const dA = await online(nodes.a, dave); // already live on node a
    const dB = await online(nodes.b, dave);
    const j = await dB.ok('join_room', { room }); // joined through node b
    assert.deepEqual(j.members.sort(), [carol, dave].sort());
    const mj = await c1.nextOf('member_joined');
    assert.equal(mj.user, dave);
    // No resync on node a: the room change came through the adapter.
    await eventually(async () => {
      const m = await c1.text({ room }, `ping ${Date.now()}`);
      await sleep(scaled(100));
      return got(dA, 'new_message').some((x) => x.id === m.id);
    }, 5000, "dave's socket on node a to receive the room's messages");
    await eventually(() => got(dB, 'new_message').length >= 1, 5000, 'node b socket gets room messages');
    await c1.ok('typing', { conversation: `room:${room}`, state: 'start' });
    const t = await dB.nextOf('typing');
    assert.deepEqual(t, { conversation: `room:${room}`, user: carol, state: 'start' });
    // Leaving through node a stops delivery to node b's socket.
    await dA.ok('leave_room', { room });
    await sleep(scaled(300));
    const before = got(dB, 'new_message').length;
    await c1.text({ room }, 'after dave left');
    await sleep(scaled(300));
    assert.equal(got(dB, 'new_message').length, before, 'no delivery after leaving on the other node');
    [c1, dA, dB].forEach((c) => c.close());
  });

  test('a notification posted over HTTP to node a reaches the device on node b; its ack marks it delivered', async () => {
    const [erin] = users('erin');
    const e1 = await online(nodes.b, erin);
    const res = await httpRequest(nodes.a.port, 'POST', '/api/notifications', {
      headers: { Authorization: `Bearer ${API_KEY}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ to: erin, type: 'system', title: 'across' }),
    });
    assert.equal(res.status, 201, res.body.toString());
    const n = JSON.parse(res.body).notification;
    await eventually(() => got(e1, 'notification').length === 1, 5000, 'the notification on node b');
    assert.deepEqual(got(e1, 'notification')[0], n);
    await eventually(() => got(e1, 'unread').some((u) => u.count === 1), 5000, 'unread 1 on node b');
    const ev = e1.log.find((x) => x.name === 'notification');
    assert.equal(typeof ev.args.at(-1), 'function', 'asked for an acknowledgement');
    ev.args.at(-1)();
    const other = await online(nodes.a, erin);
    await eventually(async () => {
      const s = await other.ok('notifications_sync', {});
      return s.notifications.length === 1 && s.notifications[0].delivered === true;
    }, 5000, 'delivered seen from node a');
    await sleep(scaled(200));
    assert.equal(got(e1, 'notification').length, 1, 'pushed once');
    [e1, other].forEach((c) => c.close());
  });

  // Anything on the Redis can publish; a node checks what another node's
  // notification announcement says before acting on it. A Node socket.io
  // server with the reference adapter sends them here, as any peer could.
  test('malformed notification announcements from the Redis are dropped and counted', async () => {
    const [olga] = users('olga');
    const o = await online(nodes.b, olga);
    const pub = createClient({ url: redis.url });
    const sub = pub.duplicate();
    pub.on('error', () => {});
    sub.on('error', () => {});
    await Promise.all([pub.connect(), sub.connect()]);
    const io = new Server(http.createServer(), { adapter: createAdapter(pub, sub) });
    let closed = false;
    const closeNode = async () => {
      if (closed) return;
      closed = true;
      io.close();
      // QUIT goes after whatever the adapter still has queued.
      await Promise.allSettled([pub.quit(), sub.quit()]);
    };
    onCleanup(closeNode);
    const badCount = async () => {
      const m = /^parley_chat_cluster_bad_total (\d+)$/m.exec((await httpRequest(nodes.b.port, 'GET', '/metrics')).body.toString());
      return m ? Number(m[1]) : 0;
    };
    const before = await badCount();
    await sleep(scaled(300)); // the adapter subscribed
    const nsp = io.of('/chat');
    const bad = [
      ['not an array'],
      [olga],                                  // no notification
      [olga, 'not an object'],
      ['bad user!', { id: 1 }],
      [olga, { title: 'no id' }],
      [olga, { id: -5 }],
      [olga, { id: 1 }, 'extra'],
    ];
    for (const args of bad) nsp.serverSideEmit('parley:npush', ...args);
    await eventually(async () => (await badCount()) - before === bad.length, 5000, 'every malformed announcement counted');
    await sleep(scaled(200));
    assert.equal(got(o, 'notification').length, 0, 'nothing malformed reached the user');
    assert.ok(nodes.a.alive() && nodes.b.alive());
    o.close();
    await closeNode(); // before Redis goes (the next tests kill things)
  });

  test('client_id is idempotent across nodes: a resend to the other node is a duplicate', async () => {
    const [fay, gus] = users('fay', 'gus');
    const fA = await online(nodes.a, fay);
    const fB = await online(nodes.b, fay);
    const clientId = nextClientId();
    const first = await fA.ok('send_message', { client_id: clientId, to: gus, type: 'text', content: { text: 'once' } });
    const again = await fB.ok('send_message', { client_id: clientId, to: gus, type: 'text', content: { text: 'once' } });
    assert.equal(again.duplicate, true);
    assert.deepEqual(again.message, first.message);
    // Both at the same time on both nodes: one stored, one duplicate.
    const id2 = nextClientId();
    const both = await Promise.all([fA, fB].map((c) =>
      c.ok('send_message', { client_id: id2, to: gus, type: 'text', content: { text: 'race' } })));
    assert.equal(both.filter((r) => r.duplicate).length, 1, JSON.stringify(both));
    assert.deepEqual(both[0].message, both[1].message);
    const g = await online(nodes.b, gus);
    assert.deepEqual(g.synced.messages.map((m) => m.seq), [1, 2], 'two messages, no seq consumed by the duplicates');
    [fA, fB, g].forEach((c) => c.close());
  });

  test('concurrent room senders on both nodes: seq unique and gapless', async () => {
    const room = `busy${++uniq}`;
    const senders = users('s', 's', 's', 's');
    const clients = await Promise.all(senders.map((u, i) => online(i % 2 ? nodes.b : nodes.a, u)));
    for (const c of clients) await c.ok('join_room', { room });
    const PER = 60;
    const acks = [];
    await Promise.all(clients.map(async (c) => {
      for (let i = 0; i < PER; i += 10) {
        const batch = await Promise.all(Array.from({ length: 10 }, (_, k) => c.text({ room }, `${c.user} ${i + k}`)));
        acks.push(...batch);
      }
    }));
    const seqs = acks.map((m) => m.seq).sort((x, y) => x - y);
    assert.deepEqual(seqs, Array.from({ length: senders.length * PER }, (_, i) => i + 1), 'gapless, unique');
    const reader = await online(nodes.a, senders[0]);
    const mine = reader.synced.messages.filter((m) => m.conversation === `room:${room}`);
    assert.equal(mine.length, senders.length * PER);
    for (const m of mine) assert.deepEqual(m, acks.find((x) => x.id === m.id), 'stored as acknowledged');
    [...clients, reader].forEach((c) => c.close());
  });

  test('the storage quota and a room\'s membership, checked by the insert on PostgreSQL: quota_exceeded, duplicate, not_member', async () => {
    // A node with limits on and a small quota, on the same database.
    const q = await startChatServer({
      limits: 'on',
      extra: ['--store', pg.url, '--media-dir', media, '--redis', redis.url, '--node-id', 'q',
        '--storage-per-user', '1000'],
    });
    const [kim, lea] = users('kim', 'lea');
    const k = await online(q, kim);
    const text = 'y'.repeat(50); // 128 + 61 bytes stored each: 5 fit in 1000
    const ids = [];
    let refused;
    for (let i = 0; i < 8 && !refused; i++) {
      const clientId = nextClientId();
      const res = await k.req('send_message', { client_id: clientId, to: lea, type: 'text', content: { text } });
      if (res?.ok) ids.push(clientId);
      else refused = res?.error;
    }
    assert.equal(ids.length, 5, JSON.stringify(refused));
    assert.equal(refused?.code, 'quota_exceeded');
    const again = await k.ok('send_message', { client_id: ids[0], to: lea, type: 'text', content: { text } });
    assert.equal(again.duplicate, true);
    assert.equal(again.message.seq, 1);
    const room = `closed${++uniq}`;
    const l = await online(nodes.a, lea);
    await l.ok('join_room', { room });
    await k.fails('send_message', { client_id: nextClientId(), room, type: 'text', content: { text: 'x' } }, 'not_member', 'room');
    await l.ok('send_message', { client_id: nextClientId(), room, type: 'text', content: { text: 'member' } });
    [k, l].forEach((c) => c.close());
  });

  test('media uploaded on node a is served by node b to a participant', async () => {
    const [hal, ivy] = users('hal', 'ivy');
    const bytes = Buffer.from(`picture ${Date.now()} `.repeat(100));
    const up = await httpRequest(nodes.a.port, 'POST', '/media', {
      headers: { Authorization: `Bearer ${makeToken(hal)}`, 'Content-Type': 'image/png' }, body: bytes,
    });
    assert.equal(up.status, 201, up.body.toString());
    const { id } = JSON.parse(up.body);
    const h = await online(nodes.a, hal);
    await h.ok('send_message', { client_id: nextClientId(), to: ivy, type: 'image', content: { media: id } });
    const got2 = await httpRequest(nodes.b.port, 'GET', `/media/${id}`, { headers: { Authorization: `Bearer ${makeToken(ivy)}` } });
    assert.equal(got2.status, 200);
    assert.ok(got2.body.equals(bytes), 'the same bytes from the other node');
    assert.equal(got2.headers['content-type'], 'image/png');
    const stranger = await httpRequest(nodes.b.port, 'GET', `/media/${id}`, { headers: { Authorization: `Bearer ${makeToken('nobody' + uniq)}` } });
    assert.equal(stranger.status, 404);
    h.close();
  });

  test('PostgreSQL killed mid-traffic: `unavailable` while down, never a false ack; back by itself', async (t) => {
    const [jo, kim] = users('jo', 'kim');
    const jA = await online(nodes.a, jo);
    const sent = [];
    let stop = false;
    const answers = { ok: 0, unavailable: 0, other: [] };
    const loop = (async () => {
      while (!stop) {
        const rec = { clientId: nextClientId(), text: `m${sent.length}` };
        sent.push(rec);
        const res = await jA.req('send_message', { client_id: rec.clientId, to: kim, type: 'text', content: { text: rec.text } }, 15000)
          .catch((e) => ({ timeout: e.message }));
        if (res.ok) {
          rec.ack = res.message;
          answers.ok++;
        } else if (res.error?.code === 'unavailable') {
          assert.ok(res.error.retry_after_ms > 0, 'unavailable says when to retry');
          answers.unavailable++;
          await sleep(20);
        } else {
          answers.other.push(res);
        }
      }
    })();
    await sleep(scaled(500));
    await pg.kill();
    await sleep(scaled(1500));
    const metrics = await httpRequest(nodes.a.port, 'GET', '/metrics');
    assert.match(metrics.body.toString(), /^parley_store_up 0$/m, 'the node reports the store down');
    const ready = await httpRequest(nodes.b.port, 'GET', '/readyz');
    assert.equal(ready.status, 503, 'the idle node is not ready either (its idle connection broke)');
    const okWhileDown = answers.ok;
    await pg.restart();
    await eventually(() => answers.ok > okWhileDown + 3, 20000, 'sends to succeed again after the restart');
    stop = true;
    await loop;
    t.diagnostic(`${sent.length} sends: ${answers.ok} ok, ${answers.unavailable} unavailable, ${answers.other.length} other`);
    assert.ok(answers.unavailable > 0, 'some sends were refused as unavailable');
    assert.ok(nodes.a.alive() && nodes.b.alive(), 'no node crashed');
    // Every unacknowledged send is resent; every acknowledged one is stored once.
    for (const rec of sent.filter((r) => !r.ack)) {
      const res = await jA.ok('send_message', { client_id: rec.clientId, to: kim, type: 'text', content: { text: rec.text } }, 10000);
      rec.ack = res.message;
    }
    // Node b had no traffic: it noticed the kill on its own (its idle
    // connection broke) and reconnects by itself, with backoff.
    await eventually(async () => /^parley_store_up 1$/m.test((await httpRequest(nodes.b.port, 'GET', '/metrics')).body.toString()),
      15000, 'node b to reconnect to PostgreSQL by itself');
    const k = await online(nodes.b, kim);
    assert.equal(k.synced.messages.length, sent.length, 'each once');
    assert.deepEqual(k.synced.messages.map((m) => m.seq), sent.map((_, i) => i + 1), 'gapless');
    for (const m of k.synced.messages) assert.deepEqual(m, sent.find((r) => r.clientId === m.client_id).ack);
    [jA, k].forEach((c) => c.close());
  });

  // `--workers N` on the shared store: every worker is a node (its own
  // PostgreSQL connection, its own Redis adapter, its own presence
  // contribution), all on one port.
  test('--workers 2 with the shared store: messages and presence across the workers of one port', async () => {
    const w = await startChatServer({
      extra: ['--workers', '2', '--store', pg.url, '--media-dir', media, '--redis', redis.url, '--node-id', 'w'],
    });
    await sleep(scaled(500));
    const names = users(...Array.from({ length: 16 }, () => 'wk'));
    const cs = [];
    for (const u of names) cs.push(await online(w, u));
    const tag = (c) => c.socket.io.engine.id.slice(0, 4);
    assert.ok(new Set(cs.map(tag)).size === 2, `the kernel spread the sockets over both workers: ${cs.map(tag)}`);
    for (let i = 0; i < names.length; i += 2) {
      const m = await cs[i].text({ to: names[i + 1] }, `hi ${i}`);
      assert.deepEqual(await cs[i + 1].nextOf('new_message'), m, `pair ${i} (${tag(cs[i])} -> ${tag(cs[i + 1])})`);
    }
    // One user with a device on each worker, watched from a third socket.
    const [pat] = users('pat');
    const first = await online(w, pat);
    let second;
    for (let i = 0; i < 20 && !second; i++) {
      const c = await online(w, pat);
      if (tag(c) !== tag(first)) second = c;
      else c.close();
    }
    assert.ok(second, 'a second device on the other worker');
    const watcher = cs[0];
    await eventually(async () => {
      const r = await watcher.ok('presence_subscribe', { users: [pat] });
      return r.presences[0].status === 'online' && r.presences[0].devices === 2;
    }, 5000, 'two devices counted across the workers');
    first.close();
    await eventually(async () => (await watcher.ok('presence_subscribe', { users: [pat] })).presences[0].devices === 1,
      5000, 'one device left');
    assert.equal((await watcher.ok('presence_subscribe', { users: [pat] })).presences[0].status, 'online');
    second.close();
    await eventually(() => watcher.log.some((e) => e.name === 'presence' && e.args[0].user === pat && e.args[0].status === 'offline'),
      5000, 'offline once the last device, on the other worker, is gone');
    cs.forEach((c) => c.close());
    await w.stop();
  });

  // Issue 14 item 5: libparley's chat client (`parley chat`) fails over
  // unchanged: its node is SIGKILLed while it sends, it reconnects (here
  // through a proxy now pointing at another node), syncs, and replays its
  // queue: the recipient gets every message once, in order.
  test('libparley fails over to another node without loss or doubles', async () => {
    const [alice, bob] = users('alice', 'bob');
    const conv = dm(alice, bob);
    const c = await startNode('c');
    await sleep(scaled(300));
    const proxy = await startProxy({ port: c.port });
    const a = new ChatCli({ port: proxy.port }, alice);
    const b = new ChatCli(nodes.b, bob);
    await Promise.all([a.online(), b.online()]);
    const ids = [];
    for (let i = 0; i < 20; i++) ids.push(await a.send(`@${bob}`, `before ${i}`));
    c.child.kill('SIGKILL');
    await c.child.exitPromise;
    proxy.setTarget(nodes.b.port);
    for (let i = 0; i < 20; i++) ids.push(await a.send(`@${bob}`, `after ${i}`));
    await a.until(() => ids.every((id) => a.statuses(id).includes('sent')), 20000, 'every message sent');
    const want = [...Array(20).keys()].map((i) => `before ${i}`).concat([...Array(20).keys()].map((i) => `after ${i}`));
    await b.until(() => b.all('message', (m) => m.conversation === conv).length >= 40, 20000, '40 messages');
    await sleep(scaled(300));
    const got3 = b.all('message', (m) => m.conversation === conv);
    assert.deepEqual(got3.map((m) => m.seq), want.map((_, i) => i + 1), 'once each, gapless');
    assert.deepEqual(got3.map((m) => m.text), want, 'in the order they were sent');
    for (const id of ids) assert.equal(a.statuses(id).filter((x) => x === 'sent').length, 1, `${id} sent once`);
    await Promise.all([a.quit(), b.quit()]);
  });

  test('a node SIGKILLed mid-flood: clients resend to the other node; every ack stored exactly once', async (t) => {
    const room = `flood${++uniq}`;
    const senders = users('f', 'f', 'f');
    const [lee] = users('lee');
    const onA = await Promise.all(senders.map((u) => online(nodes.a, u)));
    for (const c of onA) await c.ok('join_room', { room });
    // Presence: a subscriber on node b sees the senders (devices on node a
    // only) online, and offline once node a is dead.
    const watcher = await online(nodes.b, lee);
    await eventually(async () => {
      const r = await watcher.ok('presence_subscribe', { users: senders });
      return r.presences.every((p) => p.status === 'online');
    }, 5000, 'node b to count the devices on node a');
    const sent = [];
    let stopping = false;
    const floods = onA.map(async (c) => {
      let n = 0;
      const inflight = new Set();
      const one = () => {
        if (stopping) return;
        const target = n % 2 ? { room } : { to: lee };
        const rec = { clientId: nextClientId(), target, text: `${c.user} ${n++}`, user: c.user };
        sent.push(rec);
        const p = c.req('send_message', { client_id: rec.clientId, ...target, type: 'text', content: { text: rec.text } }, 3000)
          .then((res) => { if (res?.ok) rec.ack = res.message; }).catch(() => {});
        inflight.add(p);
        p.finally(() => { inflight.delete(p); one(); });
      };
      for (let i = 0; i < 16; i++) one();
      while (!stopping) await sleep(20);
      await Promise.all([...inflight]);
    });
    await sleep(scaled(800));
    nodes.a.child.kill('SIGKILL');
    const killedAt = Date.now();
    await nodes.a.child.exitPromise;
    stopping = true;
    await Promise.all(floods);
    onA.forEach((c) => c.close());
    const acked = sent.filter((r) => r.ack).length;
    assert.ok(acked > 0, 'traffic flowed before the kill');
    // The dead node's devices leave presence by themselves, within the
    // documented bound (--presence-node-timeout 3000 + one heartbeat + one
    // coalescing window), before any sender comes back on node b.
    const offline = () => new Set(watcher.log.filter((e) => e.name === 'presence' && e.at >= killedAt &&
      e.args[0].status === 'offline').map((e) => e.args[0].user));
    await eventually(() => offline().size === senders.length, 8000, 'every sender offline for the subscriber on node b');
    t.diagnostic(`the dead node's devices left presence ${Date.now() - killedAt} ms after the SIGKILL`);
    assert.ok(Date.now() - killedAt < scaled(6000), 'within the bound');
    // Failover: the same users resend everything to node b.
    let dup = 0;
    for (const u of senders) {
      const c = await online(nodes.b, u, { sync: false });
      for (const rec of sent.filter((r) => r.user === u)) {
        const res = await c.ok('send_message', { client_id: rec.clientId, ...rec.target, type: 'text', content: { text: rec.text } }, 10000);
        if (rec.ack) {
          assert.equal(res.duplicate, true, `acknowledged ${rec.clientId} must be found`);
          assert.deepEqual(res.message, rec.ack);
          dup++;
        }
        rec.final = res.message;
      }
      c.close();
    }
    assert.equal(dup, acked);
    watcher.close();
    const reader = await online(nodes.b, lee);
    const dms = reader.synced.messages;
    assert.equal(dms.length, sent.filter((r) => r.target.to).length, 'each DM once');
    const byConv = new Map();
    for (const m of dms) byConv.set(m.conversation, [...(byConv.get(m.conversation) ?? []), m.seq]);
    for (const [conv, seqs] of byConv) assert.deepEqual(seqs, seqs.map((_, i) => i + 1), `${conv} gapless`);
    const member = await online(nodes.b, senders[0]);
    const roomMsgs = member.synced.messages.filter((m) => m.conversation === `room:${room}`);
    assert.equal(roomMsgs.length, sent.filter((r) => r.target.room).length, 'each room message once');
    assert.deepEqual(roomMsgs.map((m) => m.seq), roomMsgs.map((_, i) => i + 1), 'room gapless');
    t.diagnostic(`${sent.length} sent, ${acked} acknowledged by node a before SIGKILL, all found on node b`);
    [reader, member].forEach((c) => c.close());
    void ChatClient;
  });
});
