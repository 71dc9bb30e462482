/**
 * `backup create --no-wait` and `backup restore` through the job module (gateway/jobs/): handed
 * to the daemon over its control socket when one runs for the data dir (its queue, its
 * `--workers`, its events), or else run by the job module in this process (restore), or in a
 * detached job process that owns the backup from its first moment (`--no-wait`).
 */
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import type { Command } from 'commander';
import type { JobRecord } from '../../catalog/jobs.js';
import type { BackupView, VolumeRecord } from '../../catalog/records.js';
import { loadConfig } from '../../gateway/config.js';
import { controlRequest, NoDaemonError } from '../../gateway/instant/control.js';
import { JobService } from '../../gateway/jobs/service.js';
import { Appliance } from '../../gateway/appliance.js';

/** the CLI's globals (as tools/cli/commands.ts has them) */
interface Globals {
  dataDir?: string;
  format: 'table' | 'json';
}

async function withApp<T>(g: Globals, fn: (app: Appliance) => Promise<T>): Promise<T> {
  const app = await Appliance.open(loadConfig(g.dataDir));
  try {
    return await fn(app);
  } finally {
    await app.close();
  }
}
import { UsageError, printRecord, progressBar } from './output.js';
import { ConflictError, NotFoundError } from '../../catalog/catalog.js';

export interface NoWaitBackup {
  volume: string;
  incremental?: boolean;
  force?: boolean;
  name?: string;
  description?: string;
  snapshotId?: string;
}

type Answer = { job: JobRecord; backup: BackupView | null; target?: VolumeRecord | null };

async function daemon<T>(g: Globals, method: 'GET' | 'POST', route: string, body?: Record<string, unknown>): Promise<T | null> {
  try {
    return await controlRequest<T>(loadConfig(g.dataDir).dataDir, method, route, body);
  } catch (e) {
    if (e instanceof NoDaemonError) return null;
    throw e;
  }
}

/** `backup create --no-wait`: the backup id and `creating`, at once */
export async function backupNoWait(g: Globals, o: NoWaitBackup): Promise<void> {
  const viaDaemon = await daemon<Answer>(g, 'POST', '/jobs/backup', { ...o });
  if (viaDaemon) {
    printRecord(g.format, viaDaemon.backup!);
    return;
  }
  // no daemon: a detached process runs the job module; it reports the recorded backup on its stdout, then runs it
  const child = spawn(process.execPath, [process.argv[1]!, ...(g.dataDir ? ['--data-dir', g.dataDir] : []), 'job', 'run-backup', JSON.stringify(o)], { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err = (err + d).slice(-4000)));
  const line = await new Promise<string | null>((resolve) => {
    createInterface({ input: child.stdout! }).once('line', resolve);
    child.once('exit', () => resolve(null));
  });
  if (!line) throw new Error(err.replace(/^blockgate: error: /, '').trim() || 'the background job could not be started');
  child.stdout!.destroy();
  child.stderr!.destroy();
  child.unref();
  const answer = JSON.parse(line) as { backup?: BackupView; error?: string; kind?: string };
  if (answer.error !== undefined) {
    if (answer.kind === 'NotFoundError') throw Object.assign(new NotFoundError('x', 'x'), { message: answer.error });
    if (answer.kind === 'ConflictError') throw new ConflictError(answer.error);
    if (answer.kind === 'InvalidNameError') throw new UsageError(answer.error);
    throw new Error(answer.error);
  }
  printRecord(g.format, answer.backup!);
}

/** `backup restore`: waits for the restore job, with a progress bar; prints the target volume */
export async function restoreThroughJobs(g: Globals, backup: string, volume: string | undefined, name: string | undefined): Promise<void> {
  const started = await daemon<Answer>(g, 'POST', '/jobs/restore', { backup, volume, name });
  if (started) {
    const bar = progressBar(`restore ${started.backup?.name ?? backup}`);
    try {
      for (;;) {
        const cur = (await daemon<Answer>(g, 'GET', `/jobs/${started.job.id}`))!;
        if (cur.job.progress.total) bar.update(cur.job.progress.bytes, cur.job.progress.total);
        if (cur.job.status === 'done') {
          printRecord(g.format, cur.target!);
          return;
        }
        if (cur.job.status !== 'queued' && cur.job.status !== 'running') throw new Error(cur.job.error ?? `the restore job ${cur.job.status}`);
        await new Promise((r) => setTimeout(r, 200));
      }
    } finally {
      bar.stop();
    }
  }
  await withApp(g, async (app) => {
    const jobs = new JobService(app, { workers: 1 });
    jobs.start();
    try {
      const b = app.catalog.backupRecord(backup);
      const target = volume ? app.catalog.volume(volume).id : null;
      const out = await jobs.submitRestore({ backupId: b.id, volumeId: target, name: name ?? null, userId: 'admin' });
      const bar = progressBar(`restore ${b.name}`);
      const timer = setInterval(() => {
        const p = jobs.store.get(out.job.id)?.progress;
        if (p?.total) bar.update(p.bytes, p.total);
      }, 200);
      const end = await jobs.queue.wait(out.job.id).finally(() => {
        clearInterval(timer);
        bar.stop();
      });
      if (end.status !== 'done') throw new Error(end.error ?? `the restore job ${end.status}`);
      printRecord(g.format, app.catalog.volume(out.target.id));
    } finally {
      await jobs.stop();
    }
  });
}

/** internal: the detached process behind `backup create --no-wait` when no daemon runs */
export function jobCommands(program: Command, g: () => Globals): void {
  program
    .command('job', { hidden: true })
    .command('run-backup <request>')
    .action((request: string) =>
      withApp(g(), async (app) => {
        const o = JSON.parse(request) as NoWaitBackup;
        const jobs = new JobService(app, { workers: 1 });
        jobs.start();
        try {
          let out;
          try {
            const v = app.catalog.volume(o.volume);
            out = await jobs.submitBackup({ volumeId: v.id, name: o.name, description: o.description, incremental: o.incremental, force: o.force, snapshotId: o.snapshotId ?? null, userId: 'admin', skipQuota: true });
          } catch (e) {
            const kind = e instanceof NotFoundError ? 'NotFoundError' : e instanceof ConflictError ? 'ConflictError' : (e as Error).name;
            process.stdout.write(JSON.stringify({ error: (e as Error).message, kind }) + '\n');
            process.exitCode = 1;
            return;
          }
          // the one line the CLI waits for; nothing more is written to stdout
          process.stdout.write(JSON.stringify({ backup: app.catalog.view(out.backup) }) + '\n');
          await jobs.queue.wait(out.job.id);
        } finally {
          await jobs.stop();
        }
      }),
    );
}
