// The npm socket.io reference server with the handlers of
// `parleyd --protocol-test` (docs/PROTOCOL.md), run as a child process by
// lib/driver.mjs so that a test can kill it and start it again on the same
// port. Usage: node ref_server.mjs PORT [recovery] [pmd]. Prints "listening
// PORT" when ready and "R <id>" for every receipt of a "reliable" message
// (arguments [id, priority, ...], acknowledged with [id]).

import http from 'node:http';
import { Server } from 'socket.io';

const port = Number(process.argv[2] || 0);
const recovery = process.argv[3] === 'recovery';
/* 'pmd': perMessageDeflate with socket.io's documented threshold. */
const pmd = process.argv.includes('pmd');

const httpServer = http.createServer();
const io = new Server(httpServer, {
  pingInterval: 300,
  pingTimeout: 200,
  connectTimeout: 1000,
  maxHttpBufferSize: 1e6,
  cors: { origin: '*' },
  ...(pmd ? { perMessageDeflate: { threshold: 1024 } } : {}),
  ...(recovery ? { connectionStateRecovery: { maxDisconnectionDuration: 120000, skipMiddlewares: true } } : {}),
});

function root(socket) {
  socket.emit('auth', socket.handshake.auth ?? {});
  socket.on('message', (...args) => socket.emit('message-back', ...args));
  socket.on('message-with-ack', (...args) => {
    const ack = args.pop();
    if (typeof ack === 'function') ack(...args);
  });
  socket.on('join', (room, ack) => {
    socket.join(room);
    if (typeof ack === 'function') ack();
  });
  socket.on('leave', (room, ack) => {
    socket.leave(room);
    if (typeof ack === 'function') ack();
  });
  socket.on('to-room', (room, event, ...args) => {
    const ack = typeof args[args.length - 1] === 'function' ? args.pop() : null;
    io.to(room).emit(event, ...args);
    if (ack) ack();
  });
  socket.on('to-socket', (id, event, ...args) => {
    const ack = typeof args[args.length - 1] === 'function' ? args.pop() : null;
    io.to(id).emit(event, ...args);
    if (ack) ack();
  });
  socket.on('volatile', (event, ...args) => socket.volatile.emit(event, ...args));
  socket.on('server-ack', (event, timeout, ...args) => {
    socket.timeout(Number(timeout)).emit(event, ...args, (err, ...res) => {
      if (err) socket.emit('server-ack-result', { ok: false, error: 'timeout' });
      else socket.emit('server-ack-result', { ok: true, args: res });
    });
  });
  socket.on('disconnect-me', () => socket.disconnect());
  socket.on('reliable', (id, ...rest) => {
    const ack = typeof rest[rest.length - 1] === 'function' ? rest.pop() : null;
    process.stdout.write(`R ${id}\n`);
    if (ack) ack(id);
  });
}

io.of('/').on('connection', root);
io.of('/custom').on('connection', (socket) => socket.emit('auth', socket.handshake.auth ?? {}));
const mw = io.of('/middleware');
mw.use((socket, next) => {
  if (socket.handshake.auth?.token === 'ok') return next();
  const err = new Error('unauthorized');
  err.data = { reason: 'bad token' };
  next(err);
});
mw.on('connection', (socket) => socket.emit('auth', socket.handshake.auth ?? {}));

httpServer.listen(port, '127.0.0.1', () => {
  process.stdout.write(`listening ${httpServer.address().port}\n`);
});
