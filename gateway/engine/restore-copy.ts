/**
 * The one copy of a backup into a restore target, used by `backup restore` (a file or a block
 * device) and `restore --rbd` (an `rbd import-diff` stream): the map walked once (map-walk),
 * chunks fetched and verified `pipelineDepth` at a time. Small blocks of a packed repository
 * are read a segment at a time (neighbours in a pack: one range read) and written as spans of
 * consecutive blocks; 4 MiB chunks are read into reused slots unless the target keeps what it
 * is given. Holes are handed to the target, which skips or zeroes them.
 */
import type { BackupRecord } from '../../catalog/records.js';
import type { Appliance } from '../appliance.js';
import { ChunkSlot, RepoChunkReader } from '../read/chunk-reader.js';
import { mapRuns } from '../read/map-walk.js';
import type { Progress } from './backup.js';
import { range, runWindow } from './pipeline.js';
import { BlockReadError } from './restore-target.js';

/** bytes of small blocks a restore reads and writes at once */
const SEGMENT_BYTES = 4 * 1024 * 1024;

export interface CopyTarget {
  /** the backup's bytes at offset */
  write(offset: number, data: Buffer): Promise<void>;
  /** a run of holes of the backup */
  hole(offset: number, length: number): Promise<void>;
  /** writes and holes are handed over one at a time in offset order (a stream); otherwise up to the pipeline depth at once, in any order */
  ordered?: boolean;
  /** the target may hold on to a buffer after write() resolves (a stream's queue): each write gets a buffer of its own */
  keepsData?: boolean;
  /** holes are written (zeroes): handed over a block at a time, so they spread over the pipeline */
  writesHoles?: boolean;
}

/** Copies `backup` into `target`; a block that cannot be read is a BlockReadError. */
export async function copyBackup(app: Appliance, backup: BackupRecord, target: CopyTarget, progress?: Progress): Promise<void> {
  const map = app.catalog.mapReader(backup);
  const depth = Math.max(1, app.config.pipelineDepth);
  const cs = backup.chunk_size;
  const size = backup.size_bytes;
  const count = Math.ceil(size / cs);
  const chunks = new RepoChunkReader(app.repo, app.pool);
  const inTurn = turns(target.ordered ?? false);
  let done = 0;
  const report = (bytes: number) => {
    done += bytes;
    progress?.(Math.min(done, size), size);
  };
  const checked = (index: number, digest: string, v: Buffer | Error, length: number): Buffer => {
    if (v instanceof Error) throw new BlockReadError(backup, index, v);
    if (v.length !== length) throw new BlockReadError(backup, index, new Error(`chunk ${digest} holds ${v.length} bytes, expected ${length}`));
    return v;
  };

  // small blocks: a segment of them at a time, read together and written as spans
  const seg = app.repo.packed ? Math.max(1, Math.floor(SEGMENT_BYTES / cs)) : 1;
  if (seg > 1) {
    const bufs = target.keepsData ? [] : Array.from({ length: depth }, () => Buffer.allocUnsafe(seg * cs));
    await runWindow(range(Math.ceil(count / seg)), depth, (s, slot) =>
      inTurn(async () => {
        const first = s * seg;
        const end = Math.min(count, first + seg);
        const runs = [...mapRuns(map, size, cs, first, end)];
        const data = runs.filter((r) => r.digest !== null);
        const got = await chunks.readMany(data.map((r) => r.digest!));
        const buf = bufs[slot] ?? Buffer.allocUnsafe(Math.min(seg * cs, size - first * cs));
        data.forEach((r, j) => checked(r.index, r.digest!, got[j]!, r.length).copy(buf, r.offset - first * cs));
        return async () => {
          // each span of consecutive data blocks is one write
          let span: { offset: number; length: number } | null = null;
          const flushSpan = async () => {
            if (!span) return;
            const at = span.offset - first * cs;
            await target.write(span.offset, buf.subarray(at, at + span.length));
            span = null;
          };
          for (const r of runs) {
            if (r.digest === null) {
              await flushSpan();
              await target.hole(r.offset, r.length);
            } else if (span) span.length += r.length;
            else span = { offset: r.offset, length: r.length };
          }
          await flushSpan();
          report((end - first) * cs);
        };
      }),
    );
    return;
  }

  // 4 MiB chunks: each read into its pipeline slot's buffers (nothing allocated per chunk) unless the target keeps them
  const slots = target.keepsData ? [] : Array.from({ length: depth }, () => new ChunkSlot(cs));
  await runWindow(mapRuns(map, size, cs, 0, count, target.writesHoles ? 1 : Infinity), depth, (r, slot) =>
    inTurn(async () => {
      const digest = r.digest;
      if (digest === null) return () => target.hole(r.offset, r.length).then(() => report(r.length));
      let data: Buffer;
      try {
        data = slots[slot] ? await chunks.readInto(digest, slots[slot]) : await chunks.read(digest);
      } catch (e) {
        throw new BlockReadError(backup, r.index, e as Error);
      }
      checked(r.index, digest, data, r.length);
      return () => target.write(r.offset, data).then(() => report(r.length));
    }),
  );
}

/**
 * Runs fetch-then-deliver steps of a pipeline: fetches in parallel; deliveries as they come,
 * or (ordered) one at a time in the order the steps were started. After a failure, later
 * ordered steps deliver nothing.
 */
function turns(ordered: boolean): (step: () => Promise<() => Promise<void>>) => Promise<void> {
  let last: Promise<void> = Promise.resolve();
  let failed = false;
  return async (step) => {
    if (!ordered) return (await step())();
    const prev = last;
    let release!: () => void;
    last = new Promise<void>((r) => (release = r));
    try {
      const deliver = await step();
      await prev;
      if (!failed) await deliver();
    } catch (e) {
      failed = true;
      throw e;
    } finally {
      release();
    }
  };
}
