/**
 * GC of a packed repository (the pack half of gateway/engine/gc.ts): after the mark, every
 * pack is sorted by what it still holds that some manifest names.
 *
 * - A pack none of whose blobs is live is deleted: index entries first, then the object.
 * - A pack whose dead bytes reach the repack threshold (`repo gc --repack-threshold`, a
 *   fraction of the pack; restic prune's --max-unused) is repacked: its live blobs are copied,
 *   as they are (each blob is sealed under its own name, not its pack's), into new packs.
 * - Every live blob keeps exactly one copy: the one the index names (where readers go), else
 *   the first pack met that holds it; copies elsewhere count as dead.
 * - Every live blob a repack would copy is decoded and its digest checked first: a damaged
 *   blob is never carried into a new pack that looks whole. A pack holding one is left as it
 *   is (nothing of it is lost or moved); as verify does, a damaged chunk leaves the index and
 *   is marked corrupt (the next backup of that block stores it anew instead of deduplicating
 *   onto it, and no incremental carries it over); the GC report names each.
 *
 * The crash-safe order of a repack (docs/REPOSITORY.md):
 *   1. the new packs are written and synced;
 *   2. the old packs are added to `gc/retired.json` (with the time);
 *   3. one catalog transaction points the live blobs at the new packs and forgets the old;
 *   4. a later GC deletes a retired pack once it has been retired longer than the retire
 *      window (default: the writer lease TTL), so a reader or writer that looked up the old
 *      location before 3 (here, or in another catalog that has not followed yet) still finds
 *      it. A reader that meets a missing pack anyway re-reads the pack indexes and retries.
 * Killed after 1: the new packs hold copies no index names; the next GC finds them through
 * the listing, one copy of each blob is claimed and the rest is swept. Killed after 2: the
 * catalogs re-read the new packs when they follow the new epoch and never use retired ones.
 * Nothing any manifest names is ever without a copy in a pack that is neither deleted nor
 * retired.
 */
import type { Catalog, PageLocation } from '../../catalog/catalog.js';
import type { ChunkInfo } from '../../catalog/catalog.js';
import { PackWriter } from '../../drivers/pack-writer.js';
import type { PackEntry } from '../../drivers/pack.js';
import type { RetiredPack } from '../../drivers/repository.js';
import type { Appliance } from '../appliance.js';
import { dropGonePacks, indexPack, knownPackEntries, readNewPacks } from './pack-index.js';

export interface PackGcReport {
  removedPacks: number;
  repackedPacks: number;
  newPacks: number;
  /** live bytes copied by repacking */
  copiedBytes: number;
  /** retired packs deleted (repacked by an earlier GC, past the retire window) */
  deletedRetired: number;
  freedBytes: number;
  keptYoung: number;
  /** live blobs found damaged while repacking (their packs were left as they are) */
  corrupt: { pack: string; kind: 'chunks' | 'pages'; digest: string; error: string }[];
}

export interface PackGcOptions {
  /** packs modified after this (ms since the epoch) are left alone */
  cutoff: number;
  /** repack a pack when this fraction of its bytes is dead (default 0.5) */
  repackThreshold?: number;
  /** a repacked pack is deleted by a GC at least this long after (ms) */
  retireMs: number;
  /** a hook between the steps of a repack (tests kill the process there) */
  onStep?: (step: string) => void;
}

export interface PackListing {
  /** packs in the repository that are not retired: id -> size, mtime */
  active: Map<string, { size: number; mtimeMs: number }>;
  retired: RetiredPack[];
}

/** Lists the packs, and brings the catalog's pack records and blob locations up to them. */
export async function followPacks(app: Appliance): Promise<PackListing> {
  const { catalog, repo } = app;
  const retired = await repo.readRetired();
  const out = new Set(retired.map((r) => r.pack));
  const active = new Map<string, { size: number; mtimeMs: number }>();
  for await (const p of repo.listPacks()) if (!out.has(p.id)) active.set(p.id, { size: p.size, mtimeMs: p.mtimeMs });
  await catalog.env.transaction(() => dropGonePacks(catalog, new Set(active.keys())));
  await readNewPacks(catalog, repo, new Map([...active].map(([id, p]) => [id, p.size])));
  return { active, retired };
}

const key = (e: PackEntry) => `${e.kind === 'chunks' ? 'c' : 'p'}${e.digest}`;

/**
 * Deletes dead packs and repacks mostly-dead ones; `live`: what the mark found. Returns the
 * packs left active.
 */
export async function sweepPacks(app: Appliance, listing: PackListing, live: { chunks: Set<string>; pages: Set<string> }, opts: PackGcOptions, report: PackGcReport): Promise<Set<string>> {
  const { catalog, repo } = app;
  const threshold = opts.repackThreshold ?? 0.5;
  const now = Date.now();
  // retired packs past the window: nothing indexes them, their blobs are in newer packs
  const stillRetired: RetiredPack[] = [];
  for (const r of listing.retired) {
    if (now - r.at < opts.retireMs) stillRetired.push(r);
    else {
      await repo.deletePack(r.pack);
      report.deletedRetired++;
    }
  }
  if (stillRetired.length !== listing.retired.length) await repo.writeRetired(stillRetired);

  const isLive = (e: PackEntry) => (e.kind === 'chunks' ? live.chunks : live.pages).has(e.digest);
  /** the copy of each live blob that stays: pack and entry */
  const claimed = new Map<string, { pack: string; e: PackEntry }>();
  // the copy the index names (where readers go) is the one that stays; a blob the index names
  // in no active pack (e.g. verify or a repack found it damaged) is claimed by the first pack met
  const indexedIn = (e: PackEntry) => (e.kind === 'chunks' ? catalog.chunks.get(e.digest)?.p : catalog.pageLocs.get(e.digest)?.p);
  for (const id of listing.active.keys()) {
    for (const e of knownPackEntries(catalog, id) ?? []) if (isLive(e) && indexedIn(e) === id) claimed.set(key(e), { pack: id, e });
  }
  const dead: { id: string; size: number; entries: PackEntry[] }[] = [];
  const repack: { id: string; size: number; entries: PackEntry[]; keep: PackEntry[] }[] = [];
  for (const [id, p] of listing.active) {
    const entries = knownPackEntries(catalog, id);
    if (!entries) throw new Error(`pack ${id}: its index was not read`);
    const keep: PackEntry[] = [];
    let liveBytes = 0;
    let dataBytes = 0;
    for (const e of entries) {
      dataBytes += e.length;
      if (!isLive(e)) continue;
      const c = claimed.get(key(e));
      if (c && (c.pack !== id || c.e.offset !== e.offset)) continue;
      if (!c) claimed.set(key(e), { pack: id, e });
      keep.push(e);
      liveBytes += e.length;
    }
    if (p.mtimeMs > opts.cutoff) {
      report.keptYoung++;
      continue;
    }
    if (!keep.length) dead.push({ id, size: p.size, entries });
    else if (dataBytes && (dataBytes - liveBytes) / dataBytes >= threshold) repack.push({ id, size: p.size, entries, keep });
  }

  // dead packs: index entries first (a live blob's location moves to its claimed copy), then the object
  for (const d of dead) {
    await catalog.env.transaction(() => unindexPack(catalog, d.id, d.entries, claimed));
    opts.onStep?.('dead-unindexed');
    await repo.deletePack(d.id);
    listing.active.delete(d.id);
    report.removedPacks++;
    report.freedBytes += d.size;
  }

  if (!repack.length) return new Set(listing.active.keys());
  // 1. copy the live blobs into new packs, durable
  const batch = repo.batch();
  const writer = new PackWriter(repo, batch);
  for (const r of [...repack]) {
    const data = await repo.readPack(r.id, 0, r.size);
    const damaged = await damagedBlobs(app, r.id, r.keep, data);
    if (damaged.length) {
      // left as it is: its blobs stay where the index says, it is neither retired nor deleted
      repack.splice(repack.indexOf(r), 1);
      report.corrupt.push(...damaged);
      // as verify does: a damaged chunk leaves the index (nothing deduplicates onto it, the next
      // backup of that block stores it anew) and is marked corrupt (no incremental carries it over)
      await catalog.env.transaction(() => {
        for (const d of damaged) {
          if (d.kind !== 'chunks') continue;
          if (catalog.chunks.get(d.digest)?.p === r.id) catalog.chunks.remove(d.digest);
          catalog.markCorrupt(d.digest);
        }
      });
      continue;
    }
    for (const e of r.keep) {
      await writer.add(e.kind, e.digest, data.subarray(e.offset, e.offset + e.length), e.plain, e.codec);
      report.copiedBytes += e.length;
    }
  }
  if (!repack.length) return new Set(listing.active.keys());
  writer.flush();
  const written = await writer.takeWritten();
  await batch.sync();
  opts.onStep?.('repack-written');
  // 2. the old packs are retired (deleted by a later GC, after the retire window)
  await repo.writeRetired([...stillRetired, ...repack.map((r) => ({ pack: r.id, at: Date.now() }))]);
  opts.onStep?.('repack-retired');
  // 3. the index switches to the new packs
  await catalog.env.transaction(() => {
    for (const w of written) indexPack(catalog, w.id, w.size, w.entries);
    for (const w of written) for (const e of w.entries) claimed.set(key(e), { pack: w.id, e });
    for (const r of repack) unindexPack(catalog, r.id, r.entries, claimed);
  });
  opts.onStep?.('repack-indexed');
  for (const r of repack) {
    listing.active.delete(r.id);
    report.freedBytes += r.size;
  }
  for (const w of written) {
    listing.active.set(w.id, { size: w.size, mtimeMs: Date.now() });
    report.freedBytes -= w.size;
  }
  report.repackedPacks += repack.length;
  report.newPacks += written.length;
  return new Set(listing.active.keys());
}

/** the live blobs of a pack to be repacked that do not decode to their digest (chunks in the workers) */
async function damagedBlobs(app: Appliance, pack: string, keep: PackEntry[], data: Buffer): Promise<PackGcReport['corrupt']> {
  const out: PackGcReport['corrupt'] = [];
  await Promise.all(
    keep.map(async (e) => {
      const blob = data.subarray(e.offset, e.offset + e.length);
      try {
        if (blob.length !== e.length) throw new Error(`the pack is shorter than its index says (${data.length} bytes)`);
        if (e.kind === 'pages') app.repo.decodePage(blob, e.digest);
        else await app.pool.decode(blob, e.digest);
      } catch (err) {
        out.push({ pack, kind: e.kind, digest: e.digest, error: (err as Error).message });
      }
    }),
  );
  return out;
}

/**
 * Forgets a pack (inside a write transaction): its record, and every location that points
 * into it; a blob with a claimed copy elsewhere is pointed there, a page without one loses
 * its bytes in the catalog too (no manifest names it).
 */
function unindexPack(catalog: Catalog, id: string, entries: PackEntry[], claimed: Map<string, { pack: string; e: PackEntry }>): void {
  catalog.packs.remove(id);
  for (const e of entries) {
    const other = claimed.get(key(e));
    const elsewhere = other && other.pack !== id ? other : undefined;
    if (e.kind === 'chunks') {
      const cur = catalog.chunks.get(e.digest);
      if (cur?.p !== id) continue;
      if (elsewhere) catalog.chunks.put(e.digest, { s: elsewhere.e.length, c: elsewhere.e.codec, n: elsewhere.e.plain, p: elsewhere.pack, o: elsewhere.e.offset } satisfies ChunkInfo);
      else catalog.chunks.remove(e.digest);
    } else {
      const cur = catalog.pageLocs.get(e.digest);
      if (cur?.p !== id) continue;
      if (elsewhere) catalog.pageLocs.put(e.digest, { p: elsewhere.pack, o: elsewhere.e.offset, s: elsewhere.e.length } satisfies PageLocation);
      else {
        catalog.pageLocs.remove(e.digest);
        catalog.pages.remove(e.digest);
      }
    }
  }
}
