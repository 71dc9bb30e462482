/**
 * Maintenance subcommands of `blockgate backup`: verify, prune, protect and unprotect.
 * They join the `backup` group that commands.ts creates.
 */
import type { Command } from 'commander';
import { type VerifySummary, verifyBackups } from '../../gateway/engine/verify.js';
import { BUCKET_RULES, type PrunePolicy, type PruneReport, isEmptyPolicy, pruneVolume } from '../../gateway/engine/prune.js';
import { setProtected } from '../../gateway/engine/delete.js';
import { type Globals, withApp } from './commands.js';
import { UsageError, printRecord, printRows, progressBar } from './output.js';

/** a keep count: a whole number, or "unlimited" (-1) */
function keepCount(text: string): number {
  if (text === 'unlimited') return -1;
  const n = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(n)) throw new UsageError(`not a keep count (a whole number or "unlimited"): ${text}`);
  return n;
}

function printVerify(g: Globals, s: VerifySummary): void {
  if (g.format === 'json') {
    process.stdout.write(JSON.stringify(s, null, 2) + '\n');
    return;
  }
  printRows(
    g.format,
    s.backups.map((r) => ({ ...r, failures: r.failed_blocks })),
    ['id', 'name', 'volume_name', 'verify_state', 'failures', 'verified_at'],
  );
  const failed = s.backups.filter((r) => r.verify_state === 'failed');
  for (const r of failed) {
    process.stdout.write(`\nbackup ${r.name} (${r.id}): ${r.failed_blocks} block(s) failed${r.failed_blocks > r.failures.length ? ` (first ${r.failures.length} shown)` : ''}\n`);
    printRows(g.format, r.failures as never, ['block', 'offset', 'chunk', 'error']);
  }
  process.stdout.write(
    `\n${s.mode} verify: ${s.backups_checked} backup(s), ${s.backups_ok} ok, ${s.backups_failed} failed; ` +
      `${s.chunks_checked} chunk(s) and ${s.pages_checked} map page(s) checked, ${s.bytes_read} bytes read` +
      (s.bad_chunks ? `; ${s.bad_chunks} bad chunk(s) taken out of the chunk index (the next backup that needs them writes them anew)` : '') +
      '\n',
  );
}

function printPrune(g: Globals, r: PruneReport): void {
  if (g.format === 'json') {
    process.stdout.write(JSON.stringify(r, null, 2) + '\n');
    return;
  }
  const rows = r.backups.map((b) => ({
    action: b.action === 'remove' ? (r.dry_run ? 'would remove' : 'removed') : 'keep',
    id: b.id,
    name: b.name,
    created_at: b.created_at,
    why: b.reasons.join(', ') || '-',
  }));
  printRows(g.format, rows, ['action', 'id', 'name', 'created_at', 'why']);
  const removing = r.backups.filter((b) => b.action === 'remove').length;
  process.stdout.write(
    r.dry_run
      ? `dry run: would keep ${r.kept} and remove ${removing} backup(s) of volume ${r.volume}\n`
      : `kept ${r.kept}, removed ${r.removed} backup(s) of volume ${r.volume}${r.removed ? '; run "blockgate repo gc" to reclaim their space' : ''}\n`,
  );
}

type PruneOptions = { keepLast?: number; dryRun?: boolean } & Partial<Record<`keep${Capitalize<(typeof BUCKET_RULES)[number]>}`, number>>;

export function maintainCommands(program: Command, g: () => Globals): void {
  const bk = program.commands.find((c) => c.name() === 'backup');
  if (!bk) throw new Error('the backup command group must be registered first');

  bk.command('verify [backup]')
    .description('check a backup (or --all available ones): --quick that every page and chunk exists with its size; by default read every chunk and check its digest')
    .option('--all', 'every available backup')
    .option('--quick', 'existence and size only (no chunk is read)')
    .option('--concurrency <n>', 'chunk reads in flight', (t) => keepCount(t), 6)
    .action((ref: string | undefined, o: { all?: boolean; quick?: boolean; concurrency: number }) =>
      withApp(g(), async (app) => {
        if (!ref === !o.all) throw new UsageError('give a backup or --all (not both)');
        if (o.concurrency < 1) throw new UsageError('--concurrency must be at least 1');
        const bar = progressBar(o.quick ? 'quick verify' : 'verify');
        let summary: VerifySummary;
        try {
          summary = await verifyBackups(app, o.all ? 'all' : [ref!], { quick: o.quick, concurrency: o.concurrency, onProgress: bar.update });
        } finally {
          bar.stop();
        }
        printVerify(g(), summary);
        if (summary.backups_failed) process.exitCode = 1;
      }),
    );

  const prune = bk
    .command('prune <volume>')
    .description('apply a retention policy to the backups of a volume: keep what a --keep-* rule selects (newest in each calendar bucket, UTC), remove the rest')
    .option('--keep-last <n>', 'the n newest backups', keepCount);
  for (const rule of BUCKET_RULES) {
    prune.option(`--keep-${rule} <n>`, `the newest backup in each of the last n ${rule === 'daily' ? 'days' : rule.replace(/ly$/, 's')} that have one (unlimited: all)`, keepCount);
  }
  prune
    .option('--dry-run', 'print what would be kept and removed; delete nothing')
    .action((volume: string, o: PruneOptions) =>
      withApp(g(), async (app) => {
        const policy: PrunePolicy = { last: o.keepLast, hourly: o.keepHourly, daily: o.keepDaily, weekly: o.keepWeekly, monthly: o.keepMonthly, yearly: o.keepYearly };
        for (const k of Object.keys(policy) as (keyof PrunePolicy)[]) if (policy[k] === undefined) delete policy[k];
        if (isEmptyPolicy(policy)) throw new UsageError('prune needs at least one --keep-* option greater than 0; with none it would remove every backup');
        printPrune(g(), await pruneVolume(app, volume, policy, { dryRun: o.dryRun }));
      }),
    );

  bk.command('protect <backup>')
    .description('protect a backup: prune and delete leave it alone until it is unprotected')
    .action((ref: string) => withApp(g(), async (app) => printRecord(g().format, app.catalog.view(setProtected(app, ref, true)))));
  bk.command('unprotect <backup>')
    .description('remove the protection of a backup')
    .action((ref: string) => withApp(g(), async (app) => printRecord(g().format, app.catalog.view(setProtected(app, ref, false)))));
}
