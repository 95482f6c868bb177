// Raw RFC 6455 on a plain TCP socket, for the tests that must send what no
// well-behaved library would: a frame builder (with or without masking), a
// parser for the frames the server sends, and hand-made HTTP upgrades.

import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import net from 'node:net';
import { onCleanup, withTimeout } from './harness.mjs';

export const OP = Object.freeze({ CONT: 0x0, TEXT: 0x1, BINARY: 0x2, CLOSE: 0x8, PING: 0x9, PONG: 0xa });
const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

export const acceptFor = (key) => createHash('sha1').update(key + WS_GUID).digest('base64');

/* ------------------------------------------------------------------ */
/* Frames                                                              */
/* ------------------------------------------------------------------ */

/**
 * Encodes one frame. `length` overrides the length written in the header
 * (to announce a payload that is never sent); `mask` is true (random key),
 * false (unmasked, illegal from a client) or a 4-byte key.
 */
export function buildFrame({ opcode, payload = Buffer.alloc(0), fin = true, rsv1 = false, rsv2 = false, rsv3 = false, mask = true, length } = {}) {
  const data = Buffer.from(payload);
  const len = length ?? data.length;
  const key = mask === true ? randomBytes(4) : mask || null;
  let head;
  if (len < 126) {
    head = Buffer.alloc(2);
    head[1] = len;
  } else if (len < 0x10000) {
    head = Buffer.alloc(4);
    head[1] = 126;
    head.writeUInt16BE(len, 2);
  } else {
    head = Buffer.alloc(10);
    head[1] = 127;
    head.writeBigUInt64BE(BigInt(len), 2);
  }
  head[0] = (fin ? 0x80 : 0) | (rsv1 ? 0x40 : 0) | (rsv2 ? 0x20 : 0) | (rsv3 ? 0x10 : 0) | (opcode & 0x0f);
  if (!key) return Buffer.concat([head, data]);
  head[1] |= 0x80;
  const masked = Buffer.allocUnsafe(data.length);
  for (let i = 0; i < data.length; i++) masked[i] = data[i] ^ key[i & 3];
  return Buffer.concat([head, key, masked]);
}

/** Payload of a close frame: 2-byte code and UTF-8 reason. */
export function closePayload(code, reason = '') {
  const r = Buffer.from(reason);
  const b = Buffer.alloc(2 + r.length);
  b.writeUInt16BE(code, 0);
  r.copy(b, 2);
  return b;
}

/**
 * Parses one frame at the start of buf. Returns null if incomplete, else
 * { frame, size }. Server frames are parsed even if masked so a test can
 * report the mask bit as the error rather than choke on it.
 */
export function parseFrame(buf) {
  if (buf.length < 2) return null;
  const b0 = buf[0];
  const b1 = buf[1];
  let len = b1 & 0x7f;
  let off = 2;
  if (len === 126) {
    if (buf.length < 4) return null;
    len = buf.readUInt16BE(2);
    off = 4;
  } else if (len === 127) {
    if (buf.length < 10) return null;
    const big = buf.readBigUInt64BE(2);
    if (big > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error(`server frame announces ${big} bytes`);
    len = Number(big);
    off = 10;
  }
  const masked = (b1 & 0x80) !== 0;
  const keyOff = off;
  if (masked) off += 4;
  if (buf.length < off + len) return null;
  let payload = Buffer.from(buf.subarray(off, off + len));
  if (masked) {
    const key = buf.subarray(keyOff, keyOff + 4);
    for (let i = 0; i < payload.length; i++) payload[i] ^= key[i & 3];
  }
  return {
    frame: {
      fin: (b0 & 0x80) !== 0,
      rsv1: (b0 & 0x40) !== 0,
      rsv2: (b0 & 0x20) !== 0,
      rsv3: (b0 & 0x10) !== 0,
      opcode: b0 & 0x0f,
      masked,
      payload,
    },
    size: off + len,
  };
}

/** Decodes a close frame payload into { code, reason } (code 1005 if empty). */
export function parseClose(payload) {
  if (payload.length === 0) return { code: 1005, reason: '' };
  assert.ok(payload.length >= 2, `close frame payload of ${payload.length} byte is malformed`);
  return { code: payload.readUInt16BE(0), reason: payload.subarray(2).toString('utf8') };
}

/* ------------------------------------------------------------------ */
/* Reading a byte stream                                               */
/* ------------------------------------------------------------------ */

/**
 * Accumulates everything a socket receives and lets a test wait until the
 * buffer satisfies a condition, or until the peer has closed.
 */
export class StreamReader {
  constructor(socket) {
    this.socket = socket;
    this.buf = Buffer.alloc(0);
    this.ended = false;
    this.endReason = null;
    this.total = 0;
    this.waiters = new Set();
    socket.on('data', (d) => {
      this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
      this.total += d.length;
      this.wake();
    });
    const finish = (why) => {
      if (this.ended) return;
      this.ended = true;
      this.endReason = why;
      this.endedAt = Date.now();
      this.wake();
    };
    socket.on('end', () => finish('EOF'));
    /* A reset after the peer's last bytes still means "closed by peer";
     * Linux delivers queued data before reporting it. */
    socket.on('error', (err) => finish(err.code || err.message));
    socket.on('close', () => finish('closed'));
  }

  wake() {
    for (const w of [...this.waiters]) w();
  }

  /**
   * Waits until fn(buf, ended) returns something other than undefined and
   * returns it.
   */
  until(fn, ms, what) {
    const attempt = () => fn(this.buf, this.ended);
    const first = attempt();
    if (first !== undefined) return Promise.resolve(first);
    let waiter;
    const p = new Promise((resolve, reject) => {
      waiter = () => {
        let v;
        try {
          v = attempt();
        } catch (err) {
          this.waiters.delete(waiter);
          reject(err);
          return;
        }
        if (v !== undefined) {
          this.waiters.delete(waiter);
          resolve(v);
        }
      };
      this.waiters.add(waiter);
    });
    return withTimeout(p, ms, what).finally(() => this.waiters.delete(waiter));
  }

  consume(n) {
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  /** Waits for the peer to close; fails if bytes arrive meanwhile. */
  async eof(ms = 5000, what = 'the server to close the connection') {
    await this.until((buf, ended) => {
      if (buf.length) throw new Error(`expected ${what}, but received more bytes: ${buf.subarray(0, 64).toString('hex')}`);
      return ended ? true : undefined;
    }, ms, what);
  }
}

/* ------------------------------------------------------------------ */
/* HTTP                                                                */
/* ------------------------------------------------------------------ */

/**
 * Parses an HTTP response head at the start of buf, or returns null if the
 * blank line has not arrived. Header names are lower-cased; repeated
 * headers are joined with ", ".
 */
export function parseHttpHead(buf) {
  const end = buf.indexOf('\r\n\r\n');
  if (end < 0) return null;
  const lines = buf.subarray(0, end).toString('latin1').split('\r\n');
  const m = /^HTTP\/1\.[01] (\d{3})(?: (.*))?$/.exec(lines[0]);
  if (!m) throw new Error(`not an HTTP status line: ${JSON.stringify(lines[0])}`);
  const headers = {};
  for (const line of lines.slice(1)) {
    const i = line.indexOf(':');
    if (i <= 0) throw new Error(`malformed response header line: ${JSON.stringify(line)}`);
    const name = line.slice(0, i).trim().toLowerCase();
    const value = line.slice(i + 1).trim();
    headers[name] = name in headers ? `${headers[name]}, ${value}` : value;
  }
  return { status: Number(m[1]), statusLine: lines[0], headers, size: end + 4 };
}

/** Comma-separated header value as a list of trimmed lower-case tokens. */
export const tokens = (v) => (v ?? '').split(',').map((s) => s.trim().toLowerCase()).filter(Boolean);

/** Opens a TCP connection to 127.0.0.1:port; resolves once connected. */
export async function tcpConnect(port) {
  const socket = net.connect({ host: '127.0.0.1', port });
  socket.setNoDelay(true);
  onCleanup(() => socket.destroy());
  /* Writes racing a server close must not crash the test process. */
  socket.on('error', () => {});
  const reader = new StreamReader(socket);
  await withTimeout(new Promise((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  }), 5000, `TCP connect to 127.0.0.1:${port}`);
  socket.connectedAt = Date.now();
  return { socket, reader };
}

/** Writes data, resolving when it is flushed (or the socket is gone). */
export function write(socket, data) {
  return new Promise((resolve) => {
    if (socket.destroyed) return resolve(false);
    socket.write(data, (err) => resolve(!err));
  });
}

/** Header lines of a valid upgrade request for path, as a Map to edit. */
export function upgradeHeaders(port, key = randomBytes(16).toString('base64')) {
  return new Map([
    ['Host', `127.0.0.1:${port}`],
    ['Upgrade', 'websocket'],
    ['Connection', 'Upgrade'],
    ['Sec-WebSocket-Key', key],
    ['Sec-WebSocket-Version', '13'],
  ]);
}

export function httpRequest(method, path, headers) {
  let s = `${method} ${path} HTTP/1.1\r\n`;
  for (const [k, v] of headers) if (v !== undefined) s += `${k}: ${v}\r\n`;
  return `${s}\r\n`;
}

/**
 * Reads one complete HTTP response (head plus Content-Length body) and then
 * requires the server to close the connection.
 */
export async function readErrorResponse(reader, ms = 5000) {
  const head = await reader.until((buf, ended) => {
    const h = parseHttpHead(buf);
    if (h) return h;
    if (ended) throw new Error(`connection closed (${reader.endReason}) before a complete HTTP response; got ${JSON.stringify(buf.toString('latin1'))}`);
    return undefined;
  }, ms, 'an HTTP response head');
  const cl = head.headers['content-length'];
  assert.ok(cl !== undefined && /^\d+$/.test(cl), `HTTP ${head.status} response must have a Content-Length, headers: ${JSON.stringify(head.headers)}`);
  const len = Number(cl);
  const body = await reader.until((buf, ended) => {
    if (buf.length >= head.size + len) return buf.subarray(head.size, head.size + len);
    if (ended) throw new Error(`connection closed with ${buf.length - head.size} of ${len} body bytes`);
    return undefined;
  }, ms, `the ${len}-byte body of the HTTP ${head.status} response`);
  reader.consume(head.size + len);
  await reader.eof(ms, `the server to close the connection after its HTTP ${head.status} response`);
  return { ...head, body };
}

/**
 * Performs a WebSocket upgrade by hand and checks the 101. extraHeaders are
 * added to the request (e.g. Sec-WebSocket-Extensions). Returns
 * { socket, reader, head } with the reader positioned after the response.
 */
export async function rawUpgrade(port, { path = '/echo', extraHeaders = [] } = {}) {
  const { socket, reader } = await tcpConnect(port);
  const key = randomBytes(16).toString('base64');
  const headers = upgradeHeaders(port, key);
  for (const [k, v] of extraHeaders) headers.set(k, v);
  await write(socket, httpRequest('GET', path, headers));
  const head = await reader.until((buf, ended) => {
    const h = parseHttpHead(buf);
    if (h) return h;
    if (ended) throw new Error(`connection closed before the upgrade response; got ${JSON.stringify(buf.toString('latin1'))}`);
    return undefined;
  }, 5000, 'the 101 response to a hand-made upgrade');
  assert.equal(head.status, 101, `upgrade answered with ${head.statusLine}`);
  assert.deepEqual(tokens(head.headers.upgrade), ['websocket'], 'Upgrade header of the 101');
  assert.ok(tokens(head.headers.connection).includes('upgrade'), `Connection header of the 101: ${head.headers.connection}`);
  assert.equal(head.headers['sec-websocket-accept'], acceptFor(key), 'Sec-WebSocket-Accept');
  const offered = (name) => extraHeaders.some(([k]) => k.toLowerCase() === name);
  /* RFC 6455 4.1: a server may only answer what the client offered. */
  if (!offered('sec-websocket-extensions')) {
    assert.equal(head.headers['sec-websocket-extensions'], undefined, 'extensions in the 101 although none was offered');
  }
  if (!offered('sec-websocket-protocol')) {
    assert.equal(head.headers['sec-websocket-protocol'], undefined, 'a subprotocol in the 101 although none was offered');
  }
  reader.consume(head.size);
  return { socket, reader, head };
}

/** Waits for and returns the next complete server frame. */
export function nextFrame(reader, ms = 5000, what = 'a frame from the server') {
  return reader.until((buf, ended) => {
    const r = parseFrame(buf);
    if (r) {
      reader.consume(r.size);
      return r.frame;
    }
    if (ended) {
      throw new Error(`connection closed (${reader.endReason}) while waiting for ${what}` +
        (buf.length ? `; ${buf.length} stray bytes: ${buf.subarray(0, 32).toString('hex')}` : ''));
    }
    return undefined;
  }, ms, what);
}

/**
 * Expects the server to fail the connection: a close frame with `code`
 * (data frames before it are not allowed) and then the end of the TCP
 * connection, without the client answering the close.
 */
export async function expectCloseThenEof(reader, code, ms = 5000) {
  const f = await nextFrame(reader, ms, `a close frame with code ${code}`);
  assert.equal(f.opcode, OP.CLOSE, `expected a close frame (code ${code}), got opcode 0x${f.opcode.toString(16)} with ${f.payload.length} bytes`);
  assert.equal(f.masked, false, 'server frames must not be masked');
  assert.equal(f.fin, true, 'close frames cannot be fragmented');
  const { code: got, reason } = parseClose(f.payload);
  assert.equal(got, code, `close code (reason ${JSON.stringify(reason)})`);
  await reader.eof(ms, `the server to close TCP after its ${code} close frame`);
  return { code: got, reason };
}
