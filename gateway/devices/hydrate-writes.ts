/**
 * The guest's changes to a hydrating device: WRITE, WRITE_ZEROES and TRIM. A change to an owned
 * block goes to the target; a change to a block not owned runs under that block's lock and,
 * if the block is still not owned, covers it whole (written as it is) or brings it in from
 * the backup and merges (read-merge-write), so no reader sees stale target bytes mixed with
 * new data; the block is then owned, and committed at the next sync ((b) and (d) in
 * hydrate.ts). FUA syncs before the reply ((c)).
 */
import type { BlockDevice, ZeroOptions } from '../../blockdev/types.js';
import type { HydrateBlocks } from './hydrate-blocks.js';
import type { Ownership, SyncKind } from './hydrate-ownership.js';

/** what the guest changes need of their device */
export interface WritesHost {
  readonly target: BlockDevice;
  readonly blk: HydrateBlocks;
  readonly own: Ownership;
  /** per block: the target's bytes read as zeroes */
  readonly knownZero: Uint8Array;
  /** throws the device's shutdown reason once it is shut down */
  alive(): void;
  /** b's data is on the target: owned, committed at the next sync */
  markOwned(b: number): void;
  sync(kind: SyncKind): Promise<void>;
}

export class GuestWrites {
  constructor(private readonly h: WritesHost) {}

  /** a guest write of data at offset (checked, not empty) */
  async write(offset: number, data: Buffer, fua?: boolean): Promise<void> {
    const jobs: Promise<void>[] = [];
    for (const seg of this.h.blk.segments(offset, data.length)) {
      const part = data.subarray(seg.from - offset, seg.to - offset);
      this.h.knownZero[seg.b] = 0;
      if (this.h.own.isOwned(seg.b)) jobs.push(this.h.target.write!(seg.from, part));
      else jobs.push(this.changeNotOwned(seg.b, seg.from, part));
    }
    await Promise.all(jobs);
    if (fua) await this.h.sync('guest');
  }

  /**
   * A write (or zeroing, data = null) of [from, from+len) in block b, which was not owned when
   * the request arrived. Under b's lock: still not owned -> whole block covered: write it;
   * partly covered: bring the block in from the backup, merge, write the whole block. Owned.
   */
  private changeNotOwned(b: number, from: number, data: Buffer | null, zeroLen = 0): Promise<void> {
    const len = data ? data.length : zeroLen;
    return this.h.blk.withLock(b, async () => {
      this.h.alive();
      if (this.h.own.isOwned(b)) {
        if (data) await this.h.target.write!(from, data);
        else await this.h.blk.targetZero(from, len);
        return;
      }
      const start = this.h.blk.blockStart(b);
      const blen = this.h.blk.blockLen(b);
      if (from === start && len === blen) {
        if (data) await this.h.target.write!(from, data);
        else await this.h.blk.targetZero(from, len);
      } else {
        const base = await this.h.blk.backupBlock(b);
        const merged = Buffer.alloc(blen);
        base?.copy(merged);
        if (data) data.copy(merged, from - start);
        else merged.fill(0, from - start, from - start + len);
        await this.h.target.write!(start, merged);
      }
      this.h.markOwned(b);
    });
  }

  /** a guest zeroing (or TRIM) of [offset, offset+length) (checked, not empty, not fast) */
  async zero(offset: number, length: number, opts: ZeroOptions = {}): Promise<void> {
    let run: { from: number; to: number } | null = null;
    const jobs: Promise<void>[] = [];
    for (const seg of this.h.blk.segments(offset, length)) {
      const b = seg.b;
      const whole = seg.from === this.h.blk.blockStart(b) && seg.to === this.h.blk.blockStart(b) + this.h.blk.blockLen(b);
      if (this.h.knownZero[b] && (this.h.own.isOwned(b) || whole)) {
        // the target already reads as zeroes there: nothing to write, only to own
        if (!this.h.own.isOwned(b)) jobs.push(this.ownZeroBlock(b));
        continue;
      }
      this.h.knownZero[b] = 0;
      if (this.h.own.isOwned(seg.b)) {
        if (run && run.to === seg.from) run.to = seg.to;
        else {
          if (run) jobs.push(this.h.blk.targetZero(run.from, run.to - run.from));
          run = { from: seg.from, to: seg.to };
        }
        continue;
      }
      jobs.push(this.changeNotOwned(seg.b, seg.from, null, seg.to - seg.from));
      if (jobs.length >= 64) await Promise.all(jobs.splice(0));
    }
    if (run) jobs.push(this.h.blk.targetZero(run.from, run.to - run.from));
    await Promise.all(jobs);
    if (opts.fua) await this.h.sync('guest');
  }

  /** zeroing a whole block not owned whose target bytes are zeroes already */
  private ownZeroBlock(b: number): Promise<void> {
    return this.h.blk.withLock(b, async () => {
      this.h.alive();
      if (this.h.own.isOwned(b)) {
        if (!this.h.knownZero[b]) await this.h.blk.targetZero(this.h.blk.blockStart(b), this.h.blk.blockLen(b));
        return;
      }
      this.h.markOwned(b);
    });
  }
}
