/**
 * Reading backups of packed repositories through every path, by real clients: `backup
 * restore`, NBD (qemu-img compare, nbdcopy, a 4 KiB qemu-io read), the FUSE mount; an
 * encrypted packed repository (pack names and indexes reveal nothing, every backup restores);
 * an S3 packed repository (object count proportional to pack size, not to blocks).
 */
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes, randomInt } from 'node:crypto';
import { ListObjectsV2Command } from '@aws-sdk/client-s3';
import { Appliance } from '../gateway/appliance.js';
import { loadConfig } from '../gateway/config.js';
import { createVolume } from '../gateway/engine/volumes.js';
import { verifyBackup } from '../gateway/engine/verify.js';
import { S3Store } from '../drivers/store/s3.js';
import { cliJson, fileSha, mixedContent, sha, tmpDir } from './helpers/core.js';
import { run, startDaemon } from './helpers/daemon.js';
import { cleanupUnder, requireFuse, startMount } from './helpers/fuse.js';
import { backup, restoreToBuffer } from './helpers/engine.js';
import { getS3, rawS3Client } from './helpers/ceph.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** a packed repository made by `repo create --pack-size`, a volume, a full backup and an incremental after scattered 4 KiB writes */
async function chain(t: ExecutionContext, extra: string[] = [], env: NodeJS.ProcessEnv = {}) {
  const dir = tmpDir(t, 'bg-packs-read-');
  cleanupUnder(t, dir);
  const dataDir = path.join(dir, 'data');
  const created = await cliJson<{ chunk_size: number; pack_size: number }>(dataDir, ['repo', 'create', '--driver', 'dir', '--path', path.join(dir, 'repo'), '--pack-size', '4M', ...extra], env);
  t.is(created.chunk_size, 16 * KiB, 'a packed repository defaults to 16 KiB blocks');
  t.is(created.pack_size, 4 * MiB);
  const img = path.join(dir, 'disk.img');
  const v1 = Buffer.concat([mixedContent(6 * MiB, 16 * KiB), Buffer.alloc(2 * MiB), randomBytes(MiB + 4096)]);
  fs.writeFileSync(img, v1);
  await cliJson(dataDir, ['volume', 'create', '--name', 'disk', '--file', img], env);
  const full = await cliJson<{ id: string }>(dataDir, ['backup', 'create', 'disk', '--name', 'full'], env);
  const v2 = Buffer.from(v1);
  for (let i = 0; i < 40; i++) randomBytes(4096).copy(v2, randomInt(v2.length / 4096) * 4096);
  fs.writeFileSync(img, v2);
  const inc = await cliJson<{ id: string }>(dataDir, ['backup', 'create', '--incremental', 'disk', '--name', 'inc'], env);
  fs.writeFileSync(path.join(dir, 'v1.img'), v1);
  return { dir, dataDir, img, v1, v2, full, inc, repo: path.join(dir, 'repo') };
}

test('restore, NBD (qemu-img, nbdcopy, a 4 KiB read) and FUSE read each backup of a packed chain bit-exact', async (t) => {
  t.timeout(4 * 60_000);
  const c = await chain(t);
  const restored = await cliJson<{ path: string }>(c.dataDir, ['backup', 'restore', 'full', '--name', 'r-full']);
  t.is(fileSha(restored.path), sha(c.v1));
  const d = await startDaemon(t, c.dataDir);
  await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', path.join(c.dir, 'v1.img'), d.uri('disk@full')]);
  await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', c.img, d.uri('disk@inc')]);
  const out = path.join(c.dir, 'copy.img');
  await run('nbdcopy', [d.uri('disk@inc'), out]);
  t.is(fileSha(out), sha(c.v2));
  // one 4 KiB read in the middle of a block of the full backup
  const at = 8 * MiB + 12 * KiB; // in the random tail
  const r = await run('qemu-io', ['-r', '-f', 'raw', '-c', `read -v ${at} 4096`, d.uri('disk@full')]);
  const hex = [...r.stdout.matchAll(/^[0-9a-f]{8}:\s+((?:[0-9a-f]{2} ){15}[0-9a-f]{2})/gm)].map((m) => m[1]!.split(' ').join('')).join('');
  t.is(hex, c.v1.subarray(at, at + 4096).toString('hex'));
  if (!requireFuse(t)) return;
  const mnt = path.join(c.dir, 'mnt');
  await startMount(t, c.dataDir, mnt);
  t.is(sha(await fs.promises.readFile(path.join(mnt, 'volumes', 'disk', 'inc', 'disk.img'))), sha(c.v2));
  t.is(sha(await fs.promises.readFile(path.join(mnt, 'volumes', 'disk', 'full', 'disk.img'))), sha(c.v1));
});

test('an encrypted packed repository: pack names and indexes reveal no digest, blobs are sealed, backups restore and verify', async (t) => {
  const env = { BLOCKGATE_PASSPHRASE: 'packs and secrets' };
  const c = await chain(t, ['--encrypt'], env);
  const packs: string[] = [];
  const walk = (p: string) => fs.readdirSync(p, { withFileTypes: true }).forEach((e) => (e.isDirectory() ? walk(path.join(p, e.name)) : packs.push(path.join(p, e.name))));
  walk(path.join(c.repo, 'packs'));
  t.true(packs.length > 0);
  process.env.BLOCKGATE_PASSPHRASE = env.BLOCKGATE_PASSPHRASE;
  t.teardown(() => delete process.env.BLOCKGATE_PASSPHRASE);
  const app = await Appliance.open(loadConfig(c.dataDir));
  t.teardown(() => app.close());
  const b = app.catalog.backupRecord('inc');
  const digests = new Set<string>();
  const map = app.catalog.mapReader(b);
  for (let i = 0; i < map.chunkCount; i++) {
    const d = map.entry(i);
    if (d) digests.add(d);
  }
  // no chunk digest (keyed) in any pack, no plaintext block either: indexes are sealed, blobs encrypted
  const sample = c.v2.subarray(0, 4096);
  for (const f of packs) {
    const bytes = fs.readFileSync(f);
    for (const d of [...digests].slice(0, 50)) t.is(bytes.indexOf(Buffer.from(d, 'hex')), -1, `digest ${d} in ${path.basename(f)}`);
    t.is(bytes.indexOf(sample), -1);
    t.false(bytes.includes(Buffer.from('BGPI')), 'the index magic is sealed too');
  }
  t.is(sha(await restoreToBuffer(app, b.id)), sha(c.v2));
  t.is((await verifyBackup(app, b.id)).verify_state, 'ok');
});

test('S3: a packed full backup writes objects in proportion to its bytes over the pack size (under 200 for 2 GiB)', async (t) => {
  t.timeout(4 * 60_000);
  const s3 = await getS3();
  const bucket = `bg-packs-${randomBytes(4).toString('hex')}`;
  const st = await S3Store.open({ endpoint: s3.endpoint, region: s3.region, accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey, bucket, createBucket: true });
  await st.close();
  const raw = rawS3Client(s3);
  t.teardown(() => raw.destroy());
  const dir = tmpDir(t);
  const dataDir = path.join(dir, 'data');
  fs.mkdirSync(dataDir, { recursive: true });
  const repository = { driver: 's3', bucket, prefix: 'r', endpoint: s3.endpoint, region: s3.region, accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey };
  // 64 MiB of incompressible data, 16 KiB blocks, 32 MiB packs: the 2 GiB bound scaled is 200 * 64 MiB / 2 GiB = 6.25
  fs.writeFileSync(path.join(dataDir, 'blockgate.json'), JSON.stringify({ chunkSize: 16 * KiB, packSize: 32 * MiB, codec: 'zstd', repository }), { mode: 0o600 });
  const app = await Appliance.open(loadConfig(dataDir));
  t.teardown(() => app.close());
  const file = path.join(dir, 'vol.img');
  const data = randomBytes(64 * MiB);
  fs.writeFileSync(file, data);
  await createVolume(app, { name: 'vol', file });
  const list = async () => {
    const out: string[] = [];
    let token: string | undefined;
    do {
      const page = await raw.send(new ListObjectsV2Command({ Bucket: bucket, ContinuationToken: token }));
      for (const o of page.Contents ?? []) out.push(o.Key!);
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    return out;
  };
  const before = new Set(await list());
  const b = await backup(app, 'vol', { name: 'full' });
  const added = (await list()).filter((k) => !before.has(k));
  t.log(added);
  t.true(added.length <= 200 * (64 / 2048), `${added.length} objects for 64 MiB`);
  t.is(sha(await restoreToBuffer(app, b.id)), sha(data));
  // blocks are ranged GETs of the packs: a cold read of one block
  t.is((await verifyBackup(app, b.id)).verify_state, 'ok');
});
