// A scratch PostgreSQL for interop tests (several parleyd nodes on one
// database), on top of tests/pg/pg-scratch:
//
//   const pg = await startPg();
//   pg.url   postgresql://parley@127.0.0.1:PORT/postgres (trust auth)
//   await pg.restart()  stop (immediate) and start again: same data, same port
//   await pg.kill()     SIGKILL the postmaster (a crash); restart() brings it back
//   await pg.stop()     stop it and delete its directory
//
// A missing PostgreSQL makes startPg() throw (tests fail, never skip).
import { execFile } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const SCRIPT = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'pg', 'pg-scratch');

function run(...args) {
  return new Promise((resolve, reject) => {
    execFile(SCRIPT, args, { encoding: 'utf8', timeout: 120000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`pg-scratch ${args.join(' ')}: ${stderr || err.message}`));
      else resolve(stdout.trim());
    });
  });
}

export async function startPg() {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'parley-pg-'));
  let url;
  try {
    url = await run('start', dir);
  } catch (e) {
    await run('destroy', dir).catch(() => {});
    throw e;
  }
  const port = Number(new URL(url).port);
  let stopped = false;
  return {
    url,
    port,
    dir,
    async restart() {
      await run('stop', dir);
      await run('start', dir);
    },
    async kill() {
      await run('kill', dir);
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      await run('destroy', dir);
    },
  };
}
