// Media on the messaging service: upload as a Socket.IO binary attachment
// and over HTTP, content addressing (SHA-256), messages that reference
// media, and who may download it: 401 without a valid token, 404 for
// unknown ids and, the same, for users who are neither the uploader nor in
// a conversation where it was sent; the MIME type per upload.

import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { cleanup } from './lib/harness.mjs';
import { bearer, dm, httpRequest, makeToken, nextClientId, online, startChatServer } from './lib/chat.mjs';

const sha256 = (b) => createHash('sha256').update(b).digest('hex');
const MAX = 64 * 1024;

describe('messaging: media', () => {
  let srv;
  let uid = 0;
  const fresh = (n) => `${n}${++uid}`;

  before(async () => {
    srv = await startChatServer({ extra: ['--max-media-bytes', String(MAX)] });
  });

  after(cleanup);

  const get = (id, headers = {}) => httpRequest(srv.port, 'GET', `/media/${id}`, { headers });
  const post = (body, headers = {}) => httpRequest(srv.port, 'POST', '/media', { headers, body });

  test('upload as an attachment; download by the uploader; stored once by content', async () => {
    const alice = fresh('alice');
    const a = await online(srv, alice);
    const bytes = randomBytes(20000);
    const res = await a.ok('upload_media', { mime: 'image/png', data: bytes });
    assert.deepEqual(res.media, { id: sha256(bytes), mime: 'image/png', size: bytes.length });
    const file = path.join(srv.dataDir, 'media', res.media.id.slice(0, 2), res.media.id);
    assert.ok(existsSync(file), 'stored under its hash');
    assert.ok(readFileSync(file).equals(bytes));
    const dl = await get(res.media.id, bearer(alice));
    assert.equal(dl.status, 200);
    assert.equal(dl.headers['content-type'], 'image/png');
    assert.equal(dl.headers.etag, `"${res.media.id}"`);
    assert.equal(dl.headers['x-content-type-options'], 'nosniff');
    assert.ok(dl.body.equals(bytes));
    // The same bytes again: same id, stored once; the type is recorded
    // per upload (the uploader's latest word for their own upload).
    const again = await a.ok('upload_media', { mime: 'application/octet-stream', data: bytes });
    assert.deepEqual(again.media, { ...res.media, mime: 'application/octet-stream' });
    assert.equal((await get(res.media.id, bearer(alice))).headers['content-type'], 'application/octet-stream');
    a.close();
  });

  test('a squatter who uploads the same bytes first does not decide their type for others', async () => {
    const [eve, vic, pal] = [fresh('eve'), fresh('vic'), fresh('pal')];
    const e = await online(srv, eve);
    const v = await online(srv, vic);
    const bytes = randomBytes(5000);
    const squat = await post(bytes, { ...bearer(eve), 'Content-Type': 'text/html' });
    assert.equal(squat.status, 201);
    const mine = await post(bytes, { ...bearer(vic), 'Content-Type': 'image/png' });
    assert.equal(mine.status, 200, 'the bytes were there already');
    assert.deepEqual(JSON.parse(mine.body), { id: sha256(bytes), mime: 'image/png', size: 5000 });
    const id = sha256(bytes);
    assert.equal((await get(id, bearer(vic))).headers['content-type'], 'image/png');
    assert.equal((await get(id, bearer(eve))).headers['content-type'], 'text/html');
    // vic's message carries vic's type; its recipient downloads it so.
    const sent = await v.ok('send_message', { client_id: nextClientId(), to: pal, type: 'image', content: { media: id } });
    assert.equal(sent.message.content.mime, 'image/png');
    assert.equal((await get(id, bearer(pal))).headers['content-type'], 'image/png');
    // eve may not send it as an image: hers is text/html.
    await e.fails('send_message', { client_id: nextClientId(), to: pal, type: 'image', content: { media: id } }, 'invalid_field', 'content.media');
    e.close();
    v.close();
  });

  test('upload over HTTP with a bearer token', async () => {
    const bob = fresh('bob');
    const bytes = randomBytes(MAX);
    const up = await post(bytes, { ...bearer(bob), 'Content-Type': 'Audio/Ogg; codecs=opus' });
    assert.equal(up.status, 201, up.body.toString());
    const info = JSON.parse(up.body);
    assert.deepEqual(info, { id: sha256(bytes), mime: 'audio/ogg', size: MAX });
    const again = await post(bytes, { ...bearer(bob), 'Content-Type': 'audio/ogg' });
    assert.equal(again.status, 200);
    const dl = await get(info.id, bearer(bob));
    assert.equal(dl.status, 200);
    assert.ok(dl.body.equals(bytes));
    // Refusals.
    const noAuth = await post(bytes, { 'Content-Type': 'audio/ogg' });
    assert.equal(noAuth.status, 401);
    assert.equal(noAuth.headers['www-authenticate'], 'Bearer');
    assert.equal(JSON.parse(noAuth.body).code, 'auth_required');
    const expired = await post(bytes, { ...bearer(bob, { claims: { exp: 1000 } }), 'Content-Type': 'audio/ogg' });
    assert.equal(expired.status, 401);
    assert.equal(JSON.parse(expired.body).code, 'token_expired');
    const wrongKey = await post(bytes, { ...bearer(bob, { secret: 'x'.repeat(40) }), 'Content-Type': 'audio/ogg' });
    assert.equal(wrongKey.status, 401);
    assert.equal(JSON.parse(wrongKey.body).code, 'invalid_token');
    assert.equal((await post(bytes, { Authorization: `Basic ${Buffer.from('a:b').toString('base64')}`, 'Content-Type': 'audio/ogg' })).status, 401);
    assert.equal((await post(bytes, bearer(bob))).status, 415, 'no Content-Type');
    assert.equal((await post(bytes, { ...bearer(bob), 'Content-Type': 'nonsense' })).status, 415);
    assert.equal((await post(Buffer.alloc(0), { ...bearer(bob), 'Content-Type': 'audio/ogg' })).status, 400);
    assert.equal((await post(randomBytes(MAX + 1), { ...bearer(bob), 'Content-Type': 'audio/ogg' })).status, 413);
    const put = await httpRequest(srv.port, 'PUT', '/media', { headers: bearer(bob), body: 'x' });
    assert.equal(put.status, 405);
    assert.equal(put.headers.allow, 'POST');
    const del = await httpRequest(srv.port, 'DELETE', `/media/${info.id}`, { headers: bearer(bob) });
    assert.equal(del.status, 405);
  });

  test('who may download: uploader, participants of conversations that reference it', async () => {
    const [amy, ben, cat, dan] = [fresh('amy'), fresh('ben'), fresh('cat'), fresh('dan')];
    const a = await online(srv, amy);
    const b = await online(srv, ben);
    const c = await online(srv, cat);
    const bytes = randomBytes(3000);
    const { media } = await a.ok('upload_media', { mime: 'image/jpeg', data: bytes });
    const id = media.id;
    // Before anyone is sent it: only amy.
    assert.equal((await get(id, bearer(amy))).status, 200);
    // Not visible and absent are one answer: no existence oracle.
    assert.equal((await get(id, bearer(ben))).status, 404);
    assert.equal(JSON.parse((await get(id, bearer(ben))).body).code, 'not_found');
    assert.equal((await get(id)).status, 401);
    assert.equal((await get(id, bearer(ben, { claims: { exp: 1000 } }))).status, 401);
    assert.equal((await get('f'.repeat(64), bearer(amy))).status, 404);
    assert.equal((await get('not-an-id', bearer(amy))).status, 404);
    assert.equal((await get(id.toUpperCase(), bearer(amy))).status, 404);
    // ben may not use it in a message either.
    await b.fails('send_message', { client_id: nextClientId(), to: cat, type: 'image', content: { media: id } }, 'not_found', 'content.media');

    // amy sends it to ben: ben may download, cat still not.
    const sent = await a.ok('send_message', { client_id: nextClientId(), to: ben, type: 'image', content: { media: id, caption: 'look', width: 4, height: 3 } });
    assert.deepEqual(sent.message.content, { media: id, mime: 'image/jpeg', size: 3000, caption: 'look', width: 4, height: 3 });
    assert.deepEqual(await b.next('new_message'), sent.message);
    const dl = await get(id, bearer(ben));
    assert.equal(dl.status, 200);
    assert.ok(dl.body.equals(bytes));
    assert.equal((await get(id, bearer(cat))).status, 404);

    // ben forwards it into a room: its members (cat) may download; a
    // user outside (dan) may not; leaving takes the access away.
    const room = `pics${uid}`;
    await b.ok('join_room', { room });
    await c.ok('join_room', { room });
    await b.ok('send_message', { client_id: nextClientId(), room, type: 'file', content: { media: id, name: 'photo.jpg' } });
    assert.equal((await get(id, bearer(cat))).status, 200);
    assert.equal((await get(id, bearer(dan))).status, 404);
    await c.ok('leave_room', { room });
    assert.equal((await get(id, bearer(cat))).status, 404);

    // The type must match the media: an image is image/*.
    await a.fails('send_message', { client_id: nextClientId(), to: ben, type: 'audio', content: { media: id } }, 'invalid_field', 'content.media');
    await a.fails('send_message', { client_id: nextClientId(), to: ben, type: 'video', content: { media: id } }, 'invalid_field', 'content.media');
    // A file may be anything.
    await a.ok('send_message', { client_id: nextClientId(), to: ben, type: 'file', content: { media: id } });
    for (const x of [a, b, c]) x.close();
  });

  test('attachment uploads over the limit are refused', async () => {
    const a = await online(srv, fresh('big'));
    await a.fails('upload_media', { mime: 'video/mp4', data: randomBytes(MAX + 1) }, 'too_large', 'data');
    const ok = await a.ok('upload_media', { mime: 'video/mp4', data: randomBytes(MAX) });
    assert.equal(ok.media.size, MAX);
    a.close();
  });

  test('--dev-auth accepts Authorization: Dev <user> for HTTP', async () => {
    const dev = await startChatServer({ dev: true });
    const up = await httpRequest(dev.port, 'POST', '/media', { headers: { Authorization: 'Dev devo', 'Content-Type': 'text/plain' }, body: 'hello' });
    assert.equal(up.status, 201);
    const { id } = JSON.parse(up.body);
    assert.equal((await httpRequest(dev.port, 'GET', `/media/${id}`, { headers: { Authorization: 'Dev devo' } })).status, 200);
    assert.equal((await httpRequest(dev.port, 'GET', `/media/${id}`, { headers: { Authorization: 'Dev other' } })).status, 404);
    assert.equal((await httpRequest(dev.port, 'GET', `/media/${id}`, { headers: { Authorization: 'Dev bad user' } })).status, 401);
    // Without dev mode the scheme means nothing.
    assert.equal((await httpRequest(srv.port, 'GET', `/media/${id}`, { headers: { Authorization: 'Dev devo' } })).status, 401);
    void makeToken;
    void dm;
  });
});
