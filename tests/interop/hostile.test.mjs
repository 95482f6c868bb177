// "Safe to expose": parleyd with its real defaults (limits: 'on', the
// configuration a deployment gets) under the attacks that used to take it
// down or fill its disk, each with the bounded outcome asserted and a
// well-behaved client (the witness: a ChatClient with a valid token, or a
// plain GET /healthz from another address) served during and after it.
// Where memory or disk is the point, the growth is measured (baseline
// after one warm-up round) and printed ("hostile: ...") for the record.

import assert from 'node:assert/strict';
import { generateKeyPairSync, sign as cryptoSign, randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { ChatClient, SECRET, bearer, dm, eventually, httpRequest, makeToken, nextClientId, online, startChatServer } from './lib/chat.mjs';
import { pollHandshake, q, request, wsNext, wsSession } from './lib/eio_raw.mjs';
import { ChatCli } from './lib/chatcli.mjs';
import { cleanup, program, scaled, sleep, tempDir, withTimeout } from './lib/harness.mjs';
import {
  closesWithin, dirBytes, httpFrom, logLines, MB, parseResponse, pollingChatSync, rawConnect, rawHs256, rawResponse, rss, rssSampler,
  smallQuarantine, upgradeRequest,
} from './lib/hostile.mjs';

const BASE = '/socket.io/';
const P = (n) => `{"_placeholder":true,"num":${n}}`;
let uniq = 0;
const fresh = (name) => `${name}${++uniq}`;

after(cleanup);

/** parleyd with the messaging service and every limit at its default. */
const start = (extra = [], opts = {}) => startChatServer({ limits: 'on', extra, ...opts });

/** A synced device of a fresh user: the well-behaved client of a test. */
async function witness(srv, name = 'witness') {
  return online(srv, fresh(name));
}

/** The witness is still served: a sync and a stored message. */
async function stillServed(w, what) {
  const s = await w.req('sync', { since: {} });
  assert.equal(s?.ok, true, `${what}: the witness's sync: ${JSON.stringify(s)}`);
  const r = await w.send({ to: fresh('friend') }, { text: `still here (${what})` });
  assert.equal(r?.ok, true, `${what}: the witness's message: ${JSON.stringify(r)}`);
}

async function healthz(port, localAddress = '127.0.0.2') {
  const r = await httpFrom(port, 'GET', '/healthz', { localAddress });
  assert.equal(r.status, 200, `GET /healthz from ${localAddress}`);
}

/**
 * The next packet on a raw WebSocket session that is not a ping. (A ping
 * that arrived with the open packet, in the same read, is queued before
 * wsSession's automatic answer is in place: it is answered here.)
 */
async function nextNotPing(ws, ms = 5000) {
  for (;;) {
    const p = await wsNext(ws, ms);
    if (p !== '2') return p;
    ws.ws.send('3');
  }
}

/* ------------------------------------------------------------------ */
/* 1. Memory before authentication                                     */
/* ------------------------------------------------------------------ */

describe('1. sessions that never authenticate', () => {
  const CONNECT_TIMEOUT = 1500;
  const ATTACK = { sessions: 30, attachments: 9, size: 999000, budget: 24 * 1048576 };

  test(`${ATTACK.sessions} sessions refused on "/" sending a binary header for /chat + ${ATTACK.attachments} x ~1 MB are closed at the header; RSS grows < 24 MiB`, async () => {
    const srv = await smallQuarantine(() => start());
    const w = await witness(srv);
    const blob = Buffer.alloc(ATTACK.size, 0x5a);
    const header = `4510-/chat,["upload",${Array.from({ length: 10 }, (_, i) => P(i)).join(',')}]`;
    let open = 0;
    async function hostile() {
      const ws = await wsSession(srv.port, BASE);
      ws.ws.send('40');
      assert.equal(await nextNotPing(ws), '44{"message":"Invalid namespace"}', '`/` is off by default');
      ws.ws.send(header);
      for (let i = 0; i < ATTACK.attachments; i++) ws.ws.send(blob, { binary: true });
      const closed = await closesWithin(ws, scaled(3000));
      if (!closed) open++;
    }
    await hostile();
    await sleep(200);
    const before = rss(srv.child.pid);
    const sampler = rssSampler(srv.child.pid);
    let peak;
    try {
      await Promise.all(Array.from({ length: ATTACK.sessions }, hostile));
      await sleep(300);
    } finally {
      peak = sampler.stop();
    }
    const afterRss = rss(srv.child.pid);
    console.log(`hostile: ${ATTACK.sessions} unauthenticated sessions x binary header for /chat + ${ATTACK.attachments} x ${ATTACK.size} B: ` +
      `RSS ${MB(before)} -> ${MB(afterRss)} (peak ${MB(peak)})`);
    assert.ok(srv.alive(), `the server died${srv.stderr()}`);
    assert.equal(open, 0, 'every hostile session was closed');
    assert.ok(afterRss - before < ATTACK.budget, `RSS grew by ${MB(afterRss - before)} (before ${MB(before)}, after ${MB(afterRss)})`);
    await stillServed(w, 'after the attachment flood');
  });

  test(`sessions that answer every ping but never join /chat (bare, refused on "/", refused on /chat) are closed at --connect-timeout ${CONNECT_TIMEOUT}; a client on /chat stays`, async () => {
    const srv = await start(['--connect-timeout', String(CONNECT_TIMEOUT), '--ping-interval', '400']);
    const w = await witness(srv);
    const t0 = Date.now();
    const idle = [];
    for (const hello of [null, '40', `40/chat,{"token":"${makeToken('mallory', { secret: 'x'.repeat(40) })}"}`]) {
      const opened = Date.now();
      const ws = await wsSession(srv.port, BASE, { autoPong: false });
      ws.opened = opened;
      ws.pingsAnswered = 0;
      const push = ws.messages.push.bind(ws.messages);
      ws.messages.push = (m) => {
        if (!m.isBinary && m.data.toString() === '2') {
          ws.ws.send('3');
          ws.pingsAnswered++;
        } else push(m);
      };
      if (hello) ws.ws.send(hello);
      idle.push({ ws, hello });
    }
    for (const { ws, hello } of idle) {
      await ws.waitClosed(scaled(CONNECT_TIMEOUT + 3000), `the session (${hello ?? 'no CONNECT'}) to be closed at the connect timeout`);
      const ms = Date.now() - ws.opened;
      assert.ok(ms >= CONNECT_TIMEOUT, `${hello ?? 'no CONNECT'}: closed after ${ms} ms, before the connect timeout`);
      assert.ok(ws.pingsAnswered >= 1, `${hello ?? 'no CONNECT'}: it answered pings (${ws.pingsAnswered}) and was closed all the same`);
    }
    const refusals = idle.slice(1).map(({ ws }) => ws.messages.items.map((m) => m.data.toString()).filter((p) => p !== '2'));
    assert.deepEqual(refusals[0], ['44{"message":"Invalid namespace"}']);
    assert.match(refusals[1][0], /^44\/chat,\{"message":.*"data":\{"code":"invalid_token"/);
    console.log(`hostile: sessions answering pings without joining /chat closed after ${Date.now() - t0} ms (--connect-timeout ${CONNECT_TIMEOUT})`);
    /* The witness, past the deadline, is served. */
    await stillServed(w, 'past the connect timeout');
    assert.deepEqual(w.log.filter((e) => e.name === 'disconnect'), [], 'the witness was never disconnected');
  });
});

/* ------------------------------------------------------------------ */
/* 2. Uploads without credentials                                      */
/* ------------------------------------------------------------------ */

describe('2. POST /media without credentials', () => {
  const ATTACK = { conns: 40, size: 8 * 1048576 - 1, budget: 32 * 1048576 };
  const head = (len, { expect = false, auth } = {}) => `POST /media HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n` +
    `Content-Length: ${len}\r\n${expect ? 'Expect: 100-continue\r\n' : ''}${auth ? `Authorization: Bearer ${auth}\r\n` : ''}\r\n`;

  test(`${ATTACK.conns} connections declaring ${ATTACK.size} bytes get 401 on the head (no 100 Continue), are ended after the answer; RSS grows < 32 MiB`, async () => {
    const srv = await smallQuarantine(() => start());
    const w = await witness(srv);
    const body = Buffer.alloc(ATTACK.size, 0x33);
    async function hostile(i) {
      const conn = rawConnect(srv.port);
      await conn.connected;
      const expect = i % 2 === 0;
      conn.sock.write(head(ATTACK.size, { expect }));
      const r = await rawResponse(conn, 5000, `the answer to unauthenticated POST /media #${i}`);
      assert.equal(r.status, 401, `#${i}: ${r.head}`);
      assert.equal(r.headers['www-authenticate'], 'Bearer');
      assert.equal(JSON.parse(r.body).code, 'auth_required');
      assert.ok(!conn.text().includes('100 Continue'), `#${i} (Expect: 100-continue ${expect}) was never told to go on: ${conn.text().slice(0, 200)}`);
      /* The attacker sends its body all the same: the server has ended
       * the connection instead of reading 8 MiB. */
      conn.sock.write(body, () => {});
      assert.ok(await closesWithin(conn, scaled(5000)), `#${i}: the connection is ended after the answer`);
    }
    await hostile(0);
    await sleep(200);
    const before = rss(srv.child.pid);
    const sampler = rssSampler(srv.child.pid);
    let peak;
    try {
      await Promise.all(Array.from({ length: ATTACK.conns }, (_, i) => hostile(i + 1)));
      await healthz(srv.port);
      await stillServed(w, 'during the upload flood');
      await sleep(200);
    } finally {
      peak = sampler.stop();
    }
    const afterRss = rss(srv.child.pid);
    console.log(`hostile: POST /media ${ATTACK.conns} x ${ATTACK.size} B unauthenticated: RSS ${MB(before)} -> ${MB(afterRss)} (peak ${MB(peak)})`);
    assert.ok(srv.alive(), `the server died${srv.stderr()}`);
    assert.ok(afterRss - before < ATTACK.budget, `RSS grew by ${MB(afterRss - before)}`);
    assert.ok(peak - before < ATTACK.budget, `RSS peaked ${MB(peak - before)} above the baseline`);

    /* A small refused body (<= 256 KiB) is read and dropped: the
     * connection serves the next request. */
    const small = rawConnect(srv.port);
    await small.connected;
    small.sock.write(head(100000) + 'x'.repeat(100000));
    assert.equal((await rawResponse(small)).status, 401);
    const seen = small.bytes().length;
    small.sock.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    await eventually(() => small.bytes().length > seen, 3000, 'the answer to GET /healthz on the same connection');
    assert.match(small.bytes().subarray(seen).toString(), /^HTTP\/1\.1 200 /);

    /* With a valid token the same head is told to go on, and the upload
     * streams to disk. */
    const ok = rawConnect(srv.port);
    await ok.connected;
    const auth = makeToken(fresh('uploader'));
    ok.sock.write(head(ATTACK.size, { expect: true, auth }));
    await eventually(() => ok.text().startsWith('HTTP/1.1 100 Continue\r\n\r\n'), 3000, '100 Continue for an accepted head');
    const cont = ok.bytes().length;
    const rssBeforeUpload = rss(srv.child.pid);
    ok.sock.write(body);
    await eventually(() => ok.bytes().length > cont && ok.text().includes('\r\n\r\n', cont), 15000, 'the answer to the upload');
    const created = parseResponse(ok.bytes().subarray(cont));
    assert.equal(created.status, 201, created.head);
    console.log(`hostile: one authenticated ${ATTACK.size} B upload: RSS ${MB(rssBeforeUpload)} -> ${MB(rss(srv.child.pid))}`);
    await stillServed(w, 'after the uploads');
  });
});

/* ------------------------------------------------------------------ */
/* 3. Storing messages as fast as possible                             */
/* ------------------------------------------------------------------ */

describe('3. one user storing messages as fast as it can', () => {
  const RATE = 20; /* --rate-messages default, per second */
  const BURST = 40;
  const SECONDS = 3;
  const TEXT = 4000;
  const DISK_BUDGET = 16 * 1048576;

  test(`pipelined sends ignoring the hints for ${SECONDS} s: rate_limited with retry_after_ms, at most burst + rate x seconds stored, the socket is told and disconnected; another user is served`, async () => {
    const srv = await start();
    const [mal, vic, wendy] = [fresh('mal'), fresh('vic'), fresh('wendy')];
    const w = await online(srv, wendy);
    const text = 'm'.repeat(TEXT);
    const diskBefore = dirBytes(srv.dataDir);
    const sockets = [];
    let ok = 0;
    const other = [];
    let hints = 0;
    const t0 = Date.now();
    const until = t0 + SECONDS * 1000;
    /* The witness sends one message every 100 ms meanwhile. */
    const witnessSends = (async () => {
      const answers = [];
      while (Date.now() < until) {
        answers.push(await w.send({ to: vic }, { text: `calm ${answers.length}` }));
        await sleep(100);
      }
      return answers;
    })();
    while (Date.now() < until) {
      const c = new ChatClient(srv, { user: mal });
      const first = await c.events.next(10000, 'the attacker to connect or be refused');
      if (first.name !== 'connect') {
        /* Refused (e.g. too many new sessions): try again shortly. */
        c.close();
        await sleep(50);
        continue;
      }
      const s = { c, reason: null, closedByUs: false };
      sockets.push(s);
      c.socket.on('disconnect_reason', (why) => {
        s.reason = why;
      });
      while (c.socket.connected && Date.now() < until) {
        for (let i = 0; i < 25; i++) {
          c.socket.emit('send_message', { client_id: nextClientId(), to: vic, type: 'text', content: { text } }, (res) => {
            if (res?.ok) ok++;
            else if (res?.error?.code === 'rate_limited' && res.error.retry_after_ms > 0) hints++;
            else other.push(res);
          });
        }
        await sleep(1);
      }
      s.closedByUs = c.socket.connected;
      c.close();
    }
    const answers = await witnessSends;
    await sleep(300);
    /* What was stored, as the recipient sees it. */
    const v = await online(srv, vic);
    const stored = v.synced.messages.filter((m) => m.from === mal).length;
    const elapsed = (Date.now() - t0) / 1000;
    const bound = BURST + RATE * elapsed + 5;
    const grown = dirBytes(srv.dataDir) - diskBefore;
    console.log(`hostile: pipelined sends of ${TEXT} B for ${SECONDS} s: ${stored} stored (bound ${bound.toFixed(0)}), ${hints} refused with a hint, ` +
      `${sockets.length} sockets, ${sockets.filter((s) => s.reason).length} told and disconnected; data dir +${MB(grown)}`);
    assert.deepEqual(other, [], 'every refusal is rate_limited with retry_after_ms');
    assert.ok(hints > 0, 'refusals came');
    assert.ok(stored >= BURST, `the burst was stored (${stored})`);
    assert.ok(stored <= bound, `${stored} messages stored in ${elapsed.toFixed(1)} s, over burst + rate x seconds = ${bound.toFixed(0)}`);
    /* A kicked socket may miss the acknowledgements of messages stored in
     * its last loop iteration (a resend would be answered duplicate). */
    assert.ok(ok <= stored, `${ok} acknowledged, ${stored} stored`);
    assert.ok(grown < DISK_BUDGET, `the data directory grew by ${MB(grown)}`);
    /* Told why, then disconnected by the server. */
    const kicked = sockets.filter((s) => s.reason);
    assert.ok(kicked.length >= 1, 'the attacker was disconnected');
    for (const s of kicked) {
      assert.deepEqual(Object.keys(s.reason).sort(), ['code', 'message']);
      assert.equal(s.reason.code, 'rate_limited');
      const gone = s.c.log.find((e) => e.name === 'disconnect');
      if (!s.closedByUs) assert.equal(gone?.args[0], 'io server disconnect');
    }
    /* A first offence is no disconnect: one send over the limit is
     * refused with a hint, and the socket stays. */
    const m = await online(srv, mal);
    let refused;
    for (let i = 0; i < BURST + 10 && !refused; i++) {
      const r = await m.send({ to: vic }, { text: 'once more' });
      if (!r?.ok) refused = r;
    }
    assert.equal(refused?.error?.code, 'rate_limited', JSON.stringify(refused));
    await sleep(refused.error.retry_after_ms + 20);
    const later = await m.send({ to: vic }, { text: 'after the hint' });
    assert.equal(later?.ok, true, JSON.stringify(later));
    assert.deepEqual(m.log.filter((e) => e.name === 'disconnect' || e.name === 'disconnect_reason'), []);
    /* The other user was served all along. */
    assert.ok(answers.length >= 5, `${answers.length} messages of the witness`);
    assert.deepEqual(answers.filter((r) => !r?.ok), [], 'the witness was never refused');
    await stillServed(w, 'after the flood');
  });
});

describe('3b. clients that honour the hints', () => {
  test('a socket.io-client loop waiting out every retry_after_ms, and libparley\'s chat client with 150 messages queued at once: never disconnected, every message stored once, in order', async () => {
    const srv = await start();
    const [pol, lib, dst] = [fresh('polite'), fresh('lib'), fresh('dst')];
    /* One message at a time, each hint waited out, for 3 s: over the rate
     * all along, so refused about once per message that gets through. */
    const c = await online(srv, pol);
    let stored = 0;
    let refused = 0;
    const until = Date.now() + 3000;
    while (Date.now() < until) {
      const r = await c.send({ to: dst }, { text: `polite ${stored}` });
      if (r?.ok) {
        stored++;
        continue;
      }
      assert.equal(r?.error?.code, 'rate_limited', JSON.stringify(r));
      refused++;
      await sleep(r.error.retry_after_ms);
    }
    assert.ok(refused > 5, `the loop went over the rate (${refused} refusals)`);
    assert.ok(stored >= 40, `${stored} stored`);
    assert.deepEqual(c.log.filter((e) => e.name === 'disconnect' || e.name === 'disconnect_reason'), [], 'never disconnected');
    await sleep(1100); /* the bucket refills */
    await stillServed(c, 'after the polite loop');

    /* libparley: 150 sends queued at once go out together; the refused
     * ones wait in the queue, in order, and nothing is disconnected. */
    const N = 150;
    const cli = new ChatCli(srv, lib);
    await cli.online();
    for (let i = 0; i < N; i++) cli.cmd(`send @${dst} n${i}`);
    await cli.until(() => cli.all('queued').length >= N, 10000, `${N} sends queued`);
    const ids = cli.all('queued').map((e) => e.client_id);
    await cli.until(() => ids.every((id) => cli.statuses(id).includes('sent')), 30000, `all ${N} stored`);
    assert.deepEqual(ids.filter((id) => cli.statuses(id).includes('failed')), [], 'none failed');
    assert.deepEqual(cli.all('state').map((e) => e.state).filter((st) => st !== 'online' && st !== 'syncing' && st !== 'connecting'), [],
      'the chat stayed connected');
    const v = await online(srv, dst);
    const got = v.synced.messages.filter((m) => m.from === lib).map((m) => m.content.text);
    assert.deepEqual(got, Array.from({ length: N }, (_, i) => `n${i}`), 'each stored once, in order');
    console.log(`hostile: a polite loop: ${stored} stored, ${refused} refused with a hint, never disconnected; libparley with ${N} queued: all stored once, in order`);
  });
});

/* ------------------------------------------------------------------ */
/* 4. Daily upload quotas                                              */
/* ------------------------------------------------------------------ */

describe('4. uploads', () => {
  test('--uploads-per-day 3: the 4th upload is 429 quota_exceeded on its head, with Retry-After until UTC midnight; --upload-bytes-per-day likewise; others upload', async () => {
    const srv = await start(['--uploads-per-day', '3', '--upload-bytes-per-day', '100000']);
    const [ann, ben, cam] = [fresh('ann'), fresh('ben'), fresh('cam')];
    const upload = (user, bytes) => httpRequest(srv.port, 'POST', '/media', { headers: { ...bearer(user), 'Content-Type': 'image/png' }, body: bytes });
    for (let i = 0; i < 3; i++) {
      const r = await upload(ann, randomBytes(1000));
      assert.equal(r.status, 201, `upload ${i + 1}: ${r.body}`);
    }
    /* The 4th: the head alone is answered. */
    const conn = rawConnect(srv.port);
    await conn.connected;
    conn.sock.write(`POST /media HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n` +
      `Authorization: Bearer ${makeToken(ann)}\r\n\r\n`);
    const r = await rawResponse(conn, 5000, 'the answer to the 4th upload');
    const untilMidnight = 86400000 - (Date.now() % 86400000);
    assert.equal(r.status, 429, r.head);
    const body = JSON.parse(r.body);
    assert.equal(body.code, 'quota_exceeded');
    assert.ok(body.retry_after_ms > 0 && Math.abs(body.retry_after_ms - untilMidnight) < 60000,
      `retry_after_ms ${body.retry_after_ms} is the time until UTC midnight (${untilMidnight})`);
    const retryAfter = Number(r.headers['retry-after']);
    assert.ok(Number.isInteger(retryAfter) && Math.abs(retryAfter - untilMidnight / 1000) < 60, `Retry-After: ${r.headers['retry-after']}`);
    console.log(`hostile: the 4th upload of the day: 429 quota_exceeded, Retry-After ${retryAfter} s`);
    /* The socket upload counts against the same quota. */
    const a = await online(srv, ann);
    const viaSocket = await a.req('upload_media', { mime: 'image/png', data: randomBytes(1000) });
    assert.equal(viaSocket?.error?.code, 'quota_exceeded', JSON.stringify(viaSocket));
    assert.ok(viaSocket.error.retry_after_ms > 0);
    /* Bytes per day. */
    assert.equal((await upload(ben, randomBytes(60000))).status, 201);
    const over = await upload(ben, randomBytes(60000));
    assert.equal(over.status, 429, over.body.toString());
    assert.equal(JSON.parse(over.body).code, 'quota_exceeded');
    assert.ok(Number(over.headers['retry-after']) > 0);
    /* Another user is not affected. */
    assert.equal((await upload(cam, randomBytes(1000))).status, 201);
    await stillServed(await witness(srv), 'after the quota refusals');
  });
});

/* ------------------------------------------------------------------ */
/* 5. Joining rooms                                                    */
/* ------------------------------------------------------------------ */

describe('5. joins', () => {
  test('30 join_room in a row: the burst of 20 passes, the rest are rate_limited with retry_after_ms, the socket stays', async () => {
    const srv = await start();
    const u = await online(srv, fresh('joiner'));
    const tag = fresh('r');
    const results = [];
    const t0 = Date.now();
    for (let i = 0; i < 30; i++) results.push(await u.req('join_room', { room: `${tag}-${i}` }));
    const seconds = (Date.now() - t0) / 1000;
    const firstRefusal = results.findIndex((r) => !r?.ok);
    const passed = results.filter((r) => r?.ok).length;
    console.log(`hostile: 30 join_room in ${seconds.toFixed(2)} s: ${passed} joined, first refusal at #${firstRefusal + 1}`);
    assert.ok(firstRefusal >= 20, `the burst of 20 passes: ${JSON.stringify(results[firstRefusal])}`);
    assert.ok(passed <= 20 + Math.ceil(seconds), `${passed} joins passed in ${seconds} s (burst 20, 1/s)`);
    for (const r of results.slice(20).filter((x) => !x?.ok)) {
      assert.equal(r.error.code, 'rate_limited', JSON.stringify(r));
      assert.ok(r.error.retry_after_ms > 0 && r.error.retry_after_ms <= 1000, JSON.stringify(r));
    }
    assert.deepEqual(u.log.filter((e) => e.name === 'disconnect'), [], 'a few refusals are no disconnect');
    await stillServed(u, 'the joiner after its refusals');
    const other = await witness(srv);
    await other.ok('join_room', { room: `${tag}-0` });
  });

  test('--storage-per-user: the send that would go over is quota_exceeded (no retry hint); a resend of a stored message is still duplicate; a room stranger is not_member; others send on', async () => {
    /* 128 + the content's bytes per message: 1000 bytes hold 5 of these. */
    const srv = await start(['--storage-per-user', '1000']);
    const [amy, bob] = [fresh('amy'), fresh('bob')];
    const a = await online(srv, amy);
    const b = await online(srv, bob);
    const text = 'x'.repeat(50);
    const ids = [];
    let refused;
    for (let i = 0; i < 10 && !refused; i++) {
      const clientId = nextClientId();
      const res = await a.send({ to: bob }, { text }, { clientId });
      if (res.ok) ids.push(clientId);
      else refused = res.error;
    }
    console.log(`hostile: --storage-per-user 1000: ${ids.length} messages stored, then ${JSON.stringify(refused)}`);
    assert.equal(ids.length, 5, 'five messages of 128 + 61 bytes fit in 1000');
    assert.equal(refused?.code, 'quota_exceeded');
    assert.equal(refused.retry_after_ms, undefined, 'waiting does not help');
    const again = await a.send({ to: bob }, { text }, { clientId: ids[2] });
    assert.equal(again.ok, true, JSON.stringify(again));
    assert.equal(again.duplicate, true);
    assert.equal(again.message.seq, 3);
    await b.ok('send_message', { client_id: nextClientId(), to: amy, type: 'text', content: { text: 'still here' } });
    const room = fresh('room');
    await b.ok('join_room', { room });
    await a.fails('send_message', { client_id: nextClientId(), room, type: 'text', content: { text: 'x' } }, 'not_member', 'room');
    /* At its quota the user is still served: reads, receipts, rooms. */
    const s = await a.ok('sync', { since: {} });
    assert.ok(JSON.stringify(s).includes(ids[4]), 'its stored messages sync');
    await a.ok('receipt', { conversation: dm(amy, bob), status: 'read', seq: 6 });
    await a.ok('join_room', { room });
    await stillServed(b, 'the other user');
  });

  test('--max-rooms 5: the 6th distinct room is quota_exceeded (field room); after leaving one, a new one may be joined', async () => {
    const srv = await start(['--max-rooms', '5']);
    const u = await online(srv, fresh('joiner'));
    const tag = fresh('q');
    for (let i = 0; i < 5; i++) await u.ok('join_room', { room: `${tag}-${i}` });
    const err = await u.fails('join_room', { room: `${tag}-5` }, 'quota_exceeded', 'room');
    console.log(`hostile: --max-rooms 5, the 6th room: ${JSON.stringify(err)}`);
    await u.ok('join_room', { room: `${tag}-4` }); /* joining twice is no new room */
    await u.ok('leave_room', { room: `${tag}-0` });
    await u.ok('join_room', { room: `${tag}-5` });
    await u.fails('join_room', { room: `${tag}-6` }, 'quota_exceeded', 'room');
    await stillServed(u, 'the joiner at its room quota');
  });
});

/* ------------------------------------------------------------------ */
/* 6. The disk reserve                                                 */
/* ------------------------------------------------------------------ */

describe('6. disk reserve', () => {
  test('free space below --disk-reserve: writes are storage_full with retry_after_ms 60000 (send, join, upload, notify, preferences, presence text; POST /media 507), reads work', async () => {
    /* Data written while there was room (by a server without limits: it
     * only makes the data directory). */
    const first = await startChatServer();
    const [alice, bob] = [fresh('alice'), fresh('bob')];
    const a0 = await online(first, alice);
    for (let i = 1; i <= 3; i++) await a0.text({ to: bob }, `before ${i}`);
    await first.stop();

    const keyFile = path.join(tempDir(), 'keys');
    writeFileSync(keyFile, 'hostile-api-key-0123456789abcdef\n');
    const srv = await start(['--disk-reserve', '1000000000000000', '--api-key-file', keyFile], { dataDir: first.dataDir });
    const a = await online(srv, alice);
    const b = await online(srv, bob);
    assert.deepEqual(b.synced.messages.map((m) => m.content.text), ['before 1', 'before 2', 'before 3'], 'sync answers');
    const h = await b.ok('history', { conversation: dm(alice, bob) });
    assert.equal(h.messages.length, 3, 'history answers');
    const full = (res, what) => {
      assert.equal(res?.ok, false, `${what}: ${JSON.stringify(res)}`);
      assert.equal(res.error.code, 'storage_full', `${what}: ${JSON.stringify(res)}`);
      assert.equal(res.error.retry_after_ms, 60000, what);
    };
    full(await a.send({ to: bob }, { text: 'no room' }), 'send_message');
    full(await a.req('join_room', { room: fresh('full') }), 'join_room');
    full(await a.req('upload_media', { mime: 'image/png', data: randomBytes(100) }), 'upload_media');
    full(await a.req('presence_set', { status: 'busy', text: 'a new text' }), 'presence_set with a text');
    const n = new ChatClient(srv, { user: fresh('notifier'), token: makeToken(fresh('notifier'), { claims: { role: 'notifier' } }) });
    await n.connected();
    full(await n.req('notify', { to: bob, type: 'alert', title: 'disk' }), 'notify');
    full(await a.req('notification_prefs_set', { muted_users: Array.from({ length: 1000 }, (_, i) => `m${i}`) }), 'notification_prefs_set');
    /* Refusals for room are no strikes: many of them keep the socket. */
    for (let i = 0; i < 35; i++) full(await a.send({ to: bob }, { text: `no room ${i}` }), `send_message #${i}`);
    assert.deepEqual(a.log.filter((e) => e.name === 'disconnect'), []);
    /* Reads and state changes that add nothing still work. */
    await a.ok('presence_set', { status: 'away' });
    await b.ok('receipt', { conversation: dm(alice, bob), status: 'read', seq: 3 });
    assert.equal((await b.ok('sync', { since: {} })).messages.length, 3);
    /* HTTP: the upload and the API are 507 on the head. */
    const conn = rawConnect(srv.port);
    await conn.connected;
    conn.sock.write(`POST /media HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 5000000\r\n` +
      `Authorization: Bearer ${makeToken(alice)}\r\n\r\n`);
    const r = await rawResponse(conn, 5000, 'the answer to POST /media');
    assert.equal(r.status, 507, r.head);
    assert.equal(JSON.parse(r.body).code, 'storage_full');
    const api = await httpRequest(srv.port, 'POST', '/api/notifications', {
      headers: { Authorization: 'Bearer hostile-api-key-0123456789abcdef', 'Content-Type': 'application/json' },
      body: JSON.stringify({ to: bob, type: 'alert', title: 'disk' }),
    });
    assert.equal(api.status, 507, api.body.toString());
    assert.match(srv.child.stderrText, /free space in \S+ is below the reserve of 1000000000000000 bytes/);
    console.log('hostile: disk below the reserve: send, join, upload, notify, presence text refused storage_full; sync, history, receipts served; POST /media 507');
  });
});

/* ------------------------------------------------------------------ */
/* 7. Urgent messages as a weapon                                      */
/* ------------------------------------------------------------------ */

describe('7. urgent abuse', () => {
  /** The notification events `c` received (the Notification objects). */
  const pushed = (c, from) => c.log.filter((e) => e.name === 'notification' && (!from || e.args[0].from === from)).map((e) => e.args[0]);
  const urgent = (c, to, text) => c.send({ to }, { text }, { priority: 'urgent' });
  /** Quiet hours around now in UTC. */
  const quietNow = () => {
    const m = Math.floor(Date.now() / 60000) % 1440;
    const hhmm = (x) => `${String(Math.floor(((x + 1440) % 1440) / 60)).padStart(2, '0')}:${String((x + 1440) % 60).padStart(2, '0')}`;
    return { start: hhmm(m - 30), end: hhmm(m + 30), tz: 'Etc/UTC' };
  };

  test('a stranger\'s urgent DM notifies as high (quiet hours hold it), a contact\'s as urgent (it passes them); a muted sender never pushes, urgent or not', async () => {
    const srv = await start();
    const [bob, eve, carol, mute, mutedContact, dan] = ['bob', 'eve', 'carol', 'mute', 'mutedc', 'dan'].map(fresh);
    const b = await online(srv, bob);
    for (const u of [carol, mutedContact, dan]) await b.text({ to: u }, `hello ${u}`); /* bob wrote to them: contacts */
    const [e, c, m, mc, d] = await Promise.all([eve, carol, mute, mutedContact, dan].map((u) => online(srv, u)));
    /* No quiet hours: both are pushed, the stranger's as high. */
    const sent = await urgent(e, bob, 'from a stranger');
    assert.equal(sent.message.priority, 'urgent', 'the message itself is stored as sent');
    await eventually(() => pushed(b, eve).length === 1, 5000, 'the stranger\'s notification');
    assert.equal(pushed(b, eve)[0].priority, 'high');
    await urgent(c, bob, 'from a contact');
    await eventually(() => pushed(b, carol).length === 1, 5000, 'the contact\'s notification');
    assert.equal(pushed(b, carol)[0].priority, 'urgent');
    /* Quiet hours now: the stranger's is held, the contact's passes. */
    await b.ok('notification_prefs_set', { quiet_hours: quietNow(), muted_users: [mute, mutedContact] });
    await urgent(e, bob, 'stranger in quiet hours');
    await urgent(m, bob, 'muted stranger');
    await urgent(mc, bob, 'muted contact');
    await urgent(c, bob, 'contact in quiet hours');
    await eventually(() => pushed(b, carol).length === 2, 5000, 'the contact\'s notification in quiet hours');
    await urgent(d, bob, 'the last one');
    await eventually(() => pushed(b, dan).length === 1, 5000, 'a later contact\'s notification');
    await sleep(200);
    assert.equal(pushed(b, eve).length, 1, 'quiet hours held the stranger\'s urgent message');
    assert.deepEqual(pushed(b, mute), [], 'a muted stranger is never pushed');
    assert.deepEqual(pushed(b, mutedContact), [], 'a muted contact is never pushed, urgent or not');
    /* Held, not lost: the stranger's is in the next sync. */
    const synced = (await b.ok('notifications_sync', {})).notifications;
    assert.ok(synced.some((n) => n.from === eve && n.body === 'stranger in quiet hours' && n.priority === 'high'), 'the held one is stored');
  });

  test('more than 3 urgent messages from one sender to one recipient: the 4th is stored as high and notifies nobody; 200 urgent sends log fewer than 5 lines', async () => {
    const srv = await start();
    const [bob, frank] = [fresh('bob'), fresh('frank')];
    const b = await online(srv, bob);
    await b.text({ to: frank }, 'hello');
    const f = await online(srv, frank);
    const prios = [];
    for (let i = 0; i < 5; i++) prios.push((await urgent(f, bob, `urgent ${i}`)).message.priority);
    assert.deepEqual(prios, ['urgent', 'urgent', 'urgent', 'high', 'high']);
    const hist = await b.ok('history', { conversation: dm(bob, frank) });
    assert.deepEqual(hist.messages.map((m) => m.priority), ['normal', 'urgent', 'urgent', 'urgent', 'high', 'high'], 'stored so');
    await eventually(() => pushed(b, frank).length >= 3, 5000, '3 notifications');
    /* The flood: 10 senders x 20 urgent messages. */
    const senders = await Promise.all(Array.from({ length: 10 }, () => online(srv, fresh('flood'))));
    const logBefore = srv.child.stderrText.length;
    const t0 = Date.now();
    const acks = await Promise.all(senders.map(async (s) => {
      const out = [];
      for (let i = 0; i < 20; i++) out.push(await urgent(s, bob, `flood ${i}`));
      return out;
    }));
    const all = acks.flat();
    assert.equal(all.filter((r) => r?.ok).length, 200, 'every urgent message is stored');
    assert.equal(all.filter((r) => r.message.priority === 'urgent').length, 30, '3 per sender stay urgent');
    const flooders = new Set(senders.map((s) => s.user));
    await eventually(() => b.log.filter((e) => e.name === 'notification' && flooders.has(e.args[0].from)).length >= 30, 5000, '30 notifications');
    await sleep(200);
    const notes = b.log.filter((e) => e.name === 'notification' && flooders.has(e.args[0].from)).length;
    const lines = srv.child.stderrText.slice(logBefore).split('\n').filter((l) => l.length);
    console.log(`hostile: 200 urgent messages from 10 strangers in ${Date.now() - t0} ms: ${notes} notifications pushed, ${lines.length} log lines`);
    assert.equal(notes, 30, 'bob was notified 3 times per sender');
    assert.ok(lines.length < 5, `log lines during the flood:\n${lines.join('\n')}`);
    assert.ok(logLines(srv.child.stderrText, 'info').length < 10, 'no info line per urgent message');
    await stillServed(b, 'the recipient after the flood');
  });
});

/* ------------------------------------------------------------------ */
/* 8. HEAD                                                             */
/* ------------------------------------------------------------------ */

describe('8. HTTP heads', () => {
  test('HEAD answers carry no body: HEAD then GET on one keep-alive socket both parse, the GET body intact; methods are case-sensitive (get: 405)', async () => {
    const srv = await start();
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    const ask = (method, p) => withTimeout(new Promise((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port: srv.port, method, path: p, agent }, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks), reused: req.reusedSocket }));
      });
      req.on('error', reject);
      req.end();
    }), 5000, `${method} ${p}`);
    try {
      for (const p of ['/', '/healthz', '/', '/healthz']) {
        const head = await ask('HEAD', p);
        assert.equal(head.status, 200, `HEAD ${p}`);
        assert.equal(head.body.length, 0);
        const get = await ask('GET', p);
        assert.equal(get.status, 200, `GET ${p} after HEAD`);
        assert.equal(get.reused, true, 'the same connection');
        assert.equal(get.body.length, Number(head.headers['content-length']), 'HEAD names the GET\'s length');
        assert.equal(get.body.length, Number(get.headers['content-length']));
      }
    } finally {
      agent.destroy();
    }
    /* Byte for byte: the GET's status line follows the HEAD's head at once. */
    const raw = rawConnect(srv.port);
    await raw.connected;
    raw.sock.write('HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    await eventually(() => (raw.text().match(/HTTP\/1\.1 200/g) ?? []).length === 2 && raw.text().endsWith('ok\n'), 3000, 'both answers');
    const first = parseResponse(raw.bytes());
    assert.match(first.body.toString('latin1'), /^HTTP\/1\.1 200 OK\r\n/, 'nothing between the HEAD answer and the GET answer');
    /* Methods are case-sensitive. */
    const lower = rawConnect(srv.port);
    await lower.connected;
    lower.sock.write('get / HTTP/1.1\r\nHost: x\r\n\r\n');
    const r = await rawResponse(lower);
    assert.equal(r.status, 405, r.head);
    assert.equal(r.headers.allow, 'GET, HEAD');
    await healthz(srv.port);
  });
});

/* ------------------------------------------------------------------ */
/* 9. Origins                                                          */
/* ------------------------------------------------------------------ */

describe('9. origins', () => {
  const GOOD = 'http://good.example';
  const EVIL = 'http://evil.example';

  test('--cors-origin http://good.example: a foreign Origin is 403 for upgrades, polling and /media, /api/notifications (preflight too); the listed one and none pass', async () => {
    const keyFile = path.join(tempDir(), 'keys');
    writeFileSync(keyFile, 'hostile-api-key-0123456789abcdef\n');
    const srv = await start(['--cors-origin', GOOD, '--api-key-file', keyFile]);
    const w = await witness(srv);
    const evilPoll = await request(srv.port, 'GET', `${BASE}${q('polling')}`, { headers: { Origin: EVIL } });
    assert.equal(evilPoll.status, 403);
    assert.deepEqual(JSON.parse(evilPoll.body), { code: 4, message: 'Forbidden' });
    assert.equal(evilPoll.headers['access-control-allow-origin'], undefined);
    const evilUp = await upgradeRequest(srv.port, `${BASE}${q('websocket')}`, { Origin: EVIL });
    assert.equal(evilUp.status, 403);
    for (const headers of [{ Origin: GOOD }, {}]) {
      const what = headers.Origin ?? 'no Origin';
      const hs = await request(srv.port, 'GET', `${BASE}${q('polling')}`, { headers });
      assert.equal(hs.status, 200, `polling handshake from ${what}`);
      if (headers.Origin) assert.equal(hs.headers['access-control-allow-origin'], GOOD);
      assert.equal((await upgradeRequest(srv.port, `${BASE}${q('websocket')}`, headers)).status, 101, `upgrade from ${what}`);
    }
    for (const route of ['/media', '/api/notifications']) {
      const pre = (origin) => httpRequest(srv.port, 'OPTIONS', route, {
        headers: { Origin: origin, 'Access-Control-Request-Method': 'POST', 'Access-Control-Request-Headers': 'authorization, content-type' },
      });
      const good = await pre(GOOD);
      assert.equal(good.status, 204, `OPTIONS ${route} from the listed origin`);
      assert.equal(good.headers['access-control-allow-origin'], GOOD);
      assert.match(good.headers['access-control-allow-methods'] ?? '', /\bPOST\b/);
      assert.equal(good.headers['access-control-allow-headers'], 'Authorization, Content-Type');
      const evil = await pre(EVIL);
      assert.equal(evil.status, 403, `OPTIONS ${route} from a foreign origin`);
      assert.equal(evil.headers['access-control-allow-origin'], undefined);
    }
    const user = fresh('browser');
    const upload = (origin) => httpRequest(srv.port, 'POST', '/media', { headers: { Origin: origin, ...bearer(user), 'Content-Type': 'image/png' }, body: randomBytes(100) });
    const ok = await upload(GOOD);
    assert.equal(ok.status, 201, ok.body.toString());
    assert.equal(ok.headers['access-control-allow-origin'], GOOD);
    assert.equal((await upload(EVIL)).status, 403, 'a foreign page may not upload with a stolen token');
    const api = await httpRequest(srv.port, 'POST', '/api/notifications', {
      headers: { Origin: EVIL, Authorization: 'Bearer hostile-api-key-0123456789abcdef', 'Content-Type': 'application/json' },
      body: JSON.stringify({ to: user, type: 'alert', title: 'x' }),
    });
    assert.equal(api.status, 403);
    await stillServed(w, 'beside the foreign origins');
  });
});

/* ------------------------------------------------------------------ */
/* 10. Tokens                                                          */
/* ------------------------------------------------------------------ */

describe('10. tokens', () => {
  const now = () => Math.floor(Date.now() / 1000);
  const b64u = (v) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');
  /** An ES256 or RS256 token signed with `key` (a private KeyObject). */
  function signed(alg, key, kid, sub, claims = {}) {
    const header = { alg, typ: 'JWT', ...(kid ? { kid } : {}) };
    const signing = `${b64u(header)}.${b64u({ sub, iat: now(), exp: now() + 600, ...claims })}`;
    const sig = cryptoSign('sha256', Buffer.from(signing), alg === 'ES256' ? { key, dsaEncoding: 'ieee-p1363' } : key);
    return `${signing}.${sig.toString('base64url')}`;
  }
  const jwks = (...keys) => JSON.stringify({ keys: keys.map(([kid, k, alg]) => ({ ...k.publicKey.export({ format: 'jwk' }), kid, alg, use: 'sig' })) });

  /** Connects with `token`: 'connected' or the connect_error data code. */
  async function outcome(srv, token) {
    const c = new ChatClient(srv, { token, label: 'token probe' });
    const e = await c.events.next(10000, 'connect or connect_error');
    c.close();
    if (e.name === 'connect') return 'connected';
    assert.equal(e.name, 'connect_error');
    return e.args[0].data?.code ?? `no code: ${e.args[0].message}`;
  }

  test('duplicate members, exp 1e300, lifetimes over --jwt-max-lifetime are invalid_token; ES256 (JWKS) and RS256 (PEM) connect; SIGHUP rotates the JWKS', async () => {
    const dir = tempDir();
    const ec1 = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const ec2 = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const jwksFile = path.join(dir, 'jwks.json');
    writeFileSync(jwksFile, jwks(['k1', ec1, 'ES256']));
    const pemFile = path.join(dir, 'rsa.pem');
    writeFileSync(pemFile, rsa.publicKey.export({ format: 'pem', type: 'spki' }));
    const srv = await start(['--jwt-max-lifetime', '3600', '--jwks-file', jwksFile, '--jwt-public-key-file', pemFile]);
    const w = await witness(srv);
    const t = now();
    const H = '{"alg":"HS256","typ":"JWT"}';
    const cases = [
      ['duplicate sub', rawHs256(H, `{"sub":"alice","sub":"admin","iat":${t},"exp":${t + 600}}`, SECRET)],
      ['duplicate role', rawHs256(H, `{"sub":"alice","role":"user","role":"admin","iat":${t},"exp":${t + 600}}`, SECRET)],
      ['duplicate alg', rawHs256('{"alg":"HS256","alg":"HS256","typ":"JWT"}', `{"sub":"alice","iat":${t},"exp":${t + 600}}`, SECRET)],
      ['duplicate alg, none first', rawHs256('{"alg":"none","alg":"HS256","typ":"JWT"}', `{"sub":"alice","iat":${t},"exp":${t + 600}}`, SECRET)],
      ['exp 1e300', rawHs256(H, `{"sub":"alice","iat":${t},"exp":1e300}`, SECRET)],
      ['valid for 2 h (max 1 h)', makeToken('alice', { claims: { exp: t + 7200 } })],
      ['ES256 with an unknown kid', signed('ES256', ec2.privateKey, 'k2', 'alice')],
    ];
    for (const [what, token] of cases) assert.equal(await outcome(srv, token), 'invalid_token', what);
    assert.equal(await outcome(srv, makeToken('alice', { claims: { exp: t + 3000 } })), 'connected', 'HS256 within the lifetime');
    assert.equal(await outcome(srv, signed('ES256', ec1.privateKey, 'k1', 'alice')), 'connected', 'ES256 from the JWKS');
    assert.equal(await outcome(srv, signed('RS256', rsa.privateKey, null, 'alice')), 'connected', 'RS256 from the PEM file');
    assert.equal(await outcome(srv, signed('RS256', rsa.privateKey, null, 'alice', { exp: t + 7200 })), 'invalid_token', 'RS256 over the lifetime');

    /* Rotation: k1 is withdrawn, k2 added; SIGHUP. */
    writeFileSync(jwksFile, jwks(['k2', ec2, 'ES256']));
    const logged = srv.child.stderrText.length;
    srv.child.kill('SIGHUP');
    await eventually(() => /SIGHUP: token keys reloaded/.test(srv.child.stderrText.slice(logged)), 5000, 'the reload');
    assert.equal(await outcome(srv, signed('ES256', ec2.privateKey, 'k2', 'alice')), 'connected', 'the new key');
    assert.equal(await outcome(srv, signed('ES256', ec1.privateKey, 'k1', 'alice')), 'invalid_token', 'the withdrawn key');
    assert.equal(await outcome(srv, makeToken('alice')), 'connected', 'the secret stays');
    /* A JWKS that does not load leaves the keys in place. */
    writeFileSync(jwksFile, '{"keys": [');
    const logged2 = srv.child.stderrText.length;
    srv.child.kill('SIGHUP');
    await eventually(() => /SIGHUP: the token keys did not load/.test(srv.child.stderrText.slice(logged2)), 5000, 'the failed reload');
    assert.equal(await outcome(srv, signed('ES256', ec2.privateKey, 'k2', 'alice')), 'connected', 'still the new key');
    await stillServed(w, 'after the token probes');
    assert.ok(srv.alive());
  });
});

/* ------------------------------------------------------------------ */
/* 11. Per-address limits                                              */
/* ------------------------------------------------------------------ */

describe('11. per-address limits', () => {
  test('--max-conns-per-ip 20: the 21st connection from 127.0.0.1 is closed without a byte; 127.0.0.2 is served; a slot freed is usable again', async () => {
    const srv = await start(['--max-conns-per-ip', '20']);
    const held = [];
    for (let i = 0; i < 20; i++) {
      const c = rawConnect(srv.port);
      await c.connected;
      c.sock.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
      assert.equal((await rawResponse(c, 5000, `the answer on connection ${i + 1}`)).status, 200);
      held.push(c);
    }
    const over = rawConnect(srv.port);
    await over.connected;
    over.sock.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    assert.ok(await closesWithin(over, scaled(3000)), 'the 21st connection is closed');
    assert.equal(over.bytes().length, 0, `the 21st connection got no byte: ${JSON.stringify(over.text())}`);
    /* Another address: plain HTTP and a chat client over polling. */
    await healthz(srv.port, '127.0.0.2');
    const sync = await pollingChatSync(srv.port, '127.0.0.2', makeToken(fresh('witness')));
    assert.equal(sync.ok, true, JSON.stringify(sync));
    /* Held connections are still served; one closed frees a slot. */
    held[0].sock.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
    await eventually(() => held[0].text().split('HTTP/1.1 200').length === 3, 3000, 'a held connection served again');
    held[1].sock.destroy();
    await eventually(async () => {
      const c = rawConnect(srv.port);
      await c.connected;
      c.sock.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
      const got = await rawResponse(c, 1000, 'an answer').then((r) => r.status === 200, () => false);
      c.sock.destroy();
      return got;
    }, 3000, 'a connection from 127.0.0.1 once one was closed');
    console.log('hostile: --max-conns-per-ip 20: the 21st connection closed with 0 bytes; 127.0.0.2 served');
  });

  test('--handshake-rate 2 (burst 10): beyond 10 new sessions at once from one address, 429 with Retry-After; other addresses connect; after the hint it passes again', async () => {
    const srv = await start(['--handshake-rate', '2']);
    const from = '127.0.0.3';
    const poll = () => httpFrom(srv.port, 'GET', `${BASE}${q('polling')}`, { localAddress: from });
    const t0 = Date.now();
    const answers = await Promise.all(Array.from({ length: 15 }, poll));
    const seconds = (Date.now() - t0) / 1000;
    const passed = answers.filter((r) => r.status === 200).length;
    const refused = answers.filter((r) => r.status !== 200);
    console.log(`hostile: 15 handshakes at once with --handshake-rate 2: ${passed} sessions, ${refused.length} refused`);
    assert.ok(passed >= 10 && passed <= 10 + Math.ceil(seconds * 2), `${passed} handshakes passed in ${seconds} s (burst 10, 2/s)`);
    assert.ok(refused.length > 0, 'some were refused');
    for (const r of refused) {
      assert.equal(r.status, 429, r.body.toString());
      const body = JSON.parse(r.body);
      assert.equal(body.code, 3);
      assert.match(body.message, /^Too many new sessions/);
      assert.ok(Number(r.headers['retry-after']) >= 1, `Retry-After: ${r.headers['retry-after']}`);
    }
    /* WebSocket handshakes draw from the same bucket. */
    assert.equal((await upgradeRequest(srv.port, `${BASE}${q('websocket')}`, {}, { localAddress: from })).status, 429);
    /* Others: a socket.io-client from 127.0.0.1, a handshake from 127.0.0.2. */
    const w = await witness(srv);
    await stillServed(w, 'beside the handshake flood');
    assert.equal((await httpFrom(srv.port, 'GET', `${BASE}${q('polling')}`, { localAddress: '127.0.0.2' })).status, 200);
    /* After the hint, the address may open a session again. */
    await sleep(Number(refused[0].headers['retry-after']) * 1000);
    assert.equal((await poll()).status, 200);
  });
});

/* ------------------------------------------------------------------ */
/* 12. The in-flight body budget                                       */
/* ------------------------------------------------------------------ */

describe('12. buffered bodies in flight', () => {
  test('--max-body-inflight 2000000: two polling POSTs of 900000 bytes held two-thirds sent, a third is 503 with Retry-After: 1 before its body; once they end, a POST is accepted', async () => {
    const srv = await start(['--max-body-inflight', '2000000', '--max-payload', '1000000']);
    const w = await witness(srv);
    const N = 900000;
    const SENT = 600000;
    const body = Buffer.from(`4${'x'.repeat(N - 1)}`);
    const postHead = (sid, len = N) => `POST ${BASE}${q('polling', sid)} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: ${len}\r\n\r\n`;
    async function openPost(len = N) {
      const { sid } = await pollHandshake(srv.port, BASE);
      const c = rawConnect(srv.port);
      await c.connected;
      c.sock.write(postHead(sid, len));
      return c;
    }
    /* Two slow senders. */
    const slow = [await openPost(), await openPost()];
    for (let off = 0; off < SENT; off += 100000) {
      for (const c of slow) c.sock.write(body.subarray(off, off + 100000));
      await sleep(20);
    }
    /* A third declaring as much: refused on its head once the server
     * holds their bytes (probes that got in hold nothing and are dropped). */
    const refused = await eventually(async () => {
      const c = await openPost();
      const r = await rawResponse(c, 500, 'an answer to the head').catch(() => null);
      c.sock.destroy();
      return r;
    }, 5000, 'a POST refused for the budget');
    assert.equal(refused.status, 503, refused.head);
    assert.equal(refused.headers['retry-after'], '1');
    for (const c of slow) assert.equal(c.bytes().length, 0, 'the held POSTs are still being read');
    await healthz(srv.port);
    await stillServed(w, 'while the budget is held');
    /* One completes, one is aborted: the budget is free again. */
    slow[0].sock.write(body.subarray(SENT));
    assert.equal((await rawResponse(slow[0], 5000, 'the completed POST')).status, 200);
    slow[1].sock.destroy();
    await eventually(async () => {
      const { sid } = await pollHandshake(srv.port, BASE);
      const r = await request(srv.port, 'POST', `${BASE}${q('polling', sid)}`, { body: body.toString(), headers: { 'Content-Type': 'text/plain;charset=UTF-8' } });
      return r.status === 200;
    }, 5000, 'a full-size POST accepted again');
    console.log('hostile: --max-body-inflight 2000000: the third 900000-byte POST refused 503 (Retry-After: 1) on its head while two held 600000 each');
  });
});

/* ------------------------------------------------------------------ */
/* 13. sync of a user in many rooms                                    */
/* ------------------------------------------------------------------ */

describe('13. sync paging', () => {
  test('a user in 450 rooms: the sync answer is under 1,000,000 bytes with at most 200 conversations, more:true with next; no live event before more:false', async () => {
    const srv = await start(['--max-rooms', '1000', '--rate-joins', '0']);
    const [user, poster] = [fresh('roomy'), fresh('poster')];
    const tag = fresh('many');
    const ROOMS = 450;
    /* Joined through 5 connections (each within its event burst). */
    const joiners = await Promise.all(Array.from({ length: 5 }, () => new ChatClient(srv, { user }).connected()));
    await Promise.all(joiners.map(async (j, k) => {
      for (let i = k * 90; i < (k + 1) * 90; i++) await j.ok('join_room', { room: `${tag}-${i}` });
    }));
    for (const j of joiners) j.close();
    const p = await online(srv, poster);
    await p.ok('join_room', { room: `${tag}-0` });

    const d = await new ChatClient(srv, { user }).connected();
    const res = await d.ok('sync', { since: {} });
    const bytes = Buffer.byteLength(JSON.stringify(res));
    console.log(`hostile: sync of a user in ${ROOMS} rooms: the first answer ${bytes} bytes, ${res.conversations.length} conversations, more ${res.more}, next ${res.next}`);
    assert.ok(bytes < 1000000, `${bytes} bytes`);
    assert.ok(res.conversations.length > 0 && res.conversations.length <= 200, `${res.conversations.length} conversations`);
    assert.equal(res.more, true);
    assert.match(res.next, new RegExp(`^room:${tag}-\\d+$`), 'next names where the list goes on');
    assert.ok(!res.conversations.some((c) => c.id === res.next), 'next is the first conversation not listed');
    /* Not live yet: a message to one of the rooms is not pushed. */
    const m = await p.text({ room: `${tag}-0` }, 'during the walk');
    await d.req('typing', { conversation: `room:${tag}-0`, state: 'stop' }); /* a round trip */
    await sleep(200);
    assert.ok(!d.log.some((e) => e.name === 'new_message' && e.args[0].id === m.id), 'nothing live before the answer with more:false');

    /* The walk: `next` back as `cursor`, `since` moved on, until more:false. */
    const seen = new Set(res.conversations.map((c) => c.id));
    const since = {};
    let delivered = res.messages.filter((x) => x.id === m.id).length;
    let page = res;
    let pages = 1;
    while (page.more) {
      for (const x of page.messages) since[x.conversation] = Math.max(since[x.conversation] ?? 0, x.seq);
      page = await d.ok('sync', { since, cursor: page.next });
      pages++;
      const n = Buffer.byteLength(JSON.stringify(page));
      assert.ok(n < 1000000, `page ${pages}: ${n} bytes`);
      assert.ok(page.conversations.length <= 200, `page ${pages}: ${page.conversations.length} conversations`);
      for (const c of page.conversations) seen.add(c.id);
      delivered += page.messages.filter((x) => x.id === m.id).length;
      assert.ok(pages < 20, 'the walk ends');
    }
    assert.equal(seen.size, ROOMS, 'every conversation was listed');
    assert.equal(delivered, 1, 'the message posted during the walk came in an answer, once');
    /* Live now, in a room of the last page too, exactly once. */
    await p.ok('join_room', { room: `${tag}-449` });
    const m2 = await p.text({ room: `${tag}-449` }, 'after the walk');
    await eventually(() => d.log.some((e) => e.name === 'new_message' && e.args[0].id === m2.id), 3000, 'the live message');
    await d.req('typing', { conversation: `room:${tag}-449`, state: 'stop' });
    await sleep(100);
    assert.equal(d.log.filter((e) => e.name === 'new_message' && e.args[0].id === m2.id).length, 1);
    assert.ok(!d.log.some((e) => e.name === 'new_message' && e.args[0].id === m.id), 'the earlier one was not pushed as well');
    console.log(`hostile: sync of ${ROOMS} rooms walked in ${pages} pages; live afterwards`);
  });
});

/* ------------------------------------------------------------------ */
/* 14. Startup with a damaged data directory                           */
/* ------------------------------------------------------------------ */

describe('14. startup with a damaged data directory', () => {
  test('a zero-byte messages.db starts a new database with a warning naming the file', async () => {
    const dataDir = path.join(tempDir(), 'data');
    mkdirSync(dataDir);
    const db = path.join(dataDir, 'messages.db');
    writeFileSync(db, '');
    const srv = await start([], { dataDir });
    const warning = new RegExp(` warn .*${db.replace(/[.]/g, '\\.')}.*0 bytes`);
    await eventually(() => warning.test(srv.child.stderrText), 3000, `a warning naming ${db}`);
    const w = await witness(srv);
    await stillServed(w, 'on the new database');
    assert.ok(statSync(db).size > 0);
  });

  /* parleyd started by hand: it must exit by itself, 1, quickly, naming
   * the file (and under ASan without a leak report, which would abort). */
  function refusedStart(dataDir) {
    const r = spawnSync(program('PARLEYD'), ['--listen', '127.0.0.1:0', '--jwt-secret', SECRET, '--data-dir', dataDir],
      { encoding: 'utf8', timeout: scaled(20000) });
    return { status: r.status, signal: r.signal, stderr: r.stderr ?? '' };
  }

  test('a truncated database, or a media path that is a regular file: parleyd refuses to start (exit 1) and says which file', async () => {
    const dataDir = path.join(tempDir(), 'data');
    const srv = await start([], { dataDir });
    const w = await witness(srv);
    for (let i = 0; i < 40; i++) await w.text({ to: fresh('peer') }, 'x'.repeat(3000));
    await srv.stop();
    const db = path.join(dataDir, 'messages.db');
    for (const f of [`${db}-wal`, `${db}-shm`]) if (existsSync(f)) rmSync(f);
    const size = statSync(db).size;
    assert.ok(size > 8192, `${size} bytes`);
    truncateSync(db, Math.floor(size / 2));
    let r = refusedStart(dataDir);
    assert.equal(r.signal, null, `killed by ${r.signal}: ${r.stderr.slice(-2000)}`);
    assert.equal(r.status, 1, r.stderr.slice(-2000));
    assert.ok(r.stderr.includes(db), `the message names ${db}: ${r.stderr.slice(-1000)}`);
    assert.doesNotMatch(r.stderr, /LeakSanitizer|AddressSanitizer/);

    const other = path.join(tempDir(), 'data');
    mkdirSync(other);
    writeFileSync(path.join(other, 'media'), 'not a directory');
    r = refusedStart(other);
    assert.equal(r.signal, null, `killed by ${r.signal}: ${r.stderr.slice(-2000)}`);
    assert.equal(r.status, 1, r.stderr.slice(-2000));
    assert.match(r.stderr, /media/);
    assert.match(r.stderr, /not a directory/);
    assert.doesNotMatch(r.stderr, /LeakSanitizer|AddressSanitizer/);
  });
});

/* ------------------------------------------------------------------ */
/* 15. Engine.IO: two POSTs at once                                    */
/* ------------------------------------------------------------------ */

describe('15. Engine.IO polling', () => {
  test('a second POST while the first one\'s body is being read gets 400 and ends the session (a following GET: Session ID unknown)', async () => {
    const srv = await start();
    const w = await new ChatClient(srv, { user: fresh('poller'), transports: ['polling'] }).connected();
    await w.ok('sync', { since: {} });
    const { sid } = await pollHandshake(srv.port, BASE);
    const path1 = `${BASE}${q('polling', sid)}`;
    /* The first POST: chunked, one chunk sent, the request kept open. */
    const first = rawConnect(srv.port);
    await first.connected;
    await new Promise((resolve) => first.sock.write(`POST ${path1} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain;charset=UTF-8\r\n` +
      'Transfer-Encoding: chunked\r\n\r\n1\r\n3\r\n', resolve));
    /* A round trip through the server's loop on another connection: the
     * first POST's head has been read by then. */
    await healthz(srv.port, '127.0.0.1');
    await sleep(50);
    assert.equal(first.bytes().length, 0, 'the first POST is still being read');
    const second = await request(srv.port, 'POST', path1, { body: '3', headers: { 'Content-Type': 'text/plain;charset=UTF-8' } });
    assert.equal(second.status, 400, `the second POST: ${second.body}`);
    const after = await request(srv.port, 'GET', path1);
    assert.equal(after.status, 400);
    assert.deepEqual(JSON.parse(after.body), { code: 1, message: 'Session ID unknown' });
    /* The first one ends whichever way; the server goes on. */
    first.sock.write('0\r\n\r\n');
    await Promise.race([rawResponse(first, 3000).catch(() => null), first.closed]);
    assert.ok(srv.alive(), `the server died${srv.stderr()}`);
    await stillServed(w, 'a polling client beside the broken session');
  });
});

/* ------------------------------------------------------------------ */
/* 16. Quiet hours time zones                                          */
/* ------------------------------------------------------------------ */

describe('16. quiet hours time zones', () => {
  test('an unknown zone is invalid_field quiet_hours.tz; with an empty --tz-dir every zone is, and the log says why', async () => {
    const srv = await start(['--tz-dir', tempDir()]);
    const a = await witness(srv);
    const qh = (tz) => ({ quiet_hours: { start: '22:00', end: '07:00', tz } });
    await a.fails('notification_prefs_set', qh('Nowhere/Atlantis'), 'invalid_field', 'quiet_hours.tz');
    await a.fails('notification_prefs_set', qh('Europe/Berlin'), 'invalid_field', 'quiet_hours.tz');
    await a.fails('notification_prefs_set', qh('../../etc/passwd'), 'invalid_field', 'quiet_hours.tz');
    await eventually(() => /time zone Nowhere\/Atlantis: no such zone/.test(srv.child.stderrText), 3000, 'the log line saying why');
    /* A summary, not a line per request: a client cannot flood the log. */
    for (let i = 0; i < 20; i++) await a.fails('notification_prefs_set', qh(`Nowhere/Place_${i}`), 'invalid_field', 'quiet_hours.tz');
    const lines = srv.child.stderrText.split('\n').filter((l) => /time zone /.test(l));
    assert.ok(lines.length <= 2, `${lines.length} log lines for 23 unknown zones`);
    await stillServed(a, 'after the refused zones');
  });
});
