// parleyd's operator side (docs/OPERATIONS.md): /metrics moves with real
// traffic from socket.io-client and the npm ws client, the scrape passes
// `promtool check metrics`, a real Prometheus scrapes it; the admin
// access rule (loopback, Bearer key, login form and its cookie, 401/403),
// /metrics public on request, /healthz and /readyz (503 when writes are
// refused), and the dashboard's Server-Sent Events stream (a JSON
// snapshot a second, bounded number of streams, closed on shutdown).

import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { cleanup, loadWs, lowFreePort, onCleanup, scaled, tempDir, withTimeout } from './lib/harness.mjs';
import { ChatClient, dm, eventually, httpRequest, makeToken, startChatServer } from './lib/chat.mjs';

const ADMIN_KEY = 'admin-key-0123456789abcdef-metrics';

/** Parses the text format into { 'name{labels}': value } (comments skipped). */
function parseMetrics(text) {
  const out = {};
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const sp = line.lastIndexOf(' ');
    out[line.slice(0, sp)] = Number(line.slice(sp + 1));
  }
  return out;
}

async function scrape(port, headers = {}) {
  const res = await httpRequest(port, 'GET', '/metrics', { headers });
  assert.equal(res.status, 200, `GET /metrics: ${res.status} ${res.body}`);
  assert.equal(res.headers['content-type'], 'text/plain; version=0.0.4; charset=utf-8');
  return { text: res.body.toString(), m: parseMetrics(res.body.toString()) };
}

const v = (m, key) => m[key] ?? 0;

function promtool(text) {
  const r = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
  return { status: r.status, out: `${r.stdout}${r.stderr}`.trim(), error: r.error };
}

let uniq = 0;
const users = (...names) => names.map((n) => `${n}m${++uniq}`);

async function device(server, user, { role, transports } = {}) {
  const c = new ChatClient(server, { user, transports, token: makeToken(user, role ? { claims: { role } } : {}) });
  await c.connected();
  return c;
}

describe('GET /metrics with traffic', () => {
  let srv;

  before(async () => {
    srv = await startChatServer({ extra: ['--ws-echo', '/echo', '--low-delay', '0'] });
  });

  after(cleanup);

  test('counters move with messages, receipts, typing, presence, notifications, refusals and connections', async () => {
    const before0 = (await scrape(srv.port)).m;
    const [alice, bob, noti] = users('alice', 'bob', 'noti');
    const a = await device(srv, alice); // websocket
    const b = await device(srv, bob, { transports: ['polling'] });
    const n = await device(srv, noti, { role: 'notifier' });
    await b.ok('sync', { since: {} }); // live delivery for bob
    const conv = dm(alice, bob);
    const N = 5;
    let last;
    for (let i = 0; i < N; i++) last = await a.text({ to: bob }, `hello ${i}`);
    await b.ok('receipt', { conversation: conv, status: 'delivered', seq: last.seq });
    await b.ok('receipt', { conversation: conv, status: 'read', seq: last.seq });
    await a.ok('typing', { conversation: conv, state: 'start' });
    await a.fails('send_message', { client_id: 'x', to: bob, type: 'text', content: { text: 1 } }, 'invalid_field');
    await b.ok('presence_set', { status: 'away' });
    await n.ok('notify', { to: bob, type: 'alert', title: 'pushed' });
    await b.ok('notification_prefs_set', { muted_users: [noti] });
    await n.ok('notify', { to: bob, type: 'alert', title: 'held' });
    await b.ok('notifications_read', { all: true });
    const bad = new ChatClient(srv, { user: 'mallory', token: 'not.a.token' });
    await bad.refused();
    const { WebSocket } = await loadWs();
    const ws = new WebSocket(`ws://127.0.0.1:${srv.port}/echo`);
    onCleanup(() => ws.terminate());
    await new Promise((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', reject);
    });

    const { text, m } = await scrape(srv.port);
    const d = (key) => v(m, key) - v(before0, key);
    assert.equal(d('parley_messages_stored_total'), N);
    assert.equal(d('parley_messages_ack_seconds_count'), N, 'one acknowledgement latency per stored message');
    assert.ok(v(m, 'parley_messages_ack_seconds_sum') > 0);
    assert.equal(d('parley_messages_receipts_total{status="delivered"}'), 1);
    assert.equal(d('parley_messages_receipts_total{status="read"}'), 1);
    assert.equal(d('parley_messages_failed_total{code="invalid_field"}'), 1);
    assert.equal(d('parley_chat_errors_total{code="invalid_field"}'), 1);
    assert.equal(d('parley_chat_connect_refused_total{code="invalid_token"}'), 1);
    assert.equal(d('parley_typing_events_total'), 1);
    assert.equal(v(m, 'parley_presence_users{status="away"}'), 1);
    assert.equal(v(m, 'parley_presence_users{status="online"}'), 2);
    assert.equal(v(m, 'parley_chat_users'), 3);
    assert.equal(v(m, 'parley_chat_sockets'), 3);
    assert.equal(d('parley_notifications_created_total'), 2);
    assert.equal(d('parley_notifications_pushed_total'), 1);
    assert.equal(d('parley_notifications_suppressed_total{reason="muted_user"}'), 1);
    assert.equal(d('parley_notifications_read_total'), 2);
    /* Events: every request above is an event received on /chat. */
    assert.ok(d('parley_sio_events_received_total') >= N + 9, `events in: ${d('parley_sio_events_received_total')}`);
    assert.ok(d('parley_sio_events_sent_total') >= N, 'new_message events out');
    assert.ok(d('parley_engine_received_bytes_total') > 0 && d('parley_engine_sent_bytes_total') > 0);
    /* Connections by transport (the refused client is gone). */
    assert.equal(v(m, 'parley_engine_sessions{transport="websocket"}'), 2);
    assert.equal(v(m, 'parley_engine_sessions{transport="polling"}'), 1);
    assert.equal(d('parley_engine_sessions_opened_total{transport="polling"}'), 1);
    assert.ok(d('parley_engine_sessions_opened_total{transport="websocket"}') >= 3);
    assert.equal(v(m, 'parley_sio_sockets{namespace="/chat"}'), 3);
    assert.ok(v(m, 'parley_sio_rooms{namespace="/chat"}') > 0, 'the service\'s rooms');
    assert.ok(v(m, 'parley_sio_namespaces') >= 2);
    assert.equal(v(m, 'parley_websocket_connections'), 1, 'the plain WebSocket on /echo');
    assert.equal(d('parley_websocket_connections_opened_total'), 1);
    /* The group commit. */
    assert.ok(d('parley_store_commits_total') >= 1);
    assert.ok(d('parley_store_commit_seconds_count') >= 1);
    assert.ok(d('parley_store_batch_writes_count') >= 1);
    assert.ok(v(m, 'parley_store_batch_writes_bucket{le="+Inf"}') === v(m, 'parley_store_batch_writes_count'));
    /* Process and loop. */
    assert.ok(v(m, 'process_resident_memory_bytes') > 1e6);
    assert.ok(v(m, 'process_open_fds') > 3);
    assert.ok(Math.abs(v(m, 'process_start_time_seconds') - Date.now() / 1000) < 3600);
    assert.ok(d('parley_http_responses_total{class="2xx"}') >= 1);
    assert.ok(text.includes('# TYPE parley_event_loop_delay_seconds histogram'));
    await eventually(async () => v((await scrape(srv.port)).m, 'parley_event_loop_delay_seconds_count') > 0, 5000, 'a loop lag sample');
    ws.close();
    /* Gauges go down when clients leave. */
    a.close();
    b.close();
    n.close();
    await eventually(async () => {
      const now = (await scrape(srv.port)).m;
      return v(now, 'parley_chat_sockets') === 0 && v(now, 'parley_engine_sessions{transport="websocket"}') === 0 &&
        v(now, 'parley_engine_sessions{transport="polling"}') === 0 && v(now, 'parley_websocket_connections') === 0;
    }, 10000, 'the gauges to fall back to zero');
  });

  test('promtool check metrics finds no problem in the scrape', async () => {
    /* scripts/bootstrap installs it: missing, the test fails (never skips). */
    assert.ok(!spawnSync('promtool', ['--version']).error,
      'promtool is not installed: run scripts/bootstrap (Debian package prometheus)');
    const { text } = await scrape(srv.port);
    const r = promtool(text);
    assert.equal(r.status, 0, `promtool: ${r.out}`);
    assert.equal(r.out, '', 'promtool printed problems');
    /* And it would catch one: a counter without _total. */
    const broken = promtool('# HELP x X.\n# TYPE x counter\nx 1\n');
    assert.notEqual(broken.out, '', 'promtool reports a counter without _total');
  });

  test('a real Prometheus scrapes parleyd: up == 1 and parley metrics in its API', async () => {
    assert.ok(existsSync('/usr/bin/prometheus'),
      '/usr/bin/prometheus is not installed: run scripts/bootstrap (Debian package prometheus)');
    const dir = tempDir();
    const promPort = await lowFreePort();
    writeFileSync(path.join(dir, 'prometheus.yml'),
      `global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: parleyd\n` +
      `    static_configs:\n      - targets: ['127.0.0.1:${srv.port}']\n`);
    const prom = spawn('/usr/bin/prometheus', [
      `--config.file=${path.join(dir, 'prometheus.yml')}`,
      `--storage.tsdb.path=${path.join(dir, 'tsdb')}`,
      `--web.listen-address=127.0.0.1:${promPort}`,
    ], { stdio: ['ignore', 'ignore', 'pipe'] });
    let log = '';
    prom.stderr.on('data', (c) => { log += c; });
    const exited = new Promise((resolve) => prom.once('close', resolve));
    onCleanup(async () => {
      prom.kill('SIGTERM');
      await withTimeout(exited, 10000, 'prometheus to exit').catch(() => prom.kill('SIGKILL'));
    });
    const query = async (q) => {
      const res = await httpRequest(promPort, 'GET', `/api/v1/query?query=${encodeURIComponent(q)}`).catch(() => null);
      if (!res || res.status !== 200) return null;
      const body = JSON.parse(res.body.toString());
      return body.status === 'success' ? body.data.result : null;
    };
    try {
      const up = await eventually(async () => {
        const r = await query('up{job="parleyd"}');
        return r && r.length === 1 && r[0].value[1] === '1' ? r : null;
      }, 30000, 'Prometheus to scrape parleyd (up == 1)');
      assert.equal(up[0].metric.instance, `127.0.0.1:${srv.port}`);
      const stored = await eventually(async () => {
        const r = await query('parley_messages_stored_total');
        return r && r.length === 1 ? r : null;
      }, 10000, 'parley_messages_stored_total in Prometheus');
      assert.ok(Number(stored[0].value[1]) >= 5);
      const byTransport = await query('parley_engine_sessions_opened_total');
      assert.deepEqual(byTransport.map((r) => r.metric.transport).sort(), ['polling', 'websocket']);
    } catch (err) {
      throw new Error(`${err.message}\n--- prometheus log ---\n${log.split('\n').slice(-20).join('\n')}`);
    }
  });
});

/** A form POST to /dashboard/login. */
const login = (port, key) => httpRequest(port, 'POST', '/dashboard/login', {
  headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
  body: `key=${encodeURIComponent(key)}`,
});

describe('admin access rule', () => {
  let keyFile;

  before(() => {
    keyFile = path.join(tempDir(), 'admin.key');
    writeFileSync(keyFile, `${ADMIN_KEY}\n`);
  });

  after(cleanup);

  test('loopback clients get /metrics and /dashboard without a key (default)', async () => {
    const srv = await startChatServer();
    await scrape(srv.port);
    const res = await httpRequest(srv.port, 'GET', '/dashboard');
    assert.equal(res.status, 200);
    assert.equal(res.headers['content-security-policy'].split(';')[0], "default-src 'self'");
    assert.equal(res.headers['x-content-type-options'], 'nosniff');
    assert.match(res.body.toString(), /<title>parleyd dashboard<\/title>/);
    const js = await httpRequest(srv.port, 'GET', '/dashboard/app.js');
    assert.equal(js.status, 200);
    assert.equal(js.headers['content-type'], 'text/javascript; charset=utf-8');
    assert.equal((await httpRequest(srv.port, 'GET', '/dashboard/nope.js')).status, 404);
    const root = (await httpRequest(srv.port, 'GET', '/')).body.toString();
    for (const p of ['/dashboard', '/metrics', '/healthz', '/readyz']) assert.ok(root.includes(`href="${p}"`), `the status page links ${p}`);
    await srv.stop();
  });

  test('--admin-loopback off: 401 without or with a wrong key, 200 with the Bearer key; health checks open', async () => {
    const srv = await startChatServer({ extra: ['--admin-loopback', 'off', '--admin-key-file', keyFile] });
    for (const p of ['/metrics', '/dashboard/events', '/dashboard/app.js']) {
      const r = await httpRequest(srv.port, 'GET', p);
      assert.equal(r.status, 401, `${p} without a key`);
      assert.equal(r.headers['www-authenticate'], 'Bearer realm="parleyd"');
      assert.match(r.body.toString(), /Authorization: Bearer KEY/);
      const w = await httpRequest(srv.port, 'GET', p, { headers: { Authorization: 'Bearer wrong-key-0123456789' } });
      assert.equal(w.status, 401, `${p} with a wrong key`);
    }
    /* The page itself sends a browser to the login form. */
    const page = await httpRequest(srv.port, 'GET', '/dashboard');
    assert.equal(page.status, 303);
    assert.equal(page.headers.location, '/dashboard/login');
    await scrape(srv.port, { Authorization: `Bearer ${ADMIN_KEY}` });
    const dash = await httpRequest(srv.port, 'GET', '/dashboard', { headers: { Authorization: `Bearer ${ADMIN_KEY}` } });
    assert.equal(dash.status, 200);
    /* The login form and its stylesheet are open. */
    assert.equal((await httpRequest(srv.port, 'GET', '/dashboard/login')).status, 200);
    assert.equal((await httpRequest(srv.port, 'GET', '/dashboard/app.css')).status, 200);
    const health = await httpRequest(srv.port, 'GET', '/healthz');
    assert.deepEqual([health.status, health.body.toString()], [200, 'ok\n']);
    const ready = await httpRequest(srv.port, 'GET', '/readyz');
    assert.deepEqual([ready.status, ready.body.toString()], [200, 'ok\n']);
    /* The refusals are counted. */
    const { m } = await scrape(srv.port, { Authorization: `Bearer ${ADMIN_KEY}` });
    assert.ok(v(m, 'parley_admin_refusals_total{reason="unauthorized"}') >= 7);
    await srv.stop();
  });

  test('the login form: a wrong key is refused, the right one sets a session cookie; logout ends it', async () => {
    const srv = await startChatServer({ extra: ['--admin-loopback', 'off', '--admin-key-file', keyFile] });
    const wrong = await login(srv.port, 'not the key');
    assert.equal(wrong.status, 401);
    assert.equal(wrong.headers['set-cookie'], undefined);
    assert.match(wrong.body.toString(), /Wrong key/);
    /* The form is open to anyone: its body is small (413 on the head). */
    const big = await httpRequest(srv.port, 'POST', '/dashboard/login', {
      headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
      body: `key=${'A'.repeat(20000)}`,
    });
    assert.equal(big.status, 413);
    const ok = await login(srv.port, ADMIN_KEY);
    assert.equal(ok.status, 303);
    assert.equal(ok.headers.location, '/dashboard');
    const cookie = ok.headers['set-cookie'][0];
    const attrs = cookie.split(';').map((s) => s.trim());
    const [name, value] = attrs[0].split('=');
    assert.equal(name, 'parley_admin');
    assert.match(value, /^[0-9a-f]{64}$/);
    assert.ok(!cookie.includes(ADMIN_KEY), 'the cookie is not the key');
    for (const a of ['HttpOnly', 'SameSite=Strict', 'Path=/']) assert.ok(attrs.includes(a), `${a} in ${cookie}`);
    assert.ok(!attrs.includes('Secure'), 'no Secure without TLS');
    const session = { Cookie: `other=1; parley_admin=${value}` };
    assert.equal((await httpRequest(srv.port, 'GET', '/metrics', { headers: session })).status, 200);
    assert.equal((await httpRequest(srv.port, 'GET', '/dashboard', { headers: session })).status, 200);
    const forged = { Cookie: `parley_admin=${value.replace(/^./, (c) => (c === 'a' ? 'b' : 'a'))}` };
    assert.equal((await httpRequest(srv.port, 'GET', '/metrics', { headers: forged })).status, 401);
    const out = await httpRequest(srv.port, 'POST', '/dashboard/logout', { headers: session });
    assert.equal(out.status, 303);
    assert.match(out.headers['set-cookie'][0], /^parley_admin=; Path=\/; Max-Age=0/);
    assert.equal((await httpRequest(srv.port, 'GET', '/metrics', { headers: session })).status, 401, 'the session is gone');
    const { m } = await scrape(srv.port, { Authorization: `Bearer ${ADMIN_KEY}` });
    assert.equal(v(m, 'parley_admin_logins_total{result="ok"}'), 1);
    assert.equal(v(m, 'parley_admin_logins_total{result="failed"}'), 1);
    await srv.stop();
  });

  test('login attempts are rate-limited per address (429)', async () => {
    const srv = await startChatServer({ limits: 'on', extra: ['--admin-loopback', 'off', '--admin-key-file', keyFile, '--handshake-rate', '1'] });
    const statuses = [];
    let limited;
    for (let i = 0; i < 12; i++) {
      const r = await login(srv.port, `guess-${i}`);
      statuses.push(r.status);
      if (r.status === 429) limited = r;
    }
    assert.deepEqual(statuses.slice(0, 5), [401, 401, 401, 401, 401], `a burst of 5 is allowed: ${statuses}`);
    /* One token a second comes back: a slow machine may see a 401 among them. */
    assert.ok(statuses.slice(5).filter((x) => x === 429).length >= 3, `then 429: ${statuses}`);
    assert.match(limited.headers['retry-after'], /^\d+$/);
    await srv.stop();
  });

  test('no admin key and no loopback: 403 that says what to do, never open', async () => {
    const srv = await startChatServer({ extra: ['--admin-loopback', 'off'] });
    for (const p of ['/metrics', '/dashboard', '/dashboard/events']) {
      const r = await httpRequest(srv.port, 'GET', p, { headers: { Authorization: 'Bearer anything-at-all' } });
      assert.equal(r.status, 403, p);
      assert.match(r.body.toString(), /--admin-key-file/);
    }
    assert.equal((await login(srv.port, 'anything')).status, 403);
    await srv.stop();
  });

  test('--metrics-public opens /metrics only; the flags work from a --config file too', async () => {
    const conf = path.join(tempDir(), 'parleyd.conf');
    writeFileSync(conf, `admin-loopback = off\nadmin-key-file = ${keyFile}\nmetrics-public\n`);
    const srv = await startChatServer({ extra: ['--config', conf] });
    await scrape(srv.port);
    assert.equal((await httpRequest(srv.port, 'GET', '/dashboard/events')).status, 401);
    assert.equal((await httpRequest(srv.port, 'GET', '/dashboard', { headers: { Authorization: `Bearer ${ADMIN_KEY}` } })).status, 200);
    await srv.stop();
  });

  test('/readyz answers 503 with the reason when writes are refused (disk below the reserve)', async () => {
    const srv = await startChatServer({ limits: 'on', extra: ['--disk-reserve', String(2 ** 50)] });
    const r = await httpRequest(srv.port, 'GET', '/readyz');
    assert.equal(r.status, 503);
    assert.match(r.body.toString(), /^storage_full: /);
    assert.equal((await httpRequest(srv.port, 'GET', '/healthz')).status, 200, 'alive all the same');
    await srv.stop();
  });

  test('bad flag values are refused at start', () => {
    const r = spawnSync(process.env.PARLEYD, ['--admin-loopback', 'maybe'], { encoding: 'utf8' });
    assert.equal(r.status, 2);
    assert.match(r.stderr, /--admin-loopback wants on or off/);
    const k = spawnSync(process.env.PARLEYD, ['--admin-key-file', '/nonexistent/key', '--no-messaging', '--listen', '127.0.0.1:0'], { encoding: 'utf8' });
    assert.notEqual(k.status, 0);
    assert.match(k.stderr, /admin-key-file/);
  });
});

/** Opens /dashboard/events; resolves to { res, events: Queue-like array, wait(n) }. */
function openEvents(port) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/dashboard/events', agent: false }, (res) => {
      const snaps = [];
      let buf = '';
      res.setEncoding('utf8');
      res.on('data', (c) => {
        buf += c;
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          for (const line of block.split('\n')) if (line.startsWith('data: ')) snaps.push(JSON.parse(line.slice(6)));
        }
      });
      const ended = new Promise((r) => res.once('close', r));
      resolve({ res, req, snaps, ended });
    });
    req.on('error', reject);
    onCleanup(() => req.destroy());
  });
}

describe('dashboard event stream', () => {
  after(cleanup);

  test('one JSON snapshot a second with the metric samples; streams are bounded; shutdown ends them', async () => {
    const srv = await startChatServer();
    const s = await openEvents(srv.port);
    assert.equal(s.res.statusCode, 200);
    assert.equal(s.res.headers['content-type'], 'text/event-stream');
    assert.equal(s.res.headers['content-length'], undefined);
    await eventually(() => s.snaps.length >= 3, 6000, 'three snapshots');
    const [first, , third] = s.snaps;
    assert.ok(third.t - first.t >= 1500 && third.t - first.t <= scaled(5000), `a snapshot a second: ${third.t - first.t} ms for two`);
    assert.equal(typeof first.m.parley_messages_stored_total, 'number');
    assert.equal(first.m['parley_engine_sessions{transport="websocket"}'], 0);
    assert.ok(Object.keys(first.m).some((k) => k.startsWith('parley_build_info{version="')), 'the version label');
    assert.ok(!Object.keys(first.m).some((k) => k.includes('_bucket{')), 'no histogram buckets in snapshots');
    /* Bounded: 16 streams at once, the next one is refused with 503. */
    const more = [];
    for (let i = 1; i < 16; i++) more.push(await openEvents(srv.port));
    assert.ok(more.every((x) => x.res.statusCode === 200));
    const refused = await httpRequest(srv.port, 'GET', '/dashboard/events');
    assert.equal(refused.status, 503);
    const { m } = await scrape(srv.port);
    assert.equal(v(m, 'parley_http_streams'), 16);
    assert.equal(v(m, 'parley_http_streams_refused_total'), 1);
    /* A stream that ends makes room. */
    more.pop().req.destroy();
    await eventually(async () => v((await scrape(srv.port)).m, 'parley_http_streams') === 15, 5000, 'the closed stream to be gone');
    /* SIGTERM ends every stream and parleyd exits cleanly. */
    const stopped = await srv.stop();
    assert.equal(stopped.code, 0);
    await withTimeout(Promise.all([s.ended, ...more.map((x) => x.ended)]), 5000, 'the streams to end at shutdown');
  });
});
