/**
 * Adopting backups from the repository into this catalog: what record import and catalog
 * rebuild share. A manifest becomes an `available` backup record with its map root, the
 * pages it names (read from the repository and verified), the chunk-index entries of its
 * chunks (size from the listing, codec and plain length from each object's header), and a
 * volume record when the catalog has none with that id. All of it in one transaction, so a
 * failure changes nothing.
 */
import { pageChunkDigests } from '../../catalog/blockmap.js';
import type { ChunkInfo } from '../../catalog/catalog.js';
import type { Manifest } from '../../catalog/manifest.js';
import { type BackupRecord, type VolumeRecord, now } from '../../catalog/records.js';
import { CHUNK_HEADER, CHUNK_MAGIC, objectName } from '../../drivers/chunk.js';
import type { Appliance } from '../appliance.js';
import { loadPage } from './gc.js';
import { followPacks } from './repack.js';
import { runWindow } from './pipeline.js';

/** Pages a set of manifests need that the catalog lacks, fetched and verified. */
export async function fetchPages(app: Appliance, manifests: Manifest[]): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  const todo: { digest: string; id: string }[] = [];
  const seen = new Set<string>();
  for (const m of manifests) {
    for (const d of m.map.pages) {
      if (seen.has(d) || app.catalog.pages.get(d)) continue;
      seen.add(d);
      todo.push({ digest: d, id: m.backup.id });
    }
  }
  // a packed repository: pages written by other catalogs are found through the pack indexes
  if (app.repo.packed && todo.some((t) => !app.catalog.pageLocs.get(t.digest))) await followPacks(app);
  await runWindow(todo, 16, async ({ digest, id }) => {
    out.set(digest, await loadPage(app, digest, id));
  });
  return out;
}

/** Chunk-index entries for the chunks `digests` names that the catalog lacks; sizes from a listing. */
export async function chunkEntries(app: Appliance, digests: Iterable<string>, sizes?: Map<string, number>): Promise<Map<string, ChunkInfo>> {
  let want = [...new Set(digests)].filter((d) => !app.catalog.chunk(d));
  const out = new Map<string, ChunkInfo>();
  if (!want.length) return out;
  if (app.repo.packed) {
    // packed: every blob's entry comes from its pack's index, read into the catalog
    await followPacks(app);
    want = want.filter((d) => !app.catalog.chunk(d));
    if (want.length) throw new Error(`chunk ${want[0]} is missing from the repository (it is in no pack)`);
    return out;
  }
  if (!sizes) {
    sizes = new Map();
    for await (const o of app.repo.store.listInfo('chunks/')) sizes.set(o.name.slice(o.name.lastIndexOf('/') + 1), o.size);
  }
  await runWindow(want, 16, async (d) => {
    const size = sizes!.get(d);
    if (size === undefined) throw new Error(`chunk ${d} is missing from the repository`);
    const head = await app.repo.store.getRange(objectName('chunks', d), 0, CHUNK_HEADER);
    if (head.length < CHUNK_HEADER || !head.subarray(0, 4).equals(CHUNK_MAGIC)) throw new Error(`chunk ${d} has no valid header`);
    out.set(d, { s: size, c: head[5]!, n: head.readUInt32BE(8) });
  });
  return out;
}

/** Sizes of the chunk objects named, from listings of just their directories (chunks/xx/), not of the whole repository. */
export async function chunkSizes(app: Appliance, digests: Iterable<string>): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  const dirs = [...new Set([...digests].map((d) => d.slice(0, 2)))];
  await runWindow(dirs, 16, async (dir) => {
    for await (const o of app.repo.store.listInfo(`chunks/${dir}/`)) out.set(o.name.slice(o.name.lastIndexOf('/') + 1), o.size);
  });
  return out;
}

/**
 * What adopting one manifest adds to this catalog besides its record: the pages it lacks and
 * the chunk-index entries of its chunks the index lacks (sizes from their directories' listings).
 */
export async function manifestIndex(app: Appliance, m: Manifest): Promise<{ pages: Map<string, Buffer>; chunks: Map<string, ChunkInfo> }> {
  const pages = await fetchPages(app, [m]);
  const want = [...manifestChunks(m, (d) => pages.get(d) ?? app.catalog.pages.get(d)!)].filter((d) => !app.catalog.chunk(d));
  const chunks = await chunkEntries(app, want, app.repo.packed || !want.length ? undefined : await chunkSizes(app, want));
  return { pages, chunks };
}

/** The chunk digests the pages of a manifest name. */
export function manifestChunks(m: Manifest, pages: (d: string) => Buffer): Set<string> {
  const out = new Set<string>();
  for (const pd of new Set(m.map.pages)) for (const cd of pageChunkDigests(pages(pd))) out.add(cd);
  return out;
}

/** The volume record an adopted backup belongs to: the catalog's, or a new one from the manifest. */
export function volumeFor(app: Appliance, m: Manifest, staged: Map<string, VolumeRecord>): VolumeRecord {
  const have = app.catalog.volumes.get(m.volume.id) ?? staged.get(m.volume.id);
  if (have) return have;
  const taken = (n: string) => app.catalog.volumeNames.get(n) !== undefined || [...staged.values()].some((v) => v.name === n);
  const name = taken(m.volume.name) ? `${m.volume.name}-${m.volume.id.slice(0, 8)}` : m.volume.name;
  const t = now();
  const v: VolumeRecord = {
    id: m.volume.id,
    name,
    driver: m.volume.driver === 'rbd' ? 'rbd' : 'file',
    path: m.volume.path ?? '',
    size: m.volume.size,
    status: 'available',
    managed: false,
    project_id: m.backup.project_id,
    user_id: m.backup.user_id,
    created_at: t,
    updated_at: t,
    status_reason: 'recreated from the repository',
  };
  staged.set(v.id, v);
  return v;
}

export interface Adoption {
  records: BackupRecord[];
  roots: Map<string, Buffer>;
  volumes: Map<string, VolumeRecord>;
  pages: Map<string, Buffer>;
  chunks: Map<string, ChunkInfo>;
}

/** The record a manifest's backup gets in this catalog. */
export function adoptedRecord(m: Manifest, volume: VolumeRecord, note: string): BackupRecord {
  return {
    ...(m.backup as BackupRecord),
    volume_id: volume.id,
    volume_name: volume.name,
    status: 'available',
    owner: null,
    updated_at: now(),
    notes: [...(Array.isArray(m.backup.notes) ? m.backup.notes : []), note],
  };
}

/** Writes an adoption in one transaction; `check` runs inside it and may throw to abort. */
export async function commitAdoption(app: Appliance, a: Adoption, check?: () => void): Promise<void> {
  const { catalog } = app;
  await catalog.env.transaction(() => {
    check?.();
    for (const [id, v] of a.volumes) {
      catalog.volumes.put(id, v);
      catalog.volumeNames.put(v.name, id);
    }
    for (const [d, p] of a.pages) catalog.pages.put(d, p);
    for (const [d, info] of a.chunks) catalog.chunks.put(d, info);
    for (const r of a.records) {
      catalog.backups.put(r.id, r);
      catalog.maps.put(r.id, a.roots.get(r.id)!);
    }
  });
}
