// Engine.IO v4 by hand, for the tests that must send what no well-behaved
// client would: plain HTTP requests for the polling transport (with a
// handle to abort a pending long-poll), payload splitting, and raw
// WebSocket sessions (through the npm `ws` wrapper of peer.mjs) that see
// every Engine.IO packet and the close frame.

import assert from 'node:assert/strict';
import http from 'node:http';
import { onCleanup, scaled, withTimeout } from './harness.mjs';
import { openClient } from './peer.mjs';

/** The record separator between packets of a polling payload. */
export const SEP = '\x1e';

/**
 * Starts one HTTP request on its own connection. Returns { req, response,
 * abort() }: response resolves to { status, headers, body } (body as a
 * UTF-8 string) or rejects if the connection fails first.
 */
export function startRequest(port, method, path, { body, headers = {} } = {}) {
  const req = http.request({ host: '127.0.0.1', port, method, path, headers, agent: false });
  onCleanup(() => req.destroy());
  const response = new Promise((resolve, reject) => {
    req.on('response', (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('error', reject);
  });
  response.catch(() => {});
  if (body !== undefined) req.write(body);
  req.end();
  return { req, response, abort: () => req.destroy() };
}

/** One complete HTTP request/response, bounded in time. */
export function request(port, method, path, opts = {}, ms = 5000) {
  return withTimeout(startRequest(port, method, path, opts).response, ms, `the response to ${method} ${path}`);
}

/** Query string of an Engine.IO v4 request. */
export const q = (transport, sid) => `?EIO=4&transport=${transport}${sid ? `&sid=${encodeURIComponent(sid)}` : ''}`;

/** Asserts an Engine.IO error answer: status, JSON body, CORS header. */
export function assertEioError(res, code, message, status = 400) {
  assert.equal(res.status, status, `HTTP status (body ${JSON.stringify(res.body)})`);
  assert.match(res.headers['content-type'] ?? '', /^application\/json\b/, 'content type of the error body');
  assert.deepEqual(JSON.parse(res.body), { code, message }, 'error body');
  assert.equal(res.headers['access-control-allow-origin'], '*', 'CORS header of the error');
}

/** Splits a polling payload into its packets. */
export const packets = (body) => (body === '' ? [] : body.split(SEP));

/**
 * A polling handshake on `base` (/socket.io/ or /engine.io/). Returns the
 * open packet's data (sid, upgrades, ...).
 */
export async function pollHandshake(port, base) {
  const res = await request(port, 'GET', `${base}${q('polling')}`);
  assert.equal(res.status, 200, `handshake status (body ${JSON.stringify(res.body)})`);
  const [open, ...rest] = packets(res.body);
  assert.equal(open[0], '0', `the first packet is an open packet: ${JSON.stringify(res.body)}`);
  assert.deepEqual(rest, [], 'nothing after the open packet');
  return JSON.parse(open.slice(1));
}

/** GET on a polling session; resolves to its packets. */
export async function pollGet(port, base, sid, ms = 5000) {
  const res = await request(port, 'GET', `${base}${q('polling', sid)}`, {}, ms);
  assert.equal(res.status, 200, `GET status (body ${JSON.stringify(res.body)})`);
  return packets(res.body);
}

/** POST of packets on a polling session; expects "ok". */
export async function pollPost(port, base, sid, list) {
  const res = await request(port, 'POST', `${base}${q('polling', sid)}`, { body: list.join(SEP), headers: { 'Content-Type': 'text/plain;charset=UTF-8' } });
  assert.equal(res.status, 200, `POST status (body ${JSON.stringify(res.body)})`);
  assert.equal(res.body, 'ok');
}

/**
 * GETs until a packet other than ping arrives (answering pings with
 * pongs); returns the packets of that response minus the pings.
 */
export async function pollUntil(port, base, sid, ms = 5000) {
  const deadline = Date.now() + scaled(ms);
  for (;;) {
    const list = await pollGet(port, base, sid, Math.max(100, deadline - Date.now()));
    const pings = list.filter((p) => p === '2');
    if (pings.length) await pollPost(port, base, sid, pings.map(() => '3'));
    const rest = list.filter((p) => p !== '2');
    if (rest.length) return rest;
    if (Date.now() > deadline) throw new Error(`no packet but pings within ${ms} ms`);
  }
}

/**
 * A raw WebSocket Engine.IO session on `base` (a direct websocket
 * handshake, or an upgrade of `sid`). For a direct one, the open packet is
 * checked and returned in `open`. Pings from the server are answered
 * unless autoPong is false; everything else is left in `conn.messages`.
 */
export async function wsSession(port, base, { sid, autoPong = true } = {}) {
  const conn = await openClient(`ws://127.0.0.1:${port}${base}${q('websocket', sid)}`, { perMessageDeflate: false });
  if (autoPong) {
    /* Answer pings as they arrive so the session outlives slow tests. */
    const push = conn.messages.push.bind(conn.messages);
    conn.messages.push = (m) => {
      if (!m.isBinary && m.data.toString() === '2') conn.ws.send('3');
      else push(m);
    };
  }
  if (!sid) {
    const m = await conn.nextMessage(5000, 'the open packet');
    const text = m.data.toString();
    assert.equal(text[0], '0', `the first frame is an open packet: ${text}`);
    conn.open = JSON.parse(text.slice(1));
  }
  return conn;
}

/** The next text packet on a raw WebSocket session. */
export async function wsNext(conn, ms = 5000, what = 'a packet') {
  const m = await conn.nextMessage(ms, what);
  return m.isBinary ? m.data : m.data.toString();
}
