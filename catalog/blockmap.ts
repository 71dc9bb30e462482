/**
 * Block maps: for every chunk index of a volume, the digest of the chunk there (or a hole).
 *
 * A map is stored as pages of PAGE_ENTRIES 32-byte entries (an all-zero entry is a hole),
 * each page named by the SHA-256 of its bytes, and a root: the list of page digests. A
 * backup keeps only its root; pages are shared by content with every other backup, so an
 * incremental adds only the pages in which some entry changed (metadata proportional to the
 * change) while every backup still has a complete map: reading entry i is root[i / 512] ->
 * page -> entry, the same cost at any chain depth.
 */
import { DIGEST_BYTES, sha256 } from '../drivers/chunk.js';

/** entries of a page of a map of chunks of 64 KiB and more (every 4 MiB-chunk repository) */
export const PAGE_ENTRIES = 512;
export const PAGE_BYTES = PAGE_ENTRIES * DIGEST_BYTES;
/** entries of a page of a map of small blocks (under 64 KiB, packed repositories): 4 KiB pages */
export const SMALL_PAGE_ENTRIES = 128;
const HOLE = Buffer.alloc(DIGEST_BYTES);

/**
 * Entries per map page for a chunk size: a pure function of the chunk size every record and
 * manifest carries. Small blocks get small pages, so that scattered writes rewrite 4 KiB of
 * map per touched page, not 16 KiB (docs/REPOSITORY.md, "Choosing the block size").
 */
export function pageEntriesFor(chunkSize: number): number {
  return chunkSize < 64 * 1024 ? SMALL_PAGE_ENTRIES : PAGE_ENTRIES;
}

/** a page of holes only; stored like any page when a sparse build uses it */
export const HOLE_PAGE = Buffer.alloc(PAGE_BYTES);
/** the hole page of a map with `entries` entries per page */
export function holePage(entries: number): Buffer {
  return entries === PAGE_ENTRIES ? HOLE_PAGE : Buffer.alloc(entries * DIGEST_BYTES);
}
/** how pages are named: SHA-256, or the repository's keyed digest when it is encrypted */
export type PageDigest = (page: Buffer) => string;
const sha256Hex: PageDigest = (page) => sha256(page).toString('hex');

export type PageLoader = (pageDigest: string) => Buffer;

export const pagesFor = (chunkCount: number, entries = PAGE_ENTRIES): number => Math.ceil(chunkCount / entries);

export function rootDigests(root: Buffer): string[] {
  const out: string[] = [];
  for (let i = 0; i < root.length; i += DIGEST_BYTES) out.push(root.subarray(i, i + DIGEST_BYTES).toString('hex'));
  return out;
}

export function rootFromDigests(digests: string[]): Buffer {
  return Buffer.concat(digests.map((d) => Buffer.from(d, 'hex')));
}

/** Every distinct chunk digest a page names (holes left out). */
export function pageChunkDigests(page: Buffer): string[] {
  const out: string[] = [];
  for (let off = 0; off < page.length; off += DIGEST_BYTES) {
    const e = page.subarray(off, off + DIGEST_BYTES);
    if (!e.equals(HOLE)) out.push(e.toString('hex'));
  }
  return out;
}

/** Reads entries of one backup's map; keeps the last page it used. */
export class MapReader {
  private pageNo = -1;
  private page: Buffer = HOLE;

  constructor(
    readonly root: Buffer,
    readonly chunkCount: number,
    private readonly load: PageLoader,
    readonly entries = PAGE_ENTRIES,
  ) {}

  /** the digest at chunk index i, or null for a hole */
  entry(i: number): string | null {
    if (i < 0 || i >= this.chunkCount) throw new RangeError(`chunk index ${i} outside the map (0..${this.chunkCount - 1})`);
    const p = Math.floor(i / this.entries);
    if (p !== this.pageNo) {
      this.page = this.load(this.root.subarray(p * DIGEST_BYTES, (p + 1) * DIGEST_BYTES).toString('hex'));
      this.pageNo = p;
    }
    const off = (i % this.entries) * DIGEST_BYTES;
    const e = this.page.subarray(off, off + DIGEST_BYTES);
    return e.equals(HOLE) ? null : e.toString('hex');
  }
}

export interface NewPage {
  digest: string;
  bytes: Buffer;
}

/**
 * Builds a map, optionally as a copy of a parent's map with some entries changed. Pages that
 * are complete are handed out with takeFinishedPages() as the build goes, so memory holds
 * only the pages still being filled, not the whole map.
 */
export class MapBuilder {
  private readonly root: Buffer;
  private readonly open = new Map<number, Buffer>();

  /**
   * @param parent the map to start from (entries not set keep the parent's value)
   * @param emptyBase with no parent: entries never set are holes (a sparse build, e.g. from
   *   an RBD diff); otherwise every page must be written
   */
  constructor(
    readonly chunkCount: number,
    private readonly parent?: { root: Buffer; chunkCount: number; load: PageLoader },
    private readonly emptyBase = false,
    private readonly digest: PageDigest = sha256Hex,
    readonly entries = PAGE_ENTRIES,
  ) {
    this.root = Buffer.alloc(pagesFor(chunkCount, entries) * DIGEST_BYTES);
    if (parent) {
      // pages wholly inside both maps are shared as they are; the partial or new ones are rebuilt on touch
      const whole = Math.min(Math.floor(parent.chunkCount / entries), Math.floor(chunkCount / entries));
      parent.root.copy(this.root, 0, 0, whole * DIGEST_BYTES);
      for (let p = whole; p < pagesFor(chunkCount, entries); p++) this.page(p);
    }
  }

  private page(p: number): Buffer {
    let page = this.open.get(p);
    if (!page) {
      page = Buffer.alloc(this.entries * DIGEST_BYTES);
      const parent = this.parent;
      if (parent && p < pagesFor(parent.chunkCount, this.entries)) {
        parent.load(parent.root.subarray(p * DIGEST_BYTES, (p + 1) * DIGEST_BYTES).toString('hex')).copy(page);
        // entries beyond either map's end are holes
        const limit = Math.min(parent.chunkCount, this.chunkCount) - p * this.entries;
        if (limit < this.entries) page.fill(0, Math.max(0, limit) * DIGEST_BYTES);
      }
      this.open.set(p, page);
    }
    return page;
  }

  set(i: number, digest: string | null): void {
    if (i < 0 || i >= this.chunkCount) throw new RangeError(`chunk index ${i} outside the map`);
    const p = Math.floor(i / this.entries);
    const page = this.page(p);
    const off = (i % this.entries) * DIGEST_BYTES;
    if (digest === null) HOLE.copy(page, off);
    else page.write(digest, off, DIGEST_BYTES, 'hex');
  }

  /** Pages below page number `below` are final: hash them and hand them out. */
  takeFinishedPages(below = Infinity): NewPage[] {
    const out: NewPage[] = [];
    for (const [p, page] of [...this.open].sort((a, b) => a[0] - b[0])) {
      if (p >= below) continue;
      const digest = this.digest(page);
      this.root.write(digest, p * DIGEST_BYTES, DIGEST_BYTES, 'hex');
      this.open.delete(p);
      out.push({ digest, bytes: page });
    }
    return out;
  }

  /** The root, once every page has been taken. */
  finish(): Buffer {
    if (this.open.size) throw new Error('map pages not yet taken');
    if (!this.parent) {
      for (let p = 0; p < pagesFor(this.chunkCount, this.entries); p++) {
        const d = this.root.subarray(p * DIGEST_BYTES, (p + 1) * DIGEST_BYTES);
        if (!d.equals(HOLE)) continue;
        if (!this.emptyBase) throw new Error(`map page ${p} was never written`);
        d.write(this.digest(holePage(this.entries)), 'hex');
      }
    }
    return this.root;
  }
}


