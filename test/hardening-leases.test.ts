/**
 * Hardening, reader leases of NBD exports: a lease is added together with a check of the
 * backup's state, so a delete that slips in between resolving an export and leasing it makes
 * the open fail (never serves a deleted backup); a save requested for an overlay is bound to
 * that overlay and dropped when it is discarded, never applied to a later one.
 */
import test from 'ava';
import { randomBytes } from 'node:crypto';
import type { BackupRecord } from '../catalog/records.js';
import { deleteBackup } from '../gateway/engine/delete.js';
import { BackupExports, OVERLAY_SUFFIX, type OverlaySaveRequest, overlaySaveKey } from '../gateway/exports/backups.js';
import { RepoChunkReader } from '../gateway/read/chunk-reader.js';
import { openApp } from './helpers/core.js';
import { backup, volumeFrom } from './helpers/engine.js';

const CS = 64 * 1024;

test('a delete between resolving an export and leasing it: the open fails, the backup is not served', async (t) => {
  const app = await openApp(t, { chunkSize: CS });
  await volumeFrom(app, 'v', randomBytes(4 * CS));
  const b = await backup(app, 'v', { name: 'b1' });
  let stale: BackupRecord | undefined;
  // resolve() as it was before the delete (another process deletes right after it)
  class Racing extends BackupExports {
    override resolve(name: string): BackupRecord | undefined {
      stale ??= super.resolve(name);
      return stale;
    }
  }
  const exports = new Racing(app, new RepoChunkReader(app.repo, app.pool));
  t.truthy(exports.resolve('v@b1'));
  await deleteBackup(app, b.id);
  t.is(await exports.open('v@b1'), null, 'the export is gone');
  t.is(await exports.open(`v@b1${OVERLAY_SUFFIX}`), null, 'its overlay too');
  t.deepEqual(app.catalog.readerLeases(b.id), [], 'no lease on a deleted backup');
  t.throws(() => app.catalog.addReaderLease(b.id, 'test'), { message: /is deleted; it cannot be opened/ });
});

test('a save asked for an overlay that the daemon discards is dropped, never applied to a later overlay', async (t) => {
  const app = await openApp(t, { chunkSize: CS });
  await volumeFrom(app, 'v', randomBytes(4 * CS));
  const b = await backup(app, 'v', { name: 'b1' });
  const exports = new BackupExports(app, new RepoChunkReader(app.repo, app.pool));
  const saved: (string | null)[] = [];
  const errors: string[] = [];
  exports.onSaved = (id, _name, e) => {
    saved.push(id);
    if (e) errors.push(e.message);
  };
  const dev = await exports.open(`v@b1${OVERLAY_SUFFIX}`);
  t.truthy(dev);
  await dev!.write!(0, Buffer.alloc(4096, 7));
  const label = app.catalog.readerLeases(b.id).find((l) => l.startsWith(`nbd-overlay:${b.id}:`))!.split(' ')[0]!;
  const req: OverlaySaveRequest = { name: 'fixed', description: '', requested_at: new Date().toISOString(), overlay: label };
  app.catalog.meta.putSync(overlaySaveKey(b.id), req);
  await exports.closeAll();
  t.is(app.catalog.meta.get(overlaySaveKey(b.id)), undefined, 'the request went with its overlay');
  t.deepEqual(saved, [null]);
  t.regex(errors[0]!, /discarded, not saved/);
  // a later overlay of the same backup, and a stale request left for the old one
  app.catalog.meta.putSync(overlaySaveKey(b.id), req);
  const again = await exports.open(`v@b1${OVERLAY_SUFFIX}`);
  await exports.release(`v@b1${OVERLAY_SUFFIX}`, again!);
  t.deepEqual(app.catalog.listBackups().map((x) => x.name), ['b1'], 'no backup was made from the later overlay');
  t.is(saved.length, 1);
});
