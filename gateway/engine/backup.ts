/**
 * Backup: a volume is read chunk by chunk; each chunk is hashed off the event loop, holes
 * and known chunks cost nothing more, unknown chunks are compressed and written; the block
 * map is built page by page and committed with the record only when everything it names
 * is durable in the repository. Until then the backup is `creating`, and a failure leaves
 * it `error` with a fail_reason and its partial data for GC.
 */
import { randomUUID } from 'node:crypto';
import { ConflictError, ownerHere } from '../../catalog/catalog.js';
import { commitBatched, commitDurably } from '../../catalog/commit.js';
import { MapBuilder, MapReader, holePage, pageEntriesFor } from '../../catalog/blockmap.js';
import { encodeManifest } from '../../catalog/manifest.js';
import { type BackupRecord, now, sizeGiB } from '../../catalog/records.js';
import type { ChangeSource, VolumeDevice } from '../../drivers/volume/types.js';
import { DataCursor } from '../../drivers/volume/extents.js';
import type { BlockDevice } from '../../blockdev/types.js';
import type { Appliance } from '../appliance.js';
import { mapData } from '../read/map-walk.js';
import { ChunkSink } from './chunk-sink.js';
import { type HeldObject, describeHolder, readEpoch, runningGc, startWriterLease } from '../../drivers/coordination.js';
import { followRepository } from './follow.js';

export interface BackupOptions {
  volume: string;
  incremental?: boolean;
  force?: boolean;
  name?: string;
  description?: string;
  snapshotId?: string | null;
  projectId?: string;
  userId?: string;
}

export interface Progress {
  (done: number, total: number): void;
}

export class BackupCancelled extends Error {
  constructor(id: string) {
    super(`backup ${id} was cancelled`);
    this.name = 'BackupCancelled';
  }
}

/** Validates the request and records the backup as `creating`; returns at once. */
export async function startBackup(app: Appliance, opts: BackupOptions): Promise<BackupRecord> {
  const rec = await newBackupRecord(app, opts);
  app.catalog.env.transactionSync(() => {
    app.catalog.registerWriter(rec.id);
    app.catalog.putBackup(rec);
  });
  return rec;
}

/**
 * The `creating` record startBackup commits, checked but not written: a caller that commits
 * more with it (the job service: quota, volume, job) registers the writer and puts it in its
 * own transaction, one commit in all.
 */
export async function newBackupRecord(app: Appliance, opts: BackupOptions): Promise<BackupRecord> {
  const { catalog, repo } = app;
  const v = catalog.volume(opts.volume);
  if (v.status === 'in-use' && !opts.force) {
    throw new ConflictError(`volume ${v.name} is in-use; back it up with --force (a crash-consistent copy, not quiesced)`);
  }
  if (v.status !== 'available' && v.status !== 'in-use') throw new ConflictError(`volume ${v.name} is ${v.status}; only an available or in-use volume can be backed up`);
  const parent = opts.incremental ? catalog.latestAvailable(v.id) : undefined;
  if (opts.incremental && !parent) {
    throw new ConflictError(`volume ${v.name} has no available backup to be the parent of an incremental; create a full backup first`);
  }
  const size = await app.volumeDriver(v).size();
  const id = randomUUID();
  const t = now();
  const rec: BackupRecord = {
    id,
    name: opts.name ?? `${v.name}-${t.replace(/[-:]/g, '').replace(/\..*/, '')}`,
    description: opts.description ?? '',
    volume_id: v.id,
    volume_name: v.name,
    snapshot_id: opts.snapshotId ?? null,
    parent_id: parent?.id ?? null,
    is_incremental: !!parent,
    status: 'creating',
    fail_reason: null,
    size: sizeGiB(size),
    size_bytes: size,
    object_count: 0,
    new_chunks: 0,
    new_bytes: 0,
    data_bytes: 0,
    container: repo.store.location,
    project_id: opts.projectId ?? v.project_id,
    user_id: opts.userId ?? v.user_id,
    availability_zone: 'nova',
    created_at: t,
    updated_at: t,
    data_timestamp: t,
    chunk_size: repo.chunkSize,
    codec: repo.config.codec,
    owner: ownerHere(),
    notes: [],
    change_token: null,
    bytes_read: 0,
  };
  return rec;
}

/**
 * Runs a backup recorded by startBackup to `available` (or `error`).
 *
 * Towards other appliances sharing the repository (see gateway/engine/gc.ts): a writer lease
 * is held from before the chunk index is consulted until the commit, so a GC anywhere waits;
 * the GC epoch is read at the start and again once the manifest is written, and a change
 * fails the backup (a GC may have swept what it deduplicated onto) instead of committing it.
 */
export async function runBackup(app: Appliance, rec: BackupRecord, progress?: Progress, from?: BlockDevice): Promise<BackupRecord> {
  const { catalog } = app;
  const store = app.repo.store;
  let source: ChangeSource | null = null;
  let lease: HeldObject | null = null;
  const step = stepTimer();
  try {
    lease = await startWriterLease(store, `backup ${rec.id}`);
    const gc = await runningGc(store);
    if (gc) throw new ConflictError(`garbage collection is running on the repository (${describeHolder(gc)}); back up again when it ends`);
    const epoch = await readEpoch(store);
    await followRepository(app, epoch);
    step('lease');
    const driver = app.volumeDriver(catalog.volume(rec.volume_id));
    source = from ? null : ((await driver.snapshotForBackup?.(rec.id)) ?? null);
    step('snapshot');
    const parent = rec.parent_id ? catalog.backups.get(rec.parent_id) : undefined;
    // a diff can only be laid over a parent that has a change token (an export-diff snapshot);
    // over any other parent (e.g. one saved from an overlay) it is built from the full diff alone
    let base = parent?.change_token ? parent : undefined;
    if (source && parent && !base) rec = { ...rec, notes: [...rec.notes, `the parent backup ${parent.id} has no snapshot to diff against: this backup read every allocated extent of the image`] };
    // nor over a parent whose map names a chunk that verify found corrupt: the block is read anew
    if (source && base && catalog.anyCorrupt() && namesCorrupt(app, base)) {
      base = undefined;
      rec = { ...rec, notes: [...rec.notes, `the parent backup ${parent!.id} names a chunk that verify found corrupt: this backup read every allocated extent of the image`] };
    }
    const done = source ? await copyChanges(app, rec, source, base, progress, step) : await copyVolume(app, rec, progress, from);
    step('data');
    // the manifest names its writer's lease: a catalog rebuild leaves it alone while the lease is live
    await app.repo.putManifest(rec.id, encodeManifest(app.repo.config.id, done.rec, catalog.volume(rec.volume_id), done.root, lease.token));
    await lease.renew();
    if ((await readEpoch(store)) !== epoch) {
      throw new Error('a garbage collection of the repository started while this backup was written (its lease had expired); nothing was committed, back up again');
    }
    // batched with other commits, off the event loop; on disk before the backup is reported available
    const committed = await commitDurably(catalog.env, () => catalog.commitBackup(done.rec, done.root));
    step('commit');
    await source?.commit(parent?.change_token ?? null);
    step('source-commit');
    step.report(rec.id);
    return committed;
  } catch (e) {
    await source?.abort().catch(() => undefined);
    // a backup that is not committed has no manifest in the repository
    await app.repo.deleteManifest(rec.id).catch(() => undefined);
    const cur = catalog.backups.get(rec.id);
    if (cur?.status === 'deleting') {
      return catalog.transition(rec.id, ['deleting'], 'deleted', { owner: null, fail_reason: 'cancelled by delete --force' });
    }
    const reason = e instanceof Error ? e.message : String(e);
    catalog.transition(rec.id, ['creating'], 'error', { fail_reason: reason, owner: null });
    throw e;
  } finally {
    await commitBatched(catalog.env, () => catalog.unregisterWriter(rec.id));
    await lease?.release().catch(() => undefined);
  }
}

/**
 * Where a backup's time goes, step by step (ms since the previous step), written to stderr as
 * one JSON line `backup-steps` when BLOCKGATE_BACKUP_STEPS=1 (bench api reports them).
 */
function stepTimer(): ((name: string) => void) & { report(id: string): void } {
  const on = process.env.BLOCKGATE_BACKUP_STEPS === '1';
  const steps: Record<string, number> = {};
  let last = performance.now();
  const step = (name: string) => {
    if (!on) return;
    const t = performance.now();
    steps[name] = Math.round((t - last) * 10) / 10;
    last = t;
  };
  return Object.assign(step, { report: (id: string) => on && void process.stderr.write(`${JSON.stringify({ event: 'backup-steps', backup: id, ms: steps })}\n`) });
}

/** bytes a whole-volume read hands to the sink at once (a segment of small blocks) */
const SEGMENT_BYTES = 4 * 1024 * 1024;

function namesCorrupt(app: Appliance, b: BackupRecord): boolean {
  for (const r of mapData(app.catalog.mapReader(b), b.size_bytes, b.chunk_size)) if (app.catalog.isCorrupt(r.digest)) return true;
  return false;
}

function cancelCheck(app: Appliance, id: string): () => void {
  let n = 0;
  return () => {
    if (++n % 16 === 0 && app.catalog.backups.get(id)?.status !== 'creating') throw new BackupCancelled(id);
  };
}

/** Whole-volume read: every chunk is read and hashed; only unknown ones are written. */
async function copyVolume(app: Appliance, rec: BackupRecord, progress?: Progress, from?: BlockDevice): Promise<{ rec: BackupRecord; root: Buffer }> {
  const { catalog } = app;
  if (from) rec = { ...rec, size_bytes: from.size, size: sizeGiB(from.size) };
  const cs = rec.chunk_size;
  const count = Math.ceil(rec.size_bytes / cs);
  // a packed repository's small blocks are read, hashed and encoded a segment (4 MiB, as many bytes
  // in flight as 4 MiB chunks) at a time; a loose repository puts each chunk object on its own, in parallel
  const seg = app.repo.packed ? Math.max(1, Math.floor(SEGMENT_BYTES / cs)) : 1;
  const sink = new ChunkSink(app, new MapBuilder(count, undefined, false, (p) => app.repo.digest(p), pageEntriesFor(cs)), cs, app.config.pipelineDepth, true, seg);
  const dev = from ?? (await app.volumeDriver(catalog.volume(rec.volume_id)).open('read'));
  const check = cancelCheck(app, rec.id);
  // a sparse file's holes are recorded as zero chunks without reading them
  const extents = (dev as Partial<VolumeDevice>).dataExtents?.();
  const data = extents ? new DataCursor(extents) : null;
  let read = 0;
  try {
    for (let i = 0; i < count && !sink.failed; i += seg) {
      check();
      if (data) {
        // the whole segments before the next data are holes: recorded at once, never read
        const next = await data.nextData(i * cs);
        const holes = next >= rec.size_bytes ? count - i : Math.floor(next / (cs * seg)) * seg - i;
        if (holes > 0) {
          sink.putHole(i, Math.min(holes * cs, rec.size_bytes - i * cs));
          progress?.(Math.min((i + holes) * cs, rec.size_bytes), rec.size_bytes);
          i += holes - seg; // the loop's step brings it to the first block after the holes
          continue;
        }
      }
      const len = Math.min(cs * seg, rec.size_bytes - i * cs);
      const slot = await sink.acquire();
      await readFully(dev, sink.buffer(slot).subarray(0, len), i * cs).catch((e: unknown) => {
        sink.discard(slot);
        throw e;
      });
      read += len;
      sink.put(i, slot, len);
      progress?.(i * cs + len, rec.size_bytes);
    }
  } catch (e) {
    await sink.settle();
    throw e;
  } finally {
    await data?.close();
    if (!from) await dev.close?.();
  }
  const root = await sink.finish();
  return finishRecord(app, { ...rec, ...sink.stats, bytes_read: read }, root);
}

/**
 * Change-source backup (RBD export-diff): only chunks touched by a changed extent are
 * built, each from the parent's chunk (or zeroes) with the changed bytes laid over it;
 * every other entry of the map is the parent's (or a hole, for a first backup).
 */
async function copyChanges(app: Appliance, rec: BackupRecord, source: ChangeSource, parent: BackupRecord | undefined, progress?: Progress, step: (name: string) => void = () => {}): Promise<{ rec: BackupRecord; root: Buffer }> {
  const { catalog } = app;
  rec = { ...rec, size_bytes: source.size, size: sizeGiB(source.size) };
  const cs = rec.chunk_size;
  const count = Math.ceil(rec.size_bytes / cs);
  const base = parent ? { root: catalog.mapRoot(parent.id), chunkCount: Math.ceil(parent.size_bytes / parent.chunk_size), load: catalog.loadPage } : undefined;
  const parentMap = parent ? catalog.mapReader(parent) : null;
  // the parent's chunks through the appliance's cache (an NBD export or a mount of the parent may hold them)
  const chunks = app.chunks;
  const entries = pageEntriesFor(cs);
  const sink = new ChunkSink(app, new MapBuilder(count, base, true, (p) => app.repo.digest(p), entries), cs, app.config.pipelineDepth, false);
  if (!parent) await sink.storePage({ digest: app.repo.digest(holePage(entries)), bytes: holePage(entries) });
  const check = cancelCheck(app, rec.id);
  let cur = -1;
  let slot = -1;
  let changed = 0;
  /** the chunks the diff touched (each once: extents come in order) */
  const touched: number[] = [];
  // byte ranges of the open chunk that the diff wrote; the rest comes from the parent's chunk
  let covered: [number, number][] = [];
  const open = async (i: number) => {
    slot = await sink.acquire();
    cur = i;
    covered = [];
  };
  const close = () => {
    if (cur < 0) return;
    const i = cur;
    const len = Math.min(cs, rec.size_bytes - i * cs);
    const mine = covered;
    const whole = mine.length === 1 && mine[0]![0] === 0 && mine[0]![1] >= len;
    // the parent's chunk is fetched in the background, in parallel with the next chunks
    sink.put(i, slot, len, whole ? undefined : (buf) => fillGaps(buf, len, mine, parentMap && i < parentMap.chunkCount ? parentMap.entry(i) : null));
    touched.push(i);
    changed++;
    cur = -1;
  };
  const fillGaps = async (buf: Buffer, len: number, ranges: [number, number][], digest: string | null) => {
    const base = digest ? await chunks.read(digest) : null;
    let pos = 0;
    for (const [from, to] of [...ranges, [len, len] as [number, number]]) {
      if (from > pos) {
        if (base && pos < base.length) base.copy(buf, pos, pos, Math.min(from, base.length));
        const zeroFrom = base ? Math.max(pos, Math.min(from, base.length)) : pos;
        if (zeroFrom < from) buf.fill(0, zeroFrom, from);
      }
      pos = Math.max(pos, to);
    }
  };
  try {
    for await (const ext of source.changes(parent?.change_token ?? null)) {
      if (sink.failed) break;
      check();
      for (let pos = ext.offset; pos < ext.offset + ext.length; ) {
        const i = Math.floor(pos / cs);
        if (i >= count) throw new Error(`change at offset ${pos} is beyond the volume size ${rec.size_bytes}`);
        if (i !== cur) {
          close();
          await open(i);
        }
        const end = Math.min(ext.offset + ext.length, (i + 1) * cs);
        const buf = sink.buffer(slot);
        if (ext.data) ext.data.copy(buf, pos - i * cs, pos - ext.offset, end - ext.offset);
        else buf.fill(0, pos - i * cs, end - i * cs);
        const last = covered.at(-1);
        if (last && last[1] === pos - i * cs) last[1] = end - i * cs;
        else covered.push([pos - i * cs, end - i * cs]);
        pos = end;
      }
      progress?.(source.bytesRead, Math.max(source.bytesRead, 1));
    }
    close();
    step('diff');
  } catch (e) {
    if (cur >= 0) sink.discard(slot);
    await sink.settle();
    throw e;
  }
  const root = await sink.finish();
  step('chunks');
  const made = { ...rec, ...sink.stats, bytes_read: source.bytesRead, change_token: source.token, notes: [...rec.notes, ...source.notes] };
  const out = parent && (parent.size_bytes !== rec.size_bytes || parent.chunk_size !== cs) ? recountFromMap(app, made, root) : countFromParent(made, parent, parentMap, touched);
  out.notes.push(`${changed} of ${count} chunks changed`);
  step('counts');
  return finishRecord(app, out, root);
}

async function finishRecord(app: Appliance, rec: BackupRecord, root: Buffer): Promise<{ rec: BackupRecord; root: Buffer }> {
  if (app.catalog.backups.get(rec.id)?.status !== 'creating') throw new BackupCancelled(rec.id);
  return { rec: { ...rec, updated_at: now() }, root };
}

/**
 * After a change-source backup over a parent of the same size (or over nothing: the map started
 * as holes), object_count and data_bytes of the whole map are the parent's, less what the touched
 * chunks held there, plus what they hold now (the sink counted those): no walk of the map.
 */
function countFromParent(rec: BackupRecord, parent: BackupRecord | undefined, parentMap: MapReader | null, touched: number[]): BackupRecord {
  let objects = parent?.object_count ?? 0;
  let bytes = parent?.data_bytes ?? 0;
  if (parent && parentMap) {
    for (const i of touched) {
      if (!parentMap.entry(i)) continue;
      objects--;
      bytes -= Math.min(rec.chunk_size, rec.size_bytes - i * rec.chunk_size);
    }
  }
  return { ...rec, object_count: objects + rec.object_count, data_bytes: bytes + rec.data_bytes };
}

/** After a change-source backup, object_count and data_bytes describe the whole map (walked). */
function recountFromMap(app: Appliance, rec: BackupRecord, root: Buffer): BackupRecord {
  const count = Math.ceil(rec.size_bytes / rec.chunk_size);
  const r = new MapReader(root, count, app.catalog.loadPage, pageEntriesFor(rec.chunk_size));
  let objects = 0;
  let bytes = 0;
  for (const run of mapData(r, rec.size_bytes, rec.chunk_size)) {
    objects++;
    bytes += run.length;
  }
  return { ...rec, object_count: objects, data_bytes: bytes };
}

async function readFully(dev: { read(o: number, l: number): Promise<Buffer>; readInto?: (b: Buffer, o: number) => Promise<void> }, view: Buffer, offset: number): Promise<void> {
  if (dev.readInto) return dev.readInto(view, offset);
  (await dev.read(offset, view.length)).copy(view);
}
