import test from 'ava';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Appliance } from '../gateway/appliance.js';
import type { BackupRecord, BackupStatus } from '../catalog/records.js';
import { deleteBackup, setProtected } from '../gateway/engine/delete.js';
import { EmptyPolicyError, type PruneCandidate, type PrunePlan, type PruneReport, isoWeek, planPrune, pruneVolume } from '../gateway/engine/prune.js';
import { cli, cliJson, openApp, sha, treeState } from './helpers/core.js';
import { backup, restoreToBuffer, rewrite, volumeFrom } from './helpers/engine.js';

const NOW = new Date('2030-01-01T00:00:00Z');
const at = (iso: string, extra: Partial<PruneCandidate> = {}): PruneCandidate => ({ id: iso, created_at: new Date(iso).toISOString(), status: 'available', ...extra });
const kept = (p: PrunePlan) => p.keep.map((d) => d.id).sort();
const reasons = (p: PrunePlan) => Object.fromEntries(p.decisions.map((d) => [d.id, d.reasons.join(',')]));

// restic's documentation ("Removing snapshots according to a policy"): one backup every Sunday for 12 weeks
const SUNDAYS = ['2019-09-01', '2019-09-08', '2019-09-15', '2019-09-22', '2019-09-29', '2019-10-06', '2019-10-13', '2019-10-20', '2019-10-27', '2019-11-03', '2019-11-10', '2019-11-17'].map((d) => at(`${d}T11:00:00Z`));

test('restic example: Sundays for 12 weeks, --keep-daily 4 keeps the last four Sundays and removes eight', (t) => {
  const p = planPrune(SUNDAYS, { daily: 4 }, NOW);
  t.deepEqual(kept(p), ['2019-10-27T11:00:00Z', '2019-11-03T11:00:00Z', '2019-11-10T11:00:00Z', '2019-11-17T11:00:00Z']);
  t.is(p.remove.length, 8);
  t.true(p.keep.every((d) => d.reasons.join() === 'daily'));
  t.deepEqual(
    p.decisions.map((d) => d.id),
    [...SUNDAYS].reverse().map((b) => b.id),
    'newest first',
  );
});

test('the same Sundays with --keep-weekly 2 --keep-monthly 3: the newest in each month, every reason listed', (t) => {
  const p = planPrune(SUNDAYS, { weekly: 2, monthly: 3 }, NOW);
  t.deepEqual(reasons(p), {
    ...Object.fromEntries(SUNDAYS.map((b) => [b.id, ''])),
    '2019-11-17T11:00:00Z': 'weekly,monthly',
    '2019-11-10T11:00:00Z': 'weekly',
    '2019-10-27T11:00:00Z': 'monthly',
    '2019-09-29T11:00:00Z': 'monthly',
  });
  t.is(p.remove.length, 8);
});

test('restic example: a backup every day for 100 years, --keep-daily 7 --keep-weekly 5 --keep-monthly 12 --keep-yearly 75', (t) => {
  const days: PruneCandidate[] = [];
  for (let d = Date.UTC(1925, 0, 1); d <= Date.UTC(2024, 11, 31); d += 86_400_000) days.push(at(new Date(d + 3_600_000).toISOString().slice(0, 19) + 'Z'));
  const p = planPrune(days, { daily: 7, weekly: 5, monthly: 12, yearly: 75 }, NOW);
  const r = reasons(p);
  const day = (s: string) => r[`${s}T01:00:00Z`];
  // 7 dailies (Dec 25-31), weekly adds Dec 22, 15, 8 (Dec 31 and 29 already kept), monthly adds
  // the last day of Jan-Nov 2024, yearly adds Dec 31 of 1950-2023: 7 + 3 + 11 + 74
  t.is(p.keep.length, 95);
  t.is(day('2024-12-31'), 'daily,weekly,monthly,yearly');
  t.is(day('2024-12-29'), 'daily,weekly');
  t.is(day('2024-12-25'), 'daily');
  t.is(day('2024-12-24'), '');
  t.is(day('2024-12-22'), 'weekly');
  t.is(day('2024-12-08'), 'weekly');
  t.is(day('2024-12-01'), '');
  t.is(day('2024-02-29'), 'monthly');
  t.is(day('2024-01-31'), 'monthly');
  t.is(day('2023-12-31'), 'yearly');
  t.is(day('1950-12-31'), 'yearly');
  t.is(day('1949-12-31'), '');
});

test('keep-last keeps the newest N; several rules OR together and each reason is listed', (t) => {
  const list = [at('2024-05-01T10:00:00Z'), at('2024-05-02T09:00:00Z'), at('2024-05-02T15:00:00Z'), at('2024-04-30T23:59:59Z')];
  t.deepEqual(kept(planPrune(list, { last: 2 }, NOW)), ['2024-05-02T09:00:00Z', '2024-05-02T15:00:00Z']);
  t.deepEqual(reasons(planPrune(list, { last: 2, daily: 2 }, NOW)), {
    '2024-05-02T15:00:00Z': 'last,daily',
    '2024-05-02T09:00:00Z': 'last',
    '2024-05-01T10:00:00Z': 'daily',
    '2024-04-30T23:59:59Z': '',
  });
  t.is(planPrune(list, { last: 10 }, NOW).remove.length, 0);
});

test('calendar buckets are UTC hours, days, ISO weeks, months and years', (t) => {
  const hours = [at('2024-03-10T10:01:00Z'), at('2024-03-10T10:59:00Z'), at('2024-03-10T11:00:00Z'), at('2024-03-10T09:30:00Z')];
  t.deepEqual(kept(planPrune(hours, { hourly: 2 }, NOW)), ['2024-03-10T10:59:00Z', '2024-03-10T11:00:00Z']);
  // 2020-12-31 (Thursday) and 2021-01-03 (Sunday) are both ISO week 2020-W53; Monday 2021-01-04 starts 2021-W01
  t.is(isoWeek(new Date('2021-01-03T12:00:00Z')), '2020-W53');
  t.is(isoWeek(new Date('2021-01-04T00:00:00Z')), '2021-W01');
  t.is(isoWeek(new Date('2024-12-30T00:00:00Z')), '2025-W01');
  const weeks = [at('2020-12-31T08:00:00Z'), at('2021-01-03T08:00:00Z'), at('2021-01-04T08:00:00Z'), at('2020-12-27T08:00:00Z')];
  t.deepEqual(kept(planPrune(weeks, { weekly: 3 }, NOW)), ['2020-12-27T08:00:00Z', '2021-01-03T08:00:00Z', '2021-01-04T08:00:00Z']);
  const months = [at('2024-01-31T23:00:00Z'), at('2024-02-01T00:30:00Z'), at('2023-12-15T00:00:00Z'), at('2022-06-01T00:00:00Z')];
  t.deepEqual(kept(planPrune(months, { monthly: 2 }, NOW)), ['2024-01-31T23:00:00Z', '2024-02-01T00:30:00Z']);
  t.deepEqual(kept(planPrune(months, { yearly: 2 }, NOW)), ['2023-12-15T00:00:00Z', '2024-02-01T00:30:00Z']);
  t.is(planPrune(months, { monthly: -1 }, NOW).remove.length, 0, 'unlimited keeps every bucket');
});

test('an empty policy is refused, never read as "remove everything"', (t) => {
  t.throws(() => planPrune(SUNDAYS, {}, NOW), { instanceOf: EmptyPolicyError });
  t.throws(() => planPrune(SUNDAYS, { last: 0, daily: 0 }, NOW), { instanceOf: EmptyPolicyError });
  t.throws(() => planPrune(SUNDAYS, { daily: 1.5 }, NOW), { instanceOf: RangeError });
});

test('protected, attached, restoring and unfinished backups are kept whatever the rules say', (t) => {
  const st = (s: BackupStatus) => ({ status: s });
  const list = [
    at('2024-01-01T00:00:00Z', { protected: true }),
    at('2024-01-02T00:00:00Z', { attached: ['nbd:x (pid 1)'] }),
    at('2024-01-03T00:00:00Z', st('restoring')),
    at('2024-01-04T00:00:00Z'),
    at('2024-01-05T00:00:00Z', st('error')),
    at('2024-01-06T00:00:00Z', st('deleted')),
    at('2024-01-07T00:00:00Z', st('creating')),
    at('2031-01-01T00:00:00Z'),
  ];
  const p = planPrune(list, { last: 1 }, NOW);
  t.deepEqual(reasons(p), {
    '2031-01-01T00:00:00Z': 'future',
    '2024-01-07T00:00:00Z': 'creating',
    '2024-01-05T00:00:00Z': 'error',
    '2024-01-04T00:00:00Z': 'last',
    '2024-01-03T00:00:00Z': 'restoring',
    '2024-01-02T00:00:00Z': 'attached',
    '2024-01-01T00:00:00Z': 'protected',
  });
  t.is(p.remove.length, 0);
  // a restoring backup is a complete one: it takes the "last" slot
  t.deepEqual(reasons(planPrune(list.slice(0, 3), { last: 1 }, NOW))['2024-01-03T00:00:00Z'], 'last,restoring');
});

/** a volume with n backups (a full, then incrementals), each over changed data; returns backups and contents */
async function history(app: Appliance, n: number): Promise<{ backups: BackupRecord[]; data: Buffer[] }> {
  const backups: BackupRecord[] = [];
  const data: Buffer[] = [];
  let cur = randomBytes(6 * 64 * 1024);
  await volumeFrom(app, 'v', cur);
  for (let i = 0; i < n; i++) {
    if (i) {
      cur = Buffer.from(cur);
      randomBytes(1000).copy(cur, i * 64 * 1024);
      rewrite(app, 'v', cur);
    }
    backups.push(await backup(app, 'v', { incremental: i > 0 }));
    data.push(cur);
  }
  return { backups, data };
}

test('prune deletes what the plan removes; a protected and an attached backup survive; protected cannot be deleted', async (t) => {
  const app = await openApp(t);
  const { backups: [b0, b1, b2, b3], data } = await history(app, 4);
  setProtected(app, b0!.id, true);
  const lease = app.catalog.addReaderLease(b1!.id, 'nbd:test');
  const r = await pruneVolume(app, 'v', { last: 1 });
  t.is(r.removed, 1);
  t.deepEqual(
    r.backups.map((x) => [x.id, x.action, x.reasons.join(',')]),
    [
      [b3!.id, 'keep', 'last'],
      [b2!.id, 'remove', ''],
      [b1!.id, 'keep', 'attached'],
      [b0!.id, 'keep', 'protected'],
    ],
  );
  t.is(app.catalog.backupRecord(b2!.id).status, 'deleted');
  for (const b of [b0!, b1!, b3!]) t.is(app.catalog.backupRecord(b.id).status, 'available');
  await t.throwsAsync(deleteBackup(app, b0!.id), { message: `backup ${b0!.id} is protected; unprotect it first` });
  t.is(app.catalog.backupRecord(b0!.id).status, 'available');
  // the newest incremental restores on its own after its parent went
  t.is(sha(await restoreToBuffer(app, b3!.id)), sha(data[3]!));
  app.catalog.removeReaderLease(lease);
  setProtected(app, b0!.id, false);
  const again = await pruneVolume(app, 'v', { last: 1 });
  t.is(again.removed, 2);
  t.is(app.catalog.listBackups().filter((b) => b.status === 'available').length, 1);
  t.is(sha(await restoreToBuffer(app, b3!.id)), sha(data[3]!));
});

test('a backup attached after the plan was made is not removed (delete checks again)', async (t) => {
  const app = await openApp(t);
  const { backups } = await history(app, 2);
  const realDelete = app.catalog.readerLeases.bind(app.catalog);
  let calls = 0;
  // the lease appears between the plan (first look) and the delete (second look)
  app.catalog.readerLeases = (id: string) => (id === backups[0]!.id && ++calls > 1 ? ['nbd:late (pid 1)'] : realDelete(id));
  const r = await pruneVolume(app, 'v', { last: 1 });
  t.is(r.removed, 0);
  const row = r.backups.find((x) => x.id === backups[0]!.id)!;
  t.is(row.action, 'keep');
  t.regex(row.error!, /attached/);
  t.is(app.catalog.backupRecord(backups[0]!.id).status, 'available');
});

test('--dry-run deletes nothing', async (t) => {
  const app = await openApp(t);
  const { backups } = await history(app, 3);
  const repoBefore = treeState(path.join(app.config.dataDir, 'repo'));
  const r = await pruneVolume(app, 'v', { last: 1 }, { dryRun: true });
  t.true(r.dry_run);
  t.is(r.removed, 0);
  t.is(r.backups.filter((x) => x.action === 'remove').length, 2);
  for (const b of backups) t.is(app.catalog.backupRecord(b.id).status, 'available');
  t.deepEqual(treeState(path.join(app.config.dataDir, 'repo')), repoBefore);
});

test('CLI: protect, unprotect, prune with calendar rules, dry run, and refused usage', async (t) => {
  const app = await openApp(t);
  const { backups } = await history(app, 4);
  // give the backups dates: two on one day, one the day before, one a week before
  const dates = ['2024-04-24T10:00:00Z', '2024-04-30T08:00:00Z', '2024-05-01T09:00:00Z', '2024-05-01T17:00:00Z'];
  backups.forEach((b, i) => app.catalog.putBackup({ ...app.catalog.backupRecord(b.id), created_at: dates[i]! }));
  const dir = app.config.dataDir;

  const p = await cliJson<BackupRecord>(dir, ['backup', 'protect', backups[0]!.id]);
  t.true(p.protected);
  const del = await cli(dir, ['backup', 'delete', backups[0]!.id]);
  t.is(del.code, 4);
  t.regex(del.stderr, /is protected; unprotect it first/);
  t.false((await cliJson<BackupRecord>(dir, ['backup', 'unprotect', backups[0]!.id])).protected);

  t.is((await cli(dir, ['backup', 'prune', 'v'])).code, 2);
  t.is((await cli(dir, ['backup', 'prune', 'v', '--keep-last', '0'])).code, 2);
  t.is((await cli(dir, ['backup', 'prune', 'v', '--keep-daily', 'many'])).code, 2);
  t.is((await cli(dir, ['backup', 'prune', 'nope', '--keep-last', '1'])).code, 3);

  const dry = await cli(dir, ['backup', 'prune', 'v', '--keep-daily', '2', '--dry-run']);
  t.is(dry.code, 0, dry.stderr);
  t.regex(dry.stdout, /would remove/);
  t.regex(dry.stdout, /daily/);
  t.regex(dry.stdout, /would keep 2 and remove 2/);
  t.is(app.catalog.listBackups().filter((b) => b.status === 'available').length, 4);

  const r = await cliJson<PruneReport>(dir, ['backup', 'prune', 'v', '--keep-daily', '2', '--keep-weekly', '2']);
  t.deepEqual(
    r.backups.map((x) => [x.created_at, x.action, x.reasons.join(',')]),
    [
      [dates[3], 'keep', 'daily,weekly'],
      [dates[2], 'remove', ''],
      [dates[1], 'keep', 'daily'],
      [dates[0], 'keep', 'weekly'],
    ],
  );
  t.is(r.removed, 1);
  t.is(app.catalog.backupRecord(backups[2]!.id).status, 'deleted');
});
