// parleyd killed with SIGKILL in the middle of message traffic, then
// restarted on the same data directory: every acknowledged message is
// there, with the seq and id its acknowledgement gave; messages in flight
// are there at most once (a resend with the same client_id finds them);
// each conversation's seqs have no gaps. Counts are reported as test
// diagnostics.

import assert from 'node:assert/strict';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { cleanup, scaled, sleep, tempDir } from './lib/harness.mjs';
import { ChatClient, dm, nextClientId, online, startChatServer } from './lib/chat.mjs';

const SENDERS = ['s0', 's1', 's2', 's3'];
const RECIPIENTS = ['r0', 'r1'];
const ROOM = 'crashroom';
const WINDOW = 32; // sends in flight per sender

/** Sends as fast as acknowledgements allow until stop() is called. */
function flood(client, sent) {
  let stopping = false;
  let n = 0;
  const inflight = new Set();
  const one = () => {
    const target = n % 3 === 2 ? { room: ROOM } : { to: RECIPIENTS[n % 2] };
    const rec = { clientId: nextClientId(), target, text: `${client.user} #${n++}`, ack: null };
    sent.push(rec);
    const p = client
      .req('send_message', { client_id: rec.clientId, ...target, type: 'text', content: { text: rec.text } }, 3000)
      .then((res) => {
        if (res?.ok) rec.ack = res.message;
      })
      .catch(() => {});
    inflight.add(p);
    p.finally(() => {
      inflight.delete(p);
      if (!stopping) one();
    });
  };
  for (let i = 0; i < WINDOW; i++) one();
  return {
    stop: async () => {
      stopping = true;
      await Promise.all([...inflight]);
    },
  };
}

describe('messaging: SIGKILL mid-traffic', () => {
  after(cleanup);

  test('nothing acknowledged is lost across kills and restarts', async (t) => {
    const dataDir = path.join(tempDir(), 'data');
    let srv = await startChatServer({ dataDir });
    const port = srv.port;
    const sent = [];
    const rounds = 3;
    let acked = 0;
    for (let round = 0; round < rounds; round++) {
      const clients = [];
      for (const u of [...SENDERS, ...RECIPIENTS]) {
        const c = await online(srv, u, { sync: false });
        if (round === 0) await c.ok('join_room', { room: ROOM });
        clients.push(c);
      }
      const floods = clients.slice(0, SENDERS.length).map((c) => flood(c, sent));
      await sleep(scaled(600 + round * 300));
      srv.child.kill('SIGKILL');
      const { signal } = await srv.child.exitPromise;
      assert.equal(signal, 'SIGKILL');
      await Promise.all(floods.map((f) => f.stop()));
      for (const c of clients) c.close();
      const ackedNow = sent.filter((r) => r.ack).length;
      t.diagnostic(`round ${round}: ${sent.length} sent so far, ${ackedNow} acknowledged before the kill`);
      assert.ok(ackedNow > acked, 'traffic flowed before the kill');
      acked = ackedNow;
      srv = await startChatServer({ dataDir, port });
    }

    // After the last restart: every sender resends everything it ever
    // sent, with the same client ids.
    let dupAcked = 0;
    let dupUnacked = 0;
    let fresh = 0;
    const finals = new Map();
    for (const u of SENDERS) {
      const c = await online(srv, u, { sync: false });
      const mine = sent.filter((r) => r.text.startsWith(`${u} #`));
      for (let i = 0; i < mine.length; i += 64) {
        const batch = mine.slice(i, i + 64);
        const answers = await Promise.all(
          batch.map((r) => c.ok('send_message', { client_id: r.clientId, ...r.target, type: 'text', content: { text: r.text } }, 10000)),
        );
        answers.forEach((res, k) => {
          const r = batch[k];
          if (r.ack) {
            assert.equal(res.duplicate, true, `acknowledged ${r.clientId} was lost`);
            assert.deepEqual(res.message, r.ack, 'the stored message is the acknowledged one');
            dupAcked++;
          } else if (res.duplicate) {
            dupUnacked++;
          } else {
            fresh++;
          }
          finals.set(r.clientId, res.message);
        });
      }
      c.close();
    }
    assert.equal(dupAcked, acked);
    t.diagnostic(`${sent.length} sent, ${acked} acknowledged before kills (all found after restart), ` +
      `${dupUnacked} stored but unacknowledged (found by resend), ${fresh} never stored (stored by the resend)`);

    // What the recipients sync is exactly what was sent: once each, no
    // gaps, in seq order per conversation.
    let synced = 0;
    for (const u of RECIPIENTS) {
      const c = await online(srv, u);
      const byConv = new Map();
      for (const m of c.synced.messages) {
        if (!byConv.has(m.conversation)) byConv.set(m.conversation, []);
        byConv.get(m.conversation).push(m);
      }
      for (const [conv, list] of byConv) {
        assert.deepEqual(list.map((m) => m.seq), list.map((_, i) => i + 1), `${conv}: gapless`);
        for (const m of list) assert.deepEqual(finals.get(m.client_id), m, `${conv} seq ${m.seq} is the one its sender was told`);
      }
      const expect = sent.filter((r) => r.target.to === u || r.target.room).length;
      assert.equal(c.synced.messages.length, expect, `${u} syncs every message sent to it, once`);
      synced += c.synced.messages.filter((m) => m.conversation.startsWith('dm:')).length;
      c.close();
    }
    synced += sent.filter((r) => r.target.room).length;
    assert.equal(synced, sent.length);
    t.diagnostic(`after the restart: ${synced} messages stored and synced = ${sent.length} sent; ${acked} acknowledged`);
    void dm;
    void ChatClient;
  });
});
