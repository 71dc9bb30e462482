/**
 * Hardening, ownership of long operations: a `--no-wait` backup always has an owner that
 * recovery can judge (a job killed at once, or refused by a running GC, never leaves it
 * `creating`); owner liveness tells a reused pid or another boot from the real owner; a
 * restore into a volume that is being backed up or still served read-write is refused.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { SessionStore } from '../catalog/sessions.js';
import { processStart, selfIdentity } from '../drivers/process-identity.js';
import { startBackup } from '../gateway/engine/backup.js';
import { prepareRestore } from '../gateway/engine/restore.js';
import { cli, cliJson, openApp, tmpDir, writeConfig } from './helpers/core.js';
import { backup, volumeFrom } from './helpers/engine.js';
import { Appliance } from '../gateway/appliance.js';
import { loadConfig } from '../gateway/config.js';

const CS = 64 * 1024;

async function until<T>(what: string, fn: () => Promise<T | undefined>, ms = 30_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function cliDataDir(t: Parameters<typeof tmpDir>[0]): { dir: string; dataDir: string; img: string } {
  const dir = tmpDir(t);
  const dataDir = path.join(dir, 'data');
  writeConfig(dataDir, { chunkSize: CS });
  const img = path.join(dir, 'v.img');
  fs.writeFileSync(img, randomBytes(32 * 1024 * 1024));
  return { dir, dataDir, img };
}

test('--no-wait: the job owns the backup from the start; killed at once, recovery settles it as error', async (t) => {
  const { dataDir, img } = cliDataDir(t);
  await cliJson(dataDir, ['volume', 'create', '--name', 'v', '--file', img]);
  const rec = await cliJson<{ id: string; status: string }>(dataDir, ['backup', 'create', 'v', '--no-wait']);
  t.is(rec.status, 'creating');
  const app = await Appliance.open(loadConfig(dataDir));
  const owner = app.catalog.backups.get(rec.id)!.owner;
  await app.close();
  t.truthy(owner, 'a process owns it at every instant');
  t.not(owner!.pid, process.pid);
  try {
    process.kill(owner!.pid, 'SIGKILL');
  } catch {
    /* already finished */
  }
  const settled = await until('the backup to settle', async () => {
    const b = await cliJson<{ status: string; fail_reason: string | null }>(dataDir, ['backup', 'show', rec.id]);
    return b.status === 'creating' ? undefined : b;
  });
  t.true(settled.status === 'error' || settled.status === 'available', settled.status);
  if (settled.status === 'error') t.regex(settled.fail_reason!, /interrupted/);
});

test('--no-wait while a GC runs on the repository: the job records why it could not run, nothing stays creating', async (t) => {
  const { dataDir, img } = cliDataDir(t);
  await cliJson(dataDir, ['volume', 'create', '--name', 'v', '--file', img]);
  // a GC of another appliance holds the repository's lock
  const token = randomBytes(16).toString('hex');
  const locks = path.join(dataDir, 'repo', 'locks');
  fs.mkdirSync(locks, { recursive: true });
  fs.writeFileSync(path.join(locks, `gc-${token}.json`), JSON.stringify({ token, kind: 'gc', purpose: 'garbage collection', who: { host: 'elsewhere', pid: 1, boot: '', start: 0 }, started: '', heartbeat: Date.now(), ttl_ms: 600_000 }));
  const rec = await cliJson<{ id: string; status: string }>(dataDir, ['backup', 'create', 'v', '--no-wait']);
  t.is(rec.status, 'creating');
  const b = await until('the job to give up', async () => {
    const cur = await cliJson<{ status: string; fail_reason: string | null }>(dataDir, ['backup', 'show', rec.id]);
    return cur.status === 'creating' ? undefined : cur;
  });
  t.is(b.status, 'error');
  t.regex(b.fail_reason!, /garbage collection is running on the repository \(garbage collection on elsewhere/);
});

test('a creating backup with no owner (an old hand-over) is settled by recovery', async (t) => {
  const app = await openApp(t, { chunkSize: CS });
  await volumeFrom(app, 'v', randomBytes(CS));
  const rec = await startBackup(app, { volume: 'v' });
  app.catalog.putBackup({ ...rec, owner: null });
  app.catalog.unregisterWriter(rec.id);
  app.catalog.recoverInterrupted();
  const b = app.catalog.backups.get(rec.id)!;
  t.is(b.status, 'error');
  t.regex(b.fail_reason!, /no process was running it/);
});

test('owner liveness: a live pid with another start time, or another boot, is not the owner', async (t) => {
  const app = await openApp(t, { chunkSize: CS });
  await volumeFrom(app, 'v', randomBytes(CS));
  const sleeper = spawn('sleep', ['60'], { stdio: 'ignore' });
  t.teardown(() => sleeper.kill('SIGKILL'));
  await new Promise((r) => sleeper.once('spawn', r));
  const pid = sleeper.pid!;
  const me = selfIdentity();
  const cases = [
    { what: 'the real owner', owner: { pid, host: me.host, since: '', boot: me.boot, start: processStart(pid)! }, settled: false },
    { what: 'a reused pid', owner: { pid, host: me.host, since: '', boot: me.boot, start: processStart(pid)! + 1 }, settled: true },
    { what: 'another boot', owner: { pid, host: me.host, since: '', boot: '00000000-0000-0000-0000-000000000000', start: processStart(pid)! }, settled: true },
  ];
  for (const c of cases) {
    const rec = await startBackup(app, { volume: 'v' });
    app.catalog.putBackup({ ...rec, owner: c.owner });
    app.catalog.unregisterWriter(rec.id);
    app.catalog.recoverInterrupted();
    t.is(app.catalog.backups.get(rec.id)!.status, c.settled ? 'error' : 'creating', c.what);
    if (!c.settled) app.catalog.transition(rec.id, ['creating'], 'error', { owner: null });
  }
});

test('restore into a volume that is being backed up, or still served read-write by an instant restore, is refused and changes nothing', async (t) => {
  const app = await openApp(t, { chunkSize: CS });
  await volumeFrom(app, 'src', randomBytes(4 * CS));
  const b = await backup(app, 'src');
  await volumeFrom(app, 'busy', randomBytes(4 * CS));
  const running = await startBackup(app, { volume: 'busy' });
  const e1 = await t.throwsAsync(prepareRestore(app, { backup: b.id, volume: 'busy' }));
  t.regex(e1!.message, /volume busy is being backed up/);
  t.is(app.catalog.backups.get(b.id)!.status, 'available');
  t.is(app.catalog.volume('busy').status, 'available');
  app.catalog.transition(running.id, ['creating'], 'error', { owner: null });
  app.catalog.unregisterWriter(running.id);

  await volumeFrom(app, 'served', randomBytes(4 * CS));
  const v = app.catalog.volume('served');
  const store = new SessionStore(app.catalog.env);
  store.create({
    backup_id: b.id, backup_name: b.name, volume_id: v.id, volume_name: v.name, export_name: 'restore-served', status: 'completed', attached: true,
    detach_on_complete: false, block_size: CS, blocks_total: 4, size_bytes: 4 * CS, copy_concurrency: 1, copy_rate: 0, status_reason: null, owner: null,
  });
  const e2 = await t.throwsAsync(prepareRestore(app, { backup: b.id, volume: 'served' }));
  t.regex(e2!.message, /served read-write as export restore-served/);
  t.is(app.catalog.backups.get(b.id)!.status, 'available');
  t.deepEqual(app.catalog.locks.getRange({ start: 'r:', end: 'r;' }).asArray, [], 'no restore claim is left');
});
