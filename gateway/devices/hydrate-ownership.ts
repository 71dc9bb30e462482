/**
 * Which blocks of a hydrating device the target owns, and how that ownership is made durable.
 *
 * Per block: NOT_OWNED (the backup holds its data), OWNED (the target holds it, possibly only
 * in its volatile cache), DURABLE (owned and committed in the catalog). Blocks that became
 * OWNED wait in `pending` for the next sync(), which makes them DURABLE: the target's
 * fdatasync FIRST, then one catalog commit of their bits. That ordering is what makes a crash
 * safe; the argument, (a)-(d), is in the header of gateway/devices/hydrate.ts. Do not reverse
 * it, and do not commit a block before its data reached the target.
 */
import { BlockDeviceError } from '../../blockdev/types.js';
import type { HydrateOptions } from './hydrate-types.js';

const NOT_OWNED = 0;
const OWNED = 1;
const DURABLE = 2;

/** FOR TESTS ONLY: an ordering broken on purpose (see HydrateOptions.unsafeForTest) */
export type UnsafeOrdering = NonNullable<HydrateOptions['unsafeForTest']>;

/** who asked for a sync: a guest FLUSH/FUA, or the device itself (batching, completion, close) */
export type SyncKind = 'guest' | 'background';

/** where a sync makes things durable */
export interface DurableSink {
  /** the target's fdatasync */
  flush(): Promise<void>;
  /** commits the ownership of these blocks (the catalog, one transaction); resolves once durable */
  commit(blocks: number[]): Promise<void>;
}

export class Ownership {
  /** per block: 0 not owned, 1 owned (data on the target), 2 owned and committed */
  private readonly state: Uint8Array;
  private readonly pending = new Set<number>();
  private ownedCount = 0;
  private durableCount = 0;

  /** the last sync started or queued; syncs run one after another */
  private syncTail: Promise<void> = Promise.resolve();
  /** a sync queued but not started yet: a new caller can join it, it will cover the caller */
  private syncQueued: Promise<void> | null = null;

  /** `owned`: blocks already owned and committed, one byte per block */
  constructor(
    readonly blocks: number,
    owned: Uint8Array | undefined,
    private readonly sink: DurableSink,
    private readonly unsafeForTest?: UnsafeOrdering,
  ) {
    this.state = new Uint8Array(blocks);
    for (let b = 0; b < blocks; b++) {
      if (owned?.[b]) {
        this.state[b] = DURABLE;
        this.ownedCount++;
        this.durableCount++;
      }
    }
  }

  /** the target holds block b's data */
  isOwned(b: number): boolean {
    return this.state[b] !== NOT_OWNED;
  }

  /** blocks owned in memory */
  get owned(): number {
    return this.ownedCount;
  }

  /** blocks owned and committed */
  get durable(): number {
    return this.durableCount;
  }

  /**
   * Call only once b's data is on the target (its write completed): b becomes owned and waits
   * for the next sync to be committed. false if b was owned already.
   */
  markOwned(b: number): boolean {
    if (this.state[b] !== NOT_OWNED) return false;
    this.state[b] = OWNED;
    this.ownedCount++;
    this.pending.add(b);
    return true;
  }

  /** at least `blocks` blocks wait for their commit and no sync is queued to cover them */
  needsSync(blocks: number): boolean {
    return this.pending.size >= blocks && !this.syncQueued;
  }

  /**
   * Makes the ownership of every block owned so far durable: target fdatasync, then one
   * catalog commit of their bits (see the ordering argument in hydrate.ts). Calls coalesce: a
   * call made while a sync runs waits for the next one, which starts after it.
   */
  sync(kind: SyncKind = 'background'): Promise<void> {
    const unsafeGuest = kind === 'guest' && this.unsafeForTest === 'flush-without-commit';
    if (this.syncQueued && !unsafeGuest) return this.syncQueued;
    const p: Promise<void> = this.syncTail.then(() => {
      if (this.syncQueued === p) this.syncQueued = null;
      return this.doSync(kind);
    });
    this.syncTail = p.catch(() => undefined);
    if (!unsafeGuest) this.syncQueued = p;
    return p;
  }

  private async doSync(kind: SyncKind): Promise<void> {
    const skipCommit = kind === 'guest' && this.unsafeForTest === 'flush-without-commit';
    const blocks = skipCommit ? [] : [...this.pending];
    for (const b of blocks) this.pending.delete(b);
    try {
      if (this.unsafeForTest === 'commit-before-flush') {
        if (blocks.length) await this.sink.commit(blocks);
        await this.sink.flush();
      } else {
        // (a): the data is durable on the target BEFORE its ownership is committed
        await this.sink.flush();
        if (blocks.length) await this.sink.commit(blocks);
      }
    } catch (e) {
      for (const b of blocks) if (this.state[b] === OWNED) this.pending.add(b);
      throw e instanceof BlockDeviceError ? e : new BlockDeviceError('EIO', `flush: ${(e as Error).message}`);
    }
    for (const b of blocks) {
      if (this.state[b] === OWNED) {
        this.state[b] = DURABLE;
        this.durableCount++;
      }
    }
  }
}
