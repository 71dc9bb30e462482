import type { Writable } from 'node:stream';
import {
  MAX_SNAP_NAME_BYTES,
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
  type RbdDiffExtent,
  type RbdDiffVersion,
} from './diff-format.js';

export interface RbdDiffWriterOptions {
  /** 1 (default): what `rbd export-diff` writes and `rbd import-diff` reads; 2: the diff
   *  format inside `rbd export --export-format 2` */
  version?: RbdDiffVersion;
  /** 'f': base snapshot of an incremental diff (must exist on the target of import-diff) */
  fromSnap?: string;
  /** 't': snapshot that `rbd import-diff` creates on the target after applying the diff */
  toSnap?: string;
  /** 'p' (v2 only, needs toSnap): protection status of toSnap */
  protected?: boolean;
  /** 's': image size in bytes; `rbd import-diff` resizes the target to it */
  size: number;
  /** end the Writable after the end record (default true) */
  end?: boolean;
}

export interface RbdDiffWriteResult {
  /** bytes written to the stream */
  bytes: number;
  dataRecords: number;
  dataBytes: number;
  zeroRecords: number;
  zeroBytes: number;
}

const utf8 = new TextEncoder();

function checkSnapName(name: string, what: string): Buffer {
  const b = Buffer.from(utf8.encode(name));
  if (b.length === 0) throw new TypeError(`rbd diff writer: ${what} snapshot name is empty`);
  if (b.length > MAX_SNAP_NAME_BYTES) throw new TypeError(`rbd diff writer: ${what} snapshot name is longer than ${MAX_SNAP_NAME_BYTES} bytes`);
  if (name.includes('\0')) throw new TypeError(`rbd diff writer: ${what} snapshot name ${JSON.stringify(name)} contains a NUL`);
  return b;
}

function checkUint(v: number, what: string): void {
  if (!Number.isSafeInteger(v) || v < 0) throw new TypeError(`rbd diff writer: ${what} must be a non-negative safe integer, got ${v}`);
}

/**
 * Writes one RBD diff to a Writable, honouring backpressure. Call data()/dataStream()/zero()
 * with extents in ascending, non-overlapping order inside [0, size), then finish(). Invalid
 * input (order, bounds, lengths that do not match) throws an RbdDiffError naming the output
 * position before anything invalid is written; errors of the Writable are thrown as they are.
 */
export class RbdDiffWriter {
  private pos = 0;
  private headerWritten = false;
  private finished = false;
  private extentEnd = 0;
  private failed: unknown = null;
  private readonly stats: RbdDiffWriteResult = { bytes: 0, dataRecords: 0, dataBytes: 0, zeroRecords: 0, zeroBytes: 0 };
  private readonly v2: boolean;
  private readonly from?: Buffer;
  private readonly to?: Buffer;

  constructor(private readonly out: Writable, private readonly opts: RbdDiffWriterOptions) {
    const version = opts.version ?? 1;
    if (version !== 1 && version !== 2) throw new TypeError(`rbd diff writer: unknown version ${String(version)}`);
    this.v2 = version === 2;
    checkUint(opts.size, 'size');
    if (opts.fromSnap !== undefined) this.from = checkSnapName(opts.fromSnap, 'from');
    if (opts.toSnap !== undefined) this.to = checkSnapName(opts.toSnap, 'to');
    if (opts.protected !== undefined) {
      if (!this.v2) throw new TypeError('rbd diff writer: the protection record exists only in v2 diffs');
      if (opts.toSnap === undefined) throw new TypeError('rbd diff writer: the protection record needs a toSnap');
    }
  }

  /** bytes written so far */
  get position(): number {
    return this.pos;
  }

  /** Writes banner and header records (done automatically by the first extent or finish()). */
  async writeHeader(): Promise<void> {
    if (this.headerWritten) return;
    this.headerWritten = true;
    const parts: Buffer[] = [Buffer.from(this.v2 ? RBD_DIFF_BANNER_V2 : RBD_DIFF_BANNER_V1, 'latin1')];
    const str = (tag: number, s: Buffer) => {
      const h = Buffer.alloc(this.v2 ? 13 : 5);
      h[0] = tag;
      if (this.v2) {
        h.writeBigUInt64LE(BigInt(4 + s.length), 1);
        h.writeUInt32LE(s.length, 9);
      } else h.writeUInt32LE(s.length, 1);
      parts.push(h, s);
    };
    if (this.from) str(TAG_FROM_SNAP, this.from);
    if (this.to) str(TAG_TO_SNAP, this.to);
    if (this.opts.protected !== undefined) {
      const p = Buffer.alloc(10);
      p[0] = TAG_PROTECTED;
      p.writeBigUInt64LE(1n, 1); // Ceph 16.2 itself writes 8 here but reads exactly 1 byte
      p[9] = this.opts.protected ? 1 : 0;
      parts.push(p);
    }
    const s = Buffer.alloc(this.v2 ? 17 : 9);
    s[0] = TAG_SIZE;
    if (this.v2) {
      s.writeBigUInt64LE(8n, 1);
      s.writeBigUInt64LE(BigInt(this.opts.size), 9);
    } else s.writeBigUInt64LE(BigInt(this.opts.size), 1);
    parts.push(s);
    await this.emit(Buffer.concat(parts));
  }

  /** A 'w' record holding `data` at image `offset`. Empty data writes nothing. */
  async data(offset: number, data: Uint8Array): Promise<void> {
    if (data.length === 0) return;
    this.checkExtent(offset, data.length, 'data');
    await this.writeHeader();
    await this.emit(this.extentHeader(TAG_WRITE, offset, data.length));
    this.extentEnd = offset + data.length;
    await this.emit(Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength));
    this.stats.dataRecords++;
    this.stats.dataBytes += data.length;
  }

  /**
   * A 'w' record of `length` bytes at `offset` whose payload is streamed from `chunks`. If
   * the chunks deliver more or fewer bytes than `length`, the diff is unusable: the writer
   * fails (RbdDiffError), writes nothing more and destroys the Writable (without an error
   * event), so that a reader sees a truncated diff.
   */
  async dataStream(offset: number, length: number, chunks: AsyncIterable<Uint8Array> | Iterable<Uint8Array>): Promise<void> {
    this.checkExtent(offset, length, 'data');
    if (length === 0) return;
    await this.writeHeader();
    await this.emit(this.extentHeader(TAG_WRITE, offset, length));
    this.extentEnd = offset + length;
    let got = 0;
    for await (const c of chunks) {
      if (c.length === 0) continue;
      if (got + c.length > length) this.corrupt(`the data stream for [${offset}, ${offset + length}) delivered more than ${length} bytes`);
      got += c.length;
      await this.emit(Buffer.isBuffer(c) ? c : Buffer.from(c.buffer, c.byteOffset, c.byteLength));
    }
    if (got !== length) this.corrupt(`the data stream for [${offset}, ${offset + length}) delivered ${got} of ${length} bytes`);
    this.stats.dataRecords++;
    this.stats.dataBytes += length;
  }

  /** A 'z' record: [offset, offset+length) reads as zeros. Length 0 writes nothing. */
  async zero(offset: number, length: number): Promise<void> {
    this.checkExtent(offset, length, 'zero');
    if (length === 0) return;
    await this.writeHeader();
    await this.emit(this.extentHeader(TAG_ZERO, offset, length));
    this.extentEnd = offset + length;
    this.stats.zeroRecords++;
    this.stats.zeroBytes += length;
  }

  /** Writes the end record and (unless `end: false`) ends the Writable, waiting for it to finish. */
  async finish(): Promise<RbdDiffWriteResult> {
    this.checkUsable();
    await this.writeHeader();
    await this.emit(Buffer.from([TAG_END]));
    this.finished = true;
    if (this.opts.end ?? true) {
      await new Promise<void>((resolve, reject) => {
        const onError = (e: Error) => reject(e);
        this.out.once('error', onError);
        this.out.end(() => {
          this.out.off('error', onError);
          resolve();
        });
      });
    }
    return { ...this.stats, bytes: this.pos };
  }

  // ---------------------------------------------------------------- internals

  private checkUsable(): void {
    if (this.failed) throw this.failed;
    if (this.finished) throw new Error('rbd diff writer: already finished');
  }

  private checkExtent(offset: number, length: number, kind: string): void {
    this.checkUsable();
    checkUint(offset, `${kind} offset`);
    checkUint(length, `${kind} length`);
    if (offset < this.extentEnd) {
      throw new RbdDiffError(`writer: ${kind} extent at ${offset} overlaps or precedes the previous extent ending at ${this.extentEnd}`, this.pos);
    }
    if (offset + length > this.opts.size) {
      throw new RbdDiffError(`writer: ${kind} extent [${offset}, ${offset + length}) goes beyond the image size ${this.opts.size}`, this.pos);
    }
  }

  private corrupt(message: string): never {
    const err = new RbdDiffError(`writer: ${message}`, this.pos);
    this.failed = err;
    // close the output so its reader sees a truncated diff (rbd import-diff then fails and
    // creates no snapshot); no 'error' event: the caller gets this error from us
    this.out.destroy();
    throw err;
  }

  private extentHeader(tag: number, offset: number, length: number): Buffer {
    const h = Buffer.alloc(this.v2 ? 25 : 17);
    h[0] = tag;
    let p = 1;
    if (this.v2) {
      h.writeBigUInt64LE(BigInt(tag === TAG_WRITE ? 16 + length : 16), 1);
      p = 9;
    }
    h.writeBigUInt64LE(BigInt(offset), p);
    h.writeBigUInt64LE(BigInt(length), p + 8);
    return h;
  }

  private async emit(buf: Buffer): Promise<void> {
    if (this.failed) throw this.failed;
    const out = this.out;
    if (out.destroyed || out.writableEnded) {
      const err = out.errored ?? new Error('rbd diff writer: the output stream is closed');
      this.failed = err;
      throw err;
    }
    this.pos += buf.length;
    if (out.write(buf)) return;
    await new Promise<void>((resolve, reject) => {
      const done = () => {
        out.off('drain', onDrain);
        out.off('error', onError);
        out.off('close', onClose);
      };
      const onDrain = () => {
        done();
        resolve();
      };
      const onError = (e: Error) => {
        done();
        this.failed = e;
        reject(e);
      };
      const onClose = () => {
        done();
        const e = out.errored ?? new Error('rbd diff writer: the output stream closed while writing');
        this.failed = e;
        reject(e);
      };
      out.on('drain', onDrain);
      out.on('error', onError);
      out.on('close', onClose);
    });
  }
}

/**
 * Writes a whole diff: header from `opts`, then `extents` (ascending, non-overlapping), then
 * the end record; ends the Writable unless `opts.end === false`.
 */
export async function writeRbdDiff(
  out: Writable,
  opts: RbdDiffWriterOptions,
  extents: AsyncIterable<RbdDiffExtent> | Iterable<RbdDiffExtent>,
): Promise<RbdDiffWriteResult> {
  const w = new RbdDiffWriter(out, opts);
  await w.writeHeader();
  for await (const e of extents) {
    if (e.type === 'zero') await w.zero(e.offset, e.length);
    else if ('length' in e) await w.dataStream(e.offset, e.length, e.data);
    else await w.data(e.offset, e.data);
  }
  return w.finish();
}
