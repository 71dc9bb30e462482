/**
 * Instant restore on the command line: `backup restore BACKUP [VOLUME] --instant` (asks the
 * daemon, returns at once with the NBD URIs of the read-write export), and
 * `restore list | show | cancel | detach | throttle`. The daemon owns the sessions; these
 * commands talk to it over its control socket. list, show and cancel also work with no
 * daemon running (from the catalog).
 */
import type { Command } from 'commander';
import { SessionStore } from '../../catalog/sessions.js';
import { loadConfig } from '../../gateway/config.js';
import { nbdUris } from '../../gateway/daemon.js';
import { BadRequestError, controlRequest, NoDaemonError } from '../../gateway/instant/control.js';
import { cancelOffline, offlineView, type SessionView } from '../../gateway/instant/sessions.js';
import { formatSize, parseSize } from '../../gateway/size.js';
import { type Globals, withApp } from './context.js';
import { checkName } from '../../gateway/names.js';
import { UsageError, printRecord, printRows } from './output.js';

export interface InstantRestoreOptions {
  instant?: boolean;
  name?: string;
  detachOnComplete?: boolean;
  copyRate?: string;
  copyConcurrency?: string;
}

/** adds the instant-restore options to `backup restore` */
export function instantRestoreOptions(cmd: Command): Command {
  return cmd
    .option('--instant', 'instant restore: serve the volume read-write over NBD at once, copy the backup into it in the background (needs the daemon)')
    .option('--detach-on-complete', 'with --instant: stop serving the export once the volume is complete')
    .option('--copy-rate <rate>', 'with --instant: background copy rate per second, e.g. 200M (0 = unlimited)')
    .option('--copy-concurrency <n>', 'with --instant: parallel block copies');
}

function rate(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  try {
    return parseSize(text);
  } catch (e) {
    throw new UsageError(`--copy-rate: ${(e as Error).message}`);
  }
}

function concurrency(text: string | undefined, option = '--copy-concurrency'): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1 || n > 256) throw new UsageError(`${option} must be an integer from 1 to 256`);
  return n;
}

/** a request to the daemon; its bad-request answers are usage errors here (exit code 2) */
async function call<T>(g: Globals, method: 'GET' | 'POST', route: string, body?: Record<string, unknown>): Promise<T> {
  try {
    return await controlRequest<T>(dataDirOf(g), method, route, body);
  } catch (e) {
    if (e instanceof BadRequestError) throw new UsageError(e.message);
    throw e;
  }
}

function dataDirOf(g: Globals): string {
  return loadConfig(g.dataDir).dataDir;
}

const SHOW_ORDER: (keyof SessionView)[] = [
  'id', 'status', 'export_name', 'uri', 'unix_uri', 'backup_name', 'backup_id', 'volume_name', 'volume_id', 'attached', 'blocks_owned', 'blocks_durable', 'blocks_total', 'percent',
  'bytes_copied', 'rate_bps', 'copy_rate', 'copy_concurrency', 'block_size', 'size_bytes', 'guest_reads_from_backup', 'detach_on_complete', 'resumes', 'served_by_pid', 'created_at', 'completed_at', 'status_reason',
];

function printView(g: Globals, v: SessionView): void {
  if (g.format === 'json') {
    printRecord('json', v);
    return;
  }
  const rec: Record<string, unknown> = {};
  for (const k of SHOW_ORDER) rec[k] = v[k];
  rec.progress = `${v.blocks_owned}/${v.blocks_total} blocks (${v.percent}%)`;
  rec.rate = `${formatSize(v.rate_bps)}/s`;
  printRecord('table', rec);
}

/** `backup restore BACKUP [VOLUME] --instant`: asks the daemon; returns as soon as the export is served */
export async function instantRestore(g: Globals, backup: string, volume: string | undefined, o: InstantRestoreOptions): Promise<void> {
  // the new volume's name becomes a path (and its export restore-<name>): checked here, before the daemon is asked
  if (!volume && o.name !== undefined) checkName('volume', o.name);
  const body = { backup, volume, name: o.name, detachOnComplete: !!o.detachOnComplete, rate: rate(o.copyRate), concurrency: concurrency(o.copyConcurrency) };
  const v = await call<SessionView>(g, 'POST', '/restores', body);
  printView(g, v);
}

/** from the daemon if one runs, else from the catalog */
async function sessions(g: Globals): Promise<SessionView[]> {
  try {
    return await call<SessionView[]>(g, 'GET', '/restores');
  } catch (e) {
    if (!(e instanceof NoDaemonError)) throw e;
  }
  return withApp(g, async (app) => {
    const { host, port, socket } = app.config.nbd;
    return new SessionStore(app.catalog.env).list().map((s) => offlineView(s, (n) => nbdUris(host, port, socket, n)));
  });
}

async function session(g: Globals, ref: string): Promise<SessionView> {
  try {
    return await call<SessionView>(g, 'GET', `/restores/${encodeURIComponent(ref)}`);
  } catch (e) {
    if (!(e instanceof NoDaemonError)) throw e;
  }
  const all = await sessions(g);
  const hit = all.find((s) => s.id === ref) ?? all.filter((s) => (ref.length >= 6 && s.id.startsWith(ref)) || s.export_name === ref || s.volume_name === ref).at(-1);
  if (!hit) {
    const { NotFoundError } = await import('../../catalog/catalog.js');
    throw new NotFoundError('instant-restore session', ref);
  }
  return hit;
}

export function instantCommands(program: Command, g: () => Globals): void {
  const rs = program.command('restore').description('instant-restore sessions (started with backup restore --instant)');
  rs.command('list')
    .description('sessions with their progress: blocks owned / total, copy rate')
    .action(async () => {
      const rows = (await sessions(g())).map((v) => ({ ...v, progress: `${v.blocks_owned}/${v.blocks_total} (${v.percent}%)`, rate: `${formatSize(v.rate_bps)}/s` }));
      printRows(g().format, rows as never, ['id', 'status', 'backup_name', 'volume_name', 'export_name', 'progress', 'rate', 'uri']);
    });
  rs.command('show <session>')
    .description('one session (by id, export name or volume name)')
    .action(async (ref: string) => printView(g(), await session(g(), ref)));
  rs.command('cancel <session>')
    .description('stop the copy; the volume becomes error_restoring (incomplete), as for a cancelled Cinder restore')
    .action(async (ref: string) => {
      try {
        printView(g(), await call<SessionView>(g(), 'POST', `/restores/${encodeURIComponent(ref)}/cancel`));
        return;
      } catch (e) {
        if (!(e instanceof NoDaemonError)) throw e;
      }
      // no daemon: nothing is copying; settle the catalog directly
      await withApp(g(), async (app) => {
        const rec = cancelOffline(app, ref);
        printView(g(), offlineView(rec));
      });
    });
  rs.command('detach <session>')
    .description('stop serving the export of a completed session')
    .action(async (ref: string) => printView(g(), await call<SessionView>(g(), 'POST', `/restores/${encodeURIComponent(ref)}/detach`)));
  rs.command('throttle <session>')
    .description('change the background copy rate or concurrency of a running session')
    .option('--rate <rate>', 'bytes per second, e.g. 100M (0 = unlimited)')
    .option('--concurrency <n>', 'parallel block copies')
    .action(async (ref: string, o: { rate?: string; concurrency?: string }) => {
      if (o.rate === undefined && o.concurrency === undefined) throw new UsageError('restore throttle needs --rate or --concurrency');
      const body = { rate: o.rate === undefined ? undefined : rate(o.rate), concurrency: concurrency(o.concurrency, '--concurrency') };
      printView(g(), await call<SessionView>(g(), 'POST', `/restores/${encodeURIComponent(ref)}/throttle`, body));
    });
}
