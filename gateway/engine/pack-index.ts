/**
 * The catalog's view of a packed repository's packs: every pack it has read (its size and
 * index, kept in `packs`; packs never change), and for every blob the location the readers
 * use (`chunks` for chunks, `page-locations` for map pages: digest -> pack, offset, length).
 * Used by the backup sink (packs it wrote), the follow and rebuild (packs other writers
 * wrote, read from the repository), and GC (packs it repacked or deleted).
 */
import type { Catalog } from '../../catalog/catalog.js';
import { CODEC_ID } from '../../drivers/codec.js';
import { type PackEntry, decodePackIndex, encodePackIndex } from '../../drivers/pack.js';
import type { Repository } from '../../drivers/repository.js';
import { runWindow } from './pipeline.js';

/** Records a pack and points its blobs at it (inside a write transaction). */
export function indexPack(catalog: Catalog, id: string, size: number, entries: PackEntry[], pageBytes?: (d: string) => Buffer | undefined): void {
  catalog.packs.put(id, { s: size, i: encodePackIndex(entries) });
  for (const e of entries) {
    if (e.kind === 'chunks') {
      catalog.chunks.put(e.digest, { s: e.length, c: e.codec, n: e.plain, p: id, o: e.offset });
    } else {
      catalog.pageLocs.put(e.digest, { p: id, o: e.offset, s: e.length });
      const bytes = pageBytes?.(e.digest);
      if (bytes) catalog.pages.put(e.digest, bytes);
    }
  }
}

/** the entries of a pack the catalog has read */
export function knownPackEntries(catalog: Catalog, id: string): PackEntry[] | null {
  const r = catalog.packs.get(id);
  return r ? decodePackIndex(Buffer.from(r.i), id) : null;
}

/**
 * Reads the index of every listed pack this catalog has not read, and records it (its blobs
 * become readable and deduplicable here). Returns how many packs were read.
 */
export async function readNewPacks(catalog: Catalog, repo: Repository, listed: Map<string, number>): Promise<number> {
  const todo = [...listed].filter(([id]) => !catalog.packs.get(id));
  const BATCH = 64;
  for (let i = 0; i < todo.length; i += BATCH) {
    const got: [string, number, PackEntry[]][] = [];
    await runWindow(todo.slice(i, i + BATCH), 8, async ([id, size]) => {
      got.push([id, size, await repo.readPackIndex(id, size)]);
    });
    await catalog.env.transaction(() => {
      for (const [id, size, entries] of got) indexPack(catalog, id, size, entries);
    });
  }
  return todo.length;
}

/**
 * Drops the packs that are gone from the repository (inside a write transaction): their
 * records, and every location that points into them. A blob that another known pack also
 * holds is pointed there instead. Returns the chunk and page entries dropped.
 */
export function dropGonePacks(catalog: Catalog, present: Set<string>): { chunks: number; pages: number } {
  const gone = new Set<string>();
  for (const { key } of catalog.packs.getRange({})) if (!present.has(String(key))) gone.add(String(key));
  const out = { chunks: 0, pages: 0 };
  if (!gone.size) return out;
  for (const id of gone) catalog.packs.remove(id);
  const lostChunks = new Set<string>();
  const lostPages = new Set<string>();
  for (const { key, value } of catalog.chunks.getRange({})) if (value.p && gone.has(value.p)) lostChunks.add(String(key));
  for (const { key, value } of catalog.pageLocs.getRange({})) if (gone.has(value.p)) lostPages.add(String(key));
  if (!lostChunks.size && !lostPages.size) return out;
  // another copy in a pack that stays?
  for (const { key, value } of catalog.packs.getRange({})) {
    for (const e of decodePackIndex(Buffer.from(value.i), String(key))) {
      if (e.kind === 'chunks' && lostChunks.delete(e.digest)) catalog.chunks.put(e.digest, { s: e.length, c: e.codec, n: e.plain, p: String(key), o: e.offset });
      if (e.kind === 'pages' && lostPages.delete(e.digest)) catalog.pageLocs.put(e.digest, { p: String(key), o: e.offset, s: e.length });
    }
  }
  for (const d of lostChunks) catalog.chunks.remove(d);
  for (const d of lostPages) {
    catalog.pageLocs.remove(d);
    catalog.pages.remove(d);
  }
  out.chunks = lostChunks.size;
  out.pages = lostPages.size;
  return out;
}
