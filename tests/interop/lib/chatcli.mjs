// The libparley messaging client under test, as `parley chat` child
// processes (include/parley/chat.h behind src/prog/chat_cli.c): commands
// on stdin, one JSON event per stdout line. Each process is one device.

import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { onCleanup, program, scaled, stderrTail, tempDir } from './harness.mjs';
import { makeToken } from './chat.mjs';

let count = 0;

export class ChatCli {
  /**
   * server: a startChatServer() handle (or { port }); user: the user id.
   * token: 'file' (default: a fresh valid token in a file re-read on every
   * connection; setToken() replaces it), a token string, or null for
   * --dev-auth. queueFile: --queue-file. transport: websocket | polling | both.
   */
  constructor(server, user, { token = 'file', queueFile, transport = 'websocket', extra = [], label } = {}) {
    this.user = user;
    this.label = label ?? `parley chat ${user}#${++count}`;
    this.events = [];
    this.waiters = [];
    const args = [`http://127.0.0.1:${server.port}`, '--user', user, '--reconnect-delay', '50',
      '--reconnect-delay-max', '300', '--transport', transport, ...extra];
    if (token === 'file') {
      this.tokenFile = path.join(tempDir(), `${user}.jwt`);
      this.setToken(makeToken(user));
      args.push('--token-file', this.tokenFile);
    } else if (token === null) {
      args.push('--dev-auth');
    } else {
      args.push('--token', token);
    }
    if (queueFile) args.push('--queue-file', queueFile);
    const child = spawn(program('PARLEY'), ['chat', ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.child = child;
    child.label = this.label;
    child.stderrText = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (d) => {
      child.stderrText = (child.stderrText + d).slice(-100000);
    });
    let partial = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (d) => {
      partial += d;
      let i;
      while ((i = partial.indexOf('\n')) >= 0) {
        const line = partial.slice(0, i);
        partial = partial.slice(i + 1);
        let ev;
        try {
          ev = JSON.parse(line);
        } catch {
          ev = { ev: 'unparsable', line };
        }
        ev.at = Date.now();
        this.events.push(ev);
      }
      for (const w of this.waiters.splice(0)) w();
    });
    child.stdin.on('error', () => {});
    this.exited = new Promise((resolve) => child.once('close', (code, signal) => resolve({ code, signal })));
    this.exited.then(() => {
      this.dead = true;
      for (const w of this.waiters.splice(0)) w();
    });
    onCleanup(() => {
      if (!this.dead) child.kill('SIGKILL');
    });
  }

  setToken(token) {
    writeFileSync(this.tokenFile, token);
  }

  cmd(line) {
    this.child.stdin.write(`${line}\n`);
  }

  /** Events of kind `ev` (optionally filtered by pred). */
  all(ev, pred = () => true) {
    return this.events.filter((e) => e.ev === ev && pred(e));
  }

  /** Waits until fn() returns something other than undefined/false. */
  async until(fn, ms = 10000, what = 'a condition') {
    const deadline = Date.now() + scaled(ms);
    for (;;) {
      const v = fn();
      if (v !== undefined && v !== false) return v;
      if (this.dead) throw new Error(`${this.label} exited while waiting for ${what}${stderrTail(this.child)}`);
      const left = deadline - Date.now();
      if (left <= 0) {
        const tail = this.events.slice(-8).map((e) => JSON.stringify(e)).join('\n  ');
        throw new Error(`${this.label}: timed out after ${scaled(ms)} ms waiting for ${what}; last events:\n  ${tail}${stderrTail(this.child)}`);
      }
      await new Promise((resolve) => {
        const t = setTimeout(resolve, Math.min(left, 100));
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** Waits for the n-th event (1-based, counting from the start) of kind ev matching pred. */
  async nth(ev, n = 1, pred = () => true, ms = 10000) {
    return this.until(() => this.all(ev, pred)[n - 1], ms, `${n} "${ev}" event(s)`);
  }

  online(ms = 10000) {
    return this.until(() => this.lastState() === 'online', ms, 'state online');
  }

  lastState() {
    return this.all('state').at(-1)?.state;
  }

  /** Sends a text; resolves to its client id (from the "queued" event). */
  async send(target, text) {
    const before = this.all('queued').length + this.all('error').length;
    this.cmd(`send ${target} ${text}`);
    await this.until(() => this.all('queued').length + this.all('error').length > before, 5000, 'the send to be queued');
    const e = [...this.all('queued'), ...this.all('error')].sort((a, b) => a.at - b.at).at(-1);
    if (e.ev === 'error') throw new Error(`${this.label}: send refused: ${JSON.stringify(e)}`);
    return this.all('queued').at(-1).client_id;
  }

  /** Issues a command whose answer is one event of kind ev; returns it. */
  async request(line, ev, ms = 10000) {
    const before = this.all(ev).length;
    this.cmd(line);
    return this.nth(ev, before + 1, () => true, ms);
  }

  /** The statuses reported for client id, in order. */
  statuses(id) {
    return this.all('status', (e) => e.client_id === id).map((e) => e.status);
  }

  /** Ends the process cleanly; it must exit 0 (a sanitizer report would not). */
  async quit() {
    this.cmd('quit');
    this.child.stdin.end();
    const r = await this.exited;
    if (r.code !== 0) throw new Error(`${this.label} exited with ${JSON.stringify(r)}${stderrTail(this.child)}`);
    return r;
  }

  kill() {
    this.child.kill('SIGKILL');
    return this.exited;
  }
}
