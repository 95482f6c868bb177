#!/usr/bin/env node
// Bytes on the wire for a chat-like Socket.IO workload, with and without
// permessage-deflate (parleyd --compression). Not a test: prints a table.
//
// Usage: node bench/sio-compression.mjs [PARLEYD] (default build/parleyd)
// Env: MESSAGES (default 5000), RECEIVERS (default 20), WINDOW (acks in
// flight, default 32).
//
// parleyd runs `--protocol-test` (join / to-room handlers) behind a TCP
// relay that counts every byte each way; RECEIVERS socket.io-client
// (Node, `ws` with perMessageDeflate as socket.io-client does by default)
// join a room; one sender emits `to-room` with an ack, WINDOW in flight.
// Messages are JSON chat objects: 70 % short (40-200 B of text), 25 %
// medium (200-1500 B), 5 % long pastes (2-8 KB of log-like lines).

import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, '../tests/interop/package.json'));
const { io } = require('socket.io-client');
const PARLEYD = process.argv[2] || path.join(here, '../build/parleyd');
const MESSAGES = Number(process.env.MESSAGES || 5000);
const RECEIVERS = Number(process.env.RECEIVERS || 20);
const WINDOW = Number(process.env.WINDOW || 32);

let seed = 12345;
const rnd = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
const WORDS = 'the a to is it on we for that this deploy build test ok thanks yes no lunch meeting review merge branch fix bug today tomorrow please check link'.split(' ');
const USERS = ['alice', 'bob', 'carol', 'dave', 'erin', 'frank'];
function sentence(n) {
  let s = '';
  while (s.length < n) s += WORDS[Math.floor(rnd() * WORDS.length)] + ' ';
  return s.slice(0, n);
}
function logLines(n) {
  let s = '';
  for (let i = 0; s.length < n; i++) s += `2026-12-07T21:${String(i % 60).padStart(2, '0')}:0${i % 10}Z INFO worker[${i % 4}] request ${1000 + i} done in ${Math.floor(rnd() * 90)} ms\n`;
  return s.slice(0, n);
}
function message(i) {
  const r = rnd();
  const text = r < 0.7 ? sentence(40 + Math.floor(rnd() * 160))
    : r < 0.95 ? sentence(200 + Math.floor(rnd() * 1300)) : logLines(2000 + Math.floor(rnd() * 6000));
  return { id: `m${i}`, room: 'general', from: USERS[i % USERS.length], ts: 1796000000000 + i * 37, text, mentions: [] };
}

async function startParleyd(args) {
  const port = await new Promise((res) => { const s = net.createServer().listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => res(p)); }); });
  const child = spawn(PARLEYD, ['--listen', `127.0.0.1:${port}`, '--protocol-test', '--ping-interval', '25000', '--ping-timeout', '20000', '--limits', 'off', '--log-level', 'warn', ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise((res, rej) => {
    let out = '';
    child.stdout.on('data', (d) => { out += d; if (/listening on/.test(out)) res(); });
    child.on('exit', (c) => rej(new Error(`parleyd exited ${c}`)));
  });
  return { port, child };
}

async function relay(upstream) {
  const st = { up: 0, down: 0 };
  const socks = new Set();
  const server = net.createServer((c) => {
    const u = net.connect(upstream, '127.0.0.1');
    socks.add(c).add(u);
    c.on('data', (d) => { st.up += d.length; if (!u.write(d)) { c.pause(); u.once('drain', () => c.resume()); } });
    u.on('data', (d) => { st.down += d.length; if (!c.write(d)) { u.pause(); c.once('drain', () => u.resume()); } });
    const drop = () => { c.destroy(); u.destroy(); };
    c.on('error', drop); u.on('error', drop); c.on('close', drop); u.on('close', drop);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { port: server.address().port, st, close: () => { for (const s of socks) s.destroy(); server.close(); } };
}

/** parleyd's user+system CPU time in ms (Linux /proc). */
function cpuMs(pid) {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) * 10;
}

const connect = (port) => new Promise((res, rej) => {
  const s = io(`http://127.0.0.1:${port}`, { transports: ['websocket'], reconnection: false });
  s.once('connect', () => res(s));
  s.once('connect_error', rej);
});

async function run(label, args) {
  seed = 12345;
  const srv = await startParleyd(args);
  const rl = await relay(srv.port);
  const receivers = [];
  let got = 0;
  let done;
  const all = new Promise((r) => { done = r; });
  const total = MESSAGES * RECEIVERS;
  for (let i = 0; i < RECEIVERS; i++) {
    const s = await connect(rl.port);
    await s.emitWithAck('join', 'general');
    s.on('chat', () => { if (++got === total) done(); });
    s.on('disconnect', (why) => { if (got < total) { console.error(`${label}: a receiver left (${why})`); process.exit(1); } });
    receivers.push(s);
  }
  const sender = await connect(rl.port);
  const msgs = Array.from({ length: MESSAGES }, (_, i) => message(i));
  const payload = msgs.reduce((n, m) => n + JSON.stringify(m).length, 0);
  const base = { ...rl.st };
  const cpu0 = cpuMs(srv.child.pid);
  const t0 = process.hrtime.bigint();
  let next = 0;
  await new Promise((res) => {
    let inflight = 0;
    const pump = () => {
      while (inflight < WINDOW && next < MESSAGES) {
        inflight++;
        sender.emit('to-room', 'general', 'chat', msgs[next++], () => { inflight--; if (next < MESSAGES) pump(); else if (!inflight) res(); });
      }
    };
    pump();
  });
  await all;
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = cpuMs(srv.child.pid) - cpu0;
  const up = rl.st.up - base.up;
  const down = rl.st.down - base.down;
  for (const s of [...receivers, sender]) s.close();
  rl.close();
  srv.child.kill('SIGTERM');
  return { label, up, down, payload, secs, cpu, deliveries: total };
}

const rows = [];
for (const [label, args] of [['off', []], ['--compression (threshold 1024)', ['--compression']],
  ['--compression --compression-threshold 128', ['--compression', '--compression-threshold', '128']]]) {
  rows.push(await run(label, args));
}
console.log(`${MESSAGES} chat messages (${(rows[0].payload / MESSAGES).toFixed(0)} B of JSON on average) to ${RECEIVERS} receivers, ${WINDOW} in flight`);
console.log('| setting | bytes client->server | bytes server->clients | per delivery | deliveries/s | parleyd CPU per 1000 deliveries |');
console.log('|---|---|---|---|---|---|');
for (const r of rows) {
  console.log(`| ${r.label} | ${r.up} | ${r.down} (${(100 * r.down / rows[0].down).toFixed(1)} %) | ${(r.down / r.deliveries).toFixed(0)} B | ${Math.round(r.deliveries / r.secs)} | ${(1000 * r.cpu / r.deliveries).toFixed(2)} ms |`);
}
process.exit(0);
