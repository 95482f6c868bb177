// Socket.IO / Engine.IO plumbing shared by the sio_*.test.mjs and
// eio_*.test.mjs files: starting `parleyd --protocol-test`, the three
// transport modes every client test runs in, and a wrapper around a
// socket.io-client socket that queues every event so a test can await each
// one with a timeout, in order.

import assert from 'node:assert/strict';
import { loadPinned, onCleanup, Queue, scaled, sleep, startParleyd } from './harness.mjs';

export const { io } = await loadPinned('socket.io-client');
export const eioClient = await loadPinned('engine.io-client');

/** The contract's timings of `parleyd --protocol-test`. */
export const PING_INTERVAL = 300;
export const PING_TIMEOUT = 200;
export const MAX_PAYLOAD = 1000000;
export const CONNECT_TIMEOUT = 1000;

/**
 * Starts `parleyd --protocol-test --listen 127.0.0.1:<port>` (any free port
 * unless given, to restart a server on the port of a previous one), with
 * connection-state recovery when asked.
 */
export function startProtocolServer({ recovery = false, port = 0, extra = [] } = {}) {
  return startParleyd(['--protocol-test', ...(recovery ? ['--recovery'] : []), ...extra], {
    wsPath: null,
    listen: `127.0.0.1:${port}`,
  });
}

/**
 * The transport modes of the client tests: `final` is the transport the
 * session must end up on (the default mode starts with polling and must
 * upgrade).
 */
export const MODES = [
  { name: 'polling', transports: ['polling'], final: 'polling' },
  { name: 'websocket', transports: ['websocket'], final: 'websocket' },
  { name: 'default (polling then upgrade)', transports: undefined, final: 'websocket' },
];

/** Buffers, ArrayBuffers and typed arrays anywhere in v become Buffers. */
export function normalizeBinary(v) {
  if (Buffer.isBuffer(v)) return Buffer.from(v);
  if (v instanceof ArrayBuffer) return Buffer.from(v);
  if (ArrayBuffer.isView(v)) return Buffer.from(v.buffer, v.byteOffset, v.byteLength);
  if (Array.isArray(v)) return v.map(normalizeBinary);
  if (v && typeof v === 'object') {
    const out = {};
    for (const [k, x] of Object.entries(v)) out[k] = normalizeBinary(x);
    return out;
  }
  return v;
}

let peerCount = 0;

/**
 * One socket.io-client socket. Every event (and connect, connect_error,
 * disconnect) goes into `events`, a single FIFO of { name, args, at }, so
 * a test can assert the order of everything a client received. Reconnection
 * is off unless asked for, so a dropped connection fails the waiting test
 * instead of hiding behind a retry.
 */
export class SioPeer {
  constructor(url, { offsets = false, ...opts } = {}, label = `client ${++peerCount}`) {
    this.label = label;
    /* Connection-state recovery appends an offset to every plain event. */
    this.offsets = offsets;
    this.events = new Queue(`event on ${label}`);
    this.log = [];
    this.socket = io(url, {
      forceNew: true,
      reconnection: false,
      timeout: scaled(10000),
      ...opts,
    });
    const record = (name, args) => {
      const e = { name, args, at: Date.now() };
      this.log.push(e);
      this.events.push(e);
    };
    this.socket.onAny((name, ...args) => record(name, args));
    this.socket.on('connect', () => record('connect', []));
    this.socket.on('connect_error', (err) => record('connect_error', [err]));
    this.socket.on('disconnect', (reason, details) => record('disconnect', [reason, details]));
    onCleanup(() => this.socket.disconnect());
  }

  get id() {
    return this.socket.id;
  }

  get transport() {
    return this.socket.io.engine?.transport?.name;
  }

  /**
   * Waits for the next queued event, which must be `name` (a different one
   * first fails the test with what arrived instead); returns its args.
   */
  async next(name, ms = 5000) {
    const e = await this.events.next(ms, `event "${name}" on ${this.label}`);
    if (e.name !== name) {
      const detail = e.name === 'connect_error' ? `: ${e.args[0]?.message}` : e.name === 'disconnect' ? `: ${e.args[0]}` : ` ${JSON.stringify(e.args).slice(0, 200)}`;
      assert.fail(`${this.label}: expected event "${name}", got "${e.name}"${detail}`);
    }
    return e.args;
  }

  /** Waits for `connect` then the server's `auth` event; returns auth. */
  async connected(ms = 10000) {
    await this.next('connect', ms);
    const [auth, ...rest] = await this.next('auth', ms);
    if (this.offsets) {
      assert.equal(rest.length, 1, `with recovery the auth event carries an offset, got ${JSON.stringify([auth, ...rest])}`);
      assert.equal(typeof rest[0], 'string', 'the offset is a string');
    } else {
      assert.equal(rest.length, 0, `the auth event carries one argument, got ${JSON.stringify([auth, ...rest])}`);
    }
    return auth;
  }

  /** Nothing may be queued (call after a round trip that orders things). */
  assertIdle(what = '') {
    const left = this.events.items.map((e) => e.name);
    assert.deepEqual(left, [], `${this.label} received unexpected events${what ? ` ${what}` : ''}`);
  }

  emit(name, ...args) {
    this.socket.emit(name, ...args);
  }

  /** Emits with an ack callback; resolves to the ack's arguments. */
  ack(name, args = [], ms = 5000) {
    return new Promise((resolve, reject) => {
      this.socket.timeout(scaled(ms)).emit(name, ...args, (err, ...res) => {
        if (err) reject(new Error(`${this.label}: no ack for "${name}" within ${scaled(ms)} ms`));
        else resolve(res);
      });
    });
  }

  /** message -> message-back round trip; returns the echoed args. */
  async echo(args, ms = 5000) {
    this.emit('message', ...args);
    return this.next('message-back', ms);
  }

  /**
   * Waits until the engine runs on `name` (a default-mode session upgrades
   * shortly after connecting) and asserts it.
   */
  async assertTransport(name, ms = 3000) {
    const deadline = Date.now() + scaled(ms);
    while (this.transport !== name && Date.now() < deadline) await sleep(10);
    assert.equal(this.transport, name, `${this.label} runs on this transport`);
  }

  /** Client-side disconnect; resolves when the socket reports it. */
  async close() {
    if (!this.socket.connected) {
      this.socket.disconnect();
      return;
    }
    this.socket.disconnect();
    await this.next('disconnect').then(([reason]) => assert.equal(reason, 'io client disconnect'));
  }
}

/** Connects a peer in `mode` to `nsp` and waits for its auth event. */
export async function connectPeer(server, mode, { nsp = '/', label, ...opts } = {}) {
  const p = new SioPeer(`http://127.0.0.1:${server.port}${nsp}`, { transports: mode?.transports, ...opts }, label);
  const auth = await p.connected();
  p.auth = auth;
  return p;
}
