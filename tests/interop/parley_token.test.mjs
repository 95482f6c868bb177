// `parley token` against parleyd --jwt-secret-file: the tokens it mints are
// checked here with Node's crypto (header, claims, HMAC), parleyd accepts
// them for `parley chat --token` (and with the roles they carry), and
// refuses expired ones and ones minted under another secret; bad input is
// refused with clear messages. Also examples/quickstart.c (QUICKSTART)
// with such a token against such a server, and its clear failures.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { cleanup, onCleanup, program, runParley, scaled, sleep, stderrTail, tempDir, withTimeout } from './lib/harness.mjs';
import { ChatClient, startChatServer } from './lib/chat.mjs';
import { ChatCli } from './lib/chatcli.mjs';

const SECRET = 'token-test-secret-0123456789abcdef-0123';

/** Runs `parley token ...args`; returns { code, stdout, stderr }. */
const token = (...args) => runParley(['token', ...args]).done;

/** Mints a token and returns it (the command must succeed). */
async function mint(...args) {
  const r = await token(...args);
  assert.equal(r.code, 0, `parley token ${args.join(' ')}: ${r.stderr}`);
  assert.match(r.stdout, /^[\w-]+\.[\w-]+\.[\w-]+\n$/, 'one token and a newline');
  return r.stdout.trim();
}

const decode = (part) => JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));

/** Runs the quickstart example until it exits (or kills it after ms). */
function quickstart(args, { env = {}, ms = 20000 } = {}) {
  const child = spawn(program('QUICKSTART'), args, { env: { ...process.env, PARLEY_TOKEN: '', ...env } });
  child.label = `quickstart ${args.join(' ')}`;
  child.stdoutText = '';
  child.stderrText = '';
  child.stdout.setEncoding('utf8').on('data', (d) => { child.stdoutText += d; });
  child.stderr.setEncoding('utf8').on('data', (d) => { child.stderrText += d; });
  const exited = new Promise((resolve) => child.once('close', (code, signal) => resolve({ code, signal })));
  onCleanup(() => child.kill('SIGKILL'));
  return {
    child,
    done: withTimeout(exited, ms, `${child.label} to exit`).then((r) => ({ ...r, stdout: child.stdoutText, stderr: child.stderrText })),
  };
}

describe('parley token', () => {
  let dir;
  let secretFile;
  let srv;

  before(async () => {
    dir = tempDir();
    secretFile = path.join(dir, 'jwt.secret');
    writeFileSync(secretFile, `${SECRET}\n`); // the trailing newline is dropped, as parleyd does
    srv = await startChatServer({ secret: null, extra: ['--jwt-secret-file', secretFile, '--jwt-leeway', '0'] });
  });

  after(cleanup);

  test('the token: header, claims, HS256 over the secret without its newline', async () => {
    const before = Math.floor(Date.now() / 1000);
    const t = await mint('--secret-file', secretFile, '--user', 'alice');
    const after_ = Math.floor(Date.now() / 1000);
    const [h, c, sig] = t.split('.');
    assert.deepEqual(decode(h), { alg: 'HS256', typ: 'JWT' });
    const claims = decode(c);
    assert.deepEqual(Object.keys(claims), ['sub', 'iat', 'exp']);
    assert.equal(claims.sub, 'alice');
    assert.ok(claims.iat >= before && claims.iat <= after_, `iat ${claims.iat} is now`);
    assert.equal(claims.exp - claims.iat, 3600, 'the default lifetime is an hour');
    assert.equal(sig, createHmac('sha256', SECRET).update(`${h}.${c}`).digest('base64url'));

    const t2 = await mint('--secret-file', secretFile, '--user', 'bob', '--role', 'notifier', '--ttl', '90', '--kid', 'k-2026');
    const [h2, c2] = t2.split('.');
    assert.deepEqual(decode(h2), { alg: 'HS256', typ: 'JWT', kid: 'k-2026' });
    const cl2 = decode(c2);
    assert.deepEqual([cl2.sub, cl2.role, cl2.exp - cl2.iat], ['bob', 'notifier', 90]);

    const help = await token('--help');
    assert.equal(help.code, 0);
    assert.match(help.stdout, /--ttl SECONDS +lifetime, 1 to 315360000 \(default 3600: one hour\)/);
    assert.match(help.stdout, /parley token --secret-file FILE --user ID \[--role admin\|notifier\]/);
    const top = await runParley(['--help']).done;
    assert.match(top.stdout, /token --secret-file FILE --user ID \[--role admin\|notifier\] \[--ttl SECONDS\]/);
  });

  test('parleyd accepts a minted token for parley chat, and its role', async () => {
    const t = await mint('--secret-file', secretFile, '--user', 'alice');
    const a = new ChatCli(srv, 'alice', { token: t });
    await a.online();
    const id = await a.send('@bob', 'hello with a minted token');
    await a.until(() => a.statuses(id).includes('sent'), 5000, 'stored');

    // A notifier token may send notifications; a plain one may not.
    const n = new ChatClient(srv, { user: 'ci-bot', token: await mint('--secret-file', secretFile, '--user', 'ci-bot', '--role', 'notifier', '--kid', 'any') });
    await n.connected();
    const ok = await n.ok('notify', { to: 'alice', type: 'system', title: 'build ok' });
    assert.equal(ok.notification.from, 'ci-bot');
    const seen = await a.nth('notification', 1, (x) => x.title === 'build ok');
    assert.equal(seen.live, true);
    const plain = new ChatClient(srv, { user: 'carol', token: await mint('--secret-file', secretFile, '--user', 'carol') });
    await plain.connected();
    await plain.fails('notify', { to: 'alice', type: 'system', title: 'no' }, 'forbidden');
    n.close();
    plain.close();
    await a.quit();
  });

  test('an expired token and one minted under another secret are refused', async () => {
    const short = await mint('--secret-file', secretFile, '--user', 'dave', '--ttl', '1');
    const otherFile = path.join(dir, 'other.secret');
    writeFileSync(otherFile, 'a-different-secret-0123456789abcdef-xyz');
    const foreign = await mint('--secret-file', otherFile, '--user', 'dave');

    const f = new ChatCli(srv, 'dave', { token: foreign, label: 'foreign secret' });
    await f.until(() => f.lastState() === 'refused', 10000, 'refused');
    assert.equal(f.all('state', (s) => s.state === 'refused').at(-1).code, 'invalid_token');
    await f.quit();

    // exp is whole seconds (iat + 1) and the server has no leeway here:
    // two seconds on, the token is past it whatever the fraction.
    await sleep(2100);
    const e = new ChatCli(srv, 'dave', { token: short, label: 'expired' });
    await e.until(() => e.lastState() === 'refused', 10000, 'refused');
    assert.equal(e.all('state', (s) => s.state === 'refused').at(-1).code, 'token_expired');
    await e.quit();
  });

  test('bad input is refused with a clear message and exit code 2 (1 for an unreadable file)', async () => {
    const empty = path.join(dir, 'empty.secret');
    writeFileSync(empty, '\r\n\n');
    const sub = path.join(dir, 'a-directory');
    mkdirSync(sub);
    const cases = [
      [['--user', 'a'], 2, '--secret-file FILE is required'],
      [['--secret-file', secretFile], 2, '--user ID is required'],
      [['--secret-file', path.join(dir, 'missing'), '--user', 'a'], 1, `${path.join(dir, 'missing')}: No such file or directory`],
      [['--secret-file', sub, '--user', 'a'], 1, `${sub}: cannot read: Is a directory`],
      [['--secret-file', empty, '--user', 'a'], 2, `${empty}: the JWT secret file is empty (line ends do not count)`],
      [['--secret-file', secretFile, '--user', ''], 2, 'the user id must not be empty'],
      [['--secret-file', secretFile, '--user', 'u'.repeat(65)], 2, 'the user id is 65 bytes; at most 64 are allowed'],
      [['--secret-file', secretFile, '--user', 'a b'], 2, 'the user id may contain only letters, digits and . _ @ -'],
      [['--secret-file', secretFile, '--user', 'a', '--role', 'root'], 2, 'unknown role \'root\': the role must be admin or notifier'],
      [['--secret-file', secretFile, '--user', 'a', '--ttl', '0'], 2, '--ttl must be a whole number of seconds from 1 to 315360000, not \'0\''],
      [['--secret-file', secretFile, '--user', 'a', '--ttl', '1h'], 2, '--ttl must be a whole number of seconds from 1 to 315360000, not \'1h\''],
      [['--secret-file', secretFile, '--user', 'a', '--ttl', '315360001'], 2, '--ttl must be a whole number of seconds from 1 to 315360000, not \'315360001\''],
      [['--secret-file', secretFile, '--user', 'a', '--color'], 2, 'unknown option \'--color\' (parley token --help)'],
      [['--secret-file', secretFile, '--user', 'a', 'extra'], 2, 'unexpected argument \'extra\' (parley token --help)'],
    ];
    for (const [args, code, message] of cases) {
      const r = await token(...args);
      assert.equal(r.code, code, `${args.join(' ')}: ${r.stderr}`);
      assert.equal(r.stdout, '', 'no token on a failure');
      assert.ok(r.stderr.startsWith(`parley token: ${message}\n`), `${args.join(' ')}: ${JSON.stringify(r.stderr)}`);
    }
  });

  test('examples/quickstart: joins and sends with a minted token; clear failures otherwise', async () => {
    const url = `http://127.0.0.1:${srv.port}`;
    const t = await mint('--secret-file', secretFile, '--user', 'quick');
    const q = quickstart([url], { env: { PARLEY_TOKEN: t } });
    const deadline = Date.now() + scaled(10000);
    while (!/"content":\{"text":"hello 1"\}/.test(q.child.stdoutText)) {
      assert.ok(Date.now() < deadline, `quickstart sent nothing acknowledged:\n${q.child.stdoutText}${stderrTail(q.child)}`);
      await sleep(50);
    }
    assert.match(q.child.stdoutText, /connected to \/chat as /);
    assert.match(q.child.stdoutText, /acknowledged with \[\{"ok":true,"room":"quickstart"/);
    q.child.kill('SIGINT');
    const r = await q.done;
    assert.equal(r.code, 0, `exit after Ctrl-C: ${JSON.stringify(r)}`);

    // No token: the usage, which shows how to make one.
    const none = await quickstart([url]).done;
    assert.equal(none.code, 2);
    assert.match(none.stderr, /no token: give TOKEN or set PARLEY_TOKEN/);
    assert.match(none.stderr, /parley token --secret-file var\/jwt\.secret --user alice/);

    // Refused (another secret): a message and exit 1, not a hang.
    const otherFile = path.join(dir, 'other2.secret');
    writeFileSync(otherFile, 'yet-another-secret-0123456789abcdef');
    const bad = await quickstart([url, await mint('--secret-file', otherFile, '--user', 'quick')]).done;
    assert.equal(bad.code, 1, bad.stderr);
    assert.match(bad.stderr, /the server refused the connection: .*"code":"invalid_token"/);
    assert.match(bad.stderr, /parley token --secret-file must name the file parleyd reads/);

    // Nothing listening: a message and exit 1.
    const srv2 = await startChatServer({ secret: null, extra: ['--jwt-secret-file', secretFile] });
    const port = srv2.port;
    await srv2.stop();
    const gone = await quickstart([`http://127.0.0.1:${port}`, t]).done;
    assert.equal(gone.code, 1, gone.stderr);
    assert.match(gone.stderr, /cannot reach http:\/\/127\.0\.0\.1:\d+: connection refused/);
    assert.match(gone.stderr, /is parleyd running there\? \(scripts\/run starts it\)/);
  });
});
