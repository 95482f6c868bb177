// The reference peer: thin wrappers around the npm `ws` client and server
// that queue what arrives (messages, pings, pongs, close) so tests can await
// each with a timeout, and keep the underlying TCP/TLS socket reachable for
// byte counting.

import assert from 'node:assert/strict';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import tls from 'node:tls';
import { loadWs, MiB, onCleanup, Queue, scaled, withTimeout, assertSameBytes } from './harness.mjs';

export const { WebSocket, WebSocketServer } = await loadWs();

/**
 * Wraps one open `ws` WebSocket (either side). Everything it receives goes
 * into queues; when the connection closes the queues fail so a waiting test
 * sees "closed" instead of a timeout.
 */
export class Conn {
  constructor(ws, socket, label) {
    this.ws = ws;
    this.socket = socket;
    this.label = label;
    this.messages = new Queue(`message on ${label}`);
    this.pongs = new Queue(`pong on ${label}`);
    this.pings = new Queue(`ping on ${label}`);
    this.errors = [];
    this.closeInfo = null;
    /* Response headers of the upgrade (client side only). */
    this.response = null;
    ws.on('upgrade', (res) => {
      this.response = res;
    });
    ws.on('message', (data, isBinary) => this.messages.push({ data, isBinary }));
    ws.on('pong', (data) => this.pongs.push(data));
    ws.on('ping', (data) => this.pings.push(data));
    ws.on('error', (err) => this.errors.push(err));
    this.closed = new Promise((resolve) => {
      ws.on('close', (code, reason) => {
        this.closeInfo = { code, reason: reason.toString('utf8') };
        const err = new Error(`${label} closed (code ${code}, reason ${JSON.stringify(this.closeInfo.reason)})` +
          (this.errors.length ? `; errors: ${this.errors.map((e) => e.message).join('; ')}` : ''));
        this.messages.fail(err);
        this.pongs.fail(err);
        this.pings.fail(err);
        resolve(this.closeInfo);
      });
    });
    onCleanup(() => ws.terminate());
  }

  /**
   * Client side: the server's Sec-WebSocket-Extensions, params included.
   * Server side: the names of the negotiated extensions. '' if none.
   */
  get extensions() {
    if (this.response) return this.response.headers['sec-websocket-extensions'] ?? '';
    return this.ws.extensions;
  }

  send(data, opts = {}) {
    return new Promise((resolve, reject) => {
      this.ws.send(data, opts, (err) => (err ? reject(err) : resolve()));
    });
  }

  async nextMessage(ms = 10000, what) {
    return this.messages.next(ms, what ?? `a message on ${this.label}`);
  }

  /** Asserts the next message is `payload` with the given type. */
  async expectMessage(payload, binary, ms = 10000, what = '') {
    const desc = `${binary ? 'binary' : 'text'} message of ${payload.length} bytes${what ? ` (${what})` : ''}`;
    const m = await this.nextMessage(ms, `the echo of a ${desc} on ${this.label}`);
    assert.equal(m.isBinary, binary, `type of the echo of a ${desc}`);
    assertSameBytes(m.data, payload, `echo of a ${desc}`);
  }

  /** Sends payload as one message and expects it back byte for byte. */
  async echo(payload, binary, ms = 10000, what = '') {
    const buf = Buffer.from(payload);
    await this.send(buf, { binary });
    await this.expectMessage(buf, binary, ms, what);
  }

  async ping(payload, ms = 5000) {
    const buf = Buffer.from(payload);
    this.ws.ping(buf);
    const got = await this.pongs.next(ms, `a pong for a ${buf.length}-byte ping on ${this.label}`);
    assertSameBytes(got, buf, 'pong payload');
  }

  /** Starts the closing handshake and returns the peer's close { code, reason }. */
  async close(code, reason, ms = 5000) {
    if (code === undefined) this.ws.close();
    else this.ws.close(code, reason);
    return withTimeout(this.closed, ms, `the closing handshake of ${this.label}`);
  }

  waitClosed(ms = 5000, what = `${this.label} to close`) {
    return withTimeout(this.closed, ms, what);
  }
}

/**
 * Opens a `ws` client connection and waits for it to be open. opts: ca,
 * servername, perMessageDeflate (default true as in ws), protocols,
 * headers, autoPong.
 */
export async function openClient(url, opts = {}) {
  const secure = url.startsWith('wss:');
  let socket;
  const ws = new WebSocket(url, opts.protocols ?? [], {
    perMessageDeflate: opts.perMessageDeflate ?? true,
    ca: opts.ca,
    servername: opts.servername,
    headers: opts.headers,
    autoPong: opts.autoPong ?? true,
    maxPayload: 64 * MiB,
    handshakeTimeout: scaled(10000),
    /* Same as ws's own connectors, but keeps the socket for byte counts. */
    createConnection: (o) => {
      if (secure) {
        o.path = undefined;
        if (!o.servername && o.servername !== '') o.servername = net.isIP(o.host) ? '' : o.host;
        socket = tls.connect(o);
      } else {
        o.path = o.socketPath;
        socket = net.connect(o);
      }
      return socket;
    },
  });
  const conn = new Conn(ws, null, `client of ${url}`);
  try {
    await withTimeout(new Promise((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', reject);
      ws.once('close', (code) => reject(new Error(`closed with ${code} before opening`)));
    }), 15000, `the WebSocket handshake with ${url}`);
  } catch (err) {
    ws.terminate();
    throw new Error(`could not open ${url}: ${err.message}`);
  }
  conn.socket = socket;
  return conn;
}

/**
 * A `ws` server (plain or TLS) on 127.0.0.1 with an OS-chosen port for
 * `parley ws-echo` to connect to. Each upgrade request is recorded
 * (headers, SNI name) and each accepted connection is queued as a Conn.
 * tlsOpts: { cert, key } or null; wsOpts go to WebSocketServer.
 */
export async function startPeerServer({ tlsOpts = null, wsOpts = {} } = {}) {
  const server = tlsOpts ? https.createServer({ cert: tlsOpts.cert, key: tlsOpts.key }) : http.createServer();
  const sockets = new Set();
  server.on(tlsOpts ? 'secureConnection' : 'connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  const tlsErrors = new Queue('TLS client error');
  server.on('tlsClientError', (err) => tlsErrors.push(err));
  server.on('request', (req, res) => {
    res.writeHead(404, { 'Content-Length': '0', Connection: 'close' });
    res.end();
  });
  const wss = new WebSocketServer({ noServer: true, maxPayload: 64 * MiB, ...wsOpts });
  const upgrades = new Queue('upgrade request');
  const conns = new Queue('accepted WebSocket connection');
  server.on('upgrade', (req, socket, head) => {
    const info = { headers: req.headers, rawHeaders: req.rawHeaders, url: req.url, servername: socket.servername };
    upgrades.push(info);
    wss.handleUpgrade(req, socket, head, (ws) => {
      conns.push(new Conn(ws, socket, `server connection from parley (${req.url})`));
    });
  });
  await withTimeout(new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  }), 5000, 'the peer server to listen');
  const { port } = server.address();
  const close = async () => {
    for (const s of sockets) s.destroy();
    for (const c of wss.clients) c.terminate();
    await new Promise((resolve) => server.close(() => resolve()));
  };
  onCleanup(close);
  return { port, server, wss, upgrades, conns, tlsErrors, close };
}

/**
 * One echo round trip and a normal close on a freshly started parleyd, run
 * from before() hooks: if the server cannot do even this, every test of the
 * suite is cancelled at once instead of each timing out in turn.
 */
export async function probeEcho(server, { scheme = 'ws', ca, wsPath = '/echo' } = {}) {
  const url = `${scheme}://127.0.0.1:${server.port}${wsPath}`;
  try {
    const c = await openClient(url, { ca, perMessageDeflate: false });
    await c.echo('probe', false, 5000);
    const info = await c.close(1000, 'probe done');
    assert.equal(info.code, 1000, 'close code of the probe');
  } catch (err) {
    throw new Error(`${server.child.label} does not even echo one message, so its tests are cancelled: ${err.message}${server.stderr()}`);
  }
}
