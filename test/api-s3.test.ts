/**
 * Two daemons on one S3 bucket (the shared Ceph radosgw), driven by the real clients:
 * export-record on one, import-record on the other, restore there bit-exact; and the cancels:
 * force-delete of a backup being created, reset-state of a backup being restored (the target
 * becomes error_restoring). On S3 with small chunks, one chunk in flight, through a proxy that
 * holds the job mid-way while the cancel is asked for.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import type { JobRecord } from '../catalog/jobs.js';
import { S3Store } from '../drivers/store/s3.js';
import { controlRequest } from '../gateway/instant/control.js';
import { cliJson, tmpDir } from './helpers/core.js';
import { getS3 } from './helpers/ceph.js';
import { TcpProxy } from './helpers/tcp-proxy.js';
import { type ApiDaemon, backupStatus, cinder, http, listTable, ok, openstack, props, startApi, until, volumeStatus, waitBackup, waitVolume } from './helpers/api.js';

const MiB = 1024 * 1024;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** the daemons' repository on a fresh bucket; `endpoint` (a proxy) is what the daemons use, the bucket is made directly */
async function s3Dirs(t: import('ava').ExecutionContext, names: string[], endpoint?: string): Promise<Record<string, string>> {
  const s3 = await getS3();
  const bucket = `bg-api-${randomBytes(4).toString('hex')}`;
  const direct = { driver: 's3', endpoint: s3.endpoint, region: s3.region, accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey, bucket };
  const repository = { ...direct, endpoint: endpoint ?? s3.endpoint };
  const st = await S3Store.open({ ...direct, createBucket: true } as never);
  t.teardown(async () => {
    for await (const n of st.list('')) await st.delete(n);
    await st.close();
  });
  const root = tmpDir(t);
  const out: Record<string, string> = {};
  for (const n of names) {
    const d = path.join(root, n);
    fs.mkdirSync(d, { recursive: true, mode: 0o700 });
    fs.writeFileSync(path.join(d, 'blockgate.json'), JSON.stringify({ chunkSize: 64 * 1024, codec: 'zstd', pipelineDepth: 1, repository }), { mode: 0o600 });
    out[n] = d;
  }
  return out;
}

async function jobOf(d: ApiDaemon, backupId: string, kind: string): Promise<JobRecord | undefined> {
  const all = await controlRequest<JobRecord[]>(d.dataDir, 'GET', '/jobs');
  return all.filter((j) => j.backup_id === backupId && j.kind === kind).at(-1);
}

test('export-record on one daemon, import-record on another sharing the bucket (over quota: 413 and nothing changes), restore there bit-exact', async (t) => {
  t.timeout(5 * 60_000);
  const dirs = await s3Dirs(t, ['a', 'b']);
  const img = path.join(dirs.a!, '..', 'src.img');
  const data = randomBytes(8 * MiB);
  fs.writeFileSync(img, data);
  await cliJson(dirs.a!, ['volume', 'create', '--name', 'src', '--file', img, '--project', 'p1']);
  const a = await startApi(t, dirs.a!);
  const b = await startApi(t, dirs.b!);
  const bk = props(await ok(cinder(a, 'admin', 'p1', ['backup-create', '--name', 'seed', 'src'])));
  t.is(await waitBackup(a, bk.id!), 'available');

  const exported = props(await ok(cinder(a, 'admin', 'p1', ['backup-export', bk.id!])));
  t.is(exported.backup_service, 'blockgate.s3');
  const osc = JSON.parse(await ok(openstack(a, ['volume', 'backup', 'record', 'export', bk.id!, '-f', 'json'], { endpoint: `${a.url}/v3/p1` }))) as { backup_service: string; backup_url: string };
  t.is(osc.backup_url, exported.backup_url);
  t.is((await cinder(b, 'admin', 'p1', ['backup-show', bk.id!])).code, 1, 'B does not know it yet');

  // over the project's quota on B, an import is refused as Cinder refuses it, and leaves B as it was
  const usageOnB = async () => listTable(await ok(cinder(b, 'admin', 'p1', ['quota-usage', 'p1']))).filter((row) => row.Type === 'backups' || row.Type === 'backup_gigabytes');
  const before = await usageOnB();
  t.like(before.find((row) => row.Type === 'backups'), { In_use: '0', Reserved: '0' });
  await ok(cinder(b, 'admin', 'p1', ['quota-update', '--backups', '0', 'p1']));
  const refused = await cinder(b, 'admin', 'p1', ['backup-import', exported.backup_service!, exported.backup_url!]);
  t.is(refused.code, 1);
  t.regex(refused.stderr, /ERROR: Maximum number of backups allowed \(0\) exceeded \(HTTP 413\)/);
  await ok(cinder(b, 'admin', 'p1', ['quota-update', '--backups', '10', '--backup-gigabytes', '0', 'p1']));
  const body = { 'backup-record': { backup_service: exported.backup_service, backup_url: exported.backup_url } };
  const overGb = await http(b, 'POST', '/v3/p1/backups/import_record', body);
  t.is(overGb.status, 413);
  t.deepEqual(overGb.json, { overLimit: { code: 413, message: 'Requested backup exceeds allowed Backup gigabytes quota. Requested 1G, quota is 0G and 0G has been consumed.', retryAfter: '0' } });
  await ok(cinder(b, 'admin', 'p1', ['quota-update', '--backup-gigabytes', '1000', 'p1']));
  t.is((await cinder(b, 'admin', 'p1', ['backup-show', bk.id!])).code, 1, 'no record of it on B');
  t.deepEqual((await http(b, 'GET', '/v3/p1/backups/detail?all_tenants=1')).json, { backups: [] });
  t.deepEqual(await usageOnB(), before, 'no usage and no reservation left');

  const imported = props(await ok(cinder(b, 'admin', 'p1', ['backup-import', exported.backup_service!, exported.backup_url!])));
  t.is(imported.id, bk.id);
  const shown = props(await ok(cinder(b, 'admin', 'p1', ['backup-show', bk.id!])));
  t.is(shown.status, 'available');
  t.is(shown.name, 'seed');
  t.is(shown['os-backup-project-attr:project_id'], 'p1');
  const again = await cinder(b, 'admin', 'p1', ['backup-import', exported.backup_service!, exported.backup_url!]);
  t.regex(again.stderr, /already exists here.*\(HTTP 400\)/);
  const tampered = await cinder(b, 'admin', 'p1', ['backup-import', exported.backup_service!, exported.backup_url!.slice(0, -8)]);
  t.regex(tampered.stderr, /HTTP 400/);

  const r = props(await ok(cinder(b, 'admin', 'p1', ['backup-restore', '--name', 'on-b', bk.id!])));
  t.is(await waitVolume(b, r.volume_id!), 'available');
  t.is(sha(fs.readFileSync(path.join(dirs.b!, 'volumes', 'on-b.img'))), sha(data));
});

test('force-delete cancels a backup being created; reset-state cancels a restore that runs (target error_restoring)', async (t) => {
  t.timeout(8 * 60_000);
  // the daemon reaches S3 through a proxy that can hold its traffic: a job seen mid-way is held
  // there (it can neither finish nor fail) until the cancel has been recorded, so the cancel
  // always meets a running job, however fast the machine
  const proxy = await TcpProxy.forUrl((await getS3()).endpoint);
  t.teardown(() => proxy.close());
  const dirs = await s3Dirs(t, ['a'], proxy.url);
  const dir = dirs.a!;
  // random data: every 64 KiB chunk is a PUT, so the backup runs for a while
  const big = path.join(dir, '..', 'big.img');
  fs.writeFileSync(big, randomBytes(64 * MiB));
  // one random chunk repeated: the backup is quick (one object), its restore reads 1024 chunks from S3
  const block = randomBytes(64 * 1024);
  const rep = path.join(dir, '..', 'rep.img');
  fs.writeFileSync(rep, Buffer.concat(Array.from({ length: 1024 }, () => block)));
  await cliJson(dir, ['volume', 'create', '--name', 'big', '--file', big, '--project', 'p1']);
  await cliJson(dir, ['volume', 'create', '--name', 'rep', '--file', rep, '--project', 'p1']);
  const d = await startApi(t, dir);
  const admin = (a: string[]) => cinder(d, 'admin', 'p1', a);

  /** waits for the job to be running with some progress, holds its S3 traffic, and checks it is still mid-way */
  const holdMidway = async (what: string, find: () => Promise<JobRecord | undefined>): Promise<JobRecord> => {
    await until(`the ${what} job to make progress`, async () => {
      const j = await find();
      return j?.status === 'running' && j.progress.bytes > 0 ? true : undefined;
    });
    proxy.hold();
    const j = (await find())!;
    t.is(j.status, 'running', `the ${what} is held while it runs`);
    t.true((j.progress.percent ?? 0) < 100, `the ${what} is held mid-way (${j.progress.percent}%)`);
    return j;
  };
  /** runs the client's request while the job is held; lets the job go on once the cancel is on its record */
  const cancelHeld = async (jobId: string, request: Promise<import('./helpers/api.js').Run>): Promise<string> => {
    try {
      await until('the cancel to be recorded on the job', async () => {
        const j = (await controlRequest<JobRecord[]>(d.dataDir, 'GET', '/jobs')).find((x) => x.id === jobId);
        return j?.cancel ? true : undefined;
      });
    } finally {
      proxy.release();
    }
    return ok(request);
  };

  const creating = props(await ok(admin(['backup-create', '--name', 'doomed', 'big'])));
  const held = await holdMidway('backup', () => jobOf(d, creating.id!, 'backup'));
  t.is(await backupStatus(d, creating.id!), 'creating');
  t.regex(await cancelHeld(held.id, admin(['backup-delete', '--force', creating.id!])), /Request to delete backup .* has been accepted/);
  const cancelled = await until('the job to end', async () => {
    const j = await jobOf(d, creating.id!, 'backup');
    return j && j.status !== 'running' ? j : undefined;
  });
  t.is(cancelled.status, 'cancelled');
  await until('the backup to be gone', async () => ((await http(d, 'GET', `/v3/backups/${creating.id}`)).status === 404 ? true : undefined));
  t.is(await volumeStatus(d, ((await http(d, 'GET', '/v3/volumes/detail?name=big')).json as { volumes: { id: string }[] }).volumes[0]!.id), 'available');

  const src = props(await ok(admin(['backup-create', '--name', 'rep-bk', 'rep'])));
  t.is(await waitBackup(d, src.id!), 'available');
  const r = props(await ok(admin(['backup-restore', '--name', 'target', src.id!])));
  const restoring = await holdMidway('restore', async () => {
    const j = await jobOf(d, src.id!, 'restore');
    return j && j.volume_id === r.volume_id ? j : undefined;
  });
  t.regex(await cancelHeld(restoring.id, admin(['backup-reset-state', '--state', 'error', src.id!])), /Request to update backup '.*' has been accepted/);
  const j = await until('the restore job to end', async () => {
    const x = await jobOf(d, src.id!, 'restore');
    return x && x.volume_id === r.volume_id && x.status !== 'running' ? x : undefined;
  });
  t.is(j.status, 'cancelled');
  t.is(await volumeStatus(d, r.volume_id!), 'error_restoring');
  const shown = props(await ok(admin(['backup-show', src.id!])));
  t.is(shown.status, 'error');
  t.regex(shown.fail_reason!, /reset-state/);
  // back to available, it restores whole
  await ok(admin(['backup-reset-state', '--state', 'available', src.id!]));
  const again = props(await ok(admin(['backup-restore', '--name', 'whole', src.id!])));
  t.is(await waitVolume(d, again.volume_id!), 'available');
  t.is(sha(fs.readFileSync(path.join(dir, 'volumes', 'whole.img'))), sha(fs.readFileSync(rep)));
});
