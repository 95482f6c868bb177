// Priority `high` in parleyd's fan-out (docs/PROTOCOL.md, "Messaging",
// priorities): the live deliveries of one commit batch go out urgent and
// high first across conversations, and in seq order within a
// conversation. Made deterministic with the polling transport: the npm
// engine.io-client sends, in one POST, every packet emitted while its
// previous POST is in flight, and parleyd handles one POST's packets in
// one loop iteration, hence one commit batch.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { cleanup } from './lib/harness.mjs';
import { ChatClient, dm, eventually, nextClientId, online, startChatServer } from './lib/chat.mjs';

let uniq = 0;
const users = (...names) => names.map((n) => `${n}prio${++uniq}`);

/** Emits everything in one tick (one POST after the one in flight); resolves to the acks. */
function burst(c, sends) {
  // The first packet of an idle polling transport leaves alone: a
  // request that does not matter takes that place.
  const first = c.req('presence_subscribe', { users: ['nobody'] });
  const acks = sends.map((s) => c.req('send_message', { client_id: nextClientId(), type: 'text', ...s }));
  return Promise.all([first, ...acks]).then((all) => all.slice(1));
}

describe('fan-out priority', () => {
  let srv;
  before(async () => {
    srv = await startChatServer();
  });
  after(cleanup);

  test('a high direct message committed with a burst of normal room messages reaches the recipient first', async () => {
    const [amy, bob] = users('amy', 'bob');
    const room = `prio${uniq}`;
    const a = await online(srv, amy);
    const b = new ChatClient(srv, { user: bob, transports: ['polling'] });
    await b.connected();
    await a.ok('join_room', { room });
    await b.ok('join_room', { room });
    a.drain();

    const sends = [];
    for (let i = 0; i < 5; i++) sends.push({ room, content: { text: `n${i}` } });
    sends.push({ to: amy, priority: 'high', content: { text: 'h' } });
    const acks = await burst(b, sends);
    for (const r of acks) assert.equal(r.ok, true, JSON.stringify(r));
    assert.deepEqual(acks.map((r) => r.message.seq), [1, 2, 3, 4, 5, 1]);

    const got = await eventually(() => {
      const m = a.log.filter((e) => e.name === 'new_message').map((e) => e.args[0]);
      return m.length === 6 && m;
    }, 5000, 'six messages at amy');
    assert.deepEqual(got.map((m) => [m.conversation, m.seq, m.content.text]), [
      [dm(amy, bob), 1, 'h'],
      ...[0, 1, 2, 3, 4].map((i) => [`room:${room}`, i + 1, `n${i}`]),
    ], 'the high one first, the room in seq order');
    a.close();
    b.close();
  });

  test('within a conversation seq order wins: a high message pulls the earlier ones ahead, never passes them', async () => {
    const [amy, bob] = users('amy', 'bob');
    const room = `prio${uniq}`;
    const a = await online(srv, amy);
    const b = new ChatClient(srv, { user: bob, transports: ['polling'] });
    await b.connected();
    await a.ok('join_room', { room });
    await b.ok('join_room', { room });
    a.drain();

    // DM: normal d0, then room n0, n1, then DM high d1, then room low l0.
    const acks = await burst(b, [
      { to: amy, content: { text: 'd0' } },
      { room, content: { text: 'n0' } },
      { room, content: { text: 'n1' } },
      { to: amy, priority: 'high', content: { text: 'd1' } },
      { room, priority: 'low', content: { text: 'l0' } },
    ]);
    for (const r of acks) assert.equal(r.ok, true, JSON.stringify(r));
    const got = await eventually(() => {
      const m = a.log.filter((e) => e.name === 'new_message').map((e) => e.args[0]);
      return m.length === 5 && m;
    }, 5000, 'five messages at amy');
    assert.deepEqual(got.map((m) => m.content.text), ['d0', 'd1', 'n0', 'n1', 'l0']);
    a.close();
    b.close();
  });
});
