/**
 * Hydrate filter: a read-write block device made of a target (the volume being restored) and
 * a source (the backup). It is the sibling of the copy-on-write overlay: where the overlay
 * keeps writes aside and never touches its base, hydrate *moves* the base into the target.
 *
 *   - the device is cut into blocks of `blockSize` (the backup's chunk size: one chunk read
 *     brings in one whole block); a block is *owned* once the target holds its data;
 *   - read of an owned block -> the target; of a block not owned -> the backup, returned at
 *     once, and written into the target in the background (copy-on-read), then owned;
 *   - write -> the target; a write that covers only part of a block not owned first brings
 *     that block in from the backup (read-merge-write), so no reader ever sees a mix of
 *     stale target bytes and new data; TRIM and WRITE_ZEROES likewise (they read as zeroes
 *     afterwards); FLUSH and FUA make acknowledged writes durable on the target;
 *   - a background copier brings in the blocks nobody touched, skipping owned ones (and
 *     holes the caller marked owned up front); guest I/O goes first, the copier has its own
 *     concurrency and byte rate; it never overwrites a guest write with older backup data:
 *     every "install backup data into block b" runs under block b's lock and only if b is
 *     still not owned, and a guest write to a block not owned runs under the same lock.
 *
 * CRASH SAFETY — the ordering of "data reaches the target" and "block is marked owned".
 * Ownership lives in two places: in memory (state 1: the target holds the block's data,
 * possibly only in its volatile cache) and in the catalog (state 2: committed in LMDB). On
 * resume after a crash, only committed blocks are owned; every other block is brought in
 * from the backup again, overwriting whatever the target holds there.
 *
 *   (a) A block is committed only after its data is durable on the target: sync() takes the
 *       set of state-1 blocks (each got there only after its target write completed), calls
 *       the target's flush (fdatasync), and only then commits their bits in ONE LMDB
 *       transaction and waits for that transaction to be flushed. Copied blocks are batched
 *       this way (every `syncIntervalMs` or `syncBlocks` blocks). Reversed, a crash between
 *       the commit and the fdatasync would leave a block owned whose target bytes are stale
 *       (zeroes or old data), and the copier would never repair it.
 *   (b) A guest write to a block not owned reaches the target (bring-in + write) and marks
 *       the block state 1 before the write is acknowledged; its bit is committed at the next
 *       sync. If the appliance dies before that, the block is not owned on resume and the
 *       copier (or a read) replaces it with backup data: the write is lost. That is allowed
 *       only because the write was never acknowledged as durable: the guest had no FLUSH
 *       reply covering it (see (c)), exactly as a disk may drop a volatile-cache write.
 *   (c) FLUSH (and FUA) runs sync() before it replies: every write acknowledged before the
 *       FLUSH was received already marked its block state 1, so that block's data is
 *       fdatasync'ed and then its bit is committed, both BEFORE the FLUSH/FUA reply. So a
 *       write the guest saw acknowledged and then saw a FLUSH/FUA acknowledged for lives in a
 *       committed block: on resume nothing copies over it. Writes to an already committed
 *       block need no bit; the fdatasync of the FLUSH makes them durable.
 *   (d) In memory, the lock + re-check in (copier, copy-on-read) vs (guest write) makes the
 *       same guarantee without a crash: backup data is installed only into a block that is
 *       still not owned, under its lock, and a guest write marks the block owned under it.
 * test/instant-crash.test.ts proves (a)-(c) on a model: a target with a volatile cache, cut at
 * random instants (keeping any subset of its unflushed writes), resumed from the committed
 * bits; it also shows that either reversed ordering is caught. test/instant-kill.test.ts
 * kills the real daemon with SIGKILL mid-hydration while libnbd guests write and flush.
 *
 * Modules: this file is the device (guest reads, copy-on-read, bring-in under block locks);
 * hydrate-writes.ts the guest's writes, zeroing and trims (read-merge-write under block
 * locks); hydrate-types.ts its public types (re-exported here); hydrate-blocks.ts block geometry,
 * locks and content; hydrate-ownership.ts the ownership state and sync(), which implements
 * the ordering of (a) and (c); hydrate-copier.ts the background copier and completion.
 */
import { BlockDeviceError, type BlockDevice, type Extent, type ZeroOptions } from '../../blockdev/types.js';
import { checkRange } from '../../blockdev/filter.js';
import { HydrateBlocks } from './hydrate-blocks.js';
import { Copier } from './hydrate-copier.js';
import { GuestWrites } from './hydrate-writes.js';
import { Ownership, type SyncKind } from './hydrate-ownership.js';
import type { HydrateOptions, HydrateSource, HydrateStats } from './hydrate-types.js';

/** blocks one cache() call copies in at once */
const CACHE_WINDOW = 4;

export type { HydrateOptions, HydrateSource, HydrateStats, OwnershipLog } from './hydrate-types.js';

export class HydrateDevice implements BlockDevice {
  readonly readOnly = false;
  readonly canMultiConn = true;
  readonly size: number;
  readonly blockSizes = { minimum: 1, preferred: 4096, maximum: 32 * 1024 * 1024 };
  readonly blockSize: number;
  readonly blocks: number;
  /** which blocks the target owns, and their durable commit */
  private readonly own: Ownership;
  private readonly copier: Copier;
  private readonly knownZero: Uint8Array;
  /** geometry, per-block locks, block content */
  private readonly blk: HydrateBlocks;
  /** the guest's writes, zeroing and trims */
  private readonly writes: GuestWrites;
  private dead: BlockDeviceError | null = null;

  private guestInFlight = 0;
  bytesCopied = 0;
  private guestReadsFromBackup = 0;
  private readonly background = new Set<Promise<unknown>>();

  constructor(
    private readonly target: BlockDevice,
    private readonly source: HydrateSource,
    private readonly opts: HydrateOptions,
  ) {
    if (!target.write || !target.flush) throw new Error('the hydrate target must be writable and flushable');
    if (!Number.isInteger(opts.blockSize) || opts.blockSize <= 0) throw new Error('blockSize must be a positive integer');
    this.size = target.size;
    this.blockSize = opts.blockSize;
    this.blocks = Math.ceil(this.size / this.blockSize);
    this.blk = new HydrateBlocks(this.size, this.blockSize, target, source);
    this.own = new Ownership(this.blocks, opts.owned, { flush: () => this.target.flush!(), commit: (blocks) => this.commit(blocks) }, opts.unsafeForTest);
    this.knownZero = new Uint8Array(this.blocks);
    for (let b = 0; b < this.blocks; b++) if (opts.knownZero?.[b]) this.knownZero[b] = 1;
    this.copier = new Copier(
      {
        blocks: this.blocks,
        ownership: this.own,
        blockLen: (b) => this.blk.blockLen(b),
        isHole: (b) => this.source.isHole(b),
        fetch: (b) => this.blk.backupBlock(b),
        copyIn: (b, data, onCopied) => this.copyIn(b, data, onCopied),
        isDead: () => this.dead !== null,
        guestInFlight: () => this.guestInFlight,
        bytesCopied: () => this.bytesCopied,
        backgroundSync: () => this.backgroundSync(),
        track: (p) => this.track(p),
        log: (event, fields) => this.log(event, fields),
      },
      opts,
    );
    this.writes = new GuestWrites({
      target,
      blk: this.blk,
      own: this.own,
      knownZero: this.knownZero,
      alive: () => {
        if (this.dead) throw this.dead;
      },
      markOwned: (b) => this.markOwned(b),
      sync: (kind) => this.sync(kind),
    });
    this.bytesCopied = 0;
  }

  // ------------------------------------------------------------------ helpers

  private log(event: string, fields: Record<string, unknown> = {}): void {
    this.opts.log?.(event, fields);
  }

  private check(offset: number, length: number): void {
    if (this.dead) throw this.dead;
    checkRange(this.size, offset, length);
  }

  private track<T>(p: Promise<T>): void {
    const q = p.catch(() => undefined);
    this.background.add(q);
    void q.finally(() => this.background.delete(q));
  }

  /** caller holds b's lock and b is not owned: writes the block's full content, then owns it */
  private async install(b: number, data: Buffer | null): Promise<void> {
    const start = this.blk.blockStart(b);
    if (data) {
      this.knownZero[b] = 0;
      await this.target.write!(start, data);
    } else if (!this.knownZero[b]) await this.blk.targetZero(start, this.blk.blockLen(b));
    this.markOwned(b);
  }

  /** b's data is on the target: b is owned, committed at the next sync (batched) */
  private markOwned(b: number): void {
    if (!this.own.markOwned(b)) return;
    if (this.own.needsSync(this.opts.syncBlocks ?? 256)) this.backgroundSync();
    if (this.own.owned === this.blocks) this.track(this.copier.finish());
  }

  private guestBegin(): void {
    this.guestInFlight++;
  }

  private guestEnd(): void {
    this.guestInFlight--;
  }

  // ------------------------------------------------------------------ guest I/O

  async read(offset: number, length: number): Promise<Buffer> {
    this.check(offset, length);
    this.guestBegin();
    try {
      const out = Buffer.allocUnsafe(length);
      const jobs: Promise<void>[] = [];
      let run: { from: number; to: number } | null = null;
      const flushRun = () => {
        if (!run) return;
        const { from, to } = run;
        jobs.push(this.target.read(from, to - from).then((d) => void d.copy(out, from - offset)));
        run = null;
      };
      for (const seg of this.blk.segments(offset, length)) {
        if (this.own.isOwned(seg.b)) {
          if (run && run.to === seg.from) run.to = seg.to;
          else {
            flushRun();
            run = { from: seg.from, to: seg.to };
          }
          continue;
        }
        flushRun();
        jobs.push(this.readNotOwned(seg.b, seg.from, seg.to, out, offset));
      }
      flushRun();
      await Promise.all(jobs);
      return out;
    } finally {
      this.guestEnd();
    }
  }

  /** serves a read of a block not owned from the backup, and brings the block in behind it */
  private async readNotOwned(b: number, from: number, to: number, out: Buffer, outStart: number): Promise<void> {
    const data = await this.blk.backupBlock(b);
    this.guestReadsFromBackup++;
    const start = this.blk.blockStart(b);
    if (data) data.copy(out, from - outStart, from - start, to - start);
    else out.fill(0, from - outStart, to - outStart);
    if (!this.copier.isStopped) this.track(this.copyIn(b, data));
  }

  /**
   * Installs backup data into b unless someone owned it meanwhile (a guest write wins), counts
   * the bytes copied and runs onCopied, all under b's lock. Copy-on-read and the copier.
   */
  private copyIn(b: number, data: Buffer | null, onCopied?: () => void): Promise<void> {
    return this.blk.withLock(b, async () => {
      if (this.own.isOwned(b) || this.dead) return;
      await this.install(b, data);
      this.bytesCopied += this.blk.blockLen(b);
      onCopied?.();
    });
  }


  async write(offset: number, data: Buffer, fua?: boolean): Promise<void> {
    this.check(offset, data.length);
    if (!data.length) return;
    this.guestBegin();
    try {
      await this.writes.write(offset, data, fua);
    } finally {
      this.guestEnd();
    }
  }

  async zero(offset: number, length: number, opts: ZeroOptions = {}): Promise<void> {
    this.check(offset, length);
    if (opts.fast) throw new BlockDeviceError('ENOTSUP', 'fast zeroing is not supported while hydrating');
    if (!length) return;
    this.guestBegin();
    try {
      await this.writes.zero(offset, length, opts);
    } finally {
      this.guestEnd();
    }
  }

  /** a trimmed range reads as zeroes afterwards */
  trim(offset: number, length: number, fua?: boolean): Promise<void> {
    return this.zero(offset, length, { fua, mayTrim: true });
  }

  async flush(): Promise<void> {
    if (this.dead) throw this.dead;
    this.guestBegin();
    try {
      await this.sync('guest');
    } finally {
      this.guestEnd();
    }
  }

  /** NBD_CMD_CACHE: bring the range into the target now */
  async cache(offset: number, length: number): Promise<void> {
    this.check(offset, length);
    // a few blocks at a time: a request for the whole device holds a window, never the range
    let jobs: Promise<void>[] = [];
    for (const seg of this.blk.segments(offset, length)) {
      if (this.own.isOwned(seg.b)) continue;
      jobs.push(this.blk.backupBlock(seg.b).then((d) => this.copyIn(seg.b, d)));
      if (jobs.length >= CACHE_WINDOW) {
        await Promise.all(jobs);
        jobs = [];
      }
    }
    await Promise.all(jobs);
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    this.check(offset, length);
    const out: Extent[] = [];
    let n = 0;
    for (const seg of this.blk.segments(offset, length)) {
      const b = seg.b;
      const inBackup = this.blk.blockStart(b) < this.source.size;
      const zero = !this.own.isOwned(b) ? inBackup && this.blk.blockStart(b) + this.blk.blockLen(b) <= this.source.size && this.source.isHole(b) : this.knownZero[b] === 1;
      const prev = out.at(-1);
      if (prev && prev.zero === zero) prev.length += seg.to - seg.from;
      else out.push({ offset: seg.from, length: seg.to - seg.from, hole: zero, zero });
      if (++n >= 65536) break;
    }
    return out;
  }

  // ------------------------------------------------------------------ durability, copier, end

  /**
   * Makes the ownership of every block owned so far durable: target fdatasync, then one
   * catalog commit of their bits (see the ordering argument at the top; Ownership.sync).
   */
  sync(kind: SyncKind = 'background'): Promise<void> {
    return this.own.sync(kind);
  }

  private backgroundSync(): void {
    this.track(this.sync('background').catch((e: Error) => this.log('sync-failed', { error: e.message })));
  }

  private async commit(blocks: number[]): Promise<void> {
    if (this.opts.commit) await this.opts.commit(blocks, this.bytesCopied);
  }

  /** starts the background copy (and the periodic commit) */
  start(): void {
    this.copier.start();
  }

  /** changes the copier's concurrency and rate (bytes/s, 0 = unlimited) while it runs */
  setThrottle(t: { concurrency?: number; rate?: number }): void {
    this.copier.setThrottle(t);
  }

  get throttle(): { concurrency: number; rate: number } {
    return this.copier.throttle;
  }

  get isComplete(): boolean {
    return this.copier.isComplete;
  }

  stats(): HydrateStats {
    return {
      blocksTotal: this.blocks,
      blocksOwned: this.own.owned,
      blocksDurable: this.own.durable,
      bytesCopied: this.bytesCopied,
      rate: this.copier.measuredRate(),
      guestReadsFromBackup: this.guestReadsFromBackup,
      copierRunning: this.copier.running,
    };
  }

  /** stops the background copy; guest I/O goes on */
  stop(): Promise<void> {
    return this.copier.stop();
  }

  /** ends the device: every further request fails with this reason (cancel, failure) */
  async shutdown(reason: string): Promise<void> {
    this.dead = new BlockDeviceError('EIO', reason);
    await this.stop();
  }

  /** waits for background copy-ins and commits to settle */
  async settle(): Promise<void> {
    while (this.background.size) await Promise.all([...this.background]);
  }

  /** stops copying, commits what is owned (unless shut down), closes the target */
  async close(): Promise<void> {
    await this.stop();
    await this.settle();
    if (!this.dead) await this.sync('background').catch((e: Error) => this.log('sync-failed', { error: e.message }));
    await this.target.close?.();
  }
}
