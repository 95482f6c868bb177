// The npm engine.io-client (the version socket.io-client 4.8.x uses)
// against the plain Engine.IO echo endpoint of `parleyd --protocol-test` at
// /engine.io/, in the three transport modes: handshake values, text and
// binary echo, heartbeat timing, maxPayload.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { cleanup, onCleanup, Queue, scaled, sleep, withTimeout } from './lib/harness.mjs';
import { eioClient, MAX_PAYLOAD, MODES, normalizeBinary, PING_INTERVAL, PING_TIMEOUT, startProtocolServer } from './lib/sio.mjs';

let eioCount = 0;

/** One engine.io-client socket whose messages, pings and close are queued. */
class EioPeer {
  constructor(port, mode, label = `eio client ${++eioCount}`) {
    this.label = label;
    this.mode = mode;
    this.messages = new Queue(`message on ${label}`);
    this.pings = [];
    this.handshake = null;
    this.upgraded = null;
    this.closeInfo = null;
    this.socket = new eioClient.Socket(`http://127.0.0.1:${port}`, {
      path: '/engine.io/',
      transports: mode.transports ?? ['polling', 'websocket'],
    });
    this.socket.on('handshake', (h) => {
      this.handshake = h;
    });
    this.socket.on('ping', () => this.pings.push(Date.now()));
    this.socket.on('message', (data) => this.messages.push(data));
    this.upgradedP = new Promise((resolve) => this.socket.on('upgrade', (t) => resolve((this.upgraded = t.name))));
    this.opened = withTimeout(new Promise((resolve, reject) => {
      this.socket.once('open', resolve);
      this.socket.once('error', reject);
    }), 10000, `${label} to open`);
    this.closed = new Promise((resolve) => {
      this.socket.on('close', (reason, desc) => {
        this.closeInfo = { reason, desc };
        this.messages.fail(new Error(`${label} closed: ${reason}`));
        resolve(this.closeInfo);
      });
    });
    onCleanup(() => this.socket.close());
  }

  get transport() {
    return this.socket.transport?.name;
  }

  async echo(data, ms = 10000) {
    this.socket.send(data);
    const got = await this.messages.next(ms, `the echo of ${typeof data === 'string' ? `${data.length} chars` : `${data.length} bytes`}`);
    return got;
  }

  async assertTransport(name, ms = 3000) {
    const deadline = Date.now() + scaled(ms);
    while (this.transport !== name && Date.now() < deadline) await sleep(10);
    assert.equal(this.transport, name, `${this.label} runs on this transport`);
  }

  async close() {
    this.socket.close();
    const c = await withTimeout(this.closed, 5000, `${this.label} to close`);
    assert.equal(c.reason, 'forced close');
  }
}

async function openPeer(srv, mode) {
  const p = new EioPeer(srv.port, mode);
  await p.opened;
  return p;
}

describe('engine.io-client against parleyd --protocol-test /engine.io/', () => {
  let srv;

  before(async () => {
    srv = await startProtocolServer();
    const p = await openPeer(srv, MODES[1]);
    await p.close();
  });

  after(cleanup);

  for (const mode of MODES) {
    describe(`transport: ${mode.name}`, () => {
      test('handshake: sid, upgrades, pingInterval 300, pingTimeout 200, maxPayload 1000000', async () => {
        const p = await openPeer(srv, mode);
        const h = p.handshake;
        assert.equal(typeof h.sid, 'string');
        assert.ok(h.sid.length > 0);
        assert.deepEqual(
          { upgrades: h.upgrades, pingInterval: h.pingInterval, pingTimeout: h.pingTimeout, maxPayload: h.maxPayload },
          {
            upgrades: mode.transports?.[0] === 'websocket' ? [] : ['websocket'],
            pingInterval: PING_INTERVAL,
            pingTimeout: PING_TIMEOUT,
            maxPayload: MAX_PAYLOAD,
          },
        );
        assert.deepEqual(Object.keys(h).sort(), ['maxPayload', 'pingInterval', 'pingTimeout', 'sid', 'upgrades']);
        await p.assertTransport(mode.final);
        if (mode.final === 'websocket' && mode.transports === undefined) assert.equal(await p.upgradedP, 'websocket');
        await p.close();
      });

      test('text echo: ASCII, empty, unicode, 200 kB, a burst of 200 in order', async () => {
        const p = await openPeer(srv, mode);
        /* An empty message is the bare packet "4", which engine.io-parser
         * hands over as undefined. */
        assert.equal(await p.echo(''), undefined);
        /* No \x1e: it separates packets in a polling payload, unescaped. */
        for (const s of ['hello', 'héllo 中文 😀🎉 مرحبا שלום', '\u0000\u2028 NUL and a line separator', 'b not base64', '4 looks like a packet']) {
          assert.equal(await p.echo(s), s);
        }
        const big = 'x😀y'.repeat(50000);
        assert.equal(await p.echo(big), big);
        for (let i = 0; i < 200; i++) p.socket.send(`burst ${i}`);
        for (let i = 0; i < 200; i++) assert.equal(await p.messages.next(), `burst ${i}`);
        await p.assertTransport(mode.final);
        await p.close();
      });

      test('binary echo: bytes, empty, 300 kB, interleaved with text in order', async () => {
        const p = await openPeer(srv, mode);
        const bytes = (n) => Buffer.from(Array.from({ length: n }, (_, i) => (i * 7 + 3) & 0xff));
        for (const b of [bytes(1), bytes(0), bytes(256), bytes(300000)]) {
          const got = await p.echo(b);
          assert.ok(typeof got !== 'string', `binary comes back as binary (got ${typeof got})`);
          assert.deepEqual(normalizeBinary(got), b);
        }
        const seq = Array.from({ length: 60 }, (_, i) => (i % 2 ? `t${i}` : bytes(i)));
        for (const m of seq) p.socket.send(m);
        for (const m of seq) assert.deepEqual(normalizeBinary(await p.messages.next()), m);
        await p.assertTransport(mode.final);
        await p.close();
      });

      test('heartbeat: the server pings every ~300 ms and the session outlives several intervals', async () => {
        const p = await openPeer(srv, mode);
        await sleep(2000);
        assert.equal(p.closeInfo, null, `closed: ${JSON.stringify(p.closeInfo)}`);
        const pings = p.pings;
        assert.ok(pings.length >= 5, `${pings.length} pings in 2 s`);
        const gaps = pings.slice(1).map((t, i) => t - pings[i]);
        const mean = gaps.reduce((a, b) => a + b, 0) / gaps.length;
        assert.ok(mean >= 250 && mean <= 400, `mean ping interval ${mean.toFixed(0)} ms (gaps ${gaps.join(', ')})`);
        for (const g of gaps) assert.ok(g >= 200 && g < PING_INTERVAL + PING_TIMEOUT, `a gap of ${g} ms between pings (gaps ${gaps.join(', ')})`);
        assert.equal(await p.echo('still here'), 'still here');
        await p.assertTransport(mode.final);
        await p.close();
      });

      test('maxPayload: a packet of exactly maxPayload bytes is echoed, more data in many packets too', async () => {
        const p = await openPeer(srv, mode);
        if (mode.transports === undefined) await p.upgradedP;
        /* '4' + text: exactly 1000000 bytes on the wire. */
        const s = 'm'.repeat(MAX_PAYLOAD - 1);
        assert.equal(await p.echo(s), s);
        /* 3 MB in 100 kB messages: the client splits its polling payloads
         * at the server's maxPayload. */
        const parts = Array.from({ length: 30 }, (_, i) => String.fromCharCode(97 + i % 26).repeat(100000));
        for (const m of parts) p.socket.send(m);
        for (const m of parts) assert.equal(await p.messages.next(10000), m);
        await p.assertTransport(mode.final);
        await p.close();
      });

      test('maxPayload: a packet one byte over closes the session', async () => {
        const p = await openPeer(srv, mode);
        if (mode.transports === undefined) await p.upgradedP;
        p.socket.send('m'.repeat(MAX_PAYLOAD));
        const c = await withTimeout(p.closed, 5000, 'the session to close');
        const expected = mode.final === 'polling' ? 'transport error' : 'transport close';
        assert.equal(c.reason, expected, `close reason (${JSON.stringify(c.desc?.message ?? c.desc?.description ?? '')})`);
        assert.equal(p.messages.length, 0, 'nothing echoed');
      });
    });
  }
});
