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
 */
import { BlockDeviceError, type BlockDevice, type Extent, type ZeroOptions } from '../../nbd/blockdev.js';

/** The backup side: what each block held when the backup was taken. */
export interface HydrateSource {
  /** bytes of the backup (the target may be larger; what lies past this is the target's own) */
  readonly size: number;
  /** true if block i is a hole (reads as zeroes) in the backup */
  isHole(block: number): boolean;
  /** the backup's bytes of block i (min(blockSize, size - i*blockSize) bytes), null for a hole; callers do not modify it */
  read(block: number): Promise<Buffer | null>;
}

/** Where ownership is made durable (the catalog). */
export interface OwnershipLog {
  /** commits the ownership of these blocks in one transaction; resolves once it is durable */
  commit(blocks: number[], bytesCopied: number): Promise<void>;
}

export interface HydrateOptions {
  blockSize: number;
  /** makes ownership durable (the catalog); called after the target's fdatasync */
  commit?: OwnershipLog['commit'];
  /** blocks already owned (committed), one byte per block; default none */
  owned?: Uint8Array;
  /**
   * blocks whose target bytes are known to read as zeroes (a freshly truncated sparse target),
   * owned or not: zeroing them needs no I/O, and block status reports them as holes
   */
  knownZero?: Uint8Array;
  /** parallel block copies of the background copier (default 4) */
  concurrency?: number;
  /** background copy rate, bytes per second; 0 = unlimited (default) */
  rateBytesPerSec?: number;
  /** commit copied blocks at least this often (default 1000 ms) */
  syncIntervalMs?: number;
  /** ...or when this many blocks wait for their commit (default 256) */
  syncBlocks?: number;
  /** the copier gives way to guest I/O for at most this long per block (default 50 ms) */
  guestYieldMs?: number;
  /** copier retries of a failing block read before the session fails (default 4) */
  retries?: number;
  log?: (event: string, fields: Record<string, unknown>) => void;
  /** every block owned and committed */
  onComplete?: () => void;
  /** the copier cannot go on (a block of the backup cannot be read) */
  onError?: (e: Error) => void;
  /**
   * FOR TESTS ONLY: break the ordering on purpose, to show the crash test catches it.
   * 'commit-before-flush': commit bits before the target's fdatasync; 'flush-without-commit':
   * a guest FLUSH/FUA syncs the target but does not commit the bits of the blocks it covers.
   */
  unsafeForTest?: 'commit-before-flush' | 'flush-without-commit';
}

export interface HydrateStats {
  blocksTotal: number;
  /** owned in memory (the target holds the data) */
  blocksOwned: number;
  /** owned and committed */
  blocksDurable: number;
  bytesCopied: number;
  /** bytes/s brought in over the last few seconds */
  rate: number;
  guestReadsFromBackup: number;
  copierRunning: boolean;
}

const NOT_OWNED = 0;
const OWNED = 1;
const DURABLE = 2;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export class HydrateDevice implements BlockDevice {
  readonly readOnly = false;
  readonly canMultiConn = true;
  readonly size: number;
  readonly blockSizes = { minimum: 1, preferred: 4096, maximum: 32 * 1024 * 1024 };
  readonly blockSize: number;
  readonly blocks: number;
  /** per block: 0 not owned, 1 owned (data on the target), 2 owned and committed */
  private readonly state: Uint8Array;
  private readonly knownZero: Uint8Array;
  private readonly pending = new Set<number>();
  private ownedCount = 0;
  private durableCount = 0;
  private readonly locks = new Map<number, Promise<void>>();

  /** the last sync started or queued; syncs run one after another */
  private syncTail: Promise<void> = Promise.resolve();
  /** a sync queued but not started yet: a new caller can join it, it will cover the caller */
  private syncQueued: Promise<void> | null = null;
  private timer: NodeJS.Timeout | null = null;

  private concurrency: number;
  private rate: number;
  private nextSlot = 0;
  private cursor = 0;
  private workers = 0;
  private copierOn = false;
  private stopped = false;
  private completing = false;
  private completed = false;
  private dead: BlockDeviceError | null = null;

  private guestInFlight = 0;
  private writeFailures = 0;
  bytesCopied = 0;
  private guestReadsFromBackup = 0;
  private readonly samples: { t: number; bytes: number }[] = [];
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
    this.state = new Uint8Array(this.blocks);
    this.knownZero = new Uint8Array(this.blocks);
    for (let b = 0; b < this.blocks; b++) {
      if (opts.owned?.[b]) {
        this.state[b] = DURABLE;
        this.ownedCount++;
        this.durableCount++;
      }
      if (opts.knownZero?.[b]) this.knownZero[b] = 1;
    }
    this.concurrency = Math.max(1, opts.concurrency ?? 4);
    this.rate = Math.max(0, opts.rateBytesPerSec ?? 0);
    this.bytesCopied = 0;
  }

  // ------------------------------------------------------------------ helpers

  private log(event: string, fields: Record<string, unknown> = {}): void {
    this.opts.log?.(event, fields);
  }

  private check(offset: number, length: number): void {
    if (this.dead) throw this.dead;
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new BlockDeviceError('EINVAL', `range ${offset}+${length} is outside the device (${this.size} bytes)`);
    }
  }

  private blockStart(b: number): number {
    return b * this.blockSize;
  }

  private blockLen(b: number): number {
    return Math.min(this.blockSize, this.size - b * this.blockSize);
  }

  /** splits [offset, offset+length) at block boundaries */
  private *segments(offset: number, length: number): Generator<{ b: number; from: number; to: number }> {
    const end = offset + length;
    for (let pos = offset; pos < end; ) {
      const b = Math.floor(pos / this.blockSize);
      const to = Math.min(end, this.blockStart(b) + this.blockLen(b));
      yield { b, from: pos, to };
      pos = to;
    }
  }

  private async withLock<T>(b: number, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(b) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((r) => (release = r));
    const tail = prev.then(() => mine);
    this.locks.set(b, tail);
    await prev;
    try {
      return await fn();
    } finally {
      release();
      if (this.locks.get(b) === tail) this.locks.delete(b);
    }
  }

  private track<T>(p: Promise<T>): void {
    const q = p.catch(() => undefined);
    this.background.add(q);
    void q.finally(() => this.background.delete(q));
  }

  /**
   * The content block b must have when it is first owned: the backup's bytes, and past the
   * backup's end (a target larger than the backup) what the target has. null: all zeroes.
   */
  private async backupBlock(b: number): Promise<Buffer | null> {
    const start = this.blockStart(b);
    const len = this.blockLen(b);
    const inBackup = Math.max(0, Math.min(len, this.source.size - start));
    let data: Buffer | null = null;
    if (inBackup > 0) {
      try {
        data = await this.source.read(b);
      } catch (e) {
        throw e instanceof BlockDeviceError ? e : new BlockDeviceError('EIO', `backup block ${b} (offset ${start}): ${(e as Error).message}`);
      }
      if (data && data.length !== inBackup) throw new BlockDeviceError('EIO', `backup block ${b} holds ${data.length} bytes, expected ${inBackup}`);
    }
    if (inBackup === len) return data;
    const buf = Buffer.alloc(len);
    data?.copy(buf);
    const tail = await this.target.read(start + inBackup, len - inBackup);
    tail.copy(buf, inBackup);
    return buf;
  }

  private async targetZero(offset: number, length: number): Promise<void> {
    if (!length) return;
    if (this.target.zero) {
      await this.target.zero(offset, length, { mayTrim: true });
      return;
    }
    const step = 1024 * 1024;
    const z = Buffer.alloc(Math.min(step, length));
    for (let o = 0; o < length; o += step) await this.target.write!(offset + o, z.subarray(0, Math.min(step, length - o)));
  }

  /** caller holds b's lock and b is not owned: writes the block's full content, then owns it */
  private async install(b: number, data: Buffer | null): Promise<void> {
    const start = this.blockStart(b);
    if (data) {
      this.knownZero[b] = 0;
      await this.target.write!(start, data);
    } else if (!this.knownZero[b]) await this.targetZero(start, this.blockLen(b));
    this.markOwned(b);
  }

  private markOwned(b: number): void {
    if (this.state[b] !== NOT_OWNED) return;
    this.state[b] = OWNED;
    this.ownedCount++;
    this.pending.add(b);
    if (this.pending.size >= (this.opts.syncBlocks ?? 256) && !this.syncQueued) this.backgroundSync();
    if (this.ownedCount === this.blocks) this.track(this.finish());
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
      for (const seg of this.segments(offset, length)) {
        if (this.state[seg.b] !== NOT_OWNED) {
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
    const data = await this.backupBlock(b);
    this.guestReadsFromBackup++;
    const start = this.blockStart(b);
    if (data) data.copy(out, from - outStart, from - start, to - start);
    else out.fill(0, from - outStart, to - outStart);
    if (!this.stopped) this.track(this.copyIn(b, data));
  }

  /** installs backup data into b unless someone owned it meanwhile (a guest write wins) */
  private copyIn(b: number, data: Buffer | null): Promise<void> {
    return this.withLock(b, async () => {
      if (this.state[b] !== NOT_OWNED || this.dead) return;
      await this.install(b, data);
      this.bytesCopied += this.blockLen(b);
    });
  }

  async write(offset: number, data: Buffer, fua?: boolean): Promise<void> {
    this.check(offset, data.length);
    if (!data.length) return;
    this.guestBegin();
    try {
      const jobs: Promise<void>[] = [];
      for (const seg of this.segments(offset, data.length)) {
        const part = data.subarray(seg.from - offset, seg.to - offset);
        this.knownZero[seg.b] = 0;
        if (this.state[seg.b] !== NOT_OWNED) jobs.push(this.target.write!(seg.from, part));
        else jobs.push(this.changeNotOwned(seg.b, seg.from, part));
      }
      await Promise.all(jobs);
      if (fua) await this.sync('guest');
    } finally {
      this.guestEnd();
    }
  }

  /**
   * A write (or zeroing, data = null) of [from, from+len) in block b, which was not owned when
   * the request arrived. Under b's lock: still not owned -> whole block covered: write it;
   * partly covered: bring the block in from the backup, merge, write the whole block. Owned.
   */
  private changeNotOwned(b: number, from: number, data: Buffer | null, zeroLen = 0): Promise<void> {
    const len = data ? data.length : zeroLen;
    return this.withLock(b, async () => {
      if (this.dead) throw this.dead;
      if (this.state[b] !== NOT_OWNED) {
        if (data) await this.target.write!(from, data);
        else await this.targetZero(from, len);
        return;
      }
      const start = this.blockStart(b);
      const blen = this.blockLen(b);
      if (from === start && len === blen) {
        if (data) await this.target.write!(from, data);
        else await this.targetZero(from, len);
      } else {
        const base = await this.backupBlock(b);
        const merged = Buffer.alloc(blen);
        base?.copy(merged);
        if (data) data.copy(merged, from - start);
        else merged.fill(0, from - start, from - start + len);
        await this.target.write!(start, merged);
      }
      this.markOwned(b);
    });
  }

  async zero(offset: number, length: number, opts: ZeroOptions = {}): Promise<void> {
    this.check(offset, length);
    if (opts.fast) throw new BlockDeviceError('ENOTSUP', 'fast zeroing is not supported while hydrating');
    if (!length) return;
    this.guestBegin();
    try {
      let run: { from: number; to: number } | null = null;
      const jobs: Promise<void>[] = [];
      for (const seg of this.segments(offset, length)) {
        const b = seg.b;
        const whole = seg.from === this.blockStart(b) && seg.to === this.blockStart(b) + this.blockLen(b);
        if (this.knownZero[b] && (this.state[b] !== NOT_OWNED || whole)) {
          // the target already reads as zeroes there: nothing to write, only to own
          if (this.state[b] === NOT_OWNED) jobs.push(this.ownZeroBlock(b));
          continue;
        }
        this.knownZero[b] = 0;
        if (this.state[seg.b] !== NOT_OWNED) {
          if (run && run.to === seg.from) run.to = seg.to;
          else {
            if (run) jobs.push(this.targetZero(run.from, run.to - run.from));
            run = { from: seg.from, to: seg.to };
          }
          continue;
        }
        jobs.push(this.changeNotOwned(seg.b, seg.from, null, seg.to - seg.from));
        if (jobs.length >= 64) await Promise.all(jobs.splice(0));
      }
      if (run) jobs.push(this.targetZero(run.from, run.to - run.from));
      await Promise.all(jobs);
      if (opts.fua) await this.sync('guest');
    } finally {
      this.guestEnd();
    }
  }

  /** zeroing a whole block not owned whose target bytes are zeroes already */
  private ownZeroBlock(b: number): Promise<void> {
    return this.withLock(b, async () => {
      if (this.dead) throw this.dead;
      if (this.state[b] !== NOT_OWNED) {
        if (!this.knownZero[b]) await this.targetZero(this.blockStart(b), this.blockLen(b));
        return;
      }
      this.markOwned(b);
    });
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
    const jobs: Promise<void>[] = [];
    for (const seg of this.segments(offset, length)) {
      if (this.state[seg.b] !== NOT_OWNED) continue;
      jobs.push(this.backupBlock(seg.b).then((d) => this.copyIn(seg.b, d)));
    }
    await Promise.all(jobs);
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    this.check(offset, length);
    const out: Extent[] = [];
    let n = 0;
    for (const seg of this.segments(offset, length)) {
      const b = seg.b;
      const inBackup = this.blockStart(b) < this.source.size;
      const zero = this.state[b] === NOT_OWNED ? inBackup && this.blockStart(b) + this.blockLen(b) <= this.source.size && this.source.isHole(b) : this.knownZero[b] === 1;
      const prev = out.at(-1);
      if (prev && prev.zero === zero) prev.length += seg.to - seg.from;
      else out.push({ offset: seg.from, length: seg.to - seg.from, hole: zero, zero });
      if (++n >= 65536) break;
    }
    return out;
  }

  // ------------------------------------------------------------------ durability

  /**
   * Makes the ownership of every block owned so far durable: target fdatasync, then one
   * catalog commit of their bits (see the ordering argument at the top). Calls coalesce: a
   * call made while a sync runs waits for the next one, which starts after it.
   */
  sync(kind: 'guest' | 'background' = 'background'): Promise<void> {
    const unsafeGuest = kind === 'guest' && this.opts.unsafeForTest === 'flush-without-commit';
    if (this.syncQueued && !unsafeGuest) return this.syncQueued;
    const p: Promise<void> = this.syncTail.then(() => {
      if (this.syncQueued === p) this.syncQueued = null;
      return this.doSync(kind);
    });
    this.syncTail = p.catch(() => undefined);
    if (!unsafeGuest) this.syncQueued = p;
    return p;
  }

  private async doSync(kind: 'guest' | 'background'): Promise<void> {
    const skipCommit = kind === 'guest' && this.opts.unsafeForTest === 'flush-without-commit';
    const blocks = skipCommit ? [] : [...this.pending];
    for (const b of blocks) this.pending.delete(b);
    try {
      if (this.opts.unsafeForTest === 'commit-before-flush') {
        if (blocks.length) await this.commit(blocks);
        await this.target.flush!();
      } else {
        await this.target.flush!();
        if (blocks.length) await this.commit(blocks);
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

  private backgroundSync(): void {
    this.track(this.sync('background').catch((e: Error) => this.log('sync-failed', { error: e.message })));
  }

  private async commit(blocks: number[]): Promise<void> {
    if (this.opts.commit) await this.opts.commit(blocks, this.bytesCopied);
  }

  // ------------------------------------------------------------------ background copier

  /** starts the background copy (and the periodic commit) */
  start(): void {
    if (this.stopped || this.copierOn) return;
    this.copierOn = true;
    const every = this.opts.syncIntervalMs ?? 1000;
    this.timer = setInterval(() => {
      if (this.pending.size && !this.syncQueued) this.backgroundSync();
    }, every);
    this.timer.unref();
    this.spawnWorkers();
    if (this.ownedCount === this.blocks) this.track(this.finish());
  }

  private spawnWorkers(): void {
    while (this.copierOn && !this.stopped && this.workers < this.concurrency && this.cursor < this.blocks) {
      this.workers++;
      this.track(this.worker());
    }
  }

  /** changes the copier's concurrency and rate (bytes/s, 0 = unlimited) while it runs */
  setThrottle(t: { concurrency?: number; rate?: number }): void {
    if (t.concurrency !== undefined) this.concurrency = Math.max(1, Math.floor(t.concurrency));
    if (t.rate !== undefined) {
      this.rate = Math.max(0, t.rate);
      this.nextSlot = 0;
    }
    this.spawnWorkers();
  }

  get throttle(): { concurrency: number; rate: number } {
    return { concurrency: this.concurrency, rate: this.rate };
  }

  private nextBlock(): number {
    while (this.cursor < this.blocks) {
      const b = this.cursor++;
      if (this.state[b] === NOT_OWNED) return b;
    }
    return -1;
  }

  private async pace(bytes: number): Promise<void> {
    if (this.rate <= 0) return;
    const now = Date.now();
    const at = Math.max(now, this.nextSlot);
    this.nextSlot = at + (bytes / this.rate) * 1000;
    while (!this.stopped && this.rate > 0 && Date.now() < at) await sleep(Math.min(100, at - Date.now()));
  }

  /** guest I/O first: wait (a little) while guest requests are in flight */
  private async giveWay(): Promise<void> {
    const limit = this.opts.guestYieldMs ?? 50;
    const until = Date.now() + limit;
    while (this.guestInFlight > 0 && !this.stopped && Date.now() < until) await sleep(1);
  }

  private async worker(): Promise<void> {
    try {
      for (;;) {
        if (this.stopped || this.dead) return;
        if (this.workers > this.concurrency) return;
        const b = this.nextBlock();
        if (b < 0) return;
        await this.giveWay();
        await this.pace(this.source.isHole(b) ? 0 : this.blockLen(b));
        if (this.stopped) return;
        if (this.state[b] !== NOT_OWNED) continue;
        let data: Buffer | null;
        try {
          data = await this.fetchWithRetry(b);
        } catch (e) {
          if (this.stopped) return;
          this.log('copy-failed', { block: b, error: (e as Error).message });
          this.stopped = true;
          this.opts.onError?.(e as Error);
          return;
        }
        if (this.stopped) return;
        try {
          await this.withLock(b, async () => {
            if (this.state[b] !== NOT_OWNED || this.dead) return; // a guest write got there first: keep it
            await this.install(b, data);
            this.bytesCopied += this.blockLen(b);
            this.sample();
          });
          this.writeFailures = 0;
        } catch (e) {
          this.log('copy-write-failed', { block: b, error: (e as Error).message });
          if (++this.writeFailures > (this.opts.retries ?? 4)) {
            this.stopped = true;
            this.opts.onError?.(new Error(`cannot write block ${b} into the target: ${(e as Error).message}`));
            return;
          }
          await sleep(200);
        }
      }
    } finally {
      this.workers--;
      if (this.workers === 0 && !this.stopped && !this.dead) {
        if (this.ownedCount === this.blocks) this.track(this.finish());
        else if (this.cursor >= this.blocks) {
          // blocks left behind (a worker stood down, or a write failed): another pass
          this.cursor = 0;
          setTimeout(() => this.spawnWorkers(), 100).unref();
        }
      }
    }
  }

  private async fetchWithRetry(b: number): Promise<Buffer | null> {
    const tries = (this.opts.retries ?? 4) + 1;
    for (let i = 1; ; i++) {
      try {
        return await this.backupBlock(b);
      } catch (e) {
        if (i >= tries || this.stopped) throw e;
        this.log('copy-retry', { block: b, attempt: i, error: (e as Error).message });
        await sleep(Math.min(5000, 200 * 2 ** i));
      }
    }
  }

  private sample(): void {
    const t = Date.now();
    const last = this.samples.at(-1);
    if (last && t - last.t < 250) {
      last.bytes = this.bytesCopied;
      return;
    }
    this.samples.push({ t, bytes: this.bytesCopied });
    while (this.samples.length > 2 && t - this.samples[0]!.t > 5000) this.samples.shift();
  }

  /** every block owned: commit them all, then report completion once */
  private async finish(): Promise<void> {
    if (this.completing || this.completed) return;
    this.completing = true;
    try {
      while (this.durableCount < this.blocks && !this.dead) await this.sync('background');
      if (this.dead) return;
      this.completed = true;
      this.stopTimer();
      this.log('hydrated', { blocks: this.blocks, bytesCopied: this.bytesCopied });
      this.opts.onComplete?.();
    } catch (e) {
      this.log('sync-failed', { error: (e as Error).message });
      this.completing = false;
      setTimeout(() => this.track(this.finish()), 1000).unref();
    }
  }

  get isComplete(): boolean {
    return this.completed;
  }

  stats(): HydrateStats {
    const t = Date.now();
    let rate = 0;
    const first = this.samples[0];
    const last = this.samples.at(-1);
    if (first && last && last !== first && t - last.t < 3000) rate = ((last.bytes - first.bytes) / (last.t - first.t)) * 1000;
    return {
      blocksTotal: this.blocks,
      blocksOwned: this.ownedCount,
      blocksDurable: this.durableCount,
      bytesCopied: this.bytesCopied,
      rate,
      guestReadsFromBackup: this.guestReadsFromBackup,
      copierRunning: this.workers > 0,
    };
  }

  private stopTimer(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** stops the background copy; guest I/O goes on */
  async stop(): Promise<void> {
    this.stopped = true;
    this.stopTimer();
    while (this.workers > 0) await sleep(5);
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
