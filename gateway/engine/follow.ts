/**
 * The catalog follows the repository. A catalog is an index of the repository, and other
 * appliances sharing it delete backups and collect garbage. After a GC anywhere (a new GC
 * epoch, drivers/coordination.ts), this catalog drops what the repository no longer holds:
 * chunk-index entries and pages of objects that are gone (so nothing is deduplicated onto
 * a swept chunk), and backups whose manifest is gone become `deleted`.
 */
import { readEpoch } from '../../drivers/coordination.js';
import { now } from '../../catalog/records.js';
import type { Appliance } from '../appliance.js';
import { dropGonePacks } from './pack-index.js';
import { followPacks } from './repack.js';
import { DigestSet } from './digest-set.js';

export const EPOCH_KEY = 'gcEpoch';

export interface FollowReport {
  epoch: string;
  droppedChunks: number;
  droppedPages: number;
  deletedBackups: string[];
}

export function knownEpoch(app: Appliance): string {
  return (app.catalog.meta.get(EPOCH_KEY) as string | undefined) ?? '';
}

/** What the repository holds: manifest ids, chunk and page digests. */
export interface RepositoryListing {
  manifests: Set<string>;
  /** loose chunk and page objects */
  chunks: DigestSet;
  pages: DigestSet;
  /** a packed repository: the packs that are neither gone nor retired, already read into the catalog */
  packs?: Set<string>;
}

async function listRepository(app: Appliance): Promise<RepositoryListing> {
  const { repo } = app;
  const out: RepositoryListing = { manifests: new Set(), chunks: new DigestSet(), pages: new DigestSet() };
  for await (const id of repo.listManifests()) out.manifests.add(id);
  for await (const d of repo.listChunks()) out.chunks.add(d);
  for await (const d of repo.listPages()) out.pages.add(d);
  if (repo.packed) out.packs = new Set((await followPacks(app)).active.keys());
  return out;
}

/**
 * Brings the catalog up to the repository's epoch; null when it already is. `listing`: what
 * the caller has just listed (a GC), so the repository is not listed a second time.
 */
export async function followRepository(app: Appliance, epoch?: string, listing?: RepositoryListing): Promise<FollowReport | null> {
  const { catalog, repo } = app;
  epoch ??= await readEpoch(repo.store);
  if (epoch === knownEpoch(app)) return null;
  const report: FollowReport = { epoch, droppedChunks: 0, droppedPages: 0, deletedBackups: [] };
  const { manifests, chunks, pages, packs } = listing ?? (await listRepository(app));
  await catalog.env.transaction(() => {
    for (const { value: b } of catalog.backups.getRange({})) {
      if (b.status !== 'available' || manifests.has(b.id)) continue;
      catalog.backups.put(b.id, {
        ...b,
        status: 'deleted',
        owner: null,
        updated_at: now(),
        notes: [...b.notes, 'deleted from the repository (its manifest is gone), by another appliance sharing it'],
      });
      catalog.maps.remove(b.id);
      report.deletedBackups.push(b.id);
    }
    if (packs) {
      const dropped = dropGonePacks(catalog, packs);
      report.droppedChunks += dropped.chunks;
      report.droppedPages += dropped.pages;
    }
    for (const { key, value } of catalog.chunks.getRange({})) {
      if (value.p || chunks.has(String(key))) continue; // a packed blob goes with its pack
      catalog.chunks.remove(key);
      report.droppedChunks++;
    }
    for (const { key } of catalog.pages.getRange({})) {
      if (pages.has(String(key)) || catalog.pageLocs.get(key)) continue;
      catalog.pages.remove(key);
      report.droppedPages++;
    }
    catalog.meta.put(EPOCH_KEY, epoch);
  });
  return report;
}
