// parleyd against hand-made bytes on raw TCP sockets: protocol errors must
// fail the connection with the right close code, HTTP errors must get the
// right status, and a well-behaved connection opened before the bad one
// must still be served afterwards.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import zlib from 'node:zlib';
import { after, before, describe, test } from 'node:test';
import { cleanup, compressibleText, MiB, randomBinary, sleep, startParleyd, withTimeout } from './lib/harness.mjs';
import { openClient, probeEcho } from './lib/peer.mjs';
import {
  buildFrame, closePayload, expectCloseThenEof, httpRequest, nextFrame, OP, parseClose, parseHttpHead,
  rawUpgrade, readErrorResponse, tcpConnect, tokens, upgradeHeaders, write,
} from './lib/wire.mjs';

/**
 * Runs `bad` while a ws client connected beforehand watches: it must echo
 * before and after, and close normally.
 */
async function withWitness(server, bad) {
  const w = await openClient(`ws://127.0.0.1:${server.port}/echo`);
  await w.echo('witness before', false);
  await bad();
  assert.ok(server.alive(), `parleyd died${server.stderr()}`);
  await w.echo(randomBinary(3000), true, 10000, 'witness after the bad connection');
  assert.equal((await w.close(1000)).code, 1000);
}

describe('parleyd with malformed input on raw sockets', () => {
  const srv = {};

  before(async () => {
    [srv.main, srv.small, srv.slow, srv.hdr] = await Promise.all([
      startParleyd([]),
      startParleyd(['--max-message', String(MiB)]),
      startParleyd(['--handshake-timeout', '2000']),
      startParleyd(['--max-header-bytes', '2048']),
    ]);
    await Promise.all(Object.values(srv).map((s) => probeEcho(s)));
  });

  after(cleanup);

  describe('the hand-made client itself', () => {
    test('a valid masked text frame is echoed, a masked close is answered', async () => {
      const { socket, reader } = await rawUpgrade(srv.main.port);
      await write(socket, buildFrame({ opcode: OP.TEXT, payload: 'raw hello' }));
      const f = await nextFrame(reader);
      assert.deepEqual({ op: f.opcode, fin: f.fin, masked: f.masked, rsv1: f.rsv1, text: f.payload.toString() },
        { op: OP.TEXT, fin: true, masked: false, rsv1: false, text: 'raw hello' });
      await write(socket, buildFrame({ opcode: OP.CLOSE, payload: closePayload(3001, 'raw bye') }));
      const c = await nextFrame(reader);
      assert.equal(c.opcode, OP.CLOSE);
      assert.deepEqual(parseClose(c.payload), { code: 3001, reason: 'raw bye' });
      await reader.eof(5000, 'parleyd to close TCP after the closing handshake');
    });

    test('valid fragments with a UTF-8 sequence split between them are accepted', async () => {
      const { socket, reader } = await rawUpgrade(srv.main.port);
      const euro = Buffer.from('€'); /* e2 82 ac */
      await write(socket, Buffer.concat([
        buildFrame({ opcode: OP.TEXT, fin: false, payload: Buffer.concat([Buffer.from('price '), euro.subarray(0, 2)]) }),
        buildFrame({ opcode: OP.PING, payload: 'p' }),
        buildFrame({ opcode: OP.CONT, fin: true, payload: Buffer.concat([euro.subarray(2), Buffer.from('5')]) }),
      ]));
      const pong = await nextFrame(reader);
      assert.deepEqual([pong.opcode, pong.payload.toString()], [OP.PONG, 'p']);
      const m = await nextFrame(reader);
      assert.deepEqual([m.opcode, m.payload.toString()], [OP.TEXT, 'price €5']);
      socket.destroy();
    });
  });

  describe('protocol errors fail the connection with a close code', () => {
    const cases = [
      ['an unmasked text frame', 1002, () => buildFrame({ opcode: OP.TEXT, payload: 'no mask', mask: false })],
      ['a text frame with invalid UTF-8', 1007, () => buildFrame({ opcode: OP.TEXT, payload: Buffer.from([0x61, 0xc3, 0x28, 0x62]) })],
      ['a text frame with a UTF-16 surrogate encoded in UTF-8', 1007, () => buildFrame({ opcode: OP.TEXT, payload: Buffer.from([0xed, 0xa0, 0x80]) })],
      ['a text frame ending inside a UTF-8 sequence', 1007, () => buildFrame({ opcode: OP.TEXT, payload: Buffer.from([0x61, 0xe2, 0x82]) })],
      ['reserved opcode 0x3', 1002, () => buildFrame({ opcode: 0x3, payload: 'x' })],
      ['reserved control opcode 0xB', 1002, () => buildFrame({ opcode: 0xb, payload: 'x' })],
      ['RSV2 set', 1002, () => buildFrame({ opcode: OP.TEXT, rsv2: true, payload: 'x' })],
      ['RSV3 set', 1002, () => buildFrame({ opcode: OP.TEXT, rsv3: true, payload: 'x' })],
      ['RSV1 without permessage-deflate negotiated', 1002, () => buildFrame({ opcode: OP.TEXT, rsv1: true, payload: 'x' })],
      ['a fragmented message whose invalid UTF-8 is split across fragments', 1007, () => Buffer.concat([
        buildFrame({ opcode: OP.TEXT, fin: false, payload: Buffer.from([0x61, 0x62, 0xe2, 0x82]) }),
        buildFrame({ opcode: OP.CONT, fin: true, payload: Buffer.from([0x28, 0x63]) }),
      ])],
      /* The following are MUSTs of RFC 6455 beyond the list in the brief. */
      ['a continuation frame with no message started', 1002, () => buildFrame({ opcode: OP.CONT, payload: 'x' })],
      ['a new text frame while a fragmented message is open', 1002, () => Buffer.concat([
        buildFrame({ opcode: OP.TEXT, fin: false, payload: 'a' }),
        buildFrame({ opcode: OP.TEXT, fin: true, payload: 'b' }),
      ])],
      ['a fragmented ping', 1002, () => buildFrame({ opcode: OP.PING, fin: false, payload: 'x' })],
      ['a ping with a 126-byte payload', 1002, () => buildFrame({ opcode: OP.PING, payload: Buffer.alloc(126, 0x61) })],
      ['a close frame with a 1-byte payload', 1002, () => buildFrame({ opcode: OP.CLOSE, payload: Buffer.from([0x03]) })],
      ['a close frame with code 1005 (never sent on the wire)', 1002, () => buildFrame({ opcode: OP.CLOSE, payload: closePayload(1005) })],
      ['a close frame with code 999', 1002, () => buildFrame({ opcode: OP.CLOSE, payload: closePayload(999) })],
      ['a close frame with code 5000', 1002, () => buildFrame({ opcode: OP.CLOSE, payload: closePayload(5000) })],
      ['a close frame whose reason is invalid UTF-8', 1007, () => buildFrame({ opcode: OP.CLOSE, payload: Buffer.concat([closePayload(1000), Buffer.from([0xff])]) })],
    ];
    for (const [what, code, bytes] of cases) {
      test(`${what} -> ${code}`, async () => {
        await withWitness(srv.main, async () => {
          const { socket, reader } = await rawUpgrade(srv.main.port);
          await write(socket, bytes());
          await expectCloseThenEof(reader, code);
        });
      });
    }

    test('a close frame right after valid fragments -> the fragments are not echoed as a message', async () => {
      await withWitness(srv.main, async () => {
        const { socket, reader } = await rawUpgrade(srv.main.port);
        await write(socket, Buffer.concat([
          buildFrame({ opcode: OP.TEXT, fin: false, payload: 'unfinished' }),
          buildFrame({ opcode: OP.CLOSE, payload: closePayload(1000) }),
        ]));
        const f = await nextFrame(reader);
        assert.equal(f.opcode, OP.CLOSE, 'an unfinished message must not be echoed');
        assert.equal(parseClose(f.payload).code, 1000);
        await reader.eof();
      });
    });
  });

  describe('permessage-deflate on raw sockets', () => {
    const SYNC = { finishFlush: zlib.constants.Z_SYNC_FLUSH };
    /* RFC 7692 7.2.1: sync-flush, then drop the trailing 00 00 ff ff. */
    const compress = (data) => {
      const out = zlib.deflateRawSync(Buffer.from(data), SYNC);
      assert.deepEqual([...out.subarray(-4)], [0, 0, 0xff, 0xff]);
      return out.subarray(0, -4);
    };
    /* RFC 7692 7.2.3.4: a final (BFINAL) block, then an empty stored block
     * minus its last 4 bytes, i.e. one 0x00. */
    const compressFinal = (data) => Buffer.concat([zlib.deflateRawSync(Buffer.from(data)), Buffer.from([0])]);
    const inflate = (payload) => zlib.inflateRawSync(Buffer.concat([payload, Buffer.from([0, 0, 0xff, 0xff])]), SYNC);

    /* server_no_context_takeover makes every server message inflatable on
     * its own, so the test needs no persistent inflater. */
    async function deflateUpgrade(server = srv.main) {
      const r = await rawUpgrade(server.port, { extraHeaders: [['Sec-WebSocket-Extensions', 'permessage-deflate; server_no_context_takeover']] });
      const ext = r.head.headers['sec-websocket-extensions'] ?? '';
      assert.match(ext, /^permessage-deflate\b/, `Sec-WebSocket-Extensions of the 101: ${JSON.stringify(ext)}`);
      assert.match(ext, /server_no_context_takeover/, 'a server accepting server_no_context_takeover must confirm it');
      return r;
    }

    /** Reads one whole server message (any fragments) and inflates it. */
    async function readMessage(reader) {
      const first = await nextFrame(reader);
      assert.ok(first.opcode === OP.TEXT || first.opcode === OP.BINARY, `expected a data frame, got opcode ${first.opcode}`);
      const parts = [first.payload];
      let f = first;
      while (!f.fin) {
        f = await nextFrame(reader);
        assert.equal(f.opcode, OP.CONT);
        assert.equal(f.rsv1, false, 'RSV1 is only set on the first frame of a message');
        parts.push(f.payload);
      }
      const payload = Buffer.concat(parts);
      return { opcode: first.opcode, data: first.rsv1 ? inflate(payload) : payload };
    }

    test('a compressed text frame is inflated and echoed', async () => {
      const { socket, reader } = await deflateUpgrade();
      const text = compressibleText(20000);
      await write(socket, buildFrame({ opcode: OP.TEXT, rsv1: true, payload: compress(text) }));
      const m = await readMessage(reader);
      assert.equal(m.opcode, OP.TEXT);
      assert.ok(m.data.equals(text), 'echo of the compressed text');
      socket.destroy();
    });

    test('a compressed message in 3 fragments (RSV1 on the first only) and an uncompressed one', async () => {
      const { socket, reader } = await deflateUpgrade();
      const data = Buffer.concat([compressibleText(5000), randomBinary(3000)]);
      const z = compress(data);
      const a = Math.floor(z.length / 3);
      await write(socket, Buffer.concat([
        buildFrame({ opcode: OP.BINARY, rsv1: true, fin: false, payload: z.subarray(0, a) }),
        buildFrame({ opcode: OP.CONT, fin: false, payload: z.subarray(a, 2 * a) }),
        buildFrame({ opcode: OP.PING, payload: 'p' }),
        buildFrame({ opcode: OP.CONT, fin: true, payload: z.subarray(2 * a) }),
        buildFrame({ opcode: OP.TEXT, payload: 'not compressed' }),
      ]));
      const pong = await nextFrame(reader);
      assert.equal(pong.opcode, OP.PONG);
      const m1 = await readMessage(reader);
      assert.equal(m1.opcode, OP.BINARY);
      assert.ok(m1.data.equals(data), 'echo of the fragmented compressed message');
      const m2 = await readMessage(reader);
      assert.equal(m2.data.toString(), 'not compressed');
      socket.destroy();
    });

    test('a message ending in a BFINAL block (RFC 7692 7.2.3.4), then a sync-flushed one', async () => {
      const { socket, reader } = await deflateUpgrade();
      await write(socket, buildFrame({ opcode: OP.TEXT, rsv1: true, payload: compressFinal('final block') }));
      await write(socket, buildFrame({ opcode: OP.TEXT, rsv1: true, payload: compress('after the final block') }));
      assert.equal((await readMessage(reader)).data.toString(), 'final block');
      assert.equal((await readMessage(reader)).data.toString(), 'after the final block');
      socket.destroy();
    });

    const bad = [
      ['RSV1 on a continuation frame', [1002], () => Buffer.concat([
        buildFrame({ opcode: OP.TEXT, rsv1: true, fin: false, payload: compress('abc').subarray(0, 2) }),
        buildFrame({ opcode: OP.CONT, rsv1: true, fin: true, payload: compress('abc').subarray(2) }),
      ])],
      ['RSV1 on a ping', [1002], () => buildFrame({ opcode: OP.PING, rsv1: true, payload: 'x' })],
      ['compressed text that inflates to invalid UTF-8', [1007], () => buildFrame({ opcode: OP.TEXT, rsv1: true, payload: compress(Buffer.from([0x61, 0xff, 0x62])) })],
      /* The contract names no code for undecodable DEFLATE data: 1007
       * (data inconsistent with the message type) or 1002 both fit. */
      ['corrupt DEFLATE data', [1007, 1002], () => buildFrame({ opcode: OP.BINARY, rsv1: true, payload: Buffer.from([0xff, 0xff, 0xff, 0xff, 0x00]) })],
    ];
    for (const [what, codes, bytes] of bad) {
      test(`${what} -> ${codes.join(' or ')}`, async () => {
        await withWitness(srv.main, async () => {
          const { socket, reader } = await deflateUpgrade();
          await write(socket, bytes());
          const f = await nextFrame(reader, 5000, 'a close frame');
          assert.equal(f.opcode, OP.CLOSE, `expected a close frame, got opcode ${f.opcode}`);
          const { code } = parseClose(f.payload);
          assert.ok(codes.includes(code), `close code ${code}, expected ${codes.join(' or ')}`);
          await reader.eof();
        });
      });
    }

    test('--max-message 1048576: 2 MiB of zeros deflated to a few KiB -> 1009', async () => {
      await withWitness(srv.small, async () => {
        const { socket, reader } = await deflateUpgrade(srv.small);
        const z = compress(Buffer.alloc(2 * MiB));
        assert.ok(z.length < 10000);
        await write(socket, buildFrame({ opcode: OP.BINARY, rsv1: true, payload: z }));
        await expectCloseThenEof(reader, 1009);
      });
    });
  });

  describe('limits are enforced from the frame header', () => {
    test('--max-message 1048576: a header announcing 2 MiB -> 1009 before any payload is sent', async () => {
      await withWitness(srv.small, async () => {
        const { socket, reader } = await rawUpgrade(srv.small.port);
        const frame = buildFrame({ opcode: OP.BINARY, length: 2 * MiB });
        assert.equal(frame.length, 14, 'header only: 2 + 8 length bytes + 4 mask bytes');
        await write(socket, frame);
        await expectCloseThenEof(reader, 1009);
      });
    });

    test('--max-message 1048576: a second fragment pushing the message over 1 MiB -> 1009 from its header', async () => {
      await withWitness(srv.small, async () => {
        const { socket, reader } = await rawUpgrade(srv.small.port);
        await write(socket, buildFrame({ opcode: OP.BINARY, fin: false, payload: randomBytes(600000) }));
        await write(socket, buildFrame({ opcode: OP.CONT, fin: true, length: 600000 }));
        await expectCloseThenEof(reader, 1009);
      });
    });

    test('default limit: a header announcing 16 MiB + 1 -> 1009 before any payload is sent', async () => {
      await withWitness(srv.main, async () => {
        const { socket, reader } = await rawUpgrade(srv.main.port);
        await write(socket, buildFrame({ opcode: OP.BINARY, length: 16 * MiB + 1 }));
        await expectCloseThenEof(reader, 1009);
      });
    });

    test('a header announcing 2^63 - 1 bytes -> 1009', async () => {
      await withWitness(srv.main, async () => {
        const { socket, reader } = await rawUpgrade(srv.main.port);
        const frame = buildFrame({ opcode: OP.BINARY, length: 70000 });
        frame.writeBigUInt64BE(2n ** 63n - 1n, 2);
        await write(socket, frame);
        await expectCloseThenEof(reader, 1009);
      });
    });
  });

  describe('HTTP errors', () => {
    /** Sends request to parleyd and returns its error response. */
    async function httpError(request) {
      const { socket, reader } = await tcpConnect(srv.main.port);
      await write(socket, request);
      return readErrorResponse(reader);
    }

    test('a header block over 8192 bytes -> 431', async () => {
      await withWitness(srv.main, async () => {
        const h = upgradeHeaders(srv.main.port);
        h.set('X-Padding', 'p'.repeat(9000));
        const res = await httpError(httpRequest('GET', '/echo', h));
        assert.equal(res.status, 431, res.statusLine);
      });
    });

    test('a header block over 8192 bytes made of many small headers -> 431', async () => {
      await withWitness(srv.main, async () => {
        const h = upgradeHeaders(srv.main.port);
        for (let i = 0; i < 400; i++) h.set(`X-Pad-${i}`, 'abcdefghijklmnop');
        const res = await httpError(httpRequest('GET', '/echo', h));
        assert.equal(res.status, 431, res.statusLine);
      });
    });

    test('a header block of about 7000 bytes is still accepted', async () => {
      await withWitness(srv.main, async () => {
        const { socket, reader } = await rawUpgrade(srv.main.port, { extraHeaders: [['X-Padding', 'p'.repeat(6800)]] });
        await write(socket, buildFrame({ opcode: OP.TEXT, payload: 'big headers ok' }));
        assert.equal((await nextFrame(reader)).payload.toString(), 'big headers ok');
        socket.destroy();
      });
    });

    test('--max-header-bytes 2048: 3000 bytes of headers -> 431, 1500 bytes pass', async () => {
      await withWitness(srv.hdr, async () => {
        const { socket: s1, reader } = await tcpConnect(srv.hdr.port);
        const h = upgradeHeaders(srv.hdr.port);
        h.set('X-Padding', 'p'.repeat(3000));
        await write(s1, httpRequest('GET', '/echo', h));
        const res = await readErrorResponse(reader);
        assert.equal(res.status, 431, res.statusLine);
        const ok = await rawUpgrade(srv.hdr.port, { extraHeaders: [['X-Padding', 'p'.repeat(1500)]] });
        ok.socket.destroy();
      });
    });

    test('a plain GET (no upgrade) of a path with no route -> 404', async () => {
      await withWitness(srv.main, async () => {
        const res = await httpError(httpRequest('GET', '/nothing/here', new Map([['Host', `127.0.0.1:${srv.main.port}`]])));
        assert.equal(res.status, 404, res.statusLine);
      });
    });

    test('Sec-WebSocket-Version: 12 -> 426 with Sec-WebSocket-Version: 13', async () => {
      await withWitness(srv.main, async () => {
        const h = upgradeHeaders(srv.main.port);
        h.set('Sec-WebSocket-Version', '12');
        const res = await httpError(httpRequest('GET', '/echo', h));
        assert.equal(res.status, 426, res.statusLine);
        assert.ok(tokens(res.headers['sec-websocket-version']).includes('13'),
          `Sec-WebSocket-Version of the 426: ${res.headers['sec-websocket-version']}`);
      });
    });

    const badKeys = [
      ['not base64 of 16 bytes', 'abc'],
      ['base64 of 15 bytes', randomBytes(15).toString('base64')],
      ['base64 of 17 bytes', randomBytes(17).toString('base64')],
      ['24 characters that are not base64', '!!!!!!!!!!!!!!!!!!!!!!=='],
      ['missing', undefined],
    ];
    for (const [what, key] of badKeys) {
      test(`Sec-WebSocket-Key ${what} -> 400`, async () => {
        await withWitness(srv.main, async () => {
          const h = upgradeHeaders(srv.main.port);
          h.set('Sec-WebSocket-Key', key);
          const res = await httpError(httpRequest('GET', '/echo', h));
          assert.equal(res.status, 400, res.statusLine);
        });
      });
    }

    const post = () => {
      const h = upgradeHeaders(srv.main.port);
      h.set('Content-Length', '0');
      return httpError(httpRequest('POST', '/echo', h));
    };

    test('POST on the ws path -> 405', async () => {
      await withWitness(srv.main, async () => {
        const res = await post();
        assert.equal(res.status, 405, res.statusLine);
      });
    });

    /* Beyond the contract: RFC 9110 15.5.6 says a 405 MUST list the
     * allowed methods. */
    test('the 405 has an Allow header listing GET', async () => {
      const res = await post();
      assert.equal(res.status, 405, res.statusLine);
      assert.ok(tokens(res.headers.allow).includes('get'), `Allow header of the 405: ${res.headers.allow}`);
    });

    test('a path with no route -> 404', async () => {
      await withWitness(srv.main, async () => {
        const res = await httpError(httpRequest('GET', '/no-such-path', upgradeHeaders(srv.main.port)));
        assert.equal(res.status, 404, res.statusLine);
      });
    });

    test('a handshake sent one byte per second is cut off by --handshake-timeout 2000, without a 101', { timeout: 30000 }, async () => {
      await withWitness(srv.slow, async () => {
        const { socket, reader } = await tcpConnect(srv.slow.port);
        const request = Buffer.from(httpRequest('GET', '/echo', upgradeHeaders(srv.slow.port)));
        let sent = 0;
        const dribble = setInterval(() => {
          if (sent < request.length && !socket.destroyed) socket.write(request.subarray(sent, ++sent));
        }, 1000);
        socket.write(request.subarray(0, ++sent));
        try {
          await withTimeout(new Promise((resolve) => {
            const check = () => (reader.ended ? resolve() : setTimeout(check, 20));
            check();
          }), 10000, 'parleyd to close a connection whose handshake is too slow');
        } finally {
          clearInterval(dribble);
        }
        const elapsed = reader.endedAt - socket.connectedAt;
        assert.ok(elapsed >= 1500 && elapsed <= 6000, `closed ${elapsed} ms after connect, expected 1500..6000 ms`);
        const head = reader.buf.length ? parseHttpHead(reader.buf) : null;
        assert.notEqual(head?.status, 101, 'must not upgrade a connection whose handshake timed out');
        assert.ok(sent < request.length, 'the request must not have been complete');
      });
    });

    test('--handshake-timeout does not cut a connection that completed its upgrade', { timeout: 30000 }, async () => {
      const c = await openClient(`ws://127.0.0.1:${srv.slow.port}/echo`);
      await sleep(3000);
      await c.echo('still open after the handshake timeout', false);
      assert.equal((await c.close(1000)).code, 1000);
    });
  });

  test('every parleyd of this file is still alive and exits 0 on SIGTERM', async () => {
    for (const [name, s] of Object.entries(srv)) {
      assert.ok(s.alive(), `parleyd (${name}) died during the tests${s.stderr()}`);
      assert.deepEqual(await s.stop(), { code: 0, signal: null }, `parleyd (${name}) exit status${s.stderr()}`);
    }
  });
});
