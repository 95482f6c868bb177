// Operations: parleyd's start banner (what is served where, /chat's auth
// mode, and the fix when /chat can only refuse), --log-format json (every
// line parseable, from start to shutdown, also set from a config file),
// and the sample configuration packaging/parleyd.conf (accepted as it is,
// every key it names a real option).

import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { ChatClient, eventually, makeToken, SECRET, startChatServer } from './lib/chat.mjs';
import { cleanup, interopDir, program, startParleyd, tempDir, withTimeout } from './lib/harness.mjs';
import { rawConnect } from './lib/hostile.mjs';

after(cleanup);

const SAMPLE_CONF = path.resolve(interopDir, '..', '..', 'packaging', 'parleyd.conf');
const TS_RE = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

/** The lines of a text-format log at `level` (without timestamp and level). */
const textLines = (text, level) =>
  text.split('\n').filter((l) => l.split(' ')[1] === level).map((l) => l.split(' ').slice(2).join(' '));

/** The stderr of `srv` once the banner's last line is in (stderr and the
 * stdout ready line travel through different pipes). */
async function bannerOf(srv) {
  await eventually(() => /health at /.test(srv.child.stderrText), 5000, 'the banner');
  return srv.child.stderrText;
}

async function healthz(port) {
  const r = await withTimeout(fetch(`http://127.0.0.1:${port}/healthz`), 5000, 'GET /healthz');
  assert.equal(r.status, 200);
  assert.equal(await r.text(), 'ok\n');
}

async function refusedWith(srv, code) {
  const c = new ChatClient(srv, { user: 'alice', label: `refused ${code}` });
  const { data } = await c.refused();
  assert.equal(data?.code, code, `connect_error data: ${JSON.stringify(data)}`);
  c.close();
}

describe('start banner', () => {
  test('without keys: the URLs, auth none, and how to fix the refusals', async () => {
    const srv = await startChatServer({ secret: null });
    const log = await bannerOf(srv);
    const info = textLines(log, 'info');
    const warn = textLines(log, 'warn');
    assert.ok(info.includes(`parleyd ${version()}: Socket.IO at http://127.0.0.1:${srv.port}/socket.io/ (transports: polling websocket)`),
      `the Socket.IO line:\n${info.join('\n')}`);
    assert.ok(info.some((l) => l.startsWith('namespace /chat: messaging') && l.includes('auth: none') && l.includes(`data in ${srv.dataDir}`)),
      `the /chat line:\n${info.join('\n')}`);
    assert.ok(info.includes(`health at http://127.0.0.1:${srv.port}/healthz and /readyz, status page at /`), `the health line:\n${info.join('\n')}`);
    assert.ok(info.includes(`dashboard at http://127.0.0.1:${srv.port}/dashboard, metrics at /metrics; ` +
      'admin access: loopback clients only (no --admin-key-file)'), `the dashboard line:\n${info.join('\n')}`);
    const hint = warn.find((l) => l.startsWith('no JWT keys configured'));
    assert.ok(hint, `the hint:\n${warn.join('\n')}`);
    assert.match(hint, /every \/chat connection will be refused with auth_unavailable/);
    assert.match(hint, /--jwt-secret-file F/);
    assert.match(hint, /`parley token --secret-file F --user alice`/);
    // What the banner says is what happens.
    await refusedWith(srv, 'auth_unavailable');
    await healthz(srv.port);
    assert.ok(textLines(srv.child.stderrText, 'info').length <= 7, 'a short banner');
  });

  test('each auth mode is named; no hint once tokens can be checked', async () => {
    const dir = tempDir();
    const secretFile = path.join(dir, 'jwt.secret');
    writeFileSync(secretFile, `${SECRET}\n`, { mode: 0o600 });
    const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const pem = path.join(dir, 'idp.pem');
    writeFileSync(pem, publicKey.export({ type: 'spki', format: 'pem' }));
    const jwks = path.join(dir, 'jwks.json');
    writeFileSync(jwks, JSON.stringify({ keys: [{ ...publicKey.export({ format: 'jwk' }), kid: 'k1', alg: 'ES256', use: 'sig' }] }));
    const cases = [
      [['--jwt-secret-file', secretFile], `auth: JWT HS256 secret from ${secretFile};`],
      [['--jwt-secret', SECRET], 'auth: JWT HS256 secret (--jwt-secret);'],
      [['--jwt-public-key-file', pem], 'auth: JWT RS256/ES256 public keys (1 files);'],
      [['--jwks-file', jwks, '--dev-auth'], `auth: JWT RS256/ES256 JWKS from ${jwks} + dev-auth (INSECURE: any user id is trusted);`],
      [['--dev-auth'], 'auth: dev-auth (INSECURE: any user id is trusted);'],
    ];
    for (const [extra, want] of cases) {
      const srv = await startChatServer({ secret: null, extra });
      const log = await bannerOf(srv);
      assert.ok(textLines(log, 'info').some((l) => l.startsWith('namespace /chat:') && l.includes(want)), `${extra.join(' ')}: wanted "${want}" in\n${log}`);
      assert.doesNotMatch(log, /no JWT keys configured/, extra.join(' '));
      if (extra[0] === '--jwt-secret-file') {
        const c = new ChatClient(srv, { user: 'alice' });
        await c.connected();
        c.close();
      }
      await srv.stop();
    }
  });

  test('who may see the dashboard and /metrics', async () => {
    const key = path.join(tempDir(), 'admin.key');
    writeFileSync(key, 'an-admin-key-of-some-length\n', { mode: 0o600 });
    const cases = [
      [['--admin-key-file', key], 'metrics at /metrics; admin access: loopback clients, and others with the admin key'],
      [['--admin-key-file', key, '--admin-loopback', 'off', '--metrics-public'],
        'metrics at /metrics (public); admin access: only with the admin key (--admin-loopback off)'],
      [['--admin-loopback', 'off'], 'metrics at /metrics; admin access: nobody (--admin-loopback off, no --admin-key-file)'],
    ];
    for (const [extra, want] of cases) {
      const srv = await startParleyd(['--no-messaging', ...extra]);
      const info = textLines(await bannerOf(srv), 'info');
      assert.ok(info.includes(`dashboard at http://127.0.0.1:${srv.port}/dashboard, ${want}`), `${extra.join(' ')}:\n${info.join('\n')}`);
      await srv.stop();
    }
  });

  test('the WebSocket echo, and /chat off', async () => {
    const srv = await startParleyd(['--no-messaging'], { wsPath: '/echo' });
    const info = textLines(await bannerOf(srv), 'info');
    assert.ok(info.includes(`health at http://127.0.0.1:${srv.port}/healthz and /readyz, status page at /; WebSocket echo at ws://127.0.0.1:${srv.port}/echo`),
      info.join('\n'));
    assert.ok(info.includes('namespace /chat: off (--no-messaging)'), info.join('\n'));
    assert.doesNotMatch(srv.child.stderrText, /no JWT keys configured/);
  });
});

function version() {
  return execFileSync(program('PARLEYD'), ['--version'], { encoding: 'utf8' }).trim().split(' ')[1];
}

/** Every line of `text` is a JSON log object; returns them. */
function jsonLines(text) {
  const lines = text.split('\n');
  assert.equal(lines.pop(), '', 'the log ends with a newline');
  return lines.map((l) => {
    let o;
    assert.doesNotThrow(() => {
      o = JSON.parse(l);
    }, `not JSON: ${l}`);
    assert.deepEqual(Object.keys(o), ['ts', 'level', 'msg'], l);
    assert.match(o.ts, TS_RE, l);
    assert.ok(Math.abs(Date.parse(o.ts) - Date.now()) < 600000, `a current timestamp: ${l}`);
    assert.ok(['debug', 'info', 'warn', 'error'].includes(o.level), l);
    assert.equal(typeof o.msg, 'string', l);
    return o;
  });
}

describe('--log-format json', () => {
  test('every stderr line is one JSON object, start to shutdown, with what the text log says', async () => {
    // A short secret (a warning) and a token signed with another one (a
    // refusal logged), its user id with quotes and non-ASCII.
    const secretFile = path.join(tempDir(), 'short.secret');
    writeFileSync(secretFile, 'short"secret\\\n');
    const srv = await startChatServer({ secret: null, extra: ['--jwt-secret-file', secretFile, '--log-format', 'json', '--log-level', 'debug'] });
    const c = new ChatClient(srv, { token: makeToken('ünï"cødé') });
    await c.refused();
    c.close();
    await healthz(srv.port);
    const { code } = await srv.stop();
    assert.equal(code, 0);
    const log = jsonLines(srv.child.stderrText);
    const msgs = log.map((o) => o.msg);
    assert.ok(log.some((o) => o.level === 'warn' && o.msg.endsWith('the JWT secret is 13 bytes; HS256 wants at least 32')), msgs.join('\n'));
    assert.ok(msgs.includes(`parleyd ${version()}: Socket.IO at http://127.0.0.1:${srv.port}/socket.io/ (transports: polling websocket)`), msgs.join('\n'));
    assert.ok(msgs.some((m) => m.startsWith('messaging: refused a connection')), msgs.join('\n'));
    assert.ok(msgs.includes('parleyd: stopped'), msgs.join('\n'));
  });

  test('a failed start is JSON too', () => {
    const r = spawnSync(program('PARLEYD'), ['--listen', '127.0.0.1:0', '--log-format', 'json', '--jwt-secret-file', '/nonexistent/jwt.secret'],
      { encoding: 'utf8', timeout: 10000 });
    assert.equal(r.status, 2, r.stderr);
    const msgs = jsonLines(r.stderr).map((o) => `${o.level} ${o.msg}`);
    assert.ok(msgs.includes('error /nonexistent/jwt.secret: No such file or directory'), msgs.join('\n'));
    assert.ok(msgs.includes('error cannot load the keys tokens are checked with'), msgs.join('\n'));
  });

  test('from a config file; a bad value is refused with a clear error', async () => {
    const conf = path.join(tempDir(), 'parleyd.conf');
    writeFileSync(conf, 'log-format = json\nlog-level = info\n');
    const srv = await startChatServer({ extra: ['--config', conf] });
    await srv.stop();
    assert.ok(jsonLines(srv.child.stderrText).length >= 3);

    for (const args of [['--log-format', 'xml'], ['--config', conf]]) {
      if (args[0] === '--config') writeFileSync(conf, 'log-format = yaml\n');
      let err;
      try {
        execFileSync(program('PARLEYD'), ['--listen', '127.0.0.1:0', ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
      } catch (e) {
        err = e;
      }
      assert.ok(err, `${args.join(' ')} was accepted`);
      assert.equal(err.status, 2);
      assert.match(err.stderr, /--log-format wants text or json/);
    }
  });
});

describe('log lines a peer can repeat are summaries', () => {
  test('30 WebSocket connections failed by their peers: one line, the others counted', async () => {
    const srv = await startParleyd([], { wsPath: '/echo' });
    await bannerOf(srv);
    const before = srv.child.stderrText.length;
    for (let i = 0; i < 30; i++) {
      const conn = rawConnect(srv.port);
      await conn.connected;
      // The upgrade, then an unmasked frame: a protocol error (1002).
      conn.sock.write('GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n' +
        'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n');
      conn.sock.write(Buffer.from([0x81, 0x02, 0x68, 0x69]));
      await withTimeout(conn.closed, 5000, `connection ${i} to be closed`);
      assert.match(conn.text(), /^HTTP\/1\.1 101 /, `connection ${i} was upgraded`);
    }
    await healthz(srv.port);
    const lines = srv.child.stderrText.slice(before).split('\n').filter((l) => /websocket .*closing with 1002/.test(l));
    assert.equal(lines.length, 1, `one line for 30 failures:\n${srv.child.stderrText.slice(before)}`);
  });
});

describe('packaging/parleyd.conf', () => {
  test('parleyd starts with it as it is (paths of this machine given after it)', async () => {
    const dir = tempDir();
    const secretFile = path.join(dir, 'jwt.secret');
    writeFileSync(secretFile, SECRET, { mode: 0o600 });
    const srv = await startParleyd(['--config', SAMPLE_CONF, '--listen', `127.0.0.1:0`, '--data-dir', path.join(dir, 'data'),
      '--jwt-secret-file', secretFile], { wsPath: null, limits: 'on' });
    await healthz(srv.port);
    const c = new ChatClient(srv, { user: 'alice' });
    await c.connected();
    c.close();
    const complaints = (await bannerOf(srv)).split('\n').filter((l) => / (warn|error) /.test(l) && !/creating a new database/.test(l));
    assert.deepEqual(complaints, [], 'nothing to warn about but the new database');
  });

  test('every key it names, set or commented out, is an option of parleyd --help', () => {
    const help = execFileSync(program('PARLEYD'), ['--help'], { encoding: 'utf8' });
    const keys = readFileSync(SAMPLE_CONF, 'utf8').split('\n')
      .map((l) => /^#?([a-z][a-z0-9-]*) = \S/.exec(l)?.[1]).filter(Boolean);
    assert.ok(keys.length >= 25, `${keys.length} keys`);
    for (const k of keys) assert.match(help, new RegExp(`^  --${k}[ ,]`, 'm'), `--${k} is not an option`);
    assert.ok(keys.includes('log-format'));
  });
});
