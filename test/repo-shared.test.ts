/**
 * Several appliances on one directory repository: GC marks from every manifest in the
 * repository (not from its own catalog), one GC at a time (a lock object in the repository),
 * none while a writer lease anywhere is live, and a backup that a GC may have raced fails
 * instead of committing; catalogs follow deletes and GCs done elsewhere.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { runBackup, startBackup } from '../gateway/engine/backup.js';
import { collectGarbage } from '../gateway/engine/gc.js';
import { deleteBackup } from '../gateway/engine/delete.js';
import { newEpoch } from '../drivers/coordination.js';
import { cli, cliJson, mixedContent, sha, tmpDir } from './helpers/core.js';
import { backup, restoreToBuffer, volumeFrom } from './helpers/engine.js';
import { CS, carryRecord, openAt, sharedDataDirs } from './helpers/shared-repo.js';

function fakeHolder(kind: 'gc' | 'writer', host: string, heartbeatAgoMs: number, pid = 999999) {
  const token = randomBytes(16).toString('hex');
  return {
    token,
    body: JSON.stringify({ token, kind, purpose: kind === 'gc' ? 'garbage collection' : 'backup x', who: { host, pid, boot: '', start: 0 }, started: new Date().toISOString(), heartbeat: Date.now() - heartbeatAgoMs, ttl_ms: 60_000 }),
  };
}

test("the reported data loss: a GC on a second appliance keeps the first appliance's chunks", async (t) => {
  const root = tmpDir(t);
  const repo = path.join(root, 'repo');
  const dirs = sharedDataDirs(root, { driver: 'dir', path: repo }, ['a', 'b']);
  const data = mixedContent(2 * 1024 * 1024, CS);
  fs.writeFileSync(path.join(root, 'vol.img'), data);
  await cliJson(dirs.a!, ['volume', 'create', '--name', 'v', '--file', path.join(root, 'vol.img')]);
  const full = await cliJson<{ id: string }>(dirs.a!, ['backup', 'create', 'v', '--name', 'full']);
  const gc = await cliJson<{ removedChunks: number; liveBackups: number }>(dirs.b!, ['repo', 'gc']);
  t.is(gc.liveBackups, 1, "B's GC marked from A's manifest");
  t.is(gc.removedChunks, 0);
  await cliJson(dirs.a!, ['backup', 'restore', full.id, '--name', 'back']);
  t.is(sha(fs.readFileSync(path.join(dirs.a!, 'volumes', 'back.img'))), sha(data));
});

test('one GC at a time per repository: a live lock elsewhere refuses, a dead or expired one is cleared', async (t) => {
  const root = tmpDir(t);
  const dirs = sharedDataDirs(root, { driver: 'dir', path: path.join(root, 'repo') }, ['a']);
  const app = await openAt(t, dirs.a!);
  const locks = path.join(root, 'repo', 'locks');
  fs.mkdirSync(locks, { recursive: true });
  const live = fakeHolder('gc', 'other-host', 1000);
  fs.writeFileSync(path.join(locks, `gc-${live.token}.json`), live.body);
  const err = await t.throwsAsync(collectGarbage(app));
  t.regex(err!.message, /garbage collection already running: garbage collection on other-host/);
  t.false(fs.readdirSync(locks).some((f) => !f.includes(live.token)), 'the refused GC removed its own lock');
  fs.rmSync(path.join(locks, `gc-${live.token}.json`));
  const expired = fakeHolder('gc', 'other-host', 120_000);
  const dead = fakeHolder('gc', (await import('node:os')).hostname(), 0);
  fs.writeFileSync(path.join(locks, `gc-${expired.token}.json`), expired.body);
  fs.writeFileSync(path.join(locks, `gc-${dead.token}.json`), dead.body);
  await collectGarbage(app);
  t.deepEqual(fs.readdirSync(locks), [], 'stale locks are gone and the GC released its own');
});

test('GC waits for a backup being written on another appliance (a live writer lease), not for a dead one', async (t) => {
  const root = tmpDir(t);
  const dirs = sharedDataDirs(root, { driver: 'dir', path: path.join(root, 'repo') }, ['a']);
  const app = await openAt(t, dirs.a!);
  const leases = path.join(root, 'repo', 'leases');
  fs.mkdirSync(leases, { recursive: true });
  const live = fakeHolder('writer', 'other-host', 1000);
  fs.writeFileSync(path.join(leases, `${live.token}.json`), live.body);
  const err = await t.throwsAsync(collectGarbage(app));
  t.regex(err!.message, /a backup is being written to the repository \(backup x on other-host/);
  fs.writeFileSync(path.join(leases, `${live.token}.json`), fakeHolder('writer', 'other-host', 120_000).body.replace(/"token":"[0-9a-f]+"/, `"token":"${live.token}"`));
  await collectGarbage(app);
  t.deepEqual(fs.readdirSync(leases), [], 'the expired lease was cleared');
});

test('a backup refuses to start while another appliance runs a GC, and leaves no manifest', async (t) => {
  const root = tmpDir(t);
  const dirs = sharedDataDirs(root, { driver: 'dir', path: path.join(root, 'repo') }, ['a']);
  const app = await openAt(t, dirs.a!);
  await volumeFrom(app, 'v', mixedContent(1024 * 1024, CS));
  const locks = path.join(root, 'repo', 'locks');
  fs.mkdirSync(locks, { recursive: true });
  const live = fakeHolder('gc', 'other-host', 1000);
  fs.writeFileSync(path.join(locks, `gc-${live.token}.json`), live.body);
  const err = await t.throwsAsync(backup(app, 'v'));
  t.regex(err!.message, /garbage collection is running on the repository/);
  const b = app.catalog.listBackups()[0]!;
  t.is(b.status, 'error');
  t.regex(b.fail_reason!, /garbage collection is running/);
  t.false(fs.existsSync(path.join(root, 'repo', 'manifests', `${b.id}.json`)));
});

test('a GC that starts while a backup is written (its lease unseen) makes that backup fail instead of commit', async (t) => {
  const root = tmpDir(t);
  const dirs = sharedDataDirs(root, { driver: 'dir', path: path.join(root, 'repo') }, ['a']);
  const app = await openAt(t, dirs.a!);
  const data = mixedContent(1024 * 1024, CS);
  await volumeFrom(app, 'v', data);
  const rec = await startBackup(app, { volume: 'v' });
  let raced = false;
  // a device that lets another GC epoch begin mid-backup, as a GC elsewhere would
  const dev = {
    size: data.length,
    async read(off: number, len: number) {
      if (!raced) {
        raced = true;
        await newEpoch(app.repo.store);
      }
      return data.subarray(off, off + len);
    },
  };
  const err = await t.throwsAsync(runBackup(app, rec, undefined, dev as never));
  t.regex(err!.message, /a garbage collection of the repository started while this backup was written/);
  t.is(app.catalog.backups.get(rec.id)!.status, 'error');
  t.false(fs.existsSync(path.join(root, 'repo', 'manifests', `${rec.id}.json`)), 'its manifest was removed');
  t.is((await backup(app, 'v')).status, 'available', 'the next backup commits');
});

test('catalogs follow the repository: a backup deleted and collected elsewhere becomes deleted here, and its swept chunks are written anew', async (t) => {
  const root = tmpDir(t);
  const dirs = sharedDataDirs(root, { driver: 'dir', path: path.join(root, 'repo') }, ['a', 'b']);
  const data = randomBytes(1024 * 1024);
  fs.writeFileSync(path.join(root, 'vol.img'), data);
  await cliJson(dirs.a!, ['volume', 'create', '--name', 'v', '--file', path.join(root, 'vol.img')]);
  const full = await cliJson<{ id: string }>(dirs.a!, ['backup', 'create', 'v', '--name', 'full']);
  const imp = await carryRecord(dirs.a!, dirs.b!, full.id);
  t.is(imp.code, 0, imp.stderr);
  await cliJson(dirs.b!, ['backup', 'delete', full.id]);
  const gc = await cliJson<{ removedChunks: number }>(dirs.b!, ['repo', 'gc']);
  t.is(gc.removedChunks, 16, 'no manifest names its chunks any more');
  const shown = await cliJson<{ status: string; notes: string[] }>(dirs.a!, ['backup', 'show', full.id]);
  t.is(shown.status, 'deleted');
  t.true(shown.notes.some((n) => /manifest is gone/.test(n)));
  // A's chunk index no longer claims the swept chunks: a new backup stores them again
  const again = await cliJson<{ id: string; new_chunks: number }>(dirs.a!, ['backup', 'create', 'v']);
  t.is(again.new_chunks, 16);
  const r = await cli(dirs.a!, ['backup', 'restore', again.id, '--name', 'back']);
  t.is(r.code, 0, r.stderr);
  t.is(sha(fs.readFileSync(path.join(dirs.a!, 'volumes', 'back.img'))), sha(data));
});

test('GC reclaims what a failed backup and a deleted one left, and keeps young objects inside a grace window', async (t) => {
  const root = tmpDir(t);
  const dirs = sharedDataDirs(root, { driver: 'dir', path: path.join(root, 'repo') }, ['a']);
  const app = await openAt(t, dirs.a!);
  const data = randomBytes(1024 * 1024);
  await volumeFrom(app, 'v', data);
  const b = await backup(app, 'v');
  await deleteBackup(app, b.id);
  const young = await collectGarbage(app, { graceMs: 3_600_000 });
  t.is(young.removedChunks, 0);
  t.is(young.keptYoung, 17, '16 chunks and one page are younger than the window');
  const gc = await collectGarbage(app);
  t.is(gc.removedChunks, 16);
  t.is(gc.removedPages, 1);
  t.is(app.catalog.chunks.getCount(), 0);
  const again = await backup(app, 'v');
  t.is(again.new_chunks, 16, 'the swept chunks are stored again');
  t.is(sha(await restoreToBuffer(app, again.id)), sha(data));
});
