// Presence end to end: parleyd's messaging service on /chat against the
// npm socket.io-client speaking docs/PROTOCOL.md ("Presence"). Several
// devices aggregated into one presence, automatic away after idleness,
// coalescing (a flap inside a window sends nothing; a burst sends at most
// two updates ending in the final state), room presence lists,
// subscriptions, who sees what, bad input, and last_seen and the status
// text surviving a SIGKILL and restart.

import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { cleanup, scaled, sleep, tempDir } from './lib/harness.mjs';
import { ChatClient, eventually, startChatServer } from './lib/chat.mjs';

let uniq = 0;
/** Fresh user names per test, so tests sharing a server do not meet. */
const users = (...names) => names.map((n) => `${n}${++uniq}`);

const INTERVAL = 1000; // --presence-interval of the main server

async function device(server, user, label) {
  const c = new ChatClient(server, { user, label });
  await c.connected();
  return c;
}

/** The presence events about `user` that `c` received so far. */
const seen = (c, user) => c.log.filter((e) => e.name === 'presence' && e.args[0].user === user).map((e) => e.args[0]);

/** Waits for a presence event about `user` matching `want` (a subset of fields); returns it. */
async function awaitPresence(c, user, want, ms = 5000) {
  return eventually(() => seen(c, user).find((p) => Object.entries(want).every(([k, v]) => p[k] === v)), ms,
    `${c.label}: presence of ${user} with ${JSON.stringify(want)}`);
}

/** A Presence without last_seen (which moves while online), after checking it. */
function shape(p, { online = true, since = 0 } = {}) {
  assert.deepEqual(Object.keys(p).sort(), ['devices', 'last_seen', 'status', 'text', 'user']);
  if (online) {
    assert.ok(Number.isInteger(p.last_seen) && Math.abs(p.last_seen - Date.now()) < 60000, `online last_seen is now: ${p.last_seen}`);
  } else if (p.last_seen !== null) {
    assert.ok(Number.isInteger(p.last_seen) && p.last_seen >= since && p.last_seen <= Date.now(), `last_seen ${p.last_seen} after ${since}`);
  }
  const { last_seen: _, ...rest } = p;
  return rest;
}

describe('presence', () => {
  let srv; // coalescing window of INTERVAL ms, no automatic away
  let idle; // away after 700 ms without events, short window

  before(async () => {
    [srv, idle] = await Promise.all([
      startChatServer({ extra: ['--presence-interval', String(INTERVAL), '--away-after', '0'] }),
      startChatServer({ extra: ['--presence-interval', '100', '--away-after', '700'] }),
    ]);
  });

  after(cleanup);

  test('several devices aggregate into one presence; offline with last_seen when all leave', async () => {
    const [ann, obs] = users('ann', 'obs');
    const a1 = await device(srv, ann, `${ann}#1`);
    const o = await device(srv, obs);
    const sub = await o.ok('presence_subscribe', { users: [ann] });
    assert.deepEqual(sub.presences.map((p) => shape(p)), [{ user: ann, status: 'online', text: '', devices: 1 }]);

    // busy alone -> busy
    let r = await a1.ok('presence_set', { status: 'busy' });
    assert.deepEqual(shape(r.presence), { user: ann, status: 'busy', text: '', devices: 1 });
    // online + busy -> online (a second device starts online)
    const a2 = await device(srv, ann, `${ann}#2`);
    r = await o.ok('presence_subscribe', { users: [ann] });
    assert.deepEqual(shape(r.presences[0]), { user: ann, status: 'online', text: '', devices: 2 });
    // away + busy -> away
    r = await a2.ok('presence_set', { status: 'away' });
    assert.deepEqual(shape(r.presence), { user: ann, status: 'away', text: '', devices: 2 });
    // busy + busy -> busy
    r = await a2.ok('presence_set', { status: 'busy' });
    assert.deepEqual(shape(r.presence), { user: ann, status: 'busy', text: '', devices: 2 });
    // online + busy -> online, set from the other side
    r = await a1.ok('presence_set', { status: 'online' });
    assert.deepEqual(shape(r.presence), { user: ann, status: 'online', text: '', devices: 2 });

    // The text is the most recently set one, whichever device set it;
    // a presence_set without text keeps it, "" clears it.
    r = await a1.ok('presence_set', { status: 'online', text: 'in a meeting' });
    assert.equal(r.presence.text, 'in a meeting');
    r = await a2.ok('presence_set', { status: 'busy', text: 'commuting 🚆' });
    assert.equal(r.presence.text, 'commuting 🚆');
    r = await a1.ok('presence_set', { status: 'online' });
    assert.deepEqual(shape(r.presence), { user: ann, status: 'online', text: 'commuting 🚆', devices: 2 });
    r = await a1.ok('presence_set', { status: 'online', text: '' });
    assert.equal(r.presence.text, '');
    r = await a2.ok('presence_set', { status: 'busy', text: 'lunch' });
    assert.equal(r.presence.text, 'lunch');

    // The user's other device hears of changes it did not make, never of
    // its own (it has the acknowledgement).
    const last1 = await awaitPresence(a1, ann, { text: 'lunch' });
    assert.deepEqual(shape(last1), { user: ann, status: 'online', text: 'lunch', devices: 2 });

    // Everyone leaves: offline, with when the last device left.
    const before = Date.now();
    a1.close();
    a2.close();
    const off = await awaitPresence(o, ann, { status: 'offline' }, 5000);
    const after = Date.now();
    assert.deepEqual(shape(off, { online: false, since: before - 5 }), { user: ann, status: 'offline', text: 'lunch', devices: 0 });
    assert.ok(off.last_seen <= after);
    assert.equal(seen(o, ann).at(-1), off, 'offline is the last word');
    r = await o.ok('presence_subscribe', { users: [ann] });
    assert.deepEqual(r.presences, [off], 'the answer to a subscription is the same state');
    o.close();
  });

  test('an idle device becomes away after --away-after; any event brings it back', async () => {
    const [ida, obs] = users('ida', 'obs');
    const t0 = Date.now();
    const i1 = await device(idle, ida, `${ida}#1`);
    const i2 = await device(idle, ida, `${ida}#2`);
    const o = await device(idle, obs);
    await o.ok('presence_subscribe', { users: [ida] });
    await i2.ok('presence_set', { status: 'busy' });
    // i1 (online, no events) goes away; away + busy -> away.
    const away = await awaitPresence(o, ida, { status: 'away' }, 5000);
    assert.ok(Date.now() - t0 >= 700, 'not before the idle time');
    assert.deepEqual(shape(away), { user: ida, status: 'away', text: '', devices: 2 });
    // Any event from i1 is activity: online again (its ack already says so).
    const r = await i1.ok('presence_subscribe', { users: [ida] });
    assert.deepEqual(shape(r.presences[0]), { user: ida, status: 'online', text: '', devices: 2 });
    await awaitPresence(o, ida, { status: 'online' }, 5000);
    // A busy device stays busy however idle it is.
    i1.close();
    const busy = await awaitPresence(o, ida, { devices: 1 }, 5000);
    assert.equal(busy.status, 'busy');
    await sleep(scaled(1000));
    assert.deepEqual(shape(seen(o, ida).at(-1)), { user: ida, status: 'busy', text: '', devices: 1 });
    // An explicit away stays away after activity.
    await i2.ok('presence_set', { status: 'away' });
    await awaitPresence(o, ida, { status: 'away' }, 5000);
    const again = await i2.ok('presence_subscribe', { users: [ida] });
    assert.equal(again.presences[0].status, 'away');
    i2.close();
    o.close();
  });

  test('coalescing: a connect/disconnect flap inside the window sends nothing; a burst sends at most two', async () => {
    const [eve, obs] = users('eve', 'obs');
    const o = await device(srv, obs);
    const sub = await o.ok('presence_subscribe', { users: [eve] });
    assert.deepEqual(sub.presences, [{ user: eve, status: 'offline', text: '', last_seen: null, devices: 0 }]);

    // The first change goes out at once and opens the window.
    const t0 = Date.now();
    const e1 = await device(srv, eve, `${eve}#1`);
    const first = await awaitPresence(o, eve, { status: 'online' }, 2000);
    assert.ok(Date.now() - t0 < INTERVAL, 'the first change is not held');
    assert.deepEqual(shape(first), { user: eve, status: 'online', text: '', devices: 1 });
    // A second device comes and goes inside the window: nothing.
    const e2 = await device(srv, eve, `${eve}#2`);
    e2.close();
    await sleep(INTERVAL + 700);
    assert.equal(seen(o, eve).length, 1, `flap sent ${JSON.stringify(seen(o, eve).slice(1))}`);

    // The window has closed: a burst of N changes gives the first at once
    // and at most one more, with the final state.
    const N = 12;
    const statuses = ['busy', 'away', 'online'];
    for (let i = 0; i < N; i++) {
      const status = statuses[i % 3];
      await e1.ok('presence_set', { status, text: i === N - 1 ? 'final' : `step ${i}` });
    }
    await e1.ok('presence_set', { status: 'away' });
    await sleep(INTERVAL + 700);
    const burst = seen(o, eve).slice(1);
    assert.ok(burst.length >= 1 && burst.length <= 2, `burst sent ${burst.length}: ${JSON.stringify(burst)}`);
    assert.deepEqual(shape(burst.at(-1)), { user: eve, status: 'away', text: 'final', devices: 1 });
    e1.close();
    o.close();
  });

  test('room presence lists, room members and subscribers see updates, nobody else does', async () => {
    const [amy, ben, cat, dan] = users('amy', 'ben', 'cat', 'dan');
    const room = `pres${uniq}`;
    const other = `other${uniq}`;
    const a = await device(srv, amy);
    const b = await device(srv, ben);
    const c = await device(srv, cat);
    const d = await device(srv, dan);
    await a.ok('join_room', { room });
    await b.ok('join_room', { room });
    await c.ok('join_room', { room: other });
    await d.ok('presence_subscribe', { users: [ben] });
    await a.ok('presence_subscribe', { users: [ben] }); // a shares a room too: still one copy

    const list = await a.ok('presence_room', { room });
    assert.equal(list.room, room);
    assert.deepEqual(list.presences.map((p) => shape(p)), [
      { user: amy, status: 'online', text: '', devices: 1 },
      { user: ben, status: 'online', text: '', devices: 1 },
    ]);
    await c.fails('presence_room', { room }, 'not_member', 'room');
    await c.fails('presence_room', { room: 'no-such-room' }, 'not_member', 'room');

    // Past the window ben's connection opened, so that the change goes
    // out at once (and not to the device that made it).
    await sleep(INTERVAL + 100);
    const base = { a: seen(a, ben).length, d: seen(d, ben).length };
    await b.ok('presence_set', { status: 'busy', text: 'do not disturb' });
    const want = { user: ben, status: 'busy', text: 'do not disturb', devices: 1 };
    assert.deepEqual(shape(await awaitPresence(a, ben, { status: 'busy' })), want);
    assert.deepEqual(shape(await awaitPresence(d, ben, { status: 'busy' })), want);
    await sleep(INTERVAL + 300);
    assert.equal(seen(a, ben).length, base.a + 1, 'a room member who also subscribed gets one copy');
    assert.equal(seen(d, ben).length, base.d + 1);
    assert.deepEqual(seen(c, ben), [], 'a user sharing no room and not subscribed hears nothing');
    assert.deepEqual(seen(b, ben), [], 'the device that set it has the acknowledgement');

    // Unsubscribed: no more updates to d; the room member still gets them.
    assert.deepEqual(await d.ok('presence_unsubscribe', { users: [ben] }), { ok: true });
    await d.ok('presence_unsubscribe', { users: [ben, 'never-subscribed'] });
    await b.ok('presence_set', { status: 'away' });
    await awaitPresence(a, ben, { status: 'away' }, 3000);
    await sleep(300);
    assert.equal(seen(d, ben).filter((p) => p.status === 'away').length, 0, 'unsubscribed');

    // Leaving the room stops room updates too.
    await a.ok('presence_unsubscribe', { users: [ben] });
    await a.ok('leave_room', { room });
    const n = seen(a, ben).length;
    await sleep(INTERVAL);
    await b.ok('presence_set', { status: 'online' });
    await sleep(INTERVAL + 300);
    assert.equal(seen(a, ben).length, n, 'a former member who is not subscribed hears nothing');
    for (const x of [a, b, c, d]) x.close();
  });

  test('bad input is refused with the messaging error format', async () => {
    const [bad] = users('bad');
    const x = await device(srv, bad);
    await x.fails('presence_set', { status: 'sleeping' }, 'invalid_field', 'status');
    await x.fails('presence_set', { status: 'offline' }, 'invalid_field', 'status');
    await x.fails('presence_set', { status: 3 }, 'invalid_field', 'status');
    await x.fails('presence_set', {}, 'missing_field', 'status');
    await x.fails('presence_set', { status: 'online', mood: 'x' }, 'unknown_field', 'mood');
    await x.fails('presence_set', { status: 'online', text: 'x'.repeat(129) }, 'too_large', 'text');
    await x.fails('presence_set', { status: 'online', text: 'é'.repeat(65) }, 'too_large', 'text');
    await x.fails('presence_set', { status: 'online', text: 7 }, 'invalid_field', 'text');
    await x.fails('presence_set', { status: 'online', text: 'two\nlines' }, 'invalid_field', 'text');
    await x.fails('presence_set', 'online', 'bad_request');
    // 128 bytes is the limit, counted in UTF-8 bytes.
    const ok = await x.ok('presence_set', { status: 'online', text: 'é'.repeat(64) });
    assert.equal(ok.presence.text, 'é'.repeat(64));
    // The failed requests changed nothing.
    assert.equal(ok.presence.status, 'online');

    const many = Array.from({ length: 101 }, (_, i) => `u${i}`);
    await x.fails('presence_subscribe', { users: many }, 'too_large', 'users');
    await x.ok('presence_subscribe', { users: many.slice(0, 100) });
    await x.fails('presence_subscribe', { users: [] }, 'invalid_field', 'users');
    await x.fails('presence_subscribe', { users: ['not valid!'] }, 'invalid_field', 'users');
    await x.fails('presence_subscribe', { users: 'amy' }, 'invalid_field', 'users');
    await x.fails('presence_subscribe', {}, 'missing_field', 'users');
    await x.fails('presence_unsubscribe', { users: many }, 'too_large', 'users');
    await x.fails('presence_room', {}, 'missing_field', 'room');
    await x.fails('presence_room', { room: 'bad room' }, 'invalid_field', 'room');
    x.close();
  });

  test('last_seen and the status text survive a SIGKILL and restart', async () => {
    const dataDir = path.join(tempDir(), 'data');
    let s = await startChatServer({ dataDir, extra: ['--presence-interval', '100'] });
    const [liz, obs, nobody] = users('liz', 'obs', 'nobody');
    const l = await device(s, liz);
    const o = await device(s, obs);
    await o.ok('presence_subscribe', { users: [liz] });
    await l.ok('presence_set', { status: 'busy', text: 'gone fishing' });
    l.close();
    // The event goes out after the commit: what it says is stored.
    const off = await awaitPresence(o, liz, { status: 'offline' });
    assert.ok(Number.isInteger(off.last_seen));
    s.child.kill('SIGKILL');
    await s.child.exitPromise;

    s = await startChatServer({ dataDir, port: s.port, extra: ['--presence-interval', '100'] });
    const o2 = await device(s, obs);
    const r = await o2.ok('presence_subscribe', { users: [liz, nobody] });
    assert.deepEqual(r.presences, [
      { user: liz, status: 'offline', text: 'gone fishing', last_seen: off.last_seen, devices: 0 },
      { user: nobody, status: 'offline', text: '', last_seen: null, devices: 0 },
    ]);
    o2.close();
  });
});
