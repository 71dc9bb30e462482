/**
 * Where a backup's chunks go: a bounded pool of chunk-sized buffers (the backup's memory
 * bound), hashing and zero detection off the event loop, deduplication against the chunk
 * index, compression and writing of unknown chunks, and the block map built page by page.
 */
import { MapBuilder, type NewPage } from '../../catalog/blockmap.js';
import { CODEC_ID } from '../../drivers/codec.js';
import { OBJECT_OVERHEAD } from '../../drivers/chunk.js';
import type { Appliance } from '../appliance.js';
import type { ChunkInfo } from '../../catalog/catalog.js';
import { LowWater } from './pipeline.js';
import type { WriteBatch } from '../../drivers/store/types.js';
import { PackWriter, type WrittenPack } from '../../drivers/pack-writer.js';
import { indexPack } from './pack-index.js';

export interface SinkStats {
  object_count: number;
  new_chunks: number;
  new_bytes: number;
  data_bytes: number;
}

export class ChunkSink {
  readonly stats: SinkStats = { object_count: 0, new_chunks: 0, new_bytes: 0, data_bytes: 0 };
  private readonly slots: ArrayBuffer[];
  /** one output buffer per slot for the encoded object */
  private readonly outs: ArrayBuffer[];
  private readonly free: number[];
  private readonly waiters: ((slot: number) => void)[] = [];
  /** chunks written (or being written) since the last commit of the index, by digest */
  private readonly writing = new Map<string, Promise<void>>();
  private readonly inflight = new Set<Promise<void>>();
  private readonly pages: Promise<void>[] = [];
  private readonly low = new LowWater();
  private failure: unknown;
  private readonly unindexed: [string, ChunkInfo][] = [];
  private readonly unstoredPages = new Map<string, Buffer>();
  /** this backup's own write batch: its sync covers exactly the objects this backup wrote */
  private readonly batch: WriteBatch;
  /** a packed repository: chunks and pages are appended to packs (drivers/pack-writer.ts) */
  private readonly packs: PackWriter | null;

  /**
   * @param sequential chunks are put in index order (a whole-volume read): finished map
   *   pages are written as the backup goes instead of at the end
   */
  constructor(
    private readonly app: Appliance,
    readonly builder: MapBuilder,
    readonly chunkSize: number,
    depth: number,
    private readonly sequential: boolean,
    /** blocks per slot: a whole-volume read hands over segments of many small blocks at once */
    readonly segmentBlocks = 1,
  ) {
    this.slots = Array.from({ length: depth }, () => new ArrayBuffer(chunkSize * segmentBlocks));
    this.outs = Array.from({ length: depth }, () => new ArrayBuffer((chunkSize + OBJECT_OVERHEAD) * segmentBlocks));
    this.free = Array.from({ length: depth }, (_, i) => i);
    this.batch = app.repo.batch();
    this.packs = app.repo.packed ? new PackWriter(app.repo, this.batch) : null;
  }

  /** packs written by this backup so far */
  get packCount(): number {
    return this.packs?.packCount ?? 0;
  }

  /** the first error of any chunk so far; the producer should stop */
  get failed(): boolean {
    return this.failure !== undefined;
  }

  /**
   * Objects written and not yet indexed are committed in bounded batches (sync, then index),
   * so the sink's memory does not grow with the volume. Objects indexed before the backup
   * commits are safe: they are durable, and a GC that finds no manifest naming them (the
   * backup failed) removes them, index entry first; while this backup runs its lease holds
   * GC off.
   */
  static commitEvery = 4096;
  /** ...or when the map pages waiting for the index pass this many bytes (they are kept whole until then) */
  static commitPageBytes = 2 * 1024 * 1024;
  private unstoredPageBytes = 0;
  /** a packed repository's commit of written packs, running in the background */
  private committing: Promise<void> | null = null;
  /** the most objects held at once waiting for their index entry (for tests) */
  peakUnindexed = 0;

  async acquire(): Promise<number> {
    if (this.packs) {
      // a packed repository indexes each pack once it is written, while the backup goes on
      if (this.packs.writtenCount > 0 && !this.committing && !this.failed) {
        this.committing = this.commitWritten()
          .catch((e: unknown) => {
            this.failure ??= e;
          })
          .finally(() => {
            this.committing = null;
          });
      }
    } else if ((this.unindexed.length + this.unstoredPages.size >= ChunkSink.commitEvery || this.unstoredPageBytes >= ChunkSink.commitPageBytes) && !this.failed) {
      await this.commitWritten();
    }
    const slot = this.free.pop();
    if (slot !== undefined) return slot;
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  /** gives a slot back unused (its producer failed) */
  discard(slot: number): void {
    this.release(slot);
  }

  private release(slot: number): void {
    const w = this.waiters.shift();
    if (w) w(slot);
    else this.free.push(slot);
  }

  /** a view of the slot's buffer, segment-sized */
  buffer(slot: number): Buffer {
    return Buffer.from(this.slots[slot]!);
  }

  /**
   * Takes the first `len` bytes of the slot as chunk i; returns at once, work goes on in the
   * background. `prepare` runs first in that background job (e.g. to fill in what a diff did not cover).
   */
  put(i: number, slot: number, len: number, prepare?: (buf: Buffer) => Promise<void>): void {
    const job = (prepare ? prepare(this.buffer(slot)).then(() => this.store(i, slot, len)) : this.store(i, slot, len))
      .catch((e: unknown) => {
        this.failure ??= e;
      })
      .finally(() => {
        this.inflight.delete(job);
        this.release(slot);
      });
    this.inflight.add(job);
  }

  /**
   * Blocks i.. covering `len` bytes read as zeroes without being read (a hole of the volume):
   * recorded as zero entries of the map, in order with the chunks put around them.
   */
  putHole(i: number, len: number): void {
    const n = Math.ceil(len / this.chunkSize);
    let lw = 0;
    for (let k = 0; k < n; k++) {
      this.builder.set(i + k, null);
      if (this.sequential) lw = this.low.complete(i + k);
      // a long run of holes hands over each page as it fills, not all at its end
      if (this.sequential && (k === n - 1 || (i + k + 1) % this.builder.entries === 0)) this.flushPages(this.builder.takeFinishedPages(Math.floor(lw / this.builder.entries)));
    }
  }

  /** the blocks of a segment (blocks i.. of len bytes in the slot): one hash task and one encode task for them all */
  private async storeSegment(i: number, slot: number, len: number): Promise<void> {
    const { catalog, repo, pool } = this.app;
    const cs = this.chunkSize;
    const h = await pool.hashBlocks(this.slots[slot]!, len, cs);
    this.slots[slot] = h.buf;
    const mine: [number, number, string][] = [];
    const waits: Promise<void>[] = [];
    const settle: ((e?: unknown) => void)[] = [];
    h.digests.forEach((d, k) => {
      if (!d) return;
      const n = Math.min(cs, len - k * cs);
      this.stats.object_count++;
      this.stats.data_bytes += n;
      if (catalog.chunk(d)) return;
      const w = this.writing.get(d);
      if (w) {
        waits.push(w);
        return;
      }
      // this segment writes it; duplicates elsewhere wait for that
      const job = new Promise<void>((resolve, reject) => settle.push((e) => (e === undefined ? resolve() : reject(e))));
      job.catch(() => undefined); // its failure is this segment's, reported once
      this.writing.set(d, job);
      mine.push([k * cs, n, d]);
    });
    try {
      if (mine.length) {
        const enc = await pool.encodeBlocks(this.slots[slot]!, mine, repo.config.codec, this.outs[slot]!);
        this.slots[slot] = enc.buf;
        this.outs[slot] = enc.out;
        for (let j = 0; j < mine.length; j++) {
          const [, n, d] = mine[j]!;
          const { object, codec } = enc.objects[j]!;
          if (this.packs) {
            await this.packs.add('chunks', d, object, n, CODEC_ID[codec]);
          } else {
            await repo.putChunk(d, object, { batch: this.batch });
            this.unindexed.push([d, { s: object.length, c: CODEC_ID[codec], n }]);
          }
          this.stats.new_chunks++;
          this.stats.new_bytes += object.length;
        }
      }
      for (const f of settle) f();
    } catch (e) {
      for (const f of settle) f(e);
      throw e;
    }
    await Promise.all(waits);
    h.digests.forEach((d, k) => this.builder.set(i + k, d || null));
    if (this.sequential) {
      let lw = 0;
      for (let k = 0; k < h.digests.length; k++) lw = this.low.complete(i + k);
      this.flushPages(this.builder.takeFinishedPages(Math.floor(lw / this.builder.entries)));
    }
  }

  private async store(i: number, slot: number, len: number): Promise<void> {
    if (this.failure !== undefined) return;
    if (len > this.chunkSize) return this.storeSegment(i, slot, len);
    const { catalog, repo, pool } = this.app;
    const h = await pool.hash(this.slots[slot]!, len);
    this.slots[slot] = h.buf;
    if (h.zero) {
      this.builder.set(i, null);
    } else {
      this.stats.object_count++;
      this.stats.data_bytes += len;
      if (!catalog.chunk(h.digest)) {
        let w = this.writing.get(h.digest);
        if (!w) {
          w = (async () => {
            const enc = await pool.encode(this.slots[slot]!, len, repo.config.codec, this.outs[slot]!, h.digest);
            this.slots[slot] = enc.buf;
            this.outs[slot] = enc.out;
            // durable with this batch at the next commit of the index, which adds its entry only then
            if (this.packs) {
              await this.packs.add('chunks', h.digest, enc.object, len, CODEC_ID[enc.codec]);
            } else {
              await repo.putChunk(h.digest, enc.object, { batch: this.batch });
              this.unindexed.push([h.digest, { s: enc.object.length, c: CODEC_ID[enc.codec], n: len }]);
            }
            this.stats.new_chunks++;
            this.stats.new_bytes += enc.object.length;
          })();
          this.writing.set(h.digest, w);
        }
        await w;
      }
      this.builder.set(i, h.digest);
    }
    if (this.sequential) {
      const lw = this.low.complete(i);
      this.flushPages(this.builder.takeFinishedPages(Math.floor(lw / this.builder.entries)));
    }
  }

  private flushPages(pages: NewPage[]): void {
    for (const p of pages) this.storePage(p);
  }

  /** stores a page in the repository unless it is known; it is indexed at finish() */
  storePage(p: NewPage): Promise<void> {
    if (this.unstoredPages.has(p.digest) || this.app.catalog.pages.doesExist(p.digest)) return Promise.resolve();
    this.unstoredPages.set(p.digest, p.bytes);
    this.unstoredPageBytes += p.bytes.length;
    const object = this.app.repo.encodePage(p.bytes, p.digest);
    const job = this.packs ? this.packs.add('pages', p.digest, object, p.bytes.length, object[5]!) : this.app.repo.putPage(p.digest, object, { batch: this.batch });
    this.pages.push(job);
    return job;
  }

  /**
   * Waits for every chunk and writes the remaining pages; then makes every object durable
   * (one sync of the batch) and only then indexes chunks and pages in one transaction.
   * Throws the first failure; what it leaves is named by no manifest, for GC.
   */
  async finish(): Promise<Buffer> {
    while (this.inflight.size) await Promise.all(this.inflight);
    if (this.failure !== undefined) throw this.failure;
    this.flushPages(this.builder.takeFinishedPages());
    const root = this.builder.finish();
    await this.committing;
    await this.commitWritten(true);
    return root;
  }

  /**
   * Waits for every write in flight, makes them durable (one sync of this batch), then
   * indexes them in one transaction. A packed repository indexes the packs written so far
   * (`last`: the open pack is sealed and written first); blobs of the open pack wait for it.
   */
  private async commitWritten(last = false): Promise<void> {
    if (!this.packs) while (this.inflight.size) await Promise.all(this.inflight);
    await Promise.all(this.pages.splice(0));
    if (this.failure !== undefined) throw this.failure;
    this.peakUnindexed = Math.max(this.peakUnindexed, this.unindexed.length + this.unstoredPages.size);
    if (last) this.packs?.flush();
    const packs: WrittenPack[] = this.packs ? await this.packs.takeWritten() : [];
    await this.batch.sync();
    const { catalog } = this.app;
    const chunks = this.unindexed.splice(0);
    const pages = this.packs ? [] : [...this.unstoredPages];
    await catalog.env.transaction(() => {
      for (const [d, info] of chunks) {
        catalog.chunks.put(d, info);
        catalog.clearCorrupt(d); // written anew: whole again
      }
      for (const [d, bytes] of pages) catalog.pages.put(d, bytes);
      for (const p of packs) {
        indexPack(catalog, p.id, p.size, p.entries, (d) => this.unstoredPages.get(d));
        for (const e of p.entries) if (e.kind === 'chunks') catalog.clearCorrupt(e.digest);
      }
    });
    if (!this.packs) {
      this.unstoredPages.clear();
      this.unstoredPageBytes = 0;
      // what was written is in the index now: later duplicates find it there
      this.writing.clear();
      return;
    }
    for (const p of packs) {
      for (const e of p.entries) {
        if (e.kind === 'chunks') this.writing.delete(e.digest);
        else if (this.unstoredPages.delete(e.digest)) this.unstoredPageBytes -= e.plain;
      }
    }
  }

  /** waits for what is in flight, ignoring results (after a failure elsewhere) */
  async settle(): Promise<void> {
    while (this.inflight.size) await Promise.all(this.inflight);
    await Promise.allSettled(this.pages);
    await this.committing;
    await this.packs?.settle();
  }
}
