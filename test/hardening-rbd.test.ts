/**
 * Hardening: an RBD incremental over a parent without a change token (a backup not made by
 * export-diff, e.g. one saved from an overlay) is exactly the volume at its snapshot: ranges
 * the image no longer has allocated read as zeroes, not as the parent's old data. And one
 * over a parent that names a chunk verify found corrupt reads the image anew.
 */
import type { ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes, createHash } from 'node:crypto';
import { parseRbdSpec } from '../drivers/volume/rbd.js';
import { createVolume } from '../gateway/engine/volumes.js';
import { cephTest, getCeph, rbd, rbdApply } from './helpers/ceph.js';
import { openApp, tmpDir } from './helpers/core.js';
import { backup, restoreToBuffer } from './helpers/engine.js';
import { verifyBackup } from '../gateway/engine/verify.js';

const MiB = 1 << 20;

/** an 8 MiB RBD image of random data (removed at the end), registered as volume `r` of a fresh appliance */
async function rbdVolume(t: ExecutionContext) {
  const c = await getCeph();
  const spec = `volumes/bgt-hard-${randomBytes(3).toString('hex')}`;
  const file = path.join(tmpDir(t), 'src.img');
  fs.writeFileSync(file, randomBytes(8 * MiB));
  await rbd(c, ['import', '--no-progress', file, spec]);
  t.teardown(async () => {
    await rbd(c, ['snap', 'purge', '--no-progress', spec]).catch(() => undefined);
    await rbd(c, ['remove', '--no-progress', spec]).catch(() => undefined);
  });
  const app = await openApp(t, { chunkSize: MiB });
  await createVolume(app, { name: 'r', rbd: spec, cephConf: c.conf });
  return { c, spec, file, app };
}

cephTest('an RBD incremental over a parent without a change token is the image at its snapshot (discarded ranges read as zeroes)', async (t) => {
  t.timeout(3 * 60_000);
  const { c, spec, app } = await rbdVolume(t);
  const full = await backup(app, 'r');
  t.truthy(full.change_token);
  // the parent as a backup not made by export-diff would be: no snapshot to diff against
  app.catalog.putBackup({ ...app.catalog.backups.get(full.id)!, change_token: null });
  const { pool, image } = parseRbdSpec(spec);
  await rbdApply(c, pool, image, [
    { op: 'discard', offset: 2 * MiB, length: 2 * MiB },
    { op: 'write', offset: 6 * MiB + 4096, data: randomBytes(8192) },
  ]);
  const now = await rbd(c, ['export', '--no-progress', spec, '-']);
  t.is(now.subarray(2 * MiB, 4 * MiB).compare(Buffer.alloc(2 * MiB)), 0, 'the discarded range reads as zeroes in the image');
  const inc = await backup(app, 'r', { incremental: true });
  t.true(inc.is_incremental);
  t.is(inc.parent_id, full.id);
  t.true(inc.notes.some((n) => /has no snapshot to diff against/.test(n)));
  const got = await restoreToBuffer(app, inc.id);
  const h = (b: Buffer) => createHash('sha256').update(b).digest('hex');
  t.is(h(got.subarray(2 * MiB, 4 * MiB)), h(Buffer.alloc(2 * MiB)), 'not the parent\'s old data');
  t.is(h(got), h(now), 'the incremental is the image, bit for bit');
});

cephTest('an RBD incremental never carries over a chunk that verify found corrupt: the block is read anew and both backups verify clean', async (t) => {
  t.timeout(3 * 60_000);
  const { file, app } = await rbdVolume(t);
  const full = await backup(app, 'r');
  const d = app.catalog.mapReader(full).entry(3)!;
  const obj = path.join(app.config.dataDir, 'repo', 'chunks', d.slice(0, 2), d);
  const bytes = fs.readFileSync(obj);
  bytes[bytes.length - 1]! ^= 0xff;
  fs.writeFileSync(obj, bytes);
  const bad = await verifyBackup(app, full.id);
  t.is(bad.verify_state, 'failed');
  // no change at all in the image: a plain incremental would name the corrupt chunk again
  const inc = await backup(app, 'r', { incremental: true });
  t.true(inc.notes.some((n) => /names a chunk that verify found corrupt/.test(n)), JSON.stringify(inc.notes));
  t.is(createHash('sha256').update(await restoreToBuffer(app, inc.id)).digest('hex'), createHash('sha256').update(fs.readFileSync(file)).digest('hex'));
  t.is((await verifyBackup(app, inc.id)).verify_state, 'ok');
  t.is((await verifyBackup(app, full.id)).verify_state, 'ok', 'the rewritten chunk heals the old backup too');
  t.false(app.catalog.isCorrupt(d));
});
