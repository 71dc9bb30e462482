import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Appliance } from '../gateway/appliance.js';
import { rootDigests } from '../catalog/blockmap.js';
import type { BackupRecord } from '../catalog/records.js';
import { deleteBackup } from '../gateway/engine/delete.js';
import { verifyBackup, verifyBackups } from '../gateway/engine/verify.js';
import { cli, cliJson, openApp, sha, treeState } from './helpers/core.js';
import { backup, restoreToBuffer, volumeFrom } from './helpers/engine.js';

const CS = 64 * 1024;

/** random (incompressible) blocks; blocks listed in `same` hold the content of block same[0] */
function blocks(n: number, same: number[] = []): Buffer {
  const data = randomBytes(n * CS);
  for (const i of same.slice(1)) data.copy(data, i * CS, same[0]! * CS, (same[0]! + 1) * CS);
  return data;
}

const repoDir = (app: Appliance) => path.join(app.config.dataDir, 'repo');
const chunkFile = (app: Appliance, d: string) => path.join(repoDir(app), 'chunks', d.slice(0, 2), d);
const digestAt = (app: Appliance, b: BackupRecord, block: number) => app.catalog.mapReader(b).entry(block)!;

function flipByte(file: string, at = 100): void {
  const buf = fs.readFileSync(file);
  buf[at] = buf[at]! ^ 0xff;
  fs.writeFileSync(file, buf);
}

test('a flipped byte in one chunk: full verify names every backup and block using it, records failed, and the CLI shows it', async (t) => {
  const app = await openApp(t);
  const data = blocks(12, [3, 7]); // blocks 3 and 7 share one chunk
  await volumeFrom(app, 'v', data);
  await volumeFrom(app, 'other', blocks(4));
  const b1 = await backup(app, 'v');
  const b2 = await backup(app, 'v', { incremental: true });
  const bo = await backup(app, 'other');
  const d = digestAt(app, b1, 3);
  t.is(digestAt(app, b1, 7), d);
  flipByte(chunkFile(app, d));

  const r = await cli(app.config.dataDir, ['backup', 'verify', '--all']);
  t.is(r.code, 1, r.stderr);
  for (const id of [b1.id, b2.id]) t.true(r.stdout.includes(id));
  t.true(r.stdout.includes(d));
  t.true(r.stdout.includes(String(7 * CS)));

  const shown = await cliJson<BackupRecord>(app.config.dataDir, ['backup', 'show', b1.id]);
  t.is(shown.verify_state, 'failed');
  t.truthy(shown.verified_at);
  t.deepEqual(
    shown.verify_failures!.map((f) => [f.block, f.offset, f.chunk]),
    [
      [3, 3 * CS, d],
      [7, 7 * CS, d],
    ],
  );
  t.regex(shown.verify_failures![0]!.error, /corrupt/);
  t.is(app.catalog.backupRecord(b2.id).verify_state, 'failed');
  t.is(app.catalog.backupRecord(bo.id).verify_state, 'ok');
  // never deduplicated onto again
  t.is(app.catalog.chunk(d), undefined);
  t.truthy(app.catalog.chunk(digestAt(app, b1, 4)));
});

test('the next backup of the volume stores the corrupt chunk anew; old and new backups then verify clean', async (t) => {
  const app = await openApp(t);
  const data = blocks(10);
  await volumeFrom(app, 'v', data);
  const b1 = await backup(app, 'v');
  const d = digestAt(app, b1, 5);
  flipByte(chunkFile(app, d));
  const first = await verifyBackups(app, [b1.id]);
  t.is(first.backups_failed, 1);
  t.is(first.bad_chunks, 1);
  t.deepEqual(first.bad_chunk_digests, [d]);
  await t.throwsAsync(restoreToBuffer(app, b1.id));

  const b2 = await backup(app, 'v', { incremental: true });
  t.is(b2.new_chunks, 1);
  t.is(digestAt(app, b2, 5), d);
  t.truthy(app.catalog.chunk(d));
  const again = await verifyBackups(app, 'all');
  t.deepEqual(
    again.backups.map((r) => [r.id, r.verify_state]),
    [
      [b1.id, 'ok'],
      [b2.id, 'ok'],
    ],
  );
  t.is(again.failures, 0);
  t.deepEqual(app.catalog.backupRecord(b1.id).verify_failures, []);
  t.is(sha(await restoreToBuffer(app, b1.id)), sha(data));
});

for (const local of [true, false]) {
  test(`--quick misses a flipped byte but catches a deleted and a truncated chunk; the full verify catches all three (${local ? 'local files' : 'object reads, as on S3'})`, async (t) => {
    const app = await openApp(t);
    // without localPath the verify goes through the store's reads (ranged reads for the size), as it does on S3
    if (!local) Object.defineProperty(app.repo.store, 'localPath', { value: undefined });
    await volumeFrom(app, 'v', blocks(8));
    const b = await backup(app, 'v');
    const [flipped, gone, short] = [1, 4, 6].map((i) => digestAt(app, b, i));
    flipByte(chunkFile(app, flipped!));
    fs.rmSync(chunkFile(app, gone!));
    fs.truncateSync(chunkFile(app, short!), 1000);

    const quick = await verifyBackup(app, b.id, { quick: true });
    t.is(quick.verify_state, 'failed');
    t.deepEqual(
      quick.failures.map((f) => [f.block, f.chunk]),
      [
        [4, gone],
        [6, short],
      ],
    );
    t.regex(quick.failures[0]!.error, /missing/);
    t.regex(quick.failures[1]!.error, local ? /1000 bytes/ : /shorter than/);
    t.truthy(app.catalog.chunk(flipped!), 'quick leaves a chunk it found fine in the index');

    const full = await verifyBackup(app, b.id);
    t.deepEqual(
      full.failures.map((f) => f.block),
      [1, 4, 6],
    );
    t.is(app.catalog.chunk(flipped!), undefined);
    t.is(app.catalog.backupRecord(b.id).verify_failures!.length, 3);
  });
}

test('a clean backup verifies ok, quick and full, and verify changes nothing in the repository', async (t) => {
  const app = await openApp(t);
  const data = Buffer.concat([blocks(6), Buffer.alloc(3 * CS), randomBytes(12345)]); // holes and a short last block
  await volumeFrom(app, 'v', data);
  const b = await backup(app, 'v');
  const before = treeState(repoDir(app));
  const full = await verifyBackups(app, [b.id]);
  t.is(full.backups_ok, 1);
  t.is(full.chunks_checked, 7);
  t.is(full.pages_checked, 1);
  t.true(full.bytes_read >= 6 * CS + 12345);
  const quick = await verifyBackups(app, [b.id], { quick: true });
  t.is(quick.backups_ok, 1);
  t.is(app.catalog.backupRecord(b.id).verify_state, 'ok');
  t.deepEqual(treeState(repoDir(app)), before);

  // and a failing verify changes nothing in the repository either
  flipByte(chunkFile(app, digestAt(app, b, 2)));
  const corrupted = treeState(repoDir(app));
  t.is((await verifyBackups(app, 'all')).backups_failed, 1);
  t.deepEqual(treeState(repoDir(app)), corrupted);
});

test('a damaged map page fails the backup, in quick and full mode', async (t) => {
  const app = await openApp(t);
  await volumeFrom(app, 'v', blocks(4));
  const b = await backup(app, 'v');
  const pd = rootDigests(app.catalog.mapRoot(b.id))[0]!;
  flipByte(path.join(repoDir(app), 'pages', pd.slice(0, 2), pd));
  for (const quick of [true, false]) {
    const r = await verifyBackup(app, b.id, { quick });
    t.is(r.verify_state, 'failed');
    t.deepEqual(
      r.failures.map((f) => [f.block, f.chunk]),
      [[0, pd]],
    );
    t.regex(r.failures[0]!.error, /map page/);
  }
});

test('each distinct chunk is read once per run; failures are bounded but all counted; reads run in parallel, bounded', async (t) => {
  const app = await openApp(t);
  const same = Array.from({ length: 20 }, (_, i) => i * 2); // 20 blocks share one chunk
  await volumeFrom(app, 'v', blocks(40, same));
  const b1 = await backup(app, 'v');
  const b2 = await backup(app, 'v');
  const pool = app.pool;
  const real = pool.decodeFile.bind(pool);
  let inflight = 0;
  let most = 0;
  let reads = 0;
  pool.decodeFile = async (p, d) => {
    reads++;
    most = Math.max(most, ++inflight);
    try {
      return await real(p, d);
    } finally {
      inflight--;
    }
  };
  const s = await verifyBackups(app, [b1.id, b2.id], { concurrency: 4 });
  t.is(s.backups_ok, 2);
  t.is(reads, 21);
  t.is(s.chunks_checked, 21);
  t.true(most <= 4, `${most} reads in flight`);
  t.true(most >= 2, 'reads overlap');

  flipByte(chunkFile(app, digestAt(app, b1, 0)));
  const r = await verifyBackup(app, b1.id, { maxFailures: 5 });
  t.is(r.failed_blocks, 20);
  t.is(r.failures.length, 5);
  const listed = r.failures.map((f) => f.block);
  t.true(listed.every((x) => same.includes(x)));
  t.deepEqual(listed, [...listed].sort((x, y) => x - y));
  t.is(app.catalog.backupRecord(b1.id).verify_failures!.length, 5);
});

test('only available backups are verified; the CLI refuses bad usage', async (t) => {
  const app = await openApp(t);
  await volumeFrom(app, 'v', blocks(2));
  const b = await backup(app, 'v');
  const keep = await backup(app, 'v');
  await deleteBackup(app, b.id);
  await t.throwsAsync(verifyBackup(app, b.id), { message: /deleted; only an available backup/ });
  const all = await verifyBackups(app, 'all');
  t.deepEqual(
    all.backups.map((r) => r.id),
    [keep.id],
  );
  t.is((await cli(app.config.dataDir, ['backup', 'verify'])).code, 2);
  t.is((await cli(app.config.dataDir, ['backup', 'verify', keep.id, '--all'])).code, 2);
  t.is((await cli(app.config.dataDir, ['backup', 'verify', 'no-such-backup'])).code, 3);
  t.is((await cli(app.config.dataDir, ['backup', 'verify', b.id])).code, 4);
  const ok = await cliJson<{ backups_ok: number; mode: string }>(app.config.dataDir, ['backup', 'verify', keep.id, '--quick']);
  t.is(ok.backups_ok, 1);
  t.is(ok.mode, 'quick');
});
