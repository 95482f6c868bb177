// parleyd --ws-echo against the npm `ws` client: message types and sizes,
// fragmentation, ping/pong, closing handshake, permessage-deflate
// negotiation and limits, over ws:// and wss://.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  cleanup, compressibleText, makeSelfSignedCert, MiB, randomBinary, randomLowEntropy, randomText,
  sleep, startParleyd, tempDir, withTimeout,
} from './lib/harness.mjs';
import { openClient, probeEcho } from './lib/peer.mjs';

const SLOW = { timeout: 180000 };

/** Parses a Sec-WebSocket-Extensions value into [{ name, params }]. */
function parseExtensions(value) {
  if (!value) return [];
  return value.split(',').map((ext) => {
    const [name, ...rest] = ext.split(';').map((s) => s.trim());
    const params = {};
    for (const p of rest) {
      const [k, v] = p.split('=').map((s) => s.trim());
      params[k.toLowerCase()] = v === undefined ? true : v.replace(/^"(.*)"$/, '$1');
    }
    return { name: name.toLowerCase(), params };
  });
}

function assertDeflate(conn, negotiated) {
  const exts = parseExtensions(conn.extensions);
  if (!negotiated) {
    assert.deepEqual(exts, [], `no extension expected, server answered ${JSON.stringify(conn.extensions)}`);
    return null;
  }
  assert.equal(exts.length, 1, `one extension expected, server answered ${JSON.stringify(conn.extensions)}`);
  assert.equal(exts[0].name, 'permessage-deflate');
  return exts[0].params;
}

describe('parleyd --ws-echo with the ws client', () => {
  const srv = {};
  let cert;

  before(async () => {
    cert = makeSelfSignedCert(tempDir(), 'server');
    const tlsArgs = ['--tls-cert', cert.certFile, '--tls-key', cert.keyFile];
    [srv.ws, srv.wss, srv.wsNoDeflate, srv.wssNoDeflate] = await Promise.all([
      startParleyd([]),
      startParleyd(tlsArgs),
      startParleyd(['--no-deflate']),
      startParleyd([...tlsArgs, '--no-deflate']),
    ]);
    await Promise.all([
      probeEcho(srv.ws),
      probeEcho(srv.wss, { scheme: 'wss', ca: cert.cert }),
      probeEcho(srv.wsNoDeflate),
      probeEcho(srv.wssNoDeflate, { scheme: 'wss', ca: cert.cert }),
    ]);
  });

  after(cleanup);

  for (const scheme of ['ws', 'wss']) {
    /* server: 'default' (deflate offered) or 'noDeflate'. */
    const open = ({ server = 'default', ...opts } = {}) => {
      const s = srv[scheme + (server === 'noDeflate' ? 'NoDeflate' : '')];
      return openClient(`${scheme}://127.0.0.1:${s.port}/echo`, { ca: scheme === 'wss' ? cert.cert : undefined, ...opts });
    };

    describe(`${scheme}://`, () => {
      for (const deflate of [true, false]) {
        describe(deflate ? 'permessage-deflate negotiated' : 'permessage-deflate not offered', () => {
          const openD = async () => {
            const c = await open({ perMessageDeflate: deflate });
            assertDeflate(c, deflate);
            return c;
          };

          test('text and binary messages keep their type and bytes', async () => {
            const c = await openD();
            await c.echo('hello', false);
            await c.echo('héllo wörld ✓ € 𝄞 🎉', false, undefined, 'multi-byte UTF-8');
            await c.echo(randomBinary(1000), true);
            await c.echo(Buffer.from('binary that looks like text'), true);
            await c.echo(Buffer.from([0xff, 0xfe, 0x00, 0xc3]), true, undefined, 'invalid UTF-8 is fine in binary');
            assert.deepEqual(await c.close(1000), { code: 1000, reason: '' });
          });

          test('empty text and empty binary messages', async () => {
            const c = await openD();
            await c.echo(Buffer.alloc(0), false);
            await c.echo(Buffer.alloc(0), true);
            await c.echo('after empty', false);
            assert.equal((await c.close(1000)).code, 1000);
          });

          /* The payload lengths around the 7-bit, 16-bit and 64-bit
           * length encodings. */
          for (const size of [125, 126, 127, 65535, 65536]) {
            test(`${size}-byte random binary and text messages`, async () => {
              const c = await openD();
              await c.echo(randomBinary(size), true);
              await c.echo(randomText(size), false);
              assert.equal((await c.close(1000)).code, 1000);
            });
          }

          test('1000 pipelined messages come back in order', async () => {
            const c = await openD();
            const sent = [];
            for (let i = 0; i < 1000; i++) {
              const binary = i % 3 === 0;
              const m = binary ? randomBinary(i % 200) : Buffer.from(`message ${i} ${'x'.repeat(i % 97)}`);
              sent.push({ m, binary });
              c.ws.send(m, { binary });
            }
            for (const [i, { m, binary }] of sent.entries()) await c.expectMessage(m, binary, 10000, `message #${i}`);
            assert.equal((await c.close(1000)).code, 1000);
          });

          test('fragmented text split inside a UTF-8 sequence, with a ping between fragments, comes back whole', async () => {
            const c = await openD();
            const whole = Buffer.from('frag ✓ mented 🎉 text');
            /* Cut inside both multi-byte characters. */
            const cut1 = whole.indexOf(Buffer.from('✓')) + 1;
            const cut2 = whole.indexOf(Buffer.from('🎉')) + 2;
            await c.send(whole.subarray(0, cut1), { binary: false, fin: false });
            c.ws.ping(Buffer.from('between fragments'));
            await c.send(whole.subarray(cut1, cut2), { binary: false, fin: false });
            await c.send(whole.subarray(cut2), { binary: false, fin: true });
            const pong = await c.pongs.next(5000, 'the pong of the ping sent between fragments');
            assert.equal(pong.toString(), 'between fragments');
            await c.expectMessage(whole, false);
            await c.echo('next message', false);
            assert.equal((await c.close(1000)).code, 1000);
          });

          test('fragmented binary (big fragments, an empty one, a ping between) comes back whole', async () => {
            const c = await openD();
            const parts = [randomBinary(20000), randomBinary(1), Buffer.alloc(0), randomBinary(70000)];
            for (const [i, p] of parts.entries()) {
              await c.send(p, { binary: true, fin: i === parts.length - 1 });
              if (i === 1) c.ws.ping(Buffer.from([1, 2, 3]));
            }
            assert.deepEqual([...(await c.pongs.next(5000, 'the pong of the ping between fragments'))], [1, 2, 3]);
            await c.expectMessage(Buffer.concat(parts), true);
            assert.equal((await c.close(1000)).code, 1000);
          });

          test('fragmented compressible text of 300 KiB in 3 fragments', async () => {
            const c = await openD();
            const whole = compressibleText(300 * 1024);
            const k = 100 * 1024;
            await c.send(whole.subarray(0, k), { binary: false, fin: false });
            await c.send(whole.subarray(k, 2 * k), { binary: false, fin: false });
            await c.send(whole.subarray(2 * k), { binary: false, fin: true });
            await c.expectMessage(whole, false);
            assert.equal((await c.close(1000)).code, 1000);
          });

          test('pings are answered with pongs carrying the same payload', async () => {
            const c = await openD();
            await c.ping(Buffer.alloc(0));
            await c.ping('x');
            await c.ping(randomBinary(125));
            /* A ping must not disturb messages around it. */
            c.ws.send('before');
            c.ws.ping('mid');
            c.ws.send('after');
            await c.expectMessage(Buffer.from('before'), false);
            await c.expectMessage(Buffer.from('after'), false);
            assert.equal((await c.pongs.next(5000)).toString(), 'mid');
            assert.equal((await c.close(1000)).code, 1000);
          });
        });
      }

      describe('closing handshake', () => {
        const cases = [
          [1000, 'normal'],
          [1001, 'going away'],
          [3000, 'registered'],
          [4999, 'private use: ✓'],
          [4000, 'r'.repeat(123)], /* the longest reason a control frame allows */
          [1000, ''],
        ];
        for (const [code, reason] of cases) {
          test(`close ${code} with a ${Buffer.byteLength(reason)}-byte reason is echoed`, async () => {
            const c = await open();
            await c.echo('hi', false);
            assert.deepEqual(await c.close(code, reason), { code, reason });
          });
        }

        test('a close without a code is answered by an empty close (1005)', async () => {
          const c = await open();
          assert.deepEqual(await c.close(), { code: 1005, reason: '' });
        });

        test('close right after a message still delivers the echo first', async () => {
          const c = await open();
          c.ws.send('last words');
          c.ws.close(1000, 'done');
          await c.expectMessage(Buffer.from('last words'), false);
          assert.deepEqual(await c.waitClosed(), { code: 1000, reason: 'done' });
        });
      });

      describe('16 MiB messages (the default limit is inclusive)', () => {
        const size = 16 * MiB;
        test('random binary and random UTF-8 text, deflate not offered', SLOW, async () => {
          const c = await open({ perMessageDeflate: false });
          await c.echo(randomBinary(size), true, 90000);
          await c.echo(randomText(size), false, 90000);
          assert.equal((await c.close(1000)).code, 1000);
        });

        /* Full-entropy data grows when deflated, so its frame would exceed
         * the 16 MiB frame limit; half-entropy data keeps it under. */
        test('random low-entropy binary and hex text over permessage-deflate', SLOW, async () => {
          const c = await open();
          assertDeflate(c, true);
          await c.echo(randomLowEntropy(size), true, 90000);
          await c.echo(randomText(size, { hex: true }), false, 90000);
          assert.equal((await c.close(1000)).code, 1000);
        });
      });

      describe('permessage-deflate negotiation', () => {
        test('offered by the client and accepted by default', async () => {
          const c = await open();
          assertDeflate(c, true);
          assert.equal((await c.close(1000)).code, 1000);
        });

        test('not negotiated with parleyd --no-deflate', async () => {
          const c = await open({ server: 'noDeflate' });
          assertDeflate(c, false);
          await c.echo(compressibleText(100000), false);
          assert.equal((await c.close(1000)).code, 1000);
        });

        test('not negotiated when the client does not offer it', async () => {
          const c = await open({ perMessageDeflate: false });
          assertDeflate(c, false);
          assert.equal((await c.close(1000)).code, 1000);
        });

        test('1 MiB of compressible text travels compressed both ways', async () => {
          const c = await open();
          assertDeflate(c, true);
          const text = compressibleText(MiB);
          const read0 = c.socket.bytesRead;
          const written0 = c.socket.bytesWritten;
          await c.echo(text, false, 30000);
          const read = c.socket.bytesRead - read0;
          const written = c.socket.bytesWritten - written0;
          assert.ok(written < MiB / 10, `the ws client sent ${written} bytes for 1 MiB of compressible text`);
          assert.ok(read < MiB / 10, `parleyd sent ${read} bytes for the echo of 1 MiB of compressible text: it did not compress`);
          assert.equal((await c.close(1000)).code, 1000);
        });

        test('incompressible 64 KiB binary', async () => {
          const c = await open();
          assertDeflate(c, true);
          for (let i = 0; i < 3; i++) await c.echo(randomBinary(64 * 1024), true);
          assert.equal((await c.close(1000)).code, 1000);
        });

        const variants = [
          ['serverNoContextTakeover', { serverNoContextTakeover: true }, (p) => {
            /* RFC 7692 7.1.1.1: a server accepting this offer includes it. */
            assert.equal(p.server_no_context_takeover, true, 'server_no_context_takeover must be in the response');
          }],
          ['clientNoContextTakeover', { clientNoContextTakeover: true }, () => {}],
          ['clientMaxWindowBits: 10', { clientMaxWindowBits: 10 }, (p) => {
            if (p.client_max_window_bits !== undefined) {
              const bits = Number(p.client_max_window_bits);
              assert.ok(bits >= 8 && bits <= 10, `client_max_window_bits=${p.client_max_window_bits} must be 8..10`);
            }
          }],
          ['serverMaxWindowBits: 10', { serverMaxWindowBits: 10 }, (p) => {
            /* RFC 7692 7.1.2.1: the response must include it, <= the offer. */
            const bits = Number(p.server_max_window_bits);
            assert.ok(bits >= 8 && bits <= 10, `server_max_window_bits must be in the response and 8..10, got ${p.server_max_window_bits}`);
          }],
        ];
        for (const [name, pmd, check] of variants) {
          test(`${name}: negotiated, and repeated similar messages round-trip`, async () => {
            const c = await open({ perMessageDeflate: pmd });
            check(assertDeflate(c, true));
            /* Similar messages exercise (or not) the shared LZ77 window. */
            const base = compressibleText(50000);
            for (let i = 0; i < 5; i++) {
              const m = Buffer.concat([base, Buffer.from(` #${i}`)]);
              await c.echo(m, false);
              await c.echo(randomBinary(5000), true);
            }
            await c.echo(randomText(100000), false);
            assert.equal((await c.close(1000)).code, 1000);
          });
        }
      });

      if (scheme === 'wss') {
        describe('TLS', () => {
          test('the certificate verifies for the IP address 127.0.0.1', async () => {
            const c = await open({ perMessageDeflate: false });
            assert.equal(c.socket.authorized, true, `TLS peer not authorized: ${c.socket.authorizationError}`);
            await c.echo('over TLS', false);
            assert.equal((await c.close(1000)).code, 1000);
          });

          test('the certificate verifies for the name localhost (SNI)', async () => {
            const c = await open({ servername: 'localhost' });
            assert.equal(c.socket.authorized, true);
            await c.echo('over TLS with SNI', false);
            assert.equal((await c.close(1000)).code, 1000);
          });

          test('a client that does not trust the certificate is refused (TLS is really on)', async () => {
            await assert.rejects(
              openClient(`wss://127.0.0.1:${srv.wss.port}/echo`, {}),
              /self[- ]signed|unable to verify|certificate/i,
            );
          });
        });
      }
    });
  }

  describe('limits', () => {
    const lim = {};
    before(async () => {
      [lim.message, lim.frame] = await Promise.all([
        startParleyd(['--max-message', String(MiB)]),
        startParleyd(['--max-message', String(MiB), '--max-frame', '65536', '--no-deflate']),
      ]);
    });

    const url = (s) => `ws://127.0.0.1:${s.port}/echo`;

    test('--max-message 1048576: a 1 MiB message is accepted (inclusive)', async () => {
      const c = await openClient(url(lim.message), { perMessageDeflate: false });
      await c.echo(randomBinary(MiB), true, 30000);
      await c.echo(randomText(MiB), false, 30000);
      assert.equal((await c.close(1000)).code, 1000);
    });

    test('--max-message 1048576: a 1 MiB + 1 byte message is refused with 1009', async () => {
      const c = await openClient(url(lim.message), { perMessageDeflate: false });
      await c.echo('ok', false);
      c.ws.send(randomBinary(MiB + 1));
      assert.equal((await c.waitClosed(10000, 'parleyd to close with 1009')).code, 1009);
    });

    test('--max-message 1048576: the limit applies to the inflated size of a deflated message', async () => {
      const c = await openClient(url(lim.message));
      assertDeflate(c, true);
      await c.echo(compressibleText(MiB), false, 30000, 'exactly 1 MiB once inflated');
      const written0 = c.socket.bytesWritten;
      c.ws.send(compressibleText(MiB + 1));
      assert.equal((await c.waitClosed(10000, 'parleyd to close with 1009')).code, 1009);
      assert.ok(c.socket.bytesWritten - written0 < 100000, 'the oversized message was sent compressed');
    });

    test('--max-message 1048576: a message over the limit in fragments is refused with 1009', async () => {
      const c = await openClient(url(lim.message), { perMessageDeflate: false });
      for (let i = 0; i < 16; i++) await c.send(randomBinary(65536), { binary: true, fin: false });
      c.ws.send(randomBinary(1), { binary: true, fin: true });
      assert.equal((await c.waitClosed(10000, 'parleyd to close with 1009')).code, 1009);
    });

    test('--max-frame 65536: a 65536-byte frame is accepted, fragments add up beyond it', async () => {
      const c = await openClient(url(lim.frame), { perMessageDeflate: false });
      await c.echo(randomBinary(65536), true);
      const parts = [randomBinary(60000), randomBinary(65536), randomBinary(60000), randomBinary(1000)];
      for (const [i, p] of parts.entries()) await c.send(p, { binary: true, fin: i === parts.length - 1 });
      await c.expectMessage(Buffer.concat(parts), true);
      assert.equal((await c.close(1000)).code, 1000);
    });

    test('--max-frame 65536: a 65537-byte frame is refused with 1009', async () => {
      const c = await openClient(url(lim.frame), { perMessageDeflate: false });
      c.ws.send(randomBinary(65537));
      assert.equal((await c.waitClosed(10000, 'parleyd to close with 1009')).code, 1009);
    });

    test('limits leave other connections alone', async () => {
      const keep = await openClient(url(lim.message), { perMessageDeflate: false });
      const bad = await openClient(url(lim.message), { perMessageDeflate: false });
      bad.ws.send(randomBinary(MiB + 100));
      assert.equal((await bad.waitClosed(10000)).code, 1009);
      await keep.echo(randomBinary(1000), true);
      assert.equal((await keep.close(1000)).code, 1000);
    });
  });

  describe('keepalive', () => {
    test('--ping-interval 200: the server pings, the ws client pongs, the connection stays up', async () => {
      const s = await startParleyd(['--ping-interval', '200', '--ping-timeout', '1000']);
      const c = await openClient(`ws://127.0.0.1:${s.port}/echo`);
      await c.pings.next(3000, 'the first keepalive ping');
      await c.pings.next(3000, 'the second keepalive ping');
      await sleep(1500);
      assert.equal(c.closeInfo, null, 'the connection must stay open while pongs are answered');
      await c.echo('still here', false);
      assert.equal((await c.close(1000)).code, 1000);
      assert.deepEqual(await s.stop(), { code: 0, signal: null }, s.stderr());
    });

    test('--ping-timeout: a client that never answers pings is disconnected', async () => {
      const s = await startParleyd(['--ping-interval', '200', '--ping-timeout', '400']);
      const c = await openClient(`ws://127.0.0.1:${s.port}/echo`, { autoPong: false });
      await c.pings.next(3000, 'a keepalive ping');
      const info = await c.waitClosed(8000, 'parleyd to drop a client that does not answer pings');
      assert.notEqual(info.code, 1000, 'a timed-out connection is not a normal closure');
      assert.deepEqual(await s.stop(), { code: 0, signal: null }, s.stderr());
    });
  });

  describe('concurrency', () => {
    test('8 clients x 100 messages at once, none crosses over', async () => {
      const clients = await Promise.all(Array.from({ length: 8 }, (_, i) =>
        openClient(`ws://127.0.0.1:${srv.ws.port}/echo`, { perMessageDeflate: i % 2 === 0 })));
      await Promise.all(clients.map(async (c, ci) => {
        const sent = [];
        for (let i = 0; i < 100; i++) {
          const m = Buffer.from(`client ${ci} message ${i} ${randomBinary(8).toString('hex')}`);
          sent.push(m);
          c.ws.send(m, { binary: false });
        }
        for (const m of sent) await c.expectMessage(m, false, 20000);
        assert.equal((await c.close(1000)).code, 1000);
      }));
    });
  });

  describe('shutdown', () => {
    /* "Graceful" read as a closing handshake with 1001, the code RFC 6455
     * 7.4.1 gives a server going down (and what parleyd --help promises). */
    test('SIGTERM with a client connected: the client gets a 1001 close and parleyd exits 0', async () => {
      const s = await startParleyd([]);
      const c = await openClient(`ws://127.0.0.1:${s.port}/echo`);
      await c.echo('bye', false);
      const exit = await s.stop('SIGTERM');
      assert.deepEqual(exit, { code: 0, signal: null }, s.stderr());
      const info = await c.waitClosed(5000, 'the client to see the connection end');
      assert.equal(info.code, 1001, 'close code seen by the client (1006: TCP dropped without a close frame)');
    });

    test('SIGINT: parleyd exits 0', async () => {
      const s = await startParleyd([]);
      assert.deepEqual(await s.stop('SIGINT'), { code: 0, signal: null }, s.stderr());
    });

    test('every parleyd of this file is still alive and exits 0 on SIGTERM', async () => {
      for (const [name, s] of Object.entries(srv)) {
        assert.ok(s.alive(), `parleyd (${name}) died during the tests${s.stderr()}`);
        assert.deepEqual(await withTimeout(s.stop(), 15000, `parleyd (${name}) to stop`), { code: 0, signal: null },
          `parleyd (${name}) exit status${s.stderr()}`);
      }
    });
  });
});
