// tests/interop/pg.mjs: a scratch PostgreSQL that restarts on its port with
// its data, and comes back after a kill.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { startPg } from './pg.mjs';

function psql(url, sql) {
  return execFileSync('psql', ['-X', '-A', '-t', '-v', 'ON_ERROR_STOP=1', url, '-c', sql], {
    encoding: 'utf8',
    timeout: 30000,
  }).trim();
}

test('startPg: restart keeps data and port, kill then restart recovers', async () => {
  const pg = await startPg();
  try {
    assert.match(pg.url, /^postgresql:\/\/parley@127\.0\.0\.1:\d+\/postgres$/);
    psql(pg.url, 'CREATE TABLE t (x int); INSERT INTO t VALUES (42)');
    await pg.restart();
    assert.equal(psql(pg.url, 'SELECT x FROM t'), '42');
    await pg.kill();
    assert.throws(() => psql(pg.url, 'SELECT 1'));
    await pg.restart();
    assert.equal(psql(pg.url, 'SELECT x FROM t'), '42');
  } finally {
    await pg.stop();
  }
});
