/**
 * Chunk reading: one narrow interface (read a chunk by digest; several together; into a
 * reused slot), a reader over the repository that verifies every chunk, and a caching reader with a byte-bounded LRU that
 * also merges concurrent reads of the same chunk (as Proxmox Backup Server's
 * CachedChunkReader does).
 */
import type { Repository } from '../../drivers/repository.js';
import { OBJECT_OVERHEAD } from '../../drivers/chunk.js';
import type { ChunkWorkerPool } from '../../drivers/workers/pool.js';

export interface ChunkReader {
  /** the verified plaintext of a chunk */
  read(digest: string): Promise<Buffer>;
  /**
   * the plaintexts of several chunks (an error in place of each that fails), read together:
   * neighbouring blobs of a pack in one range read and one decode task
   */
  readMany?(digests: string[]): Promise<(Buffer | Error)[]>;
  /**
   * the verified plaintext read into a slot's buffers, valid until the slot is used again: a
   * bulk reader (restore) allocates nothing per chunk
   */
  readInto?(digest: string, slot: ChunkSlot): Promise<Buffer>;
}

/**
 * A pair of buffers (the stored object, its plaintext) that readInto reads a chunk into; they
 * travel to a decode worker and back, so the slot holds whichever buffers came back. Memory of
 * a bulk reader is its slots: `depth` x 2 chunks.
 */
export class ChunkSlot {
  object: ArrayBuffer;
  out: ArrayBuffer;

  constructor(readonly chunkSize: number) {
    this.object = new ArrayBuffer(chunkSize + OBJECT_OVERHEAD);
    this.out = new ArrayBuffer(chunkSize);
  }
}

/** neighbouring blobs closer than this are read in one range (the gap is read and dropped) */
const RUN_GAP = 64 * 1024;
/** and no range is longer than this */
const RUN_MAX = 8 * 1024 * 1024;

interface Run {
  pack: string;
  start: number;
  end: number;
  items: { k: number; offset: number; length: number; plain: number; digest: string }[];
}

export class RepoChunkReader implements ChunkReader {
  constructor(private readonly repo: Repository, private readonly pool: ChunkWorkerPool) {}

  async readMany(digests: string[]): Promise<(Buffer | Error)[]> {
    const out: (Buffer | Error)[] = new Array(digests.length);
    const runs: Run[] = [];
    const single: number[] = [];
    let run: Run | null = null;
    digests.forEach((d, k) => {
      const loc = this.repo.locate('chunks', d);
      if (!loc || loc.plain === undefined) {
        single.push(k);
        return;
      }
      if (!run || run.pack !== loc.pack || loc.offset < run.end || loc.offset - run.end > RUN_GAP || loc.offset + loc.length - run.start > RUN_MAX) {
        run = { pack: loc.pack, start: loc.offset, end: loc.offset, items: [] };
        runs.push(run);
      }
      run.items.push({ k, offset: loc.offset, length: loc.length, plain: loc.plain, digest: d });
      run.end = loc.offset + loc.length;
    });
    const one = async (k: number) => {
      try {
        out[k] = await this.read(digests[k]!);
      } catch (e) {
        out[k] = e as Error;
      }
    };
    await Promise.all([
      ...single.map(one),
      ...runs.map(async (r) => {
        const blobs = r.items.map((i) => [i.offset - r.start, i.length, i.plain, i.digest] as [number, number, number, string]);
        let got: (Buffer | Error)[];
        try {
          const file = this.repo.packFile(r.pack);
          got = file ? await this.pool.decodeRun({ path: file }, r.start, r.end - r.start, blobs) : await this.pool.decodeRun({ object: await this.repo.readPack(r.pack, r.start, r.end - r.start) }, 0, r.end - r.start, blobs);
        } catch (e) {
          // the pack is gone (a repack switched it) or unreadable: each blob on its own, which relocates
          if ((e as Error).name !== 'ObjectNotFoundError') throw e;
          await Promise.all(r.items.map((i) => one(i.k)));
          return;
        }
        r.items.forEach((i, j) => (out[i.k] = got[j]!));
      }),
    ]);
    return out;
  }
  async readInto(digest: string, slot: ChunkSlot): Promise<Buffer> {
    const object = slot.object;
    const out = slot.out;
    const n = await this.repo.getChunkInto(digest, Buffer.from(object));
    try {
      const r = await this.pool.decodeInto(object, n, digest, out);
      slot.object = r.object;
      slot.out = r.out;
      return r.plain;
    } catch (e) {
      // a failed decode keeps the transferred buffers: replace them
      if (object.byteLength === 0) slot.object = new ArrayBuffer(slot.chunkSize + OBJECT_OVERHEAD);
      if (out.byteLength === 0) slot.out = new ArrayBuffer(slot.chunkSize);
      throw e;
    }
  }

  async read(digest: string): Promise<Buffer> {
    const local = this.repo.chunkFile(digest);
    if (local) {
      try {
        return await this.pool.decodeFile(local.path, digest, local.offset, local.length);
      } catch (e) {
        // a pack gone under a location read before a repack switched it: find the blob again
        if (local.length < 0 || (e as Error).name !== 'ObjectNotFoundError' || !(await this.repo.relocate())) throw e;
        const again = this.repo.chunkFile(digest);
        if (!again || again.path === local.path) throw e;
        return this.pool.decodeFile(again.path, digest, again.offset, again.length);
      }
    }
    const object = await this.repo.getChunk(digest);
    return this.pool.decode(object, digest);
  }
}

export class CachedChunkReader implements ChunkReader {
  private readonly cache = new Map<string, Buffer>();
  private readonly inflight = new Map<string, Promise<Buffer>>();
  private bytes = 0;
  hits = 0;
  misses = 0;

  constructor(private readonly inner: ChunkReader, readonly capacityBytes: number) {}

  read(digest: string): Promise<Buffer> {
    const hit = this.cache.get(digest);
    if (hit) {
      this.hits++;
      this.cache.delete(digest);
      this.cache.set(digest, hit);
      return Promise.resolve(hit);
    }
    let p = this.inflight.get(digest);
    if (!p) {
      this.misses++;
      p = this.inner.read(digest).then(
        (data) => {
          this.inflight.delete(digest);
          this.insert(digest, data);
          return data;
        },
        (e: unknown) => {
          this.inflight.delete(digest);
          throw e;
        },
      );
      this.inflight.set(digest, p);
    }
    return p;
  }

  readMany(digests: string[]): Promise<(Buffer | Error)[]> {
    let all = true;
    const out: (Buffer | Error | Promise<Buffer>)[] = digests.map((d) => {
      const hit = this.cache.get(d);
      if (hit) {
        this.hits++;
        this.cache.delete(d);
        this.cache.set(d, hit);
        return hit;
      }
      all = false;
      return this.inflight.get(d) ?? (undefined as unknown as Buffer);
    });
    // all cached: no promise per block
    if (all) return Promise.resolve(out as Buffer[]);
    const miss = [...new Set(digests.filter((_, k) => out[k] === undefined))];
    if (miss.length && this.inner.readMany) {
      this.misses += miss.length;
      const job = this.inner.readMany(miss);
      miss.forEach((d, j) => {
        const p = job.then((r) => {
          this.inflight.delete(d);
          const v = r[j]!;
          if (v instanceof Error) throw v;
          this.insert(d, v);
          return v;
        });
        p.catch(() => undefined);
        this.inflight.set(d, p);
      });
      job.catch(() => miss.forEach((d) => this.inflight.delete(d)));
    }
    return Promise.all(
      digests.map((d, k) => {
        const v = out[k] ?? this.inflight.get(d) ?? this.read(d);
        return Promise.resolve(v).catch((e: unknown) => e as Error);
      }),
    );
  }

  private insert(digest: string, data: Buffer): void {
    if (data.length > this.capacityBytes) return;
    // a view into a run's buffer is copied, so the cache holds only what it counts
    if (data.buffer.byteLength > data.length * 2) data = Buffer.from(data);
    this.cache.set(digest, data);
    this.bytes += data.length;
    for (const [k, v] of this.cache) {
      if (this.bytes <= this.capacityBytes) break;
      this.cache.delete(k);
      this.bytes -= v.length;
    }
  }

  get cachedBytes(): number {
    return this.bytes;
  }
}
