// Reliable sends of the libparley client (parley_sock_send through the
// outbound queue) under faults, against the npm socket.io 4.8 reference
// server and `parleyd --protocol-test`:
//  - the server is killed (SIGKILL) and restarted on the same port in the
//    middle of a stream of messages with mixed priorities: every message is
//    acknowledged exactly once, the server receives every id, and what was
//    queued while it was down goes out in priority order;
//  - the client process is killed (SIGKILL) and restarted with the same
//    queue file: nothing is lost and no id is missing or invented.
// Receipts are counted on the wire: each message is sent as
// "to-room" ["obs", "rel", id, priority], which both servers answer by
// broadcasting "rel" [id, priority] to an observer (npm socket.io-client)
// joined to room "obs" and acknowledging; one broadcast = one receipt.

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { rmSync } from 'node:fs';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { cleanup, onCleanup, sleep, tempDir } from './lib/harness.mjs';
import { Driver, startProxy, startRefServer } from './lib/driver.mjs';
import { io, startProtocolServer } from './lib/sio.mjs';

const SERVERS = [
  {
    name: 'parleyd --protocol-test',
    async start(port = 0) {
      const s = await startProtocolServer({ port });
      return { port: s.port, kill: () => s.stop('SIGKILL') };
    },
  },
  {
    name: 'socket.io 4.8 (npm)',
    async start(port = 0) {
      const s = await startRefServer({ port });
      return { port: s.port, kill: () => s.kill() };
    },
  },
];

const MODES = [
  { name: 'polling', transports: 'polling' },
  { name: 'websocket', transports: 'websocket' },
  { name: 'default', transports: 'both' },
];

/** An observer in room "obs" that records every "rel" it gets. */
function observer(port) {
  const o = { receipts: [], ready: false };
  const sock = io(`http://127.0.0.1:${port}`, {
    transports: ['websocket'], forceNew: true, reconnectionDelay: 100, reconnectionDelayMax: 200, randomizationFactor: 0,
  });
  sock.on('connect', async () => {
    o.ready = false;
    await sock.timeout(3000).emitWithAck('join', 'obs').catch(() => {});
    o.ready = true;
  });
  sock.on('disconnect', () => {
    o.ready = false;
  });
  sock.on('rel', (id, prio) => o.receipts.push({ id, prio }));
  onCleanup(() => sock.disconnect());
  o.sock = sock;
  o.waitReady = async (ms = 10000) => {
    const end = Date.now() + ms;
    while (!o.ready) {
      if (Date.now() > end) throw new Error('the observer did not (re)join room obs');
      await sleep(20);
    }
  };
  return o;
}

function tally(receipts) {
  const per = new Map();
  for (const r of receipts) per.set(r.id, (per.get(r.id) ?? 0) + 1);
  let dups = 0;
  for (const n of per.values()) dups += n - 1;
  return { distinct: per.size, total: receipts.length, dups };
}

async function send(d, id, prio) {
  await d.ok({ cmd: 'send', event: 'to-room', args: ['obs', 'rel', id, prio], priority: prio, id });
}

async function waitQueued(d, want, ms) {
  const end = Date.now() + ms;
  for (;;) {
    await d.ok({ cmd: 'info' });
    const info = await d.next({ ev: 'info' });
    if (info.queued === want) return;
    if (Date.now() > end) assert.fail(`${info.queued} messages still queued, expected ${want}`);
    await sleep(50);
  }
}

describe('libparley reliable sends under faults', () => {
  after(cleanup);

  for (const server of SERVERS) {
    describe(server.name, () => {
      for (const mode of MODES) {
        test(`${mode.name}: the server is killed and restarted mid-stream: each message acknowledged once, none lost`, async () => {
          let srv = await server.start();
          const port = srv.port;
          const obs = observer(port);
          await obs.waitReady();
          const proxy = await startProxy(() => port);
          const d = new Driver();
          await d.ok({ cmd: 'new', url: `http://127.0.0.1:${proxy.port}`, transports: mode.transports, delay: 100, delay_max: 300, timeout: 3000 });
          await d.ok({ cmd: 'socket', nsp: '/' });
          await d.ok({ cmd: 'connect' });
          await d.next({ ev: 'connect', nsp: '/' }, 8000);
          const N = 240;
          const ids = Array.from({ length: N }, () => randomUUID());
          const prio = (i) => (i * 7) % 4;
          /* Phase 1: 120 while connected, the server killed after 60. */
          for (let i = 0; i < 120; i++) {
            await send(d, ids[i], prio(i));
            if (i === 60) {
              proxy.refuse = true;
              await srv.kill();
            }
          }
          await d.next({ ev: 'disconnect' });
          /* Phase 2: 120 more while it is down. */
          for (let i = 120; i < N; i++) await send(d, ids[i], prio(i));
          const before = obs.receipts.length;
          srv = await server.start(port);
          await obs.waitReady();
          const afterRestart = obs.receipts.length;
          proxy.refuse = false;
          await d.next({ ev: 'client', type: 'RECONNECTED' }, 10000);
          await waitQueued(d, 0, 30000);
          /* Every id acknowledged exactly once (status 3 = ACKED). */
          const acked = d.all({ ev: 'status', status: 3 }).map((e) => e.id);
          assert.equal(acked.length, N, 'one ACKED per message');
          assert.equal(new Set(acked).size, N);
          assert.equal(d.all({ ev: 'status', status: 4 }).length, 0, 'nothing failed');
          const t = tally(obs.receipts);
          assert.equal(t.distinct, N, 'the server received every id');
          assert.deepEqual(new Set(obs.receipts.map((r) => r.id)), new Set(ids));
          /* What was pending at the reconnection left in priority order. */
          const resent = obs.receipts.slice(afterRestart);
          for (let i = 1; i < resent.length; i++) {
            assert.ok(resent[i - 1].prio >= resent[i].prio,
              `after the restart, priority ${resent[i].prio} went out after ${resent[i - 1].prio} (position ${i})`);
          }
          console.log(`# reliable ${server.name} ${mode.name}: sent ${N}, received ${t.total} ` +
            `(${before} before the kill), distinct ${t.distinct}, duplicates ${t.dups}, acked ${acked.length}`);
          await d.ok({ cmd: 'exit' });
          obs.sock.disconnect();
          await srv.kill();
        });
      }

      test('the client is killed with SIGKILL and restarted with the same queue file: nothing lost, nothing duplicated', async () => {
        const srv = await server.start();
        const obs = observer(srv.port);
        await obs.waitReady();
        const proxy = await startProxy(() => srv.port);
        proxy.refuse = true;
        const dir = tempDir();
        const queue = path.join(dir, 'queue.db');
        const N = 200;
        const ids = Array.from({ length: N }, () => randomUUID());
        const start = async () => {
          const d = new Driver();
          await d.ok({ cmd: 'new', url: `http://127.0.0.1:${proxy.port}`, transports: 'websocket', delay: 100, delay_max: 200, timeout: 3000 });
          await d.ok({ cmd: 'socket', nsp: '/', queue_path: queue });
          await d.ok({ cmd: 'connect' });
          return d;
        };
        const d1 = await start();
        for (let i = 0; i < N; i++) await send(d1, ids[i], i % 4);
        await waitQueued(d1, N, 2000);
        proxy.refuse = false;
        /* Killed as soon as the server has some of them. */
        const end = Date.now() + 10000;
        while (obs.receipts.length === 0 && Date.now() < end) await sleep(1);
        await d1.kill('SIGKILL');
        await sleep(300); /* what was on the wire at the kill */
        const before = tally(obs.receipts);
        const d2 = await start();
        await d2.next({ ev: 'connect', nsp: '/' }, 8000);
        await waitQueued(d2, 0, 30000);
        await sleep(200);
        const t = tally(obs.receipts);
        assert.equal(t.distinct, N, 'every id reached the server');
        assert.deepEqual(new Set(obs.receipts.map((r) => r.id)), new Set(ids), 'and no other');
        console.log(`# crash ${server.name}: sent ${N}, ${before.distinct} received before the kill, ` +
          `${t.distinct} distinct after the restart, ${t.dups} duplicates on the wire`);
        await d2.ok({ cmd: 'exit' });
        obs.sock.disconnect();
        rmSync(dir, { recursive: true, force: true });
        await srv.kill();
      });
    });
  }
});
