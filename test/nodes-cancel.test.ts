/**
 * Force-delete across nodes: os-force_delete, on the node that took the request, of a backup
 * that another node is creating. The request goes through the repository to the node that runs
 * it, which stops its job; the backup ends `deleted` on both nodes, its manifest is not in the
 * repository, and the other backups are not disturbed.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { randomFillSync } from 'node:crypto';
import { cliJson } from './helpers/core.js';
import { startCluster } from './helpers/cluster.js';
import { until } from './helpers/kafka.js';
import { getS3, rawS3Client } from './helpers/ceph.js';
import { ListObjectsV2Command } from '@aws-sdk/client-s3';

test.serial('os-force_delete on node a of a backup node b is creating: b stops it (or a removes what it had just committed), it ends deleted on both, its manifest is gone, the others complete', async (t) => {
  const c = await startCluster(t, ['a', 'b']);
  await until(async () => Object.values(await c.services('a')).filter((s) => s === 'up').length === 2, 30_000, 'two nodes up');
  const ids: string[] = [];
  // six, so that both nodes get some whatever the jobs topic's partitions give each
  for (let i = 0; i < 6; i++) {
    const f = path.join(c.shared, `x${i}.img`);
    fs.writeFileSync(f, randomFillSync(Buffer.alloc(24 * 1024 * 1024)));
    const v = await cliJson<{ id: string; project_id: string }>(c.dirs.a!, ['volume', 'create', '--name', `x${i}`, '--file', f]);
    if (i === 0) t.is((await c.api('a', 'PUT', `/os-quota-sets/${v.project_id}`, { quota_set: { backups: 100, backup_gigabytes: 1000 } })).status, 200);
    const r = await c.api<{ backup: { id: string } }>('a', 'POST', '/backups', { backup: { volume_id: v.id, name: `x${i}` } });
    t.is(r.status, 202);
    ids.push(r.body.backup.id);
  }
  // a backup b is creating (running, or queued there): asked of b's API, which answers at once
  // (reading b's event log through the CLI took longer than a backup runs)
  const victim = await until(async () => {
    const r = await c.api<{ backups?: { id: string }[] }>('b', 'GET', '/backups/detail?all_tenants=1&status=creating');
    return r.body.backups?.find((x) => ids.includes(x.id))?.id;
  }, 120_000, 'a backup node b is creating');
  const port = await c.apiPort('a');
  const r = await fetch(`http://127.0.0.1:${port}/v3/admin/backups/${victim}/action`, { method: 'POST', headers: { 'X-Auth-Token': 'admin:admin', 'content-type': 'application/json' }, body: JSON.stringify({ 'os-force_delete': {} }) });
  t.is(r.status, 202, await r.text());
  const show = async (n: string, id: string) => (await cliJson<{ status: string }>(c.dirs[n]!, ['backup', 'show', id])).status;
  await until(async () => (await show('a', victim)) === 'deleted', 120_000, 'the backup deleted on a');
  try {
    await until(async () => (await show('b', victim)) === 'deleted', 120_000, 'the backup deleted on b');
  } catch (e) {
    t.log(`on b it is ${await show('b', victim)}; b's log about it:\n${c.daemons.b!.log.filter((l) => l.includes(victim)).slice(-20).join('\n')}`);
    throw e;
  }
  // b stopped it (or it had just committed and a removed the manifest): either way one of them says it was deleted
  const del = [...(await c.events('a', 'backup.delete.end')), ...(await c.events('b', 'backup.delete.end'))].filter((e) => e.resource === victim);
  t.true(del.length >= 1, 'a backup.delete.end for it');
  // the others complete, on both nodes; the deleted one never comes back (its manifest is not in the repository)
  const others = ids.filter((id) => id !== victim);
  for (const n of ['a', 'b']) await until(async () => (await Promise.all(others.map((id) => show(n, id).catch(() => '')))).every((s) => s === 'available'), 180_000, `the other backups available on ${n}`);
  const { repository } = JSON.parse(fs.readFileSync(path.join(c.dirs.a!, 'blockgate.json'), 'utf8')) as { repository: { bucket: string; prefix: string } };
  const listed = await rawS3Client(await getS3()).send(new ListObjectsV2Command({ Bucket: repository.bucket, Prefix: `${repository.prefix}/manifests/` }));
  const names = (listed.Contents ?? []).map((o) => o.Key!);
  t.false(names.some((k) => k.includes(victim)), 'its manifest is not in the repository');
  t.is(names.filter((k) => others.some((id) => k.includes(id))).length, others.length, "the others' manifests are");
  for (const n of ['a', 'b']) t.is(await show(n, victim), 'deleted', `still deleted on ${n} once the others are in`);
  const stopped = c.daemons.b!.log.some((l) => l.includes('"event":"job-cancel-requested"'));
  t.log(stopped ? 'b stopped the job' : 'the backup had committed before b saw the request; a removed its manifest');
});
