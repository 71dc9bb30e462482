/**
 * Snapshots through the real cinder client: a reflink copy of a file volume on an xfs with
 * reflink=1 (a loop mount made for the test), an RBD snapshot of an RBD volume; backup-create
 * --snapshot-id backs up the snapshot's content (not the volume's now), an incremental from a
 * snapshot takes the newest backup older than the snapshot as parent; Cinder's rules refuse a
 * snapshot of another volume. (A file volume without reflinks is refused: test/api-input.)
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { cliJson, tmpDir } from './helpers/core.js';
import { getCeph, rbd, rbdApply, rbdExportSha } from './helpers/ceph.js';
import { type ApiDaemon, cinder, listTable, ok, props, startApi, until, waitBackup, waitVolume } from './helpers/api.js';

const MiB = 1024 * 1024;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

async function restoredSha(d: ApiDaemon, backupId: string, name: string): Promise<string> {
  const r = props(await ok(cinder(d, 'admin', 'p1', ['backup-restore', '--name', name, backupId])));
  t_is(await waitVolume(d, r.volume_id!), 'available');
  return sha(fs.readFileSync(path.join(d.dataDir, 'volumes', `${name}.img`)));
}
function t_is(a: unknown, b: unknown): void {
  if (a !== b) throw new Error(`${String(a)} !== ${String(b)}`);
}

function xfsMount(t: import('ava').ExecutionContext, root: string): string {
  const img = path.join(root, 'xfs.img');
  const mnt = path.join(root, 'mnt');
  fs.writeFileSync(img, '');
  fs.truncateSync(img, 512 * MiB);
  execFileSync('mkfs.xfs', ['-q', '-m', 'reflink=1', img]);
  fs.mkdirSync(mnt);
  execFileSync('mount', ['-o', 'loop', img, mnt]);
  t.teardown(() => {
    execFileSync('umount', [mnt]);
  });
  return mnt;
}

test('file volume on xfs (reflink): snapshot-create, backup from it after the volume changed, incremental parent older than the snapshot, snapshot-delete', async (t) => {
  const root = tmpDir(t);
  const mnt = xfsMount(t, root);
  const file = path.join(mnt, 'vol.img');
  const stateA = randomBytes(8 * MiB);
  fs.writeFileSync(file, stateA);
  const data = path.join(root, 'data');
  const vol = await cliJson<{ id: string }>(data, ['volume', 'create', '--name', 'xv', '--file', file, '--project', 'p1']);
  const other = path.join(root, 'other.img');
  fs.writeFileSync(other, randomBytes(MiB));
  await cliJson(data, ['volume', 'create', '--name', 'other', '--file', other, '--project', 'p1']);
  const d = await startApi(t, data);
  const admin = (a: string[]) => cinder(d, 'admin', 'p1', a);

  const b0 = props(await ok(admin(['backup-create', '--name', 'b0', 'xv'])));
  t.is(await waitBackup(d, b0.id!), 'available');
  // state B, then the snapshot
  const stateB = Buffer.from(stateA);
  randomBytes(MiB).copy(stateB, 2 * MiB);
  fs.writeFileSync(file, stateB);
  const snap = props(await ok(admin(['snapshot-create', '--name', 's1', 'xv'])));
  t.is(snap.status, 'available');
  t.is(snap.volume_id, vol.id);
  const clones = fs.readdirSync(path.join(mnt, '.blockgate-snapshots'));
  t.deepEqual(clones, [`${snap.id}.img`], 'the reflink copy sits beside the volume, on its filesystem');
  t.deepEqual(listTable(await ok(admin(['snapshot-list']))).map((s) => s.Name), ['s1']);
  t.is(props(await ok(admin(['snapshot-show', snap.id!]))).status, 'available');

  // state C; a full backup of it made after the snapshot
  const stateC = randomBytes(8 * MiB);
  fs.writeFileSync(file, stateC);
  const bc = props(await ok(admin(['backup-create', '--name', 'bc', 'xv'])));
  t.is(await waitBackup(d, bc.id!), 'available');

  const fromSnap = props(await ok(admin(['backup-create', '--snapshot-id', snap.id!, '--name', 'from-snap', 'xv'])));
  t.is(await waitBackup(d, fromSnap.id!), 'available');
  const inc = props(await ok(admin(['backup-create', '--incremental', '--snapshot-id', snap.id!, '--name', 'inc-snap', 'xv'])));
  t.is(await waitBackup(d, inc.id!), 'available');
  const incShown = props(await ok(admin(['backup-show', inc.id!])));
  t.is(incShown.snapshot_id, snap.id);
  t.is(incShown.is_incremental, 'True');
  const rec = await cliJson<{ parent_id: string; data_timestamp: string }>(data, ['backup', 'show', inc.id!]);
  t.is(rec.parent_id, b0.id, 'the parent is the newest backup older than the snapshot, not the newer full');

  t.is(await restoredSha(d, fromSnap.id!, 'r-snap'), sha(stateB), 'the snapshot content, not the volume now');
  t.is(await restoredSha(d, inc.id!, 'r-inc'), sha(stateB));
  t.is(await restoredSha(d, bc.id!, 'r-c'), sha(stateC));

  const wrong = await cinder(d, 'admin', 'p1', ['backup-create', '--snapshot-id', snap.id!, 'other']);
  t.regex(wrong.stderr, /Invalid snapshot: snapshot .* is not a snapshot of volume .* \(HTTP 400\)/);
  const busy = await admin(['delete', 'xv']);
  t.regex(busy.stderr + busy.stdout, /dependent snapshots/);
  await ok(admin(['snapshot-delete', snap.id!]));
  await until('the snapshot to be gone', async () => ((await admin(['snapshot-show', snap.id!])).code === 1 ? true : undefined));
  t.deepEqual(fs.readdirSync(path.join(mnt, '.blockgate-snapshots')), []);
});

test('RBD volume: snapshot-create is an RBD snapshot; a backup from it reads the snapshot; snapshot-delete removes it', async (t) => {
  t.timeout(5 * 60_000);
  const c = await getCeph();
  const image = `api-snap-${randomBytes(3).toString('hex')}`;
  const spec = `volumes/${image}`;
  await rbd(c, ['create', '--size', '16M', spec]);
  t.teardown(async () => {
    await rbd(c, ['snap', 'purge', spec]).catch(() => undefined);
    await rbd(c, ['rm', spec]).catch(() => undefined);
  });
  const first = randomBytes(4 * MiB);
  await rbdApply(c, 'volumes', image, [{ op: 'write', offset: 0, data: first }, { op: 'write', offset: 10 * MiB, data: first }]);
  const before = await rbdExportSha(c, spec);
  const data = path.join(tmpDir(t), 'data');
  const env = { CEPH_CONF: c.conf };
  process.env.CEPH_CONF = c.conf;
  await cliJson(data, ['volume', 'create', '--name', 'rv', '--rbd', spec, '--project', 'p1']);
  const d = await startApi(t, data, [], env);
  const admin = (a: string[]) => cinder(d, 'admin', 'p1', a);
  const snap = props(await ok(admin(['snapshot-create', '--name', 'rs', 'rv'])));
  t.is(snap.status, 'available');
  const snaps = JSON.parse((await rbd(c, ['snap', 'ls', '--format', 'json', spec])).toString()) as { name: string }[];
  t.true(snaps.some((s) => s.name === `snapshot-${snap.id}`));
  // the image changes after the snapshot
  await rbdApply(c, 'volumes', image, [{ op: 'write', offset: 0, data: randomBytes(2 * MiB) }]);
  const bk = props(await ok(admin(['backup-create', '--snapshot-id', snap.id!, '--name', 'rbd-snap', 'rv'])));
  t.is(await waitBackup(d, bk.id!), 'available');
  t.is(await restoredSha(d, bk.id!, 'from-rbd-snap'), before.sha256);
  await ok(admin(['snapshot-delete', snap.id!]));
  await until('the RBD snapshot to be gone', async () => {
    const left = JSON.parse((await rbd(c, ['snap', 'ls', '--format', 'json', spec])).toString()) as { name: string }[];
    return left.some((s) => s.name === `snapshot-${snap.id}`) ? undefined : true;
  });
});
