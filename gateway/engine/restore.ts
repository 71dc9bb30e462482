/**
 * Restore: a backup into a new volume or an existing one of the same size or larger.
 * Chunks are fetched and verified in parallel and written at their offsets; holes are not
 * written to a sparse file target (it is made sparse first), and are written as zeroes to a
 * block device. The backup is `restoring` meanwhile and returns to `available`; a failure
 * marks the target volume `error_restoring` with the reason.
 */
import type { BackupRecord, VolumeRecord } from '../../catalog/records.js';
import type { Appliance } from '../appliance.js';
import { ChunkSlot, RepoChunkReader } from '../read/chunk-reader.js';
import type { Progress } from './backup.js';
import { mapRuns } from '../read/map-walk.js';
import { range, runWindow } from './pipeline.js';
import { restoreRbd } from './restore-rbd.js';
import { BlockReadError } from './restore-target.js';

export { BlockReadError, prepareRestore, type RestoreOptions } from './restore-target.js';

/** bytes of small blocks a restore reads and writes at once */
const SEGMENT_BYTES = 4 * 1024 * 1024;

export async function runRestore(app: Appliance, backup: BackupRecord, target: VolumeRecord, progress?: Progress): Promise<VolumeRecord> {
  const { catalog } = app;
  try {
    if (target.driver === 'rbd') await restoreRbd(app, backup, target, progress); // rbd import-diff
    else await copyBackup(app, backup, target, progress);
    return catalog.updateVolume(target.id, () => ({ status: 'available', status_reason: null }));
  } catch (e) {
    const reason = e instanceof Error ? e.message : String(e);
    catalog.updateVolume(target.id, () => ({ status: 'error_restoring', status_reason: reason }));
    throw e;
  } finally {
    if (catalog.backups.get(backup.id)?.status === 'restoring') catalog.transition(backup.id, ['restoring'], 'available', { owner: null });
    catalog.releaseRestoreTarget(target.id);
  }
}

async function copyBackup(app: Appliance, backup: BackupRecord, target: VolumeRecord, progress?: Progress): Promise<void> {
  const { catalog } = app;
  const map = catalog.mapReader(backup);
  const depth = app.config.pipelineDepth;
  const cs = backup.chunk_size;
  const chunks = new RepoChunkReader(app.repo, app.pool);
  const dev = await app.volumeDriver(target).open('write');
  const count = Math.ceil(backup.size_bytes / cs);
  let done = 0;
  // small blocks: a segment of them at a time, read together (neighbours in a pack: one range read) and written as one run
  const seg = app.repo.packed ? Math.max(1, Math.floor(SEGMENT_BYTES / cs)) : 1;
  try {
    if (dev.sparseFile) await dev.makeSparse!();
    if (seg > 1) {
      const bufs = Array.from({ length: depth }, () => Buffer.allocUnsafe(seg * cs));
      await runWindow(range(Math.ceil(count / seg)), depth, async (s, slot) => {
        const first = s * seg;
        const last = Math.min(count, first + seg) - 1;
        const runs = [...mapRuns(map, backup.size_bytes, cs, first, last + 1)];
        const data = runs.filter((r) => r.digest !== null);
        const got = await chunks.readMany(data.map((r) => r.digest!));
        const buf = bufs[slot]!;
        // write each span of consecutive blocks as one write; holes are zeroed on a device, skipped in a sparse file
        let span: { offset: number; length: number } | null = null;
        const flushSpan = async () => {
          if (!span) return;
          const at = span.offset - first * cs;
          await dev.write!(span.offset, buf.subarray(at, at + span.length));
          span = null;
        };
        let j = 0;
        for (const r of runs) {
          if (r.digest === null) {
            await flushSpan();
            if (!dev.sparseFile) await dev.zero!(r.offset, r.length);
            continue;
          }
          const v = got[j++]!;
          if (v instanceof Error) throw new BlockReadError(backup, r.index, v);
          if (v.length !== r.length) throw new BlockReadError(backup, r.index, new Error(`chunk ${r.digest} holds ${v.length} bytes, expected ${r.length}`));
          v.copy(buf, r.offset - first * cs);
          if (span) span.length += r.length;
          else span = { offset: r.offset, length: r.length };
        }
        await flushSpan();
        done += (last - first + 1) * cs;
        progress?.(Math.min(done, backup.size_bytes), backup.size_bytes);
      });
      await dev.flush?.();
      return;
    }
    // 4 MiB chunks: each read into its pipeline slot's buffers, nothing allocated per chunk
    const slots = Array.from({ length: depth }, () => new ChunkSlot(cs));
    // holes: one item per block where they are written (zeroes spread over the pipeline), one per run where they are skipped
    await runWindow(mapRuns(map, backup.size_bytes, cs, 0, count, dev.sparseFile ? Infinity : 1), depth, async (r, slot) => {
      if (r.digest === null) {
        if (!dev.sparseFile) await dev.zero!(r.offset, r.length);
      } else {
        let data: Buffer;
        try {
          data = await chunks.readInto(r.digest, slots[slot]!);
        } catch (e) {
          throw new BlockReadError(backup, r.index, e as Error);
        }
        if (data.length !== r.length) throw new BlockReadError(backup, r.index, new Error(`chunk ${r.digest} holds ${data.length} bytes, expected ${r.length}`));
        await dev.write!(r.offset, data);
      }
      done += r.length;
      progress?.(done, backup.size_bytes);
    });
    await dev.flush?.();
  } finally {
    await dev.close?.();
  }
}
