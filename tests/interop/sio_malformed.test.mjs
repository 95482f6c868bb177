// parleyd --protocol-test against hand-made Engine.IO / Socket.IO input on
// plain HTTP requests and raw WebSocket sessions. Every expectation is what
// the reference servers (npm engine.io 6.6 / socket.io 4.8) do: status
// codes, error bodies, which packets close a session and how. A healthy
// socket.io-client connected before everything must keep working after
// each case.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { cleanup, scaled, sleep } from './lib/harness.mjs';
import {
  assertEioError, packets, pollGet, pollHandshake, pollPost, pollUntil, q, request, startRequest, wsNext, wsSession,
} from './lib/eio_raw.mjs';
import { CONNECT_TIMEOUT, connectPeer, MAX_PAYLOAD, MODES, startProtocolServer } from './lib/sio.mjs';
import { tokens } from './lib/wire.mjs';

const BASES = ['/socket.io/', '/engine.io/'];

describe('parleyd --protocol-test with malformed Engine.IO and Socket.IO input', () => {
  let srv;
  let witness;
  let rounds = 0;

  /* Runs a case, then checks that parleyd is alive and the witness (a
   * socket.io-client session opened before) still gets its echo. */
  async function watched(fn) {
    await fn();
    assert.ok(srv.alive(), `parleyd died${srv.stderr()}`);
    const tag = `witness ${++rounds}`;
    assert.deepEqual(await witness.echo([tag]), [tag], 'the witness session still works');
  }

  before(async () => {
    srv = await startProtocolServer();
    witness = await connectPeer(srv, MODES[2], { label: 'witness' });
    await witness.assertTransport('websocket');
  });

  after(async () => {
    witness?.assertIdle('(the witness)');
    await cleanup();
  });

  for (const base of BASES) {
    describe(`Engine.IO request errors on ${base}`, () => {
      const cases = [
        ['an unknown transport', 'GET', `?EIO=4&transport=carrier-pigeon`, 0, 'Transport unknown'],
        ['no transport', 'GET', `?EIO=4`, 0, 'Transport unknown'],
        ['an unknown sid (GET)', 'GET', q('polling', 'no-such-sid'), 1, 'Session ID unknown'],
        ['an unknown sid (POST)', 'POST', q('polling', 'no-such-sid'), 1, 'Session ID unknown'],
        ['a handshake with POST', 'POST', q('polling'), 2, 'Bad handshake method'],
        ['a handshake with PUT', 'PUT', q('polling'), 2, 'Bad handshake method'],
        ['EIO=3', 'GET', `?EIO=3&transport=polling`, 5, 'Unsupported protocol version'],
        ['EIO=5', 'GET', `?EIO=5&transport=polling`, 5, 'Unsupported protocol version'],
        ['no EIO', 'GET', `?transport=polling`, 5, 'Unsupported protocol version'],
      ];
      for (const [what, method, query, code, message] of cases) {
        test(`${what} -> 400 {"code":${code},"message":"${message}"}`, async () => {
          await watched(async () => {
            const body = method === 'GET' ? undefined : '40';
            assertEioError(await request(srv.port, method, `${base}${query}`, { body }), code, message);
          });
        });
      }

      test('transport=websocket for a polling sid without an upgrade -> 400 code 3 "Bad request"', async () => {
        await watched(async () => {
          const { sid } = await pollHandshake(srv.port, base);
          assertEioError(await request(srv.port, 'GET', `${base}${q('websocket', sid)}`), 3, 'Bad request');
        });
      });
    });

    describe(`polling session rules on ${base}`, () => {
      /* A valid message of exactly n bytes for this endpoint. */
      const message = (n) => (base === '/socket.io/' ? `42["message","${'p'.repeat(n - 16)}"]` : `4${'p'.repeat(n - 1)}`);

      async function open() {
        const { sid } = await pollHandshake(srv.port, base);
        if (base === '/socket.io/') {
          await pollPost(srv.port, base, sid, ['40']);
          const got = await pollUntil(srv.port, base, sid);
          assert.match(got[0], /^40\{"sid":"[^"]+"\}$/);
        }
        return sid;
      }

      /* One message round trip on a polling session. */
      async function roundTrip(sid, text = 'alive') {
        if (base === '/socket.io/') {
          await pollPost(srv.port, base, sid, [`42["message","${text}"]`]);
          assert.deepEqual(await pollUntil(srv.port, base, sid), [`42["message-back","${text}"]`]);
        } else {
          await pollPost(srv.port, base, sid, [`4${text}`]);
          assert.deepEqual(await pollUntil(srv.port, base, sid), [`4${text}`]);
        }
      }

      const gone = async (sid) => assertEioError(await request(srv.port, 'GET', `${base}${q('polling', sid)}`), 1, 'Session ID unknown');

      test('the handshake: 200, text/plain; charset=UTF-8, open packet with the contract values', async () => {
        const res = await request(srv.port, 'GET', `${base}${q('polling')}`);
        assert.equal(res.status, 200);
        assert.match(res.headers['content-type'], /^text\/plain; ?charset=utf-8$/i);
        const open = JSON.parse(res.body.slice(1));
        assert.equal(res.body[0], '0');
        assert.deepEqual({ ...open, sid: typeof open.sid }, {
          sid: 'string', upgrades: ['websocket'], pingInterval: 300, pingTimeout: 200, maxPayload: MAX_PAYLOAD,
        });
      });

      test('a POST of exactly maxPayload bytes is accepted; one byte more -> 413 and the session lives on', async () => {
        await watched(async () => {
          const sid = await open();
          await pollPost(srv.port, base, sid, [message(MAX_PAYLOAD)]);
          const echoed = await pollUntil(srv.port, base, sid);
          assert.equal(echoed.length, 1);
          const res = await request(srv.port, 'POST', `${base}${q('polling', sid)}`, { body: message(MAX_PAYLOAD + 1) });
          assert.equal(res.status, 413, `status (body ${JSON.stringify(res.body.slice(0, 100))})`);
          assert.equal(res.headers['access-control-allow-origin'], '*');
          /* The reference answers 413 without closing the session. */
          await roundTrip(sid, 'after 413');
        });
      });

      test('two concurrent GETs: the second gets 400, the pending one "1", the session ends', async () => {
        await watched(async () => {
          const sid = await open();
          const first = startRequest(srv.port, 'GET', `${base}${q('polling', sid)}`);
          await sleep(50);
          const second = await request(srv.port, 'GET', `${base}${q('polling', sid)}`);
          assert.equal(second.status, 400);
          const r1 = await first.response;
          assert.equal(r1.status, 200);
          assert.deepEqual(packets(r1.body), ['1']);
          await gone(sid);
        });
      });

      test('an aborted pending GET ends the session', async () => {
        await watched(async () => {
          const sid = await open();
          const g = startRequest(srv.port, 'GET', `${base}${q('polling', sid)}`);
          await sleep(50);
          g.abort();
          await sleep(100);
          await gone(sid);
        });
      });

      test('a close packet from the client ends the session', async () => {
        await watched(async () => {
          const sid = await open();
          await pollPost(srv.port, base, sid, ['1']);
          await gone(sid);
        });
      });

      test('an unknown Engine.IO packet type ends the session', async () => {
        await watched(async () => {
          const sid = await open();
          await pollPost(srv.port, base, sid, ['9']);
          await sleep(50);
          await gone(sid);
        });
      });

      test('upgrade: probe, pending GET answered "6", then polling -> 400 code 3, a second websocket is closed', async () => {
        await watched(async () => {
          const sid = await open();
          const pending = startRequest(srv.port, 'GET', `${base}${q('polling', sid)}`);
          await sleep(20);
          const ws = await wsSession(srv.port, base, { sid });
          ws.ws.send('2probe');
          assert.equal(await wsNext(ws), '3probe');
          const p = await pending.response;
          assert.equal(p.status, 200);
          assert.deepEqual(packets(p.body), ['6'], 'the pending GET is answered with a noop');
          ws.ws.send('5');
          await sleep(50);
          assertEioError(await request(srv.port, 'GET', `${base}${q('polling', sid)}`), 3, 'Bad request');
          assertEioError(await request(srv.port, 'POST', `${base}${q('polling', sid)}`, { body: '4x' }), 3, 'Bad request');
          /* The reference accepts the second WebSocket handshake and closes
           * it at once with an empty close frame. */
          const ws2 = await wsSession(srv.port, base, { sid, autoPong: false });
          const c = await ws2.waitClosed(3000, 'the second websocket to be closed');
          assert.deepEqual(ws2.messages.items.map((m) => m.data.toString()), [], 'no packet on the second websocket');
          assert.ok([1000, 1005].includes(c.code), `close code ${c.code} (the reference sends an empty close frame: 1005)`);
          /* The upgraded session is unaffected. */
          if (base === '/socket.io/') {
            ws.ws.send('42["message","upgraded"]');
            assert.equal(await wsNext(ws), '42["message-back","upgraded"]');
          } else {
            ws.ws.send('4upgraded');
            assert.equal(await wsNext(ws), '4upgraded');
          }
          ws.ws.close();
        });
      });
    });

    describe(`CORS on ${base}`, () => {
      test('preflight OPTIONS -> 204 with Access-Control-Allow-Origin/Methods/Headers', async () => {
        const res = await request(srv.port, 'OPTIONS', `${base}${q('polling')}`, {
          headers: { Origin: 'http://elsewhere.example', 'Access-Control-Request-Method': 'POST', 'Access-Control-Request-Headers': 'content-type' },
        });
        assert.equal(res.status, 204);
        assert.equal(res.headers['access-control-allow-origin'], '*');
        const methods = tokens(res.headers['access-control-allow-methods']);
        for (const m of ['get', 'post']) assert.ok(methods.includes(m), `Allow-Methods ${res.headers['access-control-allow-methods']} (reference: GET,HEAD,PUT,PATCH,POST,DELETE)`);
        assert.ok(tokens(res.headers['access-control-allow-headers']).includes('content-type'), `Allow-Headers ${res.headers['access-control-allow-headers']}`);
        assert.equal(res.body, '');
      });

      test('Access-Control-Allow-Origin: * on the handshake, GET and POST', async () => {
        const headers = { Origin: 'http://elsewhere.example' };
        const hs = await request(srv.port, 'GET', `${base}${q('polling')}`, { headers });
        assert.equal(hs.status, 200);
        assert.equal(hs.headers['access-control-allow-origin'], '*');
        const { sid } = JSON.parse(hs.body.slice(1));
        const post = await request(srv.port, 'POST', `${base}${q('polling', sid)}`, { headers, body: base === '/socket.io/' ? '40' : '4cors' });
        assert.equal(post.status, 200);
        assert.equal(post.body, 'ok');
        assert.equal(post.headers['access-control-allow-origin'], '*');
        const get = await request(srv.port, 'GET', `${base}${q('polling', sid)}`, { headers });
        assert.equal(get.status, 200);
        assert.equal(get.headers['access-control-allow-origin'], '*');
      });
    });
  }

  describe('malformed Socket.IO packets', () => {
    /* [what, packet (without the Engine.IO "4"), attachments, expected]:
     * 'close' ends the connection; otherwise the array of packets the
     * server sends before the alive-check's message-back. */
    const P = (n) => `{"_placeholder":true,"num":${n}}`;
    const cases = [
      ['unknown packet type 7', '7', [], 'close'],
      ['unknown packet type 9 with data', '9["message"]', [], 'close'],
      ['an event that is a string', '2"hello"', [], 'close'],
      ['an event that is an object', '2{"0":"message"}', [], 'close'],
      ['an event that is an empty array', '2[]', [], 'close'],
      ['an event named null', '2[null]', [], 'close'],
      ['an event whose JSON is cut short', '2["message","x"', [], 'close'],
      ['a letter in place of the ack id', '21a["message"]', [], 'close'],
      ['a negative ack id', '2-1["message"]', [], 'close'],
      ['garbage after the type', '2abc', [], 'close'],
      ['placeholder num as a string', `51-["message",${P('"0"')}]`, [Buffer.from([1])], 'close'],
      ['placeholder num out of range (1 of 1)', `51-["message",${P(1)}]`, [Buffer.from([1])], 'close'],
      ['placeholder num negative', `51-["message",${P(-1)}]`, [Buffer.from([1])], 'close'],
      ['11 attachments announced (more than 10)', `511-["message"]`, [], 'close'],
      ['0 attachments announced', `50-["message"]`, [], 'close'],
      ['a binary event without the attachment count', `5["message"]`, [], 'close'],
      ['a binary ack without the attachment count', '6["x"]', [], 'close'],
      ...['connect', 'connect_error', 'disconnect', 'disconnecting', 'newListener', 'removeListener'].map((name) => (
        [`the reserved event name "${name}"`, `2["${name}"]`, [], 'close'])),
      ['an event for a namespace not joined', '2/custom,["message"]', [], 'close'],
      ['an event for a namespace not joined, without a comma', '2/custom', [], 'close'],
      ['an ack for a namespace not joined', '3/custom,1[]', [], 'close'],
      ['a DISCONNECT for a namespace not joined', '1/nope,', [], 'close'],
      ['a duplicate CONNECT', '0', [], 'close'],
      ['a duplicate CONNECT with auth', '0{"again":true}', [], 'close'],
      ['a CONNECT whose auth is a string', '0/custom,"str"', [], 'close'],
      ['a CONNECT_ERROR from the client', '4{"message":"m"}', [], 'close'],
      ['a CONNECT_ERROR string from the client', '4"str"', [], 'close'],
      /* What the reference tolerates. Not asserted, as they look like
       * accidents of the reference rather than protocol: an EVENT without
       * data ("2") and an ack id beyond 2^53 are ignored; a placeholder num
       * of 0.5 becomes null. */
      ['an ack for an unknown id', '35["x"]', [], []],
      ['an ack without an id', '3["x"]', [], []],
      ['an event named by a number', '2[1,"numeric"]', [], []],
      ['an event nobody listens to', '2["unknown-event"]', [], []],
      ['a plain event with a placeholder object (not reconstructed)', `2["message",${P(0)}]`, [], [`42["message-back",${P(0)}]`]],
      ['a placeholder without _placeholder:true (attachment dropped)', `51-["message",{"_placeholder":false,"num":0}]`, [Buffer.from([1])], ['42["message-back",{"_placeholder":false,"num":0}]']],
      ['a CONNECT to an invalid namespace', '0/nope,', [], ['44/nope,{"message":"Invalid namespace"}']],
    ];

    for (const transport of ['websocket', 'polling']) {
      describe(`over ${transport}`, () => {
        async function session() {
          if (transport === 'websocket') {
            const ws = await wsSession(srv.port, '/socket.io/');
            const connect = async () => {
              ws.ws.send('40');
              assert.match(await wsNext(ws), /^40\{"sid":"[^"]+"\}$/);
              assert.equal(await wsNext(ws), '42["auth",{}]');
            };
            await connect();
            return {
              connect,
              send: (list) => {
                for (const m of list) ws.ws.send(m);
              },
              /* Packets until the message-back of the alive check. */
              alive: async () => {
                ws.ws.send('42["message","alive"]');
                const got = [];
                for (;;) {
                  const m = await wsNext(ws, 3000, 'the alive check');
                  if (m === '42["message-back","alive"]') return got;
                  got.push(m);
                }
              },
              closed: async () => {
                const c = await ws.waitClosed(3000, 'the server to close the session');
                assert.deepEqual(ws.messages.items.map((m) => m.data.toString()), [], 'no packet before the close');
                assert.ok([1000, 1005].includes(c.code), `close code ${c.code} (the reference sends an empty close frame: 1005)`);
              },
            };
          }
          const base = '/socket.io/';
          const { sid } = await pollHandshake(srv.port, base);
          let pending = null;
          const connect = async () => {
            if (pending) {
              /* A GET left pending by send() must be drained first. */
              const r = await pending.response;
              assert.deepEqual(packets(r.body).filter((p) => p !== '2'), []);
              pending = null;
            }
            await pollPost(srv.port, base, sid, ['40']);
            assert.deepEqual((await pollUntil(srv.port, base, sid)).map((p) => p.replace(/"sid":"[^"]+"/, '"sid":"X"')), ['40{"sid":"X"}', '42["auth",{}]']);
          };
          await connect();
          return {
            connect,
            send: async (list) => {
              pending = startRequest(srv.port, 'GET', `${base}${q('polling', sid)}`);
              await sleep(20);
              const encoded = list.map((m) => (Buffer.isBuffer(m) ? `b${m.toString('base64')}` : m));
              await pollPost(srv.port, base, sid, encoded);
            },
            alive: async () => {
              const got = [];
              if (pending) {
                const r = await pending.response;
                pending = null;
                assert.equal(r.status, 200);
                got.push(...packets(r.body).filter((p) => p !== '2'));
              }
              await pollPost(srv.port, base, sid, ['42["message","alive"]']);
              for (;;) {
                const list = await pollUntil(srv.port, base, sid);
                const i = list.indexOf('42["message-back","alive"]');
                if (i >= 0) return [...got, ...list.slice(0, i)];
                got.push(...list);
              }
            },
            closed: async () => {
              const r = await pending.response;
              assert.equal(r.status, 200);
              assert.deepEqual(packets(r.body).filter((p) => p !== '2'), ['1'], 'the pending GET gets a close packet');
              assertEioError(await request(srv.port, 'GET', `${base}${q('polling', sid)}`), 1, 'Session ID unknown');
            },
          };
        }

        for (const [what, packet, attachments, expected] of cases) {
          test(`${what}: ${JSON.stringify(packet)} -> ${expected === 'close' ? 'closed' : 'kept open'}`, async () => {
            await watched(async () => {
              const s = await session();
              await s.send([`4${packet}`, ...attachments]);
              if (expected === 'close') await s.closed();
              else assert.deepEqual(await s.alive(), expected);
            });
          });
        }

        test('a DISCONNECT gets no reply, keeps Engine.IO open, and a new CONNECT works', async () => {
          await watched(async () => {
            const s = await session();
            await s.send(['41']);
            await sleep(100);
            /* Nothing was answered to the DISCONNECT: the next packets are
             * the answer to the new CONNECT. */
            await s.connect();
            assert.deepEqual(await s.alive(), []);
          });
        });

        test(`no CONNECT within connectTimeout (${CONNECT_TIMEOUT} ms) -> the connection is closed`, async () => {
          await watched(async () => {
            const t0 = Date.now();
            if (transport === 'websocket') {
              const ws = await wsSession(srv.port, '/socket.io/');
              const c = await ws.waitClosed(scaled(5000), 'the connect timeout');
              assert.deepEqual(ws.messages.items.map((m) => m.data.toString()), []);
              assert.ok([1000, 1005].includes(c.code), `close code ${c.code}`);
            } else {
              const { sid } = await pollHandshake(srv.port, '/socket.io/');
              let list;
              do list = await pollGet(srv.port, '/socket.io/', sid, 5000).then(async (l) => {
                if (l.includes('2')) await pollPost(srv.port, '/socket.io/', sid, ['3']);
                return l.filter((p) => p !== '2');
              });
              while (list.length === 0);
              assert.deepEqual(list, ['1']);
            }
            const elapsed = Date.now() - t0;
            assert.ok(elapsed >= CONNECT_TIMEOUT - 100 && elapsed < CONNECT_TIMEOUT + 1000, `closed after ${elapsed} ms`);
          });
        });
      });
    }
  });
});
