/**
 * Exact-length reads from a stream socket, with backpressure: the socket is paused while
 * enough bytes are buffered and nobody asks for more. Reads never allocate more than the
 * caller asked for, and callers bound what they ask for.
 */
import type { Duplex } from 'node:stream';

export class EofError extends Error {
  /** bytes of the pending read that had arrived before the end of the stream */
  constructor(readonly partial: number, readonly wanted: number) {
    super(partial === 0 ? 'connection closed by peer' : `connection closed after ${partial} of ${wanted} bytes`);
    this.name = 'EofError';
  }
}

interface Pending {
  n: number;
  discard: boolean;
  got: number;
  resolve: (b: Buffer) => void;
  reject: (e: Error) => void;
}

/** pause the socket when this much is buffered and no read wants it */
const HIGH_WATER = 1024 * 1024;
const EMPTY = Buffer.alloc(0);

export class SocketReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private pending: Pending | null = null;
  private ended = false;
  private failure: Error | null = null;
  private paused = false;
  private readonly onData = (b: Buffer) => this.push(b);
  private readonly onEnd = () => this.finish(null);
  private readonly onError = (e: Error) => this.finish(e);
  private readonly onClose = () => this.finish(null);

  constructor(readonly socket: Duplex) {
    socket.on('data', this.onData);
    socket.on('end', this.onEnd);
    socket.on('error', this.onError);
    socket.on('close', this.onClose);
  }

  /** bytes received and not yet consumed */
  get bufferedBytes(): number {
    return this.buffered;
  }

  /** Stops listening to the socket (e.g. before wrapping it in TLS). Returns unconsumed bytes. */
  detach(): Buffer {
    this.socket.off('data', this.onData);
    this.socket.off('end', this.onEnd);
    this.socket.off('error', this.onError);
    this.socket.off('close', this.onClose);
    const rest = this.chunks.length ? Buffer.concat(this.chunks) : EMPTY;
    this.chunks = [];
    this.buffered = 0;
    if (this.pending) {
      const p = this.pending;
      this.pending = null;
      p.reject(new Error('reader detached'));
    }
    return rest;
  }

  /** Resolves with exactly n bytes; rejects with EofError if the stream ends first. */
  read(n: number): Promise<Buffer> {
    return this.request(n, false);
  }

  /** Consumes and drops n bytes without keeping them. */
  async skip(n: number): Promise<void> {
    await this.request(n, true);
  }

  private request(n: number, discard: boolean): Promise<Buffer> {
    if (this.pending) return Promise.reject(new Error('concurrent read on one connection'));
    if (n === 0) return Promise.resolve(EMPTY);
    if (!discard && this.buffered >= n) return Promise.resolve(this.take(n));
    return new Promise<Buffer>((resolve, reject) => {
      this.pending = { n, discard, got: 0, resolve, reject };
      this.serve();
      if (this.pending) {
        if (this.failure || this.ended) this.fail();
        else if (this.paused) {
          this.paused = false;
          this.socket.resume();
        }
      }
    });
  }

  private push(b: Buffer): void {
    if (b.length === 0) return;
    this.chunks.push(b);
    this.buffered += b.length;
    if (this.pending) this.serve();
    if (!this.pending && this.buffered >= HIGH_WATER && !this.paused) {
      this.paused = true;
      this.socket.pause();
    }
  }

  private serve(): void {
    const p = this.pending;
    if (!p) return;
    if (p.discard) {
      while (p.got < p.n && this.chunks.length) {
        const c = this.chunks[0]!;
        const want = p.n - p.got;
        if (c.length <= want) {
          this.chunks.shift();
          this.buffered -= c.length;
          p.got += c.length;
        } else {
          this.chunks[0] = c.subarray(want);
          this.buffered -= want;
          p.got += want;
        }
      }
      if (p.got === p.n) {
        this.pending = null;
        p.resolve(EMPTY);
      }
      return;
    }
    if (this.buffered >= p.n) {
      this.pending = null;
      p.resolve(this.take(p.n));
    }
  }

  private take(n: number): Buffer {
    const first = this.chunks[0]!;
    if (first.length === n) {
      this.chunks.shift();
      this.buffered -= n;
      return first;
    }
    if (first.length > n) {
      this.chunks[0] = first.subarray(n);
      this.buffered -= n;
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let off = 0;
    while (off < n) {
      const c = this.chunks[0]!;
      const k = Math.min(c.length, n - off);
      c.copy(out, off, 0, k);
      off += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    this.buffered -= n;
    return out;
  }

  private finish(err: Error | null): void {
    if (err) this.failure ??= err;
    this.ended = true;
    if (this.pending) this.fail();
  }

  private fail(): void {
    const p = this.pending!;
    this.pending = null;
    const got = p.discard ? p.got : this.buffered;
    p.reject(this.failure && got === 0 ? this.failure : new EofError(got, p.n));
  }
}
