// A fault-injection TCP proxy for the interop tests: put it between a
// client under test and a server, then break the network on purpose.
//
//   import { startProxy } from './lib/proxy.mjs';
//   const proxy = await startProxy({ port: server.port });   // target
//   connect the client to 127.0.0.1:proxy.port
//
// API (all methods synchronous unless they return a promise):
//   startProxy({ host = '127.0.0.1', port })  -> Promise<Proxy>; listens on
//       127.0.0.1 with an OS-chosen port (proxy.port). The proxy is closed
//       by the harness's cleanup() if the test does not close it.
//   proxy.port                the port clients connect to
//   proxy.setTarget(port, host = '127.0.0.1')
//                             where new connections go (e.g. a server
//                             restarted on another port); current
//                             connections keep their upstream
//   proxy.pause()             black hole: stop forwarding in both
//                             directions without closing anything, as a
//                             dead network would. Bytes already read are
//                             held, reading stops (so TCP flow control
//                             backs up to both peers), and new connections
//                             are accepted but not connected upstream.
//   proxy.resume()            forward again: held bytes go out first, held
//                             new connections are connected upstream
//   proxy.drop()              resets every current connection (RST to the
//                             client and to the server); returns how many
//   proxy.refuse(on = true)   new connections are reset at once (the
//                             listener stays bound, so the port cannot be
//                             taken by someone else); refuse(false) undoes
//   proxy.accepted            connections accepted and forwarded (or held)
//   proxy.refused             connections reset because of refuse()
//   proxy.active              connections currently open
//   proxy.bytesUp / bytesDown bytes forwarded client->server / server->client
//   proxy.connections         Queue (lib/harness.mjs) receiving { id, at }
//                             for each accepted connection: await
//                             proxy.connections.next(ms) to wait for one
//   proxy.waitActive(n, ms)   resolves when exactly n connections are open
//   proxy.close()             stops listening and destroys every connection
//
// Upstream failures (nothing listening at the target, a reset from the
// server) are passed on to the client as a reset, and the other way round,
// so each side sees what it would see without the proxy.

import net from 'node:net';
import { onCleanup, Queue, withTimeout, sleep } from './harness.mjs';

class Pair {
  constructor(proxy, client) {
    this.proxy = proxy;
    this.client = client;
    this.server = null;
    this.held = { up: [], down: [] };
    this.closed = false;
    this.open = 1; /* sockets not yet closed */
    this.watch(client, () => this.server);
  }

  /* A FIN goes on as a FIN, an error or reset as a reset; the pair is done
   * when both sockets are closed. */
  watch(sock, other) {
    sock.on('error', () => this.reset());
    sock.on('end', () => {
      const o = other();
      if (!this.closed && o && !o.destroyed) o.end();
    });
    sock.on('close', (hadError) => {
      if (hadError) {
        this.reset();
        return;
      }
      if (--this.open === 0 || !other()) this.finish();
    });
  }

  /* Connects upstream (at once, or on resume when paused). */
  start() {
    const p = this.proxy;
    const server = net.connect({ host: p.target.host, port: p.target.port, allowHalfOpen: true });
    this.server = server;
    this.open++;
    server.setNoDelay(true);
    this.client.setNoDelay(true);
    this.wire(this.client, server, 'up');
    this.wire(server, this.client, 'down');
    this.watch(server, () => this.client);
    if (p.paused) this.freeze();
    else this.client.resume();
  }

  wire(from, to, dir) {
    from.on('data', (chunk) => {
      if (this.proxy.paused) {
        this.held[dir].push(chunk);
        from.pause();
        return;
      }
      this.forward(from, to, dir, chunk);
    });
  }

  forward(from, to, dir, chunk) {
    if (this.closed || to.destroyed) return;
    if (dir === 'up') this.proxy.bytesUp += chunk.length;
    else this.proxy.bytesDown += chunk.length;
    if (!to.write(chunk)) {
      from.pause();
      to.once('drain', () => {
        if (!this.proxy.paused) from.resume();
      });
    }
  }

  freeze() {
    this.client.pause();
    this.server?.pause();
  }

  thaw() {
    if (this.closed) return;
    if (!this.server) {
      this.start();
      return;
    }
    for (const [dir, from, to] of [['up', this.client, this.server], ['down', this.server, this.client]]) {
      const chunks = this.held[dir].splice(0);
      for (const c of chunks) this.forward(from, to, dir, c);
      if (to.writableNeedDrain) continue; /* 'drain' resumes it */
      from.resume();
    }
  }

  finish() {
    if (this.closed) return;
    this.closed = true;
    this.proxy.pairs.delete(this);
    this.proxy.activeChanged();
  }

  /* RST both ways; idempotent. */
  reset() {
    if (this.closed) return;
    for (const s of [this.client, this.server]) {
      if (s && !s.destroyed) s.resetAndDestroy();
    }
    this.finish();
  }
}

export async function startProxy({ host = '127.0.0.1', port }) {
  if (!port) throw new Error('startProxy: a target port is required');
  const proxy = {
    target: { host, port },
    paused: false,
    refusing: false,
    accepted: 0,
    refused: 0,
    bytesUp: 0,
    bytesDown: 0,
    pairs: new Set(),
    connections: new Queue('connection accepted by the proxy'),
    activeWaiters: [],
    port: 0,
    get active() {
      return this.pairs.size;
    },
    setTarget(p, h = '127.0.0.1') {
      this.target = { host: h, port: p };
    },
    pause() {
      this.paused = true;
      for (const pair of this.pairs) pair.freeze();
    },
    resume() {
      this.paused = false;
      for (const pair of [...this.pairs]) pair.thaw();
    },
    drop() {
      const n = this.pairs.size;
      for (const pair of [...this.pairs]) pair.reset();
      return n;
    },
    refuse(on = true) {
      this.refusing = on;
    },
    activeChanged() {
      for (const w of this.activeWaiters.splice(0)) {
        if (this.pairs.size === w.n) w.resolve();
        else this.activeWaiters.push(w);
      }
    },
    waitActive(n, ms = 10000) {
      if (this.pairs.size === n) return Promise.resolve();
      const p = new Promise((resolve) => this.activeWaiters.push({ n, resolve }));
      return withTimeout(p, ms, `${n} open connection(s) through the proxy (now ${this.pairs.size})`);
    },
    async close() {
      this.drop();
      await new Promise((resolve) => server.close(() => resolve()));
      /* Let the resets reach the peers before the caller moves on. */
      await sleep(10);
    },
  };
  const server = net.createServer({ pauseOnConnect: true, allowHalfOpen: true }, (client) => {
    client.on('error', () => {});
    if (proxy.refusing) {
      proxy.refused++;
      client.resetAndDestroy();
      return;
    }
    proxy.accepted++;
    const pair = new Pair(proxy, client);
    proxy.pairs.add(pair);
    proxy.connections.push({ id: proxy.accepted, at: Date.now() });
    proxy.activeChanged();
    if (proxy.paused) return; /* held: connected upstream on resume */
    pair.start();
  });
  await withTimeout(new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  }), 5000, 'the proxy to listen');
  proxy.port = server.address().port;
  onCleanup(() => proxy.close());
  return proxy;
}
