/**
 * One backup's view of an RBD image (a ChangeSource): its snapshot, and `rbd export-diff`
 * from the parent's snapshot, or a full one with the gaps reported as zeroes when the
 * parent's snapshot has gone.
 */
import type { ChangedExtent, ChangeSource } from './types.js';
import type { RbdImageDevice } from './rbd-io.js';
import { RbdError, SNAP_RE } from './rbd-names.js';

/** a record of `rbd export-diff`, as RbdVolume.exportDiff() yields it */
export type DiffRecord = { type: 'size'; size: number } | { type: 'data'; offset: number; data: Buffer } | { type: 'zero'; offset: number; length: number };

/** what a change source needs of its volume (an RbdVolume) */
export interface DiffingVolume {
  readonly spec: string;
  exportDiff(snap: string, from: string | null): AsyncIterable<DiffRecord>;
  removeSnapshot(name: string): Promise<void>;
}

/** Largest zero extent handed to the engine when filling the gaps of a fall-back full diff. */
const GAP_PIECE = 64 << 20;

/**
 * One backup's view of an RBD image: its snapshot, and the diff from the parent's snapshot
 * (or a full one).
 */
export class RbdChangeSource implements ChangeSource {
  readonly notes: string[] = [];
  private read = 0;
  private committed = false;

  constructor(
    private readonly vol: DiffingVolume,
    readonly token: string,
    readonly size: number,
    /** the librbd connection that made the snapshot; closed by commit() or abort() */
    private readonly ctl: RbdImageDevice,
    /** snapshots of the image when ours was taken */
    private readonly snapshotsThen: Set<string>,
  ) {}

  get bytesRead(): number {
    return this.read;
  }

  async *changes(since: string | null): AsyncIterable<ChangedExtent> {
    let from = since;
    let fillGaps = false;
    if (from !== null) {
      const known = SNAP_RE.test(from) && this.snapshotsThen.has(from);
      if (!known) {
        this.notes.push(
          `the parent backup's snapshot ${this.vol.spec}@${from} no longer exists: this backup read the whole image (full export-diff of ${this.token}) instead of only the changes`,
        );
        from = null;
        // the engine lays this diff over the parent's map: ranges the full diff leaves out
        // (unallocated now) must read as zeroes, whatever the parent had there
        fillGaps = true;
      }
    }
    let pos = 0; // end of the last extent (for gap filling)
    const gap = function* (end: number): Iterable<ChangedExtent> {
      for (let o = pos; o < end; o += GAP_PIECE) yield { offset: o, length: Math.min(GAP_PIECE, end - o), data: null };
    };
    for await (const rec of this.vol.exportDiff(this.token, from)) {
      if (rec.type === 'size') {
        if (rec.size !== this.size) throw new RbdError(`rbd export-diff of ${this.vol.spec}@${this.token} reports size ${rec.size}, the snapshot is ${this.size} bytes`);
        continue;
      }
      const offset = rec.offset;
      const length = rec.type === 'data' ? rec.data.length : rec.length;
      if (fillGaps && offset > pos) yield* gap(offset);
      pos = offset + length;
      if (rec.type === 'data') {
        this.read += length;
        yield { offset, length, data: rec.data };
      } else {
        yield { offset, length, data: null };
      }
    }
    if (fillGaps && pos < this.size) yield* gap(this.size);
  }

  /**
   * The new backup is committed: drop the parent's snapshot, keep ours. Never throws (the
   * backup is committed already); a snapshot that cannot be removed is reported on stderr
   * and left for the user.
   */
  async commit(parentToken: string | null): Promise<void> {
    this.committed = true;
    try {
      if (parentToken && parentToken !== this.token && SNAP_RE.test(parentToken)) await this.ctl.removeSnapshot(parentToken);
    } catch (e) {
      process.stderr.write(`blockgate: warning: could not remove the previous backup's snapshot ${this.vol.spec}@${parentToken}: ${(e as Error).message}\n`);
    } finally {
      await this.ctl.close().catch(() => undefined);
    }
  }

  /** The backup failed: drop the snapshot made for it. */
  async abort(): Promise<void> {
    if (this.committed) return;
    this.committed = true;
    try {
      await this.ctl.removeSnapshot(this.token);
    } catch {
      await this.vol.removeSnapshot(this.token); // the helper died: by the rbd command
    } finally {
      await this.ctl.close().catch(() => undefined);
    }
  }
}
