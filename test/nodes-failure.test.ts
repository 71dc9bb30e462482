/**
 * Failures of a cluster of nodes: a node SIGKILLed while it runs a backup — within the
 * heartbeat timeout its backup ends `error` naming the lost node (or had completed), the jobs
 * queued behind it run elsewhere, nothing stays `creating`, every available backup restores
 * bit-exact, and the killed node restarts and lists everything. Bad input on the jobs topic
 * (garbage, unknown kinds, duplicates, a stale job of a deleted backup) is skipped with a log
 * line: no crash, no second run.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { randomFillSync, randomUUID } from 'node:crypto';
import { cli, cliJson, mixedContent, sha } from './helpers/core.js';
import { CS, type Cluster, startCluster } from './helpers/cluster.js';
import { consumeUntil, produceRaw, until } from './helpers/kafka.js';

const TIMEOUT_MS = 3000;

async function volumes(t: { is(a: unknown, b: unknown): void }, c: Cluster, n: number, mib: number, random = false): Promise<{ id: string; sha: string }[]> {
  const out: { id: string; sha: string }[] = [];
  for (let i = 0; i < n; i++) {
    const data = random ? randomFillSync(Buffer.alloc(mib * 1024 * 1024)) : mixedContent(mib * 1024 * 1024, CS, i + 7);
    const file = path.join(c.shared, `w${i}.img`);
    fs.writeFileSync(file, data);
    const v = await cliJson<{ id: string; project_id: string }>(c.dirs.a!, ['volume', 'create', '--name', `w${i}`, '--file', file]);
    if (i === 0) t.is((await c.api('a', 'PUT', `/os-quota-sets/${v.project_id}`, { quota_set: { backups: 100, backup_gigabytes: 1000 } })).status, 200);
    out.push({ id: v.id, sha: sha(data) });
  }
  return out;
}

async function submit(c: Cluster, vols: { id: string }[]): Promise<string[]> {
  const ids: string[] = [];
  for (const [i, v] of vols.entries()) {
    const r = await c.api<{ backup: { id: string } }>('a', 'POST', '/backups', { backup: { volume_id: v.id, name: `k${i}` } });
    if (r.status !== 202) throw new Error(JSON.stringify(r.body));
    ids.push(r.body.backup.id);
  }
  return ids;
}

const statuses = async (c: Cluster, n: string) => new Map((await cliJson<{ id: string; status: string; fail_reason: string | null }[]>(c.dirs[n]!, ['backup', 'list'])).map((b) => [b.id, b]));
const shown = async (c: Cluster, n: string, id: string) => (await cliJson<{ status: string }>(c.dirs[n]!, ['backup', 'show', id])).status;

test.serial('a node SIGKILLed mid-backup: its backup ends error naming it, the rest run elsewhere, nothing stays creating, it restarts and catches up', async (t) => {
  const c = await startCluster(t, ['a', 'b', 'c'], { nodeTimeoutMs: TIMEOUT_MS });
  await until(async () => Object.values(await c.services('a')).filter((s) => s === 'up').length === 3, 30_000, 'three nodes up');
  const vols = await volumes(t, c, 4, 48, true);
  const ids = await submit(c, vols);
  // the first backup that b or c starts: kill that node while it runs
  const start = await until(async () => {
    for (const n of ['b', 'c']) {
      const e = (await c.events(n, 'backup.create.*')).find((x, _, all) => x.type === 'backup.create.start' && !all.some((y) => y.resource === x.resource && y.type !== x.type));
      if (e) return e;
    }
    return undefined;
  }, 60_000, 'a backup running on b or c');
  const victim = start.node;
  const wasDone = (await statuses(c, victim)).get(start.resource)?.status === 'available';
  await c.daemons[victim]!.stop('SIGKILL');
  const killedAt = Date.now();
  t.log(`killed ${victim} while it ran ${start.resource}${wasDone ? ' (it had just completed)' : ''}`);

  const victimLog = c.daemons[victim]!.log;
  const survivors = ['a', 'b', 'c'].filter((n) => n !== victim);
  t.teardown(() => {
    if (process.env.BG_DUMP) for (const [n, l] of [...Object.entries(c.daemons).map(([n, d]) => [n, d.log] as const), [`${victim}-killed`, victimLog] as const]) fs.writeFileSync(`${process.env.BG_DUMP}-${n}.log`, l.join('\n'));
  });
  // the killed node's backup settles on a (a generous bound for a loaded machine; the time is logged, not asserted)
  await until(async () => ['available', 'error'].includes((await statuses(c, 'a')).get(start.resource)?.status ?? ''), 120_000, "the killed node's backup settled on a");
  t.log(`its backup settled on a ${Date.now() - killedAt} ms after the kill (node timeout ${TIMEOUT_MS} ms)`);
  // and every other one too: available, or error naming the lost node
  const settled = await until(async () => {
    const s = await statuses(c, 'a');
    return ids.every((id) => ['available', 'error'].includes(s.get(id)?.status ?? '')) ? s : null;
  }, 180_000, 'every backup settled on a').catch(async (e: Error) => {
    const s = await statuses(c, 'a');
    t.log(JSON.stringify([...s.values()].map((b) => [b.id, b.status, b.fail_reason])));
    for (const n of ['a', 'c']) t.log(n, JSON.stringify((await c.events(n, 'backup.create.*')).map((x) => [x.resource.slice(0, 8), x.type, x.payload.percent])));
    for (const n of ['a', 'b', 'c']) t.log(n, c.daemons[n]!.log.filter((l) => /job-|cluster|follow|adopt|kafka/.test(l)).join('\n'));
    throw e;
  });
  t.log(`settled ${Date.now() - killedAt} ms after the kill`);
  const lostLine = [...survivors.flatMap((n) => c.daemons[n]!.log)].map((l) => JSON.parse(l) as { event?: string; time?: number; node?: string }).find((l) => l.event === 'job-lost-node' && l.node === victim);
  if (lostLine?.time) t.log(`a survivor ended the killed node's job ${lostLine.time - killedAt} ms after the kill`);
  const victimBackup = settled.get(start.resource)!;
  if (victimBackup.status === 'error') {
    t.regex(victimBackup.fail_reason ?? '', new RegExp(`node ${victim} was lost`));
    // a survivor ended it and said so: its backup.create.error events name the lost node
    const errors = (await Promise.all(survivors.map((n) => c.events(n, 'backup.create.error')))).flat().filter((e) => e.resource === start.resource);
    t.true(errors.length >= 1 && errors.every((e) => new RegExp(`node ${victim} was lost`).test(String(e.payload.fail_reason))), JSON.stringify(errors));
    t.false(errors.some((e) => e.node === victim), 'the killed node did not end it');
  }
  // it never ran a second time: no node other than the killed one started it
  const starts = (await Promise.all(survivors.map((n) => c.events(n, 'backup.create.start')))).flat().filter((e) => e.resource === start.resource);
  t.is(starts.length, 0, `the killed node's backup was not run again: ${JSON.stringify(starts.map((e) => e.node))}`);
  const available = ids.filter((id) => settled.get(id)!.status === 'available');
  t.true(available.length >= ids.length - 2, `at most the killed node's running jobs failed: ${available.length} of ${ids.length} available`);
  t.false([...settled.values()].some((b) => b.status === 'creating'), 'nothing left creating on a');

  // the killed node restarts, settles its own copy, and lists everything as a does
  await c.start(victim);
  const mine = await until(async () => {
    const s = await statuses(c, victim);
    return available.every((id) => s.get(id)?.status === 'available') && ![...s.values()].some((b) => b.status === 'creating') ? s : null;
  }, 120_000, `${victim} lists every available backup and nothing creating`);
  t.truthy(mine);
  // every available backup restores bit-exact on the restarted node
  for (const id of available) {
    const i = ids.indexOf(id);
    const r = await cli(c.dirs[victim]!, ['backup', 'restore', id, '--name', `r${i}`]);
    t.is(r.code, 0, r.stderr);
    t.is(sha(fs.readFileSync(path.join(c.dirs[victim]!, 'volumes', `r${i}.img`))), vols[i]!.sha, `${id} restored on ${victim}`);
    fs.rmSync(path.join(c.dirs[victim]!, 'volumes', `r${i}.img`));
  }
});

test.serial('bad input on the jobs topic: garbage, unknown kinds, duplicates and a stale job of a deleted backup are skipped with a log line, never run twice', async (t) => {
  const c = await startCluster(t, ['a', 'b']);
  await until(async () => Object.values(await c.services('a')).filter((s) => s === 'up').length === 2, 30_000, 'two nodes up');
  const vols = await volumes(t, c, 2, 1);
  const ids = await submit(c, vols);
  for (const n of ['a', 'b']) await until(async () => [...(await statuses(c, n)).values()].filter((b) => ids.includes(b.id) && b.status === 'available').length === 2, 60_000, `${n} lists both available`);
  const jobs = await consumeUntil(c.brokers, c.topics.jobsTopic, (m) => m.length >= 2, 20_000);
  t.is(jobs.length, 2);
  // b's backup 0 deleted: its job message is now stale
  t.is((await cli(c.dirs.a!, ['backup', 'delete', ids[0]!])).code, 0);
  await until(async () => (await shown(c, 'b', ids[0]!)) === 'deleted', 20_000, 'b follows the delete');
  const before = { a: await statuses(c, 'a'), b: await statuses(c, 'b') };
  await produceRaw(c.brokers, c.topics.jobsTopic, [
    { key: 'x', value: Buffer.from('not json at all \u0000\u00ff') },
    { key: 'y', value: Buffer.from(JSON.stringify({ kind: 'blockgate-job', job: { kind: 'format-disk', id: randomUUID() } })) },
    { key: 'z', value: Buffer.from(JSON.stringify({ hello: 'world' })) },
    { key: String(jobs[1]!.key), value: jobs[1]!.value! }, // a duplicate of a job that ran
    { key: String(jobs[0]!.key), value: jobs[0]!.value! }, // the stale job of the deleted backup
  ]);
  // a message read again after a rebalance is skipped again: each message (partition, offset) counts once
  const skipLines = () => [...new Map(['a', 'b'].flatMap((n) => c.daemons[n]!.log.filter((l) => l.includes('"event":"job-skipped"'))).map((l) => JSON.parse(l) as { reason: string; partition: number; offset: number; job?: string }).map((l) => [`${l.partition}/${l.offset}`, l])).values()];
  const garbage = () => skipLines().filter((l) => /not a blockgate backup job/.test(l.reason));
  // each job's copy (not its first message, which a rebalance may also have given again) is skipped as ended
  const copySkipped = (m: (typeof jobs)[number]) => {
    const id = (JSON.parse(m.value!.toString()) as { job: { id: string } }).job.id;
    return skipLines().some((l) => /already ended/.test(l.reason) && l.job === id && `${l.partition}/${l.offset}` !== `${m.partition}/${m.offset}`);
  };
  await until(() => garbage().length >= 3 && jobs.every(copySkipped), 30_000, 'the five messages skipped');
  t.is(garbage().length, 3);
  for (const m of jobs) t.true(copySkipped(m));
  for (const n of ['a', 'b']) t.is(c.daemons[n]!.child.exitCode, null, `${n} still runs`);
  // nothing ran again: one start event per backup, the deleted one stays deleted, the catalogs are as before
  // each backup's events share its key, so they are in order on one partition: once its end is read, its start was too
  const ended = (m: { key?: unknown; value?: Buffer | null }[], id: string) => m.some((e) => String(e.key) === id && /"backup\.create\.end"/.test(e.value!.toString()));
  const events = await consumeUntil(c.brokers, c.topics.eventsTopic, (m) => ids.every((id) => ended(m, id)), 30_000);
  for (const id of ids) t.true(ended(events, id), `${id}: its backup.create.end was read back`);
  for (const id of ids) t.is(events.filter((m) => String(m.key) === id && /"backup\.create\.start"/.test(m.value!.toString())).length, 1, `${id} started once`);
  for (const n of ['a', 'b'] as const) {
    const now = await statuses(c, n);
    t.deepEqual(ids.map((id) => now.get(id)?.status), ids.map((id) => before[n].get(id)?.status));
  }
  for (const n of ['a', 'b']) t.is(await shown(c, n, ids[0]!), 'deleted', `the stale job did not bring it back on ${n}`);
});
