/**
 * Garbage collection, mark and sweep. It runs alone (no backup is being written meanwhile:
 * the catalog's GC lock and writer registrations keep them apart), marks every page and
 * chunk named by the map of a backup that is not `deleted`, and sweeps the rest: first the
 * index entry is removed (committed), then the object. Killed at any point, it has removed
 * only unreferenced data; a half-swept object left without its index entry is an orphan
 * that the next run removes. Objects of backups that never finished are orphans too.
 */
import { pageChunkDigests, rootDigests } from '../../catalog/blockmap.js';
import type { Appliance } from '../appliance.js';

export interface GcReport {
  liveBackups: number;
  liveChunks: number;
  removedChunks: number;
  removedPages: number;
  removedManifests: number;
  freedBytes: number;
}

export async function collectGarbage(app: Appliance, opts: { onPhase?: (phase: string) => void } = {}): Promise<GcReport> {
  const { catalog, repo } = app;
  catalog.recoverInterrupted();
  catalog.acquireGc();
  try {
    opts.onPhase?.('mark');
    const liveIds = new Set<string>();
    const livePages = new Set<string>();
    const liveChunks = new Set<string>();
    for (const b of catalog.liveBackups()) {
      const root = catalog.maps.get(b.id);
      liveIds.add(b.id);
      if (!root) continue;
      for (const pd of rootDigests(root)) {
        if (livePages.has(pd)) continue;
        livePages.add(pd);
        for (const cd of pageChunkDigests(catalog.loadPage(pd))) liveChunks.add(cd);
      }
    }
    const report: GcReport = { liveBackups: liveIds.size, liveChunks: liveChunks.size, removedChunks: 0, removedPages: 0, removedManifests: 0, freedBytes: 0 };
    opts.onPhase?.('sweep');
    for (const { key, value } of catalog.chunks.getRange({})) {
      const d = String(key);
      if (liveChunks.has(d)) continue;
      await catalog.chunks.remove(d);
      await repo.deleteChunk(d);
      report.removedChunks++;
      report.freedBytes += value.s;
    }
    for (const { key } of catalog.pages.getRange({})) {
      const d = String(key);
      if (livePages.has(d)) continue;
      await catalog.pages.remove(d);
      await repo.deletePage(d);
      report.removedPages++;
    }
    opts.onPhase?.('orphans');
    for await (const d of repo.listChunks()) {
      if (!liveChunks.has(d) && !catalog.chunk(d)) {
        await repo.deleteChunk(d);
        report.removedChunks++;
      }
    }
    for await (const d of repo.listPages()) {
      if (!livePages.has(d) && !catalog.pages.get(d)) {
        await repo.deletePage(d);
        report.removedPages++;
      }
    }
    for await (const id of repo.listManifests()) {
      // a manifest the catalog does not know is kept: a catalog rebuild or a record import needs it
      const b = catalog.backups.get(id);
      if (!b || (b.status !== 'deleted' && b.status !== 'error')) continue;
      await repo.deleteManifest(id);
      report.removedManifests++;
    }
    return report;
  } finally {
    catalog.releaseGc();
  }
}
