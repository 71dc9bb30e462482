/**
 * Record export/import (Cinder's backup-export / backup-import) and catalog rebuild: the
 * seed workflow between two appliances on one S3 bucket (an incremental on its own after
 * its full was deleted), every bad record refused with nothing changed, and a lost catalog
 * rebuilt from the repository alone, then served over NBD and FUSE.
 */
import ava from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { S3Store } from '../drivers/store/s3.js';
import { cephTest, getS3 } from './helpers/ceph.js';
import { cli, cliJson, mixedContent, mutate, sha, tmpDir, treeState } from './helpers/core.js';
import { startDaemon, run } from './helpers/daemon.js';
import { requireFuse, startMount } from './helpers/fuse.js';
import { CS, carryRecord, sharedDataDirs } from './helpers/shared-repo.js';

interface Rec {
  id: string;
  status: string;
  name: string;
  parent_id: string | null;
  is_incremental: boolean;
  has_dependent_backups: boolean;
  volume_name: string;
}

async function chainOn(root: string, dataDir: string, name = 'v'): Promise<{ full: Rec; inc: Rec; v1: Buffer; v2: Buffer; img: string }> {
  const img = path.join(root, `${name}.img`);
  const v1 = mixedContent(2 * 1024 * 1024 + 4096, CS);
  fs.writeFileSync(img, v1);
  await cliJson(dataDir, ['volume', 'create', '--name', name, '--file', img]);
  const full = await cliJson<Rec>(dataDir, ['backup', 'create', name, '--name', `${name}-full`]);
  const v2 = Buffer.from(v1);
  mutate(v2, CS, 5);
  fs.writeFileSync(img, v2);
  const inc = await cliJson<Rec>(dataDir, ['backup', 'create', name, '--incremental', '--name', `${name}-inc`]);
  return { full, inc, v1, v2, img };
}

async function restoredSha(dataDir: string, args: string[], file: string): Promise<string> {
  const r = await cli(dataDir, ['backup', 'restore', ...args]);
  if (r.code !== 0) throw new Error(r.stderr);
  return sha(fs.readFileSync(file));
}

cephTest('seed workflow on one S3 bucket: export on A, import on B, restore on B into a new and an existing volume; an incremental imports alone after its full was deleted', async (t) => {
  t.timeout(5 * 60_000);
  const s3 = await getS3();
  const bucket = `blockgate-seed-${randomBytes(3).toString('hex')}`;
  const opts = { endpoint: s3.endpoint, region: s3.region, accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey, bucket };
  const st = await S3Store.open({ ...opts, createBucket: true });
  t.teardown(async () => {
    for await (const n of st.list('')) await st.delete(n);
    await st.close();
  });
  const root = tmpDir(t);
  const dirs = sharedDataDirs(root, { driver: 's3', ...opts }, ['a', 'b']);
  const c = await chainOn(root, dirs.a!);
  const ex = await cliJson<{ backup_service: string; backup_url: string }>(dirs.a!, ['backup', 'export', c.full.id]);
  t.is(ex.backup_service, 'blockgate.s3');
  const record = JSON.parse(Buffer.from(ex.backup_url, 'base64').toString()) as Record<string, unknown>;
  t.is(record.id, c.full.id);
  t.is(record.manifest, `manifests/${c.full.id}.json`);
  t.false(JSON.stringify(record).includes(s3.secretAccessKey), 'no secret in the record');
  const imported = await cliJson<Rec>(dirs.b!, ['backup', 'import', ex.backup_service, ex.backup_url]);
  t.is(imported.status, 'available');
  t.is(imported.id, c.full.id);
  t.is(await restoredSha(dirs.b!, [c.full.id, '--name', 'new1'], path.join(dirs.b!, 'volumes', 'new1.img')), sha(c.v1), 'into a new volume');
  const existing = path.join(root, 'existing.img');
  fs.writeFileSync(existing, randomBytes(c.v1.length));
  await cliJson(dirs.b!, ['volume', 'create', '--name', 'same', '--file', existing]);
  t.is(await restoredSha(dirs.b!, [c.full.id, 'same'], existing), sha(c.v1), 'into an existing volume of the same size');

  // the incremental alone: its full is deleted on A (and collected), the record still imports and restores
  await cliJson(dirs.a!, ['backup', 'delete', c.full.id]);
  await cliJson(dirs.b!, ['backup', 'delete', c.full.id]);
  await cliJson(dirs.a!, ['repo', 'gc']);
  const r = await carryRecord(dirs.a!, dirs.b!, c.inc.id);
  t.is(r.code, 0, r.stderr);
  const inc = await cliJson<Rec>(dirs.b!, ['backup', 'show', c.inc.id]);
  t.is(inc.status, 'available');
  t.true(inc.is_incremental);
  t.is(inc.parent_id, c.full.id);
  t.is(await restoredSha(dirs.b!, [c.inc.id, '--name', 'new2'], path.join(dirs.b!, 'volumes', 'new2.img')), sha(c.v2));
});

ava('bad records are refused with one clear line and change nothing; an existing id is refused, a deleted one revived', async (t) => {
  const root = tmpDir(t);
  const dirs = sharedDataDirs(root, { driver: 'dir', path: path.join(root, 'repo') }, ['a', 'b']);
  const other = sharedDataDirs(root, { driver: 'dir', path: path.join(root, 'repo2') }, ['c']);
  const c = await chainOn(root, dirs.a!);
  const ex = await cliJson<{ backup_service: string; backup_url: string }>(dirs.a!, ['backup', 'export', c.inc.id]);
  const rec = JSON.parse(Buffer.from(ex.backup_url, 'base64').toString()) as Record<string, unknown>;
  const enc = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64');
  await cliJson(other.c!, ['repo', 'info']);
  const cases: [string, string, string, number, RegExp][] = [
    ['not base64', ex.backup_service, '!!not base64!!', 2, /not base64/],
    ['truncated', ex.backup_service, ex.backup_url.slice(0, Math.floor(ex.backup_url.length / 8) * 4), 2, /truncated|not base64|JSON/],
    ['not JSON', ex.backup_service, Buffer.from('hello, world').toString('base64'), 2, /JSON/],
    ['incomplete', ex.backup_service, enc({ id: rec.id }), 2, /incomplete/],
    ['tampered size', ex.backup_service, enc({ ...rec, size_bytes: 1 }), 2, /size_bytes does not match/],
    ['tampered digest', ex.backup_service, enc({ ...rec, manifest_sha256: 'a'.repeat(64) }), 2, /does not match the record's digest/],
    ['other service', 'cinder.backup.drivers.posix.PosixBackupDriver', ex.backup_url, 2, /not a blockgate service/],
    ['another repository', ex.backup_service, enc({ ...rec, repository_id: '00000000-0000-0000-0000-000000000000' }), 4, /belongs to repository/],
    ['missing manifest', ex.backup_service, enc({ ...rec, id: '11111111-2222-3333-4444-555555555555', manifest: 'manifests/11111111-2222-3333-4444-555555555555.json' }), 4, /no manifest in the repository/],
  ];
  const before = treeState(dirs.b!);
  const repoBefore = treeState(path.join(root, 'repo'));
  for (const [what, service, url, code, msg] of cases) {
    const r = await cli(dirs.b!, ['backup', 'import', service, url]);
    t.is(r.code, code, `${what}: exit code (${r.stderr})`);
    t.regex(r.stderr, msg, what);
    t.is(r.stderr.trim().split('\n').length, 1, `${what}: one line`);
  }
  const wrongRepo = await cli(other.c!, ['backup', 'import', ex.backup_service, ex.backup_url]);
  t.is(wrongRepo.code, 4);
  t.regex(wrongRepo.stderr, /belongs to repository/);
  t.deepEqual((await cliJson<Rec[]>(dirs.b!, ['backup', 'list', '--all'])).length, 0, 'no backup was created');
  t.deepEqual(treeState(path.join(root, 'repo')), repoBefore, 'the repository is untouched');
  t.true(before.length > 0);

  // the good record imports; again is refused; deleted, it is revived
  t.is((await cliJson<Rec>(dirs.b!, ['backup', 'import', ex.backup_service, ex.backup_url])).status, 'available');
  const dup = await cli(dirs.b!, ['backup', 'import', ex.backup_service, ex.backup_url]);
  t.is(dup.code, 4);
  t.regex(dup.stderr, /already exists/);
  const dupA = await cli(dirs.a!, ['backup', 'import', ex.backup_service, ex.backup_url]);
  t.is(dupA.code, 4, 'refused where it was made, too');
  const manifestFile = path.join(root, 'repo', 'manifests', `${c.inc.id}.json`);
  const saved = fs.readFileSync(manifestFile);
  await cliJson(dirs.b!, ['backup', 'delete', c.inc.id]);
  // B's delete removed the manifest: a deleted backup can be revived only while its manifest is there
  const gone = await cli(dirs.b!, ['backup', 'import', ex.backup_service, ex.backup_url]);
  t.is(gone.code, 4);
  t.regex(gone.stderr, /no manifest/);
  // the manifest comes back (the repository is re-synced from the site that still has the backup): revived
  fs.writeFileSync(manifestFile, saved);
  const revived = await cli(dirs.b!, ['-f', 'json', 'backup', 'import', ex.backup_service, ex.backup_url]);
  t.is(revived.code, 0, revived.stderr);
  const shown = JSON.parse(revived.stdout) as Rec & { notes: string[] };
  t.is(shown.status, 'available');
  t.true(shown.notes.includes('revived by a record import'));
  t.is(await restoredSha(dirs.b!, [c.inc.id, '--name', 'back'], path.join(dirs.b!, 'volumes', 'back.img')), sha(c.v2));
});

ava('catalog rebuild after the catalog is lost: every backup restores bit-exact, NBD and FUSE serve them, a second rebuild changes nothing', async (t) => {
  t.timeout(5 * 60_000);
  const root = tmpDir(t);
  const dirs = sharedDataDirs(root, { driver: 'dir', path: path.join(root, 'repo') }, ['a']);
  const a = await chainOn(root, dirs.a!, 'va');
  const b = await chainOn(root, dirs.a!, 'vb');
  const deleted = await cliJson<Rec>(dirs.a!, ['backup', 'create', 'va', '--name', 'gone']);
  await cliJson(dirs.a!, ['backup', 'delete', deleted.id]);
  fs.rmSync(path.join(dirs.a!, 'catalog'), { recursive: true });
  const rep = await cliJson<{ manifests: number; added: number; volumesAdded: number; errors: unknown[] }>(dirs.a!, ['catalog', 'rebuild']);
  t.deepEqual([rep.manifests, rep.added, rep.volumesAdded, rep.errors.length], [4, 4, 2, 0]);
  const list = await cliJson<Rec[]>(dirs.a!, ['backup', 'list']);
  t.deepEqual(list.map((x) => x.name).sort(), ['va-full', 'va-inc', 'vb-full', 'vb-inc']);
  const full = list.find((x) => x.name === 'va-full')!;
  const inc = list.find((x) => x.name === 'va-inc')!;
  t.is(inc.parent_id, full.id);
  t.true(full.has_dependent_backups);
  t.is(await restoredSha(dirs.a!, ['va-full', '--name', 'r1'], path.join(dirs.a!, 'volumes', 'r1.img')), sha(a.v1));
  t.is(await restoredSha(dirs.a!, ['va-inc', '--name', 'r2'], path.join(dirs.a!, 'volumes', 'r2.img')), sha(a.v2));
  t.is(await restoredSha(dirs.a!, ['vb-inc', '--name', 'r3'], path.join(dirs.a!, 'volumes', 'r3.img')), sha(b.v2));
  // the volume records came back: an incremental continues the chain
  const next = await cliJson<Rec>(dirs.a!, ['backup', 'create', 'vb', '--incremental', '--name', 'vb-next']);
  t.is(next.parent_id, b.inc.id);

  const again = await cliJson<{ added: number; present: number }>(dirs.a!, ['catalog', 'rebuild']);
  t.is(again.added, 0);
  t.is(again.present, 5);
  t.is((await cliJson<Rec[]>(dirs.a!, ['backup', 'list'])).length, 5);

  const d = await startDaemon(t, dirs.a!);
  fs.writeFileSync(path.join(root, 'v1.img'), a.v1);
  await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', path.join(root, 'v1.img'), d.uri('va@va-full')]);
  await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', b.img, d.uri('vb@vb-inc')]);
  await d.stop();

  if (!requireFuse(t)) return;
  const mnt = path.join(root, 'mnt');
  await startMount(t, dirs.a!, mnt);
  const img = path.join(mnt, 'volumes', 'va', 'va-inc', 'disk.img');
  t.is(sha(await fs.promises.readFile(img)), sha(a.v2), 'the rebuilt backup reads bit-exact through FUSE');
});
