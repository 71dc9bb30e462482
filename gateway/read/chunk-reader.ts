/**
 * Chunk reading: one narrow interface (read a chunk by digest), a reader over the
 * repository that verifies every chunk, and a caching reader with a byte-bounded LRU that
 * also merges concurrent reads of the same chunk (as Proxmox Backup Server's
 * CachedChunkReader does).
 */
import type { Repository } from '../../drivers/repository.js';
import { OBJECT_OVERHEAD } from '../../drivers/chunk.js';
import type { ChunkWorkerPool } from '../../drivers/workers/pool.js';

export interface ChunkReader {
  /** the verified plaintext of a chunk */
  read(digest: string): Promise<Buffer>;
}

export class RepoChunkReader implements ChunkReader {
  constructor(private readonly repo: Repository, private readonly pool: ChunkWorkerPool) {}
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

/**
 * Reads chunks into a fixed set of buffer pairs (object, plaintext), for bulk readers such
 * as restore: memory is `depth` x 2 chunks, and nothing is allocated per chunk.
 */
export class SlotChunkReader {
  private readonly objects: ArrayBuffer[];
  private readonly outs: ArrayBuffer[];

  constructor(private readonly repo: Repository, private readonly pool: ChunkWorkerPool, private readonly chunkSize: number, depth: number) {
    this.objects = Array.from({ length: depth }, () => new ArrayBuffer(chunkSize + OBJECT_OVERHEAD));
    this.outs = Array.from({ length: depth }, () => new ArrayBuffer(chunkSize));
  }

  /** the verified plaintext, valid until the same slot is used again */
  async read(digest: string, slot: number): Promise<Buffer> {
    const n = await this.repo.getChunkInto(digest, Buffer.from(this.objects[slot]!));
    const object = this.objects[slot]!;
    const out = this.outs[slot]!;
    try {
      const r = await this.pool.decodeInto(object, n, digest, out);
      this.objects[slot] = r.object;
      this.outs[slot] = r.out;
      return r.plain;
    } catch (e) {
      // a failed decode keeps the transferred buffers: replace them
      if (object.byteLength === 0) this.objects[slot] = new ArrayBuffer(this.chunkSize + OBJECT_OVERHEAD);
      if (out.byteLength === 0) this.outs[slot] = new ArrayBuffer(this.chunkSize);
      throw e;
    }
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

  private insert(digest: string, data: Buffer): void {
    if (data.length > this.capacityBytes) return;
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
