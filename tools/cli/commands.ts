/** The volume, backup and repo commands of the `blockgate` CLI. */
import type { Command } from 'commander';
import { runBackup, startBackup } from '../../gateway/engine/backup.js';
import { deleteBackup } from '../../gateway/engine/delete.js';
import { collectGarbage } from '../../gateway/engine/gc.js';
import { runRestore } from '../../gateway/engine/restore.js';
import { prepareRestoreToNewRbd } from '../../gateway/engine/restore-rbd.js';
import { createVolume, deleteVolume, setAttached } from '../../gateway/engine/volumes.js';
import { repoInfo } from '../../gateway/engine/repo-info.js';
import { parseSize } from '../../gateway/size.js';
import { UsageError, printRecord, printRows, progressBar } from './output.js';
import { type InstantRestoreOptions, instantRestore, instantRestoreOptions } from './instant.js';
import { backupNoWait, restoreThroughJobs } from './jobs.js';
import { type Globals, withApp } from './context.js';

export { type Globals, withApp } from './context.js';

function duration(text: string): number {
  const m = /^(\d+(?:\.\d+)?)(s|m|h|d)?$/.exec(text.trim());
  if (!m) throw new UsageError(`${JSON.stringify(text)} is not a duration (e.g. 90s, 30m, 24h, 2d)`);
  return Number(m[1]) * { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[(m[2] ?? 's') as 's']!;
}

function size(text: string): number {
  try {
    return parseSize(text);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

const VOLUME_COLS = ['id', 'name', 'status', 'size', 'driver', 'path'];
const BACKUP_COLS = ['id', 'name', 'volume_name', 'status', 'is_incremental', 'size', 'object_count', 'created_at', 'fail_reason'];

export function volumeCommands(program: Command, g: () => Globals): void {
  const vol = program.command('volume').description('volumes: raw image files, block devices (and RBD images)');
  vol
    .command('create')
    .description('register an image file or block device (--file) or an RBD image (--rbd), or create a new sparse volume (--size; with --rbd, a new RBD image)')
    .requiredOption('--name <name>', 'volume name')
    .option('--size <size>', 'size of a new volume, e.g. 10G')
    .option('--file <path>', 'existing raw image file or block device')
    .option('--rbd <pool/image>', 'Ceph RBD image (created with --size, else it must exist)')
    .option('--ceph-conf <file>', 'ceph.conf of the RBD cluster (default CEPH_CONF)')
    .option('--ceph-user <id>', 'ceph user for the RBD cluster (default BLOCKGATE_CEPH_USER, else admin)')
    .option('--project <id>', 'the project it belongs to in the API (default "default")')
    .option('--user <id>', 'the user it belongs to in the API (default "admin")')
    .action((o: { name: string; size?: string; file?: string; rbd?: string; cephConf?: string; cephUser?: string; project?: string; user?: string }) =>
      withApp(g(), async (app) => {
        if (!o.size && !o.file && !o.rbd) throw new UsageError('volume create needs --size, --file or --rbd');
        for (const [k, v] of [['--project', o.project], ['--user', o.user]] as const) if (v !== undefined && !/^[A-Za-z0-9_.@-]{1,64}$/.test(v)) throw new UsageError(`${k} must be an id of letters, digits, '_', '.', '@', '-'`);
        printRecord(g().format, await createVolume(app, { name: o.name, size: o.size ? size(o.size) : undefined, file: o.file, rbd: o.rbd, cephConf: o.cephConf, cephUser: o.cephUser, projectId: o.project, userId: o.user }));
      }),
    );
  vol.command('list').action(() => withApp(g(), async (app) => printRows(g().format, app.catalog.listVolumes() as never, VOLUME_COLS)));
  vol.command('show <volume>').action((ref: string) => withApp(g(), async (app) => printRecord(g().format, app.catalog.volume(ref))));
  vol.command('delete <volume>').action((ref: string) => withApp(g(), async (app) => printRecord(g().format, await deleteVolume(app, ref))));
  vol.command('attach <volume>').description('mark a volume in-use (attached to an instance)').action((ref: string) => withApp(g(), async (app) => printRecord(g().format, setAttached(app, ref, true))));
  vol.command('detach <volume>').description('mark an in-use volume available').action((ref: string) => withApp(g(), async (app) => printRecord(g().format, setAttached(app, ref, false))));
}

export function backupCommands(program: Command, g: () => Globals): void {
  const bk = program.command('backup').description('backups: create, list, show, delete, restore');
  bk.command('create <volume>')
    .description('back up a volume (full, or --incremental from its newest available backup)')
    .option('--incremental', 'only changes since the newest available backup of the volume')
    .option('--force', 'back up an in-use volume (crash-consistent, not quiesced)')
    .option('--name <name>')
    .option('--description <text>')
    .option('--snapshot-id <id>', 'record the volume snapshot this backup was taken from')
    .option('--no-wait', 'return the backup id at once (status creating) and run it in the background')
    .action((volume: string, o: { incremental?: boolean; force?: boolean; name?: string; description?: string; snapshotId?: string; wait: boolean }) =>
      !o.wait ? backupNoWait(g(), { volume, incremental: o.incremental, force: o.force, name: o.name, description: o.description, snapshotId: o.snapshotId }) : withApp(g(), async (app) => {
        const rec = await startBackup(app, { volume, incremental: o.incremental, force: o.force, name: o.name, description: o.description, snapshotId: o.snapshotId });
        const bar = progressBar(`backup ${rec.name}`);
        try {
          printRecord(g().format, app.catalog.view(await runBackup(app, rec, bar.update)));
        } finally {
          bar.stop();
        }
      }),
    );
  bk.command('list')
    .option('--volume <volume>')
    .option('--all', 'include deleted backups')
    .action((o: { volume?: string; all?: boolean }) =>
      withApp(g(), async (app) => {
        const vid = o.volume ? app.catalog.volume(o.volume).id : undefined;
        const rows = app.catalog.listBackups(vid).filter((b) => o.all || b.status !== 'deleted');
        printRows(g().format, rows.map((b) => app.catalog.view(b)) as never, BACKUP_COLS);
      }),
    );
  bk.command('show <backup>').action((ref: string) => withApp(g(), async (app) => printRecord(g().format, app.catalog.view(app.catalog.backupRecord(ref)))));
  bk.command('delete <backup>')
    .option('--force', 'cancel a backup that is still being created')
    .action((ref: string, o: { force?: boolean }) =>
      withApp(g(), async (app) => {
        const rec = await deleteBackup(app, ref, { force: o.force });
        printRecord(g().format, app.catalog.view(rec));
      }),
    );
  instantRestoreOptions(bk.command('restore <backup> [volume]'))
    .description('restore into an existing available volume (same size or larger), or into a new volume')
    .option('--name <name>', 'name of the new volume')
    .option('--rbd <pool/image>', 'restore into a new RBD image made for it (rbd create of the backup size; volume name --name, default the image name)')
    .option('--ceph-conf <file>', 'with --rbd: ceph.conf of the cluster (default CEPH_CONF)')
    .option('--ceph-user <id>', 'with --rbd: ceph user (default BLOCKGATE_CEPH_USER, else admin)')
    .action((ref: string, volume: string | undefined, o: InstantRestoreOptions & { rbd?: string; cephConf?: string; cephUser?: string }) =>
      o.instant ? instantRestore(g(), ref, volume, o) : !o.rbd ? restoreThroughJobs(g(), ref, volume, o.name) : withApp(g(), async (app) => {
        if (o.rbd && volume) throw new UsageError('give either a target volume or --rbd (a new RBD image), not both');
        const { backup, target } = await prepareRestoreToNewRbd(app, { backup: ref, rbd: o.rbd!, name: o.name ?? o.rbd!.slice(o.rbd!.indexOf('/') + 1), cephConf: o.cephConf, cephUser: o.cephUser });
        const bar = progressBar(`restore ${backup.name}`);
        try {
          printRecord(g().format, await runRestore(app, backup, target, bar.update));
        } finally {
          bar.stop();
        }
      }),
    );
}

export function repoCommands(program: Command, g: () => Globals): void {
  const repo = program.command('repo').description('the chunk repository');
  repo.command('info').action(() => withApp(g(), async (app) => printRecord(g().format, repoInfo(app))));
  repo.command('gc')
    .description('reclaim chunks and pages that no manifest in the repository names (safe with several appliances on one repository)')
    .option('--grace <duration>', 'also keep unreferenced objects younger than this, e.g. 30m, 24h (default 0)')
    .option('--repack-threshold <fraction>', 'packed repository: repack a pack once this fraction of it is unused, 0 to 1 (default 0.5; restic prune --max-unused)')
    .option('--retire <duration>', 'packed repository: delete a repacked pack once it has been retired this long (default 10m: readers that looked it up before the repack still find it)')
    .action((o: { grace?: string; repackThreshold?: string; retire?: string }) =>
      withApp(g(), async (app) => {
        let repackThreshold: number | undefined;
        if (o.repackThreshold !== undefined) {
          repackThreshold = Number(o.repackThreshold);
          if (!(repackThreshold >= 0 && repackThreshold <= 1)) throw new UsageError(`--repack-threshold ${JSON.stringify(o.repackThreshold)} is not a fraction between 0 and 1`);
        }
        const retireMs = o.retire !== undefined ? duration(o.retire) : undefined;
        // a test hook: the crash tests make the process die (SIGKILL) at a named step of a repack
        const dieAt = process.env.BLOCKGATE_TEST_GC_KILL_AT;
        const onStep = dieAt ? (step: string) => void (step === dieAt && process.kill(process.pid, 'SIGKILL')) : undefined;
        printRecord(g().format, await collectGarbage(app, { graceMs: o.grace ? duration(o.grace) : 0, repackThreshold, retireMs, onStep }));
      }),
    );
}
