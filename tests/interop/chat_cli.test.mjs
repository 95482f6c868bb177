// `parley chat`'s presence and notification commands, and its error
// messages, end to end: two `parley chat` processes (each a device of its
// user) against parleyd, notifications raised through POST
// /api/notifications with an API key (made here, not by the code under
// test).

import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { cleanup, runParley, sleep, tempDir } from './lib/harness.mjs';
import { httpRequest, startChatServer } from './lib/chat.mjs';
import { ChatCli } from './lib/chatcli.mjs';

const API_KEY = 'chat-cli-api-key-0123456789abcdef';

let uniq = 0;
const users = (...names) => names.map((n) => `${n}${++uniq}`);

const notify = (port, body) => httpRequest(port, 'POST', '/api/notifications', {
  headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${API_KEY}` },
  body: JSON.stringify(body),
});

/** The next `error` event after `before` errors, for command line `line`. */
async function errorFor(cli, line) {
  const before = cli.all('error').length;
  cli.cmd(line);
  return cli.nth('error', before + 1, () => true, 5000);
}

describe('parley chat: presence and notifications', () => {
  let srv;

  before(async () => {
    const keyFile = path.join(tempDir(), 'api.keys');
    writeFileSync(keyFile, `${API_KEY}\n`);
    srv = await startChatServer({ extra: ['--api-key-file', keyFile, '--presence-interval', '50'] });
  });

  after(cleanup);

  test('help lists the presence and notification commands and the queued event', async () => {
    const r = await runParley(['chat', '--help']).done;
    assert.equal(r.code, 0);
    for (const word of ['presence online|away|busy', 'invisible on|off', 'subscribe USER', 'unsubscribe', 'room-presence ROOM',
      'notifications-sync', 'notifications-read ID', 'notification-prefs', 'queued (a send']) {
      assert.ok(r.stdout.includes(word), `help mentions ${word}:\n${r.stdout}`);
    }
    assert.ok(!/\bsent \(a send/.test(r.stdout), 'the old event name is gone');
  });

  test('a presence change is seen by a subscriber, not after unsubscribing; room presence', async () => {
    const [alice, bob] = users('alice', 'bob');
    const a = new ChatCli(srv, alice);
    const b = new ChatCli(srv, bob);
    await Promise.all([a.online(), b.online()]);

    b.cmd(`subscribe ${alice}`);
    const now = await b.nth('presence', 1, (p) => p.user === alice);
    assert.equal(now.status, 'online', 'the subscription answer brings the current state');
    assert.equal(now.devices, 1);

    a.cmd('presence away in a meeting');
    const seen = await b.nth('presence', 1, (p) => p.user === alice && p.status === 'away');
    assert.equal(seen.text, 'in a meeting');
    assert.equal(typeof seen.last_seen, 'number');
    // alice's own answer too.
    await a.nth('presence', 1, (p) => p.user === alice && p.status === 'away' && p.text === 'in a meeting');

    a.cmd('presence busy ""'); // "" clears the text
    const cleared = await b.nth('presence', 1, (p) => p.user === alice && p.status === 'busy');
    assert.equal(cleared.text, '');

    b.cmd(`unsubscribe ${alice}`);
    await sleep(300);
    a.cmd('presence online');
    await a.nth('presence', 1, (p) => p.user === alice && p.status === 'online' && p.devices === 1);
    await sleep(500); // ten presence intervals
    assert.equal(b.all('presence', (p) => p.user === alice && p.status === 'online' &&
      p.at > cleared.at).length, 0, 'nothing after unsubscribing');

    // Room presence: both members, in user id order.
    const room = `cli-room${uniq}`;
    assert.equal((await a.request(`join ${room}`, 'room')).error, undefined);
    assert.equal((await b.request(`join ${room}`, 'room')).error, undefined);
    const rp = await b.request(`room-presence ${room}`, 'room_presence');
    assert.equal(rp.room, room);
    assert.deepEqual(rp.presences.map((p) => [p.user, p.status]), [[alice, 'online'], [bob, 'online']]);
    const notMember = await a.request(`room-presence elsewhere${uniq}`, 'room_presence');
    assert.equal(notMember.error.code, 'not_member');
    await Promise.all([a.quit(), b.quit()]);
  });

  test('invisible on|off: libparley\'s parley_chat_presence_invisible, sent at once and after connecting', async () => {
    const [alice, bob] = users('alice', 'bob');
    const a = new ChatCli(srv, alice);
    const b = new ChatCli(srv, bob);
    await Promise.all([a.online(), b.online()]);
    b.cmd(`subscribe ${alice}`);
    await b.nth('presence', 1, (p) => p.user === alice && p.status === 'online');

    a.cmd('invisible on');
    const off = await b.nth('presence', 1, (p) => p.user === alice && p.status === 'offline');
    assert.equal(off.devices, 0);
    assert.equal(off.invisible, undefined);
    const mine = await a.nth('presence', 1, (p) => p.user === alice && p.invisible === true);
    assert.equal(mine.status, 'online');
    const usage = await a.request('invisible maybe', 'error');
    assert.equal(usage.code, 'usage');

    // Chosen while disconnected: sent on the next connection (together
    // with a status chosen meanwhile).
    a.cmd('close');
    await a.until(() => a.lastState() === 'offline', 5000, 'offline');
    a.cmd('invisible off');
    a.cmd('presence busy');
    a.cmd('connect');
    const back = await b.nth('presence', 1, (p) => p.user === alice && p.status === 'busy');
    assert.equal(back.devices, 1);
    await Promise.all([a.quit(), b.quit()]);
  });

  test('notifications: pushed, listed, read one, suppressed then synced, read all; preferences', async () => {
    const [bob] = users('bob');
    const b = new ChatCli(srv, bob);
    await b.online();
    await b.nth('unread', 1, (u) => u.count === 0);

    let res = await notify(srv.port, { to: bob, type: 'assignment', title: 'Review PR 7', body: 'today' });
    assert.equal(res.status, 201, res.body);
    const id1 = JSON.parse(res.body).notification.id;
    const n1 = await b.nth('notification', 1, (n) => n.id === id1);
    assert.equal(n1.live, true);
    assert.deepEqual([n1.type, n1.title, n1.body, n1.from, n1.read], ['assignment', 'Review PR 7', 'today', null, false]);
    await b.nth('unread', 1, (u) => u.count === 1);

    let list = await b.request('notifications', 'notifications');
    assert.equal(list.unread, 1);
    assert.deepEqual(list.notifications.map((n) => [n.id, n.title, n.read]), [[id1, 'Review PR 7', false]]);

    const rd = await b.request(`notifications-read ${id1}`, 'notifications_read');
    assert.deepEqual([rd.ids, rd.all], [[id1], false]);
    await b.nth('unread', 2, (u) => u.count === 0);
    list = await b.request('notifications', 'notifications');
    assert.deepEqual(list.notifications.map((n) => [n.id, n.read]), [[id1, true]]);
    assert.equal(list.unread, 0);

    // Preferences: get, set (in_app off holds notifications back), a refusal.
    const got = await b.request('notification-prefs', 'prefs');
    assert.deepEqual([got.op, got.prefs.in_app, got.prefs.quiet_hours], ['get', true, null]);
    const set = await b.request('notification-prefs {"in_app":false}', 'prefs');
    assert.deepEqual([set.op, set.prefs.in_app], ['set', false]);
    const bad = await b.request('notification-prefs {"quiet_hours":{"start":"22:00","end":"07:00","tz":"Mars/Olympus"}}', 'prefs');
    assert.deepEqual([bad.op, bad.error.code, bad.error.field], ['set', 'invalid_field', 'quiet_hours.tz']);

    res = await notify(srv.port, { to: bob, type: 'reminder', title: 'Held back' });
    assert.equal(res.status, 201, res.body);
    const id2 = JSON.parse(res.body).notification.id;
    await b.nth('unread', 1, (u) => u.count === 1 && u.at > rd.at);
    await sleep(200);
    assert.equal(b.all('notification', (n) => n.id === id2).length, 0, 'suppressed: not pushed');
    b.cmd('notifications-sync');
    const n2 = await b.nth('notification', 1, (n) => n.id === id2);
    assert.deepEqual([n2.live, n2.title, n2.delivered], [false, 'Held back', true]);

    const all = await b.request('notifications-read all', 'notifications_read');
    assert.deepEqual([all.all, all.ids], [true, []]);
    list = await b.until(() => {
      const l = b.all('notifications').at(-1);
      return l && l.at > all.at ? l : (b.cmd('notifications'), undefined);
    }, 5000, 'a list after reading all');
    assert.deepEqual(list.notifications.map((n) => [n.id, n.read]), [[id1, true], [id2, true]]);
    assert.equal(list.unread, 0);
    await b.quit();
  });

  test('bad commands get errors in the command line\'s terms', async () => {
    const [carl, dora] = users('carl', 'dora');
    const c = new ChatCli(srv, carl);
    await c.online();
    const cases = [
      [`send-json {"to":"${dora}","type":"text","content":{"text":"x"},"priority":"asap"}`,
        'invalid_field', 'priority', 'priority must be one of low, normal, high, urgent'],
      [`send-json {"to":"${dora}","type":"text","content":{"text":"x"},"ttl_ms":-1}`,
        'invalid_field', 'ttl_ms', 'ttl_ms must be a whole number of milliseconds from 0 (none) to 4294967295'],
      [`send-json {"to":"${dora}","type":"audio","content":{}}`, 'missing_field', 'content.media',
        'an audio message needs content.media'],
      [`send-json {"to":"${dora}","type":"image","content":{"media":"${'0'.repeat(64)}","mime":"x/y"}}`,
        'unknown_field', 'content.mime', 'content.mime is not a field of an image message'],
      ['presence offline', 'invalid_field', 'status',
        'offline cannot be chosen (it is reported when no device is connected); choose online, away or busy'],
      ['presence sleeping', 'invalid_field', 'status', 'the status must be one of online, away, busy'],
      [`presence away ${'x'.repeat(129)}`, 'invalid_field', 'text',
        'the status text must be at most 128 bytes of UTF-8 without control characters'],
      ['subscribe bad!user', 'invalid_field', 'users',
        '\'bad!user\' is not a user id (1 to 64 bytes of A-Z a-z 0-9 . _ @ -)'],
      ['subscribe', 'usage', undefined, 'subscribe USER...'],
      ['notifications-read 0', 'invalid_field', 'ids', '\'0\' is not a notification id (a whole number from 1)'],
      ['notification-prefs [1]', 'usage', undefined, 'notification-prefs takes no argument (get) or one JSON object (set)'],
      ['typing dm:a:b sideways', 'usage', undefined, 'typing CONV on|off'],
      ['read nowhere 3', 'invalid_field', 'conversation', '\'nowhere\' is not a conversation id (dm:USER:USER or room:NAME)'],
      ['history nowhere x', 'invalid_field', 'before', 'BEFORE must be a whole number: a seq, or 0 for the newest'],
      ['join bad/room', 'invalid_field', 'room', '\'bad/room\' is not a room name (1 to 64 bytes of A-Z a-z 0-9 . _ -)'],
      ['dance', 'usage', undefined, 'unknown command \'dance\' (parley chat --help lists them)'],
    ];
    for (const [line, code, field, message] of cases) {
      const e = await errorFor(c, line);
      assert.deepEqual([e.code, e.field, e.message], [code, field, message], `${line.slice(0, 80)}: ${JSON.stringify(e)}`);
      assert.doesNotMatch(e.message, /PARLEY_|parley_|\ban (video|file|text)\b|\ba (image|audio)\b/, line);
    }
    assert.equal(c.all('queued').length, 0, 'nothing was queued');

    // Server-side: media of the wrong family, with the right article.
    const file = path.join(tempDir(), 'clip.mp4');
    writeFileSync(file, Buffer.alloc(2000, 1));
    const up = await c.request(`upload video/mp4 ${file}`, 'upload');
    assert.match(up.media, /^[0-9a-f]{64}$/);
    c.cmd(`send-json ${JSON.stringify({ to: dora, type: 'image', content: { media: up.media } })}`);
    const id = (await c.nth('queued', 1)).client_id;
    const failed = await c.nth('status', 1, (s) => s.client_id === id && s.status === 'failed');
    assert.equal(failed.code, 'invalid_field');
    assert.equal(failed.message, 'an image message needs image/* media, not video/mp4');
    const pic = path.join(tempDir(), 'pic.png');
    writeFileSync(pic, Buffer.alloc(500, 2));
    const up2 = await c.request(`upload image/png ${pic}`, 'upload');
    c.cmd(`send-json ${JSON.stringify({ to: dora, type: 'video', content: { media: up2.media } })}`);
    const id2 = (await c.nth('queued', 2)).client_id;
    const failed2 = await c.nth('status', 1, (s) => s.client_id === id2 && s.status === 'failed');
    assert.equal(failed2.message, 'a video message needs video/* media, not image/png');
    await c.quit();
  });

  test('bad options are refused on stderr with exit code 2', async () => {
    const cases = [
      [['chat', 'http://127.0.0.1:1'], '--user ID is required'],
      [['chat', 'http://127.0.0.1:1', '--user', 'bad user'], '--user must be 1 to 64 bytes of A-Z a-z 0-9 . _ @ -, not \'bad user\''],
      [['chat', 'http://127.0.0.1:1', '--user', 'u', '--transport', 'carrier-pigeon'], '--transport must be websocket, polling or both, not \'carrier-pigeon\''],
      [['chat', 'http://127.0.0.1:1', '--user', 'u', '--reconnect-delay', 'soon'], '--reconnect-delay must be a whole number of milliseconds, not \'soon\''],
      [['chat', 'gopher://x', '--user', 'u', '--dev-auth'], '\'gopher://x\' is not a server URL'],
    ];
    for (const [args, message] of cases) {
      const r = await runParley(args).done;
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.ok(r.stderr.includes(`parley chat: ${message}`), `${args.join(' ')}: ${r.stderr}`);
    }
  });
});
