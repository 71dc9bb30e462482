/**
 * RBD volumes on a real Ceph cluster (tools/ceph/ceph-up.sh, shared per run): backups read
 * `rbd export-diff` of a snapshot `backup.<id>.snap.<ts>` (full: allocated extents only;
 * incremental: `--from-snap` the parent's, only changed extents), the parent's snapshot goes
 * once the next backup commits, a vanished parent snapshot falls back to a full read that
 * says so, a failed backup leaves no snapshot behind; restores by `rbd import-diff` into new
 * and larger images equal `rbd export` of the source snapshot bit for bit; RBD <-> file
 * restores both ways; the random-access device; names checked; the CLI.
 */
import ava, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import type { Appliance } from '../gateway/appliance.js';
import { runBackup, startBackup } from '../gateway/engine/backup.js';
import { prepareRestore, runRestore } from '../gateway/engine/restore.js';
import { prepareRestoreToNewRbd } from '../gateway/engine/restore-rbd.js';
import { createVolume } from '../gateway/engine/volumes.js';
import { BACKUP_SNAP_RE, RbdError, RbdVolume, parseRbdSpec } from '../drivers/volume/rbd.js';
import type { BackupRecord } from '../catalog/records.js';
import { type CephCluster, cephTest, getCeph, rbd, rbdApply, rbdExportSha, type ImageOp } from './helpers/ceph.js';
import { cli, cliJson, fileSha, openApp, sha, tmpDir } from './helpers/core.js';
import { backup, volumeFrom } from './helpers/engine.js';
import { SYSTEM_PYTHON, type SessionJson, bg, bgJson, run, showSession, startDaemon, waitFor } from './helpers/instant.js';

const test = cephTest;
const MiB = 1 << 20;
const CS = MiB; // repository chunk size in these tests
const POOL = 'volumes';
const RUN = randomBytes(3).toString('hex');
let seq = 0;
const imageName = (tag: string) => `${POOL}/bgt-${RUN}-${tag}-${seq++}`;


/** A fresh image of `size` bytes holding `data` (zero runs stay unallocated: rbd import is sparse). */
async function makeImage(t: ExecutionContext, c: CephCluster, tag: string, size: number, data?: Buffer): Promise<string> {
  const spec = imageName(tag);
  if (data) {
    const file = path.join(tmpDir(t), 'src.img');
    const img = Buffer.alloc(size);
    data.copy(img);
    fs.writeFileSync(file, img);
    await rbd(c, ['import', '--no-progress', file, spec]);
  } else {
    await rbd(c, ['create', '--size', `${size}B`, spec]);
  }
  t.teardown(() => removeImage(c, spec));
  return spec;
}

async function removeImage(c: CephCluster, spec: string): Promise<void> {
  await rbd(c, ['snap', 'purge', '--no-progress', spec]).catch(() => undefined);
  await rbd(c, ['remove', '--no-progress', spec]).catch(() => undefined);
}

async function snaps(c: CephCluster, spec: string): Promise<string[]> {
  const out = await rbd(c, ['snap', 'ls', '--format', 'json', spec]);
  return (JSON.parse(out.toString() || '[]') as Array<{ name: string }>).map((s) => s.name);
}

async function imageSize(c: CephCluster, spec: string): Promise<number> {
  return (JSON.parse((await rbd(c, ['info', '--format', 'json', spec])).toString()) as { size: number }).size;
}

async function exportImage(c: CephCluster, spec: string): Promise<Buffer> {
  return rbd(c, ['export', '--no-progress', spec, '-']);
}

function apply(c: CephCluster, spec: string, ops: ImageOp[]): Promise<void> {
  const { pool, image } = parseRbdSpec(spec);
  return rbdApply(c, pool, image, ops);
}

/** `count` non-overlapping random writes of `size` bytes inside [lo, hi), aligned to `size`; returns them. */
function scatteredWrites(lo: number, hi: number, count: number, size: number): Array<{ op: 'write'; offset: number; data: Buffer }> {
  const slots = new Set<number>();
  const n = Math.floor((hi - lo) / size);
  while (slots.size < count) slots.add(Math.floor(Math.random() * n));
  return [...slots].sort((a, b) => a - b).map((s) => ({ op: 'write', offset: lo + s * size, data: randomBytes(size) }));
}

async function rbdVolume(app: Appliance, c: CephCluster, name: string, spec: string) {
  return createVolume(app, { name, rbd: spec, cephConf: c.conf });
}

test('full backup reads only allocated extents, a 5% incremental only the changed ones; restores into new and larger images equal the snapshot', async (t) => {
  const c = await getCeph();
  const app = await openApp(t, { chunkSize: CS });
  const size = 64 * MiB;
  const data = Buffer.alloc(size);
  randomBytes(40 * MiB).copy(data, 0);
  randomBytes(8 * MiB).copy(data, 48 * MiB);
  const spec = await makeImage(t, c, 'main', size, data);
  await rbdVolume(app, c, 'vol', spec);

  const full = await backup(app, 'vol');
  t.is(full.status, 'available');
  t.is(full.size_bytes, size);
  t.is(full.bytes_read, 48 * MiB, 'a full backup reads the allocated 48 MiB, not the 64 MiB image');
  const m = BACKUP_SNAP_RE.exec(full.change_token ?? '');
  t.truthy(m, `snapshot name ${full.change_token}`);
  t.is(m?.[1], full.id);
  t.deepEqual(await snaps(c, spec), [full.change_token]);
  const fullSnap = await rbdExportSha(c, `${spec}@${full.change_token}`);

  // ~5%: 52 random 64 KiB writes (3.25 MiB) inside allocated data
  const writes = scatteredWrites(0, 40 * MiB, 52, 64 * 1024);
  const changed = writes.reduce((s, w) => s + w.data.length, 0);
  await apply(c, spec, writes);
  const i1 = await backup(app, 'vol', { incremental: true });
  t.true(i1.is_incremental);
  t.is(i1.parent_id, full.id);
  t.true(i1.bytes_read >= changed && i1.bytes_read <= changed * 1.05, `incremental read ${i1.bytes_read} bytes for ${changed} changed`);
  t.true(i1.bytes_read * 15 < size, 'far less than the image');
  t.true(i1.new_chunks <= writes.length, `${i1.new_chunks} new chunks`);
  t.deepEqual(await snaps(c, spec), [i1.change_token], "the parent's snapshot is removed, the new one kept");
  const incSnap = await rbdExportSha(c, `${spec}@${i1.change_token}`);
  t.is(incSnap.bytes, size);

  // a new image made for the restore (rbd create of the backup size)
  const fresh = imageName('fresh');
  t.teardown(() => removeImage(c, fresh));
  const p1 = await prepareRestoreToNewRbd(app, { backup: i1.id, rbd: fresh, name: 'fresh', cephConf: c.conf });
  await runRestore(app, p1.backup, p1.target);
  t.is(app.catalog.volume('fresh').status, 'available');
  t.deepEqual(await rbdExportSha(c, fresh), incSnap, 'new image == rbd export of the source snapshot');
  t.deepEqual(await snaps(c, fresh), [], 'no snapshot left on the target');

  // a larger existing image full of other data: resized? no, it keeps its size; the tail reads as zeroes
  const big = await makeImage(t, c, 'big', 80 * MiB, randomBytes(80 * MiB));
  await rbdVolume(app, c, 'big', big);
  const p2 = await prepareRestore(app, { backup: full.id, volume: 'big' });
  await runRestore(app, p2.backup, p2.target);
  const out = await exportImage(c, big);
  t.is(out.length, 80 * MiB);
  t.is(sha(out.subarray(0, size)), fullSnap.sha256, 'the larger image starts with the full backup, holes zeroed');
  t.true(out.subarray(size).equals(Buffer.alloc(16 * MiB)), 'and reads as zeroes past it');

  // a smaller one is refused, nothing changes
  const small = await makeImage(t, c, 'small', 32 * MiB);
  await rbdVolume(app, c, 'small', small);
  await t.throwsAsync(prepareRestore(app, { backup: i1.id, volume: 'small' }), { message: /smaller than backup/ });
  t.is(app.catalog.backupRecord(i1.id).status, 'available');
});

/** object_count and data_bytes of a backup counted from its map, entry by entry */
function mapCounts(app: Appliance, b: BackupRecord): { objects: number; bytes: number } {
  const m = app.catalog.mapReader(b);
  let objects = 0;
  let bytes = 0;
  for (let i = 0; i < m.chunkCount; i++) {
    if (!m.entry(i)) continue;
    objects++;
    bytes += Math.min(b.chunk_size, b.size_bytes - i * b.chunk_size);
  }
  return { objects, bytes };
}

test('discards and zero writes in an incremental come back as zeroes, its object and byte counts are its map\'s; a grown image is backed up at its new size', async (t) => {
  const c = await getCeph();
  const app = await openApp(t, { chunkSize: CS });
  const size = 24 * MiB;
  const spec = await makeImage(t, c, 'zero', size, randomBytes(size));
  await rbdVolume(app, c, 'vol', spec);
  await backup(app, 'vol');
  await apply(c, spec, [
    { op: 'discard', offset: 4 * MiB, length: 4 * MiB }, // a whole object
    { op: 'write', offset: 10 * MiB + 4096, data: Buffer.alloc(64 * 1024) }, // zeroes, as data
    { op: 'discard', offset: 16 * MiB + 65536, length: 131072 },
  ]);
  const i1 = await backup(app, 'vol', { incremental: true });
  t.deepEqual({ objects: i1.object_count, bytes: i1.data_bytes }, mapCounts(app, i1));
  t.true(i1.object_count < size / CS, 'the discarded object is counted out');
  const want = await rbdExportSha(c, `${spec}@${i1.change_token}`);
  const dst = await makeImage(t, c, 'zero-dst', size, randomBytes(size));
  await rbdVolume(app, c, 'dst', dst);
  const p = await prepareRestore(app, { backup: i1.id, volume: 'dst' });
  await runRestore(app, p.backup, p.target);
  t.deepEqual(await rbdExportSha(c, dst), want);

  await rbd(c, ['resize', '--no-progress', '--size', `${32 * MiB}B`, spec]);
  await apply(c, spec, [{ op: 'write', offset: 28 * MiB, data: randomBytes(MiB) }]);
  const i2 = await backup(app, 'vol', { incremental: true });
  t.is(i2.size_bytes, 32 * MiB);
  t.is(i2.bytes_read, MiB, 'only the new data in the grown part');
  t.deepEqual({ objects: i2.object_count, bytes: i2.data_bytes }, mapCounts(app, i2));
  const p2 = await prepareRestore(app, { backup: i2.id });
  await runRestore(app, p2.backup, p2.target);
  t.is(fileSha(p2.target.path), (await rbdExportSha(c, `${spec}@${i2.change_token}`)).sha256);
});

test('restore of an RBD backup into a raw file, and of a file backup into RBD images', async (t) => {
  const c = await getCeph();
  const app = await openApp(t, { chunkSize: CS });
  const size = 16 * MiB;
  const data = Buffer.alloc(size);
  randomBytes(5 * MiB).copy(data, MiB);
  randomBytes(MiB).copy(data, 12 * MiB);
  const spec = await makeImage(t, c, 'tofile', size, data);
  await rbdVolume(app, c, 'r', spec);
  const b = await backup(app, 'r');
  const p = await prepareRestore(app, { backup: b.id });
  t.is(p.target.driver, 'file');
  await runRestore(app, p.backup, p.target);
  t.is(fileSha(p.target.path), (await rbdExportSha(c, `${spec}@${b.change_token}`)).sha256);
  t.is(fileSha(p.target.path), sha(data));

  // a file volume's backup into an existing RBD image full of garbage, and into a new one
  const fileData = Buffer.alloc(size);
  randomBytes(3 * MiB).copy(fileData, 0);
  randomBytes(2 * MiB).copy(fileData, 9 * MiB + 12345);
  await volumeFrom(app, 'f', fileData);
  const fb = await backup(app, 'f');
  t.is(fb.change_token, null);
  const dst = await makeImage(t, c, 'fromfile', size, randomBytes(size));
  await rbdVolume(app, c, 'dst', dst);
  const p2 = await prepareRestore(app, { backup: fb.id, volume: 'dst' });
  await runRestore(app, p2.backup, p2.target);
  t.is(sha(await exportImage(c, dst)), sha(fileData));
  const fresh = imageName('fromfile-new');
  t.teardown(() => removeImage(c, fresh));
  const p3 = await prepareRestoreToNewRbd(app, { backup: fb.id, rbd: fresh, name: 'new', cephConf: c.conf });
  await runRestore(app, p3.backup, p3.target);
  t.is(sha(await exportImage(c, fresh)), sha(fileData));
  t.is(await imageSize(c, fresh), size);
});

test("a parent snapshot removed by the user makes the next incremental a full read that says so, and exact", async (t) => {
  const c = await getCeph();
  const app = await openApp(t, { chunkSize: CS });
  const size = 32 * MiB;
  const spec = await makeImage(t, c, 'gone', size, randomBytes(20 * MiB));
  await rbdVolume(app, c, 'vol', spec);
  const full = await backup(app, 'vol');
  await rbd(c, ['snap', 'rm', '--no-progress', `${spec}@${full.change_token}`]);
  // after the snapshot went: a whole object discarded (absent from a full diff) and new data
  await apply(c, spec, [
    { op: 'discard', offset: 8 * MiB, length: 4 * MiB },
    { op: 'write', offset: 2 * MiB, data: randomBytes(4096) },
  ]);
  const i1 = await backup(app, 'vol', { incremental: true });
  t.is(i1.status, 'available');
  t.true(i1.is_incremental);
  const note = i1.notes.find((n) => /no longer exists/.test(n));
  t.truthy(note, `notes: ${JSON.stringify(i1.notes)}`);
  t.regex(note!, new RegExp(`${full.change_token!.replace(/\./g, '\\.')}.*whole image`));
  t.is(i1.bytes_read, 16 * MiB, 'a full read of what is allocated now');
  const p = await prepareRestore(app, { backup: i1.id });
  await runRestore(app, p.backup, p.target);
  t.is(fileSha(p.target.path), (await rbdExportSha(c, `${spec}@${i1.change_token}`)).sha256, 'the discarded object reads as zeroes, not as the parent had it');

  // and the chain goes on from the new snapshot
  await apply(c, spec, [{ op: 'write', offset: 5 * MiB, data: randomBytes(65536) }]);
  const i2 = await backup(app, 'vol', { incremental: true });
  t.is(i2.bytes_read, 65536);
  t.false(i2.notes.some((n) => /no longer exists/.test(n)));
  t.deepEqual(await snaps(c, spec), [i2.change_token]);
});

test('a failed backup removes its snapshot and keeps the parent one; the next incremental still diffs from the parent', async (t) => {
  const c = await getCeph();
  const app = await openApp(t, { chunkSize: CS });
  const size = 16 * MiB;
  const spec = await makeImage(t, c, 'fail', size, randomBytes(size));
  await rbdVolume(app, c, 'vol', spec);
  const full = await backup(app, 'vol');
  await apply(c, spec, [{ op: 'write', offset: 3 * MiB, data: randomBytes(65536) }]);
  const putChunk = app.repo.putChunk.bind(app.repo);
  app.repo.putChunk = async () => {
    throw new Error('repository is full (test)');
  };
  const rec = await startBackup(app, { volume: 'vol', incremental: true });
  await t.throwsAsync(runBackup(app, rec), { message: /repository is full/ });
  app.repo.putChunk = putChunk;
  const failed = app.catalog.backupRecord(rec.id);
  t.is(failed.status, 'error');
  t.regex(failed.fail_reason ?? '', /repository is full/);
  t.deepEqual(await snaps(c, spec), [full.change_token], "the failed backup's snapshot is gone, the parent's kept");
  const i1 = await backup(app, 'vol', { incremental: true });
  t.is(i1.parent_id, full.id);
  t.is(i1.bytes_read, 65536);
  t.deepEqual(i1.notes.filter((n) => /no longer exists/.test(n)), []);
});

test('RBD names are checked before anything runs; a missing image is a clear error', async (t) => {
  for (const bad of ['volumes', 'volumes/', '/img', 'volumes/../etc', 'volumes/a b', 'volumes/ns/img', 'volumes/img@snap', '../x/y', 'vol umes/x', '-x/y', 'volumes/-x']) {
    t.throws(() => parseRbdSpec(bad), { instanceOf: RbdError, message: /invalid RBD image/ }, bad);
  }
  t.deepEqual(parseRbdSpec('volumes/db-1.img_2'), { pool: 'volumes', image: 'db-1.img_2' });
  t.throws(() => new RbdVolume('volumes/x', { user: 'bad user' }), { message: /invalid ceph user/ });
  const c = await getCeph();
  const app = await openApp(t);
  await t.throwsAsync(createVolume(app, { name: 'x', rbd: 'volumes/../../etc/passwd' }), { message: /invalid RBD image/ });
  const missing = imageName('missing');
  await t.throwsAsync(createVolume(app, { name: 'x', rbd: missing, cephConf: c.conf }), { message: new RegExp(`RBD image ${missing} does not exist`) });
  await t.throwsAsync(createVolume(app, { name: 'x', rbd: `nosuchpool-${RUN}/img`, cephConf: c.conf }), { message: /rbd info .* failed|does not exist/ });
  t.deepEqual(app.catalog.listVolumes(), []);
  // --size creates the image; an existing one is refused with --size
  const made = imageName('made');
  t.teardown(() => removeImage(c, made));
  const v = await createVolume(app, { name: 'made', rbd: made, size: 8 * MiB, cephConf: c.conf });
  t.is(v.driver, 'rbd');
  t.is(v.path, made);
  t.is(v.managed, false, 'blockgate never removes an RBD image');
  t.is(await imageSize(c, made), 8 * MiB);
  await t.throwsAsync(createVolume(app, { name: 'made2', rbd: made, size: 8 * MiB, cephConf: c.conf }), { message: /already exists/ });
});

test('an RBD image opened as a device: read, write, zero, discard, flush, bounds, read-only', async (t) => {
  const c = await getCeph();
  const size = 8 * MiB;
  const data = randomBytes(size);
  const spec = await makeImage(t, c, 'dev', size, data);
  const vol = new RbdVolume(spec, { conf: c.conf });
  const rw = await vol.open('write');
  t.teardown(() => rw.close());
  t.is(rw.size, size);
  t.false(rw.readOnly);
  t.true((await rw.read(MiB + 7, 70000)).equals(data.subarray(MiB + 7, MiB + 7 + 70000)));
  const w = randomBytes(300000);
  await Promise.all([rw.write(3 * MiB + 11, w), rw.read(0, 4096), rw.write(5, Buffer.from('xyz'), true)]);
  await rw.zero!(6 * MiB, 65536);
  await rw.trim!(7 * MiB, MiB);
  await rw.flush!();
  await t.throwsAsync(rw.read(size - 10, 11), { message: /outside/ });
  const out = await exportImage(c, spec);
  const want = Buffer.from(data);
  w.copy(want, 3 * MiB + 11);
  Buffer.from('xyz').copy(want, 5);
  want.fill(0, 6 * MiB, 6 * MiB + 65536);
  want.fill(0, 7 * MiB, 8 * MiB);
  t.is(sha(out), sha(want));
  const ro = await vol.open('read');
  t.teardown(() => ro.close());
  t.true(ro.readOnly);
  await t.throwsAsync(ro.write(0, Buffer.from('no')), { message: /read-only/ });
  t.true((await ro.read(3 * MiB + 11, w.length)).equals(w));
  await ro.close();
  await t.throwsAsync(ro.read(0, 1), { message: /closed/ });
  await t.throwsAsync(new RbdVolume(imageName('nope'), { conf: c.conf }).open('read'), { message: /does not exist/ });
});

test('CLI: volume create --rbd, full and incremental backups, restore into an RBD volume', async (t) => {
  const c = await getCeph();
  const dataDir = path.join(tmpDir(t), 'data');
  const size = 16 * MiB;
  const spec = await makeImage(t, c, 'cli', size, randomBytes(6 * MiB));
  const vol = await cliJson<{ driver: string; path: string; ceph_conf: string }>(dataDir, ['volume', 'create', '--name', 'r', '--rbd', spec, '--ceph-conf', c.conf]);
  t.is(vol.driver, 'rbd');
  t.is(vol.path, spec);
  t.is(vol.ceph_conf, c.conf);
  const full = await cliJson<BackupRecord>(dataDir, ['backup', 'create', 'r', '--name', 'full']);
  t.is(full.status, 'available');
  t.is(full.bytes_read, 6 * MiB);
  const fullSha = await rbdExportSha(c, `${spec}@${full.change_token}`);
  await apply(c, spec, [{ op: 'write', offset: 65536, data: randomBytes(65536) }]);
  const i1 = await cliJson<BackupRecord>(dataDir, ['backup', 'create', '--incremental', 'r', '--name', 'inc']);
  t.is(i1.bytes_read, 65536);
  const target = imageName('cli-dst');
  t.teardown(() => removeImage(c, target));
  await cliJson(dataDir, ['volume', 'create', '--name', 'dst', '--rbd', target, '--size', '16M', '--ceph-conf', c.conf]);
  const restored = await cliJson<{ status: string }>(dataDir, ['backup', 'restore', 'inc', 'dst']);
  t.is(restored.status, 'available');
  t.deepEqual(await rbdExportSha(c, target), await rbdExportSha(c, `${spec}@${i1.change_token}`));
  // into a new RBD image made for the restore
  const made = imageName('cli-new');
  t.teardown(() => removeImage(c, made));
  const nv = await cliJson<{ status: string; driver: string; path: string; name: string }>(dataDir, ['backup', 'restore', 'full', '--rbd', made, '--ceph-conf', c.conf]);
  t.like(nv, { status: 'available', driver: 'rbd', path: made, name: made.split('/')[1] });
  t.deepEqual(await rbdExportSha(c, made), fullSha);
  t.is(await imageSize(c, made), size);
  const both = await cli(dataDir, ['backup', 'restore', 'full', 'dst', '--rbd', made]);
  t.is(both.code, 2);
  const bad = await cli(dataDir, ['volume', 'create', '--name', 'bad', '--rbd', 'volumes/../x']);
  t.not(bad.code, 0);
  t.regex(bad.stderr, /^blockgate: error: invalid RBD image "volumes\/\.\.\/x"/);
  t.notRegex(bad.stderr, /\n\s+at /, 'no stack trace');
});

test('instant restore into an RBD image: served over NBD at once, reads and writes during the copy, the image complete at the end', async (t) => {
  const c = await getCeph();
  const dataDir = path.join(tmpDir(t), 'data');
  fs.mkdirSync(dataDir, { recursive: true });
  fs.writeFileSync(path.join(dataDir, 'blockgate.json'), JSON.stringify({ chunkSize: CS }));
  const size = 16 * MiB;
  const data = Buffer.alloc(size);
  randomBytes(9 * MiB).copy(data, 2 * MiB);
  const spec = await makeImage(t, c, 'inst-src', size, data);
  await cliJson(dataDir, ['volume', 'create', '--name', 'src', '--rbd', spec, '--ceph-conf', c.conf]);
  await cliJson(dataDir, ['backup', 'create', 'src', '--name', 'full']);
  const target = imageName('inst-dst');
  t.teardown(() => removeImage(c, target));
  await cliJson(dataDir, ['volume', 'create', '--name', 'tgt', '--rbd', target, '--size', '16M', '--ceph-conf', c.conf]);
  const d = await startDaemon(t, dataDir);
  const s = await bgJson<SessionJson>(dataDir, ['backup', 'restore', 'full', 'tgt', '--instant', '--copy-rate', '4M', '--copy-concurrency', '1']);
  t.is(s.status, 'running');
  // the whole volume reads back at once (blocks not copied yet come from the backup)
  const copy = path.join(tmpDir(t), 'copy.img');
  const nc = await run('nbdcopy', [s.uri!, copy]);
  t.is(nc.code, 0, nc.stderr);
  t.is(fileSha(copy), sha(data));
  const hello = Buffer.from('written by a guest while the copy runs');
  const py = `import nbd\nh = nbd.NBD()\nh.connect_uri(${JSON.stringify(s.uri!)})\nh.pwrite(${JSON.stringify(hello.toString())}.encode(), ${9 * MiB + 100})\nh.flush()\nh.shutdown()\n`;
  const w = await run(SYSTEM_PYTHON, ['-c', py]);
  t.is(w.code, 0, w.stderr);
  hello.copy(data, 9 * MiB + 100);
  const done = await waitFor('the session to complete', async () => {
    const v = await showSession(dataDir, s.id);
    return v.status === 'completed' ? v : null;
  }, 120_000, 250);
  t.is(done.status, 'completed');
  await bg(dataDir, ['restore', 'detach', s.id]);
  await d.kill('SIGTERM');
  t.is(sha(await exportImage(c, target)), sha(data), 'the RBD image holds the backup with the guest write');
});
