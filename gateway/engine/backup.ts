/**
 * Backup: a volume is read chunk by chunk; each chunk is hashed off the event loop, holes
 * and known chunks cost nothing more, unknown chunks are compressed and written; the block
 * map is built page by page and committed with the record only when everything it names
 * is durable in the repository. Until then the backup is `creating`, and a failure leaves
 * it `error` with a fail_reason and its partial data for GC.
 */
import { randomUUID } from 'node:crypto';
import { ConflictError, ownerHere } from '../../catalog/catalog.js';
import { MapBuilder, MapReader, PAGE_ENTRIES, type NewPage } from '../../catalog/blockmap.js';
import { encodeManifest } from '../../catalog/manifest.js';
import { type BackupRecord, now, sizeGiB } from '../../catalog/records.js';
import { CODEC_ID } from '../../drivers/codec.js';
import { encodeChunk } from '../../drivers/chunk.js';
import type { ChangeSource } from '../../drivers/volume/types.js';
import type { Appliance } from '../appliance.js';
import { LowWater, range, runWindow } from './pipeline.js';

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
  };
  catalog.env.transactionSync(() => {
    catalog.registerWriter(id);
    catalog.putBackup(rec);
  });
  return rec;
}

/** Runs a backup recorded by startBackup to `available` (or `error`). */
export async function runBackup(app: Appliance, rec: BackupRecord, progress?: Progress): Promise<BackupRecord> {
  const { catalog } = app;
  let source: ChangeSource | null = null;
  try {
    const driver = app.volumeDriver(catalog.volume(rec.volume_id));
    source = (await driver.snapshotForBackup?.(rec.id)) ?? null;
    const done = await copyVolume(app, rec, source, progress);
    const committed = catalog.commitBackup(done.rec, done.root);
    await source?.commit();
    return committed;
  } catch (e) {
    await source?.abort().catch(() => undefined);
    const cur = catalog.backups.get(rec.id);
    if (cur?.status === 'deleting') {
      return catalog.transition(rec.id, ['deleting'], 'deleted', { owner: null, fail_reason: 'cancelled by delete --force' });
    }
    const reason = e instanceof Error ? e.message : String(e);
    catalog.transition(rec.id, ['creating'], 'error', { fail_reason: reason, owner: null });
    throw e;
  } finally {
    catalog.unregisterWriter(rec.id);
  }
}

async function copyVolume(app: Appliance, rec: BackupRecord, source: ChangeSource | null, progress?: Progress): Promise<{ rec: BackupRecord; root: Buffer }> {
  const { catalog, repo, pool } = app;
  const cs = rec.chunk_size;
  const count = Math.ceil(rec.size_bytes / cs);
  const parent = rec.parent_id ? catalog.backups.get(rec.parent_id) : undefined;
  const parentRoot = parent ? catalog.mapRoot(parent.id) : undefined;
  const changed = parent && parentRoot && source ? source.changedSince(parent.snapshot_id) : null;
  // with a change source, start from the parent's map and revisit only changed chunks
  const builder =
    changed && parent && parentRoot
      ? new MapBuilder(count, { root: parentRoot, chunkCount: Math.ceil(parent.size_bytes / parent.chunk_size), load: catalog.loadPage })
      : new MapBuilder(count);
  const indices = changed ? changedChunks(changed, cs, count) : range(count);
  const dev = await app.volumeDriver(catalog.volume(rec.volume_id)).open('read');
  const slots = Array.from({ length: app.config.pipelineDepth }, () => new ArrayBuffer(cs));
  const writing = new Map<string, Promise<void>>();
  const low = new LowWater();
  const pagesPending: Promise<void>[] = [];
  const stats = { object_count: 0, new_chunks: 0, new_bytes: 0, data_bytes: 0, read: 0 };
  let sinceCheck = 0;
  const flushPages = (pages: NewPage[]): void => {
    for (const p of pages) pagesPending.push(storePage(app, p));
  };
  try {
    await runWindow(
      indices,
      slots.length,
      async (i, slot) => {
        const offset = i * cs;
        const len = Math.min(cs, rec.size_bytes - offset);
        const view = Buffer.from(slots[slot]!, 0, len);
        await readFully(dev, view, offset);
        stats.read += len;
        const h = await pool.hash(slots[slot]!, len);
        slots[slot] = h.buf;
        if (h.zero) {
          builder.set(i, null);
          return;
        }
        stats.object_count++;
        stats.data_bytes += len;
        if (!catalog.chunk(h.digest)) {
          let w = writing.get(h.digest);
          if (!w) {
            w = (async () => {
              const enc = await pool.encode(slots[slot]!, len, repo.config.codec);
              slots[slot] = enc.buf;
              await repo.putChunk(h.digest, enc.object);
              await catalog.chunks.put(h.digest, { s: enc.object.length, c: CODEC_ID[enc.codec], n: len });
              stats.new_chunks++;
              stats.new_bytes += enc.object.length;
            })();
            writing.set(h.digest, w);
          }
          await w;
        }
        builder.set(i, h.digest);
      },
      (i) => {
        const lw = low.complete(i);
        progress?.(Math.min(stats.read, rec.size_bytes), changed ? Math.max(stats.read, 1) : rec.size_bytes);
        if (!changed) flushPages(builder.takeFinishedPages(Math.floor(lw / PAGE_ENTRIES)));
        if (++sinceCheck >= 16) {
          sinceCheck = 0;
          if (catalog.backups.get(rec.id)?.status !== 'creating') throw new BackupCancelled(rec.id);
        }
      },
    );
    if (catalog.backups.get(rec.id)?.status !== 'creating') throw new BackupCancelled(rec.id);
    flushPages(builder.takeFinishedPages());
    await Promise.all(pagesPending);
  } finally {
    await dev.close?.();
  }
  const root = builder.finish();
  let out: BackupRecord = { ...rec, ...stats, updated_at: now() };
  if (changed) out = recountFromMap(app, out, root);
  delete (out as Partial<typeof stats>).read;
  const v = catalog.volume(rec.volume_id);
  await repo.putManifest(rec.id, encodeManifest(repo.config.id, out, v, root));
  return { rec: out, root };
}

/** After a change-source incremental, object_count and data_bytes describe the whole map. */
function recountFromMap(app: Appliance, rec: BackupRecord, root: Buffer): BackupRecord {
  const count = Math.ceil(rec.size_bytes / rec.chunk_size);
  const r = new MapReader(root, count, app.catalog.loadPage);
  let objects = 0;
  let bytes = 0;
  for (let i = 0; i < count; i++) {
    if (r.entry(i)) {
      objects++;
      bytes += Math.min(rec.chunk_size, rec.size_bytes - i * rec.chunk_size);
    }
  }
  return { ...rec, object_count: objects, data_bytes: bytes };
}

async function storePage(app: Appliance, p: NewPage): Promise<void> {
  if (app.catalog.pages.get(p.digest)) return;
  await app.repo.putPage(p.digest, encodeChunk(p.bytes, app.repo.config.codec).object);
  await app.catalog.pages.put(p.digest, p.bytes);
}

async function readFully(dev: { read(o: number, l: number): Promise<Buffer>; readInto?: (b: Buffer, o: number) => Promise<void> }, view: Buffer, offset: number): Promise<void> {
  if (dev.readInto) return dev.readInto(view, offset);
  (await dev.read(offset, view.length)).copy(view);
}


async function* changedChunks(ranges: AsyncIterable<{ offset: number; length: number }>, cs: number, count: number): AsyncIterable<number> {
  let last = -1;
  for await (const r of ranges) {
    const first = Math.floor(r.offset / cs);
    const end = Math.min(count, Math.ceil((r.offset + r.length) / cs));
    for (let i = Math.max(first, last + 1); i < end; i++) {
      last = i;
      yield i;
    }
  }
}
