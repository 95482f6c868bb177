// The libparley Socket.IO client under test, as a child process
// (tests/interop/sio_driver.c, handed over in SIO_DRIVER): JSON commands
// on its stdin, every event it reports on its stdout. Also the peers the
// driver tests need besides parleyd: the npm socket.io reference server in
// a child process (so that it can be killed), and a TCP proxy that can cut
// every connection or refuse new ones.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { checkPinned, lowFreePort, onCleanup, program, scaled, stderrTail, withTimeout } from './harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));

/** Spawns a child whose stdout lines are collected; killed at cleanup. */
function spawnLines(file, args, label, env = {}) {
  const child = spawn(file, args, { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  child.label = label;
  child.stderrText = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d) => {
    child.stderrText += d;
    if (child.stderrText.length > 200000) child.stderrText = child.stderrText.slice(-100000);
  });
  child.lines = [];
  child.waiters = [];
  let partial = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (d) => {
    partial += d;
    let i;
    while ((i = partial.indexOf('\n')) >= 0) {
      const line = partial.slice(0, i);
      partial = partial.slice(i + 1);
      child.lines.push(line);
      for (const w of child.waiters.splice(0)) w();
    }
  });
  // A child that dies makes the next write to its stdin fail with EPIPE;
  // the death itself is what a test reports (with its signal), below.
  child.stdin.on('error', () => {});
  child.exited = new Promise((resolve) => child.once('close', (code, signal) => resolve({ code, signal })));
  child.exited.then(({ code, signal }) => {
    child.dead = true;
    child.how = signal ? `killed by ${signal}` : `exit code ${code}`;
    for (const w of child.waiters.splice(0)) w();
  });
  onCleanup(() => {
    if (!child.dead) child.kill('SIGKILL');
  });
  return child;
}

/** Waits until pred(lines) returns a value other than undefined. */
async function waitLines(child, pred, ms, what) {
  const deadline = Date.now() + scaled(ms);
  for (;;) {
    const v = pred();
    if (v !== undefined) return v;
    if (child.dead) throw new Error(`${child.label} exited (${child.how}) while waiting for ${what}${stderrTail(child)}`);
    const left = deadline - Date.now();
    if (left <= 0) throw new Error(`timed out after ${scaled(ms)} ms waiting for ${what}${stderrTail(child)}`);
    await new Promise((resolve) => {
      const t = setTimeout(resolve, Math.min(left, 200));
      child.waiters.push(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }
}

let driverCount = 0;

/**
 * One sio_driver process. Events are kept in order; `next(match)` takes
 * the first not yet taken that matches (an object of expected fields or a
 * function), so a test can assert order by taking in order.
 */
export class Driver {
  constructor(label = `driver ${++driverCount}`, env = {}) {
    this.child = spawnLines(program('SIO_DRIVER'), [], label, env);
    this.events = [];
    this.taken = new Set();
    this.seen = 0;
  }

  parse() {
    const lines = this.child.lines;
    while (this.seen < lines.length) {
      const line = lines[this.seen++];
      try {
        this.events.push(JSON.parse(line));
      } catch {
        this.events.push({ ev: 'garbage', line });
      }
    }
  }

  static matches(e, m) {
    if (typeof m === 'function') return m(e);
    return Object.entries(m).every(([k, v]) => (typeof v === 'object' && v !== null ? JSON.stringify(e[k]) === JSON.stringify(v) : e[k] === v));
  }

  /** All events so far matching m (not consuming). */
  all(m) {
    this.parse();
    return this.events.filter((e) => Driver.matches(e, m));
  }

  async next(m, ms = 5000, what = JSON.stringify(m)) {
    return waitLines(this.child, () => {
      this.parse();
      for (let i = 0; i < this.events.length; i++) {
        if (this.taken.has(i)) continue;
        if (Driver.matches(this.events[i], m)) {
          this.taken.add(i);
          return this.events[i];
        }
      }
      return undefined;
    }, ms, `${what} from ${this.child.label}`);
  }

  /** Sends a command and returns its rc. */
  async cmd(c, ms = 10000) {
    if (this.child.dead) throw new Error(`${this.child.label} is gone (${this.child.how})${stderrTail(this.child)}`);
    this.child.stdin.write(`${JSON.stringify(c)}\n`);
    const done = await this.next({ ev: 'done', cmd: c.cmd }, ms, `the answer to ${c.cmd}`);
    return done.rc;
  }

  async ok(c, ms) {
    const rc = await this.cmd(c, ms);
    assert.equal(rc, 0, `${c.cmd} ${JSON.stringify(c).slice(0, 200)} returned ${rc}`);
  }

  /** The next application event `name` on nsp; returns { args, bins, ack }. */
  async event(name, nsp = '/', ms = 5000) {
    return this.next({ ev: 'event', event: name, nsp }, ms, `event "${name}" on ${nsp}`);
  }

  kill(signal = 'SIGKILL') {
    this.child.kill(signal);
    return this.child.exited;
  }

  stderr() {
    return stderrTail(this.child);
  }
}

/** base64 helpers for binary arguments. */
export const b64 = (buf) => Buffer.from(buf).toString('base64');
export const unb64 = (s) => Buffer.from(s, 'base64');

/* ------------------------------------------------------------------ */
/* The npm socket.io reference server, in a child process              */
/* ------------------------------------------------------------------ */

/**
 * Starts lib/ref_server.mjs (socket.io 4.8 with the --protocol-test
 * handlers) on port (0 = any). Its stdout lines ("R <id>" for each
 * receipt of a reliable message) are in .child.lines.
 */
export async function startRefServer({ port = 0, recovery = false, pmd = false } = {}) {
  if (port === 0) port = await lowFreePort(); /* restarted on it by some tests */
  checkPinned('socket.io');
  const child = spawnLines(process.execPath, [path.join(here, 'ref_server.mjs'), String(port), recovery ? 'recovery' : '', ...(pmd ? ['pmd'] : [])],
    `socket.io reference server${recovery ? ' (recovery)' : ''}`);
  const p = await waitLines(child, () => {
    for (const l of child.lines) {
      const m = /^listening (\d+)$/.exec(l);
      if (m) return Number(m[1]);
    }
    return undefined;
  }, 10000, 'the reference server to listen');
  return {
    port: p,
    child,
    receipts: () => child.lines.filter((l) => l.startsWith('R ')).map((l) => l.slice(2)),
    async kill() {
      if (!child.dead) child.kill('SIGKILL');
      await withTimeout(child.exited, 5000, 'the reference server to die');
    },
  };
}

/* ------------------------------------------------------------------ */
/* A TCP proxy that can cut or refuse                                   */
/* ------------------------------------------------------------------ */

export async function startProxy(upstreamPort) {
  const pairs = new Set();
  let refuse = false;
  const server = net.createServer((c) => {
    if (refuse) {
      c.destroy();
      return;
    }
    const u = net.connect(upstreamPort(), '127.0.0.1');
    const pair = { c, u };
    pairs.add(pair);
    const drop = () => {
      pairs.delete(pair);
      c.destroy();
      u.destroy();
    };
    c.on('error', drop);
    u.on('error', drop);
    c.on('close', drop);
    u.on('close', drop);
    c.pipe(u);
    u.pipe(c);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const close = () => new Promise((resolve) => {
    for (const p of pairs) {
      p.c.destroy();
      p.u.destroy();
    }
    server.close(() => resolve());
  });
  onCleanup(close);
  return {
    port: server.address().port,
    /** Resets every proxied connection (a transport error for both ends). */
    cut() {
      for (const p of [...pairs]) {
        p.c.resetAndDestroy();
        p.u.resetAndDestroy();
      }
      pairs.clear();
    },
    set refuse(v) {
      refuse = v;
    },
    close,
  };
}
