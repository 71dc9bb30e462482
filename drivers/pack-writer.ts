/**
 * Writes blobs into packs of a packed repository: blobs are appended to an open pack; a pack
 * that reaches the repository's pack size is sealed (index and trailer) and put as one object,
 * in the writer's batch (durable at the batch's sync, one sync per pack). At most two packs are
 * in memory at once (one filling, one being put), so memory is bounded by the pack size.
 *
 * A blob is indexable only once its pack is durable: takeWritten() hands out the packs whose
 * put has completed; the caller syncs the batch, then indexes them.
 */
import type { ObjectKind } from './chunk.js';
import { PackBuilder, type PackEntry, encodePackIndex } from './pack.js';
import type { Repository } from './repository.js';
import type { WriteBatch } from './store/types.js';

export interface WrittenPack {
  id: string;
  size: number;
  entries: PackEntry[];
  /** the index plaintext (what the catalog keeps of the pack) */
  index: Buffer;
}

const MAX_PUTS = 1;

export class PackWriter {
  private open: PackBuilder | null = null;
  private readonly puts = new Set<Promise<void>>();
  private readonly written: WrittenPack[] = [];
  private failure: unknown;
  /** the buffer of a pack already stored, for the next pack (one kept: memory is two packs and this one) */
  private readonly spare: Buffer[] = [];
  /** packs put so far */
  packCount = 0;

  constructor(
    private readonly repo: Repository,
    private readonly batch: WriteBatch,
    readonly packSize = repo.config.packSize ?? 0,
  ) {
    if (!packSize) throw new Error('not a packed repository');
  }

  /** appends a blob (copied) to the open pack; waits while a full pack is still being put */
  async add(kind: ObjectKind, digest: string, object: Buffer, plain: number, codec: number): Promise<void> {
    if (this.failure !== undefined) throw this.failure;
    this.open ??= new PackBuilder(this.repo.keys, this.packSize, this.spare.pop());
    this.open.add(kind, digest, object, plain, codec);
    if (this.open.size >= this.packSize) {
      while (this.puts.size >= MAX_PUTS) await Promise.race(this.puts);
      // another add may have flushed it while this one waited
      if (this.open && this.open.size >= this.packSize) this.flush();
    }
  }

  /** blobs in the open pack, not yet written */
  get openCount(): number {
    return this.open?.count ?? 0;
  }

  /** packs whose put completed and that were not taken yet */
  get writtenCount(): number {
    return this.written.length;
  }

  /** seals the open pack, if any, and starts its put */
  flush(): void {
    const b = this.open;
    if (!b || !b.count) return;
    this.open = null;
    const data = b.seal();
    const done: WrittenPack = { id: b.id, size: data.length, entries: b.entries, index: encodePackIndex(b.entries) };
    const put = this.repo
      .putPack(b.id, data, { batch: this.batch })
      .then(() => {
        this.written.push(done);
        this.packCount++;
        if (!this.spare.length) this.spare.push(b.buffer);
      })
      .catch((e: unknown) => {
        this.failure ??= e;
      })
      .finally(() => this.puts.delete(put));
    this.puts.add(put);
  }

  /** waits for every put in flight; the packs written since the last call (durable after the batch's sync) */
  async takeWritten(): Promise<WrittenPack[]> {
    while (this.puts.size) await Promise.all(this.puts);
    if (this.failure !== undefined) throw this.failure;
    return this.written.splice(0);
  }

  /** waits for puts in flight, ignoring failures */
  async settle(): Promise<void> {
    while (this.puts.size) await Promise.allSettled(this.puts);
  }
}
