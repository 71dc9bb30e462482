/** The job module in-process: bounded runners, progress, events, cancel, quotas, recovery of a dead owner's jobs. */
import test from 'ava';
import fs from 'node:fs';
import { randomBytes } from 'node:crypto';
import { JobService } from '../gateway/jobs/service.js';
import type { BlockgateEvent } from '../gateway/events/bus.js';
import { mixedContent, openApp, sha } from './helpers/core.js';
import { volumeFrom } from './helpers/engine.js';

const CS = 64 * 1024;

test('backups run as jobs, at most `workers` at once, with progress, events and restores bit-exact', async (t) => {
  const app = await openApp(t);
  const jobs = new JobService(app, { workers: 1 });
  jobs.start();
  t.teardown(() => jobs.stop());
  const events: BlockgateEvent[] = [];
  app.events.subscribe((e) => events.push(e));
  const a = mixedContent(2 * 1024 * 1024, CS);
  const b = mixedContent(1024 * 1024 + 4096, CS);
  const va = await volumeFrom(app, 'a', a);
  const vb = await volumeFrom(app, 'b', b);
  const ja = await jobs.submitBackup({ volumeId: va.id, userId: 'u' });
  const jb = await jobs.submitBackup({ volumeId: vb.id, userId: 'u' });
  t.is(ja.backup.status, 'creating');
  t.is(app.catalog.volume(va.id).status, 'backing-up');
  t.true(jobs.queue.stats().running <= 1);
  const [ea, eb] = await Promise.all([jobs.queue.wait(ja.job.id), jobs.queue.wait(jb.job.id)]);
  t.is(ea.status, 'done');
  t.is(eb.status, 'done');
  t.true(eb.started_at! >= ea.ended_at!, 'with one worker the second job starts after the first ended');
  t.is(ea.progress.percent, 100);
  t.is(app.catalog.volume(va.id).status, 'available');
  t.deepEqual(
    events.filter((e) => e.resource === ja.backup.id && e.type !== 'backup.createprogress').map((e) => e.type),
    ['backup.create.start', 'backup.create.end'],
  );
  t.true(events.some((e) => e.type === 'backup.createprogress' && e.resource === ja.backup.id && typeof e.payload.percent === 'number'));
  const end = events.find((e) => e.type === 'backup.create.end' && e.resource === ja.backup.id)!;
  t.like(end.payload, { backup_id: ja.backup.id, volume_id: va.id, project_id: 'default', status: 'available', size: 1, fail_reason: null });

  const r = await jobs.submitRestore({ backupId: ja.backup.id, userId: 'u' });
  t.is(r.target.name, `restore-${ja.backup.name}`);
  t.is(app.catalog.backups.get(ja.backup.id)!.status, 'restoring');
  t.is((await jobs.queue.wait(r.job.id)).status, 'done');
  t.is(sha(fs.readFileSync(app.catalog.volume(r.target.id).path)), sha(a));
  t.true(events.some((e) => e.type === 'backup.restore.end' && e.resource === ja.backup.id));

  const d = jobs.submitDelete(jb.backup.id);
  t.is(d.backup.status, 'deleting');
  t.is((await jobs.queue.wait(d.job.id)).status, 'done');
  t.is(app.catalog.backups.get(jb.backup.id)!.status, 'deleted');
  t.true(events.some((e) => e.type === 'backup.delete.end' && e.resource === jb.backup.id));
});

test('force-delete cancels a queued and a running backup; quota reservations end with them', async (t) => {
  const app = await openApp(t);
  const jobs = new JobService(app, { workers: 1 });
  jobs.start();
  t.teardown(() => jobs.stop());
  const big = await volumeFrom(app, 'big', randomBytes(48 * 1024 * 1024));
  const small = await volumeFrom(app, 'small', randomBytes(CS));
  const running = await jobs.submitBackup({ volumeId: big.id, userId: 'u' });
  const queued = await jobs.submitBackup({ volumeId: small.id, userId: 'u' });
  t.is(jobs.quotas.usage('default').backups.reserved, 2);
  await jobs.forceDelete(queued.backup.id);
  t.is(app.catalog.backups.get(queued.backup.id)!.status, 'deleted');
  t.is(jobs.store.get(queued.job.id)!.status, 'cancelled');
  // the running one is force-deleted at a known point, from its first progress event with data
  // read and more to go (a listener runs inside the job's progress step: the backup cannot have
  // finished), and it stops at its next progress step
  const forced = new Promise<unknown>((resolve) => {
    const off = app.events.subscribe((e) => {
      if (e.type !== 'backup.createprogress' || e.resource !== running.backup.id || !((e.payload.bytes as number) > 0)) return;
      off();
      t.true((e.payload.percent as number) < 100, 'the backup is mid-way');
      t.is(jobs.store.get(running.job.id)!.status, 'running');
      resolve(jobs.forceDelete(running.backup.id));
    });
  });
  await forced;
  const end = await jobs.queue.wait(running.job.id);
  t.is(end.status, 'cancelled');
  t.is(app.catalog.backups.get(running.backup.id)!.status, 'deleted');
  t.is(app.catalog.volume(big.id).status, 'available');
  t.deepEqual(jobs.quotas.usage('default').backups, { limit: 10, in_use: 0, reserved: 0, allocated: 0 });
});

test('quotas: a create beyond backups is refused with Cinder message and nothing recorded', async (t) => {
  const app = await openApp(t);
  const jobs = new JobService(app, { workers: 2 });
  jobs.start();
  t.teardown(() => jobs.stop());
  const v = await volumeFrom(app, 'v', randomBytes(CS));
  jobs.quotas.setLimits('default', { backups: 1 });
  const first = await jobs.submitBackup({ volumeId: v.id, userId: 'u' });
  await jobs.queue.wait(first.job.id);
  const before = app.catalog.listBackups().length;
  await t.throwsAsync(() => jobs.submitBackup({ volumeId: v.id, userId: 'u' }), { name: 'QuotaExceededError', message: 'Maximum number of backups allowed (1) exceeded' });
  t.is(app.catalog.listBackups().length, before);
  t.is(app.catalog.volume(v.id).status, 'available');
});

test('concurrent creates cannot overshoot the quota and a refused one leaves nothing; usage counted anew from every record is the same', async (t) => {
  const app = await openApp(t);
  const jobs = new JobService(app, { workers: 1 });
  jobs.start();
  t.teardown(() => jobs.stop());
  const vols = await Promise.all(Array.from({ length: 6 }, (_, i) => volumeFrom(app, `c${i}`, randomBytes(CS))));
  jobs.quotas.setLimits('default', { backups: 3 });
  // submitted in the same moment: their transactions are children of one batch
  const out = await Promise.allSettled(vols.map((v) => jobs.submitBackup({ volumeId: v.id, userId: 'u' })));
  const accepted = out.filter((o) => o.status === 'fulfilled');
  const refused = out.filter((o): o is PromiseRejectedResult => o.status === 'rejected');
  t.is(accepted.length, 3);
  t.true(refused.every((o) => (o.reason as Error).name === 'QuotaExceededError'));
  // a refused create left nothing: no record, no writer, its volume available
  t.is(app.catalog.listBackups().length, 3);
  const backedUp = new Set(app.catalog.listBackups().map((b) => b.volume_id));
  for (const v of vols) t.is(app.catalog.volume(v.id).status, backedUp.has(v.id) ? 'backing-up' : 'available');
  t.is([...app.catalog.locks.getKeys({ start: 'w:', end: 'w;' })].length, 3);
  const u = jobs.quotas.usage('default').backups;
  t.is(u.in_use + u.reserved, 3);
  for (const o of accepted) await jobs.queue.wait((o as PromiseFulfilledResult<{ job: { id: string } }>).value.job.id);
  t.deepEqual(jobs.quotas.usage('default').backups, { limit: 3, in_use: 3, reserved: 0, allocated: 0 });
  // the tallies built anew from the records (as for a catalog made before them) say the same
  await jobs.stop();
  app.catalog.env.transactionSync(() => {
    for (const k of [...app.catalog.tallies.db.getKeys({ start: 'tally:', end: 'tally;' })]) app.catalog.tallies.db.removeSync(k);
  });
  t.false(app.catalog.tallies.built());
  const again = new JobService(app, { workers: 1 });
  t.true(app.catalog.tallies.built());
  t.deepEqual(again.quotas.usage('default').backups, { limit: 3, in_use: 3, reserved: 0, allocated: 0 });
  t.like(again.quotas.usage('default').backup_gigabytes, { in_use: 3, reserved: 0 });
});
