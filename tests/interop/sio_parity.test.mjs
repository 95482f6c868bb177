// Parity of the libparley Socket.IO client (sio_driver) with
// socket.io-client 4.8 (the oracle), both against the npm socket.io 4.8
// server (lib/ref_server.mjs), in the same scenarios:
//
// - the server ends the only namespace (socket.disconnect() on the
//   server): the connection closes with "forced close" (the Manager's and
//   the engine's reason in socket.io-client) before the socket hears
//   "io server disconnect"; no reconnection follows. The same with the
//   client leaving its only namespace ("io client disconnect").
// - acknowledgements on a connection loss: error-first acks that were sent
//   (emitWithAck with or without a timeout; parley_sock_emit_ack) fail at
//   the disconnect ("socket has been disconnected" / PARLEY_ECLOSED), not
//   kept pending; those still in the send buffer stay and are answered
//   after the reconnection.

import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { cleanup, sleep } from './lib/harness.mjs';
import { Driver, startRefServer } from './lib/driver.mjs';
import { io } from './lib/sio.mjs';

const PARLEY_ECLOSED = -6;
const MODES = [
  { name: 'polling', transports: 'polling', ref: ['polling'] },
  { name: 'websocket', transports: 'websocket', ref: ['websocket'] },
  { name: 'default', transports: 'both', ref: ['polling', 'websocket'] },
];

function refClient(port, mode) {
  const log = [];
  const s = io(`http://127.0.0.1:${port}`, {
    transports: mode.ref, reconnectionDelay: 100, reconnectionDelayMax: 400, forceNew: true,
  });
  s.io.on('close', (r) => log.push(`close ${r}`));
  s.io.on('reconnect_attempt', () => log.push('reconnect_attempt'));
  s.on('disconnect', (r) => log.push(`disconnect ${r}`));
  return { s, log };
}

const connected = (s) => new Promise((resolve) => (s.connected ? resolve() : s.once('connect', resolve)));

async function newDriver(port, mode) {
  const d = new Driver();
  await d.ok({ cmd: 'new', url: `http://127.0.0.1:${port}`, transports: mode.transports, delay: 100, delay_max: 400, timeout: 5000 });
  await d.ok({ cmd: 'socket', nsp: '/' });
  await d.ok({ cmd: 'connect' });
  await d.next({ ev: 'connect', nsp: '/' }, 8000);
  return d;
}

/** The driver's CLOSE events and disconnects, in order, as the ref log. */
function driverLog(d) {
  return d.all((e) => (e.ev === 'client' && (e.type === 'CLOSE' || e.type === 'RECONNECTING')) || e.ev === 'disconnect')
    .map((e) => (e.ev === 'disconnect' ? `disconnect ${e.reason}` : e.type === 'CLOSE' ? `close ${e.reason}` : 'reconnect_attempt'));
}

describe('Socket.IO client parity with socket.io-client 4.8 (npm socket.io server)', () => {
  after(cleanup);

  test('pending acks are bounded: PARLEY_CLIENT_MAX_PENDING_ACKS (10000) per socket, then PARLEY_EFULL', async () => {
    const d = new Driver();
    /* Nobody listens on port 9 here: every emit stays buffered. */
    await d.ok({ cmd: 'new', url: 'http://127.0.0.1:9', transports: 'websocket', delay: 60000, delay_max: 60000, timeout: 1000 });
    await d.ok({ cmd: 'socket', nsp: '/' });
    await d.ok({ cmd: 'connect' });
    for (let i = 0; i < 10000; i++) await d.ok({ cmd: 'emit', event: 'e', args: [i], ack_timeout: 0, tag: `t${i}` });
    assert.equal(await d.cmd({ cmd: 'emit', event: 'e', args: ['over'], ack_timeout: 0, tag: 'over' }), -14);
    await d.ok({ cmd: 'emit', event: 'e', args: ['no ack'] });
    await d.ok({ cmd: 'exit' });
  });

  for (const mode of MODES) {
    describe(`transport: ${mode.name}`, () => {
      for (const side of ['server', 'client']) {
        test(`the ${side} ends the only namespace: close "forced close", then disconnect "io ${side} disconnect", no reconnection`, async () => {
          const srv = await startRefServer();
          try {
            const ref = refClient(srv.port, mode);
            await connected(ref.s);
            await sleep(300); /* past the upgrade */
            if (side === 'server') ref.s.emit('disconnect-me');
            else ref.s.disconnect();
            const d = await newDriver(srv.port, mode);
            await sleep(300);
            if (side === 'server') await d.ok({ cmd: 'emit', event: 'disconnect-me', args: [] });
            else await d.ok({ cmd: 'sock_disconnect' });
            await d.next({ ev: 'disconnect', nsp: '/' });
            await sleep(800); /* a reconnection would have started */
            const want = ['close forced close', `disconnect io ${side} disconnect`];
            assert.deepEqual(ref.log, want, 'socket.io-client (the oracle)');
            assert.deepEqual(driverLog(d), want, 'libparley');
            ref.s.close();
            await d.ok({ cmd: 'exit' });
          } finally {
            await srv.kill();
          }
        });
      }

      test('acks on a connection loss: sent ones fail at the disconnect (with or without a timeout), buffered ones are answered after the reconnection', async () => {
        const srv = await startRefServer();
        try {
          const ref = refClient(srv.port, mode);
          await connected(ref.s);
          const d = await newDriver(srv.port, mode);
          await sleep(300);
          const res = [];
          const track = (tag, p) => p.then((v) => res.push(`${tag} ok ${JSON.stringify(v)}`), (e) => res.push(`${tag} err ${e.message}`));
          /* "unanswered" has no handler on the server: never acknowledged. */
          track('no-timeout', ref.s.emitWithAck('unanswered', 1));
          track('timeout', ref.s.timeout(60000).emitWithAck('unanswered', 2));
          let plain = 0;
          ref.s.emit('unanswered', 3, () => plain++);
          await d.ok({ cmd: 'emit', event: 'unanswered', args: [1], ack_timeout: 0, tag: 'no-timeout' });
          await d.ok({ cmd: 'emit', event: 'unanswered', args: [2], ack_timeout: 60000, tag: 'timeout' });
          await sleep(300);
          await srv.kill();
          const port = srv.port;
          await d.next({ ev: 'disconnect', nsp: '/' });
          while (ref.s.connected) await sleep(20);
          /* Failed at the disconnect, not kept. */
          const acks = [await d.next({ ev: 'ack', tag: 'no-timeout' }), await d.next({ ev: 'ack', tag: 'timeout' })];
          assert.deepEqual(acks.map((a) => a.err), [PARLEY_ECLOSED, PARLEY_ECLOSED]);
          await sleep(50);
          assert.deepEqual(res.sort(), ['no-timeout err socket has been disconnected', 'timeout err socket has been disconnected']);
          /* While disconnected: buffered, answered after the reconnection. */
          track('buffered', ref.s.emitWithAck('message-with-ack', 'b'));
          await d.ok({ cmd: 'emit', event: 'message-with-ack', args: ['b'], ack_timeout: 0, tag: 'buffered' });
          const srv2 = await startRefServer({ port });
          try {
            const b = await d.next({ ev: 'ack', tag: 'buffered' }, 10000);
            assert.equal(b.err, 0);
            assert.deepEqual(b.args, ['b']);
            await connected(ref.s);
            for (let i = 0; i < 100 && res.length < 3; i++) await sleep(20);
            assert.ok(res.includes('buffered ok "b"'), JSON.stringify(res));
            assert.equal(plain, 0, 'a plain callback is discarded, never called');
            assert.equal(d.all({ ev: 'ack' }).length, 3, 'each C ack reported once');
            ref.s.close();
            await d.ok({ cmd: 'exit' });
          } finally {
            await srv2.kill();
          }
        } finally {
          await srv.kill();
        }
      });
    });
  }
});
