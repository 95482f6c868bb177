// The cluster over rediss://: a redis-server listening with TLS only (a
// self-signed certificate made for the test), two parleyd nodes that
// trust it (--redis-ca) and a Node socket.io server whose node-redis
// clients trust it too. A broadcast from each side reaches the others;
// a parleyd that does not trust the certificate (system store) never
// joins, keeps serving its own clients and counts its failed attempts.

import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import http from 'node:http';
import { after, test } from 'node:test';

import {
  cleanup, loadPinned, lowFreePort, makeSelfSignedCert, onCleanup, scaled, sleep, tempDir, withTimeout,
} from './lib/harness.mjs';
import { SioPeer, startProtocolServer } from './lib/sio.mjs';

const { Server } = await loadPinned('socket.io');
const { createAdapter } = await loadPinned('@socket.io/redis-adapter');
const { createClient } = await loadPinned('redis');

after(cleanup);

async function startTlsRedis(dir, cert) {
  try {
    execFileSync('redis-server', ['--version'], { stdio: 'pipe' });
  } catch {
    throw new Error('interop: redis-server is not installed: run scripts/bootstrap (Debian package redis-server)');
  }
  const port = await lowFreePort();
  const child = spawn('redis-server', ['--port', '0', '--tls-port', String(port), '--bind', '127.0.0.1',
    '--tls-cert-file', cert.certFile, '--tls-key-file', cert.keyFile, '--tls-ca-cert-file', cert.certFile,
    '--tls-auth-clients', 'no', '--save', '', '--appendonly', 'no', '--dir', dir],
  { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d) => { out += d; });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  onCleanup(async () => { child.kill('SIGKILL'); await exited; });
  await withTimeout(new Promise((resolve, reject) => {
    child.stdout.on('data', () => { if (/Ready to accept connections/.test(out)) resolve(); });
    exited.then((code) => reject(new Error(`redis-server exited (${code}): ${out}`)));
  }), scaled(10000), 'redis-server (TLS) to start');
  return port;
}

async function metric(port, name) {
  const body = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const line = body.split('\n').find((l) => l.startsWith(`${name} `));
  assert.ok(line, `/metrics has ${name}`);
  return Number(line.split(' ').pop());
}

async function eventually(fn, ms, what) {
  const end = Date.now() + scaled(ms);
  for (;;) {
    if (await fn()) return;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

test('rediss://: parleyd nodes and a Node server share broadcasts over TLS; an untrusted certificate never joins', async () => {
  const dir = tempDir();
  const cert = makeSelfSignedCert(dir, 'redis');
  const port = await startTlsRedis(dir, cert);
  const url = `rediss://127.0.0.1:${port}`;
  const hb = ['--ping-interval', '2000', '--ping-timeout', '5000'];
  const A = await startProtocolServer({ extra: ['--redis', url, '--redis-ca', cert.certFile, ...hb] });
  const B = await startProtocolServer({ extra: ['--redis', url, '--redis-ca', cert.certFile, ...hb] });

  const pub = createClient({ url, socket: { tls: true, ca: cert.cert } });
  const sub = pub.duplicate();
  pub.on('error', () => {});
  sub.on('error', () => {});
  await Promise.all([pub.connect(), sub.connect()]);
  onCleanup(async () => { await Promise.allSettled([pub.disconnect(), sub.disconnect()]); });
  const httpServer = http.createServer();
  const io = new Server(httpServer, { adapter: createAdapter(pub, sub) });
  io.on('connection', (s) => s.emit('auth', {}));
  await new Promise((resolve) => httpServer.listen(0, '127.0.0.1', resolve));
  onCleanup(() => io.close());

  await eventually(async () => (await metric(A.port, 'parley_cluster_nodes')) === 3, 15000,
    'three servers counted over TLS');
  const a = new SioPeer(`http://127.0.0.1:${A.port}/`, { transports: ['websocket'] }, 'A');
  const b = new SioPeer(`http://127.0.0.1:${B.port}/`, { transports: ['websocket'] }, 'B');
  const n = new SioPeer(`http://127.0.0.1:${httpServer.address().port}/`, { transports: ['websocket'] }, 'N');
  await Promise.all([a.connected(), b.connected(), n.connected()]);

  await a.ack('cluster-broadcast', [{}, 'over-tls', 'from A']);
  for (const p of [a, b, n]) assert.deepEqual(await p.next('over-tls', scaled(5000)), ['from A']);
  io.emit('over-tls', 'from Node');
  for (const p of [a, b, n]) assert.deepEqual(await p.next('over-tls', scaled(5000)), ['from Node']);

  // No --redis-ca: the self-signed certificate does not verify against the
  // system store. The node serves its own clients, counts its attempts,
  // and the others never count it.
  const C = await startProtocolServer({ extra: ['--redis', url, ...hb] });
  await eventually(async () => (await metric(C.port, 'parley_cluster_reconnects_total')) >= 2, 15000,
    'failed TLS attempts counted');
  assert.equal(await metric(C.port, 'parley_cluster_nodes'), 0);
  assert.equal(await metric(A.port, 'parley_cluster_nodes'), 3);
  const c = new SioPeer(`http://127.0.0.1:${C.port}/`, { transports: ['websocket'] }, 'C');
  await c.connected();
  await c.ack('cluster-broadcast', [{}, 'local-only', 1]);
  assert.deepEqual(await c.next('local-only', scaled(5000)), [1]);
  await sleep(300);
  for (const p of [a, b, n]) p.assertIdle('nothing from the untrusted node');
  for (const p of [a, b, n, c]) await p.close();
});
