/**
 * RBD volumes in the engine: registering an image as a volume, and restoring any backup
 * (of an RBD image or of a file) into an RBD image by diff, as Cinder's Ceph driver does.
 *
 * The restore streams an RBD diff built from the backup's block map into
 * `rbd import-diff - POOL/IMAGE`: one 'w' record per data chunk (per span of small blocks), in
 * order, with chunks fetched and verified `pipelineDepth` at a time ahead of the writer
 * (restore-copy.ts, the copy a plain restore uses). Holes are not written into an image that has nothing allocated (a new one); into an image that holds data they
 * become 'z' records (import-diff discards them), and so does everything past the backup
 * when the target is larger. The diff's size is the target's, so a larger target keeps its
 * size and reads as zeroes past the backup. No snapshot is left on the target.
 */
import { ConflictError } from '../../catalog/catalog.js';
import type { BackupRecord, VolumeRecord } from '../../catalog/records.js';
import { RbdDiffWriter } from '../../drivers/rbd/diff.js';
import { RbdError, RbdVolume, parseRbdSpec } from '../../drivers/volume/rbd.js';
import type { Appliance } from '../appliance.js';
import type { Progress } from './backup.js';
import { copyBackup } from './restore-copy.js';
import { BlockReadError, prepareRestore } from './restore-target.js';
import { createRbdVolume } from './volumes-rbd.js';
import { checkVolumeName } from './volumes.js';

/**
 * Restore into a new RBD image made for it (`rbd create` of the backup's size), registered
 * as volume `name`; then as prepareRestore. Nothing is left behind if it throws.
 */
export async function prepareRestoreToNewRbd(app: Appliance, opts: { backup: string; rbd: string; name: string; cephConf?: string; cephUser?: string }) {
  checkVolumeName(opts.name);
  const backup = app.catalog.backupRecord(opts.backup);
  if (backup.status !== 'available') throw new ConflictError(`backup ${backup.id} is ${backup.status}; only an available backup can be restored`);
  if (app.catalog.volumeNames.get(opts.name) !== undefined) throw new ConflictError(`a volume named "${opts.name}" already exists`);
  const v = await createRbdVolume(app, opts.name, { rbd: opts.rbd, size: backup.size_bytes, cephConf: opts.cephConf, cephUser: opts.cephUser }, { project_id: backup.project_id, user_id: backup.user_id });
  try {
    return await prepareRestore(app, { backup: backup.id, volume: v.id });
  } catch (e) {
    app.catalog.removeVolume(v.id);
    await new RbdVolume(v.path, { conf: v.ceph_conf, user: v.ceph_user }).remove().catch(() => undefined);
    throw e;
  }
}

/** Restores `backup` into the RBD image of `target` with `rbd import-diff`. */
export async function restoreRbd(app: Appliance, backup: BackupRecord, target: VolumeRecord, progress?: Progress): Promise<void> {
  const vol = app.volumeDriver(target);
  if (!(vol instanceof RbdVolume)) throw new Error(`volume ${target.name} is not an RBD image`);
  const size = await vol.size();
  if (size < backup.size_bytes) {
    throw new ConflictError(`volume ${target.name} is ${size} bytes, smaller than backup ${backup.id} (${backup.size_bytes} bytes); restore into a volume at least as large`);
  }
  const zeroHoles = !(await vol.isEmpty());
  const { child, stderr, exit } = vol.spawnRbd(['import-diff', '--no-progress', '-', vol.spec], 'pipe');
  child.stdin.on('error', () => {}); // EPIPE if rbd stops early: its exit status says why
  child.stdout.resume();
  const w = new RbdDiffWriter(child.stdin, { size });
  const what = `rbd import-diff into ${vol.spec}`;
  let zeroFrom = -1; // start of a pending run of zeroes
  const flushZeroes = async (end: number) => {
    if (zeroFrom >= 0 && end > zeroFrom) await w.zero(zeroFrom, end - zeroFrom);
    zeroFrom = -1;
  };
  try {
    await w.writeHeader();
    // the diff is a stream: blocks handed over in order, each in a buffer of its own (the pipe may queue it)
    await copyBackup(
      app,
      backup,
      {
        ordered: true,
        keepsData: true,
        write: async (offset, data) => {
          await flushZeroes(offset);
          await w.data(offset, data);
        },
        hole: async (offset) => {
          if (zeroHoles && zeroFrom < 0) zeroFrom = offset;
        },
      },
      progress,
    );
    if (zeroHoles && size > backup.size_bytes && zeroFrom < 0) zeroFrom = backup.size_bytes;
    await flushZeroes(size);
    await w.finish();
  } catch (e) {
    if (!child.stdin.destroyed) child.stdin.destroy();
    const r = await Promise.race([exit, new Promise<null>((res) => setTimeout(() => res(null), 10_000))]);
    if (e instanceof BlockReadError || e instanceof ConflictError) {
      if (!r) child.kill('SIGTERM');
      throw e;
    }
    if (r && r.code !== 0) throw new RbdError(`${what} failed: ${tail(r.stderr) || `exit ${r.code ?? r.signal}`}`);
    if (!r) child.kill('SIGTERM');
    throw e;
  }
  const r = await exit;
  if (r.code !== 0) throw new RbdError(`${what} failed: ${tail(stderr()) || `exit ${r.code ?? r.signal}`}`);
  progress?.(backup.size_bytes, backup.size_bytes);
}

function tail(stderr: string): string {
  return (stderr.trim().split('\n').filter((l) => !/complete\.\.\./.test(l)).at(-1) ?? '').replace(/^rbd: /, '').slice(0, 400);
}
