// Plumbing of hostile.test.mjs ("safe to expose"): what an attacker sends
// that no well-behaved client would (raw HTTP heads without their bodies,
// connections from chosen loopback addresses, hand-made tokens), and the
// measurements that tell whether the server held: its resident memory,
// the size of its data directory, the lines it logs.

import { createHmac } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { onCleanup, scaled, sleep, withTimeout } from './harness.mjs';

/* ------------------------------------------------------------------ */
/* Measurements                                                        */
/* ------------------------------------------------------------------ */

/** VmRSS of a process in bytes. */
export function rss(pid) {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m[1]) * 1024;
}

export const MB = (n) => `${(n / 1048576).toFixed(1)} MiB`;

/**
 * Samples the RSS of `pid` every 10 ms until stop() is called; stop()
 * returns the peak.
 */
export function rssSampler(pid) {
  let peak = rss(pid);
  const timer = setInterval(() => {
    try {
      peak = Math.max(peak, rss(pid));
    } catch {
      /* gone: the caller's assertions say so */
    }
  }, 10);
  return {
    stop() {
      clearInterval(timer);
      return peak;
    },
  };
}

/**
 * Starts a server with a small AddressSanitizer quarantine: freed memory
 * waits there (256 MiB by default) and RSS would count it although
 * nothing holds it. Builds without the sanitizer ignore the option.
 */
export async function smallQuarantine(start) {
  const saved = process.env.ASAN_OPTIONS;
  process.env.ASAN_OPTIONS = `${saved ? `${saved}:` : ''}quarantine_size_mb=1`;
  try {
    return await start();
  } finally {
    if (saved === undefined) delete process.env.ASAN_OPTIONS;
    else process.env.ASAN_OPTIONS = saved;
  }
}

/** Bytes of every regular file under `dir`. */
export function dirBytes(dir) {
  let total = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) total += dirBytes(p);
    else if (e.isFile()) total += statSync(p).size;
  }
  return total;
}

/** The number of lines of `text` at log level `level` ("info", "warn"...). */
export const logLines = (text, level) => text.split('\n').filter((l) => new RegExp(`^\\S+ ${level} `).test(l));

/* ------------------------------------------------------------------ */
/* Raw connections                                                     */
/* ------------------------------------------------------------------ */

/**
 * A TCP connection to 127.0.0.1:port from `localAddress` that collects
 * every byte it receives. Returns { sock, connected, closed, bytes(),
 * text() }: `connected` resolves once it is established, `closed` when
 * it ends either way (never rejects).
 */
export function rawConnect(port, { localAddress = '127.0.0.1' } = {}) {
  const sock = net.connect({ host: '127.0.0.1', port, localAddress });
  onCleanup(() => sock.destroy());
  const chunks = [];
  sock.on('data', (d) => chunks.push(d));
  sock.on('error', () => {});
  const connected = new Promise((resolve, reject) => {
    sock.once('connect', resolve);
    sock.once('error', reject);
  });
  connected.catch(() => {});
  const closed = new Promise((resolve) => sock.once('close', resolve));
  const bytes = () => Buffer.concat(chunks);
  return { sock, connected, closed, bytes, text: () => bytes().toString('latin1') };
}

/**
 * Parses the first HTTP response in `buf`: { status, headers (lower-case
 * names), head (text), body (what follows the head) } or null while the
 * head is incomplete.
 */
export function parseResponse(buf) {
  const end = buf.indexOf('\r\n\r\n');
  if (end < 0) return null;
  const head = buf.subarray(0, end).toString('latin1');
  const [statusLine, ...lines] = head.split('\r\n');
  const m = /^HTTP\/1\.1 (\d{3}) /.exec(statusLine);
  if (!m) throw new Error(`not an HTTP/1.1 status line: ${JSON.stringify(statusLine)}`);
  const headers = {};
  for (const l of lines) {
    const i = l.indexOf(':');
    headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
  }
  return { status: Number(m[1]), headers, head, body: buf.subarray(end + 4) };
}

/**
 * Waits until the bytes received on `conn` hold a whole response (its
 * Content-Length of body after the head); returns parseResponse's value.
 */
export async function rawResponse(conn, ms = 5000, what = 'a response') {
  const deadline = Date.now() + scaled(ms);
  for (;;) {
    const r = parseResponse(conn.bytes());
    if (r && r.body.length >= Number(r.headers['content-length'] ?? 0)) {
      r.body = r.body.subarray(0, Number(r.headers['content-length'] ?? 0));
      return r;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; got ${JSON.stringify(conn.text().slice(0, 300))}`);
    await sleep(5);
  }
}

/** Resolves true when `conn` closes within ms, false otherwise. */
export const closesWithin = (conn, ms) =>
  withTimeout(conn.closed, ms, 'the connection to close').then(() => true, () => false);

/**
 * A plain HTTP request from `localAddress` on its own connection;
 * resolves to { status, headers, body (Buffer) }.
 */
export function httpFrom(port, method, urlPath, { localAddress = '127.0.0.1', headers = {}, body } = {}, ms = 5000) {
  const p = new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method, path: urlPath, headers, localAddress, agent: false }, (res) => {
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
  return withTimeout(p, ms, `${method} ${urlPath} from ${localAddress}`);
}

/** An HTTP request with WebSocket upgrade headers; resolves to the answer (101 or an error). */
export function upgradeRequest(port, urlPath, headers = {}, { localAddress = '127.0.0.1' } = {}) {
  return withTimeout(new Promise((resolve, reject) => {
    const req = http.request({
      host: '127.0.0.1',
      port,
      path: urlPath,
      localAddress,
      agent: false,
      headers: {
        Connection: 'Upgrade',
        Upgrade: 'websocket',
        'Sec-WebSocket-Version': '13',
        'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==',
        ...headers,
      },
    });
    onCleanup(() => req.destroy());
    req.on('upgrade', (res, socket) => {
      socket.destroy();
      resolve({ status: res.statusCode, headers: res.headers, body: '' });
    });
    req.on('response', (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString() }));
    });
    req.on('error', reject);
    req.end();
  }), 5000, `the answer to an upgrade of ${urlPath}`);
}

/* ------------------------------------------------------------------ */
/* Tokens                                                              */
/* ------------------------------------------------------------------ */

const b64u = (s) => Buffer.from(s).toString('base64url');

/**
 * An HS256 token from the literal JSON texts of its header and claims
 * (so that they may hold what JSON.stringify never writes: duplicate
 * members, 1e300).
 */
export function rawHs256(headerJson, claimsJson, secret) {
  const signing = `${b64u(headerJson)}.${b64u(claimsJson)}`;
  return `${signing}.${createHmac('sha256', secret).update(signing).digest('base64url')}`;
}

/* ------------------------------------------------------------------ */
/* A chat client from another address                                 */
/* ------------------------------------------------------------------ */

/**
 * A /chat client over hand-made Engine.IO polling requests from
 * `localAddress` (socket.io-client has no say over its source address for
 * polling): handshake, CONNECT /chat with `token`, one sync with its
 * acknowledgement. Returns the sync answer.
 */
export async function pollingChatSync(port, localAddress, token) {
  const url = (sid) => `/socket.io/?EIO=4&transport=polling${sid ? `&sid=${encodeURIComponent(sid)}` : ''}`;
  const post = async (sid, body) => {
    const r = await httpFrom(port, 'POST', url(sid), { localAddress, headers: { 'Content-Type': 'text/plain;charset=UTF-8' }, body });
    if (r.status !== 200 || r.body.toString() !== 'ok') throw new Error(`POST from ${localAddress}: ${r.status} ${r.body}`);
  };
  const get = async (sid) => {
    const r = await httpFrom(port, 'GET', url(sid), { localAddress });
    if (r.status !== 200) throw new Error(`GET from ${localAddress}: ${r.status} ${r.body}`);
    return r.body.toString().split('\x1e');
  };
  const [open] = await get();
  if (open[0] !== '0') throw new Error(`not an open packet: ${open}`);
  const { sid } = JSON.parse(open.slice(1));
  /* Packets until `pred` matches one (pings answered). */
  const until = async (pred, what) => {
    for (let i = 0; i < 10; i++) {
      const list = await get(sid);
      for (const p of list) if (p === '2') await post(sid, '3');
      const hit = list.find(pred);
      if (hit) return hit;
    }
    throw new Error(`no ${what} from ${localAddress}`);
  };
  await post(sid, `40/chat,${JSON.stringify({ token })}`);
  const connected = await until((p) => p.startsWith('40/chat,') || p.startsWith('44/chat,'), 'CONNECT answer');
  if (!connected.startsWith('40/chat,{"sid"')) throw new Error(`CONNECT from ${localAddress} refused: ${connected}`);
  await post(sid, '42/chat,1["sync",{"since":{}}]');
  const ack = await until((p) => p.startsWith('43/chat,1'), 'sync acknowledgement');
  await post(sid, '1');
  return JSON.parse(ack.slice('43/chat,1'.length))[0];
}
