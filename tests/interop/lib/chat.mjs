// Messaging-protocol plumbing for the chat_*.test.mjs files: starting
// parleyd with the messaging service on a fresh data directory, HS256
// tokens made here with Node's crypto (never by the code under test), and
// a socket.io-client wrapper that speaks the documented protocol: one
// object per request, acknowledgements awaited with a timeout, and every
// server event queued in arrival order.

import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import http from 'node:http';
import path from 'node:path';
import { loadPinned, onCleanup, Queue, scaled, sleep, startParleyd, tempDir, withTimeout } from './harness.mjs';

export const { io } = await loadPinned('socket.io-client');

export const SECRET = 'interop-secret-0123456789abcdef-0123456789';
export const NSP = '/chat';

const b64u = (v) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');

/**
 * An HS256 token for `sub` valid for 10 minutes. `claims` are merged in
 * (null deletes one: {sub: null}); `header` replaces the JOSE header;
 * `secret` and `sig` (a raw signature part) allow broken tokens.
 */
export function makeToken(sub, { claims = {}, header = { alg: 'HS256', typ: 'JWT' }, secret = SECRET, sig } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const body = { sub, iat: now, exp: now + 600, ...claims };
  for (const [k, v] of Object.entries(body)) if (v === null) delete body[k];
  const signing = `${b64u(header)}.${b64u(body)}`;
  const signature = sig ?? createHmac('sha256', secret).update(signing).digest('base64url');
  return `${signing}.${signature}`;
}

/**
 * Starts parleyd with the messaging service: a JWT secret (unless
 * secret: null), a fresh data directory (or `dataDir`), on any free port
 * (or `port`, to restart in place). Returns the parleyd handle plus
 * { dataDir }.
 */
export async function startChatServer({ secret = SECRET, dev = false, dataDir, port = 0, extra = [], limits = 'off' } = {}) {
  const dir = dataDir ?? path.join(tempDir(), 'data');
  const args = ['--data-dir', dir, '--log-level', 'info'];
  if (secret) args.push('--jwt-secret', secret);
  if (dev) args.push('--dev-auth');
  const srv = await startParleyd([...args, ...extra], { wsPath: null, listen: `127.0.0.1:${port}`, limits });
  srv.dataDir = dir;
  return srv;
}

let clientCount = 0;

/**
 * One device of a user on /chat. Events (and connect_error, disconnect)
 * go into `events` in arrival order; `next(name)` awaits the next one
 * and insists on its name, `nextOf(name)` skips others.
 */
export class ChatClient {
  constructor(server, { user, token, auth, transports = ['websocket'], label } = {}) {
    this.user = user;
    this.label = label ?? `${user ?? 'anonymous'}#${++clientCount}`;
    this.events = new Queue(`event on ${this.label}`);
    this.log = [];
    const a = auth ?? { token: token ?? makeToken(user) };
    this.socket = io(`http://127.0.0.1:${server.port}${NSP}`, {
      forceNew: true,
      reconnection: false,
      timeout: scaled(10000),
      transports,
      auth: a,
    });
    const record = (name, args) => {
      const e = { name, args, at: Date.now() };
      this.log.push(e);
      this.events.push(e);
    };
    this.socket.onAny((name, ...args) => record(name, args));
    this.socket.on('connect', () => record('connect', []));
    this.socket.on('connect_error', (err) => record('connect_error', [err]));
    this.socket.on('disconnect', (reason) => record('disconnect', [reason]));
    onCleanup(() => this.socket.disconnect());
  }

  /** Waits for the next event, which must be `name`; returns its first argument. */
  async next(name, ms = 5000) {
    const e = await this.events.next(ms, `event "${name}" on ${this.label}`);
    if (e.name !== name) {
      const detail = e.name === 'connect_error' ? `: ${e.args[0]?.message}` : ` ${JSON.stringify(e.args).slice(0, 300)}`;
      assert.fail(`${this.label}: expected "${name}", got "${e.name}"${detail}`);
    }
    return e.args[0];
  }

  /** The next `name` event, skipping others (typing, member events...). */
  async nextOf(name, ms = 5000) {
    const deadline = Date.now() + scaled(ms);
    for (;;) {
      const e = await this.events.next(Math.max(1, deadline - Date.now()), `event "${name}" on ${this.label}`);
      if (e.name === name) return e.args[0];
    }
  }

  async connected(ms = 10000) {
    await this.next('connect', ms);
    return this;
  }

  /** Waits for connect_error; returns { message, data }. */
  async refused(ms = 10000) {
    const err = await this.next('connect_error', ms);
    return { message: err.message, data: err.data };
  }

  /** A request: emits `event` with `obj` and resolves to the ack's argument. */
  req(event, obj, ms = 5000) {
    return new Promise((resolve, reject) => {
      this.socket.timeout(scaled(ms)).emit(event, obj, (err, res) => {
        if (err) reject(new Error(`${this.label}: no acknowledgement for "${event}" within ${scaled(ms)} ms`));
        else resolve(res);
      });
    });
  }

  /** A request that must succeed; returns the acknowledgement. */
  async ok(event, obj, ms = 5000) {
    const res = await this.req(event, obj, ms);
    assert.equal(res?.ok, true, `${this.label}: ${event} ${JSON.stringify(obj).slice(0, 200)} failed: ${JSON.stringify(res)}`);
    return res;
  }

  /** A request that must fail with `code` (and `field` when given). */
  async fails(event, obj, code, field) {
    const res = await this.req(event, obj);
    assert.equal(res?.ok, false, `${this.label}: ${event} should fail with ${code}: ${JSON.stringify(res)}`);
    assert.equal(res.error?.code, code, `${event} ${JSON.stringify(obj).slice(0, 200)}: ${JSON.stringify(res.error)}`);
    assert.equal(typeof res.error.message, 'string');
    assert.ok(res.error.message.length > 0, 'an error has a message');
    if (field !== undefined) assert.equal(res.error.field, field, `field of ${JSON.stringify(res.error)}`);
    return res.error;
  }

  send(target, content, { type = 'text', priority, clientId } = {}) {
    const obj = { client_id: clientId ?? nextClientId(), ...target, type, content };
    if (priority) obj.priority = priority;
    return this.req('send_message', obj);
  }

  /** Sends a text that must be stored; returns the stored Message. */
  async text(target, text, opts = {}) {
    const res = await this.send(target, { text }, opts);
    assert.equal(res?.ok, true, `${this.label}: send failed: ${JSON.stringify(res)}`);
    return res.message;
  }

  /** Syncs until `more` is false; returns { messages, conversations, pages }. */
  async syncAll(since = {}, limit) {
    const all = [];
    let conversations;
    let pages = 0;
    const cur = { ...since };
    let cursor;
    for (;;) {
      const req = limit ? { since: cur, limit } : { since: cur };
      if (cursor) req.cursor = cursor;
      const res = await this.ok('sync', req);
      pages++;
      for (const m of res.messages) {
        all.push(m);
        cur[m.conversation] = m.seq;
      }
      /* The conversations come in pages: all of them, across answers. */
      conversations = cursor ? [...conversations, ...res.conversations.filter((c) => !conversations.some((x) => x.id === c.id))] : res.conversations;
      if (!res.more) break;
      assert.equal(typeof res.next, 'string', 'more:true comes with next');
      assert.ok(res.messages.length > 0 || res.next !== (cursor ?? ''), 'a page with more:true moves on');
      cursor = res.next;
    }
    return { messages: all, conversations, pages, since: cur };
  }

  /** Everything queued so far (after a round trip has ordered it). */
  drain() {
    return this.events.items.splice(0);
  }

  assertIdle(what = '') {
    const left = this.events.items.map((e) => `${e.name} ${JSON.stringify(e.args).slice(0, 120)}`);
    assert.deepEqual(left, [], `${this.label} received unexpected events${what ? ` ${what}` : ''}`);
  }

  close() {
    this.socket.disconnect();
  }
}

let idCounter = 0;
export const nextClientId = () => `c-${process.pid}-${Date.now().toString(36)}-${++idCounter}`;

/** Connects a device of `user` and syncs it (so it receives live events). */
export async function online(server, user, opts = {}) {
  const c = new ChatClient(server, { user, ...opts });
  await c.connected();
  if (opts.sync !== false) c.synced = await c.syncAll(opts.since ?? {});
  return c;
}

/** The DM conversation id of two users. */
export const dm = (a, b) => (a < b ? `dm:${a}:${b}` : `dm:${b}:${a}`);

/** A plain HTTP request; resolves to { status, headers, body (Buffer) }. */
export function httpRequest(port, method, urlPath, { headers = {}, body } = {}, ms = 10000) {
  const p = new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path: urlPath, headers, agent: false }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    onCleanup(() => req.destroy());
    if (body !== undefined) req.write(body);
    req.end();
  });
  return withTimeout(p, ms, `${method} ${urlPath}`);
}

export const bearer = (user, opts) => ({ Authorization: `Bearer ${makeToken(user, opts)}` });

/** Polls `fn` until it returns a truthy value. */
export async function eventually(fn, ms = 5000, what = 'a condition') {
  const deadline = Date.now() + scaled(ms);
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}
