import { Readable } from 'node:stream';
import {
  MAX_SNAP_NAME_BYTES,
  RBD_DIFF_BANNER_LENGTH,
  RBD_DIFF_BANNER_V1,
  RBD_DIFF_BANNER_V2,
  RbdDiffError,
  TAG_END,
  TAG_FROM_SNAP,
  TAG_PROTECTED,
  TAG_SIZE,
  TAG_TO_SNAP,
  TAG_WRITE,
  TAG_ZERO,
  type RbdDiffHeader,
  type RbdDiffRecord,
  type RbdDiffVersion,
} from './diff-format.js';
import { PullReader } from './pull-reader.js';

export interface RbdDiffReaderOptions {
  /** accept only this version (default: either, by banner) */
  version?: RbdDiffVersion;
  /** largest data piece yielded for a 'w' record (default 1 MiB) */
  maxPieceSize?: number;
  /**
   * What follows the end record: 'error' (default: the stream must end there) or 'leave'
   * (stop reading at the end record and give unread bytes back to the Readable, for a diff
   * embedded in a longer stream such as `rbd export --export-format 2`).
   */
  afterEnd?: 'error' | 'leave';
  /**
   * v2 only: records with an unknown tag are an error (default) or skipped using their length
   * field (what `rbd import` does). v1 records have no length, so an unknown v1 tag is always
   * an error (rbd itself would skip one byte and resynchronise by luck).
   */
  unknownTags?: 'error' | 'skip';
}

const DEFAULT_PIECE = 1 << 20;
const utf8 = new TextDecoder('utf-8', { fatal: true });
const printable = (tag: number) =>
  tag >= 0x20 && tag < 0x7f ? `'${String.fromCharCode(tag)}' (0x${tag.toString(16).padStart(2, '0')})` : `0x${tag.toString(16).padStart(2, '0')}`;

/**
 * Reads one RBD diff from a Readable, validating as it goes. Iterate it for records, or call
 * `header()` first and then iterate for the rest. Every problem — bad banner, record out of
 * order, overlapping or descending extents, extents beyond the image size, bad lengths,
 * truncation, bytes after the end record, a failing source stream — is thrown as an
 * RbdDiffError naming the stream byte offset. The caller owns the Readable (it is not
 * destroyed on error or early exit).
 */
export class RbdDiffReader implements AsyncIterable<RbdDiffRecord> {
  private readonly r: PullReader;
  private readonly pieceSize: number;
  private started = false;
  private iterated = false;
  private headerDone: RbdDiffHeader | null = null;
  private queued: RbdDiffRecord[] = [];
  private version: RbdDiffVersion = 1;
  private fromSnap?: string;
  private toSnap?: string;
  private protectedFlag?: boolean;
  private size = -1;
  /** end of the last extent: the next one must start at or after it */
  private extentEnd = 0;
  private ended = false;

  constructor(source: Readable | AsyncIterable<Uint8Array>, private readonly opts: RbdDiffReaderOptions = {}) {
    const readable = source instanceof Readable ? source : Readable.from(source, { objectMode: false });
    this.r = new PullReader(readable);
    this.pieceSize = Math.max(1, Math.floor(opts.maxPieceSize ?? DEFAULT_PIECE));
  }

  /** bytes of the diff consumed so far */
  get position(): number {
    return this.r.position;
  }

  /** The header once the 's' record has been read (by header() or by iterating), else null. */
  get info(): RbdDiffHeader | null {
    return this.headerDone;
  }

  /** Reads up to and including the 's' record (if not done yet) and returns the header. */
  async header(): Promise<RbdDiffHeader> {
    if (this.headerDone) return this.headerDone;
    if (this.started) throw new Error('RbdDiffReader.header() must be called before iterating');
    this.started = true;
    await this.readBanner();
    while (!this.headerDone) {
      const rec = await this.nextRecord();
      if (rec.type === 'end') throw new RbdDiffError(`end record before the image size record`, this.r.position - 1);
      if (rec.type !== 'data') this.queued.push(rec);
    }
    return this.headerDone;
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<RbdDiffRecord> {
    if (this.iterated) throw new Error('an RbdDiffReader can be iterated only once');
    this.iterated = true;
    if (!this.started) {
      this.started = true;
      await this.readBanner();
    } else if (this.headerDone) {
      // header() was called: replay what it consumed
      const q = this.queued;
      this.queued = [];
      yield* q;
    }
    while (!this.ended) {
      const tagAt = this.r.position;
      const rec = await this.nextRecord();
      if (rec.type === 'data') {
        // a 'w' record: stream its payload in bounded pieces
        yield* this.readPayload(rec.extentOffset, rec.extentLength);
        continue;
      }
      if (rec.type === 'end' && !this.headerDone) throw new RbdDiffError('end record before the image size record', tagAt);
      yield rec;
    }
    if ((this.opts.afterEnd ?? 'error') === 'leave') {
      this.r.giveBack();
    } else {
      const at = this.r.position;
      if (!(await this.guard(() => this.r.atEnd()))) throw new RbdDiffError('unexpected data after the end record', at);
    }
  }

  // ---------------------------------------------------------------- internals

  private async guard<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      if (e instanceof RbdDiffError) throw e;
      const msg = e instanceof Error ? e.message : String(e);
      throw new RbdDiffError(`reading the stream failed: ${msg}`, this.r.position, { cause: e });
    }
  }

  private async exact(n: number, what: string): Promise<Buffer> {
    const at = this.r.position;
    const b = await this.guard(() => this.r.readExact(n));
    if (b.length < n) {
      throw new RbdDiffError(`stream truncated in ${what}: needed ${n} bytes, got ${b.length}`, at + b.length);
    }
    return b;
  }

  private async readBanner(): Promise<void> {
    const b = await this.guard(() => this.r.readExact(RBD_DIFF_BANNER_LENGTH));
    const text = b.toString('latin1');
    let version: RbdDiffVersion | 0 = 0;
    if (text === RBD_DIFF_BANNER_V1) version = 1;
    else if (text === RBD_DIFF_BANNER_V2) version = 2;
    if (version === 0) {
      if (b.length < RBD_DIFF_BANNER_LENGTH && (RBD_DIFF_BANNER_V1.startsWith(text) || RBD_DIFF_BANNER_V2.startsWith(text))) {
        throw new RbdDiffError(`stream truncated in the banner (${b.length} of 12 bytes)`, b.length);
      }
      let i = 0;
      while (i < b.length && (b[i] === RBD_DIFF_BANNER_V1.charCodeAt(i) || b[i] === RBD_DIFF_BANNER_V2.charCodeAt(i))) i++;
      throw new RbdDiffError(`not an rbd diff: banner ${JSON.stringify(text)} is neither "rbd diff v1\\n" nor "rbd diff v2\\n"`, i);
    }
    if (this.opts.version && this.opts.version !== version) {
      throw new RbdDiffError(`expected an rbd diff v${this.opts.version}, found v${version}`, 0);
    }
    this.version = version;
  }

  private u64(b: Buffer, pos: number, what: string, at: number): number {
    const v = b.readBigUInt64LE(pos);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new RbdDiffError(`${what} ${v} is too large`, at);
    return Number(v);
  }

  /** v2: reads the le64 record length after the tag */
  private async recordLength(tagName: string): Promise<number> {
    const at = this.r.position;
    const b = await this.exact(8, `the length of a ${tagName} record`);
    return this.u64(b, 0, `${tagName} record length`, at);
  }

  private expectLength(tagName: string, got: number, want: number, at: number): void {
    if (got !== want) throw new RbdDiffError(`${tagName} record length is ${got}, expected ${want}`, at);
  }

  private async snapName(tagName: string): Promise<{ name: string; bytes: number }> {
    const at = this.r.position;
    const n = (await this.exact(4, `the ${tagName} name length`)).readUInt32LE(0);
    if (n === 0) throw new RbdDiffError(`empty snapshot name in ${tagName} record`, at);
    if (n > MAX_SNAP_NAME_BYTES) throw new RbdDiffError(`snapshot name in ${tagName} record is ${n} bytes long (limit ${MAX_SNAP_NAME_BYTES})`, at);
    const raw = await this.exact(n, `the ${tagName} snapshot name`);
    let name: string;
    try {
      name = utf8.decode(raw);
    } catch {
      throw new RbdDiffError(`snapshot name in ${tagName} record is not valid UTF-8`, at + 4);
    }
    if (name.includes('\0')) throw new RbdDiffError(`snapshot name in ${tagName} record contains a NUL byte`, at + 4);
    return { name, bytes: 4 + n };
  }

  /**
   * Reads the next record's tag and fixed part. For 'w' it returns a `data` record with an
   * empty buffer; the caller then reads the payload.
   */
  private async nextRecord(): Promise<RbdDiffRecord> {
    for (;;) {
      const at = this.r.position;
      const tb = await this.guard(() => this.r.readExact(1));
      if (tb.length === 0) throw new RbdDiffError('stream truncated: it ends without an end record', at);
      const tag = tb[0]!;
      if (tag === TAG_END) {
        this.ended = true;
        return { type: 'end' };
      }
      const v2 = this.version === 2;
      const lengthAt = this.r.position;
      switch (tag) {
        case TAG_FROM_SNAP:
        case TAG_TO_SNAP: {
          const isFrom = tag === TAG_FROM_SNAP;
          const tagName = isFrom ? "from-snap 'f'" : "to-snap 't'";
          const len = v2 ? await this.recordLength(tagName) : -1;
          if (this.headerDone) throw new RbdDiffError(`${tagName} record after the image size record`, at);
          if (isFrom && (this.fromSnap !== undefined || this.toSnap !== undefined)) {
            throw new RbdDiffError(this.fromSnap !== undefined ? `second from-snap 'f' record` : `from-snap 'f' record after the to-snap 't' record`, at);
          }
          if (!isFrom && this.toSnap !== undefined) throw new RbdDiffError(`second to-snap 't' record`, at);
          if (this.protectedFlag !== undefined) throw new RbdDiffError(`${tagName} record after the protection 'p' record`, at);
          const { name, bytes } = await this.snapName(tagName);
          if (v2) this.expectLength(tagName, len, bytes, lengthAt);
          if (isFrom) this.fromSnap = name;
          else this.toSnap = name;
          return isFrom ? { type: 'from-snap', name } : { type: 'to-snap', name };
        }
        case TAG_PROTECTED: {
          if (!v2) throw new RbdDiffError(`protection 'p' record in a v1 diff`, at);
          const len = await this.recordLength("protection 'p'");
          // Ceph 16.2 writes length 8 followed by a single byte; newer releases write 1
          if (len !== 1 && len !== 8) throw new RbdDiffError(`protection 'p' record length is ${len}, expected 1 (or 8, as Ceph 16 writes)`, lengthAt);
          if (this.headerDone) throw new RbdDiffError(`protection 'p' record after the image size record`, at);
          if (this.toSnap === undefined) throw new RbdDiffError(`protection 'p' record without a to-snap 't' record`, at);
          if (this.protectedFlag !== undefined) throw new RbdDiffError(`second protection 'p' record`, at);
          const vAt = this.r.position;
          const v = (await this.exact(1, "the protection 'p' record"))[0]!;
          if (v > 1) throw new RbdDiffError(`protection 'p' value is ${v}, expected 0 or 1`, vAt);
          this.protectedFlag = v === 1;
          return { type: 'protected', value: v === 1 };
        }
        case TAG_SIZE: {
          if (v2) this.expectLength("size 's'", await this.recordLength("size 's'"), 8, lengthAt);
          if (this.headerDone) throw new RbdDiffError(`second image size 's' record`, at);
          const sAt = this.r.position;
          this.size = this.u64(await this.exact(8, "the image size 's' record"), 0, 'image size', sAt);
          this.headerDone = {
            version: this.version,
            ...(this.fromSnap !== undefined ? { fromSnap: this.fromSnap } : {}),
            ...(this.toSnap !== undefined ? { toSnap: this.toSnap } : {}),
            ...(this.protectedFlag !== undefined ? { protected: this.protectedFlag } : {}),
            size: this.size,
          };
          return { type: 'size', size: this.size };
        }
        case TAG_WRITE:
        case TAG_ZERO: {
          const isWrite = tag === TAG_WRITE;
          const tagName = isWrite ? "write 'w'" : "zero 'z'";
          const len = v2 ? await this.recordLength(tagName) : -1;
          if (!this.headerDone) throw new RbdDiffError(`${tagName} record before the image size 's' record`, at);
          const fAt = this.r.position;
          const f = await this.exact(16, `the ${tagName} record`);
          const offset = this.u64(f, 0, `${tagName} offset`, fAt);
          const length = this.u64(f, 8, `${tagName} length`, fAt + 8);
          if (v2) this.expectLength(tagName, len, isWrite ? 16 + length : 16, lengthAt);
          if (length === 0) throw new RbdDiffError(`${tagName} record with length 0`, fAt + 8);
          if (offset < this.extentEnd) {
            throw new RbdDiffError(
              `${tagName} record at image offset ${offset} overlaps or precedes the previous extent ending at ${this.extentEnd}`,
              fAt,
            );
          }
          if (offset + length > this.size) {
            throw new RbdDiffError(`${tagName} record [${offset}, ${offset + length}) goes beyond the image size ${this.size}`, fAt);
          }
          this.extentEnd = offset + length;
          if (!isWrite) return { type: 'zero', offset, length };
          return { type: 'data', offset, data: Buffer.alloc(0), extentOffset: offset, extentLength: length, last: false };
        }
        default: {
          if (!v2 || (this.opts.unknownTags ?? 'error') === 'error') {
            throw new RbdDiffError(`unknown record tag ${printable(tag)}`, at);
          }
          const len = await this.recordLength(`unknown ${printable(tag)}`);
          let left = len;
          while (left > 0) {
            const p = await this.guard(() => this.r.readSome(Math.min(left, 1 << 20)));
            if (!p) throw new RbdDiffError(`stream truncated in a record with unknown tag ${printable(tag)}`, this.r.position);
            left -= p.length;
          }
          continue;
        }
      }
    }
  }

  private async *readPayload(extentOffset: number, extentLength: number): AsyncGenerator<RbdDiffRecord> {
    let done = 0;
    while (done < extentLength) {
      const at = this.r.position;
      const piece = await this.guard(() => this.r.readSome(Math.min(this.pieceSize, extentLength - done)));
      if (!piece) {
        throw new RbdDiffError(`stream truncated in the data of the write 'w' record at image offset ${extentOffset}: ${done} of ${extentLength} bytes`, at);
      }
      const offset = extentOffset + done;
      done += piece.length;
      yield { type: 'data', offset, data: piece, extentOffset, extentLength, last: done === extentLength };
    }
  }
}

/** Convenience: the records of one diff (see RbdDiffReader). */
export function readRbdDiff(source: Readable | AsyncIterable<Uint8Array>, opts?: RbdDiffReaderOptions): AsyncIterable<RbdDiffRecord> {
  return new RbdDiffReader(source, opts);
}
