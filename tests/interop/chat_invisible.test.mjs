// "Appear offline" end to end: parleyd's messaging service on /chat against
// the npm socket.io-client (docs/PROTOCOL.md, "Presence", invisible).
// presence_set {"invisible": true} makes every device of the user look
// offline to everyone else (subscribers, room members, room presence
// lists), with last_seen frozen at the moment it was turned on; the
// user's own devices see the true state with invisible: true; typing is
// not relayed; the choice survives reconnecting and a SIGKILL and
// restart; turning it off shows the true state again; bad values are
// refused like the other presence fields.

import assert from 'node:assert/strict';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { cleanup, sleep, tempDir } from './lib/harness.mjs';
import { ChatClient, eventually, online, startChatServer } from './lib/chat.mjs';

let uniq = 0;
const users = (...names) => names.map((n) => `${n}inv${++uniq}`);
const EXTRA = ['--presence-interval', '100', '--away-after', '0'];

async function device(server, user, label) {
  const c = new ChatClient(server, { user, label });
  await c.connected();
  return c;
}

const seen = (c, user) => c.log.filter((e) => e.name === 'presence' && e.args[0].user === user).map((e) => e.args[0]);

async function awaitPresence(c, user, want, ms = 5000) {
  return eventually(() => seen(c, user).find((p) => Object.entries(want).every(([k, v]) => p[k] === v)), ms,
    `${c.label}: presence of ${user} with ${JSON.stringify(want)}`);
}

describe('appear offline (invisible)', () => {
  after(cleanup);

  test('others see offline with a frozen last_seen; own devices see the truth; it survives a restart', async () => {
    const dataDir = path.join(tempDir(), 'data');
    let s = await startChatServer({ dataDir, extra: EXTRA });
    const [amy, obs, bob] = users('amy', 'obs', 'bob');
    const room = `inv${uniq}`;
    const a1 = await device(s, amy, `${amy}#1`);
    const a2 = await device(s, amy, `${amy}#2`);
    const o = await device(s, obs);
    const b = await online(s, bob);
    await a1.ok('join_room', { room });
    await b.ok('join_room', { room });
    await a1.ok('presence_set', { status: 'busy', text: 'heads down' });
    await a2.ok('presence_set', { status: 'busy' });
    const sub = await o.ok('presence_subscribe', { users: [amy] });
    assert.equal(sub.presences[0].status, 'busy');
    assert.equal(sub.presences[0].devices, 2);
    await sleep(300); // past the coalescing window

    // On, from one device: one transition to offline for everyone else,
    // as if the last device had left; the text stays (offline users keep it).
    const base = { o: seen(o, amy).length, b: seen(b, amy).length };
    const t0 = Date.now();
    const on = await a1.ok('presence_set', { invisible: true });
    const t1 = Date.now();
    assert.deepEqual({ ...on.presence, last_seen: 0 },
      { user: amy, status: 'busy', text: 'heads down', last_seen: 0, devices: 2, invisible: true });
    const off = await awaitPresence(o, amy, { status: 'offline' });
    assert.deepEqual(Object.keys(off).sort(), ['devices', 'last_seen', 'status', 'text', 'user'], 'nothing tells others why');
    assert.equal(off.devices, 0);
    assert.equal(off.text, 'heads down');
    assert.ok(off.last_seen >= t0 - 5 && off.last_seen <= t1 + 5, `frozen at the switch: ${off.last_seen} in [${t0}, ${t1}]`);
    const offB = await awaitPresence(b, amy, { status: 'offline' });
    assert.deepEqual(offB, off, 'a room member hears the same');
    // The other device of the user hears the true state.
    const mine = await awaitPresence(a2, amy, { invisible: true });
    assert.equal(mine.status, 'busy');
    assert.equal(mine.devices, 2);
    assert.ok(!seen(a2, amy).some((p) => p.status === 'offline'), 'own devices never see themselves offline');

    // Answers: others get offline, the user the truth.
    let r = await o.ok('presence_subscribe', { users: [amy] });
    assert.deepEqual(r.presences, [off]);
    r = await b.ok('presence_room', { room });
    assert.deepEqual(r.presences.find((p) => p.user === amy), off);
    r = await a2.ok('presence_room', { room });
    const self = r.presences.find((p) => p.user === amy);
    assert.equal(self.status, 'busy');
    assert.equal(self.invisible, true);
    r = await a2.ok('presence_subscribe', { users: [amy] });
    assert.equal(r.presences[0].invisible, true);

    // Activity, devices leaving and coming: nothing reaches others, and
    // last_seen stays where it was.
    await a1.ok('typing', { conversation: `room:${room}`, state: 'start' });
    await a1.text({ room }, 'a message still goes out (it is data)');
    await b.nextOf('new_message');
    a2.close();
    const a3 = await device(s, amy, `${amy}#3`);
    await a3.ok('presence_set', { status: 'online' });
    await sleep(500);
    assert.equal(seen(o, amy).length, base.o + 1, `one transition only: ${JSON.stringify(seen(o, amy))}`);
    assert.equal(seen(b, amy).length, base.b + 1);
    assert.equal(seen(o, amy).at(-1), off);
    assert.ok(!b.log.some((e) => e.name === 'typing'), 'typing is not relayed while invisible');
    r = await o.ok('presence_subscribe', { users: [amy] });
    assert.deepEqual(r.presences, [off]);

    // Every device gone and back, then a SIGKILL and restart: still invisible.
    a1.close();
    a3.close();
    await sleep(300);
    assert.equal(seen(o, amy).length, base.o + 1, `the last device leaving says nothing: ${JSON.stringify(seen(o, amy))}`);
    assert.equal(seen(b, amy).length, base.b + 1);
    s.child.kill('SIGKILL');
    await s.child.exitPromise;
    s = await startChatServer({ dataDir, port: s.port, extra: EXTRA });
    const o2 = await device(s, obs);
    const a4 = await device(s, amy, `${amy}#4`);
    r = await o2.ok('presence_subscribe', { users: [amy] });
    assert.deepEqual(r.presences, [off], 'after the restart, with the device connected');
    r = await a4.ok('presence_set', { status: 'away' });
    assert.equal(r.presence.invisible, true, 'the choice was stored');
    assert.equal(r.presence.status, 'away');
    await sleep(300);
    assert.deepEqual(seen(o2, amy), [], 'a reconnecting invisible user sends nothing to others');

    // Off: the true state for everyone, last seen resumes (now).
    const t2 = Date.now();
    const back = await a4.ok('presence_set', { invisible: false });
    assert.equal(back.presence.invisible, undefined);
    assert.equal(back.presence.status, 'away');
    const vis = await awaitPresence(o2, amy, { status: 'away' });
    assert.equal(vis.devices, 1);
    assert.equal(vis.invisible, undefined);
    assert.ok(vis.last_seen >= t2 - 5, 'last seen moves again');
    a4.close();
    const gone = await awaitPresence(o2, amy, { status: 'offline' });
    assert.ok(gone.last_seen >= t2 - 5, `last seen is the disconnection: ${gone.last_seen}`);
    o2.close();
    o.close();
    b.close();
  });

  test('bad values are refused with the field; a refused request changes nothing', async () => {
    const s = await startChatServer({ extra: EXTRA });
    const [bad] = users('bad');
    const x = await device(s, bad);
    for (const v of [1, 0, 'true', null, [], {}]) await x.fails('presence_set', { invisible: v }, 'invalid_field', 'invisible');
    await x.fails('presence_set', { status: 'online', invisible: 'no' }, 'invalid_field', 'invisible');
    await x.fails('presence_set', { invisible: true, status: 'offline' }, 'invalid_field', 'status');
    await x.fails('presence_set', {}, 'missing_field', 'status');
    await x.fails('presence_set', { text: 'only text' }, 'missing_field', 'status');
    const r = await x.ok('presence_set', { status: 'online' });
    assert.equal(r.presence.invisible, undefined, 'the refusals turned nothing on');
    const on = await x.ok('presence_set', { invisible: true, text: 'x' });
    assert.equal(on.presence.invisible, true);
    assert.equal(on.presence.text, 'x');
    assert.equal(on.presence.status, 'online', 'status not given: kept');
    x.close();
  });
});
