// permessage-deflate (RFC 7692) on Socket.IO connections, both sides:
// parleyd --compression against socket.io-client (Node, over `ws`) and
// against a hand-made websocket (to see RSV1 and the 101 on the wire, and
// to send a decompression bomb); the C client (sio_driver) against the npm
// socket.io server with perMessageDeflate and against parleyd --compression.
// Wire bytes are counted by a TCP relay between the two ends.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import zlib from 'node:zlib';
import { after, describe, test } from 'node:test';
import { cleanup, onCleanup } from './lib/harness.mjs';
import { Driver, startRefServer } from './lib/driver.mjs';
import { io, startProtocolServer } from './lib/sio.mjs';
import { buildFrame, nextFrame, OP, parseClose, rawUpgrade, write } from './lib/wire.mjs';

after(cleanup);

/** A chat-like, compressible payload of about n bytes. */
function chatText(n) {
  const words = ['hello', 'there', 'message', 'room', 'general', 'typing', 'ok', 'see', 'you', 'later'];
  let s = '';
  for (let i = 0; s.length < n; i++) s += `${words[(i * 7) % words.length]} ${i % 13} `;
  return s.slice(0, n);
}

/** A TCP relay counting bytes each way and keeping the server's first bytes. */
async function startCounter(upstreamPort) {
  const st = { up: 0, down: 0, conns: [] };
  const socks = new Set();
  const server = net.createServer((c) => {
    const u = net.connect(upstreamPort, '127.0.0.1');
    socks.add(c).add(u);
    const conn = { first: Buffer.alloc(0) };
    st.conns.push(conn);
    c.on('data', (d) => { st.up += d.length; u.write(d); });
    u.on('data', (d) => {
      st.down += d.length;
      if (conn.first.length < 4096) conn.first = Buffer.concat([conn.first, d]);
      c.write(d);
    });
    const drop = () => { c.destroy(); u.destroy(); };
    c.on('error', drop); u.on('error', drop); c.on('close', drop); u.on('close', drop);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  onCleanup(() => new Promise((r) => { for (const s of socks) s.destroy(); server.close(() => r()); }));
  return { port: server.address().port, st };
}

const wsHeads = (st) => st.conns.map((c) => c.first.toString('latin1').split('\r\n\r\n')[0]).filter((h) => h.startsWith('HTTP/1.1 101'));
const hasPmd = (h) => /^sec-websocket-extensions:.*permessage-deflate/im.test(h);

const PMD_OFFER = [['Sec-WebSocket-Extensions', 'permessage-deflate; server_no_context_takeover; client_max_window_bits']];

/* The server was offered server_no_context_takeover: each message inflates on its own. */
const inflate = (f) => (f.rsv1
  ? zlib.inflateRawSync(Buffer.concat([f.payload, Buffer.from([0, 0, 0xff, 0xff])]), { finishFlush: zlib.constants.Z_SYNC_FLUSH })
  : f.payload).toString();

/** Raw Socket.IO session on the websocket transport; answers pings. */
async function rawSio(port, extraHeaders = PMD_OFFER) {
  const r = await rawUpgrade(port, { path: '/socket.io/?EIO=4&transport=websocket', extraHeaders });
  const next = async (what) => {
    for (;;) {
      const f = await nextFrame(r.reader, 5000, what);
      if (f.opcode === OP.TEXT) f.text = inflate(f);
      if (f.opcode === OP.TEXT && f.text === '2') {
        await write(r.socket, buildFrame({ opcode: OP.TEXT, payload: Buffer.from('3') }));
        continue;
      }
      return f;
    }
  };
  const open = await next('the open packet');
  assert.equal(open.text[0], '0');
  await write(r.socket, buildFrame({ opcode: OP.TEXT, payload: Buffer.from('40') }));
  const conn = await next('the CONNECT reply');
  assert.match(conn.text, /^40\{"sid"/);
  const auth = await next('the auth event');
  assert.match(auth.text, /^42\["auth"/);
  return { ...r, next };
}


describe('parleyd --compression', () => {
  test('the extension is negotiated; large messages compressed (RSV1), small ones not, exact round trips', async () => {
    const srv = await startProtocolServer({ extra: ['--compression'] });
    const r = await rawSio(srv.port);
    assert.ok(hasPmd(`sec-websocket-extensions: ${r.head.headers['sec-websocket-extensions']}`), `101 without permessage-deflate: ${JSON.stringify(r.head.headers)}`);
    const big = chatText(50000);
    await write(r.socket, buildFrame({ opcode: OP.TEXT, payload: Buffer.from(`42["message",${JSON.stringify(big)}]`) }));
    const fb = await r.next('the echo of the large message');
    assert.equal(fb.rsv1, true, 'a 50 KB message must be sent compressed');
    assert.ok(fb.payload.length < big.length / 4, `compressed size ${fb.payload.length}`);
    assert.equal(fb.text, `42${JSON.stringify(["message-back", big])}`, `inflated ${fb.text.length} of ${big.length + 25}: ${fb.text.slice(0, 60)}`);
    /* A compressed message from the client, inflated by the server. */
    const pkt = Buffer.from(`42["message",${JSON.stringify(big + 'x')}]`);
    const c = zlib.deflateRawSync(pkt, { finishFlush: zlib.constants.Z_SYNC_FLUSH });
    await write(r.socket, buildFrame({ opcode: OP.TEXT, rsv1: true, payload: c.subarray(0, c.length - 4) }));
    const fc = await r.next('the echo of the compressed message');
    assert.equal(fc.text, `42${JSON.stringify(["message-back", big + "x"])}`, `inflated ${fc.text.length}: ${fc.rsv1} ${fc.text.slice(0, 80)}`);
    await write(r.socket, buildFrame({ opcode: OP.TEXT, payload: Buffer.from('42["message","hi"]') }));
    const fs = await r.next('the echo of the small message');
    assert.equal(fs.rsv1, false, 'a message under the threshold must go uncompressed');
    assert.equal(fs.payload.toString(), '42["message-back","hi"]');
    r.socket.destroy();
    await srv.stop();
  });

  test('--compression-threshold moves the cut-off', async () => {
    const srv = await startProtocolServer({ extra: ['--compression', '--compression-threshold', '10'] });
    const r = await rawSio(srv.port);
    await write(r.socket, buildFrame({ opcode: OP.TEXT, payload: Buffer.from('42["message","hello hello hello"]') }));
    const f = await r.next('the echo');
    assert.equal(f.rsv1, true);
    assert.equal(inflate(f), '42["message-back","hello hello hello"]');
    r.socket.destroy();
    await srv.stop();
  });

  test('a decompression bomb closes with 1009; memory stays bounded', async () => {
    const srv = await startProtocolServer({ extra: ['--compression'] });
    const rss = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${srv.child.pid}/status`, 'utf8'))[1]);
    /* Made before connecting: the protocol-test heartbeat is 300/200 ms. */
    const bomb = zlib.deflateRawSync(Buffer.alloc(200 * 1024 * 1024, 'a'), { level: 9, finishFlush: zlib.constants.Z_SYNC_FLUSH });
    const before = rss();
    const r = await rawSio(srv.port);
    await write(r.socket, buildFrame({ opcode: OP.TEXT, rsv1: true, payload: bomb.subarray(0, bomb.length - 4) }));
    const f = await r.next('the close frame');
    assert.equal(f.opcode, OP.CLOSE);
    assert.equal(parseClose(f.payload).code, 1009);
    const grown = rss() - before;
    assert.ok(grown < 32 * 1024, `parleyd grew by ${grown} KiB inflating a 200 MiB bomb`);
    assert.ok(srv.alive());
    r.socket.destroy();
    await srv.stop();
  });

  test('without --compression the extension is not accepted', async () => {
    const srv = await startProtocolServer();
    const r = await rawSio(srv.port);
    assert.equal(r.head.headers['sec-websocket-extensions'], undefined);
    r.socket.destroy();
    await srv.stop();
  });

  test('room broadcasts reach compressing and plain sessions exactly (shared frame under the threshold)', async () => {
    const srv = await startProtocolServer({ extra: ['--compression'] });
    const mk = (perMessageDeflate) => new Promise((res, rej) => {
      const s = io(`http://127.0.0.1:${srv.port}`, { transports: ['websocket'], reconnection: false, perMessageDeflate });
      onCleanup(() => s.close());
      s.once('connect', () => res(s));
      s.once('connect_error', rej);
    });
    const socks = [await mk({ threshold: 1024 }), await mk({ threshold: 1024 }), await mk(false)];
    for (const s of socks) await s.emitWithAck('join', 'r');
    for (const text of ['short', chatText(20000), 'again short', chatText(3000)]) {
      const got = socks.map((s) => new Promise((res) => s.once('b', res)));
      await socks[0].emitWithAck('to-room', 'r', 'b', { text });
      for (const g of await Promise.all(got)) assert.deepEqual(g, { text });
    }
    for (const s of socks) s.close();
    await srv.stop();
  });

  test('socket.io-client (Node, ws) negotiates it and round-trips exactly with fewer wire bytes', async () => {
    const results = {};
    for (const on of [true, false]) {
      const srv = await startProtocolServer({ extra: on ? ['--compression'] : [] });
      const relay = await startCounter(srv.port);
      const sock = io(`http://127.0.0.1:${relay.port}`, { transports: ['websocket'], reconnection: false });
      onCleanup(() => sock.close());
      await new Promise((res, rej) => { sock.once('connect', res); sock.once('connect_error', rej); });
      for (const n of [10, 500, 5000, 200000]) {
        const m = { text: chatText(n), n, nested: [chatText(n % 100)] };
        const back = new Promise((res) => sock.once('message-back', res));
        sock.emit('message', m);
        assert.deepEqual(await back, m);
      }
      assert.equal(wsHeads(relay.st).length, 1);
      assert.equal(hasPmd(wsHeads(relay.st)[0]), on, wsHeads(relay.st)[0]);
      results[on] = relay.st.up + relay.st.down;
      sock.close();
      await srv.stop();
    }
    assert.ok(results.true < results.false / 4, `wire bytes with compression ${results.true}, without ${results.false}`);
  });
});

describe('the C client (sio_driver) with compression', () => {
  for (const peer of ['socket.io (perMessageDeflate)', 'parleyd --compression']) {
    test(`negotiates it with ${peer} and exchanges large messages exactly`, async () => {
      const srv = peer.startsWith('socket.io') ? await startRefServer({ pmd: true }) : await startProtocolServer({ extra: ['--compression'] });
      const relay = await startCounter(srv.port);
      const d = new Driver();
      await d.ok({ cmd: 'new', url: `http://127.0.0.1:${relay.port}`, transports: 'websocket', reconnection: 0, timeout: 5000 });
      await d.ok({ cmd: 'socket', nsp: '/' });
      await d.ok({ cmd: 'connect' });
      await d.next({ ev: 'connect', nsp: '/' }, 8000);
      let payload = 0;
      for (const n of [20, 3000, 300000]) {
        const args = [{ text: chatText(n), n }, 'tail'];
        await d.ok({ cmd: 'emit', event: 'message', args });
        const e = await d.event('message-back');
        assert.deepEqual(e.args, args);
        payload += 2 * n;
      }
      const heads = wsHeads(relay.st);
      assert.equal(heads.length, 1);
      assert.ok(hasPmd(heads[0]), heads[0]);
      const wire = relay.st.up + relay.st.down;
      assert.ok(wire < payload / 4, `wire bytes ${wire} for ${payload} bytes of messages`);
      await d.cmd({ cmd: 'close' }).catch(() => {});
      if (srv.kill) await srv.kill(); else await srv.stop();
    });
  }

  test('compression: 0 does not offer it', async () => {
    const srv = await startProtocolServer({ extra: ['--compression'] });
    const relay = await startCounter(srv.port);
    const d = new Driver();
    await d.ok({ cmd: 'new', url: `http://127.0.0.1:${relay.port}`, transports: 'websocket', reconnection: 0, timeout: 5000, compression: 0 });
    await d.ok({ cmd: 'socket', nsp: '/' });
    await d.ok({ cmd: 'connect' });
    await d.next({ ev: 'connect', nsp: '/' }, 8000);
    assert.equal(hasPmd(wsHeads(relay.st)[0]), false);
    await srv.stop();
  });
});
