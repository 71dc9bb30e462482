/**
 * Two appliances (two data dirs) on one repository — a directory and an S3 bucket on
 * radosgw — run backups, deletes, GCs and catalog rebuilds at the same time, each SIGKILLed
 * at random points, for 20 rounds. At the end every backup that either catalog shows
 * `available` restores bit-exact, and once everything is deleted a GC leaves no chunk.
 */
import ava, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import { S3Store } from '../drivers/store/s3.js';
import type { RepoDriverConfig } from '../gateway/config.js';
import { collectGarbage } from '../gateway/engine/gc.js';
import { deleteBackup } from '../gateway/engine/delete.js';
import { cephTest, getS3 } from './helpers/ceph.js';
import { CLI, cli, mixedContent, mutate, sha, tmpDir } from './helpers/core.js';
import { restoreToBuffer } from './helpers/engine.js';
import { CS, openAt, sharedDataDirs } from './helpers/shared-repo.js';

const ROUNDS = 20;
const SIZE = 3 * 1024 * 1024;

function runMaybeKilled(dataDir: string, args: string[], killAfterMs: number | null): Promise<string> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, '--data-dir', dataDir, ...args], { stdio: 'ignore' });
    const timer = killAfterMs === null ? null : setTimeout(() => child.kill('SIGKILL'), killAfterMs);
    child.on('exit', (code, signal) => {
      if (timer) clearTimeout(timer);
      resolve(signal === 'SIGKILL' ? 'killed' : code === 0 ? 'ok' : `exit ${code}`);
    });
  });
}

async function scenario(t: ExecutionContext, repository: RepoDriverConfig, cleanup?: () => Promise<void>): Promise<void> {
  t.timeout(15 * 60_000);
  const root = tmpDir(t);
  const dirs = sharedDataDirs(root, repository, ['a', 'b']);
  // both volumes start from the same content, so their backups share chunks across appliances
  const base = mixedContent(SIZE, CS);
  const data: Record<string, Buffer> = { a: Buffer.from(base), b: Buffer.from(base) };
  const expected = new Map<string, string>();
  for (const n of ['a', 'b'] as const) {
    fs.writeFileSync(path.join(root, `${n}.img`), data[n]!);
    const r = await cli(dirs[n]!, ['volume', 'create', '--name', `vol-${n}`, '--file', path.join(root, `${n}.img`)]);
    t.is(r.code, 0, r.stderr);
  }
  const outcomes: Record<string, number> = {};
  for (let round = 0; round < ROUNDS; round++) {
    const ops = (['a', 'b'] as const).map(async (n) => {
      const dir = dirs[n]!;
      const pick = Math.random();
      const kill = Math.random() < 0.4 ? 50 + Math.floor(Math.random() * 900) : null;
      let op: string;
      let args: string[];
      if (pick < 0.45) {
        data[n] = Buffer.from(data[n]!);
        mutate(data[n]!, CS, 6);
        fs.writeFileSync(path.join(root, `${n}.img`), data[n]!);
        const name = `${n}-r${round}`;
        expected.set(name, sha(data[n]!));
        op = 'backup';
        args = ['backup', 'create', `vol-${n}`, '--name', name, ...(Math.random() < 0.5 ? ['--incremental'] : [])];
      } else if (pick < 0.65) {
        const list = await cli(dir, ['-f', 'json', 'backup', 'list']);
        const avail = (JSON.parse(list.stdout || '[]') as { id: string; status: string }[]).filter((b) => b.status === 'available');
        if (!avail.length) return;
        op = 'delete';
        args = ['backup', 'delete', avail[Math.floor(Math.random() * avail.length)]!.id];
      } else if (pick < 0.9) {
        op = 'gc';
        args = ['repo', 'gc'];
      } else {
        op = 'rebuild';
        args = ['catalog', 'rebuild'];
      }
      const out = await runMaybeKilled(dir, args, kill);
      outcomes[`${op} ${out}`] = (outcomes[`${op} ${out}`] ?? 0) + 1;
    });
    await Promise.all(ops);
  }
  t.log(JSON.stringify(outcomes));
  t.true(Object.keys(outcomes).some((k) => k.endsWith('killed')), 'some operations were killed');

  // one more backup on each, not killed, so there is always something to check
  for (const n of ['a', 'b'] as const) {
    const name = `${n}-last`;
    expected.set(name, sha(data[n]!));
    const r = await cli(dirs[n]!, ['backup', 'create', `vol-${n}`, '--name', name]);
    t.is(r.code, 0, r.stderr);
  }
  // a final GC (its own process), then both catalogs are opened: each follows the repository
  const last = await cli(dirs.a!, ['repo', 'gc']);
  t.is(last.code, 0, last.stderr);
  const apps = { a: await openAt(t, dirs.a!), b: await openAt(t, dirs.b!) };
  let checked = 0;
  for (const n of ['a', 'b'] as const) {
    const app = apps[n];
    for (const b of app.catalog.listBackups()) {
      t.not(b.status, 'creating', `${n}: ${b.name} left creating`);
      if (b.status !== 'available') continue;
      t.true(expected.has(b.name), `${n}: unexpected backup ${b.name}`);
      const got = await restoreToBuffer(app, b.id).then(sha, (e: Error) => e.message);
      t.is(got, expected.get(b.name)!, `${n}: ${b.name} (${b.id}, notes ${JSON.stringify(b.notes)}) restores bit-exact`);
      checked++;
    }
  }
  t.log(`${checked} available backups restored bit-exact`);
  t.true(checked >= 2, 'at least the last backup of each appliance');
  // everything deleted on both: a GC leaves no chunk behind
  for (const n of ['a', 'b'] as const) {
    for (const b of apps[n].catalog.listBackups()) if (b.status === 'available' || b.status === 'error') await deleteBackup(apps[n], b.id);
  }
  const gc = await collectGarbage(apps.b);
  t.is(gc.liveBackups, 0);
  let left = 0;
  for await (const _ of apps.b.repo.listChunks()) left++;
  t.is(left, 0, 'no chunk is left once no manifest names it');
  await cleanup?.();
}

ava('two appliances on one directory repository: random backups, deletes, GCs, rebuilds and SIGKILLs over 20 rounds lose nothing', async (t) => {
  await scenario(t, { driver: 'dir', path: path.join(tmpDir(t), 'repo') });
});

cephTest('two appliances on one S3 bucket: random backups, deletes, GCs, rebuilds and SIGKILLs over 20 rounds lose nothing', async (t) => {
  const s3 = await getS3();
  const bucket = `blockgate-shared-${randomBytes(3).toString('hex')}`;
  const opts = { endpoint: s3.endpoint, region: s3.region, accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey, bucket };
  const st = await S3Store.open({ ...opts, createBucket: true });
  await scenario(t, { driver: 's3', ...opts }, async () => {
    for await (const name of st.list('')) await st.delete(name);
    await st.close();
  });
});
