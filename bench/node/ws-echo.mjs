// Reference WebSocket echo server for bench/compare: npm `ws`, the same
// behaviour as `parleyd --ws-echo /echo` (permessage-deflate off, as the
// load generator does not offer it). Prints its port when ready.
import { WebSocketServer } from 'ws';

const port = Number(process.argv[2] || 0);
const wss = new WebSocketServer({ host: '127.0.0.1', port, path: '/echo', perMessageDeflate: false });
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
});
wss.on('listening', () => {
  console.log(`node ws listening on 127.0.0.1:${wss.address().port}`);
});
