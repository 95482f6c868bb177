// The messaging protocol end to end: parleyd's messaging service against
// the npm socket.io-client speaking docs/PROTOCOL.md ("Messaging").
// Direct and room conversations through every status, offline delivery
// and sync (in order, exactly once, also while traffic flows), offline
// senders learning receipts, idempotent resends, typing, history, low and
// urgent priorities, multiple devices, and token expiry.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { cleanup, scaled, sleep } from './lib/harness.mjs';
import { ChatClient, dm, makeToken, nextClientId, online, startChatServer } from './lib/chat.mjs';

const MODES = [
  { name: 'websocket', transports: ['websocket'] },
  { name: 'polling', transports: ['polling'] },
  { name: 'default (polling then upgrade)', transports: undefined },
];

let uniq = 0;
/** Fresh user names per test, so tests sharing a server do not meet. */
const users = (...names) => names.map((n) => `${n}${++uniq}`);

describe('messaging flows', () => {
  let srv;
  let fast; // short typing timeout and low delay

  before(async () => {
    [srv, fast] = await Promise.all([
      startChatServer(),
      startChatServer({ extra: ['--typing-timeout', '600', '--low-delay', '300', '--jwt-leeway', '0', '--log-level', 'debug'] }),
    ]);
  });

  after(cleanup);

  for (const mode of MODES) {
    test(`direct message through sent, delivered and read (${mode.name})`, async () => {
      const [alice, bob] = users('alice', 'bob');
      const a1 = await online(srv, alice, { transports: mode.transports });
      const a2 = await online(srv, alice, { transports: mode.transports, label: `${alice}'s phone` });
      const b1 = await online(srv, bob, { transports: mode.transports });
      const b2 = await online(srv, bob, { transports: mode.transports, label: `${bob}'s phone` });
      const conv = dm(alice, bob);

      const clientId = nextClientId();
      const res = await a1.send({ to: bob }, { text: 'hello, wörld 😀' }, { clientId });
      assert.equal(res.ok, true, JSON.stringify(res));
      assert.equal(res.duplicate, false);
      const m = res.message;
      assert.equal(m.conversation, conv);
      assert.equal(m.seq, 1);
      assert.equal(m.from, alice);
      assert.equal(m.client_id, clientId);
      assert.equal(m.type, 'text');
      assert.equal(m.priority, 'normal');
      assert.deepEqual(m.content, { text: 'hello, wörld 😀' });
      assert.ok(Number.isInteger(m.id) && m.id > 0);
      assert.ok(Math.abs(m.ts - Date.now()) < 60000, 'ts is the server time in ms');

      // Every device of the recipient, and the sender's other devices, get
      // it; the sending socket has it in its acknowledgement.
      assert.deepEqual(await b1.next('new_message'), m);
      assert.deepEqual(await b2.next('new_message'), m);
      assert.deepEqual(await a2.next('new_message'), m);

      // delivered, then read: the sender's devices see each change.
      const d = await b1.ok('receipt', { conversation: conv, status: 'delivered', seq: 1 });
      assert.deepEqual(d, { ok: true, conversation: conv, user: bob, delivered: 1, read: 0 });
      const st1 = { conversation: conv, user: bob, delivered: 1, read: 0 };
      assert.deepEqual(await a1.next('status'), st1);
      assert.deepEqual(await a2.next('status'), st1);
      assert.deepEqual(await b2.next('status'), st1, "the recipient's other device hears of it too");

      const r = await b2.ok('receipt', { conversation: conv, status: 'read', seq: 1 });
      assert.deepEqual(r, { ok: true, conversation: conv, user: bob, delivered: 1, read: 1 });
      const st2 = { conversation: conv, user: bob, delivered: 1, read: 1 };
      assert.deepEqual(await a1.next('status'), st2);
      assert.deepEqual(await a2.next('status'), st2);
      assert.deepEqual(await b1.next('status'), st2);

      // A receipt that moves nothing is acknowledged and not relayed.
      assert.deepEqual(await b1.ok('receipt', { conversation: conv, status: 'delivered', seq: 1 }), r);
      // The other way round, in the same conversation.
      const reply = await b1.text({ conversation: conv }, 'hi alice');
      assert.equal(reply.seq, 2);
      assert.deepEqual(await a1.next('new_message'), reply);
      assert.deepEqual(await a2.next('new_message'), reply);
      assert.deepEqual(await b2.next('new_message'), reply);
      // Typing reaches the other user's devices (whatever the transport),
      // not the typist's own.
      await a1.ok('typing', { conversation: conv, state: 'start' });
      for (const x of [b1, b2]) assert.deepEqual(await x.next('typing'), { conversation: conv, user: alice, state: 'start' });
      await a1.ok('typing', { conversation: conv, state: 'stop' });
      for (const x of [b1, b2]) assert.deepEqual(await x.next('typing'), { conversation: conv, user: alice, state: 'stop' });
      await a1.ok('history', { conversation: conv });
      for (const c of [a1, a2, b1, b2]) c.assertIdle();
      for (const c of [a1, a2, b1, b2]) c.close();
    });
  }

  test('room: join, members, messages, receipts, leave', async () => {
    const [amy, ben, cat] = users('amy', 'ben', 'cat');
    const room = `room${uniq}`;
    const conv = `room:${room}`;
    const a = await online(srv, amy);
    const b = await online(srv, ben);
    const c = await online(srv, cat);

    const ja = await a.ok('join_room', { room });
    assert.deepEqual(ja, { ok: true, room, conversation: conv, last_seq: 0, members: [amy] });
    const jb = await b.ok('join_room', { room });
    assert.deepEqual(jb.members, [amy, ben].sort());
    assert.deepEqual(await a.next('member_joined'), { room, conversation: conv, user: ben });
    // Joining twice changes nothing and tells nobody.
    assert.deepEqual((await b.ok('join_room', { room })).members, [amy, ben].sort());

    // Not a member yet: no sending, no history, no member list.
    await c.fails('send_message', { client_id: nextClientId(), room, type: 'text', content: { text: 'x' } }, 'not_member', 'room');
    await c.fails('history', { conversation: conv }, 'not_member');
    await c.fails('room_members', { room }, 'not_member', 'room');
    await c.fails('typing', { conversation: conv, state: 'start' }, 'not_member');

    const m1 = await b.text({ room }, 'first');
    assert.equal(m1.seq, 1);
    assert.equal(m1.conversation, conv);
    assert.deepEqual(await a.next('new_message'), m1);
    const m2 = await a.text({ conversation: conv }, 'second', { priority: 'high' });
    assert.equal(m2.priority, 'high');
    assert.deepEqual(await b.next('new_message'), m2);

    // A late joiner sees the whole history and gets what follows.
    const jc = await c.ok('join_room', { room });
    assert.equal(jc.last_seq, 2);
    assert.deepEqual(jc.members, [amy, ben, cat].sort());
    assert.deepEqual(await a.next('member_joined'), { room, conversation: conv, user: cat });
    assert.deepEqual(await b.next('member_joined'), { room, conversation: conv, user: cat });
    const h = await c.ok('history', { conversation: conv });
    assert.deepEqual(h.messages, [m1, m2]);
    assert.equal(h.more, false);
    assert.deepEqual((await c.ok('room_members', { room })).members, [amy, ben, cat].sort());

    const m3 = await c.text({ room }, 'third');
    assert.deepEqual(await a.next('new_message'), m3);
    assert.deepEqual(await b.next('new_message'), m3);

    // Receipts in a room reach every member.
    await a.ok('receipt', { conversation: conv, status: 'read', seq: 3 });
    const st = { conversation: conv, user: amy, delivered: 3, read: 3 };
    assert.deepEqual(await b.next('status'), st);
    assert.deepEqual(await c.next('status'), st);

    // Leaving: the others hear of it; the leaver gets nothing more and
    // may no longer post or read.
    assert.deepEqual(await b.ok('leave_room', { room }), { ok: true, room });
    assert.deepEqual(await a.next('member_left'), { room, conversation: conv, user: ben });
    assert.deepEqual(await c.next('member_left'), { room, conversation: conv, user: ben });
    await b.fails('leave_room', { room }, 'not_member', 'room');
    const m4 = await a.text({ room }, 'after ben left');
    assert.deepEqual(await c.next('new_message'), m4);
    await b.fails('send_message', { client_id: nextClientId(), room, type: 'text', content: { text: 'x' } }, 'not_member');
    // A resend of what ben stored while a member is still answered.
    const resent = await b.send({ room }, { text: 'first' }, { clientId: m1.client_id });
    assert.equal(resent.duplicate, true);
    assert.deepEqual(resent.message, m1);
    await b.fails('history', { conversation: conv }, 'not_member');
    await b.fails('receipt', { conversation: conv, status: 'read', seq: 1 }, 'not_member');
    await b.ok('history', { conversation: dm(amy, ben) }); // an empty DM is fine
    b.assertIdle('after leaving the room');
    for (const x of [a, b, c]) x.close();
  });

  test('an offline recipient gets everything on sync, in order and once', async () => {
    const [alice, bob] = users('alice', 'bob');
    const conv = dm(alice, bob);
    const a = await online(srv, alice);
    const sent = [];
    const prios = ['low', 'normal', 'high', 'urgent'];
    for (let i = 0; i < 30; i++) sent.push(await a.text({ to: bob }, `m${i}`, { priority: prios[i % 4] }));
    assert.deepEqual(sent.map((m) => m.seq), Array.from({ length: 30 }, (_, i) => i + 1));

    // Paged sync: 7 at a time, no gap, no repeat.
    const b = new ChatClient(srv, { user: bob });
    await b.connected();
    const got = await b.syncAll({}, 7);
    assert.equal(got.pages, 5);
    assert.deepEqual(got.messages, sent);
    const cv = got.conversations.find((x) => x.id === conv);
    assert.equal(cv.last_seq, 30);
    // Nothing arrives live for what the sync answered.
    await sleep(scaled(700)); // longer than --low-delay
    b.assertIdle('after the sync');
    // Live from now on.
    const next = await a.text({ to: bob }, 'live');
    assert.deepEqual(await b.next('new_message'), next);

    // Another device of bob that knows up to 25 asks only for the rest.
    const b2 = new ChatClient(srv, { user: bob });
    await b2.connected();
    const rest = await b2.syncAll({ [conv]: 25 });
    assert.deepEqual(rest.messages, [...sent.slice(25), next]);
    // Before its sync a device gets no live events.
    const b3 = new ChatClient(srv, { user: bob });
    await b3.connected();
    const m32 = await a.text({ to: bob }, 'while b3 is not synced');
    await b.next('new_message');
    await b2.next('new_message');
    b3.assertIdle('before sync');
    const s3 = await b3.ok('sync', { since: { [conv]: 31 } });
    assert.deepEqual(s3.messages, [m32]);
    for (const x of [a, b, b2, b3]) x.close();
  });

  test('sync while messages keep coming: every message exactly once, in order', async () => {
    const [alice, bob] = users('alice', 'bob');
    const conv = dm(alice, bob);
    const a = await online(srv, alice);
    const N = 400;
    const acks = [];
    let joined = null;
    for (let i = 0; i < N; i++) {
      acks.push(a.send({ to: bob }, { text: `n${i}` }, { priority: i % 5 === 0 ? 'low' : 'normal' }));
      if (i === 150) {
        // bob connects and syncs in the middle of the stream
        joined = (async () => {
          const b = new ChatClient(srv, { user: bob });
          await b.connected();
          const s = await b.ok('sync', { limit: 1000 });
          return { b, s };
        })();
      }
      if (i % 5 === 0) await sleep(2);
    }
    const results = await Promise.all(acks);
    for (const r of results) assert.equal(r.ok, true);
    const { b, s } = await joined;
    assert.equal(s.more, false);
    const seen = s.messages.map((m) => m.seq);
    const deadline = Date.now() + scaled(10000);
    while (seen.length < N && Date.now() < deadline) {
      const m = await b.next('new_message', 5000);
      assert.equal(m.conversation, conv);
      seen.push(m.seq);
    }
    assert.deepEqual(seen, Array.from({ length: N }, (_, i) => i + 1), 'sync answer + live events = 1..N once each, in order');
    await sleep(scaled(500));
    b.assertIdle('after all messages');
    a.close();
    b.close();
  });

  test('an offline sender learns delivered and read on reconnect', async () => {
    const [alice, bob] = users('alice', 'bob');
    const conv = dm(alice, bob);
    let a = await online(srv, alice);
    const m1 = await a.text({ to: bob }, 'one');
    const m2 = await a.text({ to: bob }, 'two');
    a.close();
    const b = await online(srv, bob);
    assert.deepEqual(b.synced.messages, [m1, m2]);
    await b.ok('receipt', { conversation: conv, status: 'delivered', seq: 2 });
    await b.ok('receipt', { conversation: conv, status: 'read', seq: 1 });
    a = await online(srv, alice, { since: { [conv]: 2 } });
    assert.deepEqual(a.synced.messages, []);
    const cv = a.synced.conversations.find((x) => x.id === conv);
    assert.equal(cv.last_seq, 2);
    assert.deepEqual(cv.receipts, [
      { user: alice, delivered: 0, read: 0 },
      { user: bob, delivered: 2, read: 1 },
    ].sort((x, y) => (x.user < y.user ? -1 : 1)));
    // ... and from then on live.
    await b.ok('receipt', { conversation: conv, status: 'read', seq: 2 });
    assert.deepEqual(await a.next('status'), { conversation: conv, user: bob, delivered: 2, read: 2 });
    a.close();
    b.close();
  });

  test('a resend with the same client_id stores nothing twice', async () => {
    const [alice, bob] = users('alice', 'bob');
    const a = await online(srv, alice);
    const b = await online(srv, bob);
    const clientId = nextClientId();
    const first = await a.send({ to: bob }, { text: 'once' }, { clientId });
    assert.equal(first.duplicate, false);
    assert.deepEqual(await b.next('new_message'), first.message);
    // Same id, even with other content: the stored message answers.
    const again = await a.send({ to: bob }, { text: 'twice?' }, { clientId });
    assert.equal(again.ok, true);
    assert.equal(again.duplicate, true);
    assert.deepEqual(again.message, first.message);
    // Two resends in flight at once (one batch).
    const [x, y] = await Promise.all([
      a.send({ to: bob }, { text: 'once' }, { clientId }),
      a.send({ to: bob }, { text: 'once' }, { clientId }),
    ]);
    assert.deepEqual(x.message, first.message);
    assert.deepEqual(y.message, first.message);
    // A new id in the same batch twice: stored once.
    const id2 = nextClientId();
    const [p, q] = await Promise.all([a.send({ to: bob }, { text: 'pair' }, { clientId: id2 }), a.send({ to: bob }, { text: 'pair' }, { clientId: id2 })]);
    assert.equal(p.duplicate, false);
    assert.equal(q.duplicate, true);
    assert.deepEqual(q.message, p.message);
    assert.deepEqual(await b.next('new_message'), p.message);
    const h = await b.ok('history', { conversation: dm(alice, bob) });
    assert.deepEqual(h.messages.map((m) => m.client_id), [clientId, id2]);
    await sleep(scaled(200));
    b.assertIdle('after the resends');
    // Client ids are per sender: bob may use the same one.
    const bobs = await b.send({ to: alice }, { text: 'mine' }, { clientId });
    assert.equal(bobs.duplicate, false);
    assert.equal(bobs.message.seq, 3);
    a.close();
    b.close();
  });

  test('typing: relayed once, refreshed silently, expires with a stop', async () => {
    const [alice, bob, carl] = users('alice', 'bob', 'carl');
    const conv = dm(alice, bob);
    const a = await online(fast, alice);
    const b = await online(fast, bob);
    const c = await online(fast, carl);
    const t0 = Date.now();
    assert.deepEqual(await a.ok('typing', { conversation: conv, state: 'start' }), { ok: true });
    assert.deepEqual(await b.next('typing'), { conversation: conv, user: alice, state: 'start' });
    // Refreshes inside the timeout are not relayed.
    await sleep(300);
    await a.ok('typing', { conversation: conv, state: 'start' });
    const t1 = Date.now();
    // No refresh: the server relays stop after --typing-timeout (600 ms).
    assert.deepEqual(await b.next('typing', 3000), { conversation: conv, user: alice, state: 'stop' });
    const waited = Date.now() - t1;
    assert.ok(waited >= 450, `stop came ${waited} ms after the last refresh (timeout 600)`);
    assert.ok(Date.now() - t0 >= 850, 'the refresh extended the deadline');
    // Explicit stop, and a flapping user is throttled: start, stop, start
    // within 500 ms shows one start.
    await a.ok('typing', { conversation: conv, state: 'start' });
    assert.equal((await b.next('typing')).state, 'start');
    await a.ok('typing', { conversation: conv, state: 'stop' });
    await a.ok('typing', { conversation: conv, state: 'start' });
    // Past the throttle window (500 ms) with refreshes inside the timeout.
    await sleep(300);
    await a.ok('typing', { conversation: conv, state: 'start' });
    await sleep(300);
    const seen = b.drain().filter((e) => e.name === 'typing');
    assert.deepEqual(seen, [], 'stop+start inside the throttle window relays nothing');
    await a.ok('typing', { conversation: conv, state: 'stop' });
    assert.deepEqual(await b.next('typing', 2000), { conversation: conv, user: alice, state: 'stop' });
    // Never stored; never sent to the typist or to others.
    assert.deepEqual((await a.ok('history', { conversation: conv })).messages, []);
    await a.fails('typing', { conversation: dm(bob, carl), state: 'start' }, 'not_member');
    await a.fails('typing', { conversation: conv, state: 'typing' }, 'invalid_field', 'state');
    a.assertIdle();
    c.assertIdle();
    for (const x of [a, b, c]) x.close();
  });

  test('history pages backwards without gaps', async () => {
    const [alice, bob] = users('alice', 'bob');
    const conv = dm(alice, bob);
    const a = await online(srv, alice);
    const all = [];
    for (let i = 0; i < 25; i++) all.push(await a.text({ to: bob }, `h${i}`));
    const p1 = await a.ok('history', { conversation: conv, limit: 10 });
    assert.deepEqual(p1.messages, all.slice(15));
    assert.equal(p1.more, true);
    const p2 = await a.ok('history', { conversation: conv, before: 16, limit: 10 });
    assert.deepEqual(p2.messages, all.slice(5, 15));
    assert.equal(p2.more, true);
    const p3 = await a.ok('history', { conversation: conv, before: 6, limit: 10 });
    assert.deepEqual(p3.messages, all.slice(0, 5));
    assert.equal(p3.more, false);
    const p4 = await a.ok('history', { conversation: conv });
    assert.equal(p4.messages.length, 25, 'default limit is 50');
    a.close();
  });

  test('low priority is batched, never reordered; urgent raises a notification', async () => {
    const [alice, bob] = users('alice', 'bob');
    const a = await online(fast, alice);
    const b = await online(fast, bob);
    // A lone low message waits up to --low-delay (300 ms).
    const t0 = Date.now();
    const low = await a.text({ to: bob }, 'low one', { priority: 'low' });
    assert.deepEqual(await b.next('new_message'), low);
    const lag = Date.now() - t0;
    assert.ok(lag >= 200, `low message delivered after ${lag} ms (batching delay 300)`);
    // A normal message after low ones pushes them out first, in order.
    const [l1, l2, n3] = await Promise.all([
      a.text({ to: bob }, 'l1', { priority: 'low' }),
      a.text({ to: bob }, 'l2', { priority: 'low' }),
      a.text({ to: bob }, 'n3'),
    ]);
    // n3 leaves at once; had l1 and l2 still been waiting, it would have
    // arrived first.
    assert.deepEqual(await b.next('new_message'), l1);
    assert.deepEqual(await b.next('new_message'), l2);
    assert.deepEqual(await b.next('new_message'), n3);
    // Urgent: delivered at once, and the notifier seam is called (parleyd
    // logs it) for the recipient, online or not.
    const u = await a.text({ to: bob }, 'fire!', { priority: 'urgent' });
    assert.deepEqual(await b.next('new_message'), u);
    b.close();
    const u2 = await a.text({ to: bob }, 'still burning', { priority: 'urgent' });
    await sleep(200);
    const log = fast.child.stderrText;
    assert.match(log, new RegExp(`urgent message ${u.id} in ${dm(alice, bob)} from ${alice} for ${bob} \\(online\\)`));
    assert.match(log, new RegExp(`urgent message ${u2.id} in ${dm(alice, bob)} from ${alice} for ${bob} \\(offline\\)`));
    a.close();
  });

  test('an expiring token ends the connection', async () => {
    const [alice] = users('alice');
    const exp = Math.floor(Date.now() / 1000) + 2;
    const a = new ChatClient(fast, { user: alice, token: makeToken(alice, { claims: { exp } }) });
    await a.connected();
    await a.ok('sync', {});
    const reason = await a.nextOf('disconnect', 5000);
    assert.equal(reason, 'io server disconnect');
    assert.ok(Date.now() >= exp * 1000 - 50, 'not before exp');
  });
});
