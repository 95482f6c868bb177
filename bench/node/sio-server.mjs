// Reference Socket.IO server for bench/compare: npm socket.io 4.8.x with
// the same handlers as `parleyd --protocol-test` that the benchmarks use
// (auth greeting, message-with-ack, join, to-room). Prints its port.
//   node sio-server.mjs PORT [PING_INTERVAL_MS PING_TIMEOUT_MS]
// With REDIS_URL set, it joins a cluster through @socket.io/redis-adapter
// (the cluster scenario: broadcasts reach the other nodes' clients).
import { createServer } from 'node:http';
import { Server } from 'socket.io';

const port = Number(process.argv[2] || 0);
const pingInterval = Number(process.argv[3] || 25000);
const pingTimeout = Number(process.argv[4] || 20000);
const http = createServer();
const io = new Server(http, { pingInterval, pingTimeout, maxHttpBufferSize: 1e6 });
if (process.env.REDIS_URL) {
  const { createClient } = await import('redis');
  const { createAdapter } = await import('@socket.io/redis-adapter');
  const pub = createClient({ url: process.env.REDIS_URL });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);
  io.adapter(createAdapter(pub, sub));
}
io.on('connection', (socket) => {
  socket.emit('auth', socket.handshake.auth || {});
  socket.on('message-with-ack', (...args) => {
    const ack = args.pop();
    if (typeof ack === 'function') ack(...args);
  });
  socket.on('join', (room, ack) => {
    socket.join(room);
    if (typeof ack === 'function') ack();
  });
  socket.on('to-room', (room, event, ...args) => {
    if (typeof args[args.length - 1] === 'function') args.pop()();
    io.to(room).emit(event, ...args);
  });
});
http.listen(port, '127.0.0.1', () => {
  console.log(`node socket.io listening on 127.0.0.1:${http.address().port}`);
});
