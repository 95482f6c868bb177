// The push webhook end to end (docs/PROTOCOL.md, "Push webhook"): parleyd
// with --push-webhook POSTs push-eligible notifications to a Node `https`
// receiver with a self-signed certificate (trusted through --push-ca),
// which checks the HMAC signature and timestamp of every request. Who
// gets a push (offline recipients with push on; not online ones, nor
// push:false, muted, quiet hours; in_app:false does not matter), retries
// after 500s and timeouts with backoff, nothing lost or doubled across a
// dead receiver plus a SIGKILL and restart, and bad flags refused at
// startup.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHmac, timingSafeEqual } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { cleanup, lowFreePort, makeSelfSignedCert, onCleanup, program, sleep, tempDir } from './lib/harness.mjs';
import { ChatClient, eventually, httpRequest, makeToken, startChatServer } from './lib/chat.mjs';

const API_KEY = 'push-api-key-0123456789abcdef';
const PUSH_SECRET = 'push-webhook-secret-0123456789abcdef-xyz';

let uniq = 0;
const users = (...names) => names.map((n) => `${n}${++uniq}`);

async function device(server, user, { role } = {}) {
  const c = new ChatClient(server, { user, token: makeToken(user, role ? { claims: { role } } : {}) });
  await c.connected();
  return c;
}

/** Sets user's preferences from a device that then goes away. */
async function setPrefs(server, user, prefs) {
  const c = await device(server, user);
  await c.ok('notification_prefs_set', prefs);
  c.close();
}

const post = async (port, body) => {
  const res = await httpRequest(port, 'POST', '/api/notifications', {
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${API_KEY}` }, body: JSON.stringify(body),
  });
  assert.equal(res.status, 201, `POST /api/notifications: ${res.status} ${res.body}`);
  return JSON.parse(res.body).notification;
};

/** Minutes after midnight in Asia/Kolkata (UTC+05:30, no DST) at `ms`. */
const kolkataMinutes = (ms = Date.now()) => Math.floor((ms / 60000 + 330) % 1440);
const hhmm = (m) => `${String(Math.floor(((m % 1440) + 1440) % 1440 / 60)).padStart(2, '0')}:${String((((m % 1440) + 1440) % 1440) % 60).padStart(2, '0')}`;

/**
 * An HTTPS receiver that verifies every request (method, path, headers,
 * signature over "<ts>.<body>", timestamp within 5 minutes, delivery id
 * matching the body) and records it; `answer(req)` decides the response:
 * { status, delayMs } (delayMs: answer late; Infinity: never).
 */
class Receiver {
  constructor(tls, answer = () => ({ status: 200 })) {
    this.tls = tls;
    this.answer = answer;
    this.requests = [];
    this.bad = [];
    this.hanging = new Set();
  }

  async listen(port = 0) {
    this.server = https.createServer({ cert: this.tls.cert, key: this.tls.key }, (req, res) => this.handle(req, res));
    await new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, '127.0.0.1', resolve);
    });
    this.port = this.server.address().port;
    onCleanup(() => this.close());
    return this;
  }

  close() {
    for (const r of this.hanging) r.destroy();
    this.hanging.clear();
    if (!this.server) return Promise.resolve();
    const s = this.server;
    this.server = null;
    s.closeAllConnections?.();
    return new Promise((resolve) => s.close(() => resolve()));
  }

  handle(req, res) {
    const chunks = [];
    req.on('data', (d) => chunks.push(d));
    req.on('end', () => {
      const raw = Buffer.concat(chunks);
      const rec = { at: Date.now(), headers: req.headers, raw: raw.toString('utf8') };
      const problems = [];
      if (req.method !== 'POST') problems.push(`method ${req.method}`);
      if (req.url !== '/hook') problems.push(`path ${req.url}`);
      if (req.headers['content-type'] !== 'application/json') problems.push(`content-type ${req.headers['content-type']}`);
      const ts = req.headers['x-parley-timestamp'];
      if (!/^\d+$/.test(ts ?? '') || Math.abs(Number(ts) - Date.now() / 1000) > 300) problems.push(`timestamp ${ts}`);
      const want = `v1=${createHmac('sha256', PUSH_SECRET).update(`${ts}.`).update(raw).digest('hex')}`;
      const got = req.headers['x-parley-signature'] ?? '';
      if (got.length !== want.length || !timingSafeEqual(Buffer.from(got), Buffer.from(want))) problems.push(`signature ${got}`);
      try {
        rec.body = JSON.parse(rec.raw);
        if (String(rec.body.delivery) !== req.headers['x-parley-delivery']) problems.push(`delivery header ${req.headers['x-parley-delivery']}`);
      } catch (err) {
        problems.push(`body ${err.message}`);
      }
      if (problems.length) this.bad.push(problems.join('; '));
      this.requests.push(rec);
      const { status = 200, delayMs = 0 } = this.answer(rec) ?? {};
      rec.status = status;
      const send = () => {
        this.hanging.delete(res);
        res.writeHead(status, { 'Content-Type': 'text/plain' });
        res.end('x'.repeat(100));
      };
      if (delayMs === Infinity) {
        this.hanging.add(res);
      } else if (delayMs) {
        this.hanging.add(res);
        setTimeout(send, delayMs);
      } else {
        send();
      }
    });
  }

  /** Requests answered 2xx, by notification id. */
  delivered() {
    return this.requests.filter((r) => r.status >= 200 && r.status < 300 && r.body);
  }

  forUser(user) {
    return this.requests.filter((r) => r.body?.user === user);
  }
}

let tls;
let dir;
let keyFile;
let secretFile;

function pushArgs(port, extra = []) {
  return ['--api-key-file', keyFile, '--push-webhook', `https://127.0.0.1:${port}/hook`, '--push-secret-file', secretFile,
    '--push-ca', tls.certFile, ...extra];
}

async function metric(port, name) {
  const res = await httpRequest(port, 'GET', '/metrics');
  const line = res.body.toString().split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(' ')[1]) : undefined;
}

describe('push webhook', () => {
  before(() => {
    dir = tempDir();
    tls = makeSelfSignedCert(dir, 'receiver');
    keyFile = path.join(dir, 'keys');
    writeFileSync(keyFile, `${API_KEY}\n`);
    secretFile = path.join(dir, 'push-secret');
    writeFileSync(secretFile, `${PUSH_SECRET}\n`);
  });

  after(cleanup);

  test('who gets a push: offline with push on; not online, push:false, muted, quiet hours; in_app:false pushes', async () => {
    const rx = await new Receiver(tls).listen();
    const srv = await startChatServer({ extra: pushArgs(rx.port) });
    const [bob, carol, dave, erin, frank, gus, hal, noti] = users('bob', 'carol', 'dave', 'erin', 'frank', 'gus', 'hal', 'noti');
    await setPrefs(srv, dave, { push: false });
    await setPrefs(srv, erin, { muted_users: [noti] });
    await setPrefs(srv, frank, { types: { alert: false } });
    const now = kolkataMinutes();
    await setPrefs(srv, gus, { quiet_hours: { start: hhmm(now - 60), end: hhmm(now + 60), tz: 'Asia/Kolkata' } });
    await setPrefs(srv, hal, { in_app: false });
    const c = await device(srv, carol); // online: gets it live, no push
    const n = await device(srv, noti, { role: 'notifier' });
    // The closed devices are gone on the server: only carol and noti are connected.
    await eventually(async () => (await metric(srv.port, 'parley_chat_users')) === 2, 5000, 'two users connected');

    const sent = [];
    for (let i = 0; i < 3; i++) sent.push(await post(srv.port, { to: bob, type: 'alert', title: `b${i}`, body: 'x', actions: [{ id: 'open', label: 'Open' }] }));
    await post(srv.port, { to: carol, type: 'alert', title: 'online' });
    await post(srv.port, { to: dave, type: 'alert', title: 'push off' });
    await n.ok('notify', { to: erin, type: 'alert', title: 'muted sender' });
    await post(srv.port, { to: frank, type: 'alert', title: 'type off' });
    await post(srv.port, { to: gus, type: 'alert', title: 'quiet' });
    const gusUrgent = await post(srv.port, { to: gus, type: 'alert', title: 'urgent passes quiet hours', priority: 'urgent' });
    const halN = await post(srv.port, { to: hal, type: 'reminder', title: 'in_app off' });
    const erinOk = (await n.ok('notify', { to: frank, type: 'reminder', title: 'other type' })).notification;

    await eventually(() => rx.forUser(bob).length === 3 && rx.forUser(gus).length === 1 && rx.forUser(hal).length === 1 &&
      rx.forUser(frank).length === 1, 10000, 'the eligible pushes');
    await sleep(700); // anything extra would have come by now
    assert.deepEqual(rx.bad, [], 'every request verified');
    assert.equal(rx.requests.length, 6, `exactly the eligible ones: ${rx.requests.map((r) => r.body?.notification?.title)}`);
    for (const u of [carol, dave, erin]) assert.equal(rx.forUser(u).length, 0, `${u}: no push`);
    // Bodies: the Notification object as the socket API has it.
    const bobs = rx.forUser(bob).map((r) => r.body).sort((a, b) => a.notification.id - b.notification.id);
    assert.deepEqual(bobs.map((b) => b.notification), sent);
    assert.deepEqual(Object.keys(bobs[0]).sort(), ['delivery', 'notification', 'user']);
    assert.equal(new Set(rx.requests.map((r) => r.body.delivery)).size, 6, 'distinct delivery ids');
    assert.ok(bobs[0].delivery < bobs[1].delivery && bobs[1].delivery < bobs[2].delivery, 'one user in id order');
    assert.deepEqual(rx.forUser(gus)[0].body.notification, gusUrgent);
    assert.deepEqual(rx.forUser(hal)[0].body.notification, halN);
    assert.deepEqual(rx.forUser(frank)[0].body.notification, erinOk);
    // carol got hers live.
    await eventually(() => c.log.some((e) => e.name === 'notification'), 5000, 'carol live');
    assert.equal(await metric(srv.port, 'parley_push_sent_total'), 6);
    assert.equal(await metric(srv.port, 'parley_push_outbox'), 0);
    c.close();
    n.close();
    assert.equal((await srv.stop()).code, 0, `clean exit${srv.stderr()}`);
  });

  test('500s, then 200: delivered once, after retries with growing delays', async () => {
    const fails = 3;
    const rx = await new Receiver(tls, (r) => ({ status: rx.requests.filter((x) => x.body?.delivery === r.body?.delivery).length <= fails ? 500 : 200 })).listen();
    const srv = await startChatServer({ extra: pushArgs(rx.port, ['--push-backoff-ms', '100', '--push-backoff-max-ms', '2000']) });
    const [bob] = users('bob');
    const sent = await post(srv.port, { to: bob, type: 'alert', title: 'retry me' });
    await eventually(() => rx.delivered().length === 1, 10000, 'delivered after the 500s');
    await sleep(500);
    assert.deepEqual(rx.bad, []);
    const reqs = rx.forUser(bob);
    assert.equal(reqs.length, fails + 1, 'three failures and the success, nothing after');
    assert.ok(reqs.every((r) => r.body.delivery === reqs[0].body.delivery), 'the same delivery id each time');
    assert.deepEqual(reqs.at(-1).body.notification, sent);
    // Backoff: about 100, 200, 400 ms (+-20% jitter), loosely.
    for (let i = 1; i < reqs.length; i++) {
      const gap = reqs[i].at - reqs[i - 1].at;
      const base = 100 * 2 ** (i - 1);
      assert.ok(gap >= base * 0.75, `gap ${i}: ${gap} ms, want about ${base}`);
      assert.ok(gap < base * 1.25 + 1000, `gap ${i}: ${gap} ms, want about ${base}`);
    }
    const m = await httpRequest(srv.port, 'GET', '/metrics');
    assert.match(m.body.toString(), /^parley_push_failures_total\{reason="status"\} 3$/m);
    assert.match(m.body.toString(), /^parley_push_sent_total 1$/m);
    assert.equal((await srv.stop()).code, 0, `clean exit${srv.stderr()}`);
  });

  test('a receiver slower than --push-timeout: cut, retried', async () => {
    const rx = await new Receiver(tls, () => ({ status: 200, delayMs: rx.requests.length === 1 ? Infinity : 0 })).listen();
    const srv = await startChatServer({ extra: pushArgs(rx.port, ['--push-timeout', '1', '--push-backoff-ms', '100']) });
    const [bob] = users('bob');
    const t0 = Date.now();
    await post(srv.port, { to: bob, type: 'alert', title: 'slow' });
    await eventually(() => rx.requests.length === 2, 10000, 'a second attempt after the timeout');
    const [first, second] = rx.requests;
    assert.equal(first.body.delivery, second.body.delivery);
    const gap = second.at - first.at;
    assert.ok(gap >= 900 && gap < 4000, `retried ${gap} ms after the first attempt (timeout 1 s)`);
    await sleep(500);
    assert.equal(rx.requests.length, 2, 'answered the second time: done');
    assert.ok(Date.now() - t0 < 10000);
    assert.deepEqual(rx.bad, []);
    assert.match((await httpRequest(srv.port, 'GET', '/metrics')).body.toString(), /^parley_push_failures_total\{reason="timeout"\} 1$/m);
    // Shutting down with a request in flight: aborted cleanly (the row stays queued).
    rx.answer = () => ({ status: 200, delayMs: Infinity });
    await post(srv.port, { to: bob, type: 'alert', title: 'in flight at shutdown' });
    await eventually(() => rx.requests.length === 3, 5000, 'the third request in flight');
    assert.equal((await srv.stop()).code, 0, `clean exit${srv.stderr()}`);
  });

  test('receiver down, parleyd SIGKILLed and restarted: every push arrives, none twice', async () => {
    const port = await lowFreePort(); // nothing listens there yet
    const dataDir = path.join(tempDir(), 'data');
    const args = pushArgs(port, ['--push-backoff-ms', '100', '--push-backoff-max-ms', '300']);
    let srv = await startChatServer({ dataDir, extra: args });
    const us = users('u', 'v', 'w');
    const ids = [];
    for (let i = 0; i < 15; i++) ids.push((await post(srv.port, { to: us[i % 3], type: 'alert', title: `n${i}` })).id);
    await sleep(400); // some attempts fail against the closed port
    assert.ok((await metric(srv.port, 'parley_push_outbox')) === 15, 'all queued');
    srv.child.kill('SIGKILL');
    await srv.child.exitPromise;
    srv = await startChatServer({ dataDir, port: srv.port, extra: args });
    await sleep(300);
    const rx = await new Receiver(tls).listen(port);
    await eventually(() => rx.delivered().length >= 15, 15000, 'all 15 delivered');
    await sleep(800);
    assert.deepEqual(rx.bad, []);
    const got = rx.requests.map((r) => r.body.notification.id).sort((a, b) => a - b);
    assert.deepEqual(got, [...ids].sort((a, b) => a - b), 'each notification exactly once');
    assert.equal(new Set(rx.requests.map((r) => r.body.delivery)).size, 15, 'distinct delivery ids');
    for (const u of us) {
      const d = rx.forUser(u).map((r) => r.body.delivery);
      assert.deepEqual(d, [...d].sort((a, b) => a - b), `${u}: in id order`);
    }
    await eventually(async () => (await metric(srv.port, 'parley_push_outbox')) === 0, 5000, 'outbox empty');
    assert.equal((await srv.stop()).code, 0, `clean exit${srv.stderr()}`);
  });

  test('the outbox is capped: beyond --push-max-outbox pushes are dropped and counted', async () => {
    const port = await lowFreePort(); // a receiver that never comes
    const srv = await startChatServer({ extra: pushArgs(port, ['--push-max-outbox', '2', '--push-backoff-ms', '60000']) });
    const [bob] = users('bob');
    for (let i = 0; i < 4; i++) await post(srv.port, { to: bob, type: 'alert', title: `n${i}` });
    const m = (await httpRequest(srv.port, 'GET', '/metrics')).body.toString();
    assert.match(m, /^parley_push_outbox 2$/m);
    assert.match(m, /^parley_push_dropped_total\{reason="outbox_full"\} 2$/m);
    assert.match(srv.child.stderrText, /push: the outbox holds 2 rows/);
    assert.equal((await srv.stop()).code, 0, `clean exit${srv.stderr()}`);
  });

  test('bad flags fail at startup with a clear message', () => {
    const bin = program('PARLEYD');
    const run = (...a) => spawnSync(bin, ['--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'nodata'), ...a], { encoding: 'utf8', timeout: 10000 });
    let r = run('--push-webhook', 'http://push.example.com/hook', '--push-secret-file', secretFile);
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /http:\/\/ only to a loopback address/);
    r = run('--push-webhook', 'https://push.example.com/hook');
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /--push-webhook needs --push-secret-file/);
    r = run('--push-webhook', 'wss://push.example.com/hook', '--push-secret-file', secretFile);
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /must be https/);
    r = run('--push-webhook', 'ftp://push.example.com/hook', '--push-secret-file', secretFile);
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /not a valid http\(s\) URL/);
    r = run('--push-webhook', 'not a url', '--push-secret-file', secretFile);
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /not a valid/);
    r = run('--push-webhook', 'https://push.example.com/hook', '--push-secret-file', path.join(dir, 'missing'));
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /missing: No such file[^]*cannot use the --push-secret-file/);
    r = run('--push-webhook', 'https://127.0.0.1:9/hook', '--push-secret-file', secretFile, '--push-ca', path.join(dir, 'no-ca.pem'));
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /--push-ca .*no-ca\.pem: No such file/);
    // A CA file that is not PEM: the TLS setup refuses it (messaging does not start).
    const junk = path.join(dir, 'junk.pem');
    writeFileSync(junk, 'not a certificate\n');
    r = run('--jwt-secret', 'x'.repeat(32), '--push-webhook', 'https://127.0.0.1:9/hook', '--push-secret-file', secretFile,
      '--push-ca', junk);
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /push: TLS setup/);
    const conf = path.join(dir, 'bad.conf');
    writeFileSync(conf, 'push-webhook = http://10.1.2.3/hook\n');
    r = run('--config', conf);
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /bad\.conf:1: push-webhook: --push-webhook: http:\/\/ only to a loopback address/);
    r = run('--push-secret-file', secretFile);
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /need --push-webhook/);
  });
});
