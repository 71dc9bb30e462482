/**
 * Catalog rebuild from the repository alone: every manifest becomes an `available` backup
 * (with its volume, parent link, map, pages and chunk-index entries), into an empty catalog
 * after the old one was lost, or adding what is missing to a live one (a second appliance
 * adopting a shared repository). Backups the catalog already has are left as they are
 * (a `deleted` one is revived, as a record import does), so a rebuild is idempotent.
 * Manifests are adopted in batches (one transaction each), so memory stays bounded and a
 * killed rebuild leaves only whole backups behind; running it again finishes the work.
 */
import { type Manifest, decodeManifest } from '../../catalog/manifest.js';
import type { VolumeRecord } from '../../catalog/records.js';
import { readEpoch, writerLive } from '../../drivers/coordination.js';
import type { Appliance } from '../appliance.js';
import { type Adoption, adoptedRecord, chunkEntries, commitAdoption, fetchPages, manifestChunks, manifestIndex, volumeFor } from './adopt.js';
import { EPOCH_KEY } from './follow.js';
import { followPacks } from './repack.js';

export interface RebuildReport {
  manifests: number;
  added: number;
  present: number;
  /** manifests whose backup was still being committed by a live writer, left for the next rebuild */
  inFlight: number;
  volumesAdded: number;
  pagesAdded: number;
  chunksIndexed: number;
  errors: { backup: string; error: string }[];
}

const BATCH = 64;

export async function rebuildCatalog(app: Appliance, opts: { onProgress?: (done: number, total: number) => void } = {}): Promise<RebuildReport> {
  const { catalog, repo } = app;
  const epoch = await readEpoch(repo.store);
  const report: RebuildReport = { manifests: 0, added: 0, present: 0, inFlight: 0, volumesAdded: 0, pagesAdded: 0, chunksIndexed: 0, errors: [] };
  const ids: string[] = [];
  for await (const id of repo.listManifests()) ids.push(id);
  report.manifests = ids.length;
  // one listing of the chunk objects gives every size the index needs
  const sizes = new Map<string, number>();
  for await (const o of repo.store.listInfo('chunks/')) sizes.set(o.name.slice(o.name.lastIndexOf('/') + 1), o.size);
  // ...and in a packed repository, every pack's index gives the locations of its chunks and pages
  if (repo.packed) await followPacks(app);
  let done = 0;
  for (let i = 0; i < ids.length; i += BATCH) {
    const manifests: { m: Manifest; root: Buffer; revive: boolean }[] = [];
    for (const id of ids.slice(i, i + BATCH)) {
      const have = catalog.backups.get(id);
      if (have && have.status !== 'deleted') {
        report.present++;
        continue;
      }
      try {
        const { manifest, root } = decodeManifest(await repo.getManifest(id), id);
        if (manifest.repository_id !== repo.config.id) throw new Error(`names repository ${manifest.repository_id}, not this one`);
        if (manifest.backup.id !== id) throw new Error(`holds the record of backup ${manifest.backup.id}`);
        if (manifest.writer && (await writerLive(repo.store, manifest.writer))) {
          report.inFlight++; // its writer has not settled it yet: the next rebuild takes it
          continue;
        }
        manifests.push({ m: manifest, root, revive: !!have });
      } catch (e) {
        if ((e as { code?: string }).code === 'ENOENT') continue; // deleted meanwhile
        report.errors.push({ backup: id, error: (e as Error).message });
      }
    }
    const adoption: Adoption = { records: [], roots: new Map(), volumes: new Map<string, VolumeRecord>(), pages: new Map(), chunks: new Map() };
    for (const { m, root, revive } of manifests) {
      try {
        const pages = await fetchPages(app, [m]);
        const page = (d: string) => pages.get(d) ?? adoption.pages.get(d) ?? catalog.pages.get(d)!;
        const chunks = await chunkEntries(app, [...manifestChunks(m, page)].filter((d) => !adoption.chunks.has(d)), sizes);
        const vol = volumeFor(app, m, adoption.volumes);
        for (const [d, p] of pages) adoption.pages.set(d, p);
        for (const [d, c] of chunks) adoption.chunks.set(d, c);
        adoption.records.push(adoptedRecord(m, vol, revive ? 'revived by a catalog rebuild' : 'recreated by a catalog rebuild from the repository'));
        adoption.roots.set(m.backup.id, root);
      } catch (e) {
        report.errors.push({ backup: m.backup.id, error: (e as Error).message });
      }
    }
    await commitAdoption(app, adoption);
    report.added += adoption.records.length;
    report.volumesAdded += adoption.volumes.size;
    report.pagesAdded += adoption.pages.size;
    report.chunksIndexed += adoption.chunks.size;
    done = Math.min(ids.length, i + BATCH);
    opts.onProgress?.(done, ids.length);
  }
  // chunks no manifest names yet (a backup being written elsewhere) stay unindexed: a GC decides about them
  if (!catalog.meta.get(EPOCH_KEY)) await catalog.meta.put(EPOCH_KEY, epoch);
  return report;
}

/**
 * Adopts one backup from its manifest, as a rebuild would, without listing the repository:
 * its record, map, volume, pages and chunk-index entries, in one transaction (what a node's
 * follower does for each new manifest; a rebuild stays the repair). `present`: the catalog has
 * it; `in-flight`: its writer has not settled it yet; `gone`: deleted meanwhile.
 */
export async function adoptBackup(app: Appliance, id: string, note: string): Promise<'added' | 'present' | 'in-flight' | 'gone'> {
  const { catalog, repo } = app;
  const have = catalog.backups.get(id);
  if (have && have.status !== 'deleted') return 'present';
  const buf = await repo.findManifest(id);
  if (!buf) return 'gone';
  const { manifest: m, root } = decodeManifest(buf, id);
  if (m.repository_id !== repo.config.id) throw new Error(`names repository ${m.repository_id}, not this one`);
  if (m.backup.id !== id) throw new Error(`holds the record of backup ${m.backup.id}`);
  if (m.writer && (await writerLive(repo.store, m.writer))) return 'in-flight';
  const { pages, chunks } = await manifestIndex(app, m);
  const volumes = new Map<string, VolumeRecord>();
  const rec = adoptedRecord(m, volumeFor(app, m, volumes), note);
  // a record that appeared meanwhile (this node's own commit, a settle) is left as it is
  let raced = false;
  await commitAdoption(app, { records: [rec], roots: new Map([[id, root]]), volumes, pages, chunks }, () => {
    const cur = catalog.backups.get(id);
    if (cur && cur.status !== 'deleted') {
      raced = true;
      throw new Error('present');
    }
  }).catch((e: Error) => {
    if (!raced) throw e;
  });
  return raced ? 'present' : 'added';
}
