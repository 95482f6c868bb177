// Shared plumbing of the interop tests: locating the programs under test,
// starting and stopping them, bounded waits, TLS material and payload
// generators. Every child process and socket created through this module is
// tracked so that a failing or hanging test cannot leave anything behind.

import { spawn, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, accessSync, constants as fsc } from 'node:fs';
import { tmpdir } from 'node:os';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const interopDir = path.resolve(here, '..');

/* ------------------------------------------------------------------ */
/* Dependencies                                                        */
/* ------------------------------------------------------------------ */

const BOOTSTRAP_HINT = 'run scripts/bootstrap from the repository root (it runs `npm ci` in tests/interop)';

/**
 * Loads the npm `ws` package. A static `import 'ws'` would fail at link time
 * with a bare "Cannot find package" error; this fails with instructions.
 */
export function loadWs() {
  return loadPinned('ws');
}

/**
 * Loads the npm package `name` after checking that the version pinned in
 * package.json is the one installed, failing with instructions otherwise.
 */
export async function loadPinned(name) {
  checkPinned(name);
  return import(name);
}

/** Throws with instructions unless node_modules has the pinned `name`. */
export function checkPinned(name) {
  const pkgFile = path.join(interopDir, 'node_modules', name, 'package.json');
  if (!existsSync(pkgFile)) {
    throw new Error(`interop: tests/interop/node_modules/${name} is missing: ${BOOTSTRAP_HINT}`);
  }
  const wanted = JSON.parse(readFileSync(path.join(interopDir, 'package.json'), 'utf8')).dependencies[name];
  const installed = JSON.parse(readFileSync(pkgFile, 'utf8')).version;
  if (installed !== wanted) {
    throw new Error(`interop: ${name} ${installed} is installed but package.json pins ${wanted}: ${BOOTSTRAP_HINT}`);
  }
  return path.dirname(pkgFile);
}

/** Path of a program under test, from the environment variable `name`. */
export function program(name) {
  const file = process.env[name];
  if (!file) {
    throw new Error(`interop: environment variable ${name} is not set; run these tests through ctest ` +
      `(ctest -L interop), or set ${name} to the built binary`);
  }
  try {
    accessSync(file, fsc.X_OK);
  } catch {
    throw new Error(`interop: ${name}=${file} is not an executable file (build the project first)`);
  }
  return file;
}

/* ------------------------------------------------------------------ */
/* Bounded waiting                                                     */
/* ------------------------------------------------------------------ */

/** Scales every hang-protection timeout, e.g. for valgrind runs. */
const SCALE = Number(process.env.PARLEY_INTEROP_TIMEOUT_SCALE) || 1;
export const scaled = (ms) => Math.round(ms * SCALE);

/** Rejects with a message naming `what` if `promise` has not settled in `ms`. */
export function withTimeout(promise, ms, what) {
  let timer;
  const limit = scaled(ms);
  const expiry = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${limit} ms waiting for ${what}`)), limit);
  });
  return Promise.race([promise, expiry]).finally(() => clearTimeout(timer));
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * An unbounded FIFO whose consumers wait with a timeout. Producers push
 * values; `fail` makes every current and future wait reject (used when the
 * source closes, so a waiting test fails at once instead of timing out).
 */
export class Queue {
  constructor(name) {
    this.name = name;
    this.items = [];
    this.waiters = [];
    this.error = null;
  }

  push(value) {
    const w = this.waiters.shift();
    if (w) w.resolve(value);
    else this.items.push(value);
  }

  fail(err) {
    if (this.error) return;
    this.error = err;
    for (const w of this.waiters.splice(0)) w.reject(err);
  }

  get length() {
    return this.items.length;
  }

  next(ms = 10000, what = `the next ${this.name}`) {
    if (this.items.length) return Promise.resolve(this.items.shift());
    if (this.error) return Promise.reject(this.error);
    let waiter;
    const p = new Promise((resolve, reject) => {
      waiter = { resolve, reject };
      this.waiters.push(waiter);
    });
    return withTimeout(p, ms, what).catch((err) => {
      const i = this.waiters.indexOf(waiter);
      if (i >= 0) this.waiters.splice(i, 1);
      throw err;
    });
  }
}

/* ------------------------------------------------------------------ */
/* Resource tracking and cleanup                                       */
/* ------------------------------------------------------------------ */

const children = new Set();
const closers = new Set();
const tempDirs = new Set();

/** Registers a function run by cleanup() (sockets, servers, clients). */
export function onCleanup(fn) {
  closers.add(fn);
  return () => closers.delete(fn);
}

/**
 * Kills every child still running and closes every tracked resource. Called
 * from each test file's top-level after() hook; also runs at process exit so
 * a crash of the test process leaves no parleyd behind.
 */
export async function cleanup() {
  for (const fn of [...closers]) {
    closers.delete(fn);
    try {
      await fn();
    } catch {
      /* best effort: the resource may already be gone */
    }
  }
  await Promise.all([...children].map((c) => killChild(c)));
  for (const d of tempDirs) rmSync(d, { recursive: true, force: true });
  tempDirs.clear();
}

process.on('exit', () => {
  for (const c of children) {
    try {
      c.kill('SIGKILL');
    } catch {
      /* already gone */
    }
  }
  for (const d of tempDirs) rmSync(d, { recursive: true, force: true });
});

/* Killed from outside (ctest timeout, Ctrl-C): take the children along. */
for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP']) {
  process.once(sig, () => {
    process.exitCode = 128 + (sig === 'SIGTERM' ? 15 : sig === 'SIGINT' ? 2 : 1);
    process.exit();
  });
}

function exited(child) {
  return child.exitCode !== null || child.signalCode !== null;
}

async function killChild(child) {
  if (exited(child)) return;
  child.kill('SIGKILL');
  await withTimeout(child.exitPromise, 5000, `pid ${child.pid} to die after SIGKILL`).catch(() => {});
}

/** Spawns a tracked child whose output is collected. */
function spawnTracked(file, args, label) {
  const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  child.label = label;
  child.stdoutText = '';
  child.stderrText = '';
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stdout.on('data', (d) => {
    child.stdoutText += d;
  });
  child.stderr.on('data', (d) => {
    child.stderrText += d;
  });
  child.exitPromise = new Promise((resolve) => {
    child.once('error', (err) => {
      child.spawnError = err;
      resolve({ code: null, signal: null, error: err });
    });
    /* 'close' rather than 'exit': it waits for stdout/stderr to drain. */
    child.once('close', (code, signal) => resolve({ code, signal }));
  });
  children.add(child);
  child.exitPromise.then(() => children.delete(child));
  return child;
}

/** The last lines of a child's stderr, for assertion messages. */
export function stderrTail(child, lines = 30) {
  const all = child.stderrText.trimEnd().split('\n');
  const tail = all.slice(-lines).join('\n');
  return tail ? `\n--- ${child.label} stderr (last ${lines} lines) ---\n${tail}\n---` : ` (${child.label} wrote nothing to stderr)`;
}

/* ------------------------------------------------------------------ */
/* parleyd                                                             */
/* ------------------------------------------------------------------ */

const READY_RE = /^parleyd listening on 127\.0\.0\.1:(\d+)\r?$/m;

/**
 * Starts `parleyd --listen <listen> --ws-echo <wsPath> ...args` and waits
 * for its ready line (wsPath null: no --ws-echo; listen defaults to any
 * free port, a fixed one is for restarting on the same port; limits 'off'
 * (default) adds `--limits off`). Returns { port, child, args, stop() }.
 */
/**
 * A free loopback port below the kernel's ephemeral range (32768 and up by
 * default). Servers that a test restarts "on the same port" take one: a
 * port from the ephemeral range could meanwhile become the source port of
 * another test's outgoing connection, and the restart would fail to bind.
 */
export async function lowFreePort() {
  for (let i = 0; i < 200; i++) {
    const port = 20000 + Math.floor(Math.random() * 12000);
    const ok = await new Promise((resolve) => {
      const srv = net.createServer();
      srv.once('error', () => resolve(false));
      srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
    });
    if (ok) return port;
  }
  throw new Error('no free port below 32000');
}

export async function startParleyd(args = [], { wsPath = '/echo', listen = '127.0.0.1:0', limits = 'off' } = {}) {
  if (listen.endsWith(':0')) listen = `${listen.slice(0, -2)}:${await lowFreePort()}`;
  const bin = program('PARLEYD');
  /* Functional tests run with the abuse limits lifted (hundreds of
   * clients from one address, bursts of messages); hostile.test.mjs runs
   * the defaults (limits: 'on'). */
  const fullArgs = ['--listen', listen, ...(wsPath === null ? [] : ['--ws-echo', wsPath]),
    ...(limits === 'off' ? ['--limits', 'off'] : []), ...args];
  const child = spawnTracked(bin, fullArgs, `parleyd ${fullArgs.join(' ')}`);
  const ready = new Promise((resolve, reject) => {
    const look = () => {
      const m = READY_RE.exec(child.stdoutText);
      if (m) {
        child.stdout.off('data', look);
        resolve(Number(m[1]));
      }
    };
    child.stdout.on('data', look);
    child.exitPromise.then(({ code, signal, error }) => {
      reject(new Error(`${child.label} ${error ? `could not start: ${error.message}` : `exited (code ${code}, signal ${signal})`} ` +
        `before printing "parleyd listening on 127.0.0.1:PORT"; stdout: ${JSON.stringify(child.stdoutText)}${stderrTail(child)}`));
    });
  });
  let port;
  try {
    port = await withTimeout(ready, 15000, `"${child.label}" to print its ready line (stdout so far: ${JSON.stringify(child.stdoutText)})`);
  } catch (err) {
    await killChild(child);
    throw err;
  }
  return {
    port,
    child,
    args: fullArgs,
    alive: () => !exited(child),
    /** SIGTERM, then waits for the exit; returns { code, signal }. */
    async stop(signal = 'SIGTERM') {
      if (!exited(child)) child.kill(signal);
      try {
        return await withTimeout(child.exitPromise, 10000, `${child.label} to exit after ${signal}`);
      } catch (err) {
        await killChild(child);
        throw err;
      }
    },
    stderr: () => stderrTail(child),
  };
}

/* ------------------------------------------------------------------ */
/* parley                                                              */
/* ------------------------------------------------------------------ */

/**
 * Runs `parley ...args`. Returns { child, done } where done resolves to
 * { code, signal, stdout, stderr } once it exits; it is killed (and done
 * rejects) if it runs longer than timeoutMs.
 */
export function runParley(args, { timeoutMs = 60000 } = {}) {
  const bin = program('PARLEY');
  const child = spawnTracked(bin, args, `parley ${args.join(' ')}`);
  const done = withTimeout(child.exitPromise, timeoutMs, `"${child.label}" to exit`)
    .then(({ code, signal, error }) => {
      if (error) throw new Error(`${child.label} could not start: ${error.message}`);
      return { code, signal, stdout: child.stdoutText, stderr: child.stderrText };
    })
    .catch(async (err) => {
      await killChild(child);
      throw new Error(`${err.message}${stderrTail(child)}`);
    });
  /* Callers may await other things first; never leave this unhandled. */
  done.catch(() => {});
  return { child, done, alive: () => !exited(child), stderr: () => stderrTail(child) };
}

/* ------------------------------------------------------------------ */
/* TLS material                                                        */
/* ------------------------------------------------------------------ */

/** A fresh temporary directory, removed at cleanup. */
export function tempDir() {
  const d = mkdtempSync(path.join(tmpdir(), 'parley-interop-'));
  tempDirs.add(d);
  return d;
}

/**
 * Makes a self-signed certificate with the openssl CLI. san is an
 * openssl subjectAltName value. Returns { certFile, keyFile, cert, key }.
 */
export function makeSelfSignedCert(dir, name, { cn = 'localhost', san = 'DNS:localhost,IP:127.0.0.1' } = {}) {
  const certFile = path.join(dir, `${name}.crt`);
  const keyFile = path.join(dir, `${name}.key`);
  try {
    execFileSync('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', keyFile, '-out', certFile, '-days', '2', '-subj', `/CN=${cn}`,
      '-addext', `subjectAltName=${san}`,
    ], { stdio: ['ignore', 'pipe', 'pipe'], timeout: scaled(30000) });
  } catch (err) {
    throw new Error(`interop: openssl could not make a test certificate (${BOOTSTRAP_HINT} installs openssl): ` +
      `${err.message}\n${err.stderr ?? ''}`);
  }
  return { certFile, keyFile, cert: readFileSync(certFile), key: readFileSync(keyFile) };
}

/* ------------------------------------------------------------------ */
/* Payloads and comparisons                                            */
/* ------------------------------------------------------------------ */

/** Exactly n random bytes. */
export const randomBinary = (n) => randomBytes(n);

/**
 * Random bytes from a 16-symbol alphabet: random, but deflate halves them,
 * for big messages over deflate whose compressed frame must stay under the
 * 16 MiB frame limit (random data grows slightly when deflated).
 */
export function randomLowEntropy(n) {
  const b = randomBytes(n);
  for (let i = 0; i < n; i++) b[i] &= 0x0f;
  return b;
}

/**
 * Valid UTF-8 of exactly n bytes made of random code points of every
 * encoded length (1 to 4 bytes), returned as a Buffer. With hex: only
 * random hex digits (compressible, see randomLowEntropy).
 */
export function randomText(n, { hex = false } = {}) {
  if (hex) return Buffer.from(randomBytes(Math.ceil(n / 2)).toString('hex').slice(0, n), 'latin1');
  const out = Buffer.allocUnsafe(n);
  let pool = randomBytes(65536);
  let p = 0;
  const rb = () => {
    if (p === pool.length) {
      pool = randomBytes(65536);
      p = 0;
    }
    return pool[p++];
  };
  let i = 0;
  while (i < n) {
    const len = Math.min(n - i, 1 + (rb() & 3));
    const x = (rb() << 16) | (rb() << 8) | rb();
    if (len === 1) {
      out[i++] = 0x20 + (x % 0x5f);
    } else if (len === 2) {
      const cp = 0x80 + (x % 0x780);
      out[i++] = 0xc0 | (cp >> 6);
      out[i++] = 0x80 | (cp & 0x3f);
    } else if (len === 3) {
      let cp = 0x800 + (x % 0xf000);
      if (cp >= 0xd800) cp += 0x800; /* skip the surrogates */
      out[i++] = 0xe0 | (cp >> 12);
      out[i++] = 0x80 | ((cp >> 6) & 0x3f);
      out[i++] = 0x80 | (cp & 0x3f);
    } else {
      const cp = 0x10000 + (x % 0x100000);
      out[i++] = 0xf0 | (cp >> 18);
      out[i++] = 0x80 | ((cp >> 12) & 0x3f);
      out[i++] = 0x80 | ((cp >> 6) & 0x3f);
      out[i++] = 0x80 | (cp & 0x3f);
    }
  }
  return out;
}

/** Highly compressible text of exactly n bytes. */
export function compressibleText(n) {
  const unit = 'Parley says hello to the world of WebSockets. ';
  return Buffer.from(unit.repeat(Math.ceil(n / unit.length)).slice(0, n), 'latin1');
}

/**
 * Asserts two byte sequences are equal without handing megabytes to
 * assert's diff: reports the length or the first differing offset.
 */
export function assertSameBytes(actual, expected, what) {
  const a = Buffer.isBuffer(actual) ? actual : Buffer.from(actual);
  const e = Buffer.isBuffer(expected) ? expected : Buffer.from(expected);
  if (a.length !== e.length) {
    throw new Error(`${what}: got ${a.length} bytes, expected ${e.length}`);
  }
  if (!a.equals(e)) {
    let i = 0;
    while (a[i] === e[i]) i++;
    const show = (b) => b.subarray(i, i + 16).toString('hex');
    throw new Error(`${what}: bytes differ from offset ${i}: got ${show(a)}…, expected ${show(e)}…`);
  }
}

export const MiB = 1024 * 1024;
