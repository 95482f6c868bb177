// A scratch redis-server for the interop tests: a free low port, no
// persistence, a temporary directory; killed at cleanup.
//
//   const redis = await startRedis();   // { port, url, kill(), restart() }

import { execFileSync, spawn } from 'node:child_process';
import { lowFreePort, onCleanup, scaled, tempDir, withTimeout } from './harness.mjs';

export function requireRedis() {
  try {
    execFileSync('redis-server', ['--version'], { stdio: 'pipe' });
  } catch {
    throw new Error('interop: redis-server is not installed: run scripts/bootstrap ' +
      '(it installs the Debian package redis-server) or `apt-get install redis-server`');
  }
}

export async function startRedis() {
  requireRedis();
  const port = await lowFreePort();
  const dir = tempDir();
  const r = { port, url: `redis://127.0.0.1:${port}`, child: null };
  r.start = async () => {
    const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1',
      '--save', '', '--appendonly', 'no', '--dir', dir], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.exited = new Promise((resolve) => child.once('exit', resolve));
    const ready = new Promise((resolve, reject) => {
      child.stdout.on('data', (d) => {
        out += d;
        if (/Ready to accept connections/.test(out)) resolve();
      });
      child.exited.then((code) => reject(new Error(`redis-server exited (${code}): ${out}`)));
    });
    await withTimeout(ready, scaled(10000), 'redis-server to start');
    r.child = child;
  };
  r.kill = async () => {
    const c = r.child;
    if (!c) return;
    r.child = null;
    c.kill('SIGKILL');
    await withTimeout(c.exited, 5000, 'redis-server to die');
  };
  r.restart = async () => {
    await r.kill();
    await r.start();
  };
  onCleanup(() => r.kill());
  process.on('exit', () => r.child?.kill('SIGKILL')); // a crashed test leaves none behind
  await r.start();
  return r;
}
