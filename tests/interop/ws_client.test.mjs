// `parley ws-echo URL` against a ws server (plain and TLS, deflate on and
// off). The server drives the test: it sends, awaits parley's echo,
// compares, pings, and closes; parley must answer everything and exit 0.
// Also: how parley fails (untrusted or mismatched certificate, nothing
// listening, bad handshakes, dropped TCP) and what it sends (headers,
// subprotocols, SNI).

import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import {
  cleanup, compressibleText, makeSelfSignedCert, MiB, onCleanup, Queue, randomBinary, randomLowEntropy,
  randomText, runParley, sleep, tempDir, withTimeout,
} from './lib/harness.mjs';
import { startPeerServer } from './lib/peer.mjs';
import { acceptFor, StreamReader, tokens } from './lib/wire.mjs';

const SLOW = { timeout: 240000 };

/**
 * Rejects soon after parley exits, so a crash is reported at once. The
 * grace period lets events that parley caused just before exiting (its
 * close frame, the end of TCP) reach this process first.
 */
function unlessExited(run, promise, what, graceMs = 2000) {
  const early = run.child.exitPromise.then(async ({ code, signal }) => {
    await sleep(graceMs);
    throw new Error(`parley exited (code ${code}, signal ${signal}) while the test waited for ${what}${run.stderr()}`);
  });
  early.catch(() => {});
  return Promise.race([promise, early]);
}

/**
 * Starts a peer server and `parley ws-echo` against it, and returns the
 * accepted server-side connection with the upgrade request parley sent.
 */
async function connectParley({ tlsOpts = null, wsOpts = {}, args = [], host = '127.0.0.1', path = '/parley', timeoutMs = 60000 } = {}) {
  const peer = await startPeerServer({ tlsOpts, wsOpts });
  const url = `${tlsOpts ? 'wss' : 'ws'}://${host}:${peer.port}${path}`;
  const run = runParley(['ws-echo', url, ...args], { timeoutMs });
  const conn = await unlessExited(run, peer.conns.next(15000, `parley to connect to ${url}`), `parley to connect to ${url}`);
  const upgrade = await peer.upgrades.next(1000);
  return { peer, run, conn, upgrade, url };
}

/** Closes from the server side and checks parley's answer and exit. */
async function closeAndExpectExit0(s, code = 1000, reason = 'done') {
  const info = await unlessExited(s.run, s.conn.close(code, reason, 10000), `parley to answer a ${code} close`);
  assert.equal(info.code, code, 'parley must echo the close code (a 1006 means it dropped TCP without a close frame)');
  const exit = await s.run.done;
  assert.deepEqual({ code: exit.code, signal: exit.signal }, { code: 0, signal: null }, `parley exit status${s.run.stderr()}`);
}

/** Expects parley to fail (exit 1) with an error on stderr. */
async function expectExit1(run, what) {
  const exit = await run.done;
  assert.deepEqual({ code: exit.code, signal: exit.signal }, { code: 1, signal: null }, `parley exit status ${what}${run.stderr()}`);
  assert.ok(exit.stderr.trim().length > 0, `parley must say why it failed ${what}`);
  return exit;
}

/**
 * The message matrix, driven from the server side. big: 'random' (full
 * entropy, for connections without deflate), 'low-entropy' (stays under
 * the frame limit when deflated) or null.
 */
async function drive(conn, { big = null, deflate = false } = {}) {
  await conn.echo('hello, parley', false);
  await conn.echo('héllo wörld ✓ € 𝄞 🎉', false, undefined, 'multi-byte UTF-8');
  await conn.echo(Buffer.alloc(0), false, undefined, 'empty text');
  await conn.echo(Buffer.alloc(0), true, undefined, 'empty binary');
  await conn.echo(Buffer.from([0xff, 0xfe, 0x00, 0xc3]), true, undefined, 'invalid UTF-8 in binary');
  for (const size of [125, 126, 127, 65535, 65536]) {
    await conn.echo(randomBinary(size), true);
    await conn.echo(randomText(size), false);
  }

  const burst = [];
  for (let i = 0; i < 300; i++) {
    const binary = i % 2 === 1;
    const m = binary ? randomBinary(i % 300) : Buffer.from(`burst ${i} ${'y'.repeat(i % 50)}`);
    burst.push({ m, binary });
    conn.ws.send(m, { binary });
  }
  for (const [i, { m, binary }] of burst.entries()) await conn.expectMessage(m, binary, 10000, `burst message #${i}`);

  /* Fragmented text cut inside multi-byte characters, a ping between. */
  const text = Buffer.from('frag ✓ mented 🎉 text');
  const cut1 = text.indexOf(Buffer.from('✓')) + 1;
  const cut2 = text.indexOf(Buffer.from('🎉')) + 2;
  await conn.send(text.subarray(0, cut1), { binary: false, fin: false });
  conn.ws.ping(Buffer.from('between fragments'));
  await conn.send(text.subarray(cut1, cut2), { binary: false, fin: false });
  await conn.send(text.subarray(cut2), { binary: false, fin: true });
  assert.equal((await conn.pongs.next(5000, 'the pong of the ping between fragments')).toString(), 'between fragments');
  await conn.expectMessage(text, false, 10000, 'fragmented text');

  const parts = [randomBinary(20000), randomBinary(1), Buffer.alloc(0), randomBinary(70000)];
  for (const [i, p] of parts.entries()) {
    await conn.send(p, { binary: true, fin: i === parts.length - 1 });
    if (i === 1) conn.ws.ping(Buffer.from([7, 8, 9]));
  }
  assert.deepEqual([...(await conn.pongs.next(5000, 'the pong of the ping between binary fragments'))], [7, 8, 9]);
  await conn.expectMessage(Buffer.concat(parts), true, 10000, 'fragmented binary');

  await conn.ping(Buffer.alloc(0));
  await conn.ping(randomBinary(125));

  const read0 = conn.socket.bytesRead;
  await conn.echo(compressibleText(MiB), false, 30000, '1 MiB compressible');
  if (deflate) {
    const read = conn.socket.bytesRead - read0;
    assert.ok(read < MiB / 10, `parley sent ${read} bytes for the echo of 1 MiB of compressible text: it did not compress`);
  }
  await conn.echo(randomBinary(64 * 1024), true, 10000, '64 KiB incompressible');

  if (big === 'random') {
    await conn.echo(randomBinary(16 * MiB), true, 90000, '16 MiB');
    await conn.echo(randomText(16 * MiB), false, 90000, '16 MiB');
  } else if (big === 'low-entropy') {
    await conn.echo(randomLowEntropy(16 * MiB), true, 90000, '16 MiB');
    await conn.echo(randomText(16 * MiB, { hex: true }), false, 90000, '16 MiB');
  }
}

/** A TCP server that answers an upgrade request with whatever respond() writes. */
async function startRawServer(respond) {
  const sockets = new Set();
  const requests = new Queue('raw upgrade request');
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => {});
    socket.on('close', () => sockets.delete(socket));
    const reader = new StreamReader(socket);
    reader.until((buf) => (buf.includes('\r\n\r\n') ? true : undefined), 10000, 'an upgrade request')
      .then(() => {
        const head = buf2head(reader.buf);
        requests.push(head);
        respond(socket, head);
      })
      .catch(() => socket.destroy());
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const close = async () => {
    for (const s of sockets) s.destroy();
    await new Promise((resolve) => server.close(() => resolve()));
  };
  onCleanup(close);
  return { port: server.address().port, requests, close };
}

/** Parses a request head (request line + headers). */
function buf2head(buf) {
  const end = buf.indexOf('\r\n\r\n');
  const lines = buf.subarray(0, end).toString('latin1').split('\r\n');
  const headers = {};
  for (const l of lines.slice(1)) {
    const i = l.indexOf(':');
    headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
  }
  return { requestLine: lines[0], headers };
}

function response101(head, extra = []) {
  const lines = ['HTTP/1.1 101 Switching Protocols', 'Upgrade: websocket', 'Connection: Upgrade',
    `Sec-WebSocket-Accept: ${acceptFor(head.headers['sec-websocket-key'])}`, ...extra];
  return `${lines.join('\r\n')}\r\n\r\n`;
}

describe('parley ws-echo against a ws server', () => {
  let cert;
  let wrongCert;

  before(() => {
    const dir = tempDir();
    cert = makeSelfSignedCert(dir, 'peer');
    wrongCert = makeSelfSignedCert(dir, 'wrong', { cn: 'wrong.example', san: 'DNS:wrong.example' });
  });

  /* If parley cannot do one round trip, cancel everything at once rather
   * than let each test time out in turn. */
  before(async () => {
    try {
      const s = await connectParley({ timeoutMs: 15000 });
      await s.conn.echo('probe', false, 5000);
      await closeAndExpectExit0(s);
      await s.peer.close();
    } catch (err) {
      throw new Error(`parley ws-echo does not even echo one message, so its tests are cancelled: ${err.message}`);
    }
  });

  after(cleanup);

  for (const scheme of ['ws', 'wss']) {
    describe(`${scheme}://`, () => {
      const tls = () => (scheme === 'wss' ? { tlsOpts: cert, args: ['--ca-file', cert.certFile] } : {});
      const withTls = (o) => {
        const t = tls();
        return { ...o, tlsOpts: t.tlsOpts ?? null, args: [...(t.args ?? []), ...(o.args ?? [])] };
      };

      test('deflate offered by parley and accepted: the whole matrix', SLOW, async () => {
        const s = await connectParley(withTls({ wsOpts: { perMessageDeflate: true }, timeoutMs: 200000 }));
        assert.match(s.upgrade.headers['sec-websocket-extensions'] ?? '', /permessage-deflate/, 'parley must offer permessage-deflate');
        assert.equal(s.conn.extensions, 'permessage-deflate');
        await drive(s.conn, { deflate: true, big: 'low-entropy' });
        await closeAndExpectExit0(s);
      });

      test('server without deflate: the whole matrix uncompressed', SLOW, async () => {
        const s = await connectParley(withTls({ wsOpts: { perMessageDeflate: false }, timeoutMs: 200000 }));
        assert.equal(s.conn.extensions, '');
        await drive(s.conn, { big: 'random' });
        await closeAndExpectExit0(s);
      });

      test('parley --no-deflate offers no extension', async () => {
        const s = await connectParley(withTls({ wsOpts: { perMessageDeflate: true }, args: ['--no-deflate'] }));
        assert.equal(s.upgrade.headers['sec-websocket-extensions'], undefined, 'no Sec-WebSocket-Extensions with --no-deflate');
        assert.equal(s.conn.extensions, '');
        await drive(s.conn);
        await closeAndExpectExit0(s);
      });
    });
  }

  describe('permessage-deflate parameters chosen by the server', () => {
    const variants = [
      ['server_no_context_takeover', { serverNoContextTakeover: true }],
      ['client_no_context_takeover', { clientNoContextTakeover: true }],
      ['server_max_window_bits=10', { serverMaxWindowBits: 10 }],
      ['both no_context_takeover and server_max_window_bits=9', { serverNoContextTakeover: true, clientNoContextTakeover: true, serverMaxWindowBits: 9 }],
    ];
    for (const [name, pmd] of variants) {
      test(`${name} is accepted and honoured`, async () => {
        const s = await connectParley({ wsOpts: { perMessageDeflate: { ...pmd, threshold: 0 } } });
        assert.equal(s.conn.extensions, 'permessage-deflate');
        const base = compressibleText(50000);
        for (let i = 0; i < 5; i++) {
          await s.conn.echo(Buffer.concat([base, Buffer.from(` #${i}`)]), false);
          await s.conn.echo(randomBinary(3000), true);
        }
        await s.conn.echo(randomText(100000), false);
        await closeAndExpectExit0(s);
      });
    }

    test('client_max_window_bits=10 is used if parley offered client_max_window_bits', async () => {
      const s = await connectParley({ wsOpts: { perMessageDeflate: { clientMaxWindowBits: 10, threshold: 0 } } });
      const offer = s.upgrade.headers['sec-websocket-extensions'] ?? '';
      /* A server may only set client_max_window_bits if it was offered;
       * ws declines the extension otherwise. */
      if (/client_max_window_bits/.test(offer)) assert.equal(s.conn.extensions, 'permessage-deflate');
      else assert.equal(s.conn.extensions, '');
      for (let i = 0; i < 3; i++) await s.conn.echo(compressibleText(200000), false);
      await s.conn.echo(randomBinary(50000), true);
      await closeAndExpectExit0(s);
    });
  });

  describe('closing handshake started by the server', () => {
    for (const [code, reason] of [[1001, 'going away'], [3000, ''], [4999, 'private ✓'], [4000, 'r'.repeat(123)]]) {
      test(`close ${code} is echoed and parley exits 0`, async () => {
        const s = await connectParley();
        await s.conn.echo('hi', false);
        await closeAndExpectExit0(s, code, reason);
      });
    }

    test('a close without a code is answered (1005) and parley exits 0', async () => {
      const s = await connectParley();
      await s.conn.echo('hi', false);
      const info = await unlessExited(s.run, s.conn.close(undefined, undefined, 10000), 'parley to answer an empty close');
      assert.equal(info.code, 1005);
      assert.equal((await s.run.done).code, 0, s.run.stderr());
    });

    test('TCP dropped without a close frame: parley exits 1', async () => {
      const s = await connectParley();
      await s.conn.echo('hi', false);
      s.conn.ws.terminate();
      await expectExit1(s.run, 'after an abnormal closure');
    });
  });

  describe('handshake request', () => {
    test('--header and --protocol arrive, and the protocol the server selects is accepted', async () => {
      let offered;
      const s = await connectParley({
        wsOpts: {
          handleProtocols: (protocols) => {
            offered = [...protocols];
            return 'chat.v2';
          },
        },
        args: ['--header', 'X-Parley-Test: hello world', '--header', 'X-Second:2', '--protocol', 'chat.v1', '--protocol', 'chat.v2'],
        path: '/some/path?x=1',
      });
      const h = s.upgrade.headers;
      assert.equal(h['x-parley-test'], 'hello world');
      assert.equal(h['x-second'], '2');
      assert.deepEqual(tokens(h['sec-websocket-protocol']), ['chat.v1', 'chat.v2']);
      assert.deepEqual(offered, ['chat.v1', 'chat.v2']);
      assert.equal(s.conn.ws.protocol, 'chat.v2');
      assert.equal(s.upgrade.url, '/some/path?x=1', 'the request target of the URL');
      assert.equal(h.host, `127.0.0.1:${s.peer.port}`, 'Host header');
      assert.equal(h['sec-websocket-version'], '13');
      await s.conn.echo('with a subprotocol', false);
      await closeAndExpectExit0(s);
    });

    test('a subprotocol parley did not ask for is refused: exit 1', async () => {
      const peer = await startPeerServer({ wsOpts: { handleProtocols: () => 'not-offered' } });
      const run = runParley(['ws-echo', `ws://127.0.0.1:${peer.port}/`, '--protocol', 'chat.v1']);
      await expectExit1(run, 'when the server selects a protocol that was not offered');
    });

    test('a subprotocol answered when none was asked for is refused: exit 1', async () => {
      const raw = await startRawServer((socket, head) => socket.write(response101(head, ['Sec-WebSocket-Protocol: surprise'])));
      await expectExit1(runParley(['ws-echo', `ws://127.0.0.1:${raw.port}/`]), 'when the server answers an unrequested subprotocol');
    });
  });

  describe('TLS', () => {
    test('wss://localhost with --ca-file: SNI is sent and the name verifies', async () => {
      const s = await connectParley({ tlsOpts: cert, args: ['--ca-file', cert.certFile], host: 'localhost' });
      assert.equal(s.upgrade.servername, 'localhost', 'SNI server name sent by parley');
      await s.conn.echo('over TLS by name', false);
      await closeAndExpectExit0(s);
    });

    test('wss://127.0.0.1: no SNI for an IP address (RFC 6066), the IP SAN verifies', async () => {
      const s = await connectParley({ tlsOpts: cert, args: ['--ca-file', cert.certFile] });
      assert.ok(!s.upgrade.servername, `parley sent SNI ${JSON.stringify(s.upgrade.servername)} for an IP address`);
      await closeAndExpectExit0(s);
    });

    test('an untrusted certificate (no --ca-file): exit 1, no WebSocket opened', async () => {
      const peer = await startPeerServer({ tlsOpts: cert });
      const run = runParley(['ws-echo', `wss://127.0.0.1:${peer.port}/`]);
      await expectExit1(run, 'against an untrusted certificate');
      assert.equal(peer.conns.length, 0, 'no WebSocket may be opened over an unverified TLS connection');
      assert.equal(peer.upgrades.length, 0, 'no upgrade request may be sent over an unverified TLS connection');
    });

    test('a trusted certificate for another name: exit 1 (hostname check)', async () => {
      const peer = await startPeerServer({ tlsOpts: wrongCert });
      for (const host of ['127.0.0.1', 'localhost']) {
        const run = runParley(['ws-echo', `wss://${host}:${peer.port}/`, '--ca-file', wrongCert.certFile]);
        await expectExit1(run, `against a certificate for wrong.example reached as ${host}`);
      }
      assert.equal(peer.upgrades.length, 0, 'no upgrade request may be sent to a server with the wrong name');
    });

    test('--insecure accepts an untrusted certificate', async () => {
      const s = await connectParley({ tlsOpts: cert, args: ['--insecure'] });
      await s.conn.echo('insecure but working', false);
      await closeAndExpectExit0(s);
    });
  });

  describe('connection and handshake failures', () => {
    test('nothing listening on the port: exit 1', async () => {
      const probe = net.createServer();
      await new Promise((resolve) => probe.listen(0, '127.0.0.1', resolve));
      const { port } = probe.address();
      await new Promise((resolve) => probe.close(resolve));
      await expectExit1(runParley(['ws-echo', `ws://127.0.0.1:${port}/`], { timeoutMs: 30000 }), 'with nothing listening');
    });

    test('an HTTP 200 instead of a 101: exit 1', async () => {
      const raw = await startRawServer((socket) => socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi'));
      await expectExit1(runParley(['ws-echo', `ws://127.0.0.1:${raw.port}/`]), 'after a 200 response');
    });

    test('a 101 with a wrong Sec-WebSocket-Accept: exit 1', async () => {
      const raw = await startRawServer((socket, head) => {
        const bad = { headers: { 'sec-websocket-key': `${head.headers['sec-websocket-key']}x` } };
        socket.write(response101(bad));
      });
      await expectExit1(runParley(['ws-echo', `ws://127.0.0.1:${raw.port}/`]), 'after a wrong Sec-WebSocket-Accept');
      const req = await raw.requests.next(1000);
      assert.match(req.requestLine, /^GET \/ HTTP\/1\.1$/);
      assert.equal(Buffer.from(req.headers['sec-websocket-key'], 'base64').length, 16, 'Sec-WebSocket-Key must be 16 random bytes');
    });

    test('a 101 with permessage-deflate that --no-deflate did not offer: exit 1', async () => {
      const raw = await startRawServer((socket, head) => socket.write(response101(head, ['Sec-WebSocket-Extensions: permessage-deflate'])));
      await expectExit1(runParley(['ws-echo', `ws://127.0.0.1:${raw.port}/`, '--no-deflate']), 'after an unrequested extension');
    });

    test('a 101 with an unknown extension: exit 1', async () => {
      const raw = await startRawServer((socket, head) => socket.write(response101(head, ['Sec-WebSocket-Extensions: x-unknown-ext'])));
      await expectExit1(runParley(['ws-echo', `ws://127.0.0.1:${raw.port}/`]), 'after an unknown extension');
    });

    test('the server closes TCP during the handshake: exit 1', async () => {
      const raw = await startRawServer((socket) => socket.destroy());
      await expectExit1(runParley(['ws-echo', `ws://127.0.0.1:${raw.port}/`]), 'when the handshake is cut');
    });

    test('wss:// to a server that does not speak TLS: exit 1', async () => {
      const probe = net.createServer((s) => setTimeout(() => s.destroy(), 200));
      await new Promise((resolve) => probe.listen(0, '127.0.0.1', resolve));
      onCleanup(() => new Promise((resolve) => probe.close(resolve)));
      await expectExit1(runParley(['ws-echo', `wss://127.0.0.1:${probe.address().port}/`, '--insecure']), 'when TLS cannot start');
    });
  });

  test('several parley clients at once against one server', async () => {
    const peer = await startPeerServer({ wsOpts: { perMessageDeflate: true } });
    const runs = Array.from({ length: 4 }, () => runParley(['ws-echo', `ws://127.0.0.1:${peer.port}/`]));
    const conns = [];
    for (let i = 0; i < runs.length; i++) conns.push(await peer.conns.next(15000, `parley #${i} to connect`));
    await Promise.all(conns.map(async (c, i) => {
      for (let k = 0; k < 50; k++) await c.echo(`client ${i} message ${k}`, false);
      await c.echo(randomBinary(100000), true);
    }));
    await Promise.all(conns.map((c) => c.close(1000, 'done', 10000)));
    for (const r of runs) assert.equal((await withTimeout(r.done, 15000, 'parley to exit')).code, 0, r.stderr());
  });
});
