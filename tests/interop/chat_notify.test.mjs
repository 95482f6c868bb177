// Notifications end to end: parleyd's messaging service on /chat against
// the npm socket.io-client speaking docs/PROTOCOL.md ("Notifications"):
// the notifier role, live `notification` events acknowledged by the
// device (delivered), unread counts across devices, read by ids and all,
// dedupe, expiry, suppression by preferences (types, in_app, muted users,
// quiet hours in a real IANA zone) with urgent always pushed, urgent
// messages raising notifications, the HTTP API with API keys, and
// everything stored surviving a SIGKILL and restart.

import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { cleanup, sleep, tempDir } from './lib/harness.mjs';
import { ChatClient, eventually, httpRequest, makeToken, startChatServer } from './lib/chat.mjs';

const API_KEY = 'notify-api-key-0123456789abcdef';

let uniq = 0;
const users = (...names) => names.map((n) => `${n}${++uniq}`);

async function device(server, user, { role, label } = {}) {
  const c = new ChatClient(server, { user, label, token: makeToken(user, role ? { claims: { role } } : {}) });
  await c.connected();
  return c;
}

/** The notification events `c` received (the Notification objects). */
const pushed = (c) => c.log.filter((e) => e.name === 'notification').map((e) => e.args[0]);
/** The unread counts `c` received, in order. */
const unreads = (c) => c.log.filter((e) => e.name === 'unread').map((e) => e.args[0].count);

/** Waits until `c` got an `unread` event with count n. */
const awaitUnread = (c, n) => eventually(() => unreads(c).includes(n), 5000, `${c.label}: unread ${n}`);

/** Acknowledges the live notification with id `id` on `c`. */
function ackPush(c, id) {
  const e = c.log.find((x) => x.name === 'notification' && x.args[0].id === id);
  assert.ok(e, `${c.label} got notification ${id}`);
  assert.equal(typeof e.args.at(-1), 'function', 'the notification event asks for an acknowledgement');
  e.args.at(-1)();
}

function checkShape(n) {
  assert.deepEqual(Object.keys(n).sort(), ['actions', 'body', 'created', 'dedupe_key', 'delivered', 'expires', 'from',
    'id', 'image', 'priority', 'read', 'title', 'type'].sort());
  assert.ok(Number.isInteger(n.id) && n.id > 0);
  assert.ok(Math.abs(n.created - Date.now()) < 60000);
}

const post = (port, body, { key = API_KEY, type = 'application/json', method = 'POST' } = {}) => {
  const headers = { 'Content-Type': type };
  if (key !== null) headers.Authorization = `Bearer ${key}`;
  return httpRequest(port, method, '/api/notifications', { headers, body: typeof body === 'string' ? body : JSON.stringify(body) });
};

/** Minutes after midnight in Asia/Kolkata (UTC+05:30, no DST) at `ms`. */
const kolkataMinutes = (ms = Date.now()) => Math.floor((ms / 60000 + 330) % 1440);
const hhmm = (m) => `${String(Math.floor(((m % 1440) + 1440) % 1440 / 60)).padStart(2, '0')}:${String((((m % 1440) + 1440) % 1440) % 60).padStart(2, '0')}`;

describe('notifications', () => {
  let srv;
  let keyFile;

  before(async () => {
    keyFile = path.join(tempDir(), 'keys');
    writeFileSync(keyFile, `# test keys\n\n  ${API_KEY}  \nanother-key-0123456789abcdef\n`);
    srv = await startChatServer({ extra: ['--api-key-file', keyFile] });
  });

  after(cleanup);

  test('notify needs the notifier or admin role; its answers and errors', async () => {
    const [plain, noti, adm, bob] = users('plain', 'noti', 'adm', 'bob');
    const p = await device(srv, plain);
    const err = await p.fails('notify', { to: bob, type: 'system', title: 'hi' }, 'forbidden');
    assert.equal(err.field, undefined);
    const n = await device(srv, noti, { role: 'notifier' });
    const a = await device(srv, adm, { role: 'admin' });
    const r = await n.ok('notify', { to: bob, type: 'assignment', title: 'Task', body: 'do it', image: 'https://x.example/i.png',
      actions: [{ id: 'open', label: 'Open' }, { id: 'later.1', label: 'Later' }], dedupe_key: 'k1' });
    assert.equal(r.duplicate, false);
    checkShape(r.notification);
    assert.deepEqual({ ...r.notification, id: 0, created: 0 }, { id: 0, created: 0, type: 'assignment', priority: 'normal', title: 'Task',
      body: 'do it', image: 'https://x.example/i.png', actions: [{ id: 'open', label: 'Open' }, { id: 'later.1', label: 'Later' }],
      from: noti, expires: null, dedupe_key: 'k1', delivered: false, read: false });
    const r2 = await a.ok('notify', { to: bob, type: 'system', title: 'From admin' });
    assert.ok(r2.notification.id > r.notification.id, 'ids increase');
    assert.equal(r2.notification.body, '');
    await n.fails('notify', { to: bob, type: 'system' }, 'missing_field', 'title');
    await n.fails('notify', { to: bob, type: 'nope', title: 't' }, 'invalid_field', 'type');
    await n.fails('notify', { to: bob, type: 'alert', title: 't', priority: 'max' }, 'invalid_field', 'priority');
    await n.fails('notify', { to: bob, type: 'alert', title: 'x'.repeat(257) }, 'too_large', 'title');
    await n.fails('notify', { to: bob, type: 'alert', title: 't', image: 'ftp://x/y' }, 'invalid_field', 'image');
    await n.fails('notify', { to: bob, type: 'alert', title: 't', expires_at: Date.now() - 1 }, 'invalid_field', 'expires_at');
    await n.fails('notify', { to: bob, type: 'alert', title: 't', actions: [{ id: 'a b', label: 'x' }] }, 'invalid_field', 'actions[0].id');
    await n.fails('notify', { to: bob, type: 'alert', title: 't', color: 'red' }, 'unknown_field', 'color');
    await n.fails('notify', { to: 'bad user', type: 'alert', title: 't' }, 'invalid_field', 'to');
    [p, n, a].forEach((c) => c.close());
  });

  test('live push to every device, ack -> delivered, unread across devices, read by ids and all, dedupe', async () => {
    const [noti, bob] = users('noti', 'bob');
    const n = await device(srv, noti, { role: 'notifier' });
    const b1 = await device(srv, bob, { label: `${bob}#1` });
    const b2 = await device(srv, bob, { label: `${bob}#2` });
    const first = (await n.ok('notify', { to: bob, type: 'mention', title: 'one', dedupe_key: 'd1' })).notification;
    await eventually(() => pushed(b1).length === 1 && pushed(b2).length === 1, 5000, 'both devices pushed');
    assert.deepEqual(pushed(b1)[0], first);
    await awaitUnread(b1, 1);
    await awaitUnread(b2, 1);
    // The first device's ack marks it delivered: a dedupe resend answers the stored state.
    ackPush(b1, first.id);
    await eventually(async () => (await n.ok('notify', { to: bob, type: 'mention', title: 'one', dedupe_key: 'd1' })).notification.delivered,
      5000, 'delivered after the ack');
    const dup = await n.ok('notify', { to: bob, type: 'alert', title: 'different', dedupe_key: 'd1' });
    assert.equal(dup.duplicate, true);
    assert.equal(dup.notification.id, first.id);
    assert.equal(dup.notification.title, 'one', 'the first one wins');
    // A notification nobody acknowledged stays undelivered until a sync returns it.
    const second = (await n.ok('notify', { to: bob, type: 'mention', title: 'two', dedupe_key: 'd2' })).notification;
    await awaitUnread(b2, 2);
    assert.equal((await n.ok('notify', { to: bob, type: 'mention', title: 'two', dedupe_key: 'd2' })).notification.delivered, false);
    assert.equal(pushed(b1).length, 2, 'duplicates are not pushed again');
    const third = (await n.ok('notify', { to: bob, type: 'mention', title: 'three' })).notification;
    await awaitUnread(b2, 3);
    let s = await b2.ok('notifications_sync', {});
    assert.deepEqual(s.notifications.map((x) => x.id), [first.id, second.id, third.id]);
    assert.ok(s.notifications.every((x) => x.delivered && !x.read));
    assert.equal(s.unread, 3);
    assert.equal(s.more, false);
    s = await b2.ok('notifications_sync', { since: first.id, limit: 1 });
    assert.deepEqual([s.notifications.map((x) => x.id), s.more], [[second.id], true]);
    assert.equal((await n.ok('notify', { to: bob, type: 'mention', title: 'two', dedupe_key: 'd2' })).notification.delivered, true,
      'what a sync returns is delivered');
    // Read on one device: the other hears the new count.
    const before = unreads(b2).length;
    let r = await b1.ok('notifications_read', { ids: [first.id, 999999999] });
    assert.equal(r.unread, 2);
    await eventually(() => unreads(b2).length > before && unreads(b2).at(-1) === 2, 5000, 'unread 2 on the other device');
    // Someone else's ids are ignored.
    const [eve] = users('eve');
    const e = await device(srv, eve);
    assert.equal((await e.ok('notifications_read', { ids: [second.id] })).unread, 0);
    assert.equal((await b1.ok('notifications_sync', {})).unread, 2);
    r = await b2.ok('notifications_read', { all: true });
    assert.equal(r.unread, 0);
    await awaitUnread(b1, 0);
    s = await b1.ok('notifications_sync', {});
    assert.ok(s.notifications.every((x) => x.read));
    await b1.fails('notifications_read', {}, 'missing_field', 'ids');
    await b1.fails('notifications_read', { ids: [] }, 'invalid_field', 'ids');
    await b1.fails('notifications_read', { all: false }, 'invalid_field', 'all');
    await b1.fails('notifications_read', { ids: Array.from({ length: 501 }, (_, i) => i + 1) }, 'too_large', 'ids');
    await b1.fails('notifications_sync', { limit: 501 }, 'invalid_field', 'limit');
    await b1.fails('notifications_sync', { since: -1 }, 'invalid_field', 'since');
    [n, b1, b2, e].forEach((c) => c.close());
  });

  test('expiry: gone from sync and unread, with an unread event', async () => {
    const [noti, bob] = users('noti', 'bob');
    const n = await device(srv, noti, { role: 'notifier' });
    const b = await device(srv, bob);
    const keep = (await n.ok('notify', { to: bob, type: 'reminder', title: 'stays' })).notification;
    const short = (await n.ok('notify', { to: bob, type: 'reminder', title: 'short', expires_at: Date.now() + 700, dedupe_key: 'exp' })).notification;
    assert.ok(Number.isInteger(short.expires));
    await awaitUnread(b, 2);
    assert.deepEqual((await b.ok('notifications_sync', {})).notifications.map((x) => x.id), [keep.id, short.id]);
    await eventually(() => unreads(b).at(-1) === 1, 5000, 'unread back to 1 after the expiry');
    const s = await b.ok('notifications_sync', {});
    assert.deepEqual([s.notifications.map((x) => x.id), s.unread], [[keep.id], 1]);
    // An expired dedupe key no longer matches.
    const again = await n.ok('notify', { to: bob, type: 'reminder', title: 'new', dedupe_key: 'exp' });
    assert.equal(again.duplicate, false);
    [n, b].forEach((c) => c.close());
  });

  test('preferences: defaults, set, errors; suppression by type, in_app and muted user, urgent too', async () => {
    const [noti, other, bob] = users('noti', 'other', 'bob');
    const n = await device(srv, noti, { role: 'notifier' });
    const o = await device(srv, other, { role: 'notifier' });
    const b = await device(srv, bob);
    const all = { message: true, mention: true, assignment: true, deadline: true, system: true, achievement: true, reminder: true, alert: true };
    let r = await b.ok('notification_prefs_get', {});
    assert.deepEqual(r.prefs, { in_app: true, push: true, types: all, quiet_hours: null, muted_users: [], muted_rooms: [] });
    r = await b.ok('notification_prefs_set', { types: { reminder: false } });
    assert.deepEqual(r.prefs.types, { ...all, reminder: false });
    await b.fails('notification_prefs_set', { types: { bogus: true } }, 'invalid_field', 'types');
    await b.fails('notification_prefs_set', { in_app: 1 }, 'invalid_field', 'in_app');
    await b.fails('notification_prefs_set', { muted_users: ['bad id'] }, 'invalid_field', 'muted_users');
    await b.fails('notification_prefs_set', { muted_users: Array.from({ length: 1001 }, (_, i) => `u${i}`) }, 'too_large', 'muted_users');
    await b.fails('notification_prefs_set', { quiet_hours: { start: '22:00', end: '22:00', tz: 'Asia/Kolkata' } }, 'invalid_field', 'quiet_hours.end');
    await b.fails('notification_prefs_set', { quiet_hours: { start: '24:00', end: '07:00', tz: 'Asia/Kolkata' } }, 'invalid_field', 'quiet_hours.start');
    await b.fails('notification_prefs_set', { quiet_hours: { start: '22:00', end: '07:00', tz: 'Mars/Olympus_Mons' } }, 'invalid_field', 'quiet_hours.tz');
    await b.fails('notification_prefs_set', { quiet_hours: { start: '22:00', end: '07:00', tz: '../etc/passwd' } }, 'invalid_field', 'quiet_hours.tz');
    await b.fails('notification_prefs_set', { colour: 1 }, 'unknown_field', 'colour');
    assert.deepEqual((await b.ok('notification_prefs_get', {})).prefs.types, { ...all, reminder: false }, 'a failed set changes nothing');

    // Switched-off type: stored, counted, not pushed; arrives with sync.
    const off = (await n.ok('notify', { to: bob, type: 'reminder', title: 'off' })).notification;
    await awaitUnread(b, 1);
    const on = (await n.ok('notify', { to: bob, type: 'alert', title: 'on' })).notification;
    await awaitUnread(b, 2);
    assert.deepEqual(pushed(b).map((x) => x.id), [on.id]);
    // The recipient stays in control: a type switched off is off for
    // urgent notifications too (urgent passes quiet hours only).
    await n.ok('notify', { to: bob, type: 'reminder', priority: 'urgent', title: 'urgent' });
    await awaitUnread(b, 3);
    assert.deepEqual(pushed(b).map((x) => x.id), [on.id]);
    // in_app off: nothing is pushed, urgent neither.
    await b.ok('notification_prefs_set', { in_app: false, types: {} });
    await n.ok('notify', { to: bob, type: 'alert', priority: 'urgent', title: 'quiet' });
    await awaitUnread(b, 4);
    assert.equal(pushed(b).length, 1);
    // A muted sender, urgent or not; another one still gets through.
    r = await b.ok('notification_prefs_set', { in_app: true, muted_users: [noti] });
    assert.deepEqual([r.prefs.in_app, r.prefs.muted_users, r.prefs.types], [true, [noti], all]);
    await n.ok('notify', { to: bob, type: 'alert', priority: 'urgent', title: 'muted' });
    await awaitUnread(b, 5);
    const fromOther = (await o.ok('notify', { to: bob, type: 'alert', title: 'not muted' })).notification;
    await awaitUnread(b, 6);
    assert.deepEqual(pushed(b).map((x) => x.id), [on.id, fromOther.id]);
    const s = await b.ok('notifications_sync', {});
    assert.equal(s.notifications.length, 6, 'suppressed ones come with sync');
    assert.ok(s.notifications.some((x) => x.id === off.id));
    [n, o, b].forEach((c) => c.close());
  });

  test('quiet hours in Asia/Kolkata, crossing midnight', async () => {
    const [noti, bob] = users('noti', 'bob');
    const n = await device(srv, noti, { role: 'notifier' });
    const b = await device(srv, bob);
    // A window of 23.5 hours that contains now, starting 60 min from now
    // (local) and wrapping past midnight to 30 min from now.
    let now = kolkataMinutes();
    const inside = { start: hhmm(now + 60), end: hhmm(now + 30), tz: 'Asia/Kolkata' };
    const r = await b.ok('notification_prefs_set', { quiet_hours: inside });
    assert.deepEqual(r.prefs.quiet_hours, inside);
    await n.ok('notify', { to: bob, type: 'alert', title: 'in quiet hours' });
    await awaitUnread(b, 1);
    const urgent = (await n.ok('notify', { to: bob, type: 'alert', priority: 'urgent', title: 'urgent' })).notification;
    await awaitUnread(b, 2);
    assert.deepEqual(pushed(b).map((x) => x.id), [urgent.id]);
    // The half hour that does not contain now.
    now = kolkataMinutes();
    await b.ok('notification_prefs_set', { quiet_hours: { start: hhmm(now + 30), end: hhmm(now + 60), tz: 'Asia/Kolkata' } });
    const loud = (await n.ok('notify', { to: bob, type: 'alert', title: 'outside' })).notification;
    await awaitUnread(b, 3);
    assert.deepEqual(pushed(b).map((x) => x.id), [urgent.id, loud.id]);
    const cleared = await b.ok('notification_prefs_set', { quiet_hours: null });
    assert.equal(cleared.prefs.quiet_hours, null);
    [n, b].forEach((c) => c.close());
  });

  test('urgent messages: from a contact they pass quiet hours; from a stranger they are high; muted never', async () => {
    const [ann, bob] = users('ann', 'bob');
    const a = await device(srv, ann);
    const b = await device(srv, bob);
    // bob is inside quiet hours (a window of 23.5 h around now).
    const now = kolkataMinutes();
    await b.ok('notification_prefs_set', { quiet_hours: { start: hhmm(now + 60), end: hhmm(now + 30), tz: 'Asia/Kolkata' } });
    // ann is a stranger to bob: her urgent DM notifies him as high, and
    // quiet hours hold it back (it comes with sync).
    const cold = await a.ok('send_message', { client_id: `c-${uniq}`, to: bob, type: 'text', content: { text: 'buy now' }, priority: 'urgent' });
    await awaitUnread(b, 1);
    assert.equal(pushed(b).length, 0);
    let s = await b.ok('notifications_sync', {});
    assert.deepEqual(s.notifications.map((x) => [x.priority, x.dedupe_key]), [['high', `message:${cold.message.id}`]]);
    // bob writes to ann: she is a contact now, her urgent passes quiet hours.
    await b.ok('send_message', { client_id: `r-${uniq}`, to: ann, type: 'text', content: { text: 'who is this?' } });
    const text = `${'é'.repeat(200)}`;
    const sent = await a.ok('send_message', { client_id: `u-${uniq}`, to: bob, type: 'text', content: { text }, priority: 'urgent' });
    await eventually(() => pushed(b).length === 1, 5000, 'notification of the urgent message');
    const got = pushed(b)[0];
    assert.deepEqual({ ...got, id: 0, created: 0 }, { id: 0, created: 0, type: 'message', priority: 'urgent', title: ann,
      body: 'é'.repeat(128), image: null, actions: [], from: ann, expires: null, dedupe_key: `message:${sent.message.id}`,
      delivered: false, read: false });
    await awaitUnread(b, 2);
    // A normal message raises nothing.
    await a.ok('send_message', { client_id: `n-${uniq}`, to: bob, type: 'text', content: { text: 'hi' } });
    await a.ok('send_message', { client_id: `l-${uniq}`, to: bob, type: 'location', content: { lat: 1, lng: 2 }, priority: 'urgent' });
    await eventually(() => pushed(b).length === 2, 5000, 'second urgent message');
    assert.equal(pushed(b)[1].body, '[location]');
    // Muted: stored and counted, never pushed, urgent or not.
    await b.ok('notification_prefs_set', { muted_users: [ann] });
    await a.ok('send_message', { client_id: `m-${uniq}`, to: bob, type: 'text', content: { text: 'now!' }, priority: 'urgent' });
    await awaitUnread(b, 4);
    assert.equal(pushed(b).length, 2);
    s = await b.ok('notifications_sync', {});
    assert.equal(s.notifications.length, 4);
    [a, b].forEach((c) => c.close());
  });

  test('quiet_hours.min_priority: "high" lets high and urgent through quiet hours, normal waits', async () => {
    const [noti, bob] = users('noti', 'bob');
    const n = await device(srv, noti, { role: 'notifier' });
    const b = await device(srv, bob);
    const now = kolkataMinutes();
    const quiet = { start: hhmm(now + 60), end: hhmm(now + 30), tz: 'Asia/Kolkata' };
    await b.fails('notification_prefs_set', { quiet_hours: { ...quiet, min_priority: 'low' } }, 'invalid_field', 'quiet_hours.min_priority');
    await b.fails('notification_prefs_set', { quiet_hours: { ...quiet, min_priority: 'loud' } }, 'invalid_field', 'quiet_hours.min_priority');
    await b.fails('notification_prefs_set', { quiet_hours: { ...quiet, min_priority: 2 } }, 'invalid_field', 'quiet_hours.min_priority');
    let r = await b.ok('notification_prefs_set', { quiet_hours: { ...quiet, min_priority: 'high' } });
    assert.deepEqual(r.prefs.quiet_hours, { ...quiet, min_priority: 'high' });
    await n.ok('notify', { to: bob, type: 'alert', title: 'normal' });
    await awaitUnread(b, 1);
    const high = (await n.ok('notify', { to: bob, type: 'alert', priority: 'high', title: 'high' })).notification;
    const urgent = (await n.ok('notify', { to: bob, type: 'alert', priority: 'urgent', title: 'urgent' })).notification;
    await eventually(() => pushed(b).length === 2, 5000, 'high and urgent pushed');
    assert.deepEqual(pushed(b).map((x) => x.id), [high.id, urgent.id]);
    // Without min_priority: urgent only, as before (and not listed).
    r = await b.ok('notification_prefs_set', { quiet_hours: quiet });
    assert.deepEqual(r.prefs.quiet_hours, quiet);
    await n.ok('notify', { to: bob, type: 'alert', priority: 'high', title: 'high, held' });
    await awaitUnread(b, 4);
    await sleep(100);
    assert.equal(pushed(b).length, 2);
    [n, b].forEach((x) => x.close());
  });

  test('high messages notify recipients without a live device; mentions take their place', async () => {
    const [ann, bob, cat, dan] = users('ann', 'bob', 'cat', 'dan');
    const room = `h${uniq}`;
    const a = await device(srv, ann);
    await a.ok('sync', {});
    let b = await device(srv, bob);
    await b.ok('sync', {}); // live: it gets the message itself, no notification
    const cNow = await device(srv, cat);
    const d = await device(srv, dan);
    await d.ok('sync', {});
    for (const x of [a, b, cNow, d]) await x.ok('join_room', { room });
    cNow.close(); // cat: offline
    const dm1 = await a.ok('send_message', { client_id: `h-${++uniq}`, to: bob, type: 'text', content: { text: 'live bob' }, priority: 'high' });
    assert.ok(dm1.ok);
    b.close(); // bob: offline from here
    await sleep(100);
    const dm2 = await a.ok('send_message', { client_id: `h-${++uniq}`, to: bob, type: 'text', content: { text: 'bob away' }, priority: 'high' });
    await a.ok('send_message', { client_id: `h-${++uniq}`, to: bob, type: 'text', content: { text: 'normal: nothing' } });
    const rm = await a.ok('send_message', { client_id: `h-${++uniq}`, room, type: 'text', content: { text: `all hands, @${bob}` }, priority: 'high' });
    await sleep(200);
    b = await device(srv, bob);
    let s = await b.ok('notifications_sync', {});
    assert.deepEqual(s.notifications.map((x) => [x.type, x.priority, x.dedupe_key]),
      [['message', 'high', `message:${dm2.message.id}`], ['mention', 'high', `mention:${rm.message.id}`]]);
    const c = await device(srv, cat);
    s = await c.ok('notifications_sync', {});
    assert.deepEqual(s.notifications.map((x) => [x.type, x.priority, x.title, x.body, x.dedupe_key]),
      [['message', 'high', ann, `all hands, @${bob}`, `message:${rm.message.id}`]]);
    s = await d.ok('notifications_sync', {});
    assert.deepEqual(s.notifications, [], 'dan was live');
    [a, b, c, d].forEach((x) => x.close());
  });

  test('mentions: @member in a room text raises a mention; muted_rooms holds it back; other prefs apply', async () => {
    const [ann, bob, cat, dan] = users('ann', 'bob', 'cat', 'dan');
    const room = `m${uniq}`;
    const a = await device(srv, ann);
    const b = await device(srv, bob);
    const c = await device(srv, cat);
    for (const x of [a, b, c]) await x.ok('join_room', { room });
    const send = (text, extra = {}) => a.ok('send_message', { client_id: `men-${++uniq}`, room, type: 'text', content: { text }, ...extra });
    // bob is named (at the end of a sentence), cat only as part of an
    // address, dan is not a member, ann is the sender: bob alone.
    const m1 = await send(`hey @${bob}. mail x@${cat} and @${dan}, @${ann}`);
    await eventually(() => pushed(b).length === 1, 5000, 'mention pushed');
    assert.deepEqual({ ...pushed(b)[0], id: 0, created: 0 }, { id: 0, created: 0, type: 'mention', priority: 'normal',
      title: `${ann} in ${room}`, body: `hey @${bob}. mail x@${cat} and @${dan}, @${ann}`, image: null, actions: [],
      from: ann, expires: null, dedupe_key: `mention:${m1.message.id}`, delivered: false, read: false });
    await awaitUnread(b, 1);
    // The message's priority is the notification's; a DM raises none.
    await send(`@${cat} low one`, { priority: 'low' });
    await eventually(() => pushed(c).length === 1, 5000, 'low mention pushed');
    assert.equal(pushed(c)[0].priority, 'low');
    await a.ok('send_message', { client_id: `men-${++uniq}`, to: bob, type: 'text', content: { text: `@${bob} dm` } });
    // Muted room: stored and counted, not pushed; cat (not muted) still is.
    await b.ok('notification_prefs_set', { muted_rooms: [room] });
    await send(`@${bob} @${cat} both`);
    await awaitUnread(b, 2);
    await eventually(() => pushed(c).length === 2, 5000, 'cat pushed');
    assert.equal(pushed(b).length, 1);
    const s = await b.ok('notifications_sync', {});
    assert.deepEqual(s.notifications.map((x) => x.type), ['mention', 'mention']);
    // Unmuted, with mentions switched off: held back again.
    await b.ok('notification_prefs_set', { muted_rooms: [], types: { mention: false } });
    await send(`@${bob} off`);
    await awaitUnread(b, 3);
    await b.ok('notification_prefs_set', { types: { mention: true } });
    await send(`@${bob} on`);
    await eventually(() => pushed(b).length === 2, 5000, 'mention pushed again');
    assert.equal(pushed(b)[1].body, `@${bob} on`);
    await sleep(200);
    assert.equal(pushed(b).length, 2, 'the DM raised nothing');
    [a, b, c].forEach((x) => x.close());
  });

  test('HTTP API: 201/200/400/401/413/415/405, and 503 without keys', async () => {
    const [bob] = users('bob');
    const b = await device(srv, bob);
    let res = await post(srv.port, { to: bob, type: 'deadline', title: 'Due', dedupe_key: 'http-1' });
    assert.equal(res.status, 201, res.body.toString());
    const created = JSON.parse(res.body);
    assert.equal(created.duplicate, false);
    checkShape(created.notification);
    assert.equal(created.notification.from, null);
    await eventually(() => pushed(b).some((x) => x.id === created.notification.id), 5000, 'HTTP notification pushed');
    res = await post(srv.port, { to: bob, type: 'deadline', title: 'Due again', dedupe_key: 'http-1' });
    assert.equal(res.status, 200);
    assert.deepEqual([JSON.parse(res.body).duplicate, JSON.parse(res.body).notification.id], [true, created.notification.id]);
    res = await post(srv.port, { to: bob, type: 'deadline', title: 'second key' }, { key: 'another-key-0123456789abcdef' });
    assert.equal(res.status, 201);
    res = await post(srv.port, { to: bob, type: 'deadline' });
    assert.equal(res.status, 400);
    assert.deepEqual(Object.keys(JSON.parse(res.body)).sort(), ['code', 'field', 'message']);
    assert.deepEqual([JSON.parse(res.body).code, JSON.parse(res.body).field], ['missing_field', 'title']);
    res = await post(srv.port, '{"to":');
    assert.deepEqual([res.status, JSON.parse(res.body).code], [400, 'bad_request']);
    // A member given twice is refused (never the first or the last one taken).
    res = await post(srv.port, `{"to":"${bob}","type":"alert","title":"a","title":"b"}`);
    assert.deepEqual([res.status, JSON.parse(res.body).code, JSON.parse(res.body).field], [400, 'invalid_field', 'title']);
    res = await post(srv.port, `{"to":"${bob}","type":"alert","title":"t","actions":[{"id":"a","label":"x","id":"b"}]}`);
    assert.deepEqual([res.status, JSON.parse(res.body).code, JSON.parse(res.body).field], [400, 'invalid_field', 'actions[0].id']);
    for (const key of [null, 'wrong-key']) {
      res = await post(srv.port, { to: bob, type: 'alert', title: 't' }, { key });
      assert.equal(res.status, 401);
      assert.equal(res.headers['www-authenticate'], 'Bearer');
    }
    res = await post(srv.port, { to: bob, type: 'alert', title: 't' }, { type: 'text/plain' });
    assert.equal(res.status, 415);
    res = await post(srv.port, JSON.stringify({ to: bob, type: 'alert', title: 't', body: 'x'.repeat(70000) }));
    assert.equal(res.status, 413);
    res = await httpRequest(srv.port, 'GET', '/api/notifications', { headers: { Authorization: `Bearer ${API_KEY}` } });
    assert.equal(res.status, 405);
    const plain = await startChatServer();
    res = await post(plain.port, { to: bob, type: 'alert', title: 't' });
    assert.deepEqual([res.status, JSON.parse(res.body).code], [503, 'unavailable']);
    await b.ok('notifications_read', { all: true });
    b.close();
  });

  test('notifications and preferences survive a SIGKILL and restart', async () => {
    const dataDir = path.join(tempDir(), 'data');
    let s = await startChatServer({ dataDir, extra: ['--api-key-file', keyFile] });
    const [bob] = users('bob');
    let b = await device(s, bob);
    await b.ok('notification_prefs_set', { types: { system: false }, muted_rooms: ['general'] });
    const ids = [];
    for (let i = 0; i < 3; i++) {
      const res = await post(s.port, { to: bob, type: 'alert', title: `n${i}`, dedupe_key: `r${i}` });
      assert.equal(res.status, 201);
      ids.push(JSON.parse(res.body).notification.id);
    }
    await eventually(() => pushed(b).length === 3, 5000, 'three pushed');
    ackPush(b, ids[0]);
    await b.ok('notifications_read', { ids: [ids[1]] });
    await sleep(100); // the ack's write commits in the iteration it arrives
    s.child.kill('SIGKILL');
    await s.child.exitPromise;
    s = await startChatServer({ dataDir, port: s.port, extra: ['--api-key-file', keyFile] });
    b = await device(s, bob);
    const prefs = (await b.ok('notification_prefs_get', {})).prefs;
    assert.deepEqual([prefs.types.system, prefs.muted_rooms], [false, ['general']]);
    const res = await post(s.port, { to: bob, type: 'alert', title: 'dup', dedupe_key: 'r0' });
    assert.equal(res.status, 200);
    assert.equal(JSON.parse(res.body).notification.delivered, true, 'the ack was stored');
    const sync = await b.ok('notifications_sync', {});
    assert.deepEqual(sync.notifications.map((x) => [x.id, x.read]), [[ids[0], false], [ids[1], true], [ids[2], false]]);
    assert.equal(sync.unread, 2);
    const next = await post(s.port, { to: bob, type: 'alert', title: 'after' });
    assert.ok(JSON.parse(next.body).notification.id > ids[2], 'ids keep increasing');
    b.close();
  });
});
