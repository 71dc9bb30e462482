/**
 * A daemon SIGKILLed with jobs running and queued, then restarted: no record stays creating,
 * restoring or deleting; the running backup ends `error` with its fail_reason, the queued one
 * resumes and completes, the restore's target is error_restoring, the delete resumes; every
 * available backup then restores bit-exact.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import type { JobRecord } from '../catalog/jobs.js';
import { controlRequest } from '../gateway/instant/control.js';
import { cliJson, tmpDir, writeConfig } from './helpers/core.js';
import { type ApiDaemon, http, startApi, until, waitBackup, waitVolume } from './helpers/api.js';

const MiB = 1024 * 1024;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

async function post(d: ApiDaemon, route: string, body: unknown): Promise<Record<string, { id: string; volume_id?: string }>> {
  const r = await http(d, 'POST', route, body);
  if (r.status >= 300) throw new Error(`${route}: HTTP ${r.status} ${r.text}`);
  return r.json as Record<string, { id: string }>;
}

test('SIGKILL with jobs running and queued, then a restart: every record settles or resumes, every available backup restores bit-exact', async (t) => {
  t.timeout(8 * 60_000);
  const root = tmpDir(t);
  const data = path.join(root, 'data');
  writeConfig(data, { chunkSize: 64 * 1024, pipelineDepth: 1 } as never);
  const contents: Record<string, Buffer> = {};
  const vols: Record<string, string> = {};
  for (const [name, size] of [['small', 4 * MiB], ['other', 4 * MiB], ['big', 160 * MiB]] as const) {
    contents[name] = randomBytes(size);
    fs.writeFileSync(path.join(root, `${name}.img`), contents[name]);
    vols[name] = (await cliJson<{ id: string }>(data, ['volume', 'create', '--name', name, '--file', path.join(root, `${name}.img`), '--project', 'p1'])).id;
  }
  let d = await startApi(t, data, ['--workers', '1']);
  const keep = (await post(d, '/v3/backups', { backup: { volume_id: vols.small, name: 'keep' } })).backup!.id;
  const gone = (await post(d, '/v3/backups', { backup: { volume_id: vols.other, name: 'gone' } })).backup!.id;
  t.is(await waitBackup(d, keep), 'available');
  t.is(await waitBackup(d, gone), 'available');

  // one worker: the big backup runs, everything after it waits
  const running = (await post(d, '/v3/backups', { backup: { volume_id: vols.big, name: 'running' } })).backup!.id;
  await until('the big backup to run', async () => {
    const jobs = await controlRequest<JobRecord[]>(data, 'GET', '/jobs');
    return jobs.find((j) => j.backup_id === running)?.status === 'running' ? true : undefined;
  });
  const queued = (await post(d, '/v3/backups', { backup: { volume_id: vols.small, name: 'queued', incremental: true } })).backup!.id;
  const restore = (await post(d, `/v3/backups/${keep}/restore`, { restore: { name: 'target' } })).restore as unknown as { volume_id: string };
  const delRes = await http(d, 'DELETE', `/v3/backups/${gone}`);
  t.is(delRes.status, 202);
  const jobs = await controlRequest<JobRecord[]>(data, 'GET', '/jobs');
  t.deepEqual(jobs.filter((j) => j.status === 'queued').map((j) => j.kind).sort(), ['backup', 'delete', 'restore']);
  t.is(jobs.filter((j) => j.status === 'running').length, 1);

  t.is(await d.stop('SIGKILL'), null);
  d = await startApi(t, data, ['--workers', '1']);
  t.true(d.log.some((l) => l.includes('jobs-recovered')));

  const settled = await until('no transitional state', async () => {
    const b = ((await http(d, 'GET', '/v3/backups/detail?all_tenants=1')).json as { backups: { id: string; status: string; fail_reason: string | null }[] }).backups;
    const v = ((await http(d, 'GET', '/v3/volumes/detail?all_tenants=1')).json as { volumes: { id: string; status: string }[] }).volumes;
    const busy = b.some((x) => ['creating', 'restoring', 'deleting'].includes(x.status)) || v.some((x) => ['backing-up', 'restoring-backup'].includes(x.status));
    return busy ? undefined : { b, v };
  });
  const byId = Object.fromEntries(settled.b.map((b) => [b.id, b]));
  t.is(byId[running]!.status, 'error');
  t.regex(byId[running]!.fail_reason!, /interrupted/);
  t.is(byId[queued]!.status, 'available', 'the queued backup resumed');
  t.is(byId[keep]!.status, 'available');
  t.false(gone in byId, 'the queued delete resumed');
  t.is(settled.v.find((v) => v.id === restore.volume_id)!.status, 'error_restoring');
  const after = await controlRequest<JobRecord[]>(data, 'GET', '/jobs');
  t.false(after.some((j) => j.status === 'queued' || j.status === 'running'), 'no job left active');

  // every available backup restores bit-exact
  const expected: Record<string, Buffer> = { [keep]: contents.small!, [queued]: contents.small! };
  for (const b of settled.b.filter((x) => x.status === 'available')) {
    const r = (await post(d, `/v3/backups/${b.id}/restore`, { restore: { name: `check-${b.id.slice(0, 8)}` } })).restore as unknown as { volume_id: string };
    t.is(await waitVolume(d, r.volume_id), 'available');
    t.is(sha(fs.readFileSync(path.join(data, 'volumes', `check-${b.id.slice(0, 8)}.img`))), sha(expected[b.id]!), `backup ${b.id}`);
  }
  t.is(Object.keys(expected).length, settled.b.filter((x) => x.status === 'available').length);
  // the interrupted backup can be deleted, and the big volume backed up again
  t.is((await http(d, 'DELETE', `/v3/backups/${running}`)).status, 202);
  const again = (await post(d, '/v3/backups', { backup: { volume_id: vols.big, name: 'again' } })).backup!.id;
  t.is(await waitBackup(d, again), 'available');
});
