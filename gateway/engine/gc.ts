/**
 * Garbage collection of a repository that several appliances, catalogs and writers may
 * share. Mark and sweep, where the mark comes from the repository, not from this catalog:
 *
 *   1. take this catalog's GC lock (no local writer), then the repository's GC lock
 *      (`locks/gc-*`, drivers/coordination.ts: one GC per repository at a time);
 *   2. refuse while any writer lease in the repository is live (a backup being written on
 *      any appliance);
 *   3. start a new GC epoch (`epoch`);
 *   4. remove the manifests of backups this catalog holds as `error` or `deleted`;
 *   5. mark: list every manifest in the repository and every page and chunk its map names
 *      (a manifest or page that cannot be read stops the GC before anything is swept);
 *   6. sweep every chunk and page object that is not marked (and older than the grace
 *      window, if one is given), index entry first, then object.
 *
 * Why this never removes data a committed backup needs. A backup is committed when its
 * manifest is in the repository and its writer has seen the epoch unchanged after writing
 * it (gateway/engine/backup.ts). Take any object X a committed manifest M names, and a GC
 * that sweeps X. The GC replaced the epoch (3) before it listed the manifests (5). If M was
 * written before that listing, the listing saw M (read-after-write consistency) and X was
 * marked: not swept. Otherwise M was written after the listing, hence after the epoch
 * change, and M's writer read the epoch after writing M: it saw a new token, so it removed
 * M and failed; M is not committed. Either way no committed manifest loses an object. This
 * needs no clock; the leases and TTLs only make a GC wait for running backups instead of
 * failing them. Killed at any point, a GC has removed only unmarked objects, that is, what
 * no manifest named; its lock expires (its process is gone, or its heartbeat stops).
 * A backup that was not committed (killed, failed) leaves unnamed objects; they are swept.
 *
 * The catalog follows: index entries of swept objects go with them, and backups of this
 * catalog whose manifest is gone (deleted by another appliance) become `deleted`.
 */
import { pageChunkDigests } from '../../catalog/blockmap.js';
import { ConflictError } from '../../catalog/catalog.js';
import { decodeManifest } from '../../catalog/manifest.js';
import { DEFAULT_TTL_MS, RepositoryBusyError, acquireGcLock, describeHolder, liveWriters, newEpoch } from '../../drivers/coordination.js';
import { type PackGcReport, followPacks, sweepPacks } from './repack.js';
import { DigestSet } from './digest-set.js';
import type { Appliance } from '../appliance.js';
import { followRepository } from './follow.js';
import { runWindow } from './pipeline.js';

export interface GcReport {
  liveBackups: number;
  liveChunks: number;
  removedChunks: number;
  removedPages: number;
  removedManifests: number;
  freedBytes: number;
  /** unreferenced objects kept because they are younger than the grace window */
  keptYoung: number;
  /** a packed repository: packs deleted, repacked, written by repacking (gateway/engine/repack.ts) */
  packs?: PackGcReport;
}

export interface GcOptions {
  onPhase?: (phase: string) => void;
  /** never sweep an object modified less than this long ago (default 0: leases and the epoch make it safe) */
  graceMs?: number;
  /** packed repository: repack a pack when this fraction of it is dead (default 0.5) */
  repackThreshold?: number;
  /** packed repository: a repacked pack is deleted by a GC this long after (default: the lease TTL) */
  retireMs?: number;
  /** packed repository: called between the steps of a repack */
  onStep?: (step: string) => void;
}

export async function collectGarbage(app: Appliance, opts: GcOptions = {}): Promise<GcReport> {
  const { catalog, repo } = app;
  const store = repo.store;
  catalog.recoverInterrupted();
  catalog.acquireGc();
  try {
    let lock;
    try {
      lock = await acquireGcLock(store);
    } catch (e) {
      if (e instanceof RepositoryBusyError) throw new ConflictError(e.message);
      throw e;
    }
    try {
      const writers = await liveWriters(store);
      if (writers.length) throw new ConflictError(`a backup is being written to the repository (${writers.map(describeHolder).join('; ')}); run gc when it ends`);
      const epoch = await newEpoch(store);
      return app.events.tap('gc.end', repo.config.id, await markAndSweep(app, epoch, opts));
    } finally {
      await lock.release();
    }
  } finally {
    catalog.releaseGc();
  }
}

async function markAndSweep(app: Appliance, epoch: string, opts: GcOptions): Promise<GcReport> {
  const { catalog, repo } = app;
  const report: GcReport = { liveBackups: 0, liveChunks: 0, removedChunks: 0, removedPages: 0, removedManifests: 0, freedBytes: 0, keptYoung: 0 };
  opts.onPhase?.('manifests');
  for await (const id of repo.listManifests()) {
    // a manifest of a backup this catalog failed or deleted: it names nothing anyone may use
    const b = catalog.backups.get(id);
    if (!b || (b.status !== 'deleted' && b.status !== 'error')) continue;
    await repo.deleteManifest(id);
    report.removedManifests++;
  }
  // a packed repository: every pack's index is known before the mark (pages of other writers are read through it)
  const packs = repo.packed ? await followPacks(app) : null;
  opts.onPhase?.('mark');
  const livePages = new DigestSet();
  const liveChunks = new DigestSet();
  const manifests = new Set<string>();
  for await (const id of repo.listManifests()) {
    const data = await repo.findManifest(id);
    if (!data) continue; // deleted meanwhile: it names nothing now
    const { manifest } = decodeManifest(data, id);
    manifests.add(id);
    report.liveBackups++;
    for (const pd of manifest.map.pages) {
      if (livePages.has(pd)) continue;
      livePages.add(pd);
      for (const cd of pageChunkDigests(await loadPage(app, pd, id))) liveChunks.add(cd);
    }
  }
  report.liveChunks = liveChunks.size;
  opts.onPhase?.('sweep');
  const cutoff = Date.now() - (opts.graceMs ?? 0);
  const chunks = await sweep(app, 'chunks', liveChunks, cutoff, report);
  const pages = await sweep(app, 'pages', livePages, cutoff, report);
  report.removedChunks = chunks.removed;
  report.removedPages = pages.removed;
  let presentPacks: Set<string> | undefined;
  if (packs) {
    const pr: PackGcReport = { removedPacks: 0, repackedPacks: 0, newPacks: 0, copiedBytes: 0, deletedRetired: 0, freedBytes: 0, keptYoung: 0, corrupt: [] };
    presentPacks = await sweepPacks(app, packs, { chunks: liveChunks, pages: livePages }, { cutoff, repackThreshold: opts.repackThreshold, retireMs: opts.retireMs ?? DEFAULT_TTL_MS, onStep: opts.onStep }, pr);
    report.packs = pr;
    report.freedBytes += pr.freedBytes;
    report.keptYoung += pr.keptYoung;
  }
  // this catalog now matches the repository at the new epoch (from what the GC just listed)
  await followRepository(app, epoch, { manifests, chunks: chunks.kept, pages: pages.kept, packs: presentPacks });
  return report;
}

const SWEEP_BATCH = 256;

/**
 * Removes the unmarked objects of one kind, in batches: the index entries of a batch in one
 * transaction (committed), then its objects, a few at a time.
 */
async function sweep(app: Appliance, kind: 'chunks' | 'pages', live: DigestSet, cutoff: number, report: GcReport): Promise<{ removed: number; kept: DigestSet }> {
  const index = kind === 'chunks' ? app.catalog.chunks : app.catalog.pages;
  const remove = (d: string) => (kind === 'chunks' ? app.repo.deleteChunk(d) : app.repo.deletePage(d));
  let removed = 0;
  const kept = new DigestSet();
  let batch: string[] = [];
  const flush = async () => {
    const todo = batch;
    batch = [];
    await app.catalog.env.transaction(() => {
      for (const d of todo) index.remove(d);
    });
    await runWindow(todo, 8, remove);
    removed += todo.length;
  };
  for await (const o of app.repo.store.listInfo(`${kind}/`)) {
    const d = o.name.slice(o.name.lastIndexOf('/') + 1);
    if (!/^[0-9a-f]{64}$/.test(d)) continue;
    if (live.has(d)) {
      kept.add(d);
      continue;
    }
    if (o.mtimeMs > cutoff) {
      report.keptYoung++;
      kept.add(d);
      continue;
    }
    batch.push(d);
    report.freedBytes += o.size;
    if (batch.length >= SWEEP_BATCH) await flush();
  }
  if (batch.length) await flush();
  return { removed, kept };
}

/** A page's entries: from the catalog when it has them, else from the repository (verified). */
export async function loadPage(app: Appliance, digest: string, backupId: string): Promise<Buffer> {
  const local = app.catalog.pages.get(digest);
  if (local) return local;
  let obj: Buffer;
  try {
    obj = await app.repo.getPage(digest);
  } catch (e) {
    if ((e as { code?: string }).code === 'ENOENT') throw new Error(`backup ${backupId}: its map page ${digest} is missing from the repository`);
    throw e;
  }
  try {
    return app.repo.decodePage(obj, digest);
  } catch (e) {
    throw new Error(`backup ${backupId}: its map page ${digest} is corrupt (${(e as Error).message})`);
  }
}
