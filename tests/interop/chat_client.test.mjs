// The messaging client half (libparley's parley_chat, driven as `parley
// chat` processes) end to end through a real parleyd, together with the
// npm socket.io-client speaking the documented protocol: every status of
// direct and room messages, offline recipients and senders, resends
// de-duplicated across server kills and client kills (persisted queue),
// typing, history, media, bad input and token refusal.

import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { cleanup, sleep, tempDir } from './lib/harness.mjs';
import { dm, makeToken, online, startChatServer } from './lib/chat.mjs';
import { ChatCli } from './lib/chatcli.mjs';

let uniq = 0;
const users = (...names) => names.map((n) => `${n}${++uniq}`);

/** Asserts that ids were reported exactly once each with `status`. */
function assertEachOnce(cli, ids, status) {
  for (const id of ids) {
    const n = cli.statuses(id).filter((s) => s === status).length;
    assert.equal(n, 1, `${cli.label}: ${id} reported ${status} ${n} times: ${cli.statuses(id)}`);
  }
}

/** Messages a cli received in a conversation, as [seq, text]. */
const received = (cli, conv) => cli.all('message', (m) => m.conversation === conv).map((m) => [m.seq, m.text]);

describe('libparley chat client', () => {
  let srv;
  before(async () => {
    srv = await startChatServer({ extra: ['--typing-timeout', '800'] });
  });
  after(cleanup);

  for (const transport of ['websocket', 'polling', 'both']) {
    test(`a direct message through every status, libparley to socket.io-client and back (${transport})`, async () => {
      const [alice, bob] = users('alice', 'bob');
      const conv = dm(alice, bob);
      const a = new ChatCli(srv, alice, { transport });
      const b = await online(srv, bob);
      await a.online();

      const id = await a.send(`@${bob}`, 'hello from C');
      const m = await b.nextOf('new_message');
      assert.equal(m.from, alice);
      assert.equal(m.client_id, id);
      assert.deepEqual(m.content, { text: 'hello from C' });
      await a.until(() => a.statuses(id).includes('sent'), 5000, 'sent');
      await b.ok('receipt', { conversation: conv, status: 'delivered', seq: m.seq });
      await a.until(() => a.statuses(id).includes('delivered'), 5000, 'delivered');
      await b.ok('receipt', { conversation: conv, status: 'read', seq: m.seq });
      await a.until(() => a.statuses(id).includes('read'), 5000, 'read');
      assert.deepEqual(a.statuses(id), ['sending', 'sent', 'delivered', 'read']);
      const sent = a.all('status', (e) => e.client_id === id && e.status === 'sent')[0];
      assert.equal(sent.conversation, conv);
      assert.equal(sent.seq, m.seq);
      assert.equal(sent.duplicate, false);

      // The other way: the C client receives, and confirms delivery by itself.
      const back = await b.text({ to: alice }, 'hello from Node');
      const got = await a.nth('message', 1);
      assert.equal(got.seq, back.seq);
      assert.equal(got.text, 'hello from Node');
      assert.equal(got.from, bob);
      assert.equal(got.mine, false);
      const st = await b.nextOf('status');
      assert.deepEqual([st.user, st.delivered], [alice, back.seq]);
      // Read is the application's call.
      a.cmd(`read ${conv} ${back.seq}`);
      const st2 = await b.nextOf('status');
      assert.deepEqual([st2.user, st2.read], [alice, back.seq]);
      await a.quit();
    });
  }

  test('room messages reach every member once, with member events', async () => {
    const [alice, bob, carol] = users('alice', 'bob', 'carol');
    const room = `r${uniq}`;
    const a = new ChatCli(srv, alice);
    const b = new ChatCli(srv, bob, { transport: 'polling' });
    await Promise.all([a.online(), b.online()]);
    const ja = await a.request(`join ${room}`, 'room');
    assert.deepEqual(ja.members, [alice]);
    const jb = await b.request(`join ${room}`, 'room');
    assert.deepEqual(jb.members.sort(), [alice, bob].sort());
    await a.nth('member', 1, (e) => e.user === bob && e.joined);
    const c = await online(srv, carol);
    await c.ok('join_room', { room });

    const ids = [];
    for (let i = 0; i < 10; i++) ids.push(await a.send(`#${room}`, `m${i}`));
    /* send returns when a message is queued: all ten stored before carol
     * writes, or hers may take seq 10 (seen in CI). */
    await a.until(() => ids.every((id) => a.statuses(id).includes('sent')), 10000, 'all ten stored');
    await c.text({ room }, 'from node');
    await b.until(() => received(b, `room:${room}`).length === 11, 10000, '11 room messages');
    assert.deepEqual(received(b, `room:${room}`), [...Array(10).keys()].map((i) => [i + 1, `m${i}`]).concat([[11, 'from node']]));
    for (let i = 0; i < 10; i++) assert.equal((await c.nextOf('new_message')).seq, i + 1);
    // Delivered comes from bob's automatic receipts.
    await a.until(() => ids.every((id) => a.statuses(id).includes('delivered')), 5000, 'all delivered');
    assertEachOnce(a, ids, 'sent');
    assertEachOnce(a, ids, 'delivered');
    const members = await a.request(`members ${room}`, 'room');
    assert.deepEqual(members.members.sort(), [alice, bob, carol].sort());
    const left = await b.request(`leave ${room}`, 'room');
    assert.equal(left.error, undefined);
    await a.nth('member', 1, (e) => e.user === bob && !e.joined);
    await Promise.all([a.quit(), b.quit()]);
  });

  test('an offline recipient gets everything in order, once; the sender then sees delivered', async () => {
    const [alice, bob] = users('alice', 'bob');
    const conv = dm(alice, bob);
    const a = new ChatCli(srv, alice);
    await a.online();
    const ids = [];
    for (let i = 0; i < 30; i++) ids.push(await a.send(`@${bob}`, `offline ${i}`));
    await a.until(() => ids.every((id) => a.statuses(id).includes('sent')), 10000, 'all sent');
    assert.ok(ids.every((id) => !a.statuses(id).includes('delivered')), 'nobody received yet');

    const b = new ChatCli(srv, bob, { transport: 'both' });
    await b.until(() => received(b, conv).length >= 30, 10000, '30 messages');
    await b.online();
    await sleep(200);
    assert.deepEqual(received(b, conv), [...Array(30).keys()].map((i) => [i + 1, `offline ${i}`]));
    await a.until(() => ids.every((id) => a.statuses(id).includes('delivered')), 10000, 'all delivered');
    assertEachOnce(a, ids, 'delivered');
    await Promise.all([a.quit(), b.quit()]);
  });

  // docs/PROTOCOL.md, "Clients": a backlog goes out highest priority
  // first (first in, first out within a priority), so a high message
  // queued after five normal ones while offline is stored first (seq 1).
  for (const transport of ['websocket', 'polling']) {
    test(`a backlog queued offline: the high message goes out ahead of the normal ones (${transport})`, async () => {
      const [alice, bob] = users('alice', 'bob');
      const conv = dm(alice, bob);
      const a = new ChatCli(srv, alice, { transport });
      await a.online();
      a.cmd('close');
      await a.until(() => a.lastState() === 'offline', 5000, 'offline');
      const queued = () => a.all('queued').length;
      const send = async (text, priority) => {
        const n = queued();
        a.cmd(`send-json ${JSON.stringify({ to: bob, content: { text }, priority })}`);
        await a.until(() => queued() > n, 5000, `${text} queued`);
        return a.all('queued').at(-1).client_id;
      };
      const normal = [];
      for (let i = 0; i < 5; i++) normal.push(await send(`n${i}`, 'normal'));
      const high = await send('h', 'high');
      a.cmd('connect');
      const all = [...normal, high];
      await a.until(() => all.every((id) => a.statuses(id).includes('sent')), 10000, 'all six stored');
      const seqOf = (id) => a.all('status', (e) => e.client_id === id && e.status === 'sent')[0].seq;
      assert.equal(seqOf(high), 1, 'the high one was sent, and stored, first');
      assert.deepEqual(normal.map(seqOf), [2, 3, 4, 5, 6], 'the normal ones after it, in their order');
      const b = await online(srv, bob);
      const got = b.synced.messages.filter((m) => m.conversation === conv);
      assert.deepEqual(got.map((m) => [m.content.text, m.priority]),
        [['h', 'high'], ['n0', 'normal'], ['n1', 'normal'], ['n2', 'normal'], ['n3', 'normal'], ['n4', 'normal']]);
      b.close();
      await a.quit();
    });
  }

  test('a sender that was offline learns read on reconnection (sync receipts)', async () => {
    const [alice, bob] = users('alice', 'bob');
    const conv = dm(alice, bob);
    const a = new ChatCli(srv, alice, { transport: 'polling' });
    await a.online();
    const id = await a.send(`@${bob}`, 'read me later');
    await a.until(() => a.statuses(id).includes('sent'), 5000, 'sent');
    a.cmd('close');
    await a.until(() => a.lastState() === 'offline', 5000, 'offline');
    const b = await online(srv, bob);
    assert.equal(b.synced.messages.length, 1);
    await b.ok('receipt', { conversation: conv, status: 'read', seq: 1 });
    await sleep(100);
    assert.ok(!a.statuses(id).includes('read'), 'not while offline');
    a.cmd('connect');
    await a.until(() => a.statuses(id).includes('read'), 10000, 'read after reconnecting');
    assert.deepEqual(a.statuses(id), ['sending', 'sent', 'delivered', 'read']);
    await a.quit();
  });

  test('bad input is refused with a code and a field, and the client stays usable', async () => {
    const [alice, bob] = users('alice', 'bob');
    const a = new ChatCli(srv, alice);
    await a.online();
    const cases = [
      [{ to: bob, type: 'hologram', content: { text: 'x' } }, 'unknown_type'],
      [{ to: bob, type: 'location', content: { lat: 200, lng: 0 } }, 'invalid_field', 'content.lat'],
      [{ to: bob, type: 'text', content: {} }, 'missing_field', 'content.text'],
      [{ to: bob, type: 'text', content: { text: 'x', color: 'red' } }, 'unknown_field'],
      [{ to: bob, type: 'text', content: { text: 'x', from: 'mallory' } }, 'sender_forbidden'],
      [{ type: 'text', content: { text: 'no target' } }, 'missing_field'],
      [{ to: alice, type: 'text', content: { text: 'me' } }, 'invalid_field', 'to'],
      [{ to: bob, type: 'text', content: { text: 'x'.repeat(9000) } }, 'too_large'],
      [{ to: bob, type: 'system', content: { text: 'x' } }, null], // passes locally; the server says forbidden
    ];
    for (const [obj, code, field] of cases) {
      const before = a.all('error').length + a.all('queued').length;
      a.cmd(`send-json ${JSON.stringify(obj)}`);
      const e = await a.until(() => [...a.all('error'), ...a.all('queued')].sort((x, y) => x.at - y.at)[before], 5000, 'an answer');
      if (code === null) {
        assert.equal(e.ev, 'queued');
        const st = await a.nth('status', 1, (s) => s.client_id === e.client_id && s.status === 'failed');
        assert.equal(st.code, 'forbidden');
        assert.ok(st.message.length > 0);
        continue;
      }
      assert.equal(e.ev, 'error', `${JSON.stringify(obj).slice(0, 80)} should be refused`);
      assert.equal(e.code, code, JSON.stringify(e));
      if (field) assert.equal(e.field, field, JSON.stringify(e));
      assert.ok(e.message.length > 0);
    }
    // Server-side refusal: a room alice is not in.
    a.cmd(`send-json ${JSON.stringify({ room: `nowhere${uniq}`, type: 'text', content: { text: 'x' } })}`);
    const sentId = (await a.nth('queued', 2)).client_id;
    const f = await a.nth('status', 1, (s) => s.client_id === sentId && s.status === 'failed');
    assert.equal(f.code, 'not_member');
    // Still usable.
    const b = await online(srv, bob);
    const ok = await a.send(`@${bob}`, 'still fine');
    assert.equal((await b.nextOf('new_message')).client_id, ok);
    await a.quit();
  });

  test('typing start and stop reach the other participant', async () => {
    const [alice, bob] = users('alice', 'bob');
    const conv = dm(alice, bob);
    const a = new ChatCli(srv, alice);
    await a.online();
    const b = await online(srv, bob);
    a.cmd(`typing ${conv} on`);
    const t1 = await b.nextOf('typing');
    assert.deepEqual([t1.user, t1.state], [alice, 'start']);
    await sleep(1500); // past the server's 800 ms expiry: the client refreshed it
    a.cmd(`typing ${conv} off`);
    const t2 = await b.nextOf('typing');
    assert.deepEqual([t2.user, t2.state], [alice, 'stop'], 'no expiry while refreshed; stop on request');
    // And the other way.
    await b.ok('typing', { conversation: conv, state: 'start' });
    const t3 = await a.nth('typing', 1);
    assert.deepEqual([t3.user, t3.typing], [bob, true]);
    await a.quit();
  });

  test('history pages and media upload with access control', async () => {
    const [alice, bob, eve] = users('alice', 'bob', 'eve');
    const conv = dm(alice, bob);
    const a = new ChatCli(srv, alice);
    await a.online();
    for (let i = 0; i < 12; i++) await a.send(`@${bob}`, `h${i}`);
    await a.until(() => a.all('status', (s) => s.status === 'sent').length === 12, 5000, '12 sent');
    const h1 = await a.request(`history ${conv} 0 5`, 'history');
    assert.deepEqual(h1.messages.map((m) => m.seq), [8, 9, 10, 11, 12]);
    assert.equal(h1.more, true);
    const h2 = await a.request(`history ${conv} 8 50`, 'history');
    assert.deepEqual(h2.messages.map((m) => m.text), [...Array(7).keys()].map((i) => `h${i}`));
    assert.equal(h2.more, false);
    const h3 = await a.request(`history dm:${bob}:${eve} 0 5`.replace(`dm:${bob}:${eve}`, dm(bob, eve)), 'history');
    assert.equal(h3.error.code, 'not_member');

    const file = path.join(tempDir(), 'pic.png');
    const png = Buffer.concat([Buffer.from('89504e470d0a1a0a', 'hex'), Buffer.alloc(3000, 7)]);
    writeFileSync(file, png);
    const up = await a.request(`upload image/png ${file}`, 'upload');
    assert.match(up.media, /^[0-9a-f]{64}$/);
    assert.equal(up.size, png.length);
    a.cmd(`send-json ${JSON.stringify({ to: bob, type: 'image', content: { media: up.media, caption: 'look' } })}`);
    const b = await online(srv, bob);
    const img = b.synced.messages.find((m) => m.type === 'image') ?? (await b.nextOf('new_message'));
    assert.equal(img.type, 'image');
    assert.deepEqual(img.content, { media: up.media, mime: 'image/png', size: png.length, caption: 'look' });
    // eve may not use alice's media (to eve it does not exist).
    const e = new ChatCli(srv, eve);
    await e.online();
    e.cmd(`send-json ${JSON.stringify({ to: alice, type: 'image', content: { media: up.media } })}`);
    const eid = (await e.nth('queued', 1)).client_id;
    const f = await e.nth('status', 1, (s) => s.client_id === eid && s.status === 'failed');
    assert.equal(f.code, 'not_found');
    await Promise.all([a.quit(), e.quit()]);
  });

  test('an expired token is refused with its code; a fresh one connects', async () => {
    const [alice] = users('alice');
    const a = new ChatCli(srv, alice, { label: 'expired' });
    a.setToken(makeToken(alice, { claims: { exp: Math.floor(Date.now() / 1000) - 3600 } }));
    // The first connection may have read the valid token already; force a
    // refusal by reconnecting with the expired one.
    await a.until(() => a.lastState() === 'refused' || a.lastState() === 'online', 10000, 'an answer');
    if (a.lastState() === 'online') {
      a.cmd('close');
      await a.until(() => a.lastState() === 'offline', 5000, 'offline');
      a.cmd('connect');
      await a.until(() => a.lastState() === 'refused', 10000, 'refused');
    }
    const r = a.all('state', (s) => s.state === 'refused').at(-1);
    assert.equal(r.code, 'token_expired');
    await sleep(500);
    assert.equal(a.lastState(), 'refused', 'no retry storm after a refusal');
    a.setToken(makeToken(alice));
    a.cmd('connect');
    await a.online();
    await a.quit();
  });
});

describe('libparley chat client: faults', () => {
  after(cleanup);

  test('parleyd killed (SIGKILL) and restarted mid-traffic: every message stored once, statuses once', async (t) => {
    const dataDir = path.join(tempDir(), 'data');
    let srv = await startChatServer({ dataDir });
    const { port } = srv;
    const [alice, bob] = users('alice', 'bob');
    const conv = dm(alice, bob);
    const a = new ChatCli(srv, alice);
    await a.online();
    const ids = [];
    const N = 500;
    for (let round = 0; round < 2; round++) {
      for (let i = 0; i < N; i++) a.cmd(`send @${bob} r${round}-${i}`);
      // Kill while the stream is being stored: some acknowledged, most not.
      const stored = () => {
        const mine = new Set(a.all('queued').slice(round * N).map((e) => e.client_id));
        return a.all('status', (s) => s.status === 'sent' && mine.has(s.client_id)).length;
      };
      await a.until(() => stored() > 20, 10000, 'some of this round stored');
      srv.child.kill('SIGKILL');
      await srv.child.exitPromise;
      await sleep(100);
      t.diagnostic(`round ${round}: ${stored()} of this round's ${N} acknowledged when the server died`);
      const onlines = a.all('state', (e) => e.state === 'online').length;
      srv = await startChatServer({ dataDir, port });
      // Back online before the next round, so that it streams too.
      await a.until(() => a.all('state', (e) => e.state === 'online').length > onlines, 10000, 'online again');
    }
    await a.until(() => a.all('queued').length === 2 * N, 10000, 'all queued');
    ids.push(...a.all('queued').map((e) => e.client_id));
    assert.equal(ids.length, 2 * N);
    await a.until(() => ids.every((id) => a.statuses(id).includes('sent')), 30000, 'all stored');
    assertEachOnce(a, ids, 'sent');
    const dups = a.all('status', (s) => s.status === 'sent' && s.duplicate).length;
    const b = await online(srv, bob);
    const mine = b.synced.messages.filter((m) => m.conversation === conv);
    assert.equal(mine.length, 2 * N, 'each stored exactly once');
    assert.deepEqual(mine.map((m) => m.seq), [...Array(2 * N).keys()].map((i) => i + 1));
    assert.deepEqual(new Set(mine.map((m) => m.client_id)), new Set(ids));
    // In the order sent (one sender, one queue, FIFO within a priority).
    assert.deepEqual(mine.map((m) => m.client_id), ids);
    t.diagnostic(`${2 * N} sent, ${mine.length} stored, 0 duplicated; ${dups} resends answered as duplicates`);
    await a.quit();
  });

  test('a client killed with a persisted queue sends it after restarting: nothing lost, nothing doubled', async (t) => {
    const dataDir = path.join(tempDir(), 'data');
    let srv = await startChatServer({ dataDir });
    const { port } = srv;
    const [alice, bob] = users('alice', 'bob');
    const conv = dm(alice, bob);
    const queueFile = path.join(tempDir(), 'alice.queue');
    const a = new ChatCli(srv, alice, { queueFile });
    await a.online();
    await srv.stop('SIGKILL');
    for (let i = 0; i < 100; i++) a.cmd(`send @${bob} q${i}`);
    await a.until(() => a.all('queued').length === 100, 10000, '100 queued');
    const ids = a.all('queued').map((e) => e.client_id);
    assert.ok(ids.every((id) => a.statuses(id).join() === 'sending'), 'offline: sending only');
    await a.kill();

    srv = await startChatServer({ dataDir, port });
    const a2 = new ChatCli(srv, alice, { queueFile, label: 'alice restarted' });
    await a2.until(() => ids.every((id) => a2.statuses(id).includes('sent')), 20000, 'all 100 stored');
    assertEachOnce(a2, ids, 'sent');
    const b = await online(srv, bob);
    const got = b.synced.messages.filter((m) => m.conversation === conv);
    assert.equal(got.length, 100);
    assert.deepEqual(got.map((m) => m.client_id), ids, 'in order, each once');
    t.diagnostic('100 queued offline, client SIGKILLed, restarted: 100 stored, 0 lost, 0 duplicated');
    await a2.quit();
  });
});
