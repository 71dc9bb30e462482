import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { CODECS } from '../drivers/codec.js';
import { collectGarbage } from '../gateway/engine/gc.js';
import { deleteBackup } from '../gateway/engine/delete.js';
import { prepareRestore, runRestore } from '../gateway/engine/restore.js';
import { startBackup } from '../gateway/engine/backup.js';
import { createVolume } from '../gateway/engine/volumes.js';
import { PAGE_ENTRIES } from '../catalog/blockmap.js';
import { dirBytes, mixedContent, mutate, openApp, sha, treeState } from './helpers/core.js';
import { backup, restoreToBuffer, rewrite, volumeFrom } from './helpers/engine.js';

const CS = 64 * 1024;

for (const codec of CODECS) {
  test(`backup and restore are bit-exact with ${codec}`, async (t) => {
    const app = await openApp(t, { codec });
    const data = mixedContent(3 * 1024 * 1024 + 12345, CS);
    await volumeFrom(app, 'v', data);
    const b = await backup(app, 'v');
    t.is(b.status, 'available');
    t.is(b.size_bytes, data.length);
    t.is(sha(await restoreToBuffer(app, b.id)), sha(data));
  });
}

test('an incremental after changing a few blocks stores only those chunks', async (t) => {
  const app = await openApp(t);
  const data = Buffer.concat([randomBytes(8 * 1024 * 1024)]);
  await volumeFrom(app, 'v', data);
  await backup(app, 'v');
  const chunksDir = path.join(app.config.dataDir, 'repo', 'chunks');
  const before = dirBytes(chunksDir);
  const changed = mutate(data, CS, 3);
  rewrite(app, 'v', data);
  const inc = await backup(app, 'v', { incremental: true });
  t.true(inc.is_incremental);
  t.is(inc.new_chunks, changed.length);
  const growth = dirBytes(chunksDir) - before;
  t.true(growth <= changed.length * (CS + 64), `repository grew ${growth} bytes for ${changed.length} changed chunks`);
  t.true(growth >= changed.length * CS, 'random chunks are stored whole');
  t.is(sha(await restoreToBuffer(app, inc.id)), sha(data));
});

test('an incremental adds map pages only where entries changed', async (t) => {
  const app = await openApp(t);
  const data = randomBytes(3 * PAGE_ENTRIES * CS); // three pages of map
  await volumeFrom(app, 'v', data);
  await backup(app, 'v');
  const pagesBefore = app.catalog.pages.getCount();
  randomBytes(100).copy(data, PAGE_ENTRIES * CS + 5); // one chunk in the second page
  rewrite(app, 'v', data);
  await backup(app, 'v', { incremental: true });
  t.is(app.catalog.pages.getCount() - pagesBefore, 1);
});

test('a full backup of an unchanged volume stores no new chunks', async (t) => {
  const app = await openApp(t);
  await volumeFrom(app, 'v', mixedContent(2 * 1024 * 1024, CS));
  await backup(app, 'v');
  const again = await backup(app, 'v');
  t.false(again.is_incremental);
  t.is(again.new_chunks, 0);
});

test('deleting a full backup leaves its incrementals restorable; GC frees what only the full used', async (t) => {
  const app = await openApp(t);
  const v1 = randomBytes(2 * 1024 * 1024);
  await volumeFrom(app, 'v', v1);
  const full = await backup(app, 'v');
  const v2 = Buffer.from(v1);
  const changed = mutate(v2, CS, 4);
  rewrite(app, 'v', v2);
  const inc1 = await backup(app, 'v', { incremental: true });
  const v3 = Buffer.from(v2);
  mutate(v3, CS, 2);
  rewrite(app, 'v', v3);
  const inc2 = await backup(app, 'v', { incremental: true });
  t.true(app.catalog.view(app.catalog.backupRecord(full.id)).has_dependent_backups);

  await deleteBackup(app, full.id);
  t.is(app.catalog.backupRecord(full.id).status, 'deleted');
  const gc = await collectGarbage(app);
  t.is(gc.removedChunks, changed.length, 'the chunks only the full backup had are freed');
  t.is(sha(await restoreToBuffer(app, inc1.id)), sha(v2));
  t.is(sha(await restoreToBuffer(app, inc2.id)), sha(v3));
  await deleteBackup(app, inc1.id);
  await deleteBackup(app, inc2.id);
  await collectGarbage(app);
  t.is(app.catalog.chunks.getCount(), 0);
  t.deepEqual(treeState(path.join(app.config.dataDir, 'repo', 'chunks')), []);
});

test('a flipped byte in a stored chunk is reported on restore naming the block', async (t) => {
  const app = await openApp(t, { codec: 'none' });
  const data = randomBytes(1024 * 1024);
  await volumeFrom(app, 'v', data);
  const b = await backup(app, 'v');
  const victim = app.catalog.mapReader(b).entry(5)!;
  const file = path.join(app.config.dataDir, 'repo', 'chunks', victim.slice(0, 2), victim);
  const obj = fs.readFileSync(file);
  obj[100] ^= 1;
  fs.writeFileSync(file, obj);
  const target = await createVolume(app, { name: 't', size: data.length });
  const prep = await prepareRestore(app, { backup: b.id, volume: 't' });
  const err = await t.throwsAsync(runRestore(app, prep.backup, prep.target));
  t.regex(err!.message, new RegExp(`block 5 \\(offset ${5 * CS}\\).*chunk ${victim} is corrupt`));
  t.is(app.catalog.volume(target.id).status, 'error_restoring');
  t.is(app.catalog.backupRecord(b.id).status, 'available');
});

test('restore into a larger volume keeps the data and zero-fills the rest; a smaller one is refused', async (t) => {
  const app = await openApp(t);
  const data = mixedContent(1024 * 1024, CS);
  await volumeFrom(app, 'v', data);
  const b = await backup(app, 'v');
  const big = await createVolume(app, { name: 'big', size: 2 * 1024 * 1024 });
  fs.writeFileSync(big.path, randomBytes(2 * 1024 * 1024));
  const prep = await prepareRestore(app, { backup: b.id, volume: 'big' });
  await runRestore(app, prep.backup, prep.target);
  const out = fs.readFileSync(big.path);
  t.is(sha(out.subarray(0, data.length)), sha(data));
  t.true(out.subarray(data.length).equals(Buffer.alloc(data.length)));
  await createVolume(app, { name: 'small', size: 512 * 1024 });
  await t.throwsAsync(prepareRestore(app, { backup: b.id, volume: 'small' }), { message: /smaller than backup/ });
  t.is(app.catalog.backupRecord(b.id).status, 'available');
  t.is(app.catalog.volume('small').status, 'available');
});

test('restore into a sparse file leaves holes unallocated', async (t) => {
  const app = await openApp(t);
  const data = Buffer.alloc(8 * 1024 * 1024);
  randomBytes(CS).copy(data, 0);
  await volumeFrom(app, 'v', data);
  const b = await backup(app, 'v');
  const { backup: bb, target } = await prepareRestore(app, { backup: b.id });
  await runRestore(app, bb, target);
  const st = fs.statSync(target.path);
  t.true(st.blocks * 512 < 1024 * 1024, `restored file allocates ${st.blocks * 512} bytes`);
  t.is(sha(fs.readFileSync(target.path)), sha(data));
});

test('an incremental with no earlier backup is refused and changes nothing', async (t) => {
  const app = await openApp(t);
  await volumeFrom(app, 'v', randomBytes(CS * 2));
  const before = treeState(path.join(app.config.dataDir, 'repo'));
  await t.throwsAsync(startBackup(app, { volume: 'v', incremental: true }), { message: /no available backup to be the parent/ });
  t.deepEqual(app.catalog.listBackups(), []);
  t.deepEqual(treeState(path.join(app.config.dataDir, 'repo')), before);
});

test('an in-use volume needs --force', async (t) => {
  const app = await openApp(t);
  const data = randomBytes(CS * 3);
  await volumeFrom(app, 'v', data);
  app.catalog.updateVolume(app.catalog.volume('v').id, () => ({ status: 'in-use' }));
  await t.throwsAsync(startBackup(app, { volume: 'v' }), { message: /in-use.*--force/ });
  t.deepEqual(app.catalog.listBackups(), []);
  const b = await backup(app, 'v', {} as never).catch(() => null);
  t.is(b, null);
  const { runBackup } = await import('../gateway/engine/backup.js');
  const forced = await runBackup(app, await startBackup(app, { volume: 'v', force: true }));
  t.is(forced.status, 'available');
});

test('a backup of a volume that disappears mid-way ends in error with its reason, never available', async (t) => {
  const app = await openApp(t);
  await volumeFrom(app, 'v', randomBytes(CS * 4));
  const rec = await startBackup(app, { volume: 'v' });
  fs.rmSync(app.catalog.volume('v').path);
  const { runBackup } = await import('../gateway/engine/backup.js');
  await t.throwsAsync(runBackup(app, rec));
  const after = app.catalog.backupRecord(rec.id);
  t.is(after.status, 'error');
  t.regex(after.fail_reason!, /cannot open volume/);
});
