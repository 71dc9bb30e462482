import type { Readable } from 'node:stream';

/**
 * Pull-style reading of a node Readable in paused mode: exact-size reads for headers, bounded
 * reads for payloads, and the unread rest can be handed back to the stream (unshift), so a
 * parser can stop precisely at the end of its own data (e.g. one diff inside an export).
 * Holds at most one chunk of the source beyond what the caller has taken.
 */
export class PullReader {
  /** bytes handed to the caller so far */
  position = 0;
  private pending: Buffer | null = null;
  private eof = false;

  constructor(private readonly src: Readable) {}

  /** Up to `max` bytes (at least 1), or null at end of stream. */
  async readSome(max: number): Promise<Buffer | null> {
    if (!this.pending) {
      this.pending = await this.pull();
      if (!this.pending) return null;
    }
    const p = this.pending;
    let out: Buffer;
    if (p.length <= max) {
      out = p;
      this.pending = null;
    } else {
      out = p.subarray(0, max);
      this.pending = p.subarray(max);
    }
    this.position += out.length;
    return out;
  }

  /**
   * Exactly `n` bytes. Returns the bytes it got if the stream ends first (shorter than n;
   * empty at a clean end), so the caller can tell truncation from a clean end.
   */
  async readExact(n: number): Promise<Buffer> {
    const first = await this.readSome(n);
    if (!first) return Buffer.alloc(0);
    if (first.length === n) return first;
    const parts = [first];
    let got = first.length;
    while (got < n) {
      const more = await this.readSome(n - got);
      if (!more) break;
      parts.push(more);
      got += more.length;
    }
    return Buffer.concat(parts, got);
  }

  /** True if the stream has no more bytes (waits for its end). */
  async atEnd(): Promise<boolean> {
    if (this.pending) return false;
    this.pending = await this.pull();
    return this.pending === null;
  }

  /** Puts bytes read from the source but not taken by the caller back into the source. */
  giveBack(): void {
    if (this.pending && this.pending.length > 0 && !this.src.destroyed) this.src.unshift(this.pending);
    this.pending = null;
  }

  private async pull(): Promise<Buffer | null> {
    for (;;) {
      if (this.eof) return null;
      const err = this.src.errored;
      if (err) throw err;
      const chunk: unknown = this.src.read();
      if (chunk !== null) {
        if (Buffer.isBuffer(chunk)) {
          if (chunk.length === 0) continue;
          return chunk;
        }
        if (typeof chunk === 'string') return Buffer.from(chunk);
        if (chunk instanceof Uint8Array) return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
        throw new TypeError(`stream yielded a ${typeof chunk}, not bytes`);
      }
      if (this.src.readableEnded) {
        this.eof = true;
        return null;
      }
      if (this.src.destroyed) throw new Error('the stream was closed before its end');
      await new Promise<void>((resolve, reject) => {
        const done = () => {
          this.src.off('readable', onReadable);
          this.src.off('end', onEnd);
          this.src.off('error', onError);
          this.src.off('close', onClose);
        };
        const onReadable = () => {
          done();
          resolve();
        };
        const onEnd = () => {
          done();
          this.eof = true;
          resolve();
        };
        const onError = (e: Error) => {
          done();
          reject(e);
        };
        const onClose = () => {
          done();
          if (this.src.readableEnded) {
            this.eof = true;
            resolve();
          } else reject(this.src.errored ?? new Error('the stream was closed before its end'));
        };
        this.src.on('readable', onReadable);
        this.src.on('end', onEnd);
        this.src.on('error', onError);
        this.src.on('close', onClose);
      });
    }
  }
}
