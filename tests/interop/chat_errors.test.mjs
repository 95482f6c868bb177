// Bad input on the messaging namespace: every request that breaks the
// documented schema or rules gets an error acknowledgement with its code
// (and the offending field), stores nothing, and leaves the connection
// usable.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { cleanup, scaled, sleep } from './lib/harness.mjs';
import { dm, nextClientId, online, startChatServer } from './lib/chat.mjs';

const MEDIA = '0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef';

describe('messaging: bad input', () => {
  let srv;
  let a;
  let b;
  let c;
  const room = 'errors-room';

  before(async () => {
    srv = await startChatServer({ extra: ['--max-text-bytes', '100'] });
    a = await online(srv, 'ann');
    b = await online(srv, 'bea');
    c = await online(srv, 'cid');
    await a.ok('join_room', { room });
    await b.ok('join_room', { room });
    await a.nextOf('member_joined');
  });

  after(cleanup);

  const send = (extra, content = { text: 'x' }) => ({ client_id: nextClientId(), to: 'bea', type: 'text', content, ...extra });

  test('send_message: each bad payload with its code and field', async () => {
    const cases = [
      // [payload, code, field]
      [send({ from: 'bea' }), 'sender_forbidden', 'from'],
      [send({ sender: 'bea' }), 'sender_forbidden', 'sender'],
      [send({}, { text: 'x', from: 'bea' }), 'sender_forbidden', 'from'],
      [send({ type: 'sticker' }), 'unknown_type', 'type'],
      [send({ type: 7 }), 'invalid_field', 'type'],
      [{ to: 'bea', type: 'text', content: { text: 'x' } }, 'missing_field', 'client_id'],
      [{ client_id: 'c', type: 'text', content: { text: 'x' } }, 'missing_field', 'to'],
      [{ client_id: 'c', to: 'bea', content: { text: 'x' } }, 'missing_field', 'type'],
      [{ client_id: 'c', to: 'bea', type: 'text' }, 'missing_field', 'content'],
      [send({}, {}), 'missing_field', 'content.text'],
      [send({}, { text: 5 }), 'invalid_field', 'content.text'],
      [send({}, { text: '' }), 'invalid_field', 'content.text'],
      [send({}, { text: 'x'.repeat(101) }), 'too_large', 'content.text'],
      [send({}, { text: 'é'.repeat(51) }), 'too_large', 'content.text'],
      [send({}, 'hi'), 'invalid_field', 'content'],
      [send({ priority: 'asap' }), 'invalid_field', 'priority'],
      [send({ client_id: 'has space' }), 'invalid_field', 'client_id'],
      [send({ client_id: 5 }), 'invalid_field', 'client_id'],
      [send({ client_id: 'x'.repeat(65) }), 'invalid_field', 'client_id'],
      [send({ to: 'bad user' }), 'invalid_field', 'to'],
      [send({ to: 'ann' }), 'invalid_field', 'to'],
      [send({ room }), 'invalid_field', 'to'],
      [send({ to: undefined, room: 'nope' }), 'not_member', 'room'],
      [send({ to: undefined, room: 'bad room' }), 'invalid_field', 'room'],
      [send({ to: undefined, conversation: dm('bea', 'cid') }), 'not_member', 'conversation'],
      [send({ to: undefined, conversation: 'dm:bea:ann' }), 'invalid_field', 'conversation'],
      [send({ id: 1 }), 'unknown_field', 'id'],
      [send({ seq: 1 }), 'unknown_field', 'seq'],
      [send({}, { text: 'x', caption: 'y' }), 'unknown_field', 'content.caption'],
      [send({ type: 'location' }, { lat: 91, lng: 0 }), 'invalid_field', 'content.lat'],
      [send({ type: 'location' }, { lat: 0, lng: -181 }), 'invalid_field', 'content.lng'],
      [send({ type: 'location' }, { lat: '1', lng: 0 }), 'invalid_field', 'content.lat'],
      [send({ type: 'location' }, { lat: 1 }), 'missing_field', 'content.lng'],
      [send({ type: 'image' }, { media: 'nothex' }), 'invalid_field', 'content.media'],
      [send({ type: 'image' }, { media: MEDIA }), 'not_found', 'content.media'],
      [send({ type: 'image' }, { media: MEDIA, mime: 'image/png' }), 'unknown_field', 'content.mime'],
      [send({ type: 'image' }, { media: MEDIA, width: 0 }), 'invalid_field', 'content.width'],
      [send({ type: 'file' }, { media: MEDIA, name: '../etc/passwd' }), 'invalid_field', 'content.name'],
      [send({ type: 'audio' }, { media: MEDIA, duration_ms: -1 }), 'invalid_field', 'content.duration_ms'],
      [send({ type: 'system' }, { text: 'I am the admin' }), 'forbidden', 'type'],
    ];
    for (const [payload, code, field] of cases) {
      await a.fails('send_message', payload, code, field).catch((err) => {
        throw new Error(`${JSON.stringify(payload).slice(0, 160)}: ${err.message}`);
      });
    }
    // Nothing of that was stored or delivered.
    assert.deepEqual((await a.ok('history', { conversation: dm('ann', 'bea') })).messages, []);
    await sleep(scaled(100));
    b.assertIdle('after bad sends');
    // The connection is still fine.
    const m = await a.text({ to: 'bea' }, 'still here');
    assert.equal(m.seq, 1);
    assert.deepEqual(await b.next('new_message'), m);
  });

  test('arguments that are not one object', async () => {
    const emitRaw = (ev, ...args) =>
      new Promise((resolve, reject) => {
        a.socket.timeout(scaled(5000)).emit(ev, ...args, (err, res) => (err ? reject(err) : resolve(res)));
      });
    for (const args of [[], ['text'], [42], [null], [[{ client_id: 'x' }]], [{}, {}]]) {
      const res = await emitRaw('send_message', ...args);
      assert.equal(res.ok, false);
      assert.equal(res.error.code, 'bad_request', JSON.stringify(args));
    }
    // Deeper than the limit (8).
    let deep = { v: 1 };
    for (let i = 0; i < 10; i++) deep = { v: deep };
    assert.equal((await emitRaw('sync', deep)).error.code, 'bad_request');
    await a.ok('sync', {});
  });

  test('unknown events, and every other request with bad input', async () => {
    await a.fails('delete_everything', {}, 'unknown_event');
    await a.fails('new_message', {}, 'unknown_event');
    const conv = dm('ann', 'bea');
    await a.fails('receipt', { conversation: conv, status: 'read', seq: 99 }, 'invalid_field', 'seq');
    await a.fails('receipt', { conversation: conv, status: 'seen', seq: 1 }, 'invalid_field', 'status');
    await a.fails('receipt', { conversation: conv, status: 'read' }, 'missing_field', 'seq');
    await a.fails('receipt', { conversation: dm('bea', 'cid'), status: 'read', seq: 1 }, 'not_member');
    await a.fails('receipt', { conversation: 'room:nope', status: 'read', seq: 1 }, 'not_member', 'room');
    await a.fails('receipt', { conversation: 'nonsense', status: 'read', seq: 1 }, 'invalid_field', 'conversation');
    await a.fails('receipt', { conversation: conv, status: 'read', seq: 1, user: 'bea' }, 'unknown_field', 'user');
    await a.fails('typing', { conversation: conv, state: 'maybe' }, 'invalid_field', 'state');
    await a.fails('typing', { conversation: 'room:nope', state: 'start' }, 'not_member', 'room');
    await a.fails('typing', { state: 'start' }, 'missing_field', 'conversation');
    await a.fails('sync', { since: [] }, 'invalid_field', 'since');
    await a.fails('sync', { since: { 'room:x': -1 } }, 'invalid_field', 'since');
    await a.fails('sync', { since: { 'bogus': 1 } }, 'invalid_field', 'since');
    await a.fails('sync', { limit: 0 }, 'invalid_field', 'limit');
    await a.fails('sync', { limit: 1001 }, 'invalid_field', 'limit');
    await a.fails('sync', { since: {}, from: 'bea' }, 'sender_forbidden', 'from');
    await a.fails('history', { conversation: dm('bea', 'cid') }, 'not_member');
    await a.fails('history', { conversation: conv, limit: 500 }, 'invalid_field', 'limit');
    await a.fails('history', { conversation: conv, before: 0 }, 'invalid_field', 'before');
    await a.fails('join_room', { room: 'no spaces allowed' }, 'invalid_field', 'room');
    await a.fails('join_room', {}, 'missing_field', 'room');
    await a.fails('join_room', { room: 'r', user: 'bea' }, 'unknown_field', 'user');
    await c.fails('leave_room', { room }, 'not_member', 'room');
    await c.fails('room_members', { room }, 'not_member', 'room');
    await a.fails('upload_media', { mime: 'image/png', data: 'not binary' }, 'invalid_field', 'data');
    await a.fails('upload_media', { mime: 'png', data: Buffer.from('x') }, 'invalid_field', 'mime');
    await a.fails('upload_media', { data: Buffer.from('x') }, 'missing_field', 'mime');
    await a.fails('upload_media', { mime: 'image/png', data: Buffer.alloc(0) }, 'invalid_field', 'data');
    // Still usable, and without an ack nothing is answered.
    a.socket.emit('send_message', { bogus: true });
    a.socket.emit('no_such_event', {});
    const m = await a.text({ room }, 'after all that');
    assert.deepEqual(await b.nextOf('new_message'), m);
  });
});
