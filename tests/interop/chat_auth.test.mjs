// Identity on the messaging namespace: HS256 tokens made here with Node's
// crypto HMAC, every refusal as connect_error with {code, message}, the
// development mode, and a server without a secret.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { cleanup } from './lib/harness.mjs';
import { ChatClient, makeToken, nextClientId, SECRET, startChatServer } from './lib/chat.mjs';

const now = () => Math.floor(Date.now() / 1000);

describe('messaging authentication', () => {
  let srv; // secret, no dev mode
  let dev; // secret and --dev-auth
  let bare; // neither

  before(async () => {
    [srv, dev, bare] = await Promise.all([
      startChatServer({ extra: ['--jwt-leeway', '5'] }),
      startChatServer({ dev: true }),
      startChatServer({ secret: null }),
    ]);
  });

  after(cleanup);

  async function refused(server, auth, code) {
    const c = new ChatClient(server, { auth, label: `refused ${code}` });
    const { message, data } = await c.refused();
    assert.equal(data?.code, code, `connect_error data: ${JSON.stringify(data)} (message ${message})`);
    assert.equal(typeof data.message, 'string');
    assert.equal(message, data.message, 'the error message is the data message');
    c.close();
    return data;
  }

  test('a valid token connects as its sub; the sender comes from it', async () => {
    const c = new ChatClient(srv, { user: 'tok.user@example.com' });
    await c.connected();
    const m = await c.text({ to: 'someone' }, 'hi');
    assert.equal(m.from, 'tok.user@example.com');
    c.close();
  });

  test('tokens that are refused, each with its code', async () => {
    const sub = 'mallory';
    const cases = [
      ['wrong signature', { token: makeToken(sub, { secret: 'not the server secret at all!!!!' }) }, 'invalid_token'],
      ['signature of another token', { token: makeToken(sub).split('.').slice(0, 2).join('.') + '.' + makeToken('x').split('.')[2] }, 'invalid_token'],
      ['alg none, unsigned', { token: makeToken(sub, { header: { alg: 'none', typ: 'JWT' }, sig: '' }) }, 'invalid_token'],
      ['alg none, signed anyway', { token: makeToken(sub, { header: { alg: 'none' } }) }, 'invalid_token'],
      ['alg HS512', { token: makeToken(sub, { header: { alg: 'HS512' } }) }, 'invalid_token'],
      ['alg RS256', { token: makeToken(sub, { header: { alg: 'RS256' } }) }, 'invalid_token'],
      ['no alg', { token: makeToken(sub, { header: { typ: 'JWT' } }) }, 'invalid_token'],
      ['crit header', { token: makeToken(sub, { header: { alg: 'HS256', crit: ['exp'] } }) }, 'invalid_token'],
      ['expired', { token: makeToken(sub, { claims: { exp: now() - 60 } }) }, 'token_expired'],
      ['not yet valid', { token: makeToken(sub, { claims: { nbf: now() + 60 } }) }, 'token_not_yet_valid'],
      ['no exp', { token: makeToken(sub, { claims: { exp: null } }) }, 'invalid_token'],
      ['exp a string', { token: makeToken(sub, { claims: { exp: String(now() + 60) } }) }, 'invalid_token'],
      ['missing sub', { token: makeToken(null) }, 'invalid_user'],
      ['sub with a space', { token: makeToken('a b') }, 'invalid_user'],
      ['sub too long', { token: makeToken('x'.repeat(65)) }, 'invalid_user'],
      ['sub a number', { token: makeToken(42) }, 'invalid_user'],
      ['not a JWT', { token: 'hello' }, 'invalid_token'],
      ['four parts', { token: `${makeToken(sub)}.x` }, 'invalid_token'],
      ['padded base64', { token: makeToken(sub).replace(/\.([^.]*)$/, '.$1=') }, 'invalid_token'],
      ['token not a string', { token: 123 }, 'invalid_token'],
      ['token too long', { token: makeToken(sub, { claims: { pad: 'p'.repeat(5000) } }) }, 'invalid_token'],
      ['no token', {}, 'auth_required'],
      ['a user without dev mode', { user: 'alice' }, 'auth_required'],
    ];
    for (const [what, auth, code] of cases) {
      await refused(srv, auth, code).catch((err) => {
        throw new Error(`${what}: ${err.message}`);
      });
    }
    // No auth payload at all.
    const c = new ChatClient(srv, { auth: null, label: 'no auth' });
    c.socket.auth = undefined;
    const { data } = await c.refused();
    assert.equal(data.code, 'auth_required');
    // The refusals are logged as a summary (at most a line per 10 s,
    // counting the ones in between), not a line per connection.
    const lines = srv.child.stderrText.split('\n').filter((l) => /refused a connection:/.test(l));
    assert.ok(lines.length >= 1 && lines.length <= 3, `${lines.length} log lines for ${cases.length + 1} refusals`);
  });

  test('the leeway tolerates small clock skew either way', async () => {
    const a = new ChatClient(srv, { token: makeToken('skewed', { claims: { exp: now() - 2, nbf: now() + 2 } }) });
    await a.connected();
    a.close();
  });

  test('--dev-auth: {user} without a token, loudly; tokens still checked', async () => {
    assert.match(dev.child.stderrText, /warn messaging: INSECURE --dev-auth is on/);
    const a = new ChatClient(dev, { auth: { user: 'devuser' } });
    await a.connected();
    const m = await a.text({ to: 'other' }, 'dev');
    assert.equal(m.from, 'devuser');
    assert.match(dev.child.stderrText, /INSECURE --dev-auth: socket \S+ is user devuser without a token/);
    // Not an admin unless it says so.
    await a.fails('send_message', { client_id: nextClientId(), to: 'other', type: 'system', content: { text: 's' } }, 'forbidden', 'type');
    const admin = new ChatClient(dev, { auth: { user: 'ops', role: 'admin' } });
    await admin.connected();
    await admin.ok('send_message', { client_id: nextClientId(), to: 'other', type: 'system', content: { text: 'maintenance' } });
    await refused(dev, { user: 'bad user' }, 'invalid_user');
    await refused(dev, { user: 7 }, 'invalid_user');
    // A token wins over a user, and must be valid.
    await refused(dev, { user: 'devuser', token: makeToken('x', { secret: 'wrong-secret-wrong-secret-wrong!!' }) }, 'invalid_token');
    const t = new ChatClient(dev, { auth: { user: 'ignored', token: makeToken('real') } });
    await t.connected();
    assert.equal((await t.text({ to: 'x' }, 'hi')).from, 'real');
    for (const x of [a, admin, t]) x.close();
  });

  test('admin role from the token may send system messages; others may not', async () => {
    const ops = new ChatClient(srv, { token: makeToken('ops', { claims: { role: 'admin' } }) });
    const joe = new ChatClient(srv, { user: 'joe' });
    await ops.connected();
    await joe.connected();
    const sys = await ops.ok('send_message', { client_id: nextClientId(), to: 'joe', type: 'system', content: { text: 'restart at noon' } });
    assert.equal(sys.message.type, 'system');
    await joe.fails('send_message', { client_id: nextClientId(), to: 'ops', type: 'system', content: { text: 'fake' } }, 'forbidden', 'type');
    const notAdmin = new ChatClient(srv, { token: makeToken('root', { claims: { role: 'Admin' } }) });
    await notAdmin.connected();
    await notAdmin.fails('send_message', { client_id: nextClientId(), to: 'joe', type: 'system', content: { text: 'x' } }, 'forbidden');
    for (const x of [ops, joe, notAdmin]) x.close();
  });

  test('without a secret or dev mode every connection is refused and no data is kept', async () => {
    assert.match(bare.child.stderrText, /no --jwt-secret \(and no --dev-auth\): every connection to \/chat is refused/);
    await refused(bare, { token: makeToken('alice') }, 'auth_unavailable');
    await refused(bare, { user: 'alice' }, 'auth_unavailable');
    await refused(bare, {}, 'auth_unavailable');
    const { existsSync } = await import('node:fs');
    assert.equal(existsSync(bare.dataDir), false, 'the data directory was not created');
  });

  test('the secret can come from a file', async () => {
    const { writeFileSync } = await import('node:fs');
    const { tempDir } = await import('./lib/harness.mjs');
    const file = `${tempDir()}/secret`;
    writeFileSync(file, `${SECRET}\n`);
    const s = await startChatServer({ secret: null, extra: ['--jwt-secret-file', file] });
    const c = new ChatClient(s, { user: 'filed' });
    await c.connected();
    c.close();
    await refused(s, { token: makeToken('x', { secret: `${SECRET}\n` }) }, 'invalid_token');
  });
});
